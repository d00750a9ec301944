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
use picket_policy::{Namespace, Pod, PodKey, Policy, PolicyIndex, PolicyKey};

use crate::view::{Held, Scope};

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
            *self.pod_namespaces.entry(key.namespace.clone()).or_default() += 1;
        }
        let empty = msg.namespaces.is_empty()
            && msg.pods.is_empty()
            && msg.policies.is_empty()
            && msg.removed.is_empty();
        (full || !empty).then_some(msg)
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
