//! mTLS between sidecars, with identity bound to the pod.
//!
//! - `identity`: who a mesh certificate names (SPIFFE ID and pod UID).
//! - `credentials`: this sidecar's certificate, key and anchors, and the
//!   TLS configurations (inbound termination, outbound origination).
//! - `certify`: the identity manager (key in memory, CSR, renewal).
//! - `detect`: is an inbound connection a sidecar's mTLS (ALPN `picket/1`)?
//! - `spares`: connections to meshed pods handshaken ahead.
//!
//! The protocol `picket/1`: TLS 1.3 with both certificates, then the
//! client's [`PREFACE`], then the client's bytes and the app's, as they
//! come. The server connects to its app only once the preface arrived, so
//! a client sidecar may handshake ahead ([`spares`]) and send the preface
//! when a client connection takes the spare.
//!
//! What a verified identity means for a decision (the peer pod must be the
//! one the certificate names, and own the source address) is the
//! enforcer's (`enforce::mesh`).

pub mod certify;
pub mod credentials;
pub mod detect;
pub mod identity;
pub mod spares;

use std::sync::Arc;
use std::time::Duration;

pub use credentials::{Credentials, TlsFailure};
pub use identity::MeshIdentity;
use picket_policy::MtlsMode;

/// The ALPN protocol of sidecar-to-sidecar mTLS.
pub const ALPN: &[u8] = b"picket/1";

/// How long an inbound connection may take to show whether it is mTLS.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's first bytes after the handshake: a client connection
/// begins here (until then the connection is a spare, and nothing is
/// admitted or connected).
pub const PREFACE: &[u8] = b"picket/1\n";

/// How long the server waits for the preface after a handshake; longer
/// than a client keeps a spare ([`spares::Spares::IDLE`]), so a spare the
/// client still holds is still open at the server.
pub const SPARE_WAIT: Duration = Duration::from_secs(15);

/// An outbound mTLS connection, originated by this sidecar.
pub type Originated =
    tokio_rustls::client::TlsStream<crate::net::read_ahead::ReadAhead<tokio::net::TcpStream>>;

/// This sidecar's mesh settings.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// The mode the sidecar was started with (`--mtls`); the pod's own in the
    /// state may only make it stricter.
    pub mode: MtlsMode,
    /// The credentials (certified by [`certify::run`]).
    pub credentials: Arc<Credentials>,
    /// Inbound ports of server-first protocols (the app speaks first): no
    /// bytes are awaited; the source decides (a pod that originates mTLS
    /// gets a handshake, any other source is plaintext).
    pub skip_detect_ports: Vec<u16>,
    /// The inbound configuration.
    pub server: Arc<rustls::ServerConfig>,
    /// The outbound configuration.
    pub client: Arc<rustls::ClientConfig>,
    /// Metrics.
    pub metrics: MeshMetrics,
    /// Outbound connections handshaken ahead.
    pub spares: Arc<spares::Spares<Originated>>,
}

/// What mTLS counts.
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    /// Handshakes that failed, by direction and reason.
    pub tls_failures: prometheus::IntCounterVec,
    /// Connections relayed over mTLS, by direction.
    pub connections: prometheus::IntCounterVec,
    /// Of those, the ones whose handshake resumed a session, by direction.
    pub resumed: prometheus::IntCounterVec,
    /// Spare outbound connections, by event.
    pub spares: prometheus::IntCounterVec,
}

// === impl MeshMetrics ===

impl MeshMetrics {
    /// Registers the metrics.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let c = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)
                .expect("valid metric");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        Self {
            tls_failures: vec(
                "picket_tls_failures_total",
                "mTLS handshakes that failed, by direction (inbound: terminated here; outbound: originated here) and reason (no-client-certificate, unknown-issuer, expired, wrong-trust-domain, identity-mismatch, no-identity, not-certified, no-preface, timeout, other)",
                &["direction", "reason"],
            ),
            connections: vec(
                "picket_mtls_connections_total",
                "Connections relayed over mTLS between sidecars, by direction",
                &["direction"],
            ),
            resumed: vec(
                "picket_mtls_resumed_total",
                "mTLS connections whose handshake resumed a session (no certificate signatures), by direction; the rest of picket_mtls_connections_total made a full handshake",
                &["direction"],
            ),
            spares: vec(
                "picket_mtls_spares_total",
                "Outbound mTLS connections handshaken ahead, by event: made, taken (a client connection skipped the handshake), expired (kept unused for its time), failed (the handshake or its verification), dead (closed by the server when taken)",
                &["event"],
            ),
        }
    }
}

// === impl Mesh ===

impl Mesh {
    /// Counts a failed handshake (or its verification).
    pub fn failed(&self, direction: picket_policy::Direction, reason: &str) {
        let direction = match direction {
            picket_policy::Direction::Ingress => "inbound",
            picket_policy::Direction::Egress => "outbound",
        };
        self.metrics
            .tls_failures
            .with_label_values(&[direction, reason])
            .inc();
    }

    /// Counts a connection about to be relayed over mTLS.
    pub fn count(&self, tls: &rustls::CommonState, direction: &str) {
        self.metrics
            .connections
            .with_label_values(&[direction])
            .inc();
        if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.metrics.resumed.with_label_values(&[direction]).inc();
        }
    }
}

impl Mesh {
    /// Mesh settings over `credentials`.
    pub fn new(
        mode: MtlsMode,
        credentials: Arc<Credentials>,
        skip_detect_ports: Vec<u16>,
        metrics: MeshMetrics,
    ) -> Self {
        Self {
            metrics,
            mode,
            server: credentials.server_config(),
            client: credentials.client_config(),
            credentials,
            skip_detect_ports,
            spares: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests;
