//! What one subscriber has been sent, and the next message that brings it
//! to a new view: the objects that are new or changed, and the keys of those
//! that left.
//!
//! Pure: no I/O. Level-triggered: a subscriber that falls behind skips the
//! states it missed and gets one message from what it has to what is now.

use std::net::IpAddr;
use std::sync::Arc;

use picket_api::convert::cluster::{cluster_policy_to_wire, node_to_wire};
use picket_api::convert::{
    addresses_side_to_wire, namespace_to_wire, pod_side_to_wire, pod_to_wire, policy_to_wire,
    service_to_wire, slice_to_wire,
};
use picket_api::v1;
use picket_policy::shards::Shards;
use picket_policy::{
    ClusterPolicy, Direction, EndpointSlice, Namespace, Node, ObjectKey, Pod, PodKey, Policy,
    PolicyIndex, PolicyKey, Service, ServiceIndex,
};
use rustc_hash::FxHashMap as HashMap;

use picket_state::{Kind, ObjectRef};

use crate::view::{self, AddressEntry, Compiler, Held, Reaches, Scope, Shared, Sides};

/// The most addresses one `SourceEgress` carries (about 6 KiB).
const ADDRESSES_PER_ENTRY: usize = 1024;

/// The subscriber's pod is no longer in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// The objects and entries a subscriber holds, as last sent.
#[derive(Debug, Default)]
pub struct Sent {
    /// The view has outbound parts: destinations' ingress sides, Services
    /// and EndpointSlices.
    outbound: bool,
    namespaces: HashMap<Arc<str>, Arc<Namespace>>,
    pods: HashMap<PodKey, Arc<Pod>>,
    policies: HashMap<PolicyKey, Arc<Policy>>,
    /// How many held pods each namespace has (whether or not its Namespace
    /// object exists).
    pod_namespaces: HashMap<Arc<str>, usize>,
    egress: Sides,
    /// With outbound parts.
    ingress: Sides,
    services: HashMap<ObjectKey, Arc<Service>>,
    slices: HashMap<ObjectKey, Arc<EndpointSlice>>,
    /// A cluster-wide view was sent (see [`Scope::cluster_wide`]).
    cluster_wide: bool,
    cluster_policies: HashMap<Arc<str>, Arc<ClusterPolicy>>,
    nodes: HashMap<Arc<str>, Arc<Node>>,
    /// Every pod as of the last update (shared with the index: 64
    /// pointers): what a pod was before it changed or went away.
    seen: Shards<PodKey, Arc<Pod>>,
    /// How the last update was computed.
    how: How,
}

/// How the last update was computed: the label of
/// `picket_control_view_updates_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum How {
    /// The changes could not touch the view: nothing computed.
    #[default]
    Skipped,
    /// Applied pod by pod and entry by entry.
    Entries,
    /// The view was computed again and compared with what was sent.
    Recomputed,
    /// The whole view was sent (a new stream).
    Full,
}

impl How {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Entries => "entries",
            Self::Recomputed => "recomputed",
            Self::Full => "full",
        }
    }
}

/// How many objects and entries a subscriber holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    /// Namespaces.
    pub namespaces: usize,
    /// Pods.
    pub pods: usize,
    /// Policies.
    pub policies: usize,
    /// Compiled sides (egress, and ingress with outbound parts), by pod
    /// and by address.
    pub sides: usize,
    /// Services and EndpointSlices (outbound parts).
    pub services: usize,
}

/// The address entries one message changes, gathered by entry: addresses
/// with the same claimants (one compiled entry, shared) go in one
/// `SourceEgress` (as the wire calls both directions' entries), and so do
/// the addresses whose entries are removed.
#[derive(Debug, Default)]
struct AddressChanges {
    groups: Vec<(Option<AddressEntry>, Vec<IpAddr>)>,
    /// By the entry's pointer (0: removed): its group.
    by_entry: HashMap<usize, usize>,
}

impl AddressChanges {
    fn add(&mut self, ip: IpAddr, entry: Option<&AddressEntry>) {
        let ptr = entry.map_or(0, |e| Arc::as_ptr(e).cast::<()>() as usize);
        let groups = &mut self.groups;
        let at = *self.by_entry.entry(ptr).or_insert_with(|| {
            groups.push((entry.cloned(), Vec::new()));
            groups.len() - 1
        });
        self.groups[at].1.push(ip);
    }

    fn into_wire(self, out: &mut Vec<v1::SourceEgress>) {
        for (entry, ips) in self.groups {
            for ips in ips.chunks(ADDRESSES_PER_ENTRY) {
                let claimants = entry.iter().flat_map(|e| e.iter().map(|e| &**e));
                out.push(addresses_side_to_wire(ips, claimants));
            }
        }
    }
}

/// Where a direction's entries go in a message.
fn entries_of(msg: &mut v1::WatchResponse, direction: Direction) -> &mut Vec<v1::SourceEgress> {
    match direction {
        Direction::Egress => &mut msg.egress,
        Direction::Ingress => &mut msg.ingress,
    }
}

/// The message being built, and whether anything is in it.
fn is_empty(msg: &v1::WatchResponse) -> bool {
    msg.namespaces.is_empty()
        && msg.pods.is_empty()
        && msg.policies.is_empty()
        && msg.removed.is_empty()
        && msg.egress.is_empty()
        && msg.ingress.is_empty()
        && msg.services.is_empty()
        && msg.endpoint_slices.is_empty()
        && msg.cluster_policies.is_empty()
        && msg.nodes.is_empty()
}

// === impl Sent ===

impl Sent {
    /// A subscriber not sent anything yet; `outbound`: its view has
    /// outbound parts.
    pub fn new(outbound: bool) -> Self {
        Self {
            outbound,
            ..Self::default()
        }
    }

    /// The directions of the sides the view holds.
    fn directions(&self) -> &'static [Direction] {
        if self.outbound {
            &[Direction::Egress, Direction::Ingress]
        } else {
            &[Direction::Egress]
        }
    }

    fn sides(&mut self, direction: Direction) -> &mut Sides {
        match direction {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }

    /// The message that turns what was sent into `scope` of `index`, and
    /// records it as sent. With `full`, the message is the whole view (the
    /// subscriber drops everything it held first). `None`: nothing changed.
    pub fn next(
        &mut self,
        index: &PolicyIndex,
        scope: &Scope,
        full: bool,
    ) -> Option<v1::WatchResponse> {
        if full {
            *self = Self::new(self.outbound);
        }
        let mut msg = v1::WatchResponse {
            full,
            view_format: if full { picket_api::VIEW_FORMAT } else { 0 },
            outbound: full && self.outbound,
            ..Default::default()
        };
        sync(
            &mut self.namespaces,
            scope
                .namespaces
                .iter()
                .filter_map(|n| index.namespace(n).map(|o| (n.clone(), o.clone()))),
            |n| scope.namespaces.contains(n),
            |name, ns| match ns {
                Some(ns) => msg.namespaces.push(namespace_to_wire(ns)),
                None => msg.removed.push(removed(v1::Kind::Namespace, "", name)),
            },
        );
        sync(
            &mut self.pods,
            scope
                .pods
                .iter()
                .filter_map(|k| index.pod(k).map(|o| (k.clone(), o.clone()))),
            |k| scope.pods.contains(k),
            |key, pod| match pod {
                Some(pod) => msg.pods.push(pod_to_wire(pod)),
                None => msg
                    .removed
                    .push(removed(v1::Kind::Pod, &key.namespace, &key.name)),
            },
        );
        sync(
            &mut self.policies,
            scope
                .policies
                .iter()
                .filter_map(|k| index.policy(k).map(|o| (k.clone(), o.clone()))),
            |k| scope.policies.contains(k),
            |key, policy| match policy {
                Some(policy) => msg.policies.push(policy_to_wire(policy)),
                None => msg
                    .removed
                    .push(removed(v1::Kind::Policy, &key.namespace, &key.name)),
            },
        );
        let empty = Sides::default();
        for &direction in self.directions() {
            let wanted = match direction {
                Direction::Egress => &scope.egress,
                Direction::Ingress => scope.ingress.as_ref().unwrap_or(&empty),
            };
            let held_pods = &self.pods;
            let sides = match direction {
                Direction::Egress => &mut self.egress,
                Direction::Ingress => &mut self.ingress,
            };
            let out = entries_of(&mut msg, direction);
            sync(
                &mut sides.pods,
                wanted.pods.iter().map(|(k, e)| (k.clone(), e.clone())),
                |k| wanted.pods.contains_key(k),
                |key, side| {
                    // A pod's entry goes with the pod: only held pods' removals are sent.
                    if side.is_some() || held_pods.contains_key(key) {
                        out.push(pod_side_to_wire(key, side));
                    }
                },
            );
            let mut addresses = AddressChanges::default();
            sides
                .addresses
                .sync(&wanted.addresses, |ip, entry| addresses.add(*ip, entry));
            addresses.into_wire(out);
        }
        self.cluster_wide = scope.cluster_wide;
        msg.cluster_wide = full && scope.cluster_wide;
        sync(
            &mut self.cluster_policies,
            scope
                .cluster_policies
                .iter()
                .filter_map(|n| index.cluster_policy(n).map(|o| (n.clone(), o.clone()))),
            |n| scope.cluster_policies.contains(n),
            |name, policy| match policy {
                Some(policy) => msg.cluster_policies.push(cluster_policy_to_wire(policy)),
                None => msg.removed.push(removed(v1::Kind::ClusterPolicy, "", name)),
            },
        );
        sync(
            &mut self.nodes,
            scope
                .nodes
                .iter()
                .filter_map(|n| index.node(n).map(|o| (n.clone(), o.clone()))),
            |n| scope.nodes.contains(n),
            |name, node| match node {
                Some(node) => msg.nodes.push(node_to_wire(node)),
                None => msg.removed.push(removed(v1::Kind::Node, "", name)),
            },
        );
        self.pod_namespaces.clear();
        for key in self.pods.keys() {
            *self
                .pod_namespaces
                .entry(key.namespace.clone())
                .or_default() += 1;
        }
        (full || !is_empty(&msg)).then_some(msg)
    }

    /// The message that brings the subscriber of `me` to `index`, given the
    /// objects `changed` since it was last brought up to date (`None`:
    /// unknown, anything may have changed). Changes that cannot touch the
    /// view cost a check and send nothing; pod changes are applied pod by
    /// pod, and changes to policies of other namespaces than `me`'s entry by
    /// entry, when that is exact; anything else recomputes the view.
    /// `Err(Gone)`: the index no longer has `me`.
    pub fn update(
        &mut self,
        index: &PolicyIndex,
        shared: &Shared,
        me: &PodKey,
        changed: Option<&[ObjectRef]>,
        full: bool,
    ) -> Result<Option<v1::WatchResponse>, Gone> {
        let message = self.compute(index, shared, me, changed, full);
        self.seen = index.pod_map();
        message
    }

    /// How the last [`Self::update`] was computed.
    pub fn how(&self) -> How {
        self.how
    }

    fn compute(
        &mut self,
        index: &PolicyIndex,
        shared: &Shared,
        me: &PodKey,
        changed: Option<&[ObjectRef]>,
        full: bool,
    ) -> Result<Option<v1::WatchResponse>, Gone> {
        if index.pod(me).is_none() {
            return Err(Gone);
        }
        // A cluster-wide view holds everything: any change recomputes it.
        if let (false, false, Some(changed)) = (full, self.cluster_wide, changed) {
            if !view::may_change(index, me, changed, self) {
                self.how = How::Skipped;
                return Ok(None);
            }
            if let Some(message) = self.objects_changed(index, me, changed) {
                self.how = How::Entries;
                return Ok(message);
            }
        }
        let scope = view::scope(index, shared, me, self.outbound).ok_or(Gone)?;
        // A view turning cluster-wide, or back, is sent whole.
        let full = full || scope.cluster_wide != self.cluster_wide;
        let message = self.next(index, &scope, full);
        self.how = if full { How::Full } else { How::Recomputed };
        Ok(message)
    }

    /// The message for pod and policy changes, when each kind can be
    /// applied by itself (see [`Self::pods_changed`] and
    /// [`Self::policies_changed`]), with one `me`'s ingress and one compiler
    /// for both: the policies' precondition leaves `me`'s selection, and so
    /// what its rules name, as it was, so the pods' changes compose with
    /// theirs. `None` for a namespace change, or when either kind needs the
    /// view recomputed (nothing is recorded then).
    fn objects_changed(
        &mut self,
        index: &PolicyIndex,
        me: &PodKey,
        changed: &[ObjectRef],
    ) -> Option<Option<v1::WatchResponse>> {
        let keys = |kind: Kind| {
            let mut keys: Vec<PodKey> = changed
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| c.key.clone())
                .collect();
            keys.sort();
            keys.dedup();
            keys
        };
        // A namespace's labels, and the cluster-wide kinds, may change what
        // any view holds: recomputed.
        if changed
            .iter()
            .any(|c| matches!(c.kind, Kind::Namespace | Kind::ClusterPolicy | Kind::Node))
        {
            return None;
        }
        let (pods, policies) = (keys(Kind::Pod), keys(Kind::Policy));
        if !policies.is_empty() && !Self::may_apply_policies(index, self, me, &policies) {
            return None;
        }
        let dst = index.pod(me)?;
        let reaches = Reaches::of(index, me, self.outbound);
        let mut compilers = Compilers {
            egress: Compiler::new(index, dst, Direction::Egress),
            ingress: Compiler::new(index, dst, Direction::Ingress),
        };
        let mut msg = v1::WatchResponse::default();
        let mut addresses = [AddressChanges::default(), AddressChanges::default()];
        if !pods.is_empty() {
            let out = (&mut msg, &mut addresses);
            self.pods_changed(index, me, &reaches, &mut compilers, &pods, out)?;
        }
        let out = (&mut msg, &mut addresses);
        self.policies_changed(index, me, &reaches, &mut compilers, &policies, out);
        let [egress, ingress] = addresses;
        egress.into_wire(&mut msg.egress);
        ingress.into_wire(&mut msg.ingress);
        Some((!is_empty(&msg)).then_some(msg))
    }

    /// Whether changes to these policies can be applied entry by entry:
    /// none selected `me` (none is held) or selects it now, enforced or
    /// audited.
    fn may_apply_policies(
        index: &PolicyIndex,
        held: &Self,
        me: &PodKey,
        policies: &[PolicyKey],
    ) -> bool {
        let selecting = |k: &PolicyKey| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .any(|d| {
                    index
                        .selecting(me, d)
                        .iter()
                        .chain(index.auditing(me, d))
                        .any(|p| p.key == *k)
                })
        };
        !policies
            .iter()
            .any(|k| held.policies.contains_key(k) || selecting(k))
    }

    /// Applies changes to `changed_pods` pod by pod, into `msg`, or
    /// returns `None`, having recorded nothing, when that cannot be exact
    /// and the whole view must be recomputed: `me` changed (its selection
    /// may have), or an address is shared by several pods (who holds it
    /// depends on all of them).
    fn pods_changed(
        &mut self,
        index: &PolicyIndex,
        me: &PodKey,
        reaches: &Reaches<'_>,
        compilers: &mut Compilers<'_>,
        changed_pods: &[PodKey],
        (msg, addresses): (&mut v1::WatchResponse, &mut [AddressChanges; 2]),
    ) -> Option<()> {
        let shared_ip = |pod: &Pod| {
            pod.ips
                .iter()
                .any(|ip| index.pods_reporting_ip(*ip).len() > 1)
        };
        // Every reason to recompute is found before anything is recorded as
        // sent: what is sent must stay what the subscriber holds.
        let exact = changed_pods.iter().all(|key| {
            key != me
                && !self.seen.get(key).is_some_and(|p| shared_ip(p))
                && !self.pods.get(key).is_some_and(|p| shared_ip(p))
                && !index.pod(key).is_some_and(|p| shared_ip(p))
        });
        if !exact {
            return None;
        }
        for key in changed_pods {
            let old = self.seen.get(key).cloned();
            let new = index.pod(key);
            match new.filter(|p| reaches.names(index, p)) {
                Some(pod) => {
                    if !self.namespaces.contains_key(&key.namespace) {
                        if let Some(ns) = index.namespace(&key.namespace) {
                            self.namespaces.insert(key.namespace.clone(), ns.clone());
                            msg.namespaces.push(namespace_to_wire(ns));
                        }
                    }
                    let unchanged = self
                        .pods
                        .get(key)
                        .is_some_and(|old| Arc::ptr_eq(old, pod) || **old == **pod);
                    if !unchanged {
                        if self.pods.insert(key.clone(), pod.clone()).is_none() {
                            *self
                                .pod_namespaces
                                .entry(key.namespace.clone())
                                .or_default() += 1;
                        }
                        msg.pods.push(pod_to_wire(pod));
                    }
                    self.sync_pod_sides(compilers, key, msg);
                }
                None => {
                    if self.pods.remove(key).is_some() {
                        self.egress.pods.remove(key);
                        self.ingress.pods.remove(key);
                        if let Some(n) = self.pod_namespaces.get_mut(&key.namespace) {
                            *n -= 1;
                            if *n == 0 {
                                self.pod_namespaces.remove(&key.namespace);
                            }
                        }
                        msg.removed
                            .push(removed(v1::Kind::Pod, &key.namespace, &key.name));
                    }
                }
            }
            // The addresses it had and has: their entries, now.
            let ips = old.iter().chain(new).flat_map(|p| p.ips.iter().copied());
            for ip in ips.collect::<Vec<_>>() {
                for &direction in self.directions() {
                    self.sync_address(compilers, reaches, direction, ip, addresses);
                }
            }
        }
        Some(())
    }

    /// Applies changes to `changed_policies` entry by entry, into `msg`.
    /// Only when [`Self::may_apply_policies`]: none selected `me` or
    /// selects it now, so what `me`'s rules name is unchanged, and they
    /// change only the entries of the pods of their namespaces (a policy
    /// selects pods of its own).
    fn policies_changed(
        &mut self,
        index: &PolicyIndex,
        me: &PodKey,
        reaches: &Reaches<'_>,
        compilers: &mut Compilers<'_>,
        changed_policies: &[PolicyKey],
        (msg, addresses): (&mut v1::WatchResponse, &mut [AddressChanges; 2]),
    ) {
        let mut namespaces: Vec<&str> = changed_policies.iter().map(|k| &*k.namespace).collect();
        namespaces.sort();
        namespaces.dedup();
        for namespace in namespaces {
            for key in index.pods_in(namespace).filter(|k| *k != me) {
                if self.pods.contains_key(key) {
                    self.sync_pod_sides(compilers, key, msg);
                    continue;
                }
                for &direction in self.directions() {
                    if !reaches.may_need_entries(direction) {
                        continue;
                    }
                    if let Some(pod) = index.pod(key) {
                        for ip in &pod.ips {
                            self.sync_address(compilers, reaches, direction, *ip, addresses);
                        }
                    }
                }
            }
        }
    }

    /// Brings the entries of held pod `key` up to date, into `msg`.
    fn sync_pod_sides(
        &mut self,
        compilers: &mut Compilers<'_>,
        key: &PodKey,
        msg: &mut v1::WatchResponse,
    ) {
        for &direction in self.directions() {
            let side = compilers.get(direction).of(key);
            let sides = self.sides(direction);
            if sides.pods.get(key) != side.as_ref() {
                entries_of(msg, direction).push(pod_side_to_wire(key, side.as_deref()));
                match side {
                    Some(side) => sides.pods.insert(key.clone(), side),
                    None => sides.pods.remove(key),
                };
            }
        }
    }

    /// Brings the `direction` entry of `ip` up to date, into `addresses`.
    fn sync_address(
        &mut self,
        compilers: &mut Compilers<'_>,
        reaches: &Reaches<'_>,
        direction: Direction,
        ip: IpAddr,
        addresses: &mut [AddressChanges; 2],
    ) {
        let Some(facing) = reaches.facing(direction) else {
            return;
        };
        let pods = &self.pods;
        let entry = compilers
            .get(direction)
            .address(facing, ip, |k| pods.contains_key(k));
        let table = &mut self.sides(direction).addresses;
        let unchanged = match (table.get(&ip), &entry) {
            (Some(old), Some(new)) => Arc::ptr_eq(old, new) || **old == **new,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        addresses[direction_slot(direction)].add(ip, entry.as_ref());
        table.set(ip, entry);
    }

    /// The message that brings the subscriber's Services and
    /// EndpointSlices (outbound parts: all of the cluster's) to
    /// `services`, given the objects `changed` since (`None`: unknown),
    /// into `msg`. Nothing without outbound parts.
    pub fn services(
        &mut self,
        services: &ServiceIndex,
        changed: Option<&[ObjectRef]>,
        full: bool,
        msg: &mut v1::WatchResponse,
    ) {
        if !self.outbound {
            return;
        }
        // A view the update turned full (cluster-wide, or back) dropped
        // everything sent: the Services go again too.
        let full = full || msg.full;
        let everything = full || changed.is_none();
        let keys = |kind: Kind| {
            (!everything).then(|| {
                changed
                    .unwrap_or_default()
                    .iter()
                    .filter(|c| c.kind == kind)
                    .map(|c| &c.key)
                    .collect::<Vec<_>>()
            })
        };
        sync_objects(
            &mut self.services,
            keys(Kind::Service),
            services.services(),
            |s| &s.key,
            |k| services.service(k),
            |key, service| match service {
                Some(s) => msg.services.push(service_to_wire(s)),
                None => msg
                    .removed
                    .push(removed(v1::Kind::Service, &key.namespace, &key.name)),
            },
        );
        sync_objects(
            &mut self.slices,
            keys(Kind::EndpointSlice),
            services.slices(),
            |s| &s.key,
            |k| services.slice(k),
            |key, slice| match slice {
                Some(s) => msg.endpoint_slices.push(slice_to_wire(s)),
                None => {
                    msg.removed
                        .push(removed(v1::Kind::EndpointSlice, &key.namespace, &key.name))
                }
            },
        );
    }

    /// How many objects and entries the subscriber holds.
    pub fn size(&self) -> Size {
        Size {
            namespaces: self.namespaces.len(),
            pods: self.pods.len(),
            policies: self.policies.len(),
            sides: [&self.egress, &self.ingress]
                .iter()
                .map(|s| s.pods.len() + s.addresses.len())
                .sum(),
            services: self.services.len() + self.slices.len(),
        }
    }
}

/// Brings `held` to `wanted` in place: calls `change` with each new or
/// changed value (compared by pointer, then by value), and with `None` for
/// each key held that `is_wanted` no longer wants.
fn sync<K, V>(
    held: &mut HashMap<K, Arc<V>>,
    wanted: impl Iterator<Item = (K, Arc<V>)>,
    is_wanted: impl Fn(&K) -> bool,
    mut change: impl FnMut(&K, Option<&V>),
) where
    K: std::hash::Hash + Eq,
    V: PartialEq + ?Sized,
{
    let mut count = 0;
    for (key, value) in wanted {
        count += 1;
        match held.get_mut(&key) {
            Some(old) if Arc::ptr_eq(old, &value) || **old == *value => {}
            Some(old) => {
                change(&key, Some(&value));
                *old = value;
            }
            None => {
                change(&key, Some(&value));
                held.insert(key, value);
            }
        }
    }
    // Every wanted key is held now: more held means some are not wanted.
    if held.len() > count {
        held.retain(|key, _| {
            let keep = is_wanted(key);
            if !keep {
                change(key, None);
            }
            keep
        });
    }
}

impl Held for Sent {
    fn pod(&self, key: &PodKey) -> bool {
        self.pods.contains_key(key)
    }

    fn policy(&self, key: &PolicyKey) -> bool {
        self.policies.contains_key(key)
    }

    fn namespace(&self, name: &str) -> bool {
        self.pod_namespaces.contains_key(name) || self.namespaces.contains_key(name)
    }

    fn address(&self, ip: IpAddr) -> bool {
        self.egress.addresses.get(&ip).is_some() || self.ingress.addresses.get(&ip).is_some()
    }

    fn outbound(&self) -> bool {
        self.outbound
    }

    fn seen(&self, key: &PodKey) -> Option<&Arc<Pod>> {
        self.seen.get(key)
    }
}

fn removed(kind: v1::Kind, namespace: &str, name: &str) -> v1::ObjectRef {
    v1::ObjectRef {
        kind: kind as i32,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// The compilers of both directions' sides toward one subscriber's pod.
struct Compilers<'a> {
    egress: Compiler<'a>,
    ingress: Compiler<'a>,
}

impl<'a> Compilers<'a> {
    fn get(&mut self, direction: Direction) -> &mut Compiler<'a> {
        match direction {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }
}

fn direction_slot(direction: Direction) -> usize {
    match direction {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// Brings `held` to the cluster's objects: all of them (`keys` `None`),
/// or those of `keys`; calls `change` with each new or changed object
/// (compared by pointer, then by value), and with `None` for each held one
/// gone.
fn sync_objects<'a, V: PartialEq + 'a>(
    held: &mut HashMap<ObjectKey, Arc<V>>,
    keys: Option<Vec<&ObjectKey>>,
    all: impl Iterator<Item = &'a Arc<V>>,
    key_of: impl Fn(&V) -> &ObjectKey,
    get: impl Fn(&ObjectKey) -> Option<&'a Arc<V>>,
    mut change: impl FnMut(&ObjectKey, Option<&V>),
) {
    let set = |held: &mut HashMap<ObjectKey, Arc<V>>,
               value: &Arc<V>,
               change: &mut dyn FnMut(&ObjectKey, Option<&V>)| {
        let key = key_of(value);
        match held.get(key) {
            Some(old) if Arc::ptr_eq(old, value) || **old == **value => {}
            _ => {
                change(key, Some(value));
                held.insert(key.clone(), value.clone());
            }
        }
    };
    match keys {
        None => {
            let mut wanted = rustc_hash::FxHashSet::default();
            for value in all {
                wanted.insert(key_of(value).clone());
                set(held, value, &mut change);
            }
            let gone: Vec<ObjectKey> = held
                .keys()
                .filter(|k| !wanted.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                held.remove(&key);
                change(&key, None);
            }
        }
        Some(keys) => {
            for key in keys {
                match get(key) {
                    Some(value) => set(held, value, &mut change),
                    None => {
                        if held.remove(key).is_some() {
                            change(key, None);
                        }
                    }
                }
            }
        }
    }
}
