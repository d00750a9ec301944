//! One inbound connection: original destination, loop guard, registration,
//! decision, then relay or reset; a re-check can reset it at any time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::orig_dst::{orig_dst, reset};
use super::registry::Registry;
use super::relay::{relay, RelayCounters, RelayError};
use super::{ClientAddr, OrigDstAddr};
use crate::cluster::{Snapshot, SnapshotRx};
use crate::metrics::{workload_of, ProxyMetrics};
use crate::policy::{Decision, Direction, NodeAddrs, PodKey, PortSpec, Protocol, Reason, Side};

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
    /// How long a denied connection from an unknown pod-network IP waits for
    /// a state update that may know it (a new pod's first connection races
    /// its own Pod event).
    pub unknown_ip_wait: Duration,
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
    /// The pod network; empty: the /16 (IPv4) or /48 (IPv6) around this pod's IP.
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Connections being handled.
    pub active: AtomicUsize,
    /// Metrics.
    pub metrics: Arc<ProxyMetrics>,
    /// Byte counters handed to every relay.
    pub bytes: RelayCounters,
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
                self.refused("no-original-destination");
                tracing::warn!(client.addr = %client, %error, "No original destination; reset");
                reset(stream);
                return;
            }
        };
        if self.own_ports.contains(&dst.0.port()) {
            self.refused("own-port");
            tracing::debug!(client.addr = %client, dst.addr = %dst, "Connection to the proxy's own port; reset");
            reset(stream);
            return;
        }
        // Register before checking: a re-check after this point sees the connection.
        let registration = self.registry.register(client, dst);
        let Some(snapshot) = self.current_snapshot().await else {
            self.refused("no-state");
            tracing::info!(client.addr = %client, dst.addr = %dst, "No cluster state yet; reset");
            reset(stream);
            return;
        };
        let decided_at = Instant::now();
        let mut decision = self.decide(&snapshot, client, dst);
        self.metrics
            .decision
            .observe(decided_at.elapsed().as_secs_f64());
        let mut snapshot = snapshot;
        if !decision.allowed
            && decision.source.is_none()
            && self.may_be_a_new_pod(&snapshot, client)
        {
            if let Some(newer) = self.wait_for_ip(client).await {
                snapshot = newer;
                decision = self.decide(&snapshot, client, dst);
            }
        }
        self.count_decision(&snapshot, &decision, dst.0.port());
        drop(snapshot);
        if !decision.allowed {
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
                let kind = if error.kind() == std::io::ErrorKind::ConnectionRefused {
                    "connect-refused"
                } else {
                    "connect-other"
                };
                self.metrics.relay_errors.with_label_values(&[kind]).inc();
                tracing::info!(dst.addr = %dst, %error, "App connect failed; reset");
                reset(stream);
                return;
            }
            Err(_) => {
                self.metrics
                    .relay_errors
                    .with_label_values(&["connect-timeout"])
                    .inc();
                tracing::info!(dst.addr = %dst, timeout = ?self.limits.connect_timeout, "App connect timed out; reset");
                reset(stream);
                return;
            }
        };
        let client_stream = stream;
        let _ = client_stream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let opened = Instant::now();
        self.metrics.open.inc();
        let outcome = tokio::select! {
            result = relay(&client_stream, &upstream, self.limits.idle_timeout, &self.bytes) => Some(result),
            () = registration.killed() => None,
        };
        self.metrics.open.dec();
        self.metrics
            .duration
            .observe(opened.elapsed().as_secs_f64());
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
                let kind = match &error {
                    RelayError::Io { source, .. }
                        if matches!(
                            source.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        "reset"
                    }
                    _ => "other",
                };
                self.metrics.relay_errors.with_label_values(&[kind]).inc();
                tracing::debug!(client.addr = %client, %error, "Relay error; reset both sides");
                reset(client_stream);
                reset(upstream);
            }
            None => {
                // Counted and logged, with the change that caused it, by the re-check.
                tracing::debug!(client.addr = %client, dst.addr = %dst, "Resetting a connection no longer allowed");
                reset(client_stream);
                reset(upstream);
            }
        }
    }

    /// Whether an unknown source may be a pod whose Pod event has not arrived yet.
    fn may_be_a_new_pod(&self, snapshot: &Snapshot, client: ClientAddr) -> bool {
        let ip = client.0.ip();
        if self.limits.unknown_ip_wait.is_zero() || !snapshot.index.pods_with_ip(ip).is_empty() {
            return false;
        }
        if !self.pod_cidrs.is_empty() {
            return self.pod_cidrs.iter().any(|n| n.contains(&ip));
        }
        let Some(own) = snapshot.index.pod(&self.pod) else {
            return false;
        };
        own.ips.iter().any(|mine| {
            let prefix = if mine.is_ipv4() { 16 } else { 48 };
            ipnet::IpNet::new(*mine, prefix).is_ok_and(|n| n.trunc().contains(&ip))
        })
    }

    /// Waits (bounded) for a snapshot that knows the client's IP.
    async fn wait_for_ip(&self, client: ClientAddr) -> Option<Arc<Snapshot>> {
        let ip = client.0.ip();
        let mut rx = self.snapshots.clone();
        let found = tokio::time::timeout(
            self.limits.unknown_ip_wait,
            rx.wait_for(|s| {
                s.as_ref()
                    .is_some_and(|s| !s.index.pods_with_ip(ip).is_empty())
            }),
        )
        .await;
        match found {
            Ok(Ok(snapshot)) => {
                self.metrics
                    .unknown_ip_waits
                    .with_label_values(&["resolved"])
                    .inc();
                snapshot.clone()
            }
            _ => {
                self.metrics
                    .unknown_ip_waits
                    .with_label_values(&["timeout"])
                    .inc();
                None
            }
        }
    }

    fn refused(&self, reason: &str) {
        self.metrics.refused.with_label_values(&[reason]).inc();
    }

    /// Counts a decision by outcome, deciding policy and (bounded) port.
    fn count_decision(&self, snapshot: &Snapshot, decision: &Decision, port: u16) {
        let policy_label;
        let policy = match &decision.reason {
            _ if !decision.allowed => "isolated",
            Reason::Node => "node",
            Reason::SamePod => "same-pod",
            Reason::Policies {
                ingress: Side::Allowed { policy, .. },
                ..
            } => {
                policy_label = policy.to_string();
                &policy_label
            }
            _ => "no-policy",
        };
        let mut digits = [0u8; 5];
        let port = if self.port_is_labelled(snapshot, port) {
            format_port(port, &mut digits)
        } else {
            "other"
        };
        let outcome = if decision.allowed {
            "allowed"
        } else {
            "denied"
        };
        self.metrics
            .connections
            .with_label_values(&[outcome, policy, port])
            .inc();
        if !decision.allowed {
            match &decision.source {
                Some(peer) => self
                    .metrics
                    .denied_peer(&peer.namespace, workload_of(&peer.name)),
                None => self.metrics.denied_peer("none", "none"),
            }
        }
    }

    /// Whether the port is one the pod declares or a policy selecting it names:
    /// only those get their own label value (a port scan must not make 65,000 series).
    fn port_is_labelled(&self, snapshot: &Snapshot, port: u16) -> bool {
        let declared = snapshot
            .index
            .pod(&self.pod)
            .is_some_and(|p| p.ports.iter().any(|cp| cp.port == port));
        declared
            || snapshot
                .index
                .selecting(&self.pod, Direction::Ingress)
                .iter()
                .flat_map(|p| p.ingress.iter().flatten())
                .flat_map(|r| r.ports.iter().flatten())
                .any(|pm| matches!(pm.port, PortSpec::Range(a, b) if a <= port && port <= b && b - a < 64))
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

/// Writes a port number into a small buffer, without allocating.
fn format_port(port: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("other")
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

#[cfg(test)]
mod tests {
    #[test]
    fn ports_format_without_allocating() {
        let mut buf = [0u8; 5];
        assert_eq!(super::format_port(0, &mut buf), "0");
        assert_eq!(super::format_port(80, &mut buf), "80");
        assert_eq!(super::format_port(65535, &mut buf), "65535");
    }
}
