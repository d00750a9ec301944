//! The mesh's connections: inbound, detect a sidecar's mTLS and terminate
//! it (the peer's identity goes into the admission); outbound, to a meshed
//! pod, originate mTLS verifying that the server is that pod. Both relay
//! with a buffered copy (no splice through TLS), and a re-check resets
//! them like any other connection.

use std::sync::Arc;
use std::time::Instant;

use picket_policy::{Direction, MtlsMode};
use picket_state::control::MeshedPod;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::conn::{io_error_kind, Proxy};
use super::orig_dst::reset;
use super::read_ahead::ReadAhead;
use super::{ClientAddr, OrigDstAddr};
use crate::enforce::mesh::Transport;
use crate::enforce::registry::Registration;
use crate::enforce::Admitted;
use crate::mesh::detect::{detect, FirstBytes};
use crate::mesh::identity::server_name_for;
use crate::mesh::{Mesh, TlsFailure, DETECT_TIMEOUT};

/// The copy buffer of each direction of a TLS relay.
const TLS_COPY_BUFFER: usize = 16 * 1024;

// === impl Proxy: mesh ===

impl Proxy {
    /// The mesh settings, when this pod terminates mTLS now (its mode is
    /// not off).
    pub(super) fn terminating(&self) -> Option<Arc<Mesh>> {
        let mesh = self.mesh.as_ref()?;
        let mode = match self.enforcer.snapshots.borrow().as_ref() {
            Some(snapshot) => self.enforcer.own_mtls(snapshot),
            None => mesh.mode,
        };
        (mode != MtlsMode::Off).then(|| mesh.clone())
    }

    /// An inbound connection to a pod that terminates mTLS: detected,
    /// terminated or passed as plaintext, admitted, relayed.
    pub(super) async fn handle_meshed(
        &self,
        stream: std::net::TcpStream,
        client: ClientAddr,
        dst: OrigDstAddr,
        mesh: Arc<Mesh>,
    ) {
        let Ok(stream) = TcpStream::from_std(stream) else {
            self.metrics
                .relay_errors
                .with_label_values(&["register"])
                .inc();
            return;
        };
        let mtls = if mesh.skip_detect_ports.contains(&dst.0.port()) {
            // A server-first protocol: nothing to wait for; the source says.
            self.enforcer.originates_mtls(client.0.ip()).await
        } else {
            match detect(&stream, DETECT_TIMEOUT).await {
                Some(first) => first == FirstBytes::Mesh,
                None => {
                    self.metrics
                        .refused_of(Direction::Ingress)
                        .with_label_values(&["detect-timeout"])
                        .inc();
                    tracing::info!(client.addr = %client, timeout = ?DETECT_TIMEOUT, "Nothing to tell mTLS from plaintext within the detection timeout; reset");
                    reset(stream);
                    return;
                }
            }
        };
        if !mtls {
            let Ok(admitted) = self
                .enforcer
                .admit(Direction::Ingress, client, dst, Transport::Plaintext)
                .await
            else {
                reset(stream);
                return;
            };
            return self.relay_plain(stream, client, dst, admitted).await;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(mesh.server.clone());
        let handshake = tokio::time::timeout(
            DETECT_TIMEOUT,
            acceptor.accept(ReadAhead::new(stream)).into_fallible(),
        )
        .await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err((error, stream))) => {
                let failure = TlsFailure::of(&error);
                self.tls_failed(&mesh, Direction::Ingress, failure.label());
                tracing::info!(client.addr = %client, reason = failure.label(), %error, "mTLS handshake failed; reset");
                reset(stream.into_inner());
                return;
            }
            Err(_) => {
                self.tls_failed(&mesh, Direction::Ingress, "timeout");
                tracing::info!(client.addr = %client, "mTLS handshake timed out; closed");
                return;
            }
        };
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| mesh.credentials.identity_of(leaf));
        let Some(Ok(identity)) = identity else {
            self.tls_failed(&mesh, Direction::Ingress, "no-identity");
            reset(tls.into_inner().0.into_inner());
            return;
        };
        tracing::debug!(client.addr = %client, peer = %identity, "mTLS peer verified");
        let transport = Transport::Mtls(Arc::new(identity));
        let Ok(Admitted { registration, dial }) = self
            .enforcer
            .admit(Direction::Ingress, client, dst, transport)
            .await
        else {
            reset(tls.into_inner().0.into_inner());
            return;
        };
        let Some(upstream) = self
            .connect_upstream(tls.get_ref().0.get_ref(), client, dst, dial)
            .await
        else {
            return;
        };
        mesh.count(tls.get_ref().1, "inbound");
        let (tls, upstream) = self
            .relay_buffered(tls, upstream, &registration, client)
            .await;
        if let Some((tls, upstream)) = tls.zip(upstream) {
            reset(tls.into_inner().0.into_inner());
            reset(upstream);
        }
    }

    /// An admitted outbound connection to a meshed pod: connect, originate
    /// mTLS that must reach that very pod, relay.
    pub(super) async fn originate(
        &self,
        stream: TcpStream,
        client: ClientAddr,
        dst: OrigDstAddr,
        Admitted { registration, dial }: Admitted,
        expected: MeshedPod,
    ) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let Some(name) = server_name_for(&expected.uid) else {
            self.tls_failed(&mesh, Direction::Egress, "no-identity");
            tracing::warn!(dst.addr = %dst, uid = %expected.uid, "The destination pod's UID cannot name a TLS peer; reset");
            reset(stream);
            return;
        };
        let Some(upstream) = self.connect_upstream(&stream, client, dst, dial).await else {
            return;
        };
        let connector = tokio_rustls::TlsConnector::from(mesh.client.clone());
        let handshake = tokio::time::timeout(
            self.limits.connect_timeout,
            connector
                .connect(name, ReadAhead::new(upstream))
                .into_fallible(),
        )
        .await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err((error, upstream))) => {
                let failure = TlsFailure::of(&error);
                self.tls_failed(&mesh, Direction::Egress, failure.label());
                tracing::info!(dst.addr = %dst, pod = %format!("{}/{}", expected.namespace, expected.name), reason = failure.label(), %error, "mTLS to the destination pod failed; reset");
                reset(stream);
                reset(upstream.into_inner());
                return;
            }
            Err(_) => {
                self.tls_failed(&mesh, Direction::Egress, "timeout");
                reset(stream);
                return;
            }
        };
        // The verifier checked the UID; the namespace and service account
        // must be the pod's too.
        let named = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| mesh.credentials.identity_of(leaf).ok());
        if !named.as_ref().is_some_and(|id| {
            id.namespace == expected.namespace && id.service_account == expected.service_account
        }) {
            self.tls_failed(&mesh, Direction::Egress, "identity-mismatch");
            tracing::warn!(dst.addr = %dst, expected = ?expected, presented = ?named, "The destination's certificate names another workload; reset");
            reset(stream);
            reset(tls.into_inner().0.into_inner());
            return;
        }
        mesh.count(tls.get_ref().1, "outbound");
        let (stream, tls) = self
            .relay_buffered(stream, tls, &registration, client)
            .await;
        if let Some((stream, tls)) = stream.zip(tls) {
            reset(stream);
            reset(tls.into_inner().0.into_inner());
        }
    }

    /// Copies both ways until both ends are done, or a re-check kills the
    /// connection. Returns the two ends when they must be reset (a kill, an
    /// error); none when the connection ended well.
    async fn relay_buffered<A, B>(
        &self,
        mut a: A,
        mut b: B,
        registration: &Registration,
        client: ClientAddr,
    ) -> (Option<A>, Option<B>)
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let opened = Instant::now();
        let open = self.metrics.open_of(self.direction);
        open.inc();
        let outcome = tokio::select! {
            biased;
            moved = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, TLS_COPY_BUFFER, TLS_COPY_BUFFER) => Some(moved),
            () = registration.killed() => None,
        };
        open.dec();
        self.metrics
            .duration
            .observe(opened.elapsed().as_secs_f64());
        match outcome {
            Some(Ok((up, down))) => {
                self.bytes.client_to_server.inc_by(up);
                self.bytes.server_to_client.inc_by(down);
                tracing::debug!(client.addr = %client, up, down, "mTLS connection closed");
                (None, None)
            }
            Some(Err(error)) => {
                self.metrics
                    .relay_errors
                    .with_label_values(&[io_error_kind(&error)])
                    .inc();
                tracing::debug!(client.addr = %client, %error, "Relay error; reset both sides");
                (Some(a), Some(b))
            }
            None => {
                tracing::debug!(client.addr = %client, "Resetting an mTLS connection no longer allowed");
                (Some(a), Some(b))
            }
        }
    }

    fn tls_failed(&self, mesh: &Mesh, direction: Direction, reason: &str) {
        let direction = match direction {
            Direction::Ingress => "inbound",
            Direction::Egress => "outbound",
        };
        mesh.metrics
            .tls_failures
            .with_label_values(&[direction, reason])
            .inc();
    }
}
