//! One inbound connection: original destination, loop guard, registration,
//! decision, then relay or reset; a re-check can reset it at any time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::orig_dst::{orig_dst, reset};
use super::registry::Registry;
use super::relay::{relay, RelayError};
use super::{ClientAddr, OrigDstAddr};
use crate::cluster::{Snapshot, SnapshotRx};
use crate::policy::{Decision, NodeAddrs, PodKey, Protocol};

/// Limits on connections; each is configurable.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long to wait for the app to accept.
    pub connect_timeout: Duration,
    /// Close a connection that moved nothing for this long (off by default:
    /// it would cut database pools).
    pub idle_timeout: Option<Duration>,
    /// Over this many live connections, new ones are reset.
    pub max_connections: usize,
    /// How long a connection waits for the first state before it is reset.
    pub state_wait: Duration,
}

/// Counters of what the inbound side did.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Connections allowed and relayed.
    pub allowed: AtomicU64,
    /// Connections denied by policy and reset.
    pub denied: AtomicU64,
    /// Connections reset because no state had loaded yet.
    pub no_state: AtomicU64,
    /// Connections to the proxy's own ports, reset (they would loop).
    pub own_port: AtomicU64,
    /// Connections reset over the connection limit.
    pub over_limit: AtomicU64,
    /// Live connections reset because a new state forbids them.
    pub torn_down: AtomicU64,
    /// Connections whose app could not be reached.
    pub connect_failed: AtomicU64,
}

/// Everything an inbound connection needs, shared by all of them.
#[derive(Debug)]
pub struct Inbound {
    /// This proxy's pod.
    pub pod: PodKey,
    /// The node's addresses from configuration (the pod's own hostIPs are added by the engine).
    pub node: NodeAddrs,
    /// The proxy's own ports: a connection to them is reset, never dialled.
    pub own_ports: Vec<u16>,
    /// The live connection table.
    pub registry: Arc<Registry>,
    /// The latest cluster state.
    pub snapshots: SnapshotRx,
    /// Limits.
    pub limits: Limits,
    /// Connections being handled.
    pub active: AtomicUsize,
    /// Counters.
    pub stats: InboundStats,
}

// === impl Inbound ===

impl Inbound {
    /// Decides a connection against a snapshot.
    pub fn decide(&self, snapshot: &Snapshot, client: ClientAddr, dst: OrigDstAddr) -> Decision {
        snapshot.index.decide_from_ip(
            client.0.ip(),
            &self.pod,
            dst.0.ip(),
            dst.0.port(),
            Protocol::Tcp,
            &self.node,
        )
    }

    /// Handles one accepted connection to its end.
    pub async fn handle(self: Arc<Self>, stream: TcpStream, client: ClientAddr) {
        let _active = ActiveGuard::new(&self.active);
        let dst = match orig_dst(&stream) {
            Ok(dst) => dst,
            Err(error) => {
                tracing::warn!(client.addr = %client, %error, "No original destination; reset");
                reset(stream);
                return;
            }
        };
        if self.own_ports.contains(&dst.0.port()) {
            self.stats.own_port.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client.addr = %client, dst.addr = %dst, "Connection to the proxy's own port; reset");
            reset(stream);
            return;
        }
        // Register before checking: a re-check after this point sees the connection.
        let registration = self.registry.register(client, dst);
        let Some(snapshot) = self.current_snapshot().await else {
            self.stats.no_state.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client.addr = %client, dst.addr = %dst, "No cluster state yet; reset");
            reset(stream);
            return;
        };
        let decision = self.decide(&snapshot, client, dst);
        drop(snapshot);
        if !decision.allowed {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                client.addr = %client,
                dst.port = dst.0.port(),
                peer = ?decision.source.as_ref().map(ToString::to_string),
                reason = %decision,
                "Connection denied"
            );
            reset(stream);
            return;
        }
        self.stats.allowed.fetch_add(1, Ordering::Relaxed);
        registration.set_allowed_by(decision.ingress_policy().cloned());
        tracing::debug!(client.addr = %client, dst.addr = %dst, reason = %decision, "Connection allowed");

        let upstream = match tokio::time::timeout(
            self.limits.connect_timeout,
            TcpStream::connect(dst.0),
        )
        .await
        {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                self.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(dst.addr = %dst, %error, "App connect failed; reset");
                reset(stream);
                return;
            }
            Err(_) => {
                self.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(dst.addr = %dst, timeout = ?self.limits.connect_timeout, "App connect timed out; reset");
                reset(stream);
                return;
            }
        };
        let client_stream = stream;
        let _ = client_stream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let outcome = tokio::select! {
            result = relay(&client_stream, &upstream, self.limits.idle_timeout) => Some(result),
            () = registration.killed() => None,
        };
        match outcome {
            Some(Ok(moved)) => {
                tracing::debug!(client.addr = %client, ?moved, "Connection closed");
            }
            Some(Err(RelayError::Idle(limit))) => {
                tracing::info!(client.addr = %client, ?limit, "Idle connection closed");
                reset(client_stream);
                reset(upstream);
            }
            Some(Err(error)) => {
                tracing::debug!(client.addr = %client, %error, "Relay error; reset both sides");
                reset(client_stream);
                reset(upstream);
            }
            None => {
                self.stats.torn_down.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client.addr = %client, dst.addr = %dst, "Connection torn down: no longer allowed");
                reset(client_stream);
                reset(upstream);
            }
        }
    }

    /// The latest snapshot, waiting (bounded) for the first one.
    async fn current_snapshot(&self) -> Option<Arc<Snapshot>> {
        if let Some(snapshot) = self.snapshots.borrow().clone() {
            return Some(snapshot);
        }
        let mut rx = self.snapshots.clone();
        let waited =
            tokio::time::timeout(self.limits.state_wait, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(guard)) => guard.clone(),
            _ => None,
        }
    }
}

struct ActiveGuard<'a>(&'a AtomicUsize);

impl<'a> ActiveGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
