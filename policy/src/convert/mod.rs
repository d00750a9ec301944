//! Kubernetes objects to the engine's model, with the API server's defaulting.
//!
//! Pure: no I/O. The only place the engine sees `k8s-openapi` types.
//!
//! Defaulting applied here, as the API server would: `policyTypes` absent or
//! empty means Ingress, plus Egress when the policy has egress rules; a port's
//! protocol defaults to TCP; `from: []`, `to: []` and `ports: []` mean "all",
//! like absent fields; every namespace carries `kubernetes.io/metadata.name`.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{
    ContainerPort, IpBlock, MtlsMode, Namespace, NamespaceScope, ObjectKey, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Rule,
};
use super::selector::{Labels, Selector};
use super::service::{Endpoint, EndpointSlice, Service, ServicePort};

pub mod cluster;

/// The label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label every namespace carries, set by the API server.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The annotation that puts a NetworkPolicy, or every policy of a
/// namespace, in audit mode (`audit`) or not (`enforce`, the default).
pub const MODE_ANNOTATION: &str = "picket.io/mode";

/// The annotation naming a pod's mTLS mode (`off`, `permissive`,
/// `strict`; the injector sets it from the namespace's).
pub const MTLS_ANNOTATION: &str = "picket.io/mtls";

/// The injector's annotations by which some of a pod's outbound
/// connections bypass its proxy (`picket.io/outbound-capture: disabled`,
/// excluded ports, excluded networks).
const OUTBOUND_BYPASS_ANNOTATIONS: [&str; 3] = [
    "picket.io/outbound-capture",
    "picket.io/exclude-outbound-ports",
    "picket.io/exclude-outbound-cidrs",
];

/// A field of an object that could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field's path, for example `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A compiled policy, with the errors of rules that were compiled as broken.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// The policy; broken rules allow nothing but the policy still isolates.
    pub policy: Policy,
    /// One entry per broken rule.
    pub errors: Vec<InvalidField>,
}

/// Compiles a NetworkPolicy from the API, failing closed: when [`policy`]
/// cannot compile the object at all (an invalid `podSelector` or
/// `policyTypes`, say from a newer API version), it becomes a deny-all of its
/// namespace in both directions, with the error; dropping it would open the
/// pods it isolates. Only an object without namespace or name is an error.
pub fn policy_failing_closed(np: &net::NetworkPolicy) -> Result<CompiledPolicy, InvalidField> {
    let key = key_of(&np.metadata)?;
    Ok(policy(np).unwrap_or_else(|error| {
        let mut errors = vec![error];
        CompiledPolicy {
            policy: Policy {
                key,
                pod_selector: Selector::everything(),
                ingress: Some(Vec::new()),
                egress: Some(Vec::new()),
                // An audited policy never enforces, broken or not: its
                // deny-all is what audit reports.
                audit: policy_audit(&np.metadata, &mut errors),
            },
            errors,
        }
    }))
}

/// Whether a policy's annotations put it in audit mode. A value other
/// than `audit` or `enforce` is reported and enforces (fail closed).
fn policy_audit(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    errors: &mut Vec<InvalidField>,
) -> bool {
    match mode(meta) {
        Ok(audit) => audit,
        Err(error) => {
            errors.push(error);
            false
        }
    }
}

/// The mode an object's `picket.io/mode` annotation names: `Ok(true)`
/// for audit.
fn mode(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<bool, InvalidField> {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MODE_ANNOTATION))
    {
        None => Ok(false),
        Some(v) if v == "enforce" => Ok(false),
        Some(v) if v == "audit" => Ok(true),
        Some(other) => Err(InvalidField {
            field: format!("metadata.annotations[{MODE_ANNOTATION}]"),
            reason: format!("unknown mode {other:?} (expected audit or enforce): enforced"),
        }),
    }
}

/// Compiles a NetworkPolicy. An invalid `podSelector` or `policyTypes` fails
/// the whole object (no pods can be chosen); an invalid rule is kept as a
/// broken rule that allows nothing, so the policy still isolates (fail closed).
pub fn policy(np: &net::NetworkPolicy) -> Result<CompiledPolicy, InvalidField> {
    let key = key_of(&np.metadata)?;
    let default_spec = net::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);
    let pod_selector = selector(spec.pod_selector.as_ref(), "spec.podSelector")?;

    let (mut ingress_on, mut egress_on) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress_on = true;
            egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_on = true,
                    "Egress" => egress_on = true,
                    other => {
                        return Err(InvalidField {
                            field: format!("spec.policyTypes[{i}]"),
                            reason: format!(
                                "unknown policy type {other:?} (expected Ingress or Egress)"
                            ),
                        })
                    }
                }
            }
        }
    }

    let mut errors = Vec::new();
    let ingress = ingress_on.then(|| {
        let rules = spec.ingress.as_deref().unwrap_or_default();
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("spec.ingress[{i}]");
                rule(
                    &key,
                    r.from.as_deref(),
                    "from",
                    r.ports.as_deref(),
                    &at,
                    &mut errors,
                )
            })
            .collect()
    });
    let egress = egress_on.then(|| {
        let rules = spec.egress.as_deref().unwrap_or_default();
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("spec.egress[{i}]");
                rule(
                    &key,
                    r.to.as_deref(),
                    "to",
                    r.ports.as_deref(),
                    &at,
                    &mut errors,
                )
            })
            .collect()
    });
    let audit = policy_audit(&np.metadata, &mut errors);
    Ok(CompiledPolicy {
        policy: Policy {
            key,
            pod_selector,
            ingress,
            egress,
            audit,
        },
        errors,
    })
}

/// Converts a Pod. Finished pods (Succeeded, Failed) keep no IP.
pub fn pod(p: &core::Pod) -> Result<Pod, InvalidField> {
    let key = key_of(&p.metadata)?;
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    // Every container has terminated, native sidecars and ephemeral
    // containers included (any of them keeps the network namespace): the pod
    // holds its IPs no more (IPAM may already have given them to a new pod
    // whose event has not arrived).
    let terminated = status.is_some_and(|s| {
        let all = || {
            [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ]
            .into_iter()
            .flatten()
            .flatten()
        };
        s.container_statuses.as_ref().is_some_and(|c| !c.is_empty())
            && all().all(|c| c.state.as_ref().is_some_and(|st| st.terminated.is_some()))
    });

    let mut ips = Vec::new();
    if let Some(status) = status {
        match status.pod_ips.as_deref() {
            Some(list) if !list.is_empty() => {
                for (i, entry) in list.iter().enumerate() {
                    ips.push(ip(&entry.ip, &format!("status.podIPs[{i}].ip"))?);
                }
            }
            _ => {
                if let Some(one) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
                    ips.push(ip(one, "status.podIP")?);
                }
            }
        }
    }
    if finished || terminated {
        ips.clear();
    }
    let mut host_ips = Vec::new();
    if let Some(status) = status {
        match status.host_ips.as_deref() {
            Some(list) if !list.is_empty() => {
                for (i, entry) in list.iter().enumerate() {
                    host_ips.push(ip(&entry.ip, &format!("status.hostIPs[{i}].ip"))?);
                }
            }
            _ => {
                if let Some(one) = status.host_ip.as_deref().filter(|s| !s.is_empty()) {
                    host_ips.push(ip(one, "status.hostIP")?);
                }
            }
        }
    }
    let ports = match spec {
        Some(spec) => container_ports(spec, "spec")?,
        None => Vec::new(),
    };
    Ok(Pod {
        key,
        labels: labels(p.metadata.labels.as_ref()),
        ips,
        host_ips,
        ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        deleting: p.metadata.deletion_timestamp.is_some(),
        created: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        uid: p.metadata.uid.as_deref().unwrap_or_default().into(),
        sidecar: spec.is_some_and(runs_sidecar),
        sidecar_ready: p.status.as_ref().is_some_and(sidecar_ready),
        service_account: service_account(spec).into(),
        mtls: mtls_mode(&p.metadata),
        outbound_exempt: outbound_exempt(&p.metadata),
    })
}

/// A pod's mTLS mode from its annotation: none is `off`; a value that is
/// not a mode is `strict` (fail closed: plaintext from or to it proves
/// nothing, and no peer is trusted without a certificate).
fn mtls_mode(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> MtlsMode {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MTLS_ANNOTATION))
    {
        None => MtlsMode::Off,
        Some(value) => MtlsMode::parse(value.trim()).unwrap_or(MtlsMode::Strict),
    }
}

/// Whether some of a pod's outbound connections bypass its proxy.
fn outbound_exempt(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    let Some(annotations) = meta.annotations.as_ref() else {
        return false;
    };
    let [capture, ports, cidrs] = OUTBOUND_BYPASS_ANNOTATIONS.map(|k| annotations.get(k));
    capture.is_some_and(|v| v.trim() == "disabled")
        || [ports, cidrs]
            .into_iter()
            .flatten()
            .any(|v| !v.trim().is_empty())
}

/// Whether the sidecar container reports ready (a native sidecar, an
/// init container that keeps running, reports among the init containers).
fn sidecar_ready(status: &core::PodStatus) -> bool {
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| c.name == SIDECAR_CONTAINER && c.ready)
}

/// Compiles a Service: the addresses kube-proxy sends to its endpoints
/// (its ClusterIPs, none when headless or an ExternalName; its
/// `externalIPs`; its load balancers' IPs, which kube-proxy short-circuits
/// inside the cluster) and its ports (protocol defaulting to TCP).
pub fn service(s: &core::Service) -> Result<Service, InvalidField> {
    let key = key_of(&s.metadata)?;
    let spec = s.spec.as_ref();
    let external = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let mut listed: Vec<&str> = spec
        .and_then(|s| s.cluster_ips.as_deref())
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    if listed.is_empty() {
        listed.extend(spec.and_then(|s| s.cluster_ip.as_deref()));
    }
    let mut addresses = Vec::new();
    for (i, text) in listed.into_iter().enumerate() {
        if external || text.is_empty() || text == "None" {
            continue;
        }
        addresses.push(ip(text, &format!("spec.clusterIPs[{i}]"))?);
    }
    if !external {
        let external_ips = spec.and_then(|s| s.external_ips.as_deref());
        for (i, text) in external_ips.unwrap_or_default().iter().enumerate() {
            addresses.push(ip(text, &format!("spec.externalIPs[{i}]"))?);
        }
        let balancers = s
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_deref());
        for (i, ingress) in balancers.unwrap_or_default().iter().enumerate() {
            if let Some(text) = ingress.ip.as_deref().filter(|t| !t.is_empty()) {
                addresses.push(ip(text, &format!("status.loadBalancer.ingress[{i}].ip"))?);
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("spec.ports[{i}]");
        ports.push(ServicePort {
            name: p.name.as_deref().filter(|n| !n.is_empty()).map(Into::into),
            port: port_number(p.port, &format!("{field}.port"))?,
            protocol: protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?,
        });
    }
    Ok(Service {
        key,
        addresses,
        ports,
    })
}

/// Compiles an EndpointSlice: its Service (label
/// `kubernetes.io/service-name`), target ports and endpoints; addresses of
/// an FQDN slice are not IPs and are left out.
pub fn endpoint_slice(s: &discovery::EndpointSlice) -> Result<EndpointSlice, InvalidField> {
    let key = key_of(&s.metadata)?;
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())
        .map(|name| ObjectKey::new(&key.namespace, name));
    let mut ports = Vec::new();
    for (i, p) in s.ports.as_deref().unwrap_or_default().iter().enumerate() {
        let field = format!("ports[{i}]");
        // A port without a number: the Service's targetPort names a port no
        // endpoint declares; it resolves to nothing.
        let Some(number) = p.port else {
            continue;
        };
        ports.push(ServicePort {
            name: p.name.as_deref().filter(|n| !n.is_empty()).map(Into::into),
            port: port_number(number, &format!("{field}.port"))?,
            protocol: protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?,
        });
    }
    let fqdn = s.address_type == "FQDN";
    let mut endpoints = Vec::new();
    for (i, e) in s
        .endpoints
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            if !fqdn {
                addresses.push(ip(a, &format!("endpoints[{i}].addresses[{j}]"))?);
            }
        }
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                Some(ObjectKey::new(
                    r.namespace.as_deref().unwrap_or(&key.namespace),
                    r.name.as_deref()?,
                ))
            });
        endpoints.push(Endpoint {
            addresses,
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            pod,
        });
    }
    Ok(EndpointSlice {
        key,
        service,
        ports,
        endpoints,
    })
}

/// A pod's service account: `spec.serviceAccountName`, which the API
/// server's ServiceAccount admission sets to `default` when it is empty.
fn service_account(spec: Option<&core::PodSpec>) -> &str {
    spec.and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

/// The name of the sidecar container the injector adds.
pub const SIDECAR_CONTAINER: &str = "picket-proxy";

/// Whether a pod spec runs the sidecar (as a container, or as a native
/// sidecar: an init container).
fn runs_sidecar(spec: &core::PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_CONTAINER)
}

/// A representative pod for a workload's template: it has the template's
/// labels and ports but no IP, so selectors match it and ipBlocks do not.
pub fn template_pod(
    key: ObjectKey,
    template: &core::PodTemplateSpec,
    field: &str,
) -> Result<Pod, InvalidField> {
    let metadata = template.metadata.as_ref();
    let spec = template.spec.as_ref();
    let ports = match spec {
        Some(spec) => container_ports(spec, &format!("{field}.spec"))?,
        None => Vec::new(),
    };
    Ok(Pod {
        key,
        labels: labels(metadata.and_then(|m| m.labels.as_ref())),
        ips: Vec::new(),
        host_ips: Vec::new(),
        ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        deleting: false,
        created: None,
        uid: "".into(),
        sidecar: spec.is_some_and(runs_sidecar),
        sidecar_ready: false,
        service_account: service_account(spec).into(),
        mtls: metadata.map_or(MtlsMode::Off, mtls_mode),
        outbound_exempt: false,
    })
}

/// Converts a Namespace, adding `kubernetes.io/metadata.name` as the API
/// server does. Its `picket.io/mode: audit` annotation puts its policies
/// in audit mode; any other value enforces them (fail closed).
pub fn namespace(ns: &core::Namespace) -> Result<Namespace, InvalidField> {
    let name = ns
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| required("metadata.name"))?;
    let mut namespace = namespace_with_labels(name, labels(ns.metadata.labels.as_ref()));
    namespace.audit = mode(&ns.metadata).unwrap_or(false);
    Ok(namespace)
}

/// A namespace with these labels plus `kubernetes.io/metadata.name`.
pub fn namespace_with_labels(name: &str, mut labels: Labels) -> Namespace {
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    Namespace {
        name: name.into(),
        labels,
        audit: false,
    }
}

/// Compiles a `LabelSelector`; absent compiles to `{}` (everything).
pub fn selector(s: Option<&LabelSelector>, field: &str) -> Result<Selector, InvalidField> {
    let Some(s) = s else {
        return Ok(Selector::everything());
    };
    let match_labels = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let exprs = s.match_expressions.iter().flatten().map(|e| {
        (
            e.key.as_str(),
            e.operator.as_str(),
            e.values.as_deref().unwrap_or_default(),
        )
    });
    Selector::compile(match_labels, exprs).map_err(|e| InvalidField {
        field: format!("{field}.{}", e.field),
        reason: e.reason,
    })
}

fn rule(
    policy: &ObjectKey,
    peers: Option<&[net::NetworkPolicyPeer]>,
    peers_name: &str,
    ports: Option<&[net::NetworkPolicyPort]>,
    at: &str,
    errors: &mut Vec<InvalidField>,
) -> Rule {
    let compiled = (|| {
        let peers = match peers {
            None | Some([]) => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, p)| peer(policy, p, &format!("{at}.{peers_name}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let ports = match ports {
            None | Some([]) => None,
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, p)| port(p, &format!("{at}.ports[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok::<_, InvalidField>(Rule {
            peers,
            ports,
            broken: None,
        })
    })();
    compiled.unwrap_or_else(|e| {
        let broken = e.to_string();
        errors.push(e);
        Rule {
            peers: Some(Vec::new()),
            ports: Some(Vec::new()),
            broken: Some(broken),
        }
    })
}

fn peer(policy: &ObjectKey, p: &net::NetworkPolicyPeer, at: &str) -> Result<Peer, InvalidField> {
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(block), None, None) => ip_block(block, &format!("{at}.ipBlock")).map(Peer::IpBlock),
        (Some(_), _, _) => Err(InvalidField {
            field: at.to_string(),
            reason: "ipBlock may not be combined with podSelector or namespaceSelector".into(),
        }),
        (None, None, None) => Err(InvalidField {
            field: at.to_string(),
            reason: "must set one of podSelector, namespaceSelector or ipBlock".into(),
        }),
        (None, pods, namespaces) => {
            let pods = pods
                .as_ref()
                .map(|s| selector(Some(s), &format!("{at}.podSelector")))
                .transpose()?;
            let namespaces = match namespaces {
                None => NamespaceScope::Policy(policy.namespace.clone()),
                Some(s) => {
                    NamespaceScope::Selected(selector(Some(s), &format!("{at}.namespaceSelector"))?)
                }
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn ip_block(block: &net::IPBlock, at: &str) -> Result<IpBlock, InvalidField> {
    let cidr = cidr(&block.cidr, &format!("{at}.cidr"))?;
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let field = format!("{at}.except[{i}]");
        let net = self::cidr(e, &field)?;
        if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
            return Err(InvalidField {
                field,
                reason: format!("{e:?} must be strictly within the cidr {}", block.cidr),
            });
        }
        except.push(net);
    }
    Ok(IpBlock { cidr, except })
}

fn cidr(s: &str, field: &str) -> Result<IpNet, InvalidField> {
    if s.trim().is_empty() {
        return Err(required(field));
    }
    IpNet::from_str(s.trim())
        .map(|n| n.trunc())
        .map_err(|_| InvalidField {
            field: field.to_string(),
            reason: format!("invalid CIDR {s:?}"),
        })
}

fn port(p: &net::NetworkPolicyPort, at: &str) -> Result<PortMatch, InvalidField> {
    let protocol = protocol(p.protocol.as_deref(), &format!("{at}.protocol"))?;
    let port = match (&p.port, p.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(_)) => {
            return Err(InvalidField {
                field: format!("{at}.endPort"),
                reason: "may not be set without port".into(),
            })
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(*n, &format!("{at}.port"))?;
            let end = match end {
                None => start,
                Some(e) => {
                    let end = port_number(e, &format!("{at}.endPort"))?;
                    if end < start {
                        return Err(InvalidField {
                            field: format!("{at}.endPort"),
                            reason: format!("{end} is below port {start}"),
                        });
                    }
                    end
                }
            };
            PortSpec::Range(start, end)
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(InvalidField {
                    field: format!("{at}.endPort"),
                    reason: "may not be set with a named port".into(),
                });
            }
            if name.is_empty() {
                return Err(InvalidField {
                    field: format!("{at}.port"),
                    reason: "must not be empty".into(),
                });
            }
            PortSpec::Named(name.clone())
        }
    };
    Ok(PortMatch { protocol, port })
}

fn port_number(n: impl Into<i64>, field: &str) -> Result<u16, InvalidField> {
    let n = n.into();
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| InvalidField {
            field: field.to_string(),
            reason: format!("{n} is not a port number (1-65535)"),
        })
}

fn protocol(s: Option<&str>, field: &str) -> Result<Protocol, InvalidField> {
    match s {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| InvalidField {
            field: field.to_string(),
            reason: format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)"),
        }),
    }
}

fn container_ports(spec: &core::PodSpec, at: &str) -> Result<Vec<ContainerPort>, InvalidField> {
    let mut ports = Vec::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("{at}.containers[{ci}].ports[{pi}]");
            ports.push(ContainerPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: port_number(p.container_port, &format!("{field}.containerPort"))?,
                protocol: protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?,
            });
        }
    }
    Ok(ports)
}

fn ip(s: &str, field: &str) -> Result<IpAddr, InvalidField> {
    IpAddr::from_str(s.trim()).map_err(|_| InvalidField {
        field: field.to_string(),
        reason: format!("invalid IP address {s:?}"),
    })
}

fn key_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ObjectKey, InvalidField> {
    let name = meta
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| required("metadata.name"))?;
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| required("metadata.namespace"))?;
    Ok(ObjectKey::new(namespace, name))
}

fn labels(l: Option<&std::collections::BTreeMap<String, String>>) -> Labels {
    l.cloned().unwrap_or_default()
}

fn required(field: &str) -> InvalidField {
    InvalidField {
        field: field.to_string(),
        reason: "required".into(),
    }
}
