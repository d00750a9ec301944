//! Which objects of the cluster one pod's decisions read: its view.
//!
//! Pure: no I/O. The sidecar evaluates its view with the same engine, the
//! same index and the same function as the full cluster, so the view is
//! correct when, for every source address and port, the engine decides the
//! same on the view as on the whole cluster. What it holds, for a pod `D`:
//!
//! - `D`, its namespace, and every policy that selects it;
//! - every pod that a pod peer of `D`'s ingress rules matches (its labels
//!   decide), with its namespace, and all the pods that report one of its
//!   IPs (who holds an IP, and whether every holder is allowed, depends on
//!   all of them);
//! - no other pod's egress policies, but what they allow toward `D`,
//!   compiled ([`picket_policy::toward`]): for each egress-isolated pod
//!   held, and, by address, for each egress-isolated pod not held that `D`
//!   may let in by its address alone (an `ipBlock` peer, or a rule or a side
//!   that admits every peer). With a default egress policy in every
//!   namespace that is an entry per pod of the cluster, a few bytes each,
//!   instead of the whole cluster's objects.
//!
//! A pod left out is one the engine treats exactly like an address that is
//! no pod: it matches no pod peer of `D`'s, and its egress side is its
//! address entry (or it is not isolated, or it does not matter). The
//! differential tests check this against the engine on the full cluster.

use std::net::IpAddr;
use std::sync::Arc;

use picket_policy::eval::pods_peer_matches;
use picket_policy::{
    Direction, EgressToward, IpBlock, NamespaceScope, Peer, Pod, PodKey, Policy, PolicyIndex,
    PolicyKey, Selector,
};
use picket_state::{Kind, ObjectRef};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// The keys of the objects in one pod's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Namespaces, by name.
    pub namespaces: HashSet<Arc<str>>,
    /// Pods.
    pub pods: HashSet<PodKey>,
    /// Policies.
    pub policies: HashSet<PolicyKey>,
    /// The egress sides toward `me` of the egress-isolated pods held.
    pub pod_egress: HashMap<PodKey, Arc<EgressToward>>,
    /// The egress sides toward `me` of the egress-isolated pods not held
    /// that `me` may let in by address, by address (sorted by pod).
    pub address_egress: AddressTable,
}

/// Work shared by every view computed from one index: the pods each pod
/// peer selects, and the addresses egress-isolated pods hold. Build one per
/// index version and use it for every subscriber.
#[derive(Debug, Default)]
pub struct Shared {
    peers: std::sync::Mutex<HashMap<String, Arc<Vec<PodKey>>>>,
    claims: std::sync::OnceLock<Arc<AddressClaims>>,
}

/// The addresses egress-isolated pods hold, with their holders' sets of
/// egress policies: what a view that admits by address compiles its entries
/// from. Built once per index version, when a view first needs it: the
/// views recomputed in one version (those of the pods a new policy selects)
/// then each read it in one pass, in order, with no lookup per pod.
#[derive(Debug, Default)]
pub struct AddressClaims {
    /// Sorted by address: the group of its egress-isolated holders.
    by_ip: Vec<(IpAddr, u32)>,
    /// Each distinct group: the sets of its holders, in the order of their
    /// keys (an address mostly has one holder).
    groups: Vec<Box<[u32]>>,
    /// Each distinct set of egress policies.
    sets: Vec<Vec<Arc<Policy>>>,
}

/// The address entries of a view, sorted by address (compact, and two
/// tables compare by a merge, without hashing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressTable(Vec<(IpAddr, AddressEntry)>);

impl AddressTable {
    /// The entry of an address.
    pub fn get(&self, ip: &IpAddr) -> Option<&AddressEntry> {
        let i = self.0.binary_search_by(|(k, _)| k.cmp(ip)).ok()?;
        Some(&self.0[i].1)
    }

    /// Sets (`Some`) or removes an address's entry.
    pub fn set(&mut self, ip: IpAddr, entry: Option<AddressEntry>) {
        match (self.0.binary_search_by(|(k, _)| k.cmp(&ip)), entry) {
            (Ok(i), Some(entry)) => self.0[i].1 = entry,
            (Ok(i), None) => {
                self.0.remove(i);
            }
            (Err(i), Some(entry)) => self.0.insert(i, (ip, entry)),
            (Err(_), None) => {}
        }
    }

    /// The entries, by address.
    pub fn iter(&self) -> impl Iterator<Item = &(IpAddr, AddressEntry)> {
        self.0.iter()
    }

    /// How many addresses have entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no address has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Brings this table to `wanted`, calling `change` for each entry new or
    /// changed (compared by pointer, then by value) and with `None` for each
    /// address no longer wanted.
    pub fn sync(
        &mut self,
        wanted: &AddressTable,
        mut change: impl FnMut(&IpAddr, Option<&AddressEntry>),
    ) {
        let (mut old, new) = (self.0.iter().peekable(), wanted.0.iter());
        for (ip, entry) in new {
            while let Some((gone, _)) = old.next_if(|(k, _)| k < ip) {
                change(gone, None);
            }
            match old.next_if(|(k, _)| k == ip) {
                Some((_, was)) if Arc::ptr_eq(was, entry) || **was == **entry => {}
                _ => change(ip, Some(entry)),
            }
        }
        for (gone, _) in old {
            change(gone, None);
        }
        self.0.clone_from(&wanted.0);
    }
}

// === impl Shared ===

impl Shared {
    /// The addresses egress-isolated pods hold, built on first use.
    fn address_claims(&self, index: &PolicyIndex) -> Arc<AddressClaims> {
        self.claims
            .get_or_init(|| Arc::new(AddressClaims::of(index)))
            .clone()
    }

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
}

// === impl AddressClaims ===

impl AddressClaims {
    fn of(index: &PolicyIndex) -> Self {
        let mut claims = Self::default();
        let mut set_ids: HashMap<Box<[usize]>, u32> = HashMap::default();
        let mut group_ids: HashMap<Box<[u32]>, u32> = HashMap::default();
        let (mut ptrs, mut group) = (Vec::new(), Vec::new());
        for (ip, holders) in index.held_ips() {
            // The index keeps holders sorted; sorted again only if not.
            let sorted;
            let holders: &[PodKey] = if holders.is_sorted() {
                holders
            } else {
                sorted = {
                    let mut h = holders.to_vec();
                    h.sort_unstable();
                    h
                };
                &sorted
            };
            group.clear();
            for key in holders {
                let policies = index.selecting(key, Direction::Egress);
                if policies.is_empty() {
                    continue;
                }
                ptrs.clear();
                ptrs.extend(policies.iter().map(|p| Arc::as_ptr(p) as usize));
                let id = match set_ids.get(ptrs.as_slice()) {
                    Some(id) => *id,
                    None => {
                        let id = claims.sets.len() as u32;
                        claims.sets.push(policies.to_vec());
                        set_ids.insert(ptrs.as_slice().into(), id);
                        id
                    }
                };
                group.push(id);
            }
            if group.is_empty() {
                continue;
            }
            let id = match group_ids.get(group.as_slice()) {
                Some(id) => *id,
                None => {
                    let id = claims.groups.len() as u32;
                    claims.groups.push(group.as_slice().into());
                    group_ids.insert(group.as_slice().into(), id);
                    id
                }
            };
            claims.by_ip.push((ip, id));
        }
        claims.by_ip.sort_unstable_by_key(|(ip, _)| *ip);
        claims
    }

    /// The address entries toward `dst` of the addresses `wanted`, in
    /// order: each set compiled once, each group's entry made once.
    fn entries(
        &self,
        index: &PolicyIndex,
        dst: &Pod,
        wanted: impl Fn(IpAddr) -> bool,
    ) -> Vec<(IpAddr, AddressEntry)> {
        let mut sides: Vec<Option<Arc<EgressToward>>> = vec![None; self.sets.len()];
        let mut entries: Vec<Option<AddressEntry>> = vec![None; self.groups.len()];
        let mut side = |id: u32| {
            sides[id as usize]
                .get_or_insert_with(|| {
                    Arc::new(index.egress_of_toward(&self.sets[id as usize], dst))
                })
                .clone()
        };
        self.by_ip
            .iter()
            .filter(|(ip, _)| wanted(*ip))
            .map(|(ip, group)| {
                let entry = entries[*group as usize].get_or_insert_with(|| {
                    self.groups[*group as usize]
                        .iter()
                        .map(|id| side(*id))
                        .collect()
                });
                (*ip, entry.clone())
            })
            .collect()
    }
}

/// What `me`'s ingress rules let in, as the view needs it.
#[derive(Debug)]
pub struct Ingress<'a> {
    /// Pod peers: namespaces and pods.
    peers: Vec<(&'a NamespaceScope, Option<&'a Selector>)>,
    /// `ipBlock` peers.
    blocks: Vec<&'a IpBlock>,
    /// Some rule allows every peer, or `me` is not isolated for ingress.
    every_peer: bool,
}

impl<'a> Ingress<'a> {
    /// What `me`'s ingress rules let in.
    pub fn of(index: &'a PolicyIndex, me: &PodKey) -> Self {
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
    pub fn admits_by_address(&self) -> bool {
        self.every_peer || !self.blocks.is_empty()
    }

    /// Whether a source at `ip` may be let in for its address alone.
    pub fn admits_address(&self, ip: IpAddr) -> bool {
        self.every_peer || self.blocks.iter().any(|b| b.contains(ip))
    }

    /// Whether a pod peer matches `pod`: the view holds it.
    pub fn names(&self, index: &PolicyIndex, pod: &Pod) -> bool {
        let namespace_labels = index.namespace_labels(&pod.key.namespace);
        self.peers
            .iter()
            .any(|(namespaces, pods)| pods_peer_matches(namespaces, *pods, pod, namespace_labels))
    }

    /// Whether a peer selects namespaces by label.
    fn selects_namespaces(&self) -> bool {
        self.peers
            .iter()
            .any(|(namespaces, _)| matches!(namespaces, NamespaceScope::Selected(_)))
    }
}

/// Compiles sources' egress sides toward one pod, once per distinct set of
/// egress policies (the pods of a namespace mostly share theirs); the
/// address entry of a single claimant is shared too.
#[derive(Debug)]
pub struct Compiler<'a> {
    index: &'a PolicyIndex,
    dst: &'a Pod,
    memo: HashMap<Box<[usize]>, Option<Compiled>>,
    key: Vec<usize>,
}

/// One source's compiled egress side, and the address entry it alone makes.
#[derive(Clone, Debug)]
struct Compiled {
    side: Arc<EgressToward>,
    alone: AddressEntry,
}

/// The egress sides of the pods claiming an address, sorted by pod.
pub type AddressEntry = Arc<[Arc<EgressToward>]>;

impl<'a> Compiler<'a> {
    /// A compiler toward `dst`.
    pub fn new(index: &'a PolicyIndex, dst: &'a Pod) -> Self {
        Self {
            index,
            dst,
            memo: HashMap::default(),
            key: Vec::new(),
        }
    }

    fn compiled(&mut self, src: &PodKey) -> Option<&Compiled> {
        let policies = self.index.selecting(src, Direction::Egress);
        if policies.is_empty() {
            return None;
        }
        self.key.clear();
        self.key
            .extend(policies.iter().map(|p| Arc::as_ptr(p) as usize));
        if !self.memo.contains_key(self.key.as_slice()) {
            let compiled = self.index.egress_toward(src, self.dst).map(|side| {
                let side = Arc::new(side);
                Compiled {
                    alone: Arc::from([side.clone()]),
                    side,
                }
            });
            self.memo.insert(self.key.as_slice().into(), compiled);
        }
        self.memo.get(self.key.as_slice())?.as_ref()
    }

    /// `src`'s egress side toward the pod; `None`: not isolated.
    pub fn of(&mut self, src: &PodKey) -> Option<Arc<EgressToward>> {
        self.compiled(src).map(|c| c.side.clone())
    }

    /// The address entry of `ip` for a view that holds `held`: the egress
    /// sides of the egress-isolated pods claiming it, sorted by pod, when
    /// none is held and `ingress` may let the address in; else `None`.
    pub fn address(
        &mut self,
        ingress: &Ingress<'_>,
        ip: IpAddr,
        held: impl Fn(&PodKey) -> bool,
    ) -> Option<AddressEntry> {
        let index = self.index;
        let claimants = index.pods_with_ip(ip);
        if !ingress.admits_address(ip) || claimants.iter().any(held) {
            return None;
        }
        if let [alone] = claimants {
            return self.compiled(alone).map(|c| c.alone.clone());
        }
        let mut claimants: Vec<&PodKey> = claimants.iter().collect();
        claimants.sort();
        let sides: Vec<Arc<EgressToward>> =
            claimants.into_iter().filter_map(|k| self.of(k)).collect();
        (!sides.is_empty()).then(|| sides.into())
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
    let mut sources = HashSet::default();
    for (namespaces, pods) in &ingress.peers {
        sources.extend(
            shared
                .peer_members(index, namespaces, *pods)
                .iter()
                .cloned(),
        );
    }
    sources.insert(me.clone());
    let pods = with_ip_sharers(index, sources);
    let mut compiler = Compiler::new(index, dst);
    for key in &pods {
        scope.namespaces.insert(key.namespace.clone());
        if key != me {
            if let Some(egress) = compiler.of(key) {
                scope.pod_egress.insert(key.clone(), egress);
            }
        }
    }
    // Only a pod that admits by address needs the egress sides of pods it
    // does not hold; an address some held pod claims is the held pods' (a
    // host-network pod claims none: it reports its node's).
    if ingress.admits_by_address() {
        let held_ips: HashSet<IpAddr> = pods
            .iter()
            .filter_map(|k| index.pod(k))
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let claims = shared.address_claims(index);
        let entries = claims.entries(index, dst, |ip| {
            !held_ips.contains(&ip) && ingress.admits_address(ip)
        });
        scope.address_egress = AddressTable(entries);
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
    /// It holds an entry for this address.
    fn address(&self, ip: IpAddr) -> bool;
    /// The pod as the subscriber was last brought up to date with it.
    fn seen(&self, key: &PodKey) -> Option<&Arc<Pod>>;
}

/// Whether changes to `changed` may change `me`'s view, given what the
/// subscriber `held`: `false` means the view is exactly what it was (the
/// subscriber skips its work). It mirrors what [`scope`] reads:
/// - a pod: when it is `me` or held, or now matches a pod peer of `me`'s
///   ingress, or has (had) an address behind an entry or shared with another
///   pod (the claim may pass), or now needs an entry (egress-isolated, and
///   `me` admits it by address);
/// - a policy: when held, or in `me`'s namespace (it may select `me`), or in
///   a namespace with held pods or with pods behind address entries (it may
///   isolate them for egress), or in an unknown namespace, or when it
///   isolates egress and `me` admits by address (its pods may need entries);
/// - a namespace: when held (`me`'s own among them), or unknown, or when a
///   peer of `me`'s ingress selects namespaces by label.
pub fn may_change(
    index: &PolicyIndex,
    me: &PodKey,
    changed: &[ObjectRef],
    held: &impl Held,
) -> bool {
    let ingress = Ingress::of(index, me);
    changed.iter().any(|object| {
        let key = &object.key;
        match object.kind {
            Kind::Policy => {
                held.policy(key)
                    || key.namespace == me.namespace
                    || held.namespace(&key.namespace)
                    || index.namespace(&key.namespace).is_none()
                    || (ingress.admits_by_address()
                        && (index.policy(key).is_some_and(|p| p.egress.is_some())
                            || index
                                .pods_in(&key.namespace)
                                .filter_map(|k| index.pod(k))
                                .any(|p| p.ips.iter().any(|ip| held.address(*ip)))))
            }
            Kind::Namespace => {
                held.namespace(&key.name)
                    || index.namespace(&key.name).is_none()
                    || ingress.selects_namespaces()
            }
            Kind::Pod => pod_may_change(index, me, &ingress, key, held),
            // Views hold no Services (the control plane watches none yet).
            Kind::Service | Kind::EndpointSlice => false,
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
    // An address it had: behind an entry, or shared, so that its claim may
    // pass to another pod.
    let had =
        |ip: &IpAddr| held.address(*ip) || index.pods_reporting_ip(*ip).iter().any(|k| k != key);
    if held.seen(key).is_some_and(|old| old.ips.iter().any(had)) {
        return true;
    }
    let Some(pod) = index.pod(key) else {
        // Gone, and neither held nor behind an entry: nothing to remove.
        return false;
    };
    ingress.names(index, pod)
        || (!pod.host_network
            && pod.ips.iter().any(|ip| {
                had(ip)
                    || (ingress.admits_address(*ip)
                        && !index.selecting(key, Direction::Egress).is_empty())
            }))
}

/// The pods, and every pod that reports an IP one of them reports, to a
/// fixed point.
fn with_ip_sharers(index: &PolicyIndex, pods: HashSet<PodKey>) -> HashSet<PodKey> {
    let mut done = HashSet::with_capacity_and_hasher(pods.len(), Default::default());
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
