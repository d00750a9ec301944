//! What one subscriber has been sent, and the next message that brings it
//! to a new view: the objects that are new or changed, and the keys of those
//! that left.
//!
//! Pure: no I/O. Level-triggered: a subscriber that falls behind skips the
//! states it missed and gets one message from what it has to what is now.

use std::collections::HashMap;
use std::sync::Arc;

use picket_api::convert::{namespace_to_wire, pod_to_wire, policy_to_wire};
use picket_api::v1;
use picket_policy::{Direction, Namespace, Pod, PodKey, Policy, PolicyIndex, PolicyKey};

use picket_state::{Kind, ObjectRef};

use crate::view::{self, Held, Scope, Shared};

/// The subscriber's pod is no longer in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// The objects a subscriber holds, as last sent.
#[derive(Debug, Default)]
pub struct Sent {
    namespaces: HashMap<Arc<str>, Arc<Namespace>>,
    pods: HashMap<PodKey, Arc<Pod>>,
    policies: HashMap<PolicyKey, Arc<Policy>>,
    /// How many held pods each namespace has (whether or not its Namespace
    /// object exists).
    pod_namespaces: HashMap<Arc<str>, usize>,
}

/// How many objects a subscriber holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    /// Namespaces.
    pub namespaces: usize,
    /// Pods.
    pub pods: usize,
    /// Policies.
    pub policies: usize,
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
            ..Default::default()
        };
        sync(
            &mut self.namespaces,
            scope
                .namespaces
                .iter()
                .filter_map(|n| index.namespace(n).map(|o| (n.clone(), o))),
            |ns| msg.namespaces.push(namespace_to_wire(ns)),
            |name| msg.removed.push(removed(v1::Kind::Namespace, "", name)),
        );
        sync(
            &mut self.pods,
            scope
                .pods
                .iter()
                .filter_map(|k| index.pod(k).map(|o| (k.clone(), o))),
            |pod| msg.pods.push(pod_to_wire(pod)),
            |key| {
                msg.removed
                    .push(removed(v1::Kind::Pod, &key.namespace, &key.name))
            },
        );
        sync(
            &mut self.policies,
            scope
                .policies
                .iter()
                .filter_map(|k| index.policy(k).map(|o| (k.clone(), o))),
            |policy| msg.policies.push(policy_to_wire(policy)),
            |key| {
                msg.removed
                    .push(removed(v1::Kind::Policy, &key.namespace, &key.name))
            },
        );
        self.pod_namespaces.clear();
        for key in self.pods.keys() {
            *self
                .pod_namespaces
                .entry(key.namespace.clone())
                .or_default() += 1;
        }
        let empty = msg.namespaces.is_empty()
            && msg.pods.is_empty()
            && msg.policies.is_empty()
            && msg.removed.is_empty();
        (full || !empty).then_some(msg)
    }

    /// The message that brings the subscriber of `me` to `index`, given the
    /// objects `changed` since it was last brought up to date (`None`:
    /// unknown, anything may have changed). Changes that cannot touch the
    /// view cost a check and send nothing; pod changes are applied pod by pod
    /// when that is exact; anything else recomputes the view. `Err(Gone)`: the
    /// index no longer has `me`.
    pub fn update(
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
                return Ok(None);
            }
            if changed.iter().all(|c| c.kind == Kind::Pod) {
                let mut pods: Vec<PodKey> = changed.iter().map(|c| c.key.clone()).collect();
                pods.sort();
                pods.dedup();
                if let Some(message) = self.pods_changed(index, me, &pods) {
                    return Ok(message);
                }
            }
        }
        let scope = view::scope(index, shared, me).ok_or(Gone)?;
        Ok(self.next(index, &scope, full))
    }

    /// The message for changes to `changed_pods` alone (no policy or
    /// namespace changed), computed pod by pod, or `None` when that cannot
    /// be exact and the whole view must be recomputed: `me` changed (its
    /// selection may have), an address is shared by several pods (who holds
    /// it depends on all of them), or a pod joins whose egress policies or
    /// namespace are not held yet and are not simple to add.
    /// `Some(None)`: nothing to send.
    pub fn pods_changed(
        &mut self,
        index: &PolicyIndex,
        me: &PodKey,
        changed_pods: &[PodKey],
    ) -> Option<Option<v1::WatchResponse>> {
        let mut msg = v1::WatchResponse::default();
        let shared_ip = |pod: &Pod| {
            pod.ips
                .iter()
                .any(|ip| index.pods_reporting_ip(*ip).len() > 1)
        };
        for key in changed_pods {
            if key == me {
                return None;
            }
            let new = index.pod(key);
            if self.pods.get(key).is_some_and(|old| shared_ip(old))
                || new.is_some_and(|p| shared_ip(p))
            {
                return None;
            }
            match new.filter(|p| view::is_source(index, me, p)) {
                Some(pod) => {
                    let egress = index.selecting(key, Direction::Egress);
                    if egress.iter().any(|p| !self.policies.contains_key(&p.key)) {
                        return None;
                    }
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
                }
                None => {
                    if self.pods.remove(key).is_some() {
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
        }
        let empty = msg.namespaces.is_empty() && msg.pods.is_empty() && msg.removed.is_empty();
        Some((!empty).then_some(msg))
    }

    /// How many objects the subscriber holds.
    pub fn size(&self) -> Size {
        Size {
            namespaces: self.namespaces.len(),
            pods: self.pods.len(),
            policies: self.policies.len(),
        }
    }
}

/// Brings `held` to `wanted`: calls `send` for each new or changed object
/// and `remove` for each key no longer wanted.
fn sync<'a, K, V>(
    held: &mut HashMap<K, Arc<V>>,
    wanted: impl Iterator<Item = (K, &'a Arc<V>)>,
    mut send: impl FnMut(&V),
    mut remove: impl FnMut(&K),
) where
    K: std::hash::Hash + Eq + Clone,
    V: PartialEq + 'a,
{
    let mut next = HashMap::with_capacity(held.len());
    for (key, object) in wanted {
        let unchanged = held
            .get(&key)
            .is_some_and(|old| Arc::ptr_eq(old, object) || **old == **object);
        if !unchanged {
            send(object);
        }
        next.insert(key, object.clone());
    }
    for key in held.keys() {
        if !next.contains_key(key) {
            remove(key);
        }
    }
    *held = next;
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
}

fn removed(kind: v1::Kind, namespace: &str, name: &str) -> v1::ObjectRef {
    v1::ObjectRef {
        kind: kind as i32,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}
