//! Audit mode at admission: where the policies in audit mode would have
//! decided a connection otherwise, count it (`outcome="would-deny"` or
//! `"would-allow"`, labelled with the audited policy) and log it at info
//! with the verdict. Never more: the connection keeps its own decision,
//! and re-checks (teardowns) read only the enforced policies.

use picket_policy::{Audit, Decision, Direction, Protocol};
use picket_state::Snapshot;

use super::Enforcer;
use crate::net::{ClientAddr, OrigDstAddr};

/// What an audit found: the outcome label, and the audited policy.
fn difference(decision: &Decision, audit: Option<Audit>) -> Option<(&'static str, String, Audit)> {
    let audit = audit?;
    if audit.decision.allowed == decision.allowed {
        return None;
    }
    let outcome = if audit.decision.allowed {
        "would-allow"
    } else {
        "would-deny"
    };
    let policy = audit
        .policy
        .as_ref()
        .map_or_else(|| "unknown".to_string(), ToString::to_string);
    Some((outcome, policy, audit))
}

// === impl Enforcer: audit ===

impl Enforcer {
    /// Audits an inbound connection decided `decision` on `snapshot`;
    /// returns the difference found (outcome, audited policy).
    pub(super) fn audit_inbound(
        &self,
        snapshot: &Snapshot,
        decision: &Decision,
        client: ClientAddr,
        dst: OrigDstAddr,
    ) -> Option<(&'static str, String)> {
        let audit = snapshot.index.audit_from_ip(
            client.0.ip(),
            &self.pod,
            dst.0.ip(),
            dst.0.port(),
            Protocol::Tcp,
            &self.node,
        );
        let (outcome, policy, audit) = difference(decision, audit)?;
        let mut digits = [0u8; 5];
        let port = self.port_label(snapshot, dst.0.port(), &mut digits);
        self.metrics
            .connections
            .with_label_values(&[outcome, &policy, port])
            .inc();
        self.log_audit(Direction::Ingress, outcome, &policy, &audit, client, dst);
        Some((outcome, policy))
    }

    /// Audits an outbound connection to `dialled` (the endpoint chosen, or
    /// the address dialled) decided `decision` on `snapshot`; returns the
    /// difference found (outcome, audited policy).
    pub(super) fn audit_outbound(
        &self,
        snapshot: &Snapshot,
        decision: &Decision,
        client: ClientAddr,
        dialled: OrigDstAddr,
    ) -> Option<(&'static str, String)> {
        let ip = dialled.0.ip().to_canonical();
        let audit = snapshot.index.audit_to_ip(
            &self.pod,
            ip,
            dialled.0.port(),
            Protocol::Tcp,
            &self.own_node,
        );
        let (outcome, policy, audit) = difference(decision, audit)?;
        let destination = match &audit.decision.reason {
            picket_policy::Reason::Egress { destination, .. } => destination.clone(),
            _ => None,
        };
        self.metrics
            .outbound_decided(outcome, &policy, destination.as_ref(), "external");
        self.log_audit(Direction::Egress, outcome, &policy, &audit, client, dialled);
        Some((outcome, policy))
    }

    fn log_audit(
        &self,
        direction: Direction,
        outcome: &str,
        policy: &str,
        audit: &Audit,
        client: ClientAddr,
        dst: OrigDstAddr,
    ) {
        tracing::info!(
            ?direction,
            client.addr = %client,
            dst.addr = %dst,
            peer = ?audit.decision.source.as_ref().map(ToString::to_string),
            %outcome,
            %policy,
            audited = %audit.decision,
            "An audited policy would decide this connection otherwise"
        );
    }
}
