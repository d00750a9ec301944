//! What the policies of other pods say about one pod, compiled.
//!
//! A pod's view (control mode) does not carry the policies of every pod it
//! may talk to: with a default policy in every namespace that would be the
//! whole cluster. It carries, per other pod, only what that pod's rules say
//! about this one, compiled into a [`CompiledSide`]: the rules whose peers
//! match it (pod peers decided against its labels, `ipBlock` peers kept for
//! its address) with their ports.
//!
//! - Inbound: each source's egress side toward this pod
//!   ([`PolicyIndex::egress_toward`]); named ports resolve on this pod, which
//!   the view holds.
//! - Outbound: each destination's ingress side toward this pod as the source
//!   ([`PolicyIndex::ingress_toward`]); named ports resolve on the
//!   destination, so they are resolved into numbers when compiled.
//!
//! An index holding [`CompiledSides`] decides the other pods' sides from
//! them, and from nothing else. Each side carries the rules of the policies
//! in audit mode that select the pod apart from the enforced ones, so that
//! a view audits the other pods' sides as the whole cluster does (a pod
//! only audited policies select has a side that isolates nothing unless
//! audited).
//!
//! Pure: no I/O.

use std::net::IpAddr;
use std::sync::Arc;

use super::eval::pods_peer_matches;
use super::index::PolicyIndex;
use super::model::{
    ContainerPort, Direction, Peer, Pod, PodKey, Policy, PolicyKey, PortMatch, PortSpec, Rule,
};
use super::shards::Shards;

/// What one pod's policies for one direction allow toward one other pod
/// (the view's): a source's egress side, or a destination's ingress side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSide {
    /// How many enforced policies isolate the pod for that direction.
    pub policies: usize,
    /// Their rules that may match the other pod, in evaluation order.
    pub rules: Vec<TowardRule>,
    /// How many policies in audit mode select it for that direction (with
    /// `policies`, at least one).
    pub audited: usize,
    /// Their rules that may match the other pod, evaluated after `rules`
    /// when the audited policies count as enforced.
    pub audited_rules: Vec<TowardRule>,
}

// === impl CompiledSide ===

impl CompiledSide {
    /// Whether policies in audit mode select the pod.
    pub fn audits(&self) -> bool {
        self.audited > 0
    }

    /// Whether it isolates the pod in a decision of `mode`.
    pub(crate) fn isolates(&self, mode: crate::eval::Mode) -> bool {
        self.policies > 0 || (mode == crate::eval::Mode::Audited && self.audited > 0)
    }
}

/// One rule, as it applies to the other pod: its peers are `None` when a
/// pod peer matched that pod (or the rule allows every peer), else the
/// rule's `ipBlock` peers (they match by its address); its ports are the
/// rule's own (an egress rule's named ports resolve on the view's pod; an
/// ingress rule's are resolved already, on the pod the rule belongs to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TowardRule {
    /// The policy holding the rule.
    pub policy: PolicyKey,
    /// The rule's index in the policy's `ingress` or `egress` list.
    pub index: usize,
    /// The rule, compiled for the other pod.
    pub rule: Rule,
}

/// One direction's side of every other pod that may matter to the view's
/// pod: by pod for the pods the view holds, by address for the others (one
/// entry per isolated pod claiming the address). A pod absent from both is
/// not isolated for that direction, or does not matter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledSides {
    pods: Shards<PodKey, Arc<CompiledSide>>,
    addresses: Shards<IpAddr, Arc<[Arc<CompiledSide>]>>,
}

// === impl CompiledSides ===

impl CompiledSides {
    /// The egress side of a pod the view holds.
    pub fn pod(&self, key: &PodKey) -> Option<&Arc<CompiledSide>> {
        self.pods.get(key)
    }

    /// The egress sides of the pods claiming an address the view holds no pod for.
    pub fn address(&self, ip: IpAddr) -> Option<&Arc<[Arc<CompiledSide>]>> {
        self.addresses.get(&ip)
    }

    /// Sets (`Some`) or removes a pod's entry.
    pub fn set_pod(&mut self, key: PodKey, egress: Option<Arc<CompiledSide>>) {
        match egress {
            Some(egress) => {
                self.pods.insert(key, egress);
            }
            None => {
                self.pods.remove(&key);
            }
        }
    }

    /// Sets the entries of an address; none removes it.
    pub fn set_address(&mut self, ip: IpAddr, claimants: Arc<[Arc<CompiledSide>]>) {
        if claimants.is_empty() {
            self.addresses.remove(&ip);
        } else {
            self.addresses.insert(ip, claimants);
        }
    }

    /// How many pods and addresses have entries.
    pub fn len(&self) -> (usize, usize) {
        (self.pods.len(), self.addresses.len())
    }

    /// Whether there is no entry at all.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.addresses.is_empty()
    }

    /// Whether an audited policy selects a pod among `holders` (their
    /// entries), or, when none is held, a pod claiming `ip`.
    pub fn audits<'a>(&self, mut holders: impl Iterator<Item = &'a PodKey>, ip: IpAddr) -> bool {
        let mut held = false;
        let by_pod = holders.any(|k| {
            held = true;
            self.pod(k).is_some_and(|s| s.audits())
        });
        by_pod
            || (!held
                && self
                    .address(ip)
                    .is_some_and(|c| c.iter().any(|s| s.audits())))
    }
}

// === impl PolicyIndex: compiling ===

impl PolicyIndex {
    /// What `src`'s egress policies (enforced, and in audit mode) allow
    /// toward `dst`; `None` when no policy selects `src` for egress.
    pub fn egress_toward(&self, src: &PodKey, dst: &Pod) -> Option<CompiledSide> {
        let policies = self.selecting(src, Direction::Egress);
        let audited = self.auditing(src, Direction::Egress);
        (!policies.is_empty() || !audited.is_empty())
            .then(|| self.egress_of_toward(policies, audited, dst))
    }

    /// What a source selected for egress by exactly `policies` and, in
    /// audit mode, `audited` (together at least one) may open on `dst`: the
    /// same for every source they select.
    pub fn egress_of_toward(
        &self,
        policies: &[Arc<Policy>],
        audited: &[Arc<Policy>],
        dst: &Pod,
    ) -> CompiledSide {
        CompiledSide {
            policies: policies.len(),
            rules: self.compile(policies, Direction::Egress, dst, None),
            audited: audited.len(),
            audited_rules: self.compile(audited, Direction::Egress, dst, None),
        }
    }

    /// What `dst`'s ingress policies (enforced, and in audit mode) let in
    /// from `src`, with named ports resolved on `dst`; `None` when no
    /// policy selects `dst` for ingress.
    pub fn ingress_toward(&self, dst: &Pod, src: &Pod) -> Option<CompiledSide> {
        let policies = self.selecting(&dst.key, Direction::Ingress);
        let audited = self.auditing(&dst.key, Direction::Ingress);
        (!policies.is_empty() || !audited.is_empty())
            .then(|| self.ingress_of_toward(policies, audited, &dst.ports, src))
    }

    /// What a destination selected for ingress by exactly `policies` and,
    /// in audit mode, `audited` (together at least one), declaring `ports`,
    /// lets in from `src`: the same for every such destination.
    pub fn ingress_of_toward(
        &self,
        policies: &[Arc<Policy>],
        audited: &[Arc<Policy>],
        ports: &[ContainerPort],
        src: &Pod,
    ) -> CompiledSide {
        CompiledSide {
            policies: policies.len(),
            rules: self.compile(policies, Direction::Ingress, src, Some(ports)),
            audited: audited.len(),
            audited_rules: self.compile(audited, Direction::Ingress, src, Some(ports)),
        }
    }

    /// The rules of `policies` for `direction` that may match `other`;
    /// with `resolve`, named ports are resolved on those container ports.
    fn compile(
        &self,
        policies: &[Arc<Policy>],
        direction: Direction,
        other: &Pod,
        resolve: Option<&[ContainerPort]>,
    ) -> Vec<TowardRule> {
        let namespace_labels = self.namespace_labels(&other.key.namespace);
        let mut rules = Vec::new();
        for policy in policies {
            for (index, rule) in policy
                .rules(direction)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if rule.broken.is_some() {
                    continue;
                }
                let peers = match &rule.peers {
                    None => None,
                    Some(peers) => {
                        let by_labels = peers.iter().any(|p| match p {
                            Peer::Pods { namespaces, pods } => pods_peer_matches(
                                namespaces,
                                pods.as_ref(),
                                other,
                                namespace_labels,
                            ),
                            Peer::IpBlock(_) => false,
                        });
                        let blocks: Vec<Peer> = peers
                            .iter()
                            .filter(|p| matches!(p, Peer::IpBlock(_)))
                            .cloned()
                            .collect();
                        match (by_labels, blocks.is_empty()) {
                            (true, _) => None,
                            (false, true) => continue,
                            (false, false) => Some(blocks),
                        }
                    }
                };
                let ports = match resolve {
                    Some(declared) => rule.ports.as_ref().map(|p| resolved(p, declared)),
                    None => rule.ports.clone(),
                };
                rules.push(TowardRule {
                    policy: policy.key.clone(),
                    index,
                    rule: Rule {
                        peers,
                        ports,
                        broken: None,
                    },
                });
            }
        }
        rules
    }

    /// The compiled egress sides of the sources, when this index is a
    /// pod's view: then no source's egress is read from policies.
    pub fn egress_toward_me(&self) -> Option<&CompiledSides> {
        self.egress_toward_me.as_ref()
    }

    /// Makes this index a pod's view whose sources' egress sides come from
    /// compiled entries (see the module), and returns them for changes.
    pub fn egress_toward_me_mut(&mut self) -> &mut CompiledSides {
        self.egress_toward_me.get_or_insert_with(Default::default)
    }

    /// Drops the compiled entries of both directions: other pods' sides
    /// come from their policies again (a cluster-wide view).
    pub fn decide_sides_from_policies(&mut self) {
        self.egress_toward_me = None;
        self.ingress_toward_me = None;
    }

    /// The compiled ingress sides of the destinations, when this index is
    /// a pod's view with outbound parts: then no destination's ingress side
    /// is read from policies.
    pub fn ingress_toward_me(&self) -> Option<&CompiledSides> {
        self.ingress_toward_me.as_ref()
    }

    /// Makes this index a pod's view whose destinations' ingress sides come
    /// from compiled entries, and returns them for changes.
    pub fn ingress_toward_me_mut(&mut self) -> &mut CompiledSides {
        self.ingress_toward_me.get_or_insert_with(Default::default)
    }
}

/// Port entries with named ports resolved on `declared` (the pod the rule
/// belongs to): a name becomes the number of each container port of that
/// name and protocol, and a name it does not declare matches nothing.
fn resolved(entries: &[PortMatch], declared: &[ContainerPort]) -> Vec<PortMatch> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match &entry.port {
            PortSpec::Named(name) => out.extend(
                declared
                    .iter()
                    .filter(|cp| cp.protocol == entry.protocol && cp.name.as_deref() == Some(name))
                    .map(|cp| PortMatch {
                        protocol: entry.protocol,
                        port: PortSpec::Range(cp.port, cp.port),
                    }),
            ),
            _ => out.push(entry.clone()),
        }
    }
    out
}
