//! The kinds of object the state holds, described once: how each is named
//! in metrics and logs, keyed, and what its appearance or removal means for
//! live connections. A new kind (Services, EndpointSlices, admin policies)
//! is a variant here, a conversion in the engine, and a `Watched` impl in
//! `kube.rs`.
//!
//! Pure data; no I/O.

use picket_policy::{
    ClusterPolicy, EndpointSlice, Namespace, Node, ObjectKey, Pod, Policy, Service,
};

use crate::writer::ChangeReason;

/// A kind of object the engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Pods.
    Pod,
    /// Namespaces.
    Namespace,
    /// NetworkPolicies.
    Policy,
    /// Services (the outbound proxy resolves ClusterIPs).
    Service,
    /// EndpointSlices (a Service's endpoints).
    EndpointSlice,
    /// ClusterNetworkPolicies (the Admin and Baseline tiers).
    ClusterPolicy,
    /// Nodes (for cluster policies' `nodes` peers).
    Node,
}

/// One object of a kind the engine reads.
#[derive(Clone, Debug)]
pub enum Object {
    /// A pod.
    Pod(Pod),
    /// A namespace.
    Namespace(Namespace),
    /// A compiled NetworkPolicy.
    Policy(Policy),
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A compiled ClusterNetworkPolicy.
    ClusterPolicy(ClusterPolicy),
    /// A node.
    Node(Node),
}

/// An object's identity, for deletes. Cluster-scoped objects (namespaces)
/// have an empty `key.namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// Namespace and name.
    pub key: ObjectKey,
}

/// A set of kinds: which kinds a source has listed completely.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindSet(u8);

// === impl Kind ===

impl Kind {
    /// Every kind, in the order a source should replace them (namespaces
    /// first: pods and policies refer to them).
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Policy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ClusterPolicy,
        Kind::Node,
    ];

    /// The kinds policy decisions read: every source serves them (the
    /// control plane's views hold only these).
    pub const POLICY: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::Policy];

    /// The kinds Service resolution reads (the outbound proxy).
    pub const SERVICES: [Kind; 2] = [Kind::Service, Kind::EndpointSlice];

    /// The kinds the cluster-wide tiers read: ClusterNetworkPolicies, and
    /// Nodes for their `nodes` peers.
    pub const CLUSTER: [Kind; 2] = [Kind::ClusterPolicy, Kind::Node];

    /// The metric and log label (`picket_state_objects{kind=...}`, watch restarts).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::Policy => "networkpolicies",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::ClusterPolicy => "clusternetworkpolicies",
            Kind::Node => "nodes",
        }
    }

    /// Why live connections are re-checked when an object of this kind
    /// appears or goes away.
    pub fn presence_change(self, appeared: bool) -> ChangeReason {
        match (self, appeared) {
            (Kind::Pod, _) => ChangeReason::PodIp,
            (Kind::Namespace, _) => ChangeReason::NamespaceLabels,
            (Kind::Policy, true) => ChangeReason::PolicyAdded,
            (Kind::Policy, false) => ChangeReason::PolicyDeleted,
            (Kind::Service | Kind::EndpointSlice, _) => ChangeReason::ServiceEndpoints,
            (Kind::ClusterPolicy, true) => ChangeReason::PolicyAdded,
            (Kind::ClusterPolicy, false) => ChangeReason::PolicyDeleted,
            (Kind::Node, _) => ChangeReason::Nodes,
        }
    }

    /// How many objects of this kind a snapshot holds.
    pub fn count(self, snapshot: &crate::Snapshot) -> usize {
        let counts = snapshot.index.counts();
        let (services, slices) = snapshot.services.counts();
        match self {
            Kind::Pod => counts.pods,
            Kind::Namespace => counts.namespaces,
            Kind::Policy => counts.policies,
            Kind::Service => services,
            Kind::EndpointSlice => slices,
            Kind::ClusterPolicy => counts.cluster_policies,
            Kind::Node => counts.nodes,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

// === impl Object ===

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Policy(_) => Kind::Policy,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ClusterPolicy(_) => Kind::ClusterPolicy,
            Object::Node(_) => Kind::Node,
        }
    }

    /// The object's identity.
    pub fn reference(&self) -> ObjectRef {
        let key = match self {
            Object::Pod(p) => p.key.clone(),
            Object::Namespace(n) => ObjectKey::new("", &n.name),
            Object::Policy(p) => p.key.clone(),
            Object::Service(s) => s.key.clone(),
            Object::EndpointSlice(s) => s.key.clone(),
            Object::ClusterPolicy(p) => ObjectKey::new("", &p.name),
            Object::Node(n) => ObjectKey::new("", &n.name),
        };
        ObjectRef {
            kind: self.kind(),
            key,
        }
    }
}

// === impl ObjectRef ===

impl ObjectRef {
    /// A reference to an object of `kind` by namespace and name (empty
    /// namespace for cluster-scoped kinds).
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            key: ObjectKey::new(namespace, name),
        }
    }
}

// === impl KindSet ===

impl KindSet {
    /// Adds a kind.
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= kind.bit();
    }

    /// Whether the set holds the kind.
    pub fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the set holds every kind.
    pub fn is_all(self) -> bool {
        self.covers(self::KindSet::of(&Kind::ALL))
    }

    /// The set of these kinds.
    pub fn of(kinds: &[Kind]) -> Self {
        let mut set = Self::default();
        for kind in kinds {
            set.insert(*kind);
        }
        set
    }

    /// Whether the set holds every kind of `other`.
    pub fn covers(self, other: KindSet) -> bool {
        self.0 & other.0 == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_set_is_complete_only_with_every_kind() {
        let mut set = KindSet::default();
        for kind in Kind::ALL {
            assert!(!set.is_all());
            assert!(!set.contains(kind));
            set.insert(kind);
            assert!(set.contains(kind));
        }
        assert!(set.is_all());
    }
}
