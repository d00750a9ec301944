//! The mesh's connections: inbound, detect a sidecar's mTLS and terminate
//! it (the peer's identity goes into the admission); outbound, to a meshed
//! pod, originate mTLS verifying that the server is that pod. Both relay
//! with a buffered copy (no splice through TLS), and a re-check resets
//! them like any other connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_policy::{Direction, MtlsMode};
use picket_state::control::MeshedPod;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::{io_error_kind, Proxy};
use super::orig_dst::reset;
use super::read_ahead::ReadAhead;
use super::{ClientAddr, Interception, OrigDstAddr};
use crate::enforce::mesh::Transport;
use crate::enforce::registry::Registration;
use crate::enforce::Admitted;
use crate::mesh::detect::{detect, FirstBytes};
use crate::mesh::identity::server_name_for;
use crate::mesh::spares::{SpareKey, Spares};
use crate::mesh::{Mesh, Originated, TlsFailure, DETECT_TIMEOUT, PREFACE, SPARE_WAIT};

/// The most client bytes sent with the preface (those already received).
const FIRST_BYTES: usize = 4096;

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
        // A spare waits here: nothing is admitted or connected before the
        // client's preface.
        let mut tls = tls;
        let mut preface = [0u8; PREFACE.len()];
        match tokio::time::timeout(SPARE_WAIT, tls.read_exact(&mut preface)).await {
            Ok(Ok(_)) if preface == PREFACE => {}
            Ok(Ok(_)) => {
                self.tls_failed(&mesh, Direction::Ingress, "no-preface");
                tracing::info!(client.addr = %client, peer = %identity, "The mTLS client did not begin with the picket/1 preface; reset");
                reset(tls.into_inner().0.into_inner());
                return;
            }
            // The client closed its spare, or failed: nothing was admitted.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!(client.addr = %client, peer = %identity, wait = ?SPARE_WAIT, "An mTLS connection sent no preface in time; closed");
                return;
            }
        }
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

    /// An admitted outbound connection to a meshed pod: take a spare made
    /// for that very pod, or connect and originate mTLS that must reach it;
    /// send the preface; relay.
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
        let key = SpareKey::new(dial.0, &expected);
        let taken = mesh.spares.take(&key, Instant::now());
        let spare = taken.spare.filter(|spare| {
            let open = is_open(spare.get_ref().0.get_ref());
            if !open {
                mesh.metrics.spares.with_label_values(&["dead"]).inc();
            }
            open
        });
        if taken.make {
            self.make_spare(&mesh, key, dial, expected.clone());
        }
        let mut tls = match spare {
            Some(tls) => {
                mesh.metrics.spares.with_label_values(&["taken"]).inc();
                tls
            }
            None => {
                let Some(upstream) = self.connect_upstream(&stream, client, dst, dial).await else {
                    return;
                };
                match originate_tls(&mesh, upstream, &expected, self.limits.connect_timeout).await {
                    Ok(tls) => tls,
                    Err(failed) => {
                        self.tls_failed(&mesh, Direction::Egress, failed.reason);
                        let pod = format!("{}/{}", expected.namespace, expected.name);
                        if failed.reason == "identity-mismatch" {
                            tracing::warn!(dst.addr = %dst, %pod, error = %failed.detail, "The destination's certificate names another workload; reset");
                        } else {
                            tracing::info!(dst.addr = %dst, %pod, reason = failed.reason, error = %failed.detail, "mTLS to the destination pod failed; reset");
                        }
                        reset(stream);
                        if let Some(socket) = failed.socket {
                            reset(socket);
                        }
                        return;
                    }
                }
            }
        };
        mesh.count(tls.get_ref().1, "outbound");
        // The preface goes with the client's first bytes when they are
        // already here: one record and one write, one wake-up at the server.
        let begun = async {
            let mut first = vec![0u8; PREFACE.len() + FIRST_BYTES];
            first[..PREFACE.len()].copy_from_slice(PREFACE);
            let early = match stream.try_read(&mut first[PREFACE.len()..]) {
                Ok(n) => n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(error) => return Err(error),
            };
            tls.write_all(&first[..PREFACE.len() + early]).await?;
            tls.flush().await?;
            Ok(early as u64)
        };
        match begun.await {
            Ok(early) => self.bytes.client_to_server.inc_by(early),
            Err(error) => {
                self.metrics
                    .relay_errors
                    .with_label_values(&[io_error_kind(&error)])
                    .inc();
                tracing::info!(dst.addr = %dst, %error, "The mTLS connection failed before its preface was sent; reset");
                reset(stream);
                return;
            }
        }
        let (stream, tls) = self
            .relay_buffered(stream, tls, &registration, client)
            .await;
        if let Some((stream, tls)) = stream.zip(tls) {
            reset(stream);
            reset(tls.into_inner().0.into_inner());
        }
    }

    /// Makes a spare for `key` in the background, and closes it when its
    /// time is up unless a client connection took it.
    fn make_spare(&self, mesh: &Arc<Mesh>, key: SpareKey, dial: OrigDstAddr, expected: MeshedPod) {
        if self.interception != Interception::Redirect {
            // Outbound connections are never tproxied; should one be, it
            // would connect as its client, which a spare has not.
            mesh.spares.abandon(&key);
            return;
        }
        let mesh = mesh.clone();
        let timeout = self.limits.connect_timeout;
        tokio::spawn(async move {
            let made = async {
                let upstream = tokio::time::timeout(timeout, TcpStream::connect(dial.0))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                let _ = upstream.set_nodelay(true);
                originate_tls(&mesh, upstream, &expected, timeout)
                    .await
                    .map_err(|failed| {
                        mesh.failed(Direction::Egress, failed.reason);
                        failed.detail
                    })
            };
            let tls = match made.await {
                Ok(tls) => tls,
                Err(error) => {
                    mesh.spares.abandon(&key);
                    mesh.metrics.spares.with_label_values(&["failed"]).inc();
                    tracing::debug!(dial.addr = %dial, %error, "No spare mTLS connection");
                    return;
                }
            };
            mesh.metrics.spares.with_label_values(&["made"]).inc();
            let id = mesh.spares.put(key.clone(), tls, Instant::now());
            tokio::time::sleep(Spares::<Originated>::IDLE).await;
            if mesh.spares.expire(&key, id).is_some() {
                // Dropped: closed (a FIN), and the server's wait ends.
                mesh.metrics.spares.with_label_values(&["expired"]).inc();
            }
        });
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
            moved = super::buffered::copy_bidirectional(&mut a, &mut b) => Some(moved),
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
        mesh.failed(direction, reason);
    }
}

/// Why originating mTLS failed: the metric's reason, what happened, and
/// the socket to reset when there is one.
struct Failed {
    reason: &'static str,
    detail: String,
    socket: Option<TcpStream>,
}

/// Originates mTLS over `upstream` to the pod `expected`: the handshake
/// (whose verifier checks the chain and the UID), then the namespace and
/// service account the verifier leaves.
async fn originate_tls(
    mesh: &Mesh,
    upstream: TcpStream,
    expected: &MeshedPod,
    timeout: Duration,
) -> Result<Originated, Failed> {
    let Some(name) = server_name_for(&expected.uid) else {
        return Err(Failed {
            reason: "no-identity",
            detail: format!(
                "the destination pod's UID {:?} cannot name a TLS peer",
                expected.uid
            ),
            socket: Some(upstream),
        });
    };
    let connector = tokio_rustls::TlsConnector::from(mesh.client.clone());
    let handshake = tokio::time::timeout(
        timeout,
        connector
            .connect(name, ReadAhead::new(upstream))
            .into_fallible(),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err((error, upstream))) => {
            return Err(Failed {
                reason: TlsFailure::of(&error).label(),
                detail: error.to_string(),
                socket: Some(upstream.into_inner()),
            })
        }
        Err(_) => {
            return Err(Failed {
                reason: "timeout",
                detail: format!("no handshake within {timeout:?}"),
                socket: None,
            })
        }
    };
    let named = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| mesh.credentials.identity_of(leaf).ok());
    if !named.as_ref().is_some_and(|id| {
        id.namespace == expected.namespace && id.service_account == expected.service_account
    }) {
        return Err(Failed {
            reason: "identity-mismatch",
            detail: format!("expected {expected:?}, the certificate names {named:?}"),
            socket: Some(tls.into_inner().0.into_inner()),
        });
    }
    Ok(tls)
}

/// Whether a kept connection is still open: a peek finds bytes (the
/// server's ticket) or none yet, not the end of the stream or an error.
fn is_open(socket: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(socket).peek(&mut byte) {
        Ok(n) => n > 0,
        Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
    }
}
