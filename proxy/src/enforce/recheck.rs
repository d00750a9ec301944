//! The re-check: on every new snapshot, decide every live connection again
//! and tear down those no longer allowed, logging each with the change that
//! caused it. The table is copied under its lock; deciding and logging
//! happen outside it.

use std::sync::Arc;

use picket_policy::Direction;
use picket_state::ChangeReason;

use super::Enforcer;
use crate::admin::Readiness;
use crate::tap;

// === impl Enforcer: re-check ===

impl Enforcer {
    /// On every new snapshot: mark the state loaded (the readiness latch),
    /// then re-check the live connections. Runs until the state's sender goes.
    pub async fn recheck_on_change(self: Arc<Self>, readiness: Arc<Readiness>) {
        let mut rx = self.snapshots.clone();
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let Some(snapshot) = rx.borrow_and_update().clone() else {
                continue;
            };
            readiness.set_state_loaded();
            self.metrics.state_applied(&snapshot);
            let start = std::time::Instant::now();
            let reason = snapshot
                .changes
                .first()
                .copied()
                .unwrap_or(ChangeReason::PolicyModified);
            let mut killed = [0usize; 2];
            // A change of Services alone cannot change a verdict on what
            // was dialled: only connections still at a Service's address
            // (an admission choosing its endpoint) are decided again.
            let services_only = snapshot
                .changes
                .iter()
                .all(|c| *c == ChangeReason::ServiceEndpoints)
                && !snapshot.changes.is_empty();
            for conn in self.registry.live() {
                if services_only
                    && !snapshot
                        .services
                        .is_service_address(conn.dst.0.ip().to_canonical())
                {
                    continue;
                }
                let decision = self.decide(&snapshot, conn.direction, conn.client, conn.dst);
                // An allowed peer must still be who it proved to be (the
                // address's owner may have changed, the pod's mode too).
                let mesh_refused = decision.allowed
                    && conn.direction == Direction::Ingress
                    && self
                        .check_mesh(&snapshot, &conn.transport, &decision, conn.client)
                        .is_err();
                if decision.allowed && !mesh_refused {
                    continue;
                }
                conn.kill_as_of(snapshot.version);
                if !conn.decided() {
                    // Still waiting for state that decides it: the kill is a
                    // no-op once it is admitted on a newer snapshot.
                    continue;
                }
                killed[(conn.direction == Direction::Egress) as usize] += 1;
                self.tap.publish(|| tap::Event {
                    kind: tap::Kind::Teardown(reason.as_str()),
                    ..tap::Event::decided(
                        &snapshot.index,
                        &self.pod,
                        conn.direction,
                        conn.client.0,
                        conn.dst.0,
                        &decision,
                    )
                });
                tracing::info!(
                    direction = ?conn.direction,
                    client.addr = %conn.client,
                    dst.addr = %conn.dst,
                    change = reason.as_str(),
                    reason = %decision,
                    "Connection torn down"
                );
            }
            self.metrics
                .torn_down(Direction::Ingress, reason, killed[0]);
            self.metrics.torn_down(Direction::Egress, reason, killed[1]);
            tracing::debug!(
                version = snapshot.version,
                changes = ?snapshot.changes,
                live = self.registry.len(),
                torn_down = killed[0] + killed[1],
                took = ?start.elapsed(),
                "State applied; live connections re-checked"
            );
        }
    }
}
