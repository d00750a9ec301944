//! What one subscriber has been sent, and the next message that brings it
//! to a new view: the objects that are new or changed, and the keys of those
//! that left.
//!
//! Pure: no I/O. Level-triggered: a subscriber that falls behind skips the
//! states it missed and gets one message from what it has to what is now.

use std::net::IpAddr;
use std::sync::Arc;

use picket_api::convert::{
    addresses_egress_to_wire, namespace_to_wire, pod_egress_to_wire, pod_to_wire, policy_to_wire,
};
use picket_api::v1;
use picket_policy::shards::Shards;
use picket_policy::{
    Direction, EgressToward, Namespace, Pod, PodKey, Policy, PolicyIndex, PolicyKey,
};
use rustc_hash::FxHashMap as HashMap;

use picket_state::{Kind, ObjectRef};

use crate::view::{self, AddressEntry, AddressTable, Compiler, Held, Ingress, Scope, Shared};

/// The most addresses one `SourceEgress` carries (about 6 KiB).
const ADDRESSES_PER_ENTRY: usize = 1024;

/// The subscriber's pod is no longer in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// The objects and entries a subscriber holds, as last sent.
#[derive(Debug, Default)]
pub struct Sent {
    namespaces: HashMap<Arc<str>, Arc<Namespace>>,
    pods: HashMap<PodKey, Arc<Pod>>,
    policies: HashMap<PolicyKey, Arc<Policy>>,
    /// How many held pods each namespace has (whether or not its Namespace
    /// object exists).
    pod_namespaces: HashMap<Arc<str>, usize>,
    pod_egress: HashMap<PodKey, Arc<EgressToward>>,
    address_egress: AddressTable,
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
    /// Egress entries, by pod and by address.
    pub egress: usize,
}

/// The address entries one message changes, gathered by entry: addresses
/// with the same claimants (one compiled entry, shared) go in one
/// `SourceEgress`, and so do the addresses whose entries are removed.
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

    fn into_wire(self, msg: &mut v1::WatchResponse) {
        for (entry, ips) in self.groups {
            for ips in ips.chunks(ADDRESSES_PER_ENTRY) {
                let claimants = entry.iter().flat_map(|e| e.iter().map(|e| &**e));
                msg.egress.push(addresses_egress_to_wire(ips, claimants));
            }
        }
    }
}

/// The message being built, and whether anything is in it.
fn is_empty(msg: &v1::WatchResponse) -> bool {
    msg.namespaces.is_empty()
        && msg.pods.is_empty()
        && msg.policies.is_empty()
        && msg.removed.is_empty()
        && msg.egress.is_empty()
}

// === impl Sent ===

impl Sent {
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
            *self = Self::default();
        }
        let mut msg = v1::WatchResponse {
            full,
            view_format: if full { picket_api::VIEW_FORMAT } else { 0 },
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
        let held_pods = &self.pods;
        sync(
            &mut self.pod_egress,
            scope.pod_egress.iter().map(|(k, e)| (k.clone(), e.clone())),
            |k| scope.pod_egress.contains_key(k),
            |key, egress| {
                // A pod's entry goes with the pod: only held pods' removals are sent.
                if egress.is_some() || held_pods.contains_key(key) {
                    msg.egress.push(pod_egress_to_wire(key, egress));
                }
            },
        );
        let mut addresses = AddressChanges::default();
        self.address_egress
            .sync(&scope.address_egress, |ip, entry| addresses.add(*ip, entry));
        addresses.into_wire(&mut msg);
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
        if let (false, Some(changed)) = (full, changed) {
            if !view::may_change(index, me, changed, self) {
                self.how = How::Skipped;
                return Ok(None);
            }
            if let Some(message) = self.objects_changed(index, me, changed) {
                self.how = How::Entries;
                return Ok(message);
            }
        }
        let scope = view::scope(index, shared, me).ok_or(Gone)?;
        let message = self.next(index, &scope, full);
        self.how = if full { How::Full } else { How::Recomputed };
        Ok(message)
    }

    /// The message for pod and policy changes, when each kind can be
    /// applied by itself (see [`Self::pods_changed`] and
    /// [`Self::policies_changed`]), with one `me`'s ingress and one compiler
    /// for both: the policies' precondition leaves `me`'s selection, and so
    /// what its ingress names, as it was, so the pods' changes compose with
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
        if changed.iter().any(|c| c.kind == Kind::Namespace) {
            return None;
        }
        let (pods, policies) = (keys(Kind::Pod), keys(Kind::Policy));
        if !policies.is_empty() && !Self::may_apply_policies(index, self, me, &policies) {
            return None;
        }
        let dst = index.pod(me)?;
        let ingress = Ingress::of(index, me);
        let mut compiler = Compiler::new(index, dst);
        let mut msg = v1::WatchResponse::default();
        let mut addresses = AddressChanges::default();
        if !pods.is_empty() {
            let out = (&mut msg, &mut addresses);
            self.pods_changed(index, me, &ingress, &mut compiler, &pods, out)?;
        }
        let out = (&mut msg, &mut addresses);
        self.policies_changed(index, me, &ingress, &mut compiler, &policies, out);
        addresses.into_wire(&mut msg);
        Some((!is_empty(&msg)).then_some(msg))
    }

    /// Whether changes to these policies can be applied entry by entry:
    /// none selected `me` (none is held) or selects it now.
    fn may_apply_policies(
        index: &PolicyIndex,
        held: &Self,
        me: &PodKey,
        policies: &[PolicyKey],
    ) -> bool {
        let selecting = |k: &PolicyKey| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .any(|d| index.selecting(me, d).iter().any(|p| p.key == *k))
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
        ingress: &Ingress<'_>,
        compiler: &mut Compiler<'_>,
        changed_pods: &[PodKey],
        (msg, addresses): (&mut v1::WatchResponse, &mut AddressChanges),
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
            match new.filter(|p| ingress.names(index, p)) {
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
                    self.sync_pod_egress(compiler, key, msg);
                }
                None => {
                    if self.pods.remove(key).is_some() {
                        self.pod_egress.remove(key);
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
                self.sync_address(compiler, ingress, ip, addresses);
            }
        }
        Some(())
    }

    /// Applies changes to `changed_policies` entry by entry, into `msg`.
    /// Only when [`Self::may_apply_policies`]: none selected `me` or
    /// selects it now, so what `me`'s ingress names is unchanged, and they
    /// change only the egress entries of the pods of their namespaces (a
    /// policy selects pods of its own).
    fn policies_changed(
        &mut self,
        index: &PolicyIndex,
        me: &PodKey,
        ingress: &Ingress<'_>,
        compiler: &mut Compiler<'_>,
        changed_policies: &[PolicyKey],
        (msg, addresses): (&mut v1::WatchResponse, &mut AddressChanges),
    ) {
        let mut namespaces: Vec<&str> = changed_policies.iter().map(|k| &*k.namespace).collect();
        namespaces.sort();
        namespaces.dedup();
        for namespace in namespaces {
            for key in index.pods_in(namespace).filter(|k| *k != me) {
                if self.pods.contains_key(key) {
                    self.sync_pod_egress(compiler, key, msg);
                } else if ingress.admits_by_address() {
                    if let Some(pod) = index.pod(key) {
                        for ip in &pod.ips {
                            self.sync_address(compiler, ingress, *ip, addresses);
                        }
                    }
                }
            }
        }
    }

    /// Brings the entry of held pod `key` up to date, into `msg`.
    fn sync_pod_egress(
        &mut self,
        compiler: &mut Compiler<'_>,
        key: &PodKey,
        msg: &mut v1::WatchResponse,
    ) {
        let egress = compiler.of(key);
        if self.pod_egress.get(key) != egress.as_ref() {
            msg.egress.push(pod_egress_to_wire(key, egress.as_deref()));
            match egress {
                Some(egress) => self.pod_egress.insert(key.clone(), egress),
                None => self.pod_egress.remove(key),
            };
        }
    }

    /// Brings the entry of `ip` up to date, into `addresses`.
    fn sync_address(
        &mut self,
        compiler: &mut Compiler<'_>,
        ingress: &Ingress<'_>,
        ip: IpAddr,
        addresses: &mut AddressChanges,
    ) {
        let pods = &self.pods;
        let entry = compiler.address(ingress, ip, |k| pods.contains_key(k));
        let unchanged = match (self.address_egress.get(&ip), &entry) {
            (Some(old), Some(new)) => Arc::ptr_eq(old, new) || **old == **new,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        addresses.add(ip, entry.as_ref());
        self.address_egress.set(ip, entry);
    }

    /// How many objects and entries the subscriber holds.
    pub fn size(&self) -> Size {
        Size {
            namespaces: self.namespaces.len(),
            pods: self.pods.len(),
            policies: self.policies.len(),
            egress: self.pod_egress.len() + self.address_egress.len(),
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
        self.address_egress.get(&ip).is_some()
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
