//! Audit mode: what the policies in audit mode would do to a connection.
//!
//! A policy in audit mode (its own `picket.io/mode: audit` annotation, or
//! its namespace's) neither isolates nor allows: the decisions of
//! [`crate::eval`] do not count it. Here the same evaluation runs once more
//! counting it as enforced, so that the proxy can count and log where the
//! two differ (`would-deny`, `would-allow`) and `picket reach` and
//! `explain` can show both verdicts. Nothing here is on the path of a
//! connection's own decision, and nothing tears a connection down.
//!
//! Pure: no I/O.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use super::cluster::Tier;

use super::eval::{Decision, Mode, Reason, Side};
use super::index::PolicyIndex;
use super::model::{Direction, NodeAddrs, PodKey, PolicyKey, Protocol};
use super::trace::{Explanation, NoTrace, Recorder};

/// A connection's decision had the policies in audit mode been enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// The decision, counting the audited policies as enforced.
    pub decision: Decision,
    /// The audited policy that decided it, when one did: for a denial,
    /// the first audited policy isolating the side that denied; for an
    /// allowance, the audited policy whose rule allowed; or the audited
    /// cluster policy whose rule accepted or denied.
    pub policy: Option<AuditedPolicy>,
}

/// The audited policy behind an audit verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditedPolicy {
    /// A NetworkPolicy.
    Network(PolicyKey),
    /// A ClusterNetworkPolicy, by tier and name.
    Cluster(Tier, Arc<str>),
}

impl fmt::Display for AuditedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditedPolicy::Network(key) => key.fmt(f),
            AuditedPolicy::Cluster(tier, name) => write!(f, "{}:{name}", tier.label()),
        }
    }
}

// === impl PolicyIndex: audit ===

impl PolicyIndex {
    /// [`Self::decide_from_ip`] had the audited policies been enforced;
    /// `None` when no audited policy selects the destination for ingress
    /// or a pod holding `src` for egress.
    pub fn audit_from_ip(
        &self,
        src: IpAddr,
        dst: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Option<Audit> {
        // On every inbound connection: the destination's selection, and
        // the holders' copies of theirs (no lookup by key).
        let holders = self.holders(src);
        let concerned = self.audits(dst, Direction::Ingress)
            || self.audits_cluster()
            || holders.iter().any(|h| {
                h.selection
                    .as_deref()
                    .is_some_and(|s| !s.audited(Direction::Egress).is_empty())
            })
            // In a view, the sources' sides are compiled, audited rules too.
            || self
                .egress_toward_me()
                .is_some_and(|c| c.audits(holders.iter().map(|h| &h.key), src));
        concerned.then(|| {
            let decision = self.decide_inbound(
                Mode::Audited,
                src,
                dst,
                dst_ip,
                port,
                protocol,
                node,
                &mut NoTrace,
            );
            self.audit(decision, Some(dst))
        })
    }

    /// [`Self::decide_to_ip`] had the audited policies been enforced;
    /// `None` when no audited policy selects `src` for egress or a pod
    /// holding `dst_ip` for ingress.
    pub fn audit_to_ip(
        &self,
        src: &PodKey,
        dst_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Option<Audit> {
        let holders = self.pods_with_ip(dst_ip);
        let concerned = self.audits(src, Direction::Egress)
            || self.audits_cluster()
            || holders.iter().any(|k| self.audits(k, Direction::Ingress))
            // In a view with outbound parts, the destinations' sides are
            // compiled, audited rules too.
            || self
                .ingress_toward_me()
                .is_some_and(|c| c.audits(holders.iter(), dst_ip));
        concerned.then(|| {
            let decision = self.decide_outbound(
                Mode::Audited,
                src,
                dst_ip,
                port,
                protocol,
                node,
                &mut NoTrace,
            );
            self.audit(decision, None)
        })
    }

    /// [`Self::decide_between_pods`] had the audited policies been
    /// enforced; `None` when no audited policy selects `dst` for ingress
    /// or `src` for egress.
    pub fn audit_between_pods(
        &self,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Option<Audit> {
        self.concerns(src, dst).then(|| {
            let decision =
                self.between_pods(Mode::Audited, src, dst, port, protocol, node, &mut NoTrace);
            self.audit(decision, Some(dst))
        })
    }

    /// [`Self::explain_between_pods`] had the audited policies been
    /// enforced; `None` when none concerns the pair (see
    /// [`Self::audit_between_pods`]).
    pub fn explain_audit_between_pods(
        &self,
        src: &PodKey,
        dst: &PodKey,
        port: u16,
        protocol: Protocol,
        node: &NodeAddrs,
    ) -> Option<Explanation> {
        self.concerns(src, dst).then(|| {
            let mut recorder = Recorder::default();
            let decision =
                self.between_pods(Mode::Audited, src, dst, port, protocol, node, &mut recorder);
            recorder.into_explanation(src.to_string(), dst.clone(), port, protocol, decision)
        })
    }

    fn concerns(&self, src: &PodKey, dst: &PodKey) -> bool {
        self.audits(dst, Direction::Ingress)
            || self.audits(src, Direction::Egress)
            || self.audits_cluster()
    }

    /// Whether a cluster policy is in audit mode: then every decision may
    /// be audited (its subjects are matched at decision time).
    fn audits_cluster(&self) -> bool {
        self.cluster_policies().iter().any(|p| p.audit)
    }

    /// Whether an audited policy selects `pod` for `direction`.
    fn audits(&self, pod: &PodKey, direction: Direction) -> bool {
        !self.auditing(pod, direction).is_empty()
    }

    /// The audit of a decision made counting audited policies; `dst`: the
    /// destination of an inbound decision (an outbound one names its own).
    fn audit(&self, decision: Decision, dst: Option<&PodKey>) -> Audit {
        let (ingress, egress, ingress_pod) = match &decision.reason {
            Reason::Policies { ingress, egress } => (Some(ingress), Some(egress), dst),
            Reason::Egress {
                egress,
                ingress,
                destination,
            } => (ingress.as_ref(), Some(egress), destination.as_ref()),
            _ => (None, None, None),
        };
        let source = decision.source.as_ref();
        let sides = [
            (ingress, ingress_pod, Direction::Ingress),
            (egress, source, Direction::Egress),
        ];
        let policy = sides.into_iter().find_map(|(side, pod, direction)| {
            let side = side?;
            // A cluster policy's rule names no pod: the policy decided.
            if let Side::Tier(verdict) = side {
                let audited = self
                    .cluster_policy(&verdict.policy)
                    .is_some_and(|p| p.audit);
                return (audited && side.allows() == decision.allowed)
                    .then(|| AuditedPolicy::Cluster(verdict.tier, verdict.policy.clone()));
            }
            let pod = pod?;
            match side {
                Side::Denied { .. } if !decision.allowed => self
                    .auditing(pod, direction)
                    .first()
                    .map(|p| AuditedPolicy::Network(p.key.clone())),
                Side::Allowed { policy, .. } if decision.allowed => self
                    .auditing(pod, direction)
                    .iter()
                    .any(|p| p.key == *policy)
                    .then(|| AuditedPolicy::Network(policy.clone())),
                _ => None,
            }
        });
        Audit { decision, policy }
    }
}
