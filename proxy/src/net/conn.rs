//! One connection, inbound (redirected from PREROUTING: a peer dials this
//! pod) or outbound (captured in OUTPUT: this pod dials out): original
//! destination, loop guard, admission by the enforcer (registration and
//! decision), then relay or reset; a re-check can reset it at any time.
//! Both directions share every step but the guards and the decision.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_policy::Direction;
use tokio::net::TcpStream;

use super::orig_dst::{orig_dst, reset};
use super::relay::{relay, RelayCounters, RelayError};
use super::transparent::connect_as_client;
use super::{ClientAddr, Interception, OrigDstAddr};
use crate::enforce::mesh::Transport;
use crate::enforce::{Admitted, Enforcer};
use crate::mesh::Mesh;
use crate::metrics::ProxyMetrics;

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
}

/// Everything the connections of one direction need, shared by all of them.
#[derive(Debug)]
pub struct Proxy {
    /// `Ingress`: inbound connections; `Egress`: captured outbound ones.
    pub direction: Direction,
    /// How these connections reached the proxy (outbound: always redirect).
    pub interception: Interception,
    /// Admission and teardown (the policy side of every connection).
    pub enforcer: Arc<Enforcer>,
    /// The proxy's own ports: a connection to them is reset, never dialled.
    pub own_ports: Vec<u16>,
    /// Limits.
    pub limits: Limits,
    /// Connections being handled.
    pub active: AtomicUsize,
    /// Metrics.
    pub metrics: Arc<ProxyMetrics>,
    /// Byte counters handed to every relay.
    pub bytes: RelayCounters,
    /// mTLS between sidecars (none: off).
    pub mesh: Option<Arc<Mesh>>,
}

// === impl Proxy ===

impl Proxy {
    /// Handles one accepted connection to its end. The socket comes
    /// unregistered: it joins the runtime only once admitted.
    pub async fn handle(self: Arc<Self>, stream: std::net::TcpStream, client: ClientAddr) {
        let _active = ActiveGuard::new(&self.active);
        let dst = match self.orig_dst(&stream, client) {
            Ok(dst) => dst,
            Err(error) => {
                self.refused("no-original-destination");
                tracing::warn!(client.addr = %client, %error, "No original destination; reset");
                reset(stream);
                return;
            }
        };
        if self.direction == Direction::Ingress && self.own_ports.contains(&dst.0.port()) {
            self.refused("own-port");
            tracing::debug!(client.addr = %client, dst.addr = %dst, "Connection to the proxy's own port; reset");
            reset(stream);
            return;
        }
        if self.direction == Direction::Ingress {
            if let Some(mesh) = self.terminating() {
                // Boxed: the mesh path's state stays out of the plain path's task.
                return Box::pin(self.handle_meshed(stream, client, dst, mesh)).await;
            }
        }
        // Boxed: the admission's state is large and lives only until the
        // decision, so the task that stays for the connection's life is small.
        let Ok(admitted) =
            Box::pin(
                self.enforcer
                    .admit(self.direction, client, dst, Transport::Plaintext),
            )
            .await
        else {
            reset(stream);
            return;
        };

        // Registered before the connect: the wake-up that reports the
        // connect done reports the client's first bytes too.
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(error) => {
                self.metrics
                    .relay_errors
                    .with_label_values(&["register"])
                    .inc();
                tracing::warn!(client.addr = %client, %error, "Cannot register the connection with the runtime; closed (the socket went with the failed registration)");
                return;
            }
        };
        if self.direction == Direction::Egress {
            if let Some(mesh) = &self.mesh {
                if let Some(expected) =
                    Box::pin(self.enforcer.meshed_destination(mesh, admitted.dial)).await
                {
                    return Box::pin(self.originate(stream, client, dst, admitted, expected)).await;
                }
            }
        }
        self.relay_plain(stream, client, dst, admitted).await;
    }

    /// Connects and relays an admitted plaintext connection, spliced.
    pub(super) async fn relay_plain(
        &self,
        stream: TcpStream,
        client: ClientAddr,
        dst: OrigDstAddr,
        Admitted { registration, dial }: Admitted,
    ) {
        // Boxed: the connect's state lives only until it is done.
        let Some(upstream) = Box::pin(self.connect_upstream(&stream, client, dst, dial)).await
        else {
            return;
        };
        let client_stream = stream;
        let opened = Instant::now();
        let open = self.metrics.open_of(self.direction);
        open.inc();
        // Biased: no random branch order drawn on every wake-up; the relay
        // first, and the kill is seen on the same wake-up anyway.
        let outcome = tokio::select! {
            biased;
            result = relay(&client_stream, &upstream, self.limits.idle_timeout, &self.bytes) => Some(result),
            () = registration.killed() => None,
        };
        open.dec();
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
                    RelayError::Io { source, .. } => io_error_kind(source),
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

    /// Connects to where an admitted connection goes, within the connect
    /// timeout; on failure, counts and logs it and resets `stream`.
    pub(super) async fn connect_upstream(
        &self,
        stream: &TcpStream,
        client: ClientAddr,
        dst: OrigDstAddr,
        dial: OrigDstAddr,
    ) -> Option<TcpStream> {
        match tokio::time::timeout(self.limits.connect_timeout, self.connect(client, dial)).await {
            Ok(Ok(upstream)) => {
                // The accepted socket inherits TCP_NODELAY from the listener.
                let _ = upstream.set_nodelay(true);
                return Some(upstream);
            }
            Ok(Err(error)) => {
                let kind = if error.kind() == std::io::ErrorKind::ConnectionRefused {
                    "connect-refused"
                } else {
                    "connect-other"
                };
                self.metrics.relay_errors.with_label_values(&[kind]).inc();
                tracing::info!(direction = ?self.direction, dst.addr = %dst, dial.addr = %dial, %error, "Connect failed; reset");
            }
            Err(_) => {
                self.metrics
                    .relay_errors
                    .with_label_values(&["connect-timeout"])
                    .inc();
                tracing::info!(direction = ?self.direction, dst.addr = %dst, timeout = ?self.limits.connect_timeout, "Connect timed out; reset");
            }
        }
        // The caller drops the client's socket: a reset.
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        None
    }

    /// Where the client meant to connect: SO_ORIGINAL_DST after REDIRECT,
    /// the accepted socket's own address after TPROXY (nothing was rewritten).
    fn orig_dst(
        &self,
        stream: &std::net::TcpStream,
        client: ClientAddr,
    ) -> std::io::Result<OrigDstAddr> {
        match self.interception {
            Interception::Redirect => orig_dst(stream, client),
            Interception::Tproxy { .. } => stream.local_addr().map(OrigDstAddr),
        }
    }

    /// Connects to where the connection goes: in tproxy mode from the
    /// client's own address, so the app sees it.
    async fn connect(&self, client: ClientAddr, dial: OrigDstAddr) -> std::io::Result<TcpStream> {
        match self.interception {
            Interception::Redirect => TcpStream::connect(dial.0).await,
            Interception::Tproxy { mark } => connect_as_client(client, dial, mark).await,
        }
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .refused_of(self.direction)
            .with_label_values(&[reason])
            .inc();
    }
}

/// A relay error's label: the peer reset, or anything else.
pub(super) fn io_error_kind(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset",
        _ => "other",
    }
}

pub(super) struct ActiveGuard<'a>(&'a AtomicUsize);

impl<'a> ActiveGuard<'a> {
    /// Counts one more in `counter` until dropped.
    pub(super) fn new(counter: &'a AtomicUsize) -> Self {
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
    use super::*;

    /// The most a connection's task may take (the spawned `handle` future,
    /// relay included), as ztunnel asserts its futures' sizes: every live
    /// connection holds one, so growth shows here first. Debug build
    /// (tests): 728 bytes measured (2,760 when the relay was two async
    /// halves of 2,240 bytes and the admission, 1,120, was not boxed).
    const TASK_BYTES: usize = 1024;

    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let (enforcer, _writer) = crate::enforce::tests::enforcer(Duration::ZERO);
        let metrics = enforcer.metrics.clone();
        let proxy = Arc::new(Proxy {
            direction: Direction::Ingress,
            interception: Interception::Redirect,
            enforcer,
            own_ports: vec![],
            limits: Limits {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: None,
                max_connections: 1,
            },
            active: AtomicUsize::new(0),
            bytes: RelayCounters {
                client_to_server: metrics.bytes.with_label_values(&["in"]),
                server_to_client: metrics.bytes.with_label_values(&["out"]),
            },
            metrics,
            mesh: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, peer) = accepted.unwrap();
        let task = proxy.handle(stream.into_std().unwrap(), ClientAddr(peer));
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= TASK_BYTES,
            "a connection's task is {size} bytes, over {TASK_BYTES}"
        );
    }
}
