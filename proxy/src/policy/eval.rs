//! Decisions: may this source open this port on this pod, and why.
//!
//! Pure: no I/O, no allocation on the path that decides (a decision names its
//! policy by a cloned `Arc` key). `explain` is the slow path that records every
//! rule it tried.
//!
//! A connection is allowed when the destination's ingress side allows it AND,
//! when the source is a known pod, the source's egress side allows it. A side
//! allows when no policy isolates the pod for that direction, or when any rule
//! of any selecting policy matches both the peer and the port.

use std::fmt;
use std::net::IpAddr;

use super::index::PolicyIndex;
use super::model::{
    Direction, NamespaceScope, NodeAddrs, Peer, Pod, PodKey, PolicyKey, PortMatch, PortSpec,
    Protocol, Rule,
};
use super::selector::Labels;

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
}

/// Who opens the connection, as a policy sees it.
#[derive(Clone, Copy, Debug)]
enum Endpoint<'a> {
    Pod {
        pod: &'a Pod,
        namespace_labels: &'a Labels,
        ip: Option<IpAddr>,
    },
    Address(IpAddr),
}

/// The whole reasoning behind one decision.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The source, as `ns/pod` or an address.
    pub from: String,
    /// The destination pod.
    pub to: PodKey,
    /// The destination port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The decision itself.
    pub decision: Decision,
    /// The destination's ingress policies, rule by rule.
    pub ingress: Option<SideTrace>,
    /// The source's egress policies, rule by rule.
    pub egress: Option<SideTrace>,
}

/// One side's policies and what each rule said.
#[derive(Clone, Debug)]
pub struct SideTrace {
    /// The pod whose policies these are.
    pub pod: PodKey,
    /// The direction.
    pub direction: Direction,
    /// Each selecting policy, in key order.
    pub policies: Vec<PolicyTrace>,
}

/// One policy's rules, tried in order.
#[derive(Clone, Debug)]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyKey,
    /// Each rule's verdict.
    pub rules: Vec<RuleTrace>,
}

/// One rule's verdict.
#[derive(Clone, Debug)]
pub struct RuleTrace {
    /// The rule's index.
    pub index: usize,
    /// Which peer matched (`Some(None)`: the rule allows all peers), or `None`.
    pub peer: Option<Option<usize>>,
    /// Which port entry matched (`Some(None)`: all ports), or `None`.
    pub port: Option<Option<usize>>,
    /// Why the rule allows nothing, when it could not be compiled.
    pub broken: Option<String>,
}

// === impl PolicyIndex: decisions ===

impl PolicyIndex {
    /// Decides a connection from a source address to a pod, as the proxy sees it.
    ///
    /// The node's addresses (`node`, and the destination's hostIPs) and the
    /// pod's own addresses are always allowed. An
    /// address claimed by several live pods is allowed only if every claimant
    /// is; an address that is no pod can match only `ipBlock` peers.
    pub fn decide_from_ip(
        &self,
        src: IpAddr,
        dst: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
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
        let claimants = self.pods_with_ip(src);
        if claimants.is_empty() {
            return self.decide_endpoint(
                Endpoint::Address(src),
                dst_pod,
                Some(dst_ip),
                port,
                protocol,
            );
        }
        let mut allowed = None;
        for key in claimants {
            let Some(src_pod) = self.pod(key) else {
                continue;
            };
            let decision = self.decide_endpoint(
                self.endpoint(src_pod, Some(src)),
                dst_pod,
                Some(dst_ip),
                port,
                protocol,
            );
            if !decision.allowed {
                return decision;
            }
            allowed.get_or_insert(decision);
        }
        allowed.unwrap_or_else(|| {
            self.decide_endpoint(
                Endpoint::Address(src),
                dst_pod,
                Some(dst_ip),
                port,
                protocol,
            )
        })
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
        let dst_ip = dst_pod.ip_like(src_ip);
        if src_pod.host_network {
            let Some(ip) = src_ip.or_else(|| src_pod.host_ips.first().copied()) else {
                return self.decide_endpoint(
                    Endpoint::Address(IpAddr::from([0, 0, 0, 0])),
                    dst_pod,
                    dst_ip,
                    port,
                    protocol,
                );
            };
            if node.contains(ip) || src_pod.host_ips.iter().any(|h| node.contains(*h)) {
                return Decision::allow(Reason::Node, None);
            }
            return self.decide_endpoint(Endpoint::Address(ip), dst_pod, dst_ip, port, protocol);
        }
        self.decide_endpoint(
            self.endpoint(src_pod, src_ip),
            dst_pod,
            dst_ip,
            port,
            protocol,
        )
    }

    /// Explains a decision between two pods: every policy and rule tried.
    pub fn explain_between_pods(
        &self,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Explanation {
        let decision = self.decide_between_pods(src, dst, port, protocol, node);
        let mut explanation = Explanation {
            from: src.to_string(),
            to: dst.clone(),
            port,
            protocol,
            decision,
            ingress: None,
            egress: None,
        };
        let (Some(src_pod), Some(dst_pod)) = (self.pod(src), self.pod(dst)) else {
            return explanation;
        };
        if !matches!(explanation.decision.reason, Reason::Policies { .. }) {
            return explanation;
        }
        let src_ip = src_pod.ips.first().copied();
        let dst_ip = dst_pod.ip_like(src_ip);
        let endpoint = if src_pod.host_network {
            Endpoint::Address(src_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])))
        } else {
            self.endpoint(src_pod, src_ip)
        };
        explanation.ingress = Some(self.trace_side(
            dst_pod,
            Direction::Ingress,
            endpoint,
            dst_pod,
            port,
            protocol,
        ));
        if !src_pod.host_network {
            let dst_endpoint = self.endpoint(dst_pod, dst_ip);
            explanation.egress = Some(self.trace_side(
                src_pod,
                Direction::Egress,
                dst_endpoint,
                dst_pod,
                port,
                protocol,
            ));
        }
        explanation
    }

    fn endpoint<'a>(&'a self, pod: &'a Pod, ip: Option<IpAddr>) -> Endpoint<'a> {
        Endpoint::Pod {
            pod,
            namespace_labels: self.namespace_labels(&pod.key.namespace),
            ip,
        }
    }

    fn decide_endpoint(
        &self,
        src: Endpoint<'_>,
        dst: &Pod,
        dst_ip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> Decision {
        if dst.host_network {
            return Decision::allow(Reason::HostNetworkDestination, src.pod_key());
        }
        let ingress = self.side(dst, Direction::Ingress, src, dst, port, protocol);
        let egress = match src {
            // The ingress side already denies: the egress side cannot change that.
            _ if !ingress.allows() => Side::NotEvaluated,
            Endpoint::Pod { pod, .. } => self.side(
                pod,
                Direction::Egress,
                self.endpoint(dst, dst_ip),
                dst,
                port,
                protocol,
            ),
            Endpoint::Address(_) => Side::NotApplicable,
        };
        let allowed = ingress.allows() && egress.allows();
        Decision {
            allowed,
            reason: Reason::Policies { ingress, egress },
            source: src.pod_key(),
        }
    }

    /// One side: `subject`'s policies for `direction`, with `peer` at the other end.
    fn side(
        &self,
        subject: &Pod,
        direction: Direction,
        peer: Endpoint<'_>,
        dst: &Pod,
        port: u16,
        protocol: Protocol,
    ) -> Side {
        let policies = self.selecting(&subject.key, direction);
        if policies.is_empty() {
            return Side::NotIsolated;
        }
        for policy in policies {
            let rules = policy.rules(direction).unwrap_or_default();
            for (index, rule) in rules.iter().enumerate() {
                if rule_matches_peer(rule, peer).is_some()
                    && rule_matches_port(rule, dst, port, protocol).is_some()
                {
                    return Side::Allowed {
                        policy: policy.key.clone(),
                        rule: index,
                    };
                }
            }
        }
        Side::Denied {
            policies: policies.len(),
        }
    }

    fn trace_side(
        &self,
        subject: &Pod,
        direction: Direction,
        peer: Endpoint<'_>,
        dst: &Pod,
        port: u16,
        protocol: Protocol,
    ) -> SideTrace {
        let policies = self
            .selecting(&subject.key, direction)
            .iter()
            .map(|policy| PolicyTrace {
                policy: policy.key.clone(),
                rules: policy
                    .rules(direction)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(index, rule)| RuleTrace {
                        index,
                        peer: rule_matches_peer(rule, peer),
                        port: rule_matches_port(rule, dst, port, protocol),
                        broken: rule.broken.clone(),
                    })
                    .collect(),
            })
            .collect();
        SideTrace {
            pod: subject.key.clone(),
            direction,
            policies,
        }
    }
}

/// Which peer of the rule matches: `Some(None)` when the rule allows all peers.
fn rule_matches_peer(rule: &Rule, peer: Endpoint<'_>) -> Option<Option<usize>> {
    if rule.broken.is_some() {
        return None;
    }
    let Some(peers) = &rule.peers else {
        return Some(None);
    };
    peers.iter().position(|p| peer_matches(p, peer)).map(Some)
}

fn peer_matches(rule_peer: &Peer, peer: Endpoint<'_>) -> bool {
    match (rule_peer, peer) {
        (
            Peer::Pods { namespaces, pods },
            Endpoint::Pod {
                pod,
                namespace_labels,
                ..
            },
        ) => {
            let in_namespace = match namespaces {
                NamespaceScope::Policy(ns) => *pod.key.namespace == **ns,
                NamespaceScope::Selected(selector) => selector.matches(namespace_labels),
            };
            in_namespace && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
        }
        (Peer::Pods { .. }, Endpoint::Address(_)) => false,
        (Peer::IpBlock(block), peer) => peer.ip().is_some_and(|ip| block.contains(ip)),
    }
}

/// Which port entry of the rule matches: `Some(None)` when it allows all ports.
fn rule_matches_port(
    rule: &Rule,
    dst: &Pod,
    port: u16,
    protocol: Protocol,
) -> Option<Option<usize>> {
    if rule.broken.is_some() {
        return None;
    }
    let Some(ports) = &rule.ports else {
        return Some(None);
    };
    ports
        .iter()
        .position(|p| port_matches(p, dst, port, protocol))
        .map(Some)
}

fn port_matches(entry: &PortMatch, dst: &Pod, port: u16, protocol: Protocol) -> bool {
    if entry.protocol != protocol {
        return false;
    }
    match &entry.port {
        PortSpec::Any => true,
        PortSpec::Range(start, end) => (*start..=*end).contains(&port),
        PortSpec::Named(name) => dst.ports.iter().any(|cp| {
            cp.port == port && cp.protocol == protocol && cp.name.as_deref() == Some(name)
        }),
    }
}

// === impl Endpoint ===

impl Endpoint<'_> {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Endpoint::Pod { ip, .. } => *ip,
            Endpoint::Address(ip) => Some(*ip),
        }
    }

    fn pod_key(&self) -> Option<PodKey> {
        match self {
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
        !matches!(self, Side::Denied { .. })
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
        }
    }
}

// === impl Explanation ===

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.decision.allowed {
            "ALLOWED"
        } else {
            "DENIED"
        };
        writeln!(
            f,
            "{} -> {} port {}/{}: {verdict}",
            self.from, self.to, self.port, self.protocol
        )?;
        writeln!(f, "  because: {}", self.decision)?;
        for trace in [&self.ingress, &self.egress].into_iter().flatten() {
            write!(f, "{trace}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SideTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.direction.as_str();
        if self.policies.is_empty() {
            return writeln!(f, "  {dir} of {}: no policy isolates it", self.pod);
        }
        let names: Vec<String> = self.policies.iter().map(|p| p.policy.to_string()).collect();
        writeln!(
            f,
            "  {dir} of {}: isolated by {}",
            self.pod,
            names.join(", ")
        )?;
        for policy in &self.policies {
            if policy.rules.is_empty() {
                writeln!(f, "    {}: no {dir} rules (denies all)", policy.policy)?;
                continue;
            }
            writeln!(f, "    {}:", policy.policy)?;
            for rule in &policy.rules {
                write!(f, "      rule {}: ", rule.index)?;
                if let Some(broken) = &rule.broken {
                    writeln!(f, "broken, allows nothing ({broken})")?;
                    continue;
                }
                let peer = match rule.peer {
                    Some(None) => "peer: any (matches)".to_string(),
                    Some(Some(i)) => format!("peer: entry {i} matches"),
                    None => "peer: no entry matches".to_string(),
                };
                let port = match rule.port {
                    Some(None) => "port: any (matches)".to_string(),
                    Some(Some(i)) => format!("port: entry {i} matches"),
                    None => "port: no entry matches".to_string(),
                };
                let verdict = if rule.peer.is_some() && rule.port.is_some() {
                    "ALLOWS"
                } else {
                    "no"
                };
                writeln!(f, "{peer}; {port} => {verdict}")?;
            }
        }
        Ok(())
    }
}
