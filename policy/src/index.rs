//! The policy index: the cluster's pods, namespaces and policies, arranged so
//! that a decision touches only what it needs.
//!
//! Pure and synchronous: callers apply and delete objects; nothing here does
//! I/O. Every change is incremental: a pod change recomputes which policies
//! select that pod; a policy change revisits the pods of its namespace only; a
//! namespace change touches nothing else (namespace labels are read at decision
//! time). `PolicyIndex::build` is the full rebuild that the incremental path
//! must always equal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::shards::Shards;

use super::cluster::{ClusterPolicies, ClusterPolicy, Node};
use super::labels::{Labels, LabelsRef, PackedLabels};
use super::model::{Direction, Namespace, Pod, PodKey, Policy, PolicyKey};
use super::toward::CompiledSides;

/// Pods, namespaces and policies, indexed for decisions.
///
/// Maps use the Fx hash: keys come from the API server, not from peers, and
/// a decision makes several lookups. The large maps are sharded and shared
/// copy-on-write, so that publishing a snapshot (a clone) costs pointers, not
/// a copy of every pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyIndex {
    pods: Shards<PodKey, Arc<Pod>>,
    namespaces: HashMap<Arc<str>, IndexedNamespace>,
    /// Policies by namespace, sorted by key so that explanations are stable.
    policies: HashMap<Arc<str>, Arc<BTreeMap<PolicyKey, Arc<Policy>>>>,
    pods_by_namespace: HashMap<Arc<str>, Arc<BTreeSet<PodKey>>>,
    /// The pods that hold each IP (see [`PolicyIndex::pods_with_ip`]);
    /// two only while a stale pod still claims the IP.
    pods_by_ip: Shards<IpAddr, Holders>,
    /// Every pod that reports each IP, holding it or not.
    ip_reports: Shards<IpAddr, Vec<PodKey>>,
    /// The policies selecting each pod, per direction; absent when none do.
    /// Shared, so that copying a shard (a policy change touches the shards
    /// of all its namespace's pods) copies pointers, not lists.
    selection: Shards<PodKey, Arc<Selection>>,
    policy_count: usize,
    /// The cluster policies of the Admin and Baseline tiers. Their subjects
    /// and peers are matched at decision time, so a change of one rebuilds
    /// nothing.
    cluster: ClusterPolicies,
    /// Nodes by name, for `nodes` peers of cluster policies.
    nodes: HashMap<Arc<str>, Arc<Node>>,
    /// The nodes holding each address.
    nodes_by_ip: HashMap<IpAddr, Vec<Arc<Node>>>,

    /// In a pod's view: the sources' egress sides, compiled (see `toward`).
    pub(super) egress_toward_me: Option<CompiledSides>,
    /// In a pod's view with outbound parts: the destinations' ingress
    /// sides, compiled (see `toward`).
    pub(super) ingress_toward_me: Option<CompiledSides>,
}

/// A namespace, with its labels packed for the selectors that read them
/// (see [`PackedLabels`]).
#[derive(Clone, Debug, PartialEq)]
struct IndexedNamespace {
    namespace: Arc<Namespace>,
    labels: Option<PackedLabels>,
}

/// The pods that hold one IP: their keys, sorted, and the same pods as a
/// decision from that IP reads them. Shared, so that copying a shard of
/// the map copies pointers.
#[derive(Clone, Debug, PartialEq)]
struct Holders {
    keys: Arc<[PodKey]>,
    pods: Arc<[Holder]>,
}

/// A pod holding an address, as a decision from that address reads it:
/// the pod, its labels packed, and the policies selecting it, all found
/// with the address in one lookup. A decision from a pod no recent
/// decision touched used to look the pod up by key, walk its labels'
/// tree, and look its selection up by key: a cache miss at each step.
///
/// A copy: [`PolicyIndex::set_selection`] is the one place a pod's
/// selection changes, and it refreshes the holders of the pod's IPs.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Holder {
    /// The pod's key, here so that a decision need not read the pod.
    pub(super) key: PodKey,
    pub(super) pod: Arc<Pod>,
    /// `None`: could not be packed (see [`PackedLabels::pack`]).
    labels: Option<PackedLabels>,
    pub(super) selection: Option<Arc<Selection>>,
}

impl Holder {
    /// The pod's labels, packed where they could be.
    pub(super) fn labels(&self) -> LabelsRef<'_> {
        LabelsRef::of(&self.pod.labels, self.labels.as_ref())
    }
}

/// The policies that select one pod, sorted by key: those enforced, and
/// those in audit mode (which neither isolate nor allow).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Selection {
    pub(super) ingress: Vec<Arc<Policy>>,
    pub(super) egress: Vec<Arc<Policy>>,
    audited_ingress: Vec<Arc<Policy>>,
    audited_egress: Vec<Arc<Policy>>,
}

/// How many objects of each kind the index holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounts {
    /// Pods known.
    pub pods: usize,
    /// Namespaces known.
    pub namespaces: usize,
    /// NetworkPolicies known.
    pub policies: usize,
    /// ClusterNetworkPolicies known.
    pub cluster_policies: usize,
    /// Nodes known.
    pub nodes: usize,
}

// === impl PolicyIndex ===

impl PolicyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index from scratch: the reference the incremental path must equal.
    pub fn build(
        namespaces: impl IntoIterator<Item = Namespace>,
        pods: impl IntoIterator<Item = Pod>,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Self {
        let mut index = Self::new();
        for ns in namespaces {
            index.apply_namespace(ns);
        }
        for policy in policies {
            let policy = Arc::new(policy);
            index.policy_count += 1;
            Arc::make_mut(
                index
                    .policies
                    .entry(policy.key.namespace.clone())
                    .or_default(),
            )
            .insert(policy.key.clone(), policy);
        }
        for pod in pods {
            index.apply_pod(pod);
        }
        index
    }

    /// Adds or replaces a pod.
    pub fn apply_pod(&mut self, mut pod: Pod) {
        if let Some((shared, _)) = self.pods_by_namespace.get_key_value(&*pod.key.namespace) {
            pod.key = pod.key.sharing_namespace(shared);
        }
        let pod = Arc::new(pod);
        let key = pod.key.clone();
        let old = self.pods.insert(key.clone(), pod.clone());
        if let Some(old) = &old {
            if **old == *pod {
                return;
            }
            self.unindex_ips(old);
        }
        self.index_ips(&pod);
        Arc::make_mut(
            self.pods_by_namespace
                .entry(key.namespace.clone())
                .or_default(),
        )
        .insert(key);
        if old.as_ref().is_none_or(|o| o.labels != pod.labels) {
            self.reselect_pod(&pod);
        }
    }

    /// Removes a pod; returns whether it was known.
    pub fn delete_pod(&mut self, key: &PodKey) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        self.unindex_ips(&old);
        if let Some(set) = self.pods_by_namespace.get_mut(&key.namespace) {
            Arc::make_mut(set).remove(key);
            if set.is_empty() {
                self.pods_by_namespace.remove(&key.namespace);
            }
        }
        self.selection.remove(key);
        // In a view, a pod's compiled sides live and die with it.
        for compiled in [&mut self.egress_toward_me, &mut self.ingress_toward_me]
            .into_iter()
            .flatten()
        {
            compiled.set_pod(key.clone(), None);
        }
        true
    }

    /// Adds or replaces a namespace. A change of its audit mode revisits
    /// its policies (and so its pods); nothing else does.
    pub fn apply_namespace(&mut self, namespace: Namespace) {
        let labels = PackedLabels::pack(&namespace.labels);
        let name = namespace.name.clone();
        let audit = namespace.audit;
        let old = self.namespaces.insert(
            name.clone(),
            IndexedNamespace {
                namespace: Arc::new(namespace),
                labels,
            },
        );
        if old.is_some_and(|o| o.namespace.audit) != audit {
            self.reselect_policies_of(&name);
        }
    }

    /// Removes a namespace; returns whether it was known.
    pub fn delete_namespace(&mut self, name: &str) -> bool {
        let Some(old) = self.namespaces.remove(name) else {
            return false;
        };
        if old.namespace.audit {
            self.reselect_policies_of(name);
        }
        true
    }

    /// Whether a policy is in audit mode: by its own annotation, or its
    /// namespace's.
    pub fn is_audited(&self, policy: &Policy) -> bool {
        policy.audit
            || self
                .namespaces
                .get(&policy.key.namespace)
                .is_some_and(|n| n.namespace.audit)
    }

    /// Applies a namespace's policies again (its audit mode changed).
    fn reselect_policies_of(&mut self, namespace: &str) {
        let Some(policies) = self.policies.get(namespace).cloned() else {
            return;
        };
        for policy in policies.values() {
            self.apply_policy((**policy).clone());
        }
    }

    /// Adds or replaces a policy, updating the selection of its namespace's pods.
    pub fn apply_policy(&mut self, policy: Policy) {
        let policy = Arc::new(policy);
        let ns = policy.key.namespace.clone();
        let old = Arc::make_mut(self.policies.entry(ns.clone()).or_default())
            .insert(policy.key.clone(), policy.clone());
        if old.is_none() {
            self.policy_count += 1;
        }
        let Some(pods) = self.pods_by_namespace.get(&ns).cloned() else {
            return;
        };
        let audited = self.is_audited(&policy);
        for key in pods.iter() {
            let Some(pod) = self.pods.get(key) else {
                continue;
            };
            let selects = policy.pod_selector.matches(&pod.labels);
            let was_selected = old.is_some()
                && self
                    .selection
                    .get(key)
                    .is_some_and(|s| s.contains(&policy.key));
            if !selects && !was_selected {
                continue;
            }
            let mut entry = self
                .selection
                .get(key)
                .map(|s| (**s).clone())
                .unwrap_or_default();
            entry.remove(&policy.key);
            if selects {
                entry.insert(&policy, audited);
            }
            self.set_selection(key, entry);
        }
    }

    /// Removes a policy; returns whether it was known.
    pub fn delete_policy(&mut self, key: &PolicyKey) -> bool {
        let Some(by_key) = self.policies.get_mut(&key.namespace) else {
            return false;
        };
        if !by_key.contains_key(key) {
            return false;
        }
        Arc::make_mut(by_key).remove(key);
        if by_key.is_empty() {
            self.policies.remove(&key.namespace);
        }
        self.policy_count -= 1;
        if let Some(pods) = self.pods_by_namespace.get(&key.namespace).cloned() {
            for pod in pods.iter() {
                // Only the entries that hold it are copied.
                let Some(entry) = self.selection.get(pod).filter(|s| s.contains(key)) else {
                    continue;
                };
                let mut entry = (**entry).clone();
                entry.remove(key);
                self.set_selection(pod, entry);
            }
        }
        true
    }

    /// Replaces every pod with these (a relist's complete snapshot).
    pub fn replace_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        let pods: Vec<Pod> = pods.into_iter().collect();
        let keep: BTreeSet<&PodKey> = pods.iter().map(|p| &p.key).collect();
        let gone: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_pod(&key);
        }
        for pod in pods {
            self.apply_pod(pod);
        }
    }

    /// Replaces every namespace with these.
    pub fn replace_namespaces(&mut self, namespaces: impl IntoIterator<Item = Namespace>) {
        let namespaces: Vec<Namespace> = namespaces.into_iter().collect();
        let keep: BTreeSet<&str> = namespaces.iter().map(|n| &*n.name).collect();
        let gone: Vec<Arc<str>> = self
            .namespaces
            .keys()
            .filter(|n| !keep.contains(&***n))
            .cloned()
            .collect();
        for name in gone {
            self.delete_namespace(&name);
        }
        for ns in namespaces {
            self.apply_namespace(ns);
        }
    }

    /// Replaces every policy with these.
    pub fn replace_policies(&mut self, policies: impl IntoIterator<Item = Policy>) {
        let policies: Vec<Policy> = policies.into_iter().collect();
        let keep: BTreeSet<&PolicyKey> = policies.iter().map(|p| &p.key).collect();
        let gone: Vec<PolicyKey> = self
            .policies
            .values()
            .flat_map(|m| m.keys())
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.delete_policy(&key);
        }
        for policy in policies {
            let unchanged = self.policy(&policy.key).is_some_and(|old| **old == policy);
            if !unchanged {
                self.apply_policy(policy);
            }
        }
    }

    /// A pod by key.
    pub fn pod(&self, key: &PodKey) -> Option<&Arc<Pod>> {
        self.pods.get(key)
    }

    /// A policy by key.
    pub fn policy(&self, key: &PolicyKey) -> Option<&Arc<Policy>> {
        self.policies.get(&key.namespace)?.get(key)
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(name).map(|n| &n.namespace)
    }

    /// Every pod, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.pods.values()
    }

    /// Every policy, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values().flat_map(|m| m.values())
    }

    /// The policies of a namespace, sorted by key.
    pub fn policies_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every namespace, in no particular order.
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.namespaces.values().map(|n| &n.namespace)
    }

    /// The live pods claiming an IP (hostNetwork pods never do).
    ///
    /// A pod whose containers have all terminated holds none (it reports
    /// none); a pod being deleted yields its IP to a newer pod that reports
    /// it. An IP no pod holds matches only `ipBlock` peers.
    pub fn pods_with_ip(&self, ip: IpAddr) -> &[PodKey] {
        self.pods_by_ip.get(&ip).map_or(&[], |h| &h.keys)
    }

    /// The one pod holding an IP: its only claimant, or of several (an
    /// address being reused), the one not being deleted.
    pub fn holder_of(&self, ip: IpAddr) -> Option<&Pod> {
        let holders = self.pods_with_ip(ip);
        let mut pods = holders.iter().filter_map(|k| self.pod(k));
        let pod = match holders.len() {
            1 => pods.next(),
            _ => pods.find(|p| !p.deleting),
        }?;
        Some(pod)
    }

    /// The pods holding an IP (see [`Self::pods_with_ip`]), as a decision
    /// from that IP reads them.
    pub(super) fn holders(&self, ip: IpAddr) -> &[Holder] {
        self.pods_by_ip.get(&ip).map_or(&[], |h| &h.pods)
    }

    /// Every IP some pod holds, with the pods holding it (see
    /// [`Self::pods_with_ip`]), in no particular order.
    pub fn held_ips(&self) -> impl Iterator<Item = (IpAddr, &[PodKey])> + '_ {
        self.pods_by_ip
            .iter()
            .map(|(ip, holders)| (*ip, &*holders.keys))
    }

    /// Every pod that reports an IP in its status, holding it or not (a pod
    /// being deleted that has yielded it to a newer one included).
    pub fn pods_reporting_ip(&self, ip: IpAddr) -> &[PodKey] {
        self.ip_reports.get(&ip).map_or(&[], |v| v.as_slice())
    }

    /// The pods of a namespace, sorted by key.
    pub fn pods_in(&self, namespace: &str) -> impl Iterator<Item = &PodKey> {
        self.pods_by_namespace
            .get(namespace)
            .into_iter()
            .flat_map(|set| set.iter())
    }

    /// The labels of a namespace; `None` when its Namespace object is not
    /// known (yet): then only `namespaceSelector: {}` may match its pods.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|n| &n.namespace.labels)
    }

    /// [`Self::namespace_labels`], packed where they could be.
    pub(super) fn namespace_label_source(&self, name: &str) -> Option<LabelsRef<'_>> {
        let n = self.namespaces.get(name)?;
        Some(LabelsRef::of(&n.namespace.labels, n.labels.as_ref()))
    }

    /// Every pod, as a map that a clone shares (64 pointers): what a
    /// subscriber keeps to know the pods as it last saw them.
    pub fn pod_map(&self) -> Shards<PodKey, Arc<Pod>> {
        self.pods.clone()
    }

    /// The policies that select a pod for a direction and are enforced,
    /// sorted by key.
    pub fn selecting(&self, pod: &PodKey, direction: Direction) -> &[Arc<Policy>] {
        self.selection.get(pod).map_or(&[], |s| s.get(direction))
    }

    /// The policies selecting a pod, enforced and audited.
    pub(super) fn selection_of(&self, pod: &PodKey) -> Option<&Selection> {
        self.selection.get(pod).map(|s| &**s)
    }

    /// The policies in audit mode that select a pod for a direction,
    /// sorted by key.
    pub fn auditing(&self, pod: &PodKey, direction: Direction) -> &[Arc<Policy>] {
        self.selection
            .get(pod)
            .map_or(&[], |s| s.audited(direction))
    }

    /// How many objects of each kind are known.
    pub fn counts(&self) -> IndexCounts {
        IndexCounts {
            pods: self.pods.len(),
            namespaces: self.namespaces.len(),
            policies: self.policy_count,
            cluster_policies: self.cluster.len(),
            nodes: self.nodes.len(),
        }
    }

    /// Adds or replaces a cluster policy (by name).
    pub fn apply_cluster_policy(&mut self, policy: ClusterPolicy) {
        self.cluster.insert(policy);
    }

    /// Removes a cluster policy; returns whether it was known.
    pub fn delete_cluster_policy(&mut self, name: &str) -> bool {
        self.cluster.remove(name).is_some()
    }

    /// Replaces every cluster policy with these.
    pub fn replace_cluster_policies(&mut self, policies: impl IntoIterator<Item = ClusterPolicy>) {
        let mut all = ClusterPolicies::default();
        for policy in policies {
            all.insert(policy);
        }
        self.cluster = all;
    }

    /// The cluster policies, both tiers in the order sides consult them.
    pub fn cluster_policies(&self) -> &ClusterPolicies {
        &self.cluster
    }

    /// A cluster policy by name.
    pub fn cluster_policy(&self, name: &str) -> Option<&Arc<ClusterPolicy>> {
        self.cluster.get(name)
    }

    /// Adds or replaces a node.
    pub fn apply_node(&mut self, node: Node) {
        let node = Arc::new(node);
        if let Some(old) = self.nodes.insert(node.name.clone(), node.clone()) {
            self.unindex_node(&old);
        }
        for ip in &node.addresses {
            self.nodes_by_ip.entry(*ip).or_default().push(node.clone());
        }
    }

    /// Removes a node; returns whether it was known.
    pub fn delete_node(&mut self, name: &str) -> bool {
        let Some(old) = self.nodes.remove(name) else {
            return false;
        };
        self.unindex_node(&old);
        true
    }

    /// Replaces every node with these.
    pub fn replace_nodes(&mut self, nodes: impl IntoIterator<Item = Node>) {
        self.nodes.clear();
        self.nodes_by_ip.clear();
        for node in nodes {
            self.apply_node(node);
        }
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.get(name)
    }

    /// Every node, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes.values()
    }

    /// The nodes with this address.
    pub(super) fn nodes_with_ip(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes_by_ip.get(&ip).into_iter().flatten()
    }

    fn unindex_node(&mut self, node: &Node) {
        for ip in &node.addresses {
            if let Some(list) = self.nodes_by_ip.get_mut(ip) {
                list.retain(|n| n.name != node.name);
                if list.is_empty() {
                    self.nodes_by_ip.remove(ip);
                }
            }
        }
    }

    fn index_ips(&mut self, pod: &Pod) {
        if pod.host_network {
            return;
        }
        for ip in &pod.ips {
            let reports = self.ip_reports.get_or_insert_with(*ip, Vec::new);
            if let Err(at) = reports.binary_search(&pod.key) {
                reports.insert(at, pod.key.clone());
            }
            self.reclaim(*ip);
        }
    }

    fn unindex_ips(&mut self, pod: &Pod) {
        for ip in &pod.ips {
            if let Some(reports) = self.ip_reports.get_mut(ip) {
                reports.retain(|k| *k != pod.key);
                if reports.is_empty() {
                    self.ip_reports.remove(ip);
                }
            }
            self.reclaim(*ip);
        }
    }

    /// Recomputes which of the pods reporting `ip` hold it: all of them,
    /// except a pod being deleted when a pod not being deleted, created no
    /// earlier, reports the IP too (IPAM gave it to the newer pod).
    ///
    /// Also what refreshes the holders' copies of a pod and its selection.
    fn reclaim(&mut self, ip: IpAddr) {
        let reports = self.ip_reports.get(&ip).cloned().unwrap_or_default();
        let pods: Vec<&Arc<Pod>> = reports.iter().filter_map(|k| self.pods.get(k)).collect();
        let holding: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| {
                !p.deleting
                    || !pods
                        .iter()
                        .any(|newer| !newer.deleting && newer.created >= p.created)
            })
            .copied()
            .collect();
        if holding.is_empty() {
            self.pods_by_ip.remove(&ip);
            return;
        }
        let current = self.pods_by_ip.get(&ip).is_some_and(|h| {
            h.pods.len() == holding.len()
                && h.pods.iter().zip(&holding).all(|(held, pod)| {
                    Arc::ptr_eq(&held.pod, pod)
                        && opt_ptr_eq(held.selection.as_ref(), self.selection.get(&pod.key))
                })
        });
        if current {
            return;
        }
        let holders = Holders {
            keys: holding.iter().map(|p| p.key.clone()).collect(),
            pods: holding
                .iter()
                .map(|pod| Holder {
                    key: pod.key.clone(),
                    pod: Arc::clone(pod),
                    labels: PackedLabels::pack(&pod.labels),
                    selection: self.selection.get(&pod.key).cloned(),
                })
                .collect(),
        };
        self.pods_by_ip.insert(ip, holders);
    }

    /// Sets the policies selecting a pod (none: removes its entry), and
    /// refreshes the copies its IPs' holders keep.
    fn set_selection(&mut self, key: &PodKey, selection: Selection) {
        if selection.is_empty() {
            if self.selection.remove(key).is_none() {
                return;
            }
        } else {
            self.selection.insert(key.clone(), Arc::new(selection));
        }
        let Some(pod) = self.pods.get(key).cloned() else {
            return;
        };
        for ip in &pod.ips {
            self.reclaim(*ip);
        }
    }

    fn reselect_pod(&mut self, pod: &Pod) {
        let mut selection = Selection::default();
        if let Some(policies) = self.policies.get(&pod.key.namespace) {
            for policy in policies.values() {
                if policy.pod_selector.matches(&pod.labels) {
                    selection.insert(policy, self.is_audited(policy));
                }
            }
        }
        self.set_selection(&pod.key, selection);
    }
}

fn opt_ptr_eq<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

// === impl Selection ===

impl Selection {
    pub(super) fn get(&self, direction: Direction) -> &[Arc<Policy>] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub(super) fn audited(&self, direction: Direction) -> &[Arc<Policy>] {
        match direction {
            Direction::Ingress => &self.audited_ingress,
            Direction::Egress => &self.audited_egress,
        }
    }

    fn insert(&mut self, policy: &Arc<Policy>, audited: bool) {
        let (ingress, egress) = if audited {
            (&mut self.audited_ingress, &mut self.audited_egress)
        } else {
            (&mut self.ingress, &mut self.egress)
        };
        for (list, isolates) in [
            (ingress, policy.ingress.is_some()),
            (egress, policy.egress.is_some()),
        ] {
            if isolates {
                let at = list.partition_point(|p| p.key < policy.key);
                list.insert(at, policy.clone());
            }
        }
    }

    fn lists(&self) -> [&Vec<Arc<Policy>>; 4] {
        [
            &self.ingress,
            &self.egress,
            &self.audited_ingress,
            &self.audited_egress,
        ]
    }

    fn contains(&self, key: &PolicyKey) -> bool {
        self.lists()
            .into_iter()
            .any(|list| list.iter().any(|p| p.key == *key))
    }

    fn remove(&mut self, key: &PolicyKey) {
        for list in [
            &mut self.ingress,
            &mut self.egress,
            &mut self.audited_ingress,
            &mut self.audited_egress,
        ] {
            list.retain(|p| p.key != *key);
        }
    }

    fn is_empty(&self) -> bool {
        self.lists().into_iter().all(|list| list.is_empty())
    }
}
