//! Which objects of the cluster one pod's decisions read: its view.
//!
//! Pure: no I/O. The sidecar evaluates its view with the same engine, the
//! same index and the same function as the full cluster, so the view is
//! correct when, for every source address and port, the engine decides the
//! same on the view as on the whole cluster. What it holds, for a pod `D`:
//!
//! - `D`, its namespace, and every policy that selects it;
//! - every pod that a pod peer of `D`'s ingress rules matches (its labels
//!   decide), and every pod whose egress is isolated unless `D`'s ingress
//!   surely denies it whatever its egress says (its egress rules decide);
//!   with each, the policies that select it for egress and its namespace;
//! - with every pod, all the pods that report one of its IPs (who holds an
//!   IP, and whether every holder is allowed, depends on all of them).
//!
//! A pod left out is one the engine treats exactly like an address that is
//! no pod: it matches no pod peer of `D`'s, and its egress is not isolated
//! (or does not matter). The differential tests check this against the
//! engine on the full cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use picket_policy::eval::pods_peer_matches;
use picket_policy::{
    Direction, IpBlock, NamespaceScope, Peer, Pod, PodKey, PolicyIndex, PolicyKey, Selector,
};
use picket_state::{Kind, ObjectRef};

/// The keys of the objects in one pod's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Namespaces, by name.
    pub namespaces: HashSet<Arc<str>>,
    /// Pods.
    pub pods: HashSet<PodKey>,
    /// Policies.
    pub policies: HashSet<PolicyKey>,
}

/// Work shared by every view computed from one index: the pods each pod
/// peer selects, and the pods whose egress is isolated. Build one per index
/// version and use it for every subscriber.
#[derive(Debug, Default)]
pub struct Shared {
    peers: std::sync::Mutex<HashMap<String, Arc<Vec<PodKey>>>>,
    egress_isolated: std::sync::OnceLock<Arc<Vec<PodKey>>>,
}

// === impl Shared ===

impl Shared {
    /// The pods a pod peer selects, memoised by the peer's text.
    fn peer_members(
        &self,
        index: &PolicyIndex,
        namespaces: &NamespaceScope,
        pods: Option<&Selector>,
    ) -> Arc<Vec<PodKey>> {
        let key = format!("{namespaces:?}|{pods:?}");
        let mut memo = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = memo.get(&key) {
            return found.clone();
        }
        // Only the pods of the namespaces the peer can name: its own, or
        // those whose labels match (every pod for `{}`, which also matches
        // pods of namespaces not known yet).
        let candidates: Vec<&PodKey> = match namespaces {
            NamespaceScope::Policy(ns) => index.pods_in(ns).collect(),
            NamespaceScope::Selected(selector) if selector.is_everything() => {
                index.pods().map(|p| &p.key).collect()
            }
            NamespaceScope::Selected(selector) => index
                .namespaces()
                .filter(|ns| selector.matches(&ns.labels))
                .flat_map(|ns| index.pods_in(&ns.name))
                .collect(),
        };
        let members: Vec<PodKey> = candidates
            .into_iter()
            .filter_map(|key| index.pod(key))
            .filter(|pod| {
                pods_peer_matches(
                    namespaces,
                    pods,
                    pod,
                    index.namespace_labels(&pod.key.namespace),
                )
            })
            .map(|pod| pod.key.clone())
            .collect();
        let members = Arc::new(members);
        memo.insert(key, members.clone());
        members
    }

    /// The pods some policy isolates for egress.
    fn egress_isolated(&self, index: &PolicyIndex) -> Arc<Vec<PodKey>> {
        self.egress_isolated
            .get_or_init(|| {
                Arc::new(
                    index
                        .pods()
                        .filter(|p| !index.selecting(&p.key, Direction::Egress).is_empty())
                        .map(|p| p.key.clone())
                        .collect(),
                )
            })
            .clone()
    }
}

/// What `me`'s ingress rules let in, as the view needs it.
struct Ingress<'a> {
    /// Pod peers: namespaces and pods.
    peers: Vec<(&'a NamespaceScope, Option<&'a Selector>)>,
    /// `ipBlock` peers.
    blocks: Vec<&'a IpBlock>,
    /// Some rule allows every peer, or `me` is not isolated for ingress.
    every_peer: bool,
}

impl<'a> Ingress<'a> {
    fn of(index: &'a PolicyIndex, me: &PodKey) -> Self {
        let policies = index.selecting(me, Direction::Ingress);
        let mut ingress = Self {
            peers: Vec::new(),
            blocks: Vec::new(),
            every_peer: policies.is_empty(),
        };
        for rule in policies.iter().flat_map(|p| p.ingress.iter().flatten()) {
            if rule.broken.is_some() {
                continue;
            }
            let Some(peers) = &rule.peers else {
                ingress.every_peer = true;
                continue;
            };
            for peer in peers {
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        ingress.peers.push((namespaces, pods.as_ref()))
                    }
                    Peer::IpBlock(block) => ingress.blocks.push(block),
                }
            }
        }
        ingress
    }

    /// Whether some pod may be let in for its address alone.
    fn admits_by_address(&self) -> bool {
        self.every_peer || !self.blocks.is_empty()
    }

    /// Whether an egress-isolated pod could be let in: its egress rules then decide.
    fn may_admit(&self, pod: &Pod) -> bool {
        self.every_peer
            || pod
                .ips
                .iter()
                .any(|ip| self.blocks.iter().any(|b| b.contains(*ip)))
    }
}

/// Whether a pod is one the scope takes in for itself (not for sharing an
/// IP): it matches a pod peer of `me`'s ingress, or its egress is isolated
/// and `me` may admit it.
pub fn is_source(index: &PolicyIndex, me: &PodKey, pod: &Pod) -> bool {
    let ingress = Ingress::of(index, me);
    ingress.takes_in(index, pod)
}

impl Ingress<'_> {
    fn takes_in(&self, index: &PolicyIndex, pod: &Pod) -> bool {
        let namespace_labels = index.namespace_labels(&pod.key.namespace);
        self.peers
            .iter()
            .any(|(namespaces, pods)| pods_peer_matches(namespaces, *pods, pod, namespace_labels))
            || (!index.selecting(&pod.key, Direction::Egress).is_empty() && self.may_admit(pod))
    }
}

/// The view of pod `me`; `None` when the index does not know it.
pub fn scope(index: &PolicyIndex, shared: &Shared, me: &PodKey) -> Option<Scope> {
    let dst = index.pod(me)?;
    let mut scope = Scope::default();
    for direction in [Direction::Ingress, Direction::Egress] {
        for policy in index.selecting(me, direction) {
            scope.policies.insert(policy.key.clone());
        }
    }
    let ingress = Ingress::of(index, me);
    let mut sources = HashSet::new();
    for (namespaces, pods) in &ingress.peers {
        sources.extend(
            shared
                .peer_members(index, namespaces, *pods)
                .iter()
                .cloned(),
        );
    }
    // Only a pod that admits by address takes in egress-isolated pods that
    // no pod peer names (the others are among the peers already).
    if ingress.admits_by_address() {
        for key in shared.egress_isolated(index).iter() {
            if !sources.contains(key) && index.pod(key).is_some_and(|p| ingress.may_admit(p)) {
                sources.insert(key.clone());
            }
        }
    }
    sources.insert(me.clone());
    let pods = with_ip_sharers(index, sources);
    for key in &pods {
        let Some(pod) = index.pod(key) else { continue };
        scope.namespaces.insert(pod.key.namespace.clone());
        for policy in index.selecting(key, Direction::Egress) {
            scope.policies.insert(policy.key.clone());
        }
    }
    scope.namespaces.insert(dst.key.namespace.clone());
    // A namespace the cluster does not know stays unknown in the view.
    scope.namespaces.retain(|ns| index.namespace(ns).is_some());
    scope.pods = pods;
    Some(scope)
}

/// What a subscriber holds, as [`may_change`] asks it.
pub trait Held {
    /// It holds this pod.
    fn pod(&self, key: &PodKey) -> bool;
    /// It holds this policy.
    fn policy(&self, key: &PolicyKey) -> bool;
    /// It holds this namespace, or pods of it (`me` among them).
    fn namespace(&self, name: &str) -> bool;
}

/// Whether changes to `changed` may change `me`'s view, given what the
/// subscriber `held`: `false` means the view is exactly what it was (the
/// subscriber skips its work). It mirrors what [`scope`] reads:
/// - a pod: when it is `me` or held, or now matches what the scope takes in
///   (a pod peer of `me`'s ingress, an egress-isolated pod `me` may admit, a
///   pod sharing an IP with one held);
/// - a policy: when held, or in a namespace with held pods (it may select
///   them, or `me`, for either direction), or in an unknown namespace, or
///   when it isolates egress and `me` admits by address (every
///   egress-isolated pod may then join);
/// - a namespace: when held (`me`'s own among them), or unknown, or when a
///   peer of `me`'s ingress selects namespaces by label.
pub fn may_change(
    index: &PolicyIndex,
    me: &PodKey,
    changed: &[ObjectRef],
    held: &impl Held,
) -> bool {
    let ingress = Ingress::of(index, me);
    let admits_by_address = ingress.admits_by_address();
    changed.iter().any(|object| {
        let key = &object.key;
        match object.kind {
            Kind::Policy => {
                held.policy(key)
                    || held.namespace(&key.namespace)
                    || index.namespace(&key.namespace).is_none()
                    || (admits_by_address && index.policy(key).is_some_and(|p| p.egress.is_some()))
            }
            Kind::Namespace => {
                held.namespace(&key.name)
                    || index.namespace(&key.name).is_none()
                    || ingress
                        .peers
                        .iter()
                        .any(|(namespaces, _)| matches!(namespaces, NamespaceScope::Selected(_)))
            }
            Kind::Pod => pod_may_change(index, me, &ingress, key, held),
        }
    })
}

fn pod_may_change(
    index: &PolicyIndex,
    me: &PodKey,
    ingress: &Ingress<'_>,
    key: &PodKey,
    held: &impl Held,
) -> bool {
    if key == me || held.pod(key) {
        return true;
    }
    let Some(pod) = index.pod(key) else {
        // Gone, and never in the view: nothing to remove.
        return false;
    };
    ingress.takes_in(index, pod)
        || (!pod.host_network
            && pod
                .ips
                .iter()
                .any(|ip| index.pods_reporting_ip(*ip).iter().any(|k| held.pod(k))))
}

/// The pods, and every pod that reports an IP one of them reports, to a
/// fixed point.
fn with_ip_sharers(index: &PolicyIndex, pods: HashSet<PodKey>) -> HashSet<PodKey> {
    let mut done = HashSet::with_capacity(pods.len());
    let mut todo: Vec<PodKey> = pods.into_iter().collect();
    while let Some(key) = todo.pop() {
        if !done.insert(key.clone()) {
            continue;
        }
        let Some(pod) = index.pod(&key) else { continue };
        if pod.host_network {
            continue;
        }
        for ip in &pod.ips {
            for other in index.pods_reporting_ip(*ip) {
                if !done.contains(other) {
                    todo.push(other.clone());
                }
            }
        }
    }
    done
}
