//! The live connection table: every connection is registered before it is
//! checked (so a state change cannot slip between the check and the
//! registration); a re-check copies the table's entries and tells those no
//! longer allowed to reset.
//!
//! Synchronous and lock-based: the lock is held only to insert, remove, or
//! copy the table, never across an await and never while deciding or logging.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;

use picket_policy::{Direction, PolicyKey};

use super::mesh::Transport;
use crate::net::{ClientAddr, OrigDstAddr};

/// The live connections.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    /// Live outbound connections by the endpoint dialled (a Service's):
    /// how loaded each is, for the choice between two.
    dialled: Mutex<HashMap<std::net::SocketAddr, usize>>,
}

#[derive(Debug)]
struct Tracked {
    direction: Direction,
    client: ClientAddr,
    dst: OrigDstAddr,
    allowed_by: Option<PolicyKey>,
    opened: Instant,
    kill: Arc<Kill>,
    transport: Transport,
}

/// How a re-check tells a connection to go. A kill carries the version of
/// the snapshot it was decided on; a connection decided on a newer snapshot
/// ignores it (it may have been registered, still waiting for its peer's
/// Pod, when an older snapshot denied it).
#[derive(Debug, Default)]
struct Kill {
    notify: Notify,
    /// The newest snapshot version a re-check denied the connection on (0: none).
    denied_on: AtomicU64,
    /// The snapshot version the connection was admitted on (0: not yet decided).
    decided_on: AtomicU64,
}

/// A connection's place in the table; dropping it removes the connection.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    registry: Arc<Registry>,
    kill: Arc<Kill>,
    /// The endpoint it was dialled at, counted in the registry's load.
    dialled: std::sync::OnceLock<OrigDstAddr>,
}

/// One live connection as a re-check sees it: a copy taken under the lock.
#[derive(Clone, Debug)]
pub struct LiveConnection {
    /// Inbound (`Ingress`: a peer opened it) or outbound (`Egress`: this pod did).
    pub direction: Direction,
    /// The client.
    pub client: ClientAddr,
    /// The original destination.
    pub dst: OrigDstAddr,
    /// How its peer authenticated (inbound).
    pub transport: Transport,
    kill: Arc<Kill>,
}

/// One live connection, as the admin endpoint shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The client.
    pub client: String,
    /// The original destination.
    pub destination: String,
    /// The policy that allowed it, if one did.
    pub allowed_by: Option<String>,
    /// The peer's mesh identity, when it came over mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// Seconds since it was accepted.
    pub age_seconds: f64,
}

// === impl Registry ===

impl Registry {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a connection before it is checked.
    pub fn register(
        self: &Arc<Self>,
        direction: Direction,
        client: ClientAddr,
        dst: OrigDstAddr,
        transport: Transport,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Kill::default());
        self.lock().insert(
            id,
            Tracked {
                direction,
                client,
                dst,
                allowed_by: None,
                opened: Instant::now(),
                kill: kill.clone(),
                transport,
            },
        );
        Registration {
            id,
            registry: self.clone(),
            kill,
            dialled: std::sync::OnceLock::new(),
        }
    }

    /// How many live connections were dialled at an endpoint.
    pub fn dialled(&self, endpoint: std::net::SocketAddr) -> usize {
        self.dialled_lock().get(&endpoint).copied().unwrap_or(0)
    }

    fn dialled_lock(&self) -> MutexGuard<'_, HashMap<std::net::SocketAddr, usize>> {
        self.dialled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of every live connection, for a re-check to decide outside the lock.
    pub fn live(&self) -> Vec<LiveConnection> {
        self.lock()
            .values()
            .map(|t| LiveConnection {
                direction: t.direction,
                client: t.client,
                dst: t.dst,
                transport: t.transport.clone(),
                kill: t.kill.clone(),
            })
            .collect()
    }

    /// Re-checks every live connection; tells those no longer allowed to
    /// reset, and returns how many were.
    pub fn recheck(&self, mut allowed: impl FnMut(&LiveConnection) -> bool) -> usize {
        let mut killed = 0;
        for conn in self.live() {
            if !allowed(&conn) {
                conn.kill();
                killed += 1;
            }
        }
        killed
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live connections, for the admin endpoint (copied under the lock,
    /// formatted outside it).
    pub fn list(&self) -> Vec<ConnectionInfo> {
        type Copied = (
            Direction,
            ClientAddr,
            OrigDstAddr,
            Option<PolicyKey>,
            Instant,
            Transport,
        );
        let copied: Vec<Copied> = self
            .lock()
            .values()
            .map(|t| {
                (
                    t.direction,
                    t.client,
                    t.dst,
                    t.allowed_by.clone(),
                    t.opened,
                    t.transport.clone(),
                )
            })
            .collect();
        let mut out: Vec<ConnectionInfo> = copied
            .into_iter()
            .map(
                |(direction, client, dst, allowed_by, opened, transport)| ConnectionInfo {
                    direction: match direction {
                        Direction::Ingress => "inbound",
                        Direction::Egress => "outbound",
                    },
                    client: client.to_string(),
                    destination: dst.to_string(),
                    allowed_by: allowed_by.as_ref().map(ToString::to_string),
                    age_seconds: opened.elapsed().as_secs_f64(),
                    peer_identity: match transport {
                        Transport::Mtls(id) => Some(id.to_string()),
                        Transport::Plaintext => None,
                    },
                },
            )
            .collect();
        out.sort_by(|a, b| a.client.cmp(&b.client));
        out
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Tracked>> {
        // A panic while holding the lock leaves a consistent map: keep going.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === impl LiveConnection ===

impl LiveConnection {
    /// Whether the connection has been decided (admitted) yet; one still
    /// waiting for state is killed too, but is no teardown of a live one.
    pub fn decided(&self) -> bool {
        self.kill.decided_on.load(Ordering::Acquire) != 0
    }

    /// Tells the connection to reset, whatever state it was admitted on.
    pub fn kill(&self) {
        self.kill_as_of(u64::MAX);
    }

    /// Tells the connection to reset because the snapshot `version` denies
    /// it. A stored permit: the connection sees it even if it is not waiting
    /// yet; a connection admitted on a newer snapshot, or already gone,
    /// ignores it.
    pub fn kill_as_of(&self, version: u64) {
        self.kill.denied_on.fetch_max(version, Ordering::AcqRel);
        self.kill.notify.notify_one();
    }
}

// === impl Registration ===

impl Registration {
    /// Records the policy that allowed the connection.
    pub fn set_allowed_by(&self, policy: Option<PolicyKey>) {
        if let Some(t) = self.registry.lock().get_mut(&self.id) {
            t.allowed_by = policy;
        }
    }

    /// Records where the connection is dialled (a Service's endpoint, for
    /// an outbound connection to its ClusterIP): re-checks decide that.
    pub fn set_dst(&self, dst: OrigDstAddr) {
        if let Some(t) = self.registry.lock().get_mut(&self.id) {
            t.dst = dst;
        }
        if self.dialled.set(dst).is_ok() {
            *self.registry.dialled_lock().entry(dst.0).or_default() += 1;
        }
    }

    /// Records the snapshot version the connection was admitted on.
    pub fn set_decided_on(&self, version: u64) {
        self.kill.decided_on.store(version, Ordering::Release);
    }

    /// Resolves when a re-check decided, on a snapshot at least as new as
    /// the one the connection was admitted on, that it must go.
    pub async fn killed(&self) {
        loop {
            self.kill.notify.notified().await;
            let denied_on = self.kill.denied_on.load(Ordering::Acquire);
            if denied_on >= self.kill.decided_on.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        if let Some(dst) = self.dialled.get() {
            let mut dialled = self.registry.dialled_lock();
            if let Some(n) = dialled.get_mut(&dst.0) {
                *n -= 1;
                if *n == 0 {
                    dialled.remove(&dst.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    fn addrs(client: &str) -> (ClientAddr, OrigDstAddr) {
        (
            ClientAddr(client.parse::<SocketAddr>().unwrap()),
            OrigDstAddr("10.0.0.1:80".parse().unwrap()),
        )
    }

    #[tokio::test]
    async fn a_recheck_kills_only_the_denied_even_before_they_wait() {
        let registry = Registry::new();
        let (a, dst) = addrs("10.0.0.2:1000");
        let (b, _) = addrs("10.0.0.3:1000");
        let keep = registry.register(Direction::Ingress, a, dst, Transport::Plaintext);
        let kill = registry.register(Direction::Egress, b, dst, Transport::Plaintext);
        assert_eq!(registry.len(), 2);
        let killed = registry.recheck(|conn| conn.client == a);
        assert_eq!(killed, 1);
        tokio::time::timeout(Duration::from_secs(5), kill.killed())
            .await
            .expect("the stored permit wakes the connection");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), keep.killed())
                .await
                .is_err(),
            "the allowed connection is left alone"
        );
        drop(kill);
        assert_eq!(registry.len(), 1, "dropping the registration removes it");
        keep.set_allowed_by(Some(PolicyKey::new("x", "p")));
        assert_eq!(registry.list()[0].allowed_by.as_deref(), Some("x/p"));
    }
}
