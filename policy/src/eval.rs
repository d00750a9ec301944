//! Decisions: may this source open this port on this pod, and why.
//!
//! Pure: no I/O, no allocation on the path that decides (a decision names its
//! policy by a cloned `Arc` key). There is one evaluation path: a decision
//! and its explanation come from the same function, generic over a
//! [`Trace`] sink: [`NoTrace`] on the hot path (compiled away), a
//! [`Recorder`] for `explain`, which tries and records every rule.
//!
//! A connection is allowed when the destination's ingress side allows it AND,
//! when the source is a known pod, the source's egress side allows it. A side
//! allows when no policy isolates the pod for that direction, or when any rule
//! of any selecting policy matches both the peer and the port.

use std::fmt;
use std::net::IpAddr;

use std::sync::Arc;

use super::cluster::{namespace_matches, Action, Tier};
use super::index::{Holder, PolicyIndex};
use super::labels::{same_bytes, LabelSource, LabelsRef};
use super::model::{
    ContainerPort, Direction, NamespaceScope, NodeAddrs, Peer, Pod, PodKey, Policy, PolicyKey,
    PortMatch, PortSpec, Protocol, Rule,
};
use super::selector::{Labels, Selector};
use super::toward::CompiledSide;
use super::trace::{Explanation, NoTrace, Recorder, Trace};

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The source pod the decision was made for, when the source is a pod.
    pub source: Option<PodKey>,
}

/// Why a decision came out as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The source is an address of the destination's node: always allowed.
    Node,
    /// A pod connecting to itself: always allowed.
    SamePod,
    /// The destination uses host networking: NetworkPolicy does not apply.
    HostNetworkDestination,
    /// The destination pod is unknown: denied (fail closed).
    UnknownDestination,
    /// The source pod of an outbound connection is unknown: denied (fail closed).
    UnknownSource,
    /// The source of an outbound connection uses host networking:
    /// NetworkPolicy does not apply.
    HostNetworkSource,
    /// An outbound connection to a Service that has no ready endpoint for
    /// the port dialled: denied (nothing to decide it on, and the
    /// Service's own address is no destination).
    NoEndpoint,
    /// An outbound connection, decided at its source: the source's egress
    /// side, then the destination pod's ingress side.
    Egress {
        /// The source's egress side.
        egress: Side,
        /// The destination pod's ingress side; `None`: no pod holds the
        /// address, or the egress side already denied.
        ingress: Option<Side>,
        /// The pod holding the address dialled (the one that denied, when
        /// several hold it); `None`: an address that is no pod's.
        destination: Option<PodKey>,
    },
    /// The policies of each side decided.
    Policies {
        /// The destination's ingress side.
        ingress: Side,
        /// The source's egress side.
        egress: Side,
    },
}

/// What one side (ingress of the destination, egress of the source) said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// No policy isolates the pod for this direction.
    NotIsolated,
    /// The source is not a known pod, so it has no egress policies here.
    NotApplicable,
    /// Not looked at: the other side already denied (`picket explain` shows it all).
    NotEvaluated,
    /// A rule allowed it.
    Allowed {
        /// The policy holding the rule.
        policy: PolicyKey,
        /// The rule's index in the policy's `ingress` or `egress` list.
        rule: usize,
    },
    /// The pod is isolated and no rule allowed it.
    Denied {
        /// How many policies isolate the pod for this direction.
        policies: usize,
    },
    /// A cluster policy's rule accepted or denied (Admin tier, or Baseline
    /// tier for a side NetworkPolicy does not isolate).
    Tier(TierVerdict),
}

/// The cluster policy rule that decided a side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierVerdict {
    /// Its tier.
    pub tier: Tier,
    /// The policy's name.
    pub policy: Arc<str>,
    /// The policy's priority.
    pub priority: u16,
    /// The rule's index in the policy's `ingress` or `egress` list.
    pub rule: usize,
    /// The rule's name, when it has one.
    pub rule_name: Option<Arc<str>>,
    /// `Accept` or `Deny` (a Pass decides nothing).
    pub action: Action,
}

/// Who opens the connection, as a policy sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Endpoint<'a> {
    Pod {
        pod: &'a Pod,
        /// The pod as its address found it (labels packed, selection at
        /// hand), when it was found so.
        held: Option<&'a Holder>,
        /// `None`: the namespace is not known (yet).
        namespace_labels: Option<LabelsRef<'a>>,
        ip: Option<IpAddr>,
    },
    Address(IpAddr),
}

/// Which policies a decision counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Those enforced: what the connection gets.
    Enforced,
    /// Those enforced and those in audit mode, as if all were enforced:
    /// what it would get.
    Audited,
}

/// The policies one side of a decision counts: those enforced, and
/// (auditing) those in audit mode.
#[derive(Clone, Copy, Debug, Default)]
struct Policies<'a> {
    enforced: &'a [Arc<Policy>],
    audited: &'a [Arc<Policy>],
}

impl<'a> Policies<'a> {
    fn len(&self) -> usize {
        self.enforced.len() + self.audited.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Both lists, merged in key order (each is sorted by key): the order
    /// the same policies, all enforced, would be tried in.
    fn iter(&self) -> impl Iterator<Item = &'a Arc<Policy>> {
        merged(self.enforced, self.audited, |p| &p.key)
    }
}

/// Two lists each sorted by `key`, merged in that order (an item of `b`
/// goes first only when its key is smaller).
fn merged<'a, T, K: Ord + 'a>(
    mut a: &'a [T],
    mut b: &'a [T],
    key: impl Fn(&'a T) -> &'a K,
) -> impl Iterator<Item = &'a T> {
    std::iter::from_fn(move || {
        let take_b = match (a.first(), b.first()) {
            (_, None) => false,
            (Some(x), Some(y)) => key(y) < key(x),
            (None, Some(_)) => true,
        };
        let list = if take_b { &mut b } else { &mut a };
        let (first, rest) = list.split_first()?;
        *list = rest;
        Some(first)
    })
}

// === impl PolicyIndex: decisions ===

impl PolicyIndex {
    /// Decides a connection from a source address to a pod, as the proxy sees it.
    ///
    /// The node's addresses (`node`, and the destination's hostIPs) and the
    /// pod's own addresses are always allowed. An address claimed by several
    /// live pods is allowed only if every claimant is; an address that is no
    /// pod can match only `ipBlock` peers.
    pub fn decide_from_ip(
        &self,
        src: IpAddr,
        dst: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Decision {
        self.decide_inbound(
            Mode::Enforced,
            src,
            dst,
            dst_ip,
            port,
            protocol,
            node,
            &mut NoTrace,
        )
    }

    /// [`Self::decide_from_ip`], with every rule tried reported to `trace`.
    /// With several pods claiming `src`, each claimant's sides are reported
    /// in turn, until one denies (a [`Recorder`] keeps the last of each side).
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_from_ip<T: Trace>(
        &self,
        src: IpAddr,
        dst: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
        trace: &mut T,
    ) -> Decision {
        self.decide_inbound(
            Mode::Enforced,
            src,
            dst,
            dst_ip,
            port,
            protocol,
            node,
            trace,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide_inbound<T: Trace>(
        &self,
        mode: Mode,
        src: IpAddr,
        dst: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
        trace: &mut T,
    ) -> Decision {
        let Some(dst_pod) = self.pod(dst) else {
            return Decision::deny(Reason::UnknownDestination, None);
        };
        if node.contains(src) || dst_pod.host_ips.contains(&src) {
            return Decision::allow(Reason::Node, None);
        }
        if dst_pod.ips.contains(&src) {
            return Decision::allow(Reason::SamePod, Some(dst.clone()));
        }
        let to = self.pod_destination(dst_pod, Some(dst_ip), port, protocol);
        self.every_holder(src, |held| {
            self.evaluate(
                mode,
                self.held_endpoint(held, Some(src)),
                dst_pod,
                &to,
                trace,
            )
        })
        .unwrap_or_else(|| self.evaluate(mode, Endpoint::Address(src), dst_pod, &to, trace))
    }

    /// Decides a connection between two pods by key, from the source's first IP
    /// to the destination's IP of the same family (`picket reach`).
    ///
    /// `node` is the destination's node. A hostNetwork source is node traffic
    /// when it runs on that node, else an address.
    pub fn decide_between_pods(
        &self,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Decision {
        self.between_pods(Mode::Enforced, src, dst, port, protocol, node, &mut NoTrace)
    }

    /// Explains a decision between two pods: the decision of
    /// [`Self::decide_between_pods`] and every policy and rule it tried.
    pub fn explain_between_pods(
        &self,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Explanation {
        let mut recorder = Recorder::default();
        let decision = self.between_pods(
            Mode::Enforced,
            src,
            dst,
            port,
            protocol,
            node,
            &mut recorder,
        );
        recorder.into_explanation(src.to_string(), dst.clone(), port, protocol, decision)
    }

    /// [`Self::decide_between_pods`], with every rule tried reported to `trace`.
    pub fn evaluate_between_pods<T: Trace>(
        &self,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
        trace: &mut T,
    ) -> Decision {
        self.between_pods(Mode::Enforced, src, dst, port, protocol, node, trace)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn between_pods<T: Trace>(
        &self,
        mode: Mode,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
        trace: &mut T,
    ) -> Decision {
        let Some(dst_pod) = self.pod(dst) else {
            return Decision::deny(Reason::UnknownDestination, None);
        };
        let Some(src_pod) = self.pod(src) else {
            return Decision::deny(Reason::UnknownDestination, None);
        };
        if src == dst {
            return Decision::allow(Reason::SamePod, Some(src.clone()));
        }
        let src_ip = src_pod.ips.first().copied();
        if dst_pod.host_network && !src_pod.host_network {
            // Node traffic: no policy selects the destination, but the
            // source's egress side decides its address, as the source's
            // outbound proxy does (its own node is always reachable).
            let Some(ip) = dst_pod
                .ip_like(src_ip)
                .or_else(|| dst_pod.host_ips.first().copied())
            else {
                return Decision::allow(Reason::HostNetworkDestination, Some(src.clone()));
            };
            // `node` is the destination's, so the address is always in
            // it: only the source's own node is always reachable.
            if src_pod.host_ips.contains(&ip) {
                return Decision::allow(Reason::Node, Some(src.clone()));
            }
            let to = Destination {
                peer: Endpoint::Address(ip),
                ports: &[],
                port,
                protocol,
            };
            let policies = self.policies_of(src, None, Direction::Egress, mode);
            return match self.egress_side(mode, src_pod, policies, &to, trace) {
                Side::NotIsolated => {
                    Decision::allow(Reason::HostNetworkDestination, Some(src.clone()))
                }
                egress => Decision::egress(egress, None, None, src),
            };
        }
        let to = self.pod_destination(dst_pod, dst_pod.ip_like(src_ip), port, protocol);
        if !src_pod.host_network {
            return self.evaluate(mode, self.endpoint(src_pod, src_ip), dst_pod, &to, trace);
        }
        let Some(ip) = src_ip.or_else(|| src_pod.host_ips.first().copied()) else {
            let unknown = Endpoint::Address(IpAddr::from([0, 0, 0, 0]));
            return self.evaluate(mode, unknown, dst_pod, &to, trace);
        };
        if node.contains(ip) || src_pod.host_ips.iter().any(|h| node.contains(*h)) {
            return Decision::allow(Reason::Node, None);
        }
        self.evaluate(mode, Endpoint::Address(ip), dst_pod, &to, trace)
    }

    /// Decides once per live pod holding `ip` (a source, or a destination):
    /// the first denial, else the first allowance; `None`: no pod holds it.
    /// An address two pods hold is allowed only when both are.
    fn every_holder(
        &self,
        ip: IpAddr,
        mut decide: impl FnMut(&Holder) -> Decision,
    ) -> Option<Decision> {
        let mut allowed = None;
        for held in self.holders(ip) {
            let decision = decide(held);
            if !decision.allowed {
                return Some(decision);
            }
            allowed.get_or_insert(decision);
        }
        allowed
    }

    fn endpoint<'a>(&'a self, pod: &'a Pod, ip: Option<IpAddr>) -> Endpoint<'a> {
        Endpoint::Pod {
            pod,
            held: None,
            namespace_labels: self.namespace_label_source(&pod.key.namespace),
            ip,
        }
    }

    /// A pod found by its address, as an endpoint.
    fn held_endpoint<'a>(&'a self, held: &'a Holder, ip: Option<IpAddr>) -> Endpoint<'a> {
        Endpoint::Pod {
            pod: &held.pod,
            held: Some(held),
            namespace_labels: self.namespace_label_source(&held.key.namespace),
            ip,
        }
    }

    /// The policies selecting a pod for a direction that a decision in
    /// `mode` counts: its holder's copy when at hand, else the index's.
    fn policies_of<'a>(
        &'a self,
        key: &PodKey,
        held: Option<&'a Holder>,
        direction: Direction,
        mode: Mode,
    ) -> Policies<'a> {
        let selection = match held {
            Some(held) => held.selection.as_deref(),
            None => self.selection_of(key),
        };
        let Some(selection) = selection else {
            return Policies::default();
        };
        Policies {
            enforced: selection.get(direction),
            audited: match mode {
                Mode::Enforced => &[],
                Mode::Audited => selection.audited(direction),
            },
        }
    }

    /// A pod as the destination of a decision, dialled at `ip`.
    fn pod_destination<'a>(
        &'a self,
        pod: &'a Pod,
        ip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> Destination<'a> {
        Destination {
            peer: self.endpoint(pod, ip),
            ports: &pod.ports,
            port,
            protocol,
        }
    }

    /// A pod found by its address as the destination of a decision.
    fn held_destination<'a>(
        &'a self,
        held: &'a Holder,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Destination<'a> {
        Destination {
            peer: self.held_endpoint(held, Some(ip)),
            ports: &held.pod.ports,
            port,
            protocol,
        }
    }

    /// The one evaluation: the destination's ingress side, then the source's
    /// egress side. Without a trace that wants every rule, the egress side is
    /// skipped once ingress denies, and each side stops at the first rule
    /// that allows.
    fn evaluate<T: Trace>(
        &self,
        mode: Mode,
        src: Endpoint<'_>,
        dst: &Pod,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Decision {
        if dst.host_network {
            return Decision::allow(Reason::HostNetworkDestination, src.pod_key());
        }
        let policies = self.policies_of(&dst.key, None, Direction::Ingress, mode);
        let labels = LabelsRef::of(&dst.labels, None);
        let ingress = self.tiered_side(
            mode,
            dst,
            labels,
            Direction::Ingress,
            src,
            to,
            trace,
            |trace| self.side(policies, Direction::Ingress, src, to, trace),
        );
        let egress = match src {
            Endpoint::Pod { pod, held, .. } if ingress.allows() || T::EVERY_RULE => {
                let egress =
                    self.other_pod_side(mode, pod, held, Direction::Egress, to.peer, to, trace);
                // The ingress side already denies: the egress side cannot change that.
                if ingress.allows() {
                    egress
                } else {
                    Side::NotEvaluated
                }
            }
            Endpoint::Pod { .. } => Side::NotEvaluated,
            Endpoint::Address(_) if !ingress.allows() => Side::NotEvaluated,
            Endpoint::Address(ip) => self.address_egress_side(mode, ip, to, trace),
        };
        let allowed = ingress.allows() && egress.allows();
        Decision {
            allowed,
            reason: Reason::Policies { ingress, egress },
            source: src.pod_key(),
        }
    }

    /// One side's NetworkPolicy tier: the `policies` selecting the pod for
    /// `direction`, with `peer` at the other end (the trace heard of the
    /// side already, from [`Self::tiered_side`]).
    fn side<T: Trace>(
        &self,
        policies: Policies<'_>,
        direction: Direction,
        peer: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Side {
        if policies.is_empty() {
            return Side::NotIsolated;
        }
        let mut allowed = None;
        for policy in policies.iter() {
            trace.policy(&policy.key);
            for (index, rule) in policy
                .rules(direction)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let peer_entry = rule_matches_peer(rule, &peer);
                let port_entry = if peer_entry.is_some() || T::EVERY_RULE {
                    rule_matches_port(rule, to)
                } else {
                    None
                };
                trace.rule(index, rule, peer_entry, port_entry);
                if allowed.is_none() && peer_entry.is_some() && port_entry.is_some() {
                    let side = Side::Allowed {
                        policy: policy.key.clone(),
                        rule: index,
                    };
                    if !T::EVERY_RULE {
                        return side;
                    }
                    allowed = Some(side);
                }
            }
        }
        allowed.unwrap_or(Side::Denied {
            policies: policies.len(),
        })
    }
}

// === impl PolicyIndex: outbound decisions ===

impl PolicyIndex {
    /// Decides a connection this pod (`src`) opens to an address, as its
    /// outbound proxy sees it: `src`'s egress side toward the pod holding
    /// `dst_ip` (its labels for pod peers, its ports for named ports), or
    /// toward the address when no pod holds it (only `ipBlock` peers match).
    /// The destination pod's ingress side is checked here too, so the
    /// connection is allowed only when both sides allow it, as NetworkPolicy
    /// says: a destination without a sidecar cannot enforce its own (and
    /// whether it runs one is the pod spec's say, which its author writes).
    /// A destination with one checks both sides again.
    ///
    /// The node's addresses (`node`, and the source's hostIPs) and the pod's
    /// own addresses are always allowed. An address several live pods hold
    /// is allowed only if it is allowed toward every one of them.
    pub fn decide_to_ip(
        &self,
        src: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Decision {
        self.decide_outbound(
            Mode::Enforced,
            src,
            dst_ip,
            port,
            protocol,
            node,
            &mut NoTrace,
        )
    }

    /// [`Self::decide_to_ip`], with every rule tried reported to `trace`.
    pub fn evaluate_to_ip<T: Trace>(
        &self,
        src: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
        trace: &mut T,
    ) -> Decision {
        self.decide_outbound(Mode::Enforced, src, dst_ip, port, protocol, node, trace)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide_outbound<T: Trace>(
        &self,
        mode: Mode,
        src: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
        trace: &mut T,
    ) -> Decision {
        let Some(src_pod) = self.pod(src) else {
            return Decision::deny(Reason::UnknownSource, None);
        };
        let source = Some(src.clone());
        if node.contains(dst_ip) || src_pod.host_ips.contains(&dst_ip) {
            return Decision::allow(Reason::Node, source);
        }
        if src_pod.ips.contains(&dst_ip) {
            return Decision::allow(Reason::SamePod, source);
        }
        if src_pod.host_network {
            return Decision::allow(Reason::HostNetworkSource, source);
        }
        let from = self.endpoint(src_pod, src_pod.ip_like(Some(dst_ip)));
        let policies = self.policies_of(src, None, Direction::Egress, mode);
        self.every_holder(dst_ip, |held| {
            let to = self.held_destination(held, dst_ip, port, protocol);
            let egress = self.egress_side(mode, src_pod, policies, &to, trace);
            let ingress = (egress.allows() || T::EVERY_RULE).then(|| {
                let pod = &held.pod;
                self.other_pod_side(mode, pod, Some(held), Direction::Ingress, from, &to, trace)
            });
            Decision::egress(egress, ingress, Some(held.key.clone()), src)
        })
        .unwrap_or_else(|| {
            let to = Destination {
                peer: Endpoint::Address(dst_ip),
                ports: &[],
                port,
                protocol,
            };
            let egress = self.egress_side(mode, src_pod, policies, &to, trace);
            let ingress = (egress.allows() || T::EVERY_RULE)
                .then(|| self.address_ingress_side(mode, dst_ip, from, &to, trace))
                .flatten();
            Decision::egress(egress, ingress, None, src)
        })
    }

    /// The source's egress side of an outbound connection, through the tiers.
    fn egress_side<T: Trace>(
        &self,
        mode: Mode,
        src: &Pod,
        policies: Policies<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Side {
        let labels = LabelsRef::of(&src.labels, None);
        self.tiered_side(
            mode,
            src,
            labels,
            Direction::Egress,
            to.peer,
            to,
            trace,
            |trace| self.side(policies, Direction::Egress, to.peer, to, trace),
        )
    }

    /// Another pod's side for `direction` toward `peer` (the index's pod
    /// in a view): from its compiled entry when the index holds that
    /// direction's entries (none: not isolated), else from its policies
    /// (its holder's copy when at hand).
    ///
    /// The egress side of a source pod, the ingress side of a destination
    /// pod of an outbound connection.
    #[allow(clippy::too_many_arguments)]
    fn other_pod_side<T: Trace>(
        &self,
        mode: Mode,
        pod: &Pod,
        held: Option<&Holder>,
        direction: Direction,
        peer: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Side {
        let key = held.map_or(&pod.key, |h| &h.key);
        let compiled = match direction {
            Direction::Egress => &self.egress_toward_me,
            Direction::Ingress => &self.ingress_toward_me,
        };
        match compiled {
            Some(compiled) => match compiled.pod(key) {
                Some(e) if e.isolates(mode) => {
                    trace.side(key, direction);
                    self.compiled_side(mode, e, peer, to, trace)
                }
                _ => Side::NotIsolated,
            },
            None => {
                let policies = self.policies_of(key, held, direction, mode);
                let labels = held.map_or(LabelsRef::of(&pod.labels, None), Holder::labels);
                self.tiered_side(mode, pod, labels, direction, peer, to, trace, |trace| {
                    self.side(policies, direction, peer, to, trace)
                })
            }
        }
    }

    /// The ingress side of an address no pod of the index holds: in a view
    /// with outbound parts, that of the pods it does not hold that claim it,
    /// every one of which must allow; `None`: no pod's (as far as the view
    /// knows).
    fn address_ingress_side<T: Trace>(
        &self,
        mode: Mode,
        ip: IpAddr,
        from: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Option<Side> {
        let claimants = self.ingress_toward_me.as_ref()?.address(ip)?;
        self.claimants_side(mode, claimants, from, to, trace)
    }
}

// === impl PolicyIndex: compiled sides ===

impl PolicyIndex {
    /// The egress side of an address no pod of the index claims: in a view,
    /// the pods it does not hold that claim it, every one of which must allow.
    fn address_egress_side<T: Trace>(
        &self,
        mode: Mode,
        ip: IpAddr,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Side {
        self.egress_toward_me
            .as_ref()
            .and_then(|c| c.address(ip))
            .and_then(|claimants| self.claimants_side(mode, claimants, to.peer, to, trace))
            .unwrap_or(Side::NotApplicable)
    }

    /// The side of the pods claiming an address, compiled: the first that
    /// denies, else the first that allows; `None` when none isolates in
    /// `mode` (only audited policies select them, and `mode` enforces).
    fn claimants_side<T: Trace>(
        &self,
        mode: Mode,
        claimants: &[std::sync::Arc<CompiledSide>],
        peer: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Option<Side> {
        let mut side = None;
        for compiled in claimants.iter().filter(|c| c.isolates(mode)) {
            let said = self.compiled_side(mode, compiled, peer, to, trace);
            if !said.allows() {
                return Some(said);
            }
            side.get_or_insert(said);
        }
        side
    }

    /// Another pod's side from its compiled rules toward `peer` (the view's
    /// pod), for a connection to `to`: the enforced policies' rules, and in
    /// audited mode the audited ones', merged in policy order as
    /// [`Policies::iter`] tries them.
    fn compiled_side<T: Trace>(
        &self,
        mode: Mode,
        compiled: &CompiledSide,
        peer: Endpoint<'_>,
        to: &Destination<'_>,
        trace: &mut T,
    ) -> Side {
        let audited = match mode {
            Mode::Enforced => &[][..],
            Mode::Audited => &compiled.audited_rules[..],
        };
        let merged = merged(&compiled.rules, audited, |r| &r.policy);
        let policies = compiled.policies
            + match mode {
                Mode::Enforced => 0,
                Mode::Audited => compiled.audited,
            };
        let mut allowed = None;
        let mut policy = None;
        for toward in merged {
            if policy != Some(&toward.policy) {
                trace.policy(&toward.policy);
                policy = Some(&toward.policy);
            }
            let peer_entry = rule_matches_peer(&toward.rule, &peer);
            let port_entry = if peer_entry.is_some() || T::EVERY_RULE {
                rule_matches_port(&toward.rule, to)
            } else {
                None
            };
            trace.rule(toward.index, &toward.rule, peer_entry, port_entry);
            if allowed.is_none() && peer_entry.is_some() && port_entry.is_some() {
                let side = Side::Allowed {
                    policy: toward.policy.clone(),
                    rule: toward.index,
                };
                if !T::EVERY_RULE {
                    return side;
                }
                allowed = Some(side);
            }
        }
        allowed.unwrap_or(Side::Denied { policies })
    }
}

/// The destination of a decision: as the peer of egress rules (a pod and
/// the address dialled, or an address no pod holds), the ports its named
/// ports resolve on, and the port dialled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Destination<'a> {
    peer: Endpoint<'a>,
    ports: &'a [ContainerPort],
    port: u16,
    protocol: Protocol,
}

/// Which peer of the rule matches: `Some(None)` when the rule allows all peers.
fn rule_matches_peer(rule: &Rule, peer: &Endpoint<'_>) -> Option<Option<usize>> {
    if rule.broken.is_some() {
        return None;
    }
    let Some(peers) = &rule.peers else {
        return Some(None);
    };
    peers.iter().position(|p| peer_matches(p, peer)).map(Some)
}

fn peer_matches(rule_peer: &Peer, peer: &Endpoint<'_>) -> bool {
    match (rule_peer, peer) {
        (
            Peer::Pods { namespaces, pods },
            Endpoint::Pod {
                pod,
                held,
                namespace_labels,
                ..
            },
        ) => match held {
            Some(held) => pod_peer_matches(
                namespaces,
                pods.as_ref(),
                &held.key.namespace,
                &held.labels(),
                namespace_labels.as_ref(),
            ),
            None => pod_peer_matches(
                namespaces,
                pods.as_ref(),
                &pod.key.namespace,
                &pod.labels,
                namespace_labels.as_ref(),
            ),
        },
        (Peer::Pods { .. }, Endpoint::Address(_)) => false,
        (Peer::IpBlock(block), peer) => peer.ip().is_some_and(|ip| block.contains(ip)),
    }
}

/// Whether a pod peer (`namespaceSelector`/`podSelector`) matches a pod whose
/// namespace has `namespace_labels` (`None`: the namespace is not known).
pub fn pods_peer_matches(
    namespaces: &NamespaceScope,
    pods: Option<&Selector>,
    pod: &Pod,
    namespace_labels: Option<&Labels>,
) -> bool {
    pod_peer_matches(
        namespaces,
        pods,
        &pod.key.namespace,
        &pod.labels,
        namespace_labels,
    )
}

/// [`pods_peer_matches`], for a pod of `namespace` with `labels` (the
/// model's, or packed).
fn pod_peer_matches(
    namespaces: &NamespaceScope,
    pods: Option<&Selector>,
    namespace: &str,
    labels: &impl LabelSource,
    namespace_labels: Option<&impl LabelSource>,
) -> bool {
    let in_namespace = match namespaces {
        NamespaceScope::Policy(ns) => same_bytes(namespace.as_bytes(), ns.as_bytes()),
        NamespaceScope::Selected(selector) => namespace_matches(selector, namespace_labels),
    };
    in_namespace && pods.is_none_or(|s| s.matches(labels))
}

/// Which port entry of the rule matches: `Some(None)` when it allows all ports.
fn rule_matches_port(rule: &Rule, to: &Destination<'_>) -> Option<Option<usize>> {
    if rule.broken.is_some() {
        return None;
    }
    ports_match(rule.ports.as_deref(), to)
}

/// Which entry of a rule's ports matches the port dialled: `Some(None)`
/// when the rule names none (all ports).
pub(crate) fn ports_match(
    ports: Option<&[PortMatch]>,
    to: &Destination<'_>,
) -> Option<Option<usize>> {
    let Some(ports) = ports else {
        return Some(None);
    };
    ports.iter().position(|p| port_matches(p, to)).map(Some)
}

/// Whether a port entry matches the port dialled; a named port matches
/// when the destination declares that name for it (an address that is no
/// pod declares none).
fn port_matches(entry: &PortMatch, to: &Destination<'_>) -> bool {
    if entry.protocol != to.protocol {
        return false;
    }
    match &entry.port {
        PortSpec::Any => true,
        PortSpec::Range(start, end) => (*start..=*end).contains(&to.port),
        PortSpec::Named(name) => to.ports.iter().any(|cp| {
            cp.port == to.port && cp.protocol == to.protocol && cp.name.as_deref() == Some(name)
        }),
    }
}

// === impl Endpoint ===

impl<'a> Endpoint<'a> {
    /// A pod's labels and its namespace's (`None`: not known); `None` for
    /// an address, or a hostNetwork pod.
    pub(crate) fn pod_labels(&self) -> Option<(LabelsRef<'a>, Option<LabelsRef<'a>>)> {
        match *self {
            Endpoint::Pod { pod, .. } if pod.host_network => None,
            Endpoint::Pod {
                held: Some(held),
                namespace_labels,
                ..
            } => Some((held.labels(), namespace_labels)),
            Endpoint::Pod {
                pod,
                namespace_labels,
                ..
            } => Some((LabelsRef::of(&pod.labels, None), namespace_labels)),
            Endpoint::Address(_) => None,
        }
    }

    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            Endpoint::Pod { ip, .. } => *ip,
            Endpoint::Address(ip) => Some(*ip),
        }
    }

    fn pod_key(&self) -> Option<PodKey> {
        match self {
            Endpoint::Pod {
                held: Some(held), ..
            } => Some(held.key.clone()),
            Endpoint::Pod { pod, .. } => Some(pod.key.clone()),
            Endpoint::Address(_) => None,
        }
    }
}

// === impl Decision ===

impl Decision {
    fn allow(reason: Reason, source: Option<PodKey>) -> Self {
        Self {
            allowed: true,
            reason,
            source,
        }
    }

    fn deny(reason: Reason, source: Option<PodKey>) -> Self {
        Self {
            allowed: false,
            reason,
            source,
        }
    }

    /// The denial of a connection to a Service without an endpoint.
    pub(crate) fn no_endpoint(src: &PodKey) -> Self {
        Self::deny(Reason::NoEndpoint, Some(src.clone()))
    }

    fn egress(
        egress: Side,
        ingress: Option<Side>,
        destination: Option<PodKey>,
        src: &PodKey,
    ) -> Self {
        Self {
            allowed: egress.allows() && ingress.as_ref().is_none_or(Side::allows),
            reason: Reason::Egress {
                egress,
                ingress,
                destination,
            },
            source: Some(src.clone()),
        }
    }

    /// The policy whose rule allowed the connection at its source (an
    /// outbound decision), if any.
    pub fn egress_policy(&self) -> Option<&PolicyKey> {
        match &self.reason {
            Reason::Egress {
                egress: Side::Allowed { policy, .. },
                ..
            } => Some(policy),
            _ => None,
        }
    }

    /// The cluster policy rule that decided: of the side that denied, or
    /// of the deciding pod's own side of an allowance (the destination's
    /// ingress, or an outbound connection's egress); `None` when
    /// NetworkPolicy or the default decided.
    pub fn deciding_tier(&self) -> Option<&TierVerdict> {
        let (own, other) = match &self.reason {
            Reason::Policies { ingress, egress } => (ingress, Some(egress)),
            Reason::Egress {
                egress, ingress, ..
            } => (egress, ingress.as_ref()),
            _ => return None,
        };
        if self.allowed {
            return own.tier();
        }
        [Some(own), other]
            .into_iter()
            .flatten()
            .find(|side| !side.allows())
            .and_then(Side::tier)
    }

    /// The policy whose rule allowed the connection at the destination, if any.
    pub fn ingress_policy(&self) -> Option<&PolicyKey> {
        match &self.reason {
            Reason::Policies {
                ingress: Side::Allowed { policy, .. },
                ..
            } => Some(policy),
            _ => None,
        }
    }

    /// A short, static name for the reason: `node`, `same-pod`, `allowed`, `ingress-denied`, ...
    pub fn reason_label(&self) -> &'static str {
        match &self.reason {
            Reason::Node => "node",
            Reason::SamePod => "same-pod",
            Reason::HostNetworkDestination => "host-network",
            Reason::UnknownDestination => "unknown-destination",
            Reason::UnknownSource => "unknown-source",
            Reason::HostNetworkSource => "host-network-source",
            Reason::NoEndpoint => "no-endpoint",
            Reason::Egress { egress, .. } if !egress.allows() => "egress-denied",
            Reason::Egress {
                ingress: Some(ingress),
                ..
            } if !ingress.allows() => "ingress-denied",
            Reason::Egress { .. } => "allowed",
            Reason::Policies { ingress, egress } => match (ingress.allows(), egress.allows()) {
                (true, true) => "allowed",
                (false, _) => "ingress-denied",
                (true, false) => "egress-denied",
            },
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::Node => f.write_str("from the destination's node (always allowed)"),
            Reason::SamePod => f.write_str("a pod to itself (always allowed)"),
            Reason::HostNetworkDestination => {
                f.write_str("destination uses host networking (NetworkPolicy does not apply)")
            }
            Reason::UnknownDestination => f.write_str("destination pod unknown (fail closed)"),
            Reason::UnknownSource => f.write_str("source pod unknown (fail closed)"),
            Reason::HostNetworkSource => {
                f.write_str("source uses host networking (NetworkPolicy does not apply)")
            }
            Reason::NoEndpoint => {
                f.write_str("the Service has no ready endpoint for this port (denied)")
            }
            Reason::Egress {
                egress,
                ingress,
                destination: Some(pod),
            } => {
                write!(f, "egress toward {pod}: {egress}")?;
                match ingress {
                    Some(ingress) => write!(f, "; its ingress: {ingress}"),
                    None => Ok(()),
                }
            }
            Reason::Egress {
                egress,
                destination: None,
                ..
            } => write!(f, "egress toward an address that is no pod's: {egress}"),
            Reason::Policies { ingress, egress } => {
                write!(f, "ingress: {ingress}; egress: {egress}")
            }
        }
    }
}

// === impl Side ===

impl Side {
    /// Whether this side lets the connection through.
    pub fn allows(&self) -> bool {
        match self {
            Side::Denied { .. } => false,
            Side::Tier(verdict) => verdict.action != Action::Deny,
            _ => true,
        }
    }

    /// The cluster policy rule that decided, when one did.
    pub fn tier(&self) -> Option<&TierVerdict> {
        match self {
            Side::Tier(verdict) => Some(verdict),
            _ => None,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Side::NotIsolated => f.write_str("not isolated"),
            Side::NotApplicable => f.write_str("source is not a pod"),
            Side::NotEvaluated => f.write_str("not evaluated"),
            Side::Allowed { policy, rule } => write!(f, "allowed by {policy} rule {rule}"),
            Side::Denied { policies: 1 } => f.write_str("isolated by 1 policy, no rule allows"),
            Side::Denied { policies } => {
                write!(f, "isolated by {policies} policies, no rule allows")
            }
            Side::Tier(verdict) => verdict.fmt(f),
        }
    }
}

// === impl TierVerdict ===

impl TierVerdict {
    /// The deciding policy as a metric label: `admin:<name>` or `baseline:<name>`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.tier.label(), self.policy)
    }
}

impl fmt::Display for TierVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.action {
            Action::Accept => "accepted",
            Action::Deny => "denied",
            Action::Pass => "passed",
        };
        write!(
            f,
            "{verb} by {} tier ClusterNetworkPolicy {} (priority {}) rule {}",
            self.tier, self.policy, self.priority, self.rule
        )?;
        match &self.rule_name {
            Some(name) => write!(f, " ({name})"),
            None => Ok(()),
        }
    }
}
