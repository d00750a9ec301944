//! Outbound admission: a connection this pod opened, captured, is routed
//! by the engine (the address dialled, or a Service's endpoints) and
//! decided by this pod's egress side; allowed, it is dialled at the
//! destination chosen (of a Service's allowed endpoints, the less loaded of
//! the next two in turn), and
//! the table holds that destination, so a re-check decides what was dialled.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use picket_policy::{Decision, Direction, Protocol, Reason, Route, Side};
use picket_state::Snapshot;

use super::registry::Registration;
use super::{Admitted, Enforcer, Refusal};
use crate::net::{ClientAddr, OrigDstAddr};

// === impl Enforcer: outbound ===

impl Enforcer {
    /// This pod's route to `dst` on a snapshot.
    fn route(&self, snapshot: &Snapshot, dst: OrigDstAddr) -> Route {
        snapshot.index.route(
            &snapshot.services,
            &self.pod,
            dst.0,
            Protocol::Tcp,
            &self.own_node,
        )
    }

    /// Decides a live outbound connection: the destination dialled (an
    /// endpoint, or an address), or, while its admission is still choosing
    /// an endpoint, the Service's address (allowed when some endpoint is;
    /// admission decides again what it dialled, see below).
    /// The re-check runs this for every live connection: an address that
    /// is no Service's (an endpoint dialled, or a plain address) is decided
    /// directly, with no route built.
    pub(super) fn decide_outbound(&self, snapshot: &Snapshot, dst: OrigDstAddr) -> Decision {
        let ip = dst.0.ip().to_canonical();
        if !snapshot.services.is_service_address(ip) {
            return snapshot.index.decide_to_ip(
                &self.pod,
                ip,
                dst.0.port(),
                Protocol::Tcp,
                &self.own_node,
            );
        }
        self.route(snapshot, dst).verdict(&self.pod)
    }

    /// Routes and decides an outbound connection (waiting, bounded, for a
    /// state that knows a new destination pod), picks its destination and
    /// records it in the table.
    pub(super) async fn admit_outbound(
        &self,
        registration: Registration,
        mut snapshot: Arc<Snapshot>,
        client: ClientAddr,
        dst: OrigDstAddr,
    ) -> Result<Admitted, Refusal> {
        let decided_at = Instant::now();
        let mut route = self.route(&snapshot, dst);
        self.metrics
            .decision
            .observe(decided_at.elapsed().as_secs_f64());
        let ip = dst.0.ip().to_canonical();
        if route.allowed.is_empty()
            && route.service.is_none()
            && !names_a_pod(route.denied.as_ref())
            && self.may_be_a_new_pod(&snapshot, ip)
        {
            if let Some(newer) = self.wait_for_ip(ip).await {
                snapshot = newer;
                route = self.route(&snapshot, dst);
            }
        }
        let picked = route
            .pick_less_loaded(self.next_endpoint.fetch_add(1, Ordering::Relaxed), |a| {
                self.registry.dialled(a)
            })
            .cloned();
        self.count_outbound(&route, picked.as_ref().map(|(_, d)| d));
        let direction = Direction::Egress;
        match (&picked, &route.denied) {
            (Some((to, decision)), _) => {
                let to = OrigDstAddr(*to);
                let audit = self.audit_outbound(&snapshot, decision, client, to);
                self.tap_decision(&snapshot, direction, client, to, decision, audit);
            }
            // A denied Service has no one endpoint to audit.
            (None, Some(denied)) if route.service.is_none() => {
                let audit = self.audit_outbound(&snapshot, denied, client, dst);
                self.tap_decision(&snapshot, direction, client, dst, denied, audit);
            }
            (None, Some(denied)) => {
                self.tap_decision(&snapshot, direction, client, dst, denied, None)
            }
            (None, None) => self.tap_refusal(direction, client, dst, "no-endpoint"),
        }
        let decided_on = snapshot.version;
        registration.set_decided_on(decided_on);
        drop(snapshot);
        let Some((to, decision)) = picked else {
            let service = route.service.as_ref().map(ToString::to_string);
            match &route.denied {
                Some(denied) => tracing::info!(
                    direction = ?Direction::Egress,
                    client.addr = %client,
                    dst.addr = %dst,
                    ?service,
                    endpoints = route.candidates,
                    reason = %denied,
                    "Connection denied"
                ),
                None => tracing::info!(
                    direction = ?Direction::Egress,
                    client.addr = %client,
                    dst.addr = %dst,
                    ?service,
                    "Connection denied: the Service has no ready endpoint for this port"
                ),
            }
            return Err(Refusal::Denied);
        };
        let dial = OrigDstAddr(to);
        registration.set_dst(dial);
        // A re-check between the route and `set_dst` saw the Service's
        // address, not the endpoint chosen: a newer state decides it again.
        let newest = self.snapshots.borrow().clone();
        if let Some(newest) = newest.filter(|s| s.version > decided_on) {
            let again = self.decide_outbound(&newest, dial);
            if !again.allowed {
                tracing::info!(
                    direction = ?Direction::Egress,
                    client.addr = %client,
                    dial.addr = %dial,
                    reason = %again,
                    "Connection denied by a newer state before it was dialled"
                );
                self.tap_decision(&newest, Direction::Egress, client, dial, &again, None);
                return Err(Refusal::Denied);
            }
        }
        registration.set_allowed_by(decision.egress_policy().cloned());
        tracing::debug!(
            direction = ?Direction::Egress,
            client.addr = %client,
            dst.addr = %dst,
            dial.addr = %dial,
            service = ?route.service.as_ref().map(ToString::to_string),
            reason = %decision,
            "Connection allowed"
        );
        Ok(Admitted { registration, dial })
    }

    /// Counts an outbound decision by outcome, deciding policy and
    /// destination: the pod dialled (its workload), the Service when no
    /// endpoint is allowed, or `external`/`node`.
    fn count_outbound(&self, route: &Route, picked: Option<&Decision>) {
        let outcome = if picked.is_some() {
            "allowed"
        } else {
            "denied"
        };
        let decision = picked.or(route.denied.as_ref());
        let policy_label;
        let policy = match decision.map(|d| &d.reason) {
            // A cluster policy decided: its tier and name.
            _ if decision.and_then(Decision::deciding_tier).is_some() => {
                policy_label = decision
                    .and_then(Decision::deciding_tier)
                    .map(|t| t.label())
                    .unwrap_or_default();
                &policy_label
            }
            _ if picked.is_none() => "isolated",
            Some(Reason::Egress {
                egress: Side::Allowed { policy, .. },
                ..
            }) => {
                policy_label = policy.to_string();
                &policy_label
            }
            Some(Reason::Node) => "node",
            Some(Reason::SamePod) => "same-pod",
            _ => "no-policy",
        };
        let service_label;
        let (pod, otherwise) = match decision.map(|d| &d.reason) {
            _ if picked.is_none() && route.service.is_some() => {
                service_label = route.service.as_ref().map(ToString::to_string);
                (None, service_label.as_deref().unwrap_or("external"))
            }
            Some(Reason::Egress { destination, .. }) => (destination.as_ref(), "external"),
            Some(Reason::SamePod) => (Some(&self.pod), "external"),
            Some(Reason::Node) => (None, "node"),
            _ => (None, "external"),
        };
        self.metrics
            .outbound_decided(outcome, policy, pod, otherwise);
    }
}

/// Whether a denial was toward a known pod (no new pod to wait for).
fn names_a_pod(denied: Option<&Decision>) -> bool {
    matches!(
        denied.map(|d| &d.reason),
        Some(Reason::Egress {
            destination: Some(_),
            ..
        })
    )
}
