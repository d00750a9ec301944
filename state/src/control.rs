//! The control-plane stream: `picket-control` sends this pod's view, in
//! full on every (re)connect, then as deltas; each message is applied whole
//! and committed, then acknowledged.
//!
//! Fail closed and keep last: before the first full view nothing is
//! published (connections wait, then reset); once one is, it is kept
//! through any outage, with no verdict change, while the source reconnects
//! with backoff and jitter; a reconnect's full view replaces it. A message
//! that does not decode ends the stream and changes nothing.
//!
//! The data plane asks, through a [`Resolver`], whether an address the view
//! does not know is a pod's: a pod outside the view is decided as an
//! address at once, instead of waiting for a Pod event that never comes.
//!
//! I/O: TCP, TLS (the server's certificate verified against the configured
//! CA, for the configured name), HTTP/2, gRPC.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use picket_api::convert::{decode, ip_to_wire, Removed, SideEntry, Update};
pub use picket_api::convert::{MeshedPod, Resolution};
use picket_api::v1;
use picket_api::v1::control_client::ControlClient;
use picket_policy::{Direction, ObjectKey};
use tokio::sync::{mpsc, oneshot};

use crate::kind::{Kind, Object, ObjectRef};
use crate::source::Source;
use crate::writer::StateWriter;

/// The first wait before a reconnect; it doubles up to the configured cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// HTTP/2 flow-control windows: a view is small, so a sidecar that stops
/// reading is felt by the control plane within 64 KiB, not megabytes.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// Where the control plane is and how to trust it.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// `host:port` to connect to.
    pub addr: String,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// The CA certificates (PEM) the server's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// The projected service-account token (audience `picket`), read at
    /// every connect (the kubelet rotates it).
    pub token_file: PathBuf,
    /// The longest wait between reconnects.
    pub max_backoff: Duration,
    /// Ask for a view with outbound parts (the pod's outbound connections
    /// are captured): a view without them is refused.
    pub outbound: bool,
}

/// Metrics of the stream.
#[derive(Clone, Debug)]
pub struct ControlMetrics {
    /// 1 while a stream is open.
    pub connected: prometheus::IntGauge,
    /// Full views received after the first (reconnects).
    pub resyncs: prometheus::IntCounter,
    /// Unix time of the last commit applied.
    pub last_commit: prometheus::Gauge,
}

/// The control-plane source.
#[derive(Debug)]
pub struct ControlSource {
    config: ControlConfig,
    metrics: ControlMetrics,
    questions: mpsc::Receiver<Question>,
}

/// Asks the control plane whether an address is a pod's (the data plane's
/// handle; see [`ControlSource::new`]).
#[derive(Clone, Debug)]
pub struct Resolver(mpsc::Sender<Question>);

/// An address asked about, and where the answer goes.
type Question = (IpAddr, oneshot::Sender<Resolution>);

/// The most questions waiting to be sent.
const MAX_QUESTIONS: usize = 1024;

// === impl Resolver ===

impl Resolver {
    /// Whether some pod of the cluster holds `ip`, once the view holds every
    /// change that pod makes to it. `None`: no answer (not connected, too
    /// many questions, the stream ended).
    pub async fn is_pod(&self, ip: IpAddr) -> Option<bool> {
        self.resolve(ip).await.map(|r| r.pod)
    }

    /// The control plane's answer about `ip`: whether a pod holds it, and
    /// whether that pod is meshed (and who its certificate must name).
    /// `None`: no answer (as for [`Self::is_pod`]).
    pub async fn resolve(&self, ip: IpAddr) -> Option<Resolution> {
        let (tx, rx) = oneshot::channel();
        self.0.try_send((ip, tx)).ok()?;
        rx.await.ok()
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The token file could not be read.
    #[error("cannot read the token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TCP, TLS or HTTP/2 failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server answered with a gRPC status.
    #[error("control plane: {0}")]
    Status(#[from] tonic::Status),
    /// A message did not decode; nothing of it was applied.
    #[error("undecodable message: {0}")]
    Invalid(#[from] picket_api::convert::InvalidMessage),
    /// Outbound parts were asked for, and the full view came without.
    #[error("the control plane sent a view without outbound parts, which this sidecar (outbound capture on) needs: upgrade picket-control")]
    NoOutbound,
    /// The server ended the stream.
    #[error("the control plane ended the stream")]
    Ended,
}

// === impl ControlMetrics ===

impl ControlMetrics {
    /// Registers the metrics.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let metrics = Self {
            connected: prometheus::IntGauge::new(
                "picket_control_connected",
                "1 while the stream from the control plane is open",
            )
            .expect("valid"),
            resyncs: prometheus::IntCounter::new(
                "picket_control_resyncs_total",
                "Full views received after the first (reconnects)",
            )
            .expect("valid"),
            last_commit: prometheus::Gauge::new(
                "picket_control_last_commit_timestamp_seconds",
                "When the last view change from the control plane was applied (Unix time)",
            )
            .expect("valid"),
        };
        let _ = registry.register(Box::new(metrics.connected.clone()));
        let _ = registry.register(Box::new(metrics.resyncs.clone()));
        let _ = registry.register(Box::new(metrics.last_commit.clone()));
        metrics
    }
}

// === impl ControlSource ===

impl ControlSource {
    /// A source streaming from the control plane, and the handle that asks
    /// it about addresses the view does not know.
    pub fn new(config: ControlConfig, metrics: ControlMetrics) -> (Self, Resolver) {
        let (tx, questions) = mpsc::channel(MAX_QUESTIONS);
        (
            Self {
                config,
                metrics,
                questions,
            },
            Resolver(tx),
        )
    }

    /// One stream, until it ends: why it did, and whether it delivered a
    /// full view. `synced` tells whether a full view has been applied
    /// before (so the next is a resync).
    async fn stream(&mut self, writer: &mut StateWriter, synced: &mut bool) -> (StreamError, bool) {
        let (mut stream, requests) = match open(&self.config).await {
            Ok(opened) => opened,
            Err(error) => return (error, false),
        };
        let mut viewed = false;
        let mut asked: HashMap<IpAddr, Vec<oneshot::Sender<Resolution>>> = HashMap::new();
        self.metrics.connected.set(1);
        let end = loop {
            let message = tokio::select! {
                message = stream.message() => message,
                Some((ip, answer)) = self.questions.recv() => {
                    let waiting = asked.entry(ip).or_default();
                    let sent = !waiting.is_empty()
                        || requests
                            .try_send(v1::WatchRequest {
                                kind: Some(v1::watch_request::Kind::Resolve(v1::Resolve { ip: ip_to_wire(&ip) })),
                            })
                            .is_ok();
                    // Not sent (the queue is full): no answer, the asker waits out its bound.
                    if sent {
                        waiting.push(answer);
                    }
                    continue;
                }
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => break StreamError::Ended,
                Err(status) => break status.into(),
            };
            let mut update = match decode(&message) {
                Ok(update) => update,
                Err(e) => break e.into(),
            };
            if update.full && self.config.outbound && !update.outbound {
                break StreamError::NoOutbound;
            }
            if update.full {
                if *synced {
                    self.metrics.resyncs.inc();
                }
                *synced = true;
                viewed = true;
            }
            let generation = update.generation;
            let more = update.more;
            let resolved = std::mem::take(&mut update.resolved);
            apply(writer, update);
            // A part of a commit: the rest follows before anything is published.
            if more {
                continue;
            }
            writer.commit_if_complete();
            self.metrics.last_commit.set(unix_now());
            // Answered after the commit: the view already holds the pod.
            for (ip, resolution) in resolved {
                for answer in asked.remove(&ip).unwrap_or_default() {
                    let _ = answer.send(resolution.clone());
                }
            }
            let _ = requests.try_send(v1::WatchRequest {
                kind: Some(v1::watch_request::Kind::Ack(v1::Ack { generation })),
            });
        };
        self.metrics.connected.set(0);
        (end, viewed)
    }
}

impl Source for ControlSource {
    fn name(&self) -> &'static str {
        "control"
    }

    async fn run(mut self, mut writer: StateWriter) {
        let mut synced = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (end, viewed) = self.stream(&mut writer, &mut synced).await;
            match end {
                StreamError::Ended => {
                    tracing::info!(
                        "The control plane ended the stream; reconnecting (keeping the last view)"
                    );
                }
                error => {
                    tracing::warn!(%error, "Control-plane stream failed; reconnecting (keeping the last view)");
                }
            }
            // A stream that delivered a full view was healthy: start over.
            if viewed {
                backoff = FIRST_BACKOFF;
            }
            tokio::time::sleep(picket_common::jitter::full(backoff)).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }
}

/// Applies one decoded message to the writer: a full view replaces every
/// kind and every compiled entry; deltas apply and delete objects, then set
/// entries (a pod's entry goes with the pod).
pub fn apply(writer: &mut StateWriter, update: Update) {
    if update.full {
        writer.reset_sides(update.outbound);
        if update.cluster_wide {
            writer.decide_sides_from_policies();
        }
        writer.replace_all(
            Kind::ClusterPolicy,
            update
                .cluster_policies
                .into_iter()
                .map(Object::ClusterPolicy)
                .collect(),
        );
        writer.replace_all(
            Kind::Node,
            update.nodes.into_iter().map(Object::Node).collect(),
        );
        if update.outbound {
            writer.replace_all(
                Kind::Service,
                update.services.into_iter().map(Object::Service).collect(),
            );
            writer.replace_all(
                Kind::EndpointSlice,
                update
                    .slices
                    .into_iter()
                    .map(Object::EndpointSlice)
                    .collect(),
            );
        }
        writer.replace_all(
            Kind::Namespace,
            update
                .namespaces
                .into_iter()
                .map(Object::Namespace)
                .collect(),
        );
        writer.replace_all(
            Kind::Pod,
            update.pods.into_iter().map(Object::Pod).collect(),
        );
        writer.replace_all(
            Kind::Policy,
            update.policies.into_iter().map(Object::Policy).collect(),
        );
    } else {
        for ns in update.namespaces {
            writer.apply(Object::Namespace(ns));
        }
        for pod in update.pods {
            writer.apply(Object::Pod(pod));
        }
        for policy in update.policies {
            writer.apply(Object::Policy(policy));
        }
        for service in update.services {
            writer.apply(Object::Service(service));
        }
        for slice in update.slices {
            writer.apply(Object::EndpointSlice(slice));
        }
        for policy in update.cluster_policies {
            writer.apply(Object::ClusterPolicy(policy));
        }
        for node in update.nodes {
            writer.apply(Object::Node(node));
        }
    }
    for removed in update.removed {
        let (kind, key) = match removed {
            Removed::Namespace(name) => (Kind::Namespace, ObjectKey::new("", &name)),
            Removed::Pod(key) => (Kind::Pod, key),
            Removed::Policy(key) => (Kind::Policy, key),
            Removed::Service(key) => (Kind::Service, key),
            Removed::EndpointSlice(key) => (Kind::EndpointSlice, key),
            Removed::ClusterPolicy(name) => (Kind::ClusterPolicy, ObjectKey::new("", &name)),
            Removed::Node(name) => (Kind::Node, ObjectKey::new("", &name)),
        };
        writer.delete(&ObjectRef { kind, key });
    }
    // A cluster-wide view decides other pods' sides from their policies:
    // a compiled entry would turn it back into a compact one, which it is
    // not (the control plane sends none; one that did is ignored).
    if writer.index().egress_toward_me().is_none()
        && !(update.egress.is_empty() && update.ingress.is_empty())
    {
        tracing::error!(
            "The control plane sent compiled sides to a cluster-wide view; ignoring them"
        );
        return;
    }
    // After the pods: a pod's entry goes with it.
    let entries = (update.egress.into_iter().map(|e| (Direction::Egress, e)))
        .chain(update.ingress.into_iter().map(|e| (Direction::Ingress, e)));
    for (direction, entry) in entries {
        match entry {
            SideEntry::Pod(key, side) => writer.set_pod_side(direction, key, side),
            SideEntry::Addresses(ips, claimants) => {
                let claimants: Arc<[Arc<picket_policy::CompiledSide>]> =
                    claimants.into_iter().map(Arc::new).collect();
                for ip in ips {
                    writer.set_address_side(direction, ip, claimants.clone());
                }
            }
        }
    }
}

/// Opens a `Watch` stream: connects, presents the token and this code's
/// view format, says hello. Returns the stream and the sender for
/// acknowledgements.
pub async fn open(
    config: &ControlConfig,
) -> Result<
    (
        tonic::Streaming<v1::WatchResponse>,
        mpsc::Sender<v1::WatchRequest>,
    ),
    StreamError,
> {
    open_as(config, Some(picket_api::VIEW_FORMAT)).await
}

/// [`open`], presenting `view_format` (`None`: no header, as sidecars
/// before view format 2): what a sidecar of another version sends.
pub async fn open_as(
    config: &ControlConfig,
    view_format: Option<u32>,
) -> Result<
    (
        tonic::Streaming<v1::WatchResponse>,
        mpsc::Sender<v1::WatchRequest>,
    ),
    StreamError,
> {
    let token =
        std::fs::read_to_string(&config.token_file).map_err(|source| StreamError::Token {
            path: config.token_file.clone(),
            source,
        })?;
    let mut client = connect(config).await?;
    let (acks, acks_rx) = mpsc::channel(64);
    let _ = acks.try_send(v1::WatchRequest {
        kind: Some(v1::watch_request::Kind::Hello(v1::Hello {
            proxy_version: env!("CARGO_PKG_VERSION").into(),
        })),
    });
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(acks_rx));
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| tonic::Status::unauthenticated("the token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", bearer);
    if let Some(format) = view_format {
        request.metadata_mut().insert(
            picket_api::VIEW_FORMAT_HEADER,
            format.to_string().parse().expect("digits"),
        );
    }
    if config.outbound {
        request.metadata_mut().insert(
            picket_api::VIEW_OUTBOUND_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    let stream = client.watch(request).await?.into_inner();
    Ok((stream, acks))
}

/// Asks the control plane (the mesh CA) to sign `csr` (DER), with the
/// token, over a connection of its own (a CSR is rare: one a day).
pub async fn certify(
    config: &ControlConfig,
    csr: Vec<u8>,
) -> Result<v1::CertifyResponse, StreamError> {
    let token =
        std::fs::read_to_string(&config.token_file).map_err(|source| StreamError::Token {
            path: config.token_file.clone(),
            source,
        })?;
    let mut client = connect(config).await?;
    let mut request = tonic::Request::new(v1::CertifyRequest { csr });
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| tonic::Status::unauthenticated("the token is not a valid header value"))?;
    request.metadata_mut().insert("authorization", bearer);
    request.set_timeout(Duration::from_secs(10));
    Ok(client.certify(request).await?.into_inner())
}

/// A gRPC client over one TLS HTTP/2 connection.
async fn connect(config: &ControlConfig) -> Result<ControlClient<H2>, StreamError> {
    let fail = |reason: String| StreamError::Connect {
        addr: config.addr.clone(),
        reason,
    };
    let tls = client_tls(&config.ca_pem).map_err(fail)?;
    let name = rustls::pki_types::ServerName::try_from(config.server_name.clone())
        .map_err(|e| fail(format!("server name {:?}: {e}", config.server_name)))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&config.addr),
    )
    .await
    .map_err(|_| fail("timed out".into()))?
    .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let (send, connection) = builder
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| fail(format!("HTTP/2: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "Control-plane connection ended");
        }
    });
    let origin = format!("https://{}", config.server_name)
        .parse()
        .map_err(|e| fail(format!("origin: {e}")))?;
    Ok(ControlClient::with_origin(H2(send), origin))
}

fn client_tls(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("CA: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA: no certificate in the PEM".into());
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One HTTP/2 connection as the service tonic's client calls.
#[derive(Clone, Debug)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
