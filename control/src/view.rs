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
//! With outbound parts (the sidecar captures outbound connections), the
//! same again for `D` as a source: every pod a pod peer of `D`'s egress
//! rules matches, and every pod that declares a named port an egress rule
//! may reach by address (the name resolves on the destination); no other
//! pod's ingress policies, but each ingress-isolated destination's ingress
//! side toward `D`, compiled with its named ports resolved: by pod for the
//! pods held, by address for the others `D` may reach by address.
//!
//! A pod left out is one the engine treats exactly like an address that is
//! no pod: it matches no pod peer of `D`'s, and its sides are its address
//! entries (or it is not isolated, or it does not matter). The
//! differential tests check this against the engine on the full cluster.

use std::net::IpAddr;
use std::sync::Arc;

use picket_policy::eval::pods_peer_matches;
use picket_policy::{
    CompiledSide, ContainerPort, Direction, IpBlock, NamespaceScope, Peer, Pod, PodKey, Policy,
    PolicyIndex, PolicyKey, PortSpec, Protocol, Selector,
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
    /// The egress sides toward `me` of the egress-isolated pods: held, and
    /// not held that `me` may let in by address.
    pub egress: Sides,
    /// With outbound parts: the ingress sides toward `me` of the
    /// ingress-isolated pods: held, and not held that `me` may reach by
    /// address.
    pub ingress: Option<Sides>,
    /// A cluster-wide view: ClusterNetworkPolicies may decide `me`'s
    /// connections (see [`PolicyIndex::cluster_policies_concerning`]), and
    /// compiled sides do not carry the tiers, so the view holds the whole
    /// cluster and no compiled side; the sidecar decides other pods' sides
    /// from their policies, as in direct mode.
    pub cluster_wide: bool,
    /// In a cluster-wide view: every ClusterNetworkPolicy, by name.
    pub cluster_policies: HashSet<Arc<str>>,
    /// In a cluster-wide view: every Node, by name.
    pub nodes: HashSet<Arc<str>>,
}

impl Scope {
    /// The whole cluster, without compiled sides: what a pod that cluster
    /// policies concern decides on. It costs what direct mode costs (every
    /// object, every change), for those pods only.
    fn cluster_wide(index: &PolicyIndex, outbound: bool) -> Self {
        Self {
            namespaces: index.namespaces().map(|n| n.name.clone()).collect(),
            pods: index.pods().map(|p| p.key.clone()).collect(),
            policies: index.policies().map(|p| p.key.clone()).collect(),
            egress: Sides::default(),
            ingress: outbound.then(Sides::default),
            cluster_wide: true,
            cluster_policies: index
                .cluster_policies()
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            nodes: index.nodes().map(|n| n.name.clone()).collect(),
        }
    }
}

/// One direction's compiled sides of other pods toward a view's pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sides {
    /// Of the isolated pods held.
    pub pods: HashMap<PodKey, Arc<CompiledSide>>,
    /// Of the isolated pods not held that matter, by address (sorted by pod).
    pub addresses: AddressTable,
}

/// Work shared by every view computed from one index: the pods each pod
/// peer selects, and the addresses isolated pods hold. Build one per index
/// version and use it for every subscriber; the next version's comes from
/// [`Self::next`], which patches what this one built instead of building it
/// again from the whole cluster.
#[derive(Debug, Default)]
pub struct Shared {
    peers: std::sync::Mutex<HashMap<Arc<str>, Arc<PeerSet>>>,
    /// By direction (see [`slot`]): the address claims, built on first use.
    claims: [std::sync::OnceLock<Arc<AddressClaims>>; 2],
    /// By direction: claims of an earlier index, to patch on first use.
    bases: [Option<ClaimsBase>; 2],
}

/// The pods one pod peer selects (sorted), with the peer, to patch them.
#[derive(Clone, Debug)]
struct PeerSet {
    namespaces: NamespaceScope,
    pods: Option<Selector>,
    members: Arc<Vec<PodKey>>,
}

/// Address claims built for `index`, and the objects changed since.
#[derive(Debug)]
struct ClaimsBase {
    claims: Arc<AddressClaims>,
    index: PolicyIndex,
    changed: Vec<ObjectRef>,
}

/// The most changed objects a base carries before claims are built whole.
const MAX_BASE_CHANGES: usize = 4096;

/// The addresses pods isolated for one direction hold, with their holders'
/// sets of policies for it: what a view compiles its address entries from.
/// Built once per index version, when a view first needs it: the views
/// recomputed in one version (those of the pods a new policy selects) then
/// each read it in one pass, in order, with no lookup per pod.
#[derive(Clone, Debug)]
pub struct AddressClaims {
    direction: Direction,
    /// Sorted by address: the group of its isolated holders.
    by_ip: Vec<(IpAddr, u32)>,
    /// Each distinct group: the sets of its holders, in the order of their
    /// keys (an address mostly has one holder).
    groups: Vec<Box<[u32]>>,
    /// Each distinct set of policies, enforced and in audit mode (with the
    /// container ports their named ports resolve on, for ingress sides that
    /// name ports).
    sets: Vec<Arc<PolicySet>>,
    /// Each set's id, by its policies' pointers and ports.
    set_ids: HashMap<(Box<[usize]>, Vec<ContainerPort>), u32>,
    /// Each group's id.
    group_ids: HashMap<Box<[u32]>, u32>,
    /// Addresses patched since built whole: past a bound (sets and groups
    /// no address uses any more pile up), built whole again.
    patched: usize,
}

/// The policies selecting a pod for one direction, enforced and audited,
/// and the container ports their named ports resolve on.
#[derive(Debug)]
struct PolicySet {
    enforced: Vec<Arc<Policy>>,
    audited: Vec<Arc<Policy>>,
    ports: Vec<ContainerPort>,
}

/// The identity of a [`PolicySet`]'s policies: their pointers, enforced
/// then audited, with a separator no pointer is.
fn policy_set_key(out: &mut Vec<usize>, enforced: &[Arc<Policy>], audited: &[Arc<Policy>]) {
    out.extend(enforced.iter().map(|p| Arc::as_ptr(p) as usize));
    out.push(usize::MAX);
    out.extend(audited.iter().map(|p| Arc::as_ptr(p) as usize));
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
    /// The shared work for the index `now`, from this one's for `then`,
    /// given the objects `changed` between them (`None`: anything may
    /// have). Peer sets are patched for the changed pods at once; address
    /// claims are patched on first use.
    pub fn next(
        &self,
        then: &PolicyIndex,
        now: &PolicyIndex,
        changed: Option<&[ObjectRef]>,
    ) -> Self {
        let Some(changed) = changed else {
            return Self::default();
        };
        let bases = std::array::from_fn(|d| {
            let base = match (self.claims[d].get(), &self.bases[d]) {
                (Some(claims), _) => ClaimsBase {
                    claims: claims.clone(),
                    index: then.clone(),
                    changed: changed.to_vec(),
                },
                (None, Some(base)) => ClaimsBase {
                    claims: base.claims.clone(),
                    index: base.index.clone(),
                    changed: base.changed.iter().chain(changed).cloned().collect(),
                },
                (None, None) => return None,
            };
            (base.changed.len() <= MAX_BASE_CHANGES).then_some(base)
        });
        // A namespace's labels decide which pods peers selecting
        // namespaces reach: those are found again.
        let peers = match changed.iter().any(|c| c.kind == Kind::Namespace) {
            true => HashMap::default(),
            false => {
                let mut pods: Vec<&PodKey> = changed
                    .iter()
                    .filter(|c| c.kind == Kind::Pod)
                    .map(|c| &c.key)
                    .collect();
                pods.sort_unstable();
                pods.dedup();
                let memo = self.peers.lock().unwrap_or_else(|e| e.into_inner());
                memo.iter()
                    .map(|(key, set)| (key.clone(), PeerSet::patched(set, now, &pods)))
                    .collect()
            }
        };
        Self {
            peers: std::sync::Mutex::new(peers),
            claims: Default::default(),
            bases,
        }
    }

    /// The addresses pods isolated for `direction` hold, built (or patched
    /// from the base) on first use.
    fn address_claims(&self, index: &PolicyIndex, direction: Direction) -> Arc<AddressClaims> {
        let d = slot(direction);
        self.claims[d]
            .get_or_init(|| {
                Arc::new(match &self.bases[d] {
                    Some(base) => base.claims.patched(&base.index, index, &base.changed),
                    None => AddressClaims::of(index, direction),
                })
            })
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
        if let Some(found) = memo.get(key.as_str()) {
            return found.members.clone();
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
        let mut members: Vec<PodKey> = candidates
            .into_iter()
            .filter_map(|key| index.pod(key))
            .filter(|pod| peer_selects(index, namespaces, pods, pod))
            .map(|pod| pod.key.clone())
            .collect();
        members.sort_unstable();
        let members = Arc::new(members);
        memo.insert(
            key.into(),
            Arc::new(PeerSet {
                namespaces: namespaces.clone(),
                pods: pods.cloned(),
                members: members.clone(),
            }),
        );
        members
    }
}

/// Where a direction's address claims are kept in [`Shared`].
fn slot(direction: Direction) -> usize {
    match direction {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

/// Whether a pod peer selects `pod` (the engine's own rule).
fn peer_selects(
    index: &PolicyIndex,
    namespaces: &NamespaceScope,
    pods: Option<&Selector>,
    pod: &Pod,
) -> bool {
    pods_peer_matches(
        namespaces,
        pods,
        pod,
        index.namespace_labels(&pod.key.namespace),
    )
}

#[cfg(test)]
impl Shared {
    /// Builds every address claim and the peer set of every pod peer of
    /// the index's policies, then checks each against one built afresh
    /// from `index` alone.
    pub(crate) fn check_against_fresh(&self, index: &PolicyIndex) -> Result<(), String> {
        type Claimed = Vec<(IpAddr, Vec<(Vec<usize>, Vec<usize>, Vec<ContainerPort>)>)>;
        let claimed = |c: &AddressClaims| -> Claimed {
            let ptrs = |ps: &[Arc<Policy>]| ps.iter().map(|p| Arc::as_ptr(p) as usize).collect();
            c.by_ip
                .iter()
                .map(|(ip, group)| {
                    let sets = c.groups[*group as usize]
                        .iter()
                        .map(|id| {
                            let set = &c.sets[*id as usize];
                            (ptrs(&set.enforced), ptrs(&set.audited), set.ports.clone())
                        })
                        .collect();
                    (*ip, sets)
                })
                .collect()
        };
        for direction in [Direction::Egress, Direction::Ingress] {
            let (kept, fresh) = (
                self.address_claims(index, direction),
                AddressClaims::of(index, direction),
            );
            if claimed(&kept) != claimed(&fresh) {
                return Err(format!(
                    "{direction:?} address claims differ from a fresh build"
                ));
            }
        }
        let peers = index.policies().flat_map(|p| {
            [Direction::Ingress, Direction::Egress]
                .into_iter()
                .flat_map(|d| p.rules(d).unwrap_or_default())
                .flat_map(|r| r.peers.iter().flatten())
        });
        let fresh = Shared::default();
        for peer in peers {
            if let Peer::Pods { namespaces, pods } = peer {
                let kept = self.peer_members(index, namespaces, pods.as_ref());
                let built = fresh.peer_members(index, namespaces, pods.as_ref());
                if kept != built {
                    return Err(format!(
                        "peer {namespaces:?} {pods:?}: {kept:?}, built afresh {built:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

// === impl PeerSet ===

impl PeerSet {
    /// The set for the index `now`, after the pods `changed` (sorted):
    /// the same set unless one of them joins or leaves it.
    fn patched(this: &Arc<Self>, now: &PolicyIndex, changed: &[&PodKey]) -> Arc<Self> {
        let set = &**this;
        let selects = |key: &PodKey| {
            now.pod(key)
                .is_some_and(|pod| peer_selects(now, &set.namespaces, set.pods.as_ref(), pod))
        };
        let moved: Vec<(&PodKey, bool)> = changed
            .iter()
            .map(|key| (*key, selects(key)))
            .filter(|(key, now_in)| set.members.binary_search(key).is_ok() != *now_in)
            .collect();
        if moved.is_empty() {
            return this.clone();
        }
        let mut members = (*set.members).clone();
        for (key, now_in) in moved {
            match (members.binary_search(key), now_in) {
                (Err(i), true) => members.insert(i, key.clone()),
                (Ok(i), false) => {
                    members.remove(i);
                }
                _ => {}
            }
        }
        Arc::new(Self {
            members: Arc::new(members),
            ..set.clone()
        })
    }
}

// === impl AddressClaims ===

impl AddressClaims {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            by_ip: Vec::new(),
            groups: Vec::new(),
            sets: Vec::new(),
            set_ids: HashMap::default(),
            group_ids: HashMap::default(),
            patched: 0,
        }
    }

    /// Built whole from the index.
    fn of(index: &PolicyIndex, direction: Direction) -> Self {
        let mut claims = Self::new(direction);
        let mut group = Vec::new();
        for (ip, holders) in index.held_ips() {
            if let Some(id) = claims.group_of(index, holders, &mut group) {
                claims.by_ip.push((ip, id));
            }
        }
        claims.by_ip.sort_unstable_by_key(|(ip, _)| *ip);
        claims
    }

    /// These claims, built for `then`, brought to `now` after the objects
    /// `changed`: the addresses of the pods changed, and of every pod of a
    /// namespace whose policies changed (their selection may have), are
    /// claimed again; the rest is kept. Built whole after a namespace
    /// change (its audit mode decides which policies are enforced), or
    /// once patches add up to half the addresses.
    fn patched(&self, then: &PolicyIndex, now: &PolicyIndex, changed: &[ObjectRef]) -> Self {
        if changed.iter().any(|c| c.kind == Kind::Namespace) {
            return Self::of(now, self.direction);
        }
        let mut policy_namespaces: Vec<&str> = changed
            .iter()
            .filter(|c| c.kind == Kind::Policy)
            .map(|c| &*c.key.namespace)
            .collect();
        policy_namespaces.sort_unstable();
        policy_namespaces.dedup();
        let mut pods: Vec<&PodKey> = changed
            .iter()
            .filter(|c| c.kind == Kind::Pod)
            .map(|c| &c.key)
            .chain(
                policy_namespaces
                    .iter()
                    .flat_map(|ns| then.pods_in(ns).chain(now.pods_in(ns))),
            )
            .collect();
        pods.sort_unstable();
        pods.dedup();
        let mut ips: Vec<IpAddr> = pods
            .iter()
            .flat_map(|key| then.pod(key).into_iter().chain(now.pod(key)))
            .flat_map(|pod| pod.ips.iter().copied())
            .collect();
        ips.sort_unstable();
        ips.dedup();
        if self.patched + ips.len() > (self.by_ip.len() / 2).max(256) {
            return Self::of(now, self.direction);
        }
        let mut next = self.clone();
        next.patched += ips.len();
        let mut group = Vec::new();
        for ip in ips {
            let id = next.group_of(now, now.pods_with_ip(ip), &mut group);
            match (next.by_ip.binary_search_by_key(&ip, |(k, _)| *k), id) {
                (Ok(i), Some(id)) => next.by_ip[i].1 = id,
                (Ok(i), None) => {
                    next.by_ip.remove(i);
                }
                (Err(i), Some(id)) => next.by_ip.insert(i, (ip, id)),
                (Err(_), None) => {}
            }
        }
        next
    }

    /// The group of an address's holders, among those isolated for the
    /// direction; `None` when none is. `group`: scratch space.
    fn group_of(
        &mut self,
        index: &PolicyIndex,
        holders: &[PodKey],
        group: &mut Vec<u32>,
    ) -> Option<u32> {
        let direction = self.direction;
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
            let policies = index.selecting(key, direction);
            let audited = index.auditing(key, direction);
            if policies.is_empty() && audited.is_empty() {
                continue;
            }
            let ports = resolved_on(index, key, policies, audited, direction).to_vec();
            let mut pointers = Vec::new();
            policy_set_key(&mut pointers, policies, audited);
            let set_key = (pointers.into_boxed_slice(), ports);
            let id = match self.set_ids.get(&set_key) {
                Some(id) => *id,
                None => {
                    let id = self.sets.len() as u32;
                    self.sets.push(Arc::new(PolicySet {
                        enforced: policies.to_vec(),
                        audited: audited.to_vec(),
                        ports: set_key.1.clone(),
                    }));
                    self.set_ids.insert(set_key, id);
                    id
                }
            };
            group.push(id);
        }
        if group.is_empty() {
            return None;
        }
        Some(match self.group_ids.get(group.as_slice()) {
            Some(id) => *id,
            None => {
                let id = self.groups.len() as u32;
                self.groups.push(group.as_slice().into());
                self.group_ids.insert(group.as_slice().into(), id);
                id
            }
        })
    }

    /// The address entries toward `me` of the addresses `wanted`, in
    /// order: each set compiled once, each group's entry made once.
    fn entries(
        &self,
        index: &PolicyIndex,
        me: &Pod,
        wanted: impl Fn(IpAddr) -> bool,
    ) -> Vec<(IpAddr, AddressEntry)> {
        let mut sides: Vec<Option<Arc<CompiledSide>>> = vec![None; self.sets.len()];
        let mut entries: Vec<Option<AddressEntry>> = vec![None; self.groups.len()];
        let mut side = |id: u32| {
            sides[id as usize]
                .get_or_insert_with(|| {
                    let set = &self.sets[id as usize];
                    Arc::new(match self.direction {
                        Direction::Egress => {
                            index.egress_of_toward(&set.enforced, &set.audited, me)
                        }
                        Direction::Ingress => {
                            index.ingress_of_toward(&set.enforced, &set.audited, &set.ports, me)
                        }
                    })
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

/// The container ports an isolated pod's compiled side depends on: its
/// own, for an ingress side whose rules name ports (they resolve on it),
/// else none.
fn resolved_on<'a>(
    index: &'a PolicyIndex,
    key: &PodKey,
    policies: &[Arc<Policy>],
    audited: &[Arc<Policy>],
    direction: Direction,
) -> &'a [ContainerPort] {
    let names_ports = direction == Direction::Ingress
        && policies
            .iter()
            .chain(audited)
            .flat_map(|p| p.ingress.iter().flatten())
            .flat_map(|r| r.ports.iter().flatten())
            .any(|p| matches!(p.port, PortSpec::Named(_)));
    match (names_ports, index.pod(key)) {
        (true, Some(pod)) => &pod.ports,
        _ => &[],
    }
}

/// What `me`'s rules for one direction reach, as the view needs it: the
/// peers of its ingress rules (who may connect to it), or of its egress
/// rules (where it may connect).
#[derive(Debug)]
pub struct Reach<'a> {
    /// Pod peers: namespaces and pods.
    peers: Vec<(&'a NamespaceScope, Option<&'a Selector>)>,
    /// `ipBlock` peers.
    blocks: Vec<&'a IpBlock>,
    /// Some rule allows every peer, or `me` is not isolated that way.
    every_peer: bool,
    /// The named ports of egress rules that may reach a pod by its address
    /// alone: they resolve on the destination, which the view must hold.
    named: Vec<(&'a str, Protocol)>,
}

impl<'a> Reach<'a> {
    /// What `me`'s rules for `direction` reach: those of the policies
    /// enforced, and of those in audit mode (the view then holds what
    /// their verdicts read too; holding more changes no decision).
    pub fn of(index: &'a PolicyIndex, me: &PodKey, direction: Direction) -> Self {
        let policies = index.selecting(me, direction);
        let mut reach = Self {
            peers: Vec::new(),
            blocks: Vec::new(),
            // Isolation is the enforced policies' alone.
            every_peer: policies.is_empty(),
            named: Vec::new(),
        };
        for rule in policies
            .iter()
            .chain(index.auditing(me, direction))
            .flat_map(|p| p.rules(direction).unwrap_or_default())
        {
            if rule.broken.is_some() {
                continue;
            }
            let by_address = match &rule.peers {
                None => {
                    reach.every_peer = true;
                    true
                }
                Some(peers) => {
                    for peer in peers {
                        match peer {
                            Peer::Pods { namespaces, pods } => {
                                reach.peers.push((namespaces, pods.as_ref()))
                            }
                            Peer::IpBlock(block) => reach.blocks.push(block),
                        }
                    }
                    peers.iter().any(|p| matches!(p, Peer::IpBlock(_)))
                }
            };
            if direction == Direction::Egress && by_address {
                for entry in rule.ports.iter().flatten() {
                    if let PortSpec::Named(name) = &entry.port {
                        reach.named.push((name, entry.protocol));
                    }
                }
            }
        }
        reach
    }

    /// Whether some pod may be reached for its address alone.
    pub fn admits_by_address(&self) -> bool {
        self.every_peer || !self.blocks.is_empty()
    }

    /// Whether a pod at `ip` may be reached for its address alone.
    pub fn admits_address(&self, ip: IpAddr) -> bool {
        self.every_peer || self.blocks.iter().any(|b| b.contains(ip))
    }

    /// Whether the view holds `pod` for this reach: a pod peer matches it,
    /// or it declares a named port a rule may reach it on by address.
    pub fn names(&self, index: &PolicyIndex, pod: &Pod) -> bool {
        let namespace_labels = index.namespace_labels(&pod.key.namespace);
        self.peers
            .iter()
            .any(|(namespaces, pods)| pods_peer_matches(namespaces, *pods, pod, namespace_labels))
            || self.declares_named_port(pod)
    }

    fn declares_named_port(&self, pod: &Pod) -> bool {
        !self.named.is_empty()
            && !pod.host_network
            && pod.ports.iter().any(|cp| {
                self.named.iter().any(|(name, protocol)| {
                    cp.protocol == *protocol && cp.name.as_deref() == Some(*name)
                })
            })
            && pod.ips.iter().any(|ip| self.admits_address(*ip))
    }

    /// Whether a peer selects namespaces by label.
    fn selects_namespaces(&self) -> bool {
        self.peers
            .iter()
            .any(|(namespaces, _)| matches!(namespaces, NamespaceScope::Selected(_)))
    }
}

/// Compiles other pods' sides for one direction toward one pod (the
/// view's), once per distinct set of policies (the pods of a namespace
/// mostly share theirs); the address entry of a single claimant is shared
/// too.
#[derive(Debug)]
pub struct Compiler<'a> {
    index: &'a PolicyIndex,
    me: &'a Pod,
    direction: Direction,
    /// By the policies' pointers: each set of ports resolved on, compiled.
    memo: HashMap<Box<[usize]>, Vec<PerPorts>>,
    key: Vec<usize>,
}

/// The ports a set of policies' named ports resolve on, and its compiled side.
type PerPorts = (Vec<ContainerPort>, Option<Compiled>);

/// One pod's compiled side, and the address entry it alone makes.
#[derive(Clone, Debug)]
struct Compiled {
    side: Arc<CompiledSide>,
    alone: AddressEntry,
}

/// The sides of the pods claiming an address, sorted by pod.
pub type AddressEntry = Arc<[Arc<CompiledSide>]>;

impl<'a> Compiler<'a> {
    /// A compiler of other pods' sides for `direction` toward `me`.
    pub fn new(index: &'a PolicyIndex, me: &'a Pod, direction: Direction) -> Self {
        Self {
            index,
            me,
            direction,
            memo: HashMap::default(),
            key: Vec::new(),
        }
    }

    fn compiled(&mut self, other: &PodKey) -> Option<&Compiled> {
        let index = self.index;
        let policies = index.selecting(other, self.direction);
        let audited = index.auditing(other, self.direction);
        if policies.is_empty() && audited.is_empty() {
            return None;
        }
        let ports = resolved_on(index, other, policies, audited, self.direction);
        self.key.clear();
        policy_set_key(&mut self.key, policies, audited);
        if !self.memo.contains_key(self.key.as_slice()) {
            self.memo.insert(self.key.as_slice().into(), Vec::new());
        }
        let sets = self.memo.get_mut(self.key.as_slice())?;
        let at = match sets.iter().position(|(p, _)| p.as_slice() == ports) {
            Some(at) => at,
            None => {
                let side = match self.direction {
                    Direction::Egress => index.egress_toward(other, self.me),
                    Direction::Ingress => index
                        .pod(other)
                        .and_then(|pod| index.ingress_toward(pod, self.me)),
                };
                let compiled = side.map(|side| {
                    let side = Arc::new(side);
                    Compiled {
                        alone: Arc::from([side.clone()]),
                        side,
                    }
                });
                sets.push((ports.to_vec(), compiled));
                sets.len() - 1
            }
        };
        sets[at].1.as_ref()
    }

    /// `other`'s side toward the pod; `None`: not isolated.
    pub fn of(&mut self, other: &PodKey) -> Option<Arc<CompiledSide>> {
        self.compiled(other).map(|c| c.side.clone())
    }

    /// The address entry of `ip` for a view that holds `held`: the sides
    /// of the isolated pods claiming it, sorted by pod, when none is held
    /// and `reach` (`me`'s, the other way) may admit the address; else
    /// `None`.
    pub fn address(
        &mut self,
        reach: &Reach<'_>,
        ip: IpAddr,
        held: impl Fn(&PodKey) -> bool,
    ) -> Option<AddressEntry> {
        let index = self.index;
        let claimants = index.pods_with_ip(ip);
        if !reach.admits_address(ip) || claimants.iter().any(held) {
            return None;
        }
        if let [alone] = claimants {
            return self.compiled(alone).map(|c| c.alone.clone());
        }
        let mut claimants: Vec<&PodKey> = claimants.iter().collect();
        claimants.sort();
        let sides: Vec<Arc<CompiledSide>> =
            claimants.into_iter().filter_map(|k| self.of(k)).collect();
        (!sides.is_empty()).then(|| sides.into())
    }
}

/// What a view's pod reaches each way: its ingress (who may connect to
/// it), and with outbound parts its egress (where it may connect).
#[derive(Debug)]
pub struct Reaches<'a> {
    /// `me`'s ingress.
    pub ingress: Reach<'a>,
    /// `me`'s egress, for a view with outbound parts.
    pub egress: Option<Reach<'a>>,
}

impl<'a> Reaches<'a> {
    /// What `me` reaches; `outbound`: egress too.
    pub fn of(index: &'a PolicyIndex, me: &PodKey, outbound: bool) -> Self {
        Self {
            ingress: Reach::of(index, me, Direction::Ingress),
            egress: outbound.then(|| Reach::of(index, me, Direction::Egress)),
        }
    }

    /// Whether the view holds `pod`.
    pub fn names(&self, index: &PolicyIndex, pod: &Pod) -> bool {
        self.ingress.names(index, pod) || self.egress.as_ref().is_some_and(|e| e.names(index, pod))
    }

    /// Whether a peer either way selects namespaces by label.
    fn selects_namespaces(&self) -> bool {
        self.ingress.selects_namespaces()
            || self.egress.as_ref().is_some_and(Reach::selects_namespaces)
    }

    /// Whether a pod not held, isolated for `direction`, at `ip` needs an
    /// entry: `me`'s reach the other way admits the address.
    fn needs_entry(&self, direction: Direction, ip: IpAddr) -> bool {
        self.facing(direction).is_some_and(|r| r.admits_address(ip))
    }

    /// Whether some pod not held may need an entry for `direction`.
    pub fn may_need_entries(&self, direction: Direction) -> bool {
        self.facing(direction).is_some_and(Reach::admits_by_address)
    }

    /// `me`'s reach the other way from pods isolated for `direction`.
    pub fn facing(&self, direction: Direction) -> Option<&Reach<'a>> {
        match direction {
            Direction::Egress => Some(&self.ingress),
            Direction::Ingress => self.egress.as_ref(),
        }
    }
}

/// The view of pod `me`, with outbound parts when `outbound`; `None` when
/// the index does not know it.
pub fn scope(index: &PolicyIndex, shared: &Shared, me: &PodKey, outbound: bool) -> Option<Scope> {
    let dst = index.pod(me)?;
    if !index.cluster_policies_concerning(me, outbound).is_empty() {
        return Some(Scope::cluster_wide(index, outbound));
    }
    let mut scope = Scope::default();
    for direction in [Direction::Ingress, Direction::Egress] {
        for policy in index
            .selecting(me, direction)
            .iter()
            .chain(index.auditing(me, direction))
        {
            scope.policies.insert(policy.key.clone());
        }
    }
    let reaches = Reaches::of(index, me, outbound);
    let mut members = HashSet::default();
    for reach in [Some(&reaches.ingress), reaches.egress.as_ref()]
        .into_iter()
        .flatten()
    {
        for (namespaces, pods) in &reach.peers {
            members.extend(
                shared
                    .peer_members(index, namespaces, *pods)
                    .iter()
                    .cloned(),
            );
        }
        if !reach.named.is_empty() {
            members.extend(
                index
                    .pods()
                    .filter(|p| reach.declares_named_port(p))
                    .map(|p| p.key.clone()),
            );
        }
    }
    members.insert(me.clone());
    let pods = with_ip_sharers(index, members);
    for key in &pods {
        scope.namespaces.insert(key.namespace.clone());
    }
    // An address some held pod claims is the held pods' (a host-network
    // pod claims none: it reports its node's).
    let held_ips: HashSet<IpAddr> = pods
        .iter()
        .filter_map(|k| index.pod(k))
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let directions = [Direction::Egress, Direction::Ingress];
    for direction in directions.into_iter().take(if outbound { 2 } else { 1 }) {
        let mut sides = Sides::default();
        let mut compiler = Compiler::new(index, dst, direction);
        for key in pods.iter().filter(|k| *k != me) {
            if let Some(side) = compiler.of(key) {
                sides.pods.insert(key.clone(), side);
            }
        }
        // Only a pod that admits (reaches) by address needs the sides of
        // pods it does not hold.
        if reaches.may_need_entries(direction) {
            let claims = shared.address_claims(index, direction);
            sides.addresses = AddressTable(claims.entries(index, dst, |ip| {
                !held_ips.contains(&ip) && reaches.needs_entry(direction, ip)
            }));
        }
        match direction {
            Direction::Egress => scope.egress = sides,
            Direction::Ingress => scope.ingress = Some(sides),
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
    /// It holds an entry (either way) for this address.
    fn address(&self, ip: IpAddr) -> bool;
    /// The pod as the subscriber was last brought up to date with it.
    fn seen(&self, key: &PodKey) -> Option<&Arc<Pod>>;
    /// Its view has outbound parts.
    fn outbound(&self) -> bool;
}

/// Whether changes to `changed` may change `me`'s view, given what the
/// subscriber `held`: `false` means the view is exactly what it was (the
/// subscriber skips its work). It mirrors what [`scope`] reads:
/// - a pod: when it is `me` or held, or now is one the view holds (a pod
///   peer of `me`'s matches it, or it declares a named port `me` may reach
///   by address), or has (had) an address behind an entry or shared with
///   another pod (the claim may pass), or now needs an entry (isolated one
///   way, and `me` admits it by address the other);
/// - a policy: when held, or in `me`'s namespace (it may select `me`), or in
///   a namespace with held pods or with pods behind address entries (it may
///   isolate them), or in an unknown namespace, or when it isolates a
///   direction `me` faces by address (its pods may need entries);
/// - a namespace: when held (`me`'s own among them), or unknown, or when a
///   peer of `me`'s selects namespaces by label.
pub fn may_change(
    index: &PolicyIndex,
    me: &PodKey,
    changed: &[ObjectRef],
    held: &impl Held,
) -> bool {
    let reaches = Reaches::of(index, me, held.outbound());
    let policy_may_change = |key: &PolicyKey| {
        held.policy(key)
            || key.namespace == me.namespace
            || held.namespace(&key.namespace)
            || index.namespace(&key.namespace).is_none()
            || [Direction::Egress, Direction::Ingress]
                .into_iter()
                .filter(|d| reaches.may_need_entries(*d))
                .any(|direction| {
                    index
                        .policy(key)
                        .is_some_and(|p| p.rules(direction).is_some())
                        || index
                            .pods_in(&key.namespace)
                            .filter_map(|k| index.pod(k))
                            .any(|p| p.ips.iter().any(|ip| held.address(*ip)))
                })
    };
    changed.iter().any(|object| {
        let key = &object.key;
        match object.kind {
            Kind::Policy => policy_may_change(key),
            // Its audit mode may have changed, and with it whether each
            // of its policies is enforced: as if each of them changed.
            Kind::Namespace => {
                held.namespace(&key.name)
                    || index.namespace(&key.name).is_none()
                    || reaches.selects_namespaces()
                    || index
                        .policies_in(&key.name)
                        .any(|p| policy_may_change(&p.key))
            }
            Kind::Pod => pod_may_change(index, me, &reaches, key, held),
            // Services do not change what the policy view holds (they
            // travel beside it, see `delta`).
            Kind::Service | Kind::EndpointSlice => false,
            // Cluster-wide subjects and peers: any view may change.
            Kind::ClusterPolicy => true,
            // Compact views hold no Node and whether one is cluster-wide
            // reads none (a cluster-wide view is recomputed on any change).
            Kind::Node => false,
        }
    })
}

fn pod_may_change(
    index: &PolicyIndex,
    me: &PodKey,
    reaches: &Reaches<'_>,
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
    // Isolated, or audited: an audited side is compiled too.
    let isolated =
        |d: Direction| !index.selecting(key, d).is_empty() || !index.auditing(key, d).is_empty();
    reaches.names(index, pod)
        || (!pod.host_network
            && pod.ips.iter().any(|ip| {
                had(ip)
                    || [Direction::Egress, Direction::Ingress]
                        .into_iter()
                        .any(|d| reaches.needs_entry(d, *ip) && isolated(d))
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
