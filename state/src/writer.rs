//! The one writer of the cluster state every source feeds, and the snapshots
//! the data plane reads.
//!
//! Sources speak one interface: apply an object, delete an object, replace
//! every object of a kind (a complete snapshot, after a relist or a rescan).
//! `commit` publishes an immutable snapshot through a `watch` channel; the
//! accept path reads the latest one without waiting, and a new one wakes the
//! connection table for a re-check.
//!
//! Synchronous; no I/O.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use picket_policy::{
    CompiledSide, CompiledSides, Direction, Namespace, ObjectKey, Pod, PodKey, Policy, PolicyIndex,
    ServiceIndex,
};

use crate::changes::{ChangeLog, Changed};
use crate::kind::{Kind, KindSet, Object, ObjectRef};

/// What kind of change a commit carried: the bounded reasons a live
/// connection can be torn down for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeReason {
    /// A policy appeared.
    PolicyAdded,
    /// A policy changed.
    PolicyModified,
    /// A policy went away.
    PolicyDeleted,
    /// A pod's labels changed.
    PodLabels,
    /// A namespace's labels changed (or it appeared or went away).
    NamespaceLabels,
    /// A pod's IPs changed (or it appeared or went away).
    PodIp,
    /// What a source's egress policies allow toward this pod changed (in
    /// control mode, where the view carries that compiled).
    PeerEgress,
    /// What a destination's ingress policies let in from this pod changed
    /// (in control mode with outbound parts).
    PeerIngress,
    /// A Service or its endpoints changed: live connections keep their
    /// endpoint (as with kube-proxy), so nothing is torn down for it alone.
    ServiceEndpoints,
    /// A node appeared, went away, or changed its labels or addresses
    /// (what cluster policies' `nodes` peers match).
    Nodes,
}

/// An immutable view of the cluster, shared by every connection.
#[derive(Debug)]
pub struct Snapshot {
    /// The engine's index.
    pub index: PolicyIndex,
    /// Services and their endpoints (empty where the source serves none:
    /// the control plane's views without outbound parts).
    pub services: Arc<ServiceIndex>,
    /// Increases with every commit.
    pub version: u64,
    /// What changed since the previous snapshot, most telling first.
    pub changes: Vec<ChangeReason>,
    /// Which objects each recent commit changed (shared by every snapshot).
    pub log: Arc<ChangeLog>,
}

// === impl ChangeReason ===

impl ChangeReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyAdded => "policy-added",
            Self::PolicyModified => "policy-modified",
            Self::PolicyDeleted => "policy-deleted",
            Self::PodLabels => "pod-labels",
            Self::NamespaceLabels => "namespace-labels",
            Self::PodIp => "pod-ip",
            Self::PeerEgress => "peer-egress",
            Self::PeerIngress => "peer-ingress",
            Self::ServiceEndpoints => "service-endpoints",
            Self::Nodes => "nodes",
        }
    }
}

/// The data plane's handle on the snapshots: `None` until the first commit.
pub type SnapshotRx = watch::Receiver<Option<Arc<Snapshot>>>;

/// The one writer of the cluster state.
#[derive(Debug)]
pub struct StateWriter {
    index: PolicyIndex,
    services: Arc<ServiceIndex>,
    /// The kinds that must be replaced whole before anything is published.
    required: KindSet,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    version: u64,
    dirty: bool,
    changes: BTreeSet<ChangeReason>,
    /// A change that has no teardown reason of its own (container ports, host IPs).
    other_change: bool,
    published: bool,
    /// The kinds replaced whole at least once (the readiness latch).
    listed: KindSet,
    /// The objects changed since the last commit.
    touched: Changed,
    log: Arc<ChangeLog>,
}

// === impl StateWriter ===

impl StateWriter {
    /// A writer and the receiver the data plane reads; nothing is published yet.
    pub fn new() -> (Self, SnapshotRx) {
        let (tx, rx) = watch::channel(None);
        (
            Self {
                index: PolicyIndex::new(),
                services: Arc::default(),
                required: KindSet::of(&Kind::POLICY),
                tx,
                version: 0,
                dirty: true,
                changes: BTreeSet::new(),
                other_change: false,
                published: false,
                listed: KindSet::default(),
                touched: Changed::Everything,
                log: Arc::default(),
            },
            rx,
        )
    }

    /// Requires Services and EndpointSlices to be listed before anything
    /// is published (a source that serves them: the outbound proxy must not
    /// take a ClusterIP for a plain address).
    pub fn require_services(&mut self) {
        for kind in Kind::SERVICES {
            self.required.insert(kind);
        }
    }

    /// Publishes nothing before ClusterNetworkPolicies and Nodes are listed
    /// too (a source that watches them: an Admin tier Deny not yet seen
    /// would be a hole).
    pub fn require_cluster(&mut self) {
        for kind in Kind::CLUSTER {
            self.required.insert(kind);
        }
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, object: Object) {
        self.note(&object);
        self.touched.push(object.reference());
        match object {
            Object::Pod(p) => self.index.apply_pod(p),
            Object::Namespace(n) => self.index.apply_namespace(n),
            Object::Policy(p) => self.index.apply_policy(p),
            Object::Service(s) => Arc::make_mut(&mut self.services).apply_service(s),
            Object::EndpointSlice(s) => Arc::make_mut(&mut self.services).apply_slice(s),
            Object::ClusterPolicy(p) => self.index.apply_cluster_policy(p),
            Object::Node(n) => self.index.apply_node(n),
        }
        self.dirty = true;
    }

    /// Removes an object.
    pub fn delete(&mut self, object: &ObjectRef) {
        let key = &object.key;
        let known = match object.kind {
            Kind::Pod => self.index.delete_pod(key),
            Kind::Namespace => self.index.delete_namespace(&key.name),
            Kind::Policy => self.index.delete_policy(key),
            // Checked first: a miss must not copy the shared index.
            Kind::Service => {
                self.services.service(key).is_some()
                    && Arc::make_mut(&mut self.services).delete_service(key)
            }
            Kind::EndpointSlice => {
                self.services.slice(key).is_some()
                    && Arc::make_mut(&mut self.services).delete_slice(key)
            }
            Kind::ClusterPolicy => self.index.delete_cluster_policy(&key.name),
            Kind::Node => self.index.delete_node(&key.name),
        };
        if known {
            self.changes.insert(object.kind.presence_change(false));
            self.touched.push(object.clone());
        }
        self.dirty |= known;
    }

    /// Replaces every object of a kind with a complete list of it (after a
    /// relist or a rescan). Objects of another kind in `objects` are ignored.
    pub fn replace_all(&mut self, kind: Kind, objects: Vec<Object>) {
        self.replace_all_keeping(kind, objects, &[]);
    }

    /// [`Self::replace_all`], where the list also held the objects `unreadable`
    /// that could not be converted: each keeps its last good version, as a
    /// watch update that cannot be read does (dropping a policy would open the
    /// pods it isolates).
    pub fn replace_all_keeping(
        &mut self,
        kind: Kind,
        objects: Vec<Object>,
        unreadable: &[ObjectKey],
    ) {
        let mut objects: Vec<Object> = objects.into_iter().filter(|o| o.kind() == kind).collect();
        for key in unreadable {
            if let Some(last_good) = self.current(kind, key) {
                objects.push(last_good);
            }
        }
        let keep: BTreeSet<ObjectKey> = objects.iter().map(|o| o.reference().key).collect();
        if self.keys(kind).iter().any(|k| !keep.contains(k)) {
            self.changes.insert(kind.presence_change(false));
        }
        for object in &objects {
            self.note(object);
        }
        let objects = objects.into_iter();
        match kind {
            Kind::Pod => self.index.replace_pods(objects.filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })),
            Kind::Namespace => self
                .index
                .replace_namespaces(objects.filter_map(|o| match o {
                    Object::Namespace(n) => Some(n),
                    _ => None,
                })),
            Kind::Policy => self.index.replace_policies(objects.filter_map(|o| match o {
                Object::Policy(p) => Some(p),
                _ => None,
            })),
            Kind::Service => Arc::make_mut(&mut self.services).replace_services(
                objects.filter_map(|o| match o {
                    Object::Service(s) => Some(s),
                    _ => None,
                }),
            ),
            Kind::EndpointSlice => {
                Arc::make_mut(&mut self.services).replace_slices(objects.filter_map(|o| match o {
                    Object::EndpointSlice(s) => Some(s),
                    _ => None,
                }))
            }
            Kind::ClusterPolicy => {
                self.index
                    .replace_cluster_policies(objects.filter_map(|o| match o {
                        Object::ClusterPolicy(p) => Some(p),
                        _ => None,
                    }))
            }
            Kind::Node => self.index.replace_nodes(objects.filter_map(|o| match o {
                Object::Node(n) => Some(n),
                _ => None,
            })),
        }
        self.listed.insert(kind);
        self.touched = Changed::Everything;
        self.dirty = true;
    }

    /// Makes the state a pod's view whose other pods' sides come from
    /// compiled entries alone (control mode): sources' egress sides, and
    /// with `outbound` destinations' ingress sides; drops every entry (a
    /// full view sets them all again).
    pub fn reset_sides(&mut self, outbound: bool) {
        for direction in [Direction::Egress, Direction::Ingress] {
            if direction == Direction::Ingress && !outbound {
                continue;
            }
            let compiled = self.sides(direction);
            if !compiled.is_empty() {
                *compiled = CompiledSides::default();
                self.changes.insert(side_changed(direction));
            }
        }
        self.touched = Changed::Everything;
        self.dirty = true;
    }

    fn sides(&mut self, direction: Direction) -> &mut CompiledSides {
        match direction {
            Direction::Egress => self.index.egress_toward_me_mut(),
            Direction::Ingress => self.index.ingress_toward_me_mut(),
        }
    }

    /// Sets (`Some`) or removes a held pod's compiled side for `direction`
    /// (a source's egress, a destination's ingress).
    pub fn set_pod_side(&mut self, direction: Direction, key: PodKey, side: Option<CompiledSide>) {
        let compiled = self.sides(direction);
        if compiled.pod(&key).map(|e| &**e) != side.as_ref() {
            compiled.set_pod(key, side.map(Arc::new));
            self.changes.insert(side_changed(direction));
            self.touched = Changed::Everything;
            self.dirty = true;
        }
    }

    /// Sets the compiled sides for `direction` of the pods behind an
    /// address the view holds no pod for; none removes the entry.
    /// Addresses with the same claimants share them.
    pub fn set_address_side(
        &mut self,
        direction: Direction,
        ip: IpAddr,
        claimants: Arc<[Arc<CompiledSide>]>,
    ) {
        let compiled = self.sides(direction);
        let same = match compiled.address(ip) {
            Some(old) => Arc::ptr_eq(old, &claimants) || old.iter().eq(claimants.iter()),
            None => claimants.is_empty(),
        };
        if !same {
            compiled.set_address(ip, claimants);
            self.changes.insert(side_changed(direction));
            self.touched = Changed::Everything;
            self.dirty = true;
        }
    }

    /// Makes the state a cluster-wide view (control mode, where cluster
    /// policies concern the pod): other pods' sides are decided from their
    /// policies, as with a direct source; every compiled entry goes.
    pub fn decide_sides_from_policies(&mut self) {
        self.index.decide_sides_from_policies();
        self.changes.insert(ChangeReason::PeerEgress);
        self.touched = Changed::Everything;
        self.dirty = true;
    }

    /// The object of `kind` the state holds under `key`.
    fn current(&self, kind: Kind, key: &ObjectKey) -> Option<Object> {
        match kind {
            Kind::Pod => self.index.pod(key).map(|p| Object::Pod((**p).clone())),
            Kind::Namespace => self
                .index
                .namespace(&key.name)
                .map(|n| Object::Namespace((**n).clone())),
            Kind::Policy => self
                .index
                .policy(key)
                .map(|p| Object::Policy((**p).clone())),
            Kind::Service => self
                .services
                .service(key)
                .map(|s| Object::Service((**s).clone())),
            Kind::EndpointSlice => self
                .services
                .slice(key)
                .map(|s| Object::EndpointSlice((**s).clone())),
            Kind::ClusterPolicy => self
                .index
                .cluster_policy(&key.name)
                .map(|p| Object::ClusterPolicy((**p).clone())),
            Kind::Node => self
                .index
                .node(&key.name)
                .map(|n| Object::Node((**n).clone())),
        }
    }

    /// The keys of every object of a kind the state holds.
    fn keys(&self, kind: Kind) -> Vec<ObjectKey> {
        match kind {
            Kind::Pod => self.index.pods().map(|p| p.key.clone()).collect(),
            Kind::Namespace => self
                .index
                .namespaces()
                .map(|n| ObjectKey::new("", &n.name))
                .collect(),
            Kind::Policy => self.index.policies().map(|p| p.key.clone()).collect(),
            Kind::Service => self.services.services().map(|s| s.key.clone()).collect(),
            Kind::EndpointSlice => self.services.slices().map(|s| s.key.clone()).collect(),
            Kind::ClusterPolicy => self
                .index
                .cluster_policies()
                .iter()
                .map(|p| ObjectKey::new("", &p.name))
                .collect(),
            Kind::Node => self
                .index
                .nodes()
                .map(|n| ObjectKey::new("", &n.name))
                .collect(),
        }
    }

    /// Notes what applying `object` changes, for the teardown reason.
    fn note(&mut self, object: &Object) {
        match object {
            Object::Pod(p) => self.note_pod(p),
            Object::Namespace(n) => self.note_namespace(n),
            Object::Policy(p) => self.note_policy(p),
            Object::Service(s) => {
                if self.services.service(&s.key).is_none_or(|old| **old != *s) {
                    self.changes.insert(ChangeReason::ServiceEndpoints);
                }
            }
            Object::EndpointSlice(s) => {
                if self.services.slice(&s.key).is_none_or(|old| **old != *s) {
                    self.changes.insert(ChangeReason::ServiceEndpoints);
                }
            }
            Object::ClusterPolicy(p) => match self.index.cluster_policy(&p.name) {
                None => {
                    self.changes.insert(ChangeReason::PolicyAdded);
                }
                Some(old) if **old != *p => {
                    self.changes.insert(ChangeReason::PolicyModified);
                }
                Some(_) => {}
            },
            Object::Node(n) => {
                if self.index.node(&n.name).is_none_or(|o| **o != *n) {
                    self.changes.insert(ChangeReason::Nodes);
                }
            }
        }
    }

    /// Whether every kind has been replaced whole at least once: before
    /// that, the state is partial and must not be published (it could open
    /// pods).
    pub fn is_complete(&self) -> bool {
        self.listed.covers(self.required)
    }

    /// Commits (see [`Self::commit`]) only once the state is complete; the
    /// first such commit is what the data plane's readiness latches on.
    pub fn commit_if_complete(&mut self) -> bool {
        self.is_complete() && self.commit()
    }

    fn note_pod(&mut self, pod: &Pod) {
        match self.index.pod(&pod.key) {
            None => {
                self.changes.insert(ChangeReason::PodIp);
            }
            Some(old) => {
                if old.labels != pod.labels {
                    self.changes.insert(ChangeReason::PodLabels);
                }
                if old.ips != pod.ips || old.host_network != pod.host_network {
                    self.changes.insert(ChangeReason::PodIp);
                }
                // Ports (named ports) and host IPs (node traffic) matter too.
                self.other_change |= **old != *pod;
            }
        }
    }

    fn note_namespace(&mut self, ns: &Namespace) {
        let old = self.index.namespace(&ns.name);
        if old.is_none_or(|old| old.labels != ns.labels) {
            self.changes.insert(ChangeReason::NamespaceLabels);
        }
        // Its audit mode decides whether its policies are enforced.
        if old.is_some_and(|old| old.audit != ns.audit) {
            self.changes.insert(ChangeReason::PolicyModified);
        }
    }

    fn note_policy(&mut self, policy: &Policy) {
        match self.index.policy(&policy.key) {
            None => {
                self.changes.insert(ChangeReason::PolicyAdded);
            }
            Some(old) if **old != *policy => {
                self.changes.insert(ChangeReason::PolicyModified);
            }
            Some(_) => {}
        }
    }

    /// Publishes the current state if anything changed since the last commit
    /// (the first commit always publishes); returns whether it did.
    pub fn commit(&mut self) -> bool {
        if !self.dirty {
            return false;
        }
        self.dirty = false;
        // Every real change was noted as it was applied: no need to compare
        // the whole index with the last snapshot (that would cost O(cluster)
        // per commit).
        let changed = !self.published || !self.changes.is_empty() || self.other_change;
        let changes = std::mem::take(&mut self.changes).into_iter().collect();
        self.other_change = false;
        if !changed {
            return false;
        }
        self.published = true;
        self.version += 1;
        self.log.push(
            self.version,
            std::mem::replace(&mut self.touched, Changed::none()),
        );
        let snapshot = Snapshot {
            index: self.index.clone(),
            services: self.services.clone(),
            version: self.version,
            changes,
            log: self.log.clone(),
        };
        self.tx.send_replace(Some(Arc::new(snapshot)));
        true
    }

    /// The state as it stands (committed or not).
    pub fn index(&self) -> &PolicyIndex {
        &self.index
    }
}

/// The change reason of a compiled side of `direction`.
fn side_changed(direction: Direction) -> ChangeReason {
    match direction {
        Direction::Egress => ChangeReason::PeerEgress,
        Direction::Ingress => ChangeReason::PeerIngress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_policy::convert::namespace_with_labels;
    use picket_policy::Labels;

    #[test]
    fn a_relist_keeps_the_last_good_version_of_an_object_it_cannot_read() {
        let (mut writer, rx) = StateWriter::new();
        let policy = picket_policy::convert::policy(
            &serde_yaml::from_str(
                "metadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n",
            )
            .unwrap(),
        )
        .unwrap()
        .policy;
        for kind in Kind::ALL {
            writer.replace_all(kind, vec![]);
        }
        writer.apply(Object::Policy(policy));
        assert!(writer.commit_if_complete());
        // The relist lists shop/deny, but its new version cannot be read.
        let key = ObjectKey::new("shop", "deny");
        writer.replace_all_keeping(Kind::Policy, vec![], std::slice::from_ref(&key));
        writer.commit();
        assert!(rx.borrow().as_ref().unwrap().index.policy(&key).is_some());
        // A relist that no longer lists it at all removes it.
        writer.replace_all(Kind::Policy, vec![]);
        writer.commit();
        assert!(rx.borrow().as_ref().unwrap().index.policy(&key).is_none());
    }

    #[test]
    fn a_namespace_switching_audit_mode_is_published_as_a_change_of_its_policies() {
        let (mut writer, rx) = StateWriter::new();
        let convert = |yaml: &str| {
            picket_policy::convert::namespace(&serde_yaml::from_str(yaml).unwrap()).unwrap()
        };
        let audited = convert("metadata: {name: shop, annotations: {picket.io/mode: audit}}");
        let enforced = convert("metadata: {name: shop}");
        for kind in Kind::ALL {
            writer.replace_all(kind, vec![]);
        }
        writer.apply(Object::Namespace(audited.clone()));
        assert!(writer.commit_if_complete());
        // Only the mode changes, not the labels: enforcing it again must
        // reach the data plane, and re-check live connections.
        writer.apply(Object::Namespace(enforced));
        assert!(writer.commit(), "the switch to enforce is published");
        let snapshot = rx.borrow().clone().unwrap();
        assert!(!snapshot.index.namespace("shop").unwrap().audit);
        assert_eq!(snapshot.changes, vec![ChangeReason::PolicyModified]);
        writer.apply(Object::Namespace(audited));
        assert!(writer.commit(), "and back to audit");
    }

    #[test]
    fn a_writer_that_requires_services_publishes_nothing_before_they_are_listed() {
        let (mut writer, rx) = StateWriter::new();
        writer.require_services();
        for kind in Kind::POLICY {
            writer.replace_all(kind, vec![]);
        }
        assert!(!writer.commit_if_complete(), "no Services listed yet");
        writer.replace_all(Kind::Service, vec![]);
        assert!(!writer.commit_if_complete(), "no EndpointSlices listed yet");
        assert!(rx.borrow().is_none());
        writer.replace_all(Kind::EndpointSlice, vec![]);
        assert!(writer.commit_if_complete());
        // Without the requirement (the control plane's views), the policy kinds suffice.
        let (mut writer, _rx) = StateWriter::new();
        for kind in Kind::POLICY {
            writer.replace_all(kind, vec![]);
        }
        assert!(writer.commit_if_complete());
    }

    #[test]
    fn nothing_is_published_before_the_first_commit_and_unchanged_state_is_not_republished() {
        let (mut writer, rx) = StateWriter::new();
        assert!(rx.borrow().is_none());
        assert!(
            writer.commit(),
            "the first commit publishes, even when empty"
        );
        assert_eq!(rx.borrow().as_ref().unwrap().version, 1);
        writer.replace_all(Kind::Namespace, vec![]);
        assert!(!writer.commit(), "same state: no new snapshot");
        writer.apply(Object::Namespace(namespace_with_labels("a", Labels::new())));
        assert!(writer.commit());
        let snapshot = rx.borrow().clone().unwrap();
        assert_eq!(snapshot.version, 2);
        assert_eq!(snapshot.changes, vec![ChangeReason::NamespaceLabels]);
        assert!(snapshot.index.namespace("a").is_some());
        writer.delete(&ObjectRef::new(Kind::Namespace, "", "missing"));
        assert!(!writer.commit());
    }
}
