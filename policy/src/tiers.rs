//! One side of a decision through the tiers: the Admin tier's cluster
//! policies, then NetworkPolicy, then the Baseline tier, then the default.
//!
//! [`crate::eval`] calls [`PolicyIndex::tiered_side`] for every side it
//! decides from policies; the NetworkPolicy tier is the closure it passes
//! (the side it always computed). With no cluster policy the closure is
//! the whole side: decisions are exactly what they were without tiers.
//!
//! Pure: no I/O, no allocation on the path that decides.

use std::net::IpAddr;
use std::sync::Arc;

use super::cluster::{namespace_matches, Action, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
use super::eval::{ports_match, Destination, Endpoint, Mode, Side, TierVerdict};
use super::index::PolicyIndex;
use super::labels::{LabelSource, LabelsRef};
use super::model::PodKey;
use super::model::{net_contains, Direction, Pod};
use super::trace::Trace;

/// What a tier said about a side.
enum TierSaid {
    /// A rule accepted or denied: the side is decided.
    Decided(Side),
    /// A rule passed, or none matched: the next tier decides.
    Next,
}

impl PolicyIndex {
    /// `pod`'s side for `direction`, with `peer` at the other end, through
    /// the tiers; `network_policies` is the NetworkPolicy tier's side.
    /// The trace hears of the side first, then of each tier's policies in
    /// the order they were consulted.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tiered_side<T: Trace>(
        &self,
        mode: Mode,
        pod: &Pod,
        labels: LabelsRef<'_>,
        direction: Direction,
        peer: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
        network_policies: impl FnOnce(&mut T) -> Side,
    ) -> Side {
        trace.side(&pod.key, direction);
        if self.cluster_policies().is_empty() {
            return network_policies(trace);
        }
        let namespace = self.namespace_label_source(&pod.key.namespace);
        let tier = |tier, trace: &mut T| {
            self.tier_side(
                tier,
                mode,
                &labels,
                namespace.as_ref(),
                direction,
                peer,
                to,
                trace,
            )
        };
        if let TierSaid::Decided(side) = tier(Tier::Admin, trace) {
            return side;
        }
        let side = network_policies(trace);
        if side != Side::NotIsolated {
            return side;
        }
        match tier(Tier::Baseline, trace) {
            TierSaid::Decided(side) => side,
            TierSaid::Next => Side::NotIsolated,
        }
    }

    /// One tier for one side: its policies that select the pod, by
    /// priority; the first rule that matches decides (Accept, Deny) or ends
    /// the tier (Pass). With a trace that wants every rule, the rest of the
    /// tier is tried and reported too; the outcome stays the first match's.
    #[allow(clippy::too_many_arguments)]
    fn tier_side<T: Trace>(
        &self,
        tier: Tier,
        mode: Mode,
        pod: &impl LabelSource,
        namespace: Option<&LabelsRef<'_>>,
        direction: Direction,
        peer: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> TierSaid {
        let mut said = None;
        for policy in self.cluster_policies().tier(tier) {
            if policy.audit && mode == Mode::Enforced {
                continue;
            }
            let rules = policy.rules(direction);
            if rules.is_empty() || !policy.selects(pod, namespace) {
                continue;
            }
            trace.cluster_policy(policy);
            for (index, rule) in rules.iter().enumerate() {
                let (peer_entry, port_entry) =
                    self.cluster_rule_matches(rule, &peer, to, T::EVERY_RULE);
                trace.cluster_rule(index, rule, peer_entry, port_entry);
                if said.is_none() && peer_entry.is_some() && port_entry.is_some() {
                    if !T::EVERY_RULE {
                        return verdict(policy, index, rule);
                    }
                    said = Some(verdict(policy, index, rule));
                }
            }
        }
        said.unwrap_or(TierSaid::Next)
    }

    /// Which peer entry and which port entry of a cluster rule match
    /// (`Some(None)`: all ports, or a broken rule that denies everything);
    /// the port is tried only when a peer matched, unless `every`.
    fn cluster_rule_matches(
        &self,
        rule: &ClusterRule,
        peer: &Endpoint<'_>,
        to: &Destination<'_>,
        every: bool,
    ) -> (Option<Option<usize>>, Option<Option<usize>>) {
        if rule.broken.is_some() {
            // Fail closed: an Accept matches nothing, a Deny or Pass everything.
            return match rule.action {
                Action::Accept => (None, None),
                Action::Deny | Action::Pass => (Some(None), Some(None)),
            };
        }
        let peer_entry = rule
            .peers
            .iter()
            .position(|p| self.cluster_peer_matches(p, peer))
            .map(Some);
        let port_entry = if peer_entry.is_some() || every {
            ports_match(rule.ports.as_deref(), to)
        } else {
            None
        };
        (peer_entry, port_entry)
    }

    /// Whether a cluster rule's peer matches the other end of a connection.
    /// HostNetwork pods are no pods to these peers (they never hold an
    /// address here, and reach sides as addresses).
    fn cluster_peer_matches(&self, rule_peer: &ClusterPeer, peer: &Endpoint<'_>) -> bool {
        match rule_peer {
            ClusterPeer::Namespaces(namespaces) => peer
                .pod_labels()
                .is_some_and(|(_, ns)| namespace_matches(namespaces, ns.as_ref())),
            ClusterPeer::Pods { namespaces, pods } => {
                peer.pod_labels().is_some_and(|(labels, ns)| {
                    namespace_matches(namespaces, ns.as_ref()) && pods.matches(&labels)
                })
            }
            ClusterPeer::Nodes(nodes) => peer.ip().is_some_and(|ip| self.node_selected(nodes, ip)),
            ClusterPeer::Networks(nets) => peer
                .ip()
                .is_some_and(|ip| nets.iter().any(|n| net_contains(n, ip))),
            ClusterPeer::DomainNames(_) => false,
        }
    }

    /// The cluster policies that may decide a side of `me`'s connections
    /// (`outbound`: `me`'s connections out too), as a view sees them: a
    /// view that any concerns is the whole cluster's (compiled sides do not
    /// carry the tiers). Those selecting `me` with rules for a direction the view
    /// decides at `me`, and those with a rule whose peers may match `me`
    /// (the other end's side: a source's egress toward `me`, and outbound,
    /// a destination's ingress). A broken Deny or Pass rule matches
    /// everyone. Policies in audit mode count too: their verdicts are
    /// reported where the view decides.
    pub fn cluster_policies_concerning(&self, me: &PodKey, outbound: bool) -> Vec<Arc<str>> {
        let Some(pod) = self.pod(me) else {
            return Vec::new();
        };
        let namespace = self.namespace_label_source(&me.namespace);
        let may_match = |rule: &ClusterRule| match (&rule.broken, rule.action) {
            (Some(_), Action::Accept) => false,
            (Some(_), _) => true,
            (None, _) => rule.peers.iter().any(|peer| match peer {
                ClusterPeer::Namespaces(ns) => {
                    !pod.host_network && namespace_matches(ns, namespace.as_ref())
                }
                ClusterPeer::Pods { namespaces, pods } => {
                    !pod.host_network
                        && namespace_matches(namespaces, namespace.as_ref())
                        && pods.matches(&pod.labels)
                }
                ClusterPeer::Networks(nets) => pod
                    .ips
                    .iter()
                    .any(|ip| nets.iter().any(|n| net_contains(n, *ip))),
                ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_) => false,
            }),
        };
        self.cluster_policies()
            .iter()
            .filter(|p| {
                let own = !pod.host_network
                    && p.selects(&pod.labels, namespace.as_ref())
                    && (!p.ingress.is_empty() || (outbound && !p.egress.is_empty()));
                own || p.egress.iter().any(may_match)
                    || (outbound && p.ingress.iter().any(may_match))
            })
            .map(|p| p.name.clone())
            .collect()
    }

    /// Whether `ip` is an address of a node `nodes` selects.
    fn node_selected(&self, nodes: &super::selector::Selector, ip: IpAddr) -> bool {
        self.nodes_with_ip(ip).any(|n| nodes.matches(&n.labels))
    }
}

fn verdict(policy: &ClusterPolicy, rule_index: usize, rule: &ClusterRule) -> TierSaid {
    let action = rule.effective_action();
    if action == Action::Pass {
        return TierSaid::Next;
    }
    TierSaid::Decided(Side::Tier(TierVerdict {
        tier: policy.tier,
        policy: policy.name.clone(),
        priority: policy.priority,
        rule: rule_index,
        rule_name: rule.name.clone(),
        action,
    }))
}
