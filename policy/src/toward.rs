//! What the egress policies of other pods allow toward one pod, compiled.
//!
//! A pod's view (control mode) does not carry the egress policies of every
//! pod that may connect to it: with a default egress policy in every
//! namespace that would be the whole cluster. It carries, per source, only
//! what the source's egress rules say about this pod: the rules whose peers
//! match it (pod peers decided against its labels, `ipBlock` peers kept for
//! the address dialled) with their ports. [`PolicyIndex::egress_toward`]
//! compiles that on the full cluster; an index holding [`EgressTowardMe`]
//! decides the source's egress side from it, and from nothing else.
//!
//! Pure: no I/O.

use std::net::IpAddr;
use std::sync::Arc;

use super::eval::pods_peer_matches;
use super::index::PolicyIndex;
use super::model::{Direction, Peer, Pod, PodKey, Policy, PolicyKey, Rule};
use super::shards::Shards;

/// What one source's egress policies allow toward one destination pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressToward {
    /// How many policies isolate the source for egress (at least one).
    pub policies: usize,
    /// The egress rules that may match the destination, in evaluation order.
    pub rules: Vec<TowardRule>,
}

/// One egress rule of a source, as it applies to one destination: its
/// peers are `None` when a pod peer matched the destination (or the rule
/// allows every peer), else the rule's `ipBlock` peers (they match by the
/// address dialled); its ports are the rule's own (named ports resolve on
/// the destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TowardRule {
    /// The policy holding the rule.
    pub policy: PolicyKey,
    /// The rule's index in the policy's `egress` list.
    pub index: usize,
    /// The rule, compiled for the destination.
    pub rule: Rule,
}

/// The egress side of every source that may connect to the view's pod: by
/// pod for the pods the view holds, by address for the others (one entry per
/// egress-isolated pod claiming the address). A source absent from both is
/// not isolated for egress, or cannot be let in anyway.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EgressTowardMe {
    pods: Shards<PodKey, Arc<EgressToward>>,
    addresses: Shards<IpAddr, Arc<[Arc<EgressToward>]>>,
}

// === impl EgressTowardMe ===

impl EgressTowardMe {
    /// The egress side of a pod the view holds.
    pub fn pod(&self, key: &PodKey) -> Option<&Arc<EgressToward>> {
        self.pods.get(key)
    }

    /// The egress sides of the pods claiming an address the view holds no pod for.
    pub fn address(&self, ip: IpAddr) -> Option<&Arc<[Arc<EgressToward>]>> {
        self.addresses.get(&ip)
    }

    /// Sets (`Some`) or removes a pod's entry.
    pub fn set_pod(&mut self, key: PodKey, egress: Option<Arc<EgressToward>>) {
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
    pub fn set_address(&mut self, ip: IpAddr, claimants: Arc<[Arc<EgressToward>]>) {
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
}

// === impl PolicyIndex: compiling ===

impl PolicyIndex {
    /// What `src`'s egress policies allow toward `dst`; `None` when no policy
    /// isolates `src` for egress (it may connect anywhere).
    pub fn egress_toward(&self, src: &PodKey, dst: &Pod) -> Option<EgressToward> {
        let policies = self.selecting(src, Direction::Egress);
        (!policies.is_empty()).then(|| self.egress_of_toward(policies, dst))
    }

    /// What a source selected for egress by exactly `policies` (at least
    /// one) may open on `dst`: the same for every source they select.
    pub fn egress_of_toward(&self, policies: &[Arc<Policy>], dst: &Pod) -> EgressToward {
        let namespace_labels = self.namespace_labels(&dst.key.namespace);
        let mut rules = Vec::new();
        for policy in policies {
            for (index, rule) in policy.egress.iter().flatten().enumerate() {
                if rule.broken.is_some() {
                    continue;
                }
                let peers = match &rule.peers {
                    None => None,
                    Some(peers) => {
                        let by_labels = peers.iter().any(|p| match p {
                            Peer::Pods { namespaces, pods } => {
                                pods_peer_matches(namespaces, pods.as_ref(), dst, namespace_labels)
                            }
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
                rules.push(TowardRule {
                    policy: policy.key.clone(),
                    index,
                    rule: Rule {
                        peers,
                        ports: rule.ports.clone(),
                        broken: None,
                    },
                });
            }
        }
        EgressToward {
            policies: policies.len(),
            rules,
        }
    }

    /// The compiled egress sides of the sources, when this index is a
    /// pod's view: then no source's egress is read from policies.
    pub fn egress_toward_me(&self) -> Option<&EgressTowardMe> {
        self.egress_toward_me.as_ref()
    }

    /// Makes this index a pod's view whose sources' egress sides come from
    /// compiled entries (see the module), and returns them for changes.
    pub fn egress_toward_me_mut(&mut self) -> &mut EgressTowardMe {
        self.egress_toward_me.get_or_insert_with(Default::default)
    }

    /// Drops the compiled entries: sources' egress sides come from their
    /// policies again.
    pub fn clear_egress_toward_me(&mut self) {
        self.egress_toward_me = None;
    }
}
