//! The resource kinds the test API server serves, and what the server knows about each:
//! paths, list kinds, scope, subresources, selectable fields, what counts as the spec for
//! `metadata.generation`.
//!
//! Pure: no I/O. Used by the router, the store and the selectors.

use std::fmt;

use serde_json::Value;

/// A resource kind served by the test API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Pod, namespaced.
    Pod,
    /// `v1` Namespace, cluster-scoped.
    Namespace,
    /// `networking.k8s.io/v1` NetworkPolicy, namespaced.
    NetworkPolicy,
    /// `v1` Secret, namespaced.
    Secret,
    /// `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration, cluster-scoped.
    MutatingWebhookConfiguration,
    /// `v1` ServiceAccount, namespaced.
    ServiceAccount,
    /// `v1` Service, namespaced.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice, namespaced.
    EndpointSlice,
    /// `v1` Event, namespaced.
    Event,
    /// `v1` Node, cluster-scoped.
    Node,
    /// `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (a CRD of the
    /// network-policy-api project), cluster-scoped.
    ClusterNetworkPolicy,
}

impl Kind {
    /// Every kind, in the order discovery lists them.
    pub const ALL: [Kind; 11] = [
        Kind::Pod,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::Secret,
        Kind::MutatingWebhookConfiguration,
        Kind::ServiceAccount,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Event,
        Kind::Node,
        Kind::ClusterNetworkPolicy,
    ];

    /// The `kind` field of an object, e.g. `Pod`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Secret => "Secret",
            Kind::MutatingWebhookConfiguration => "MutatingWebhookConfiguration",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Event => "Event",
            Kind::Node => "Node",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    /// The `kind` of a list of these objects, e.g. `PodList`.
    pub fn list_kind(self) -> &'static str {
        match self {
            Kind::Pod => "PodList",
            Kind::Namespace => "NamespaceList",
            Kind::NetworkPolicy => "NetworkPolicyList",
            Kind::Secret => "SecretList",
            Kind::MutatingWebhookConfiguration => "MutatingWebhookConfigurationList",
            Kind::ServiceAccount => "ServiceAccountList",
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::Event => "EventList",
            Kind::Node => "NodeList",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicyList",
        }
    }

    /// The `apiVersion` field, e.g. `v1` or `networking.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod
            | Kind::Namespace
            | Kind::Secret
            | Kind::ServiceAccount
            | Kind::Service
            | Kind::Node
            | Kind::Event => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::MutatingWebhookConfiguration => "admissionregistration.k8s.io/v1",
        }
    }

    /// The API group, empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Pod
            | Kind::Namespace
            | Kind::Secret
            | Kind::ServiceAccount
            | Kind::Service
            | Kind::Node
            | Kind::Event => "",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::MutatingWebhookConfiguration => "admissionregistration.k8s.io",
        }
    }

    /// The resource name in URLs, e.g. `pods`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Secret => "secrets",
            Kind::MutatingWebhookConfiguration => "mutatingwebhookconfigurations",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Event => "events",
            Kind::Node => "nodes",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
        }
    }

    /// The short names discovery advertises.
    pub(crate) fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Pod => &["po"],
            Kind::Namespace => &["ns"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::ServiceAccount => &["sa"],
            Kind::Service => &["svc"],
            Kind::Event => &["ev"],
            Kind::Node => &["no"],
            Kind::ClusterNetworkPolicy => &["cnp"],
            Kind::Secret | Kind::MutatingWebhookConfiguration | Kind::EndpointSlice => &[],
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::MutatingWebhookConfiguration
                | Kind::Node
                | Kind::ClusterNetworkPolicy
        )
    }

    /// Whether the kind has a `status` subresource (NetworkPolicy lost its in 1.27).
    pub(crate) fn has_status(self) -> bool {
        // The CRD declares `+kubebuilder:subresource:status`.
        matches!(
            self,
            Kind::Pod | Kind::Namespace | Kind::Service | Kind::Node | Kind::ClusterNetworkPolicy
        )
    }

    /// The top-level fields whose changes bump `metadata.generation`, as the registry
    /// strategies compare them; empty for kinds without a generation (Namespace, Secret).
    pub(crate) fn generation_fields(self) -> &'static [&'static str] {
        match self {
            // A custom resource's generation follows everything but metadata and status.
            Kind::Pod | Kind::NetworkPolicy | Kind::ClusterNetworkPolicy => &["spec"],
            Kind::MutatingWebhookConfiguration => &["webhooks"],
            // The EndpointSlice strategy bumps it when these change.
            Kind::EndpointSlice => &["addressType", "endpoints", "ports"],
            Kind::Namespace
            | Kind::Secret
            | Kind::ServiceAccount
            | Kind::Service
            | Kind::Event
            | Kind::Node => &[],
        }
    }

    /// The kind an object declares with `apiVersion` and `kind`, if served here.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// The kind served under `/api/{group_version}` or `/apis/{group_version}` as `plural`.
    pub(crate) fn from_path(group_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == group_version && k.plural() == plural)
    }

    /// The fields a field selector may name for this kind, as the real registry defines them.
    pub(crate) fn field_labels(self) -> &'static [&'static str] {
        match self {
            Kind::Pod => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Kind::Namespace => &["metadata.name", "name", "status.phase"],
            Kind::NetworkPolicy => &["metadata.name", "metadata.namespace"],
            Kind::Node => &["metadata.name", "spec.unschedulable"],
            // A custom resource selects on its metadata only.
            Kind::ClusterNetworkPolicy => &["metadata.name"],
            Kind::Secret => &["metadata.name", "metadata.namespace", "type"],
            // No conversion of their own: the defaults every kind accepts.
            Kind::MutatingWebhookConfiguration
            | Kind::ServiceAccount
            | Kind::Service
            | Kind::EndpointSlice => &["metadata.name", "metadata.namespace"],
            // As the core registry's event strategy (`GetAttrs`).
            Kind::Event => &[
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
        }
    }

    /// The value of a selectable field; an unset field is the empty string, as upstream.
    /// `None` when the field is not selectable for this kind.
    pub(crate) fn field_value(self, object: &Value, field: &str) -> Option<String> {
        if !self.field_labels().contains(&field) {
            return None;
        }
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Some(match field {
            "metadata.name" | "name" => text("/metadata/name"),
            "metadata.namespace" => text("/metadata/namespace"),
            "spec.hostNetwork" => {
                let on = object.pointer("/spec/hostNetwork").and_then(Value::as_bool);
                on.unwrap_or(false).to_string()
            }
            // Upstream selects on the first of status.podIPs, not on status.podIP.
            "status.podIP" => text("/status/podIPs/0/ip"),
            // An Event's `source` selects on its component.
            "source" => text("/source/component"),
            other => text(&format!("/{}", other.replace('.', "/"))),
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
