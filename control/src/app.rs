//! Wiring: the cluster watch, the `Watch` service, and the admin endpoints
//! (`/ready`: synced with the cluster; `/metrics`; `/status`, over loopback
//! only: see [`crate::status`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use picket_state::kube::KubeSource;
use picket_state::{SnapshotRx, Source as _, StateWriter};

use crate::auth::{Authenticator, KubeReviewer};
use crate::certify::Certifier;
use crate::metrics::ControlMetrics;
use crate::service::{ControlService, StreamConfig};
use crate::status::{CertificateStatus, Connections, StatusReport};

/// What `picket-control` needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where sidecars connect (gRPC over TLS).
    pub listen: SocketAddr,
    /// Where `/ready` and `/metrics` are served.
    pub admin: SocketAddr,
    /// The kubeconfig; none: in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The serving certificate chain (PEM).
    pub tls_cert_file: PathBuf,
    /// Its key (PEM).
    pub tls_key_file: PathBuf,
    /// Stream timing.
    pub stream: StreamConfig,
    /// TokenReviews a second, and at once.
    pub review_rate: f64,
    /// TokenReviews at once.
    pub review_burst: f64,
    /// Coverage Events (see [`crate::events`]).
    pub coverage: CoverageConfig,
    /// The mesh CA; none: mTLS is not configured (`Certify` refuses).
    pub identity: Option<IdentityConfig>,
}

/// Where the mesh CA's issuer and anchors are, and what it issues.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The issuer's certificate (PEM; intermediates above it may follow).
    pub issuer_cert_file: PathBuf,
    /// Its key (PEM).
    pub issuer_key_file: PathBuf,
    /// The trust anchors (PEM bundle; two roots during a rotation).
    pub trust_anchors_file: PathBuf,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// How long a workload certificate is valid.
    pub lifetime: Duration,
    /// How often the files are read again: a rotated issuer or new anchors
    /// take effect without a restart.
    pub reload: Duration,
}

// === impl IdentityConfig ===

impl IdentityConfig {
    /// Reads the files into a CA.
    pub fn load(&self) -> anyhow::Result<(crate::ca::Ca, Vec<u8>)> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let (cert, key, anchors) = (
            read(&self.issuer_cert_file)?,
            read(&self.issuer_key_file)?,
            read(&self.trust_anchors_file)?,
        );
        let ca = crate::ca::Ca::from_pem(&cert, &key, &anchors, &self.trust_domain, self.lifetime)
            .with_context(|| {
                format!(
                    "mesh CA from {} and {}",
                    self.issuer_cert_file.display(),
                    self.trust_anchors_file.display()
                )
            })?;
        let mut files = cert;
        files.extend(key);
        files.extend(anchors);
        Ok((ca, files))
    }
}

/// Reads the CA's files again every `config.reload`; a change that loads
/// replaces the CA, one that does not is logged and the CA kept.
async fn reload_ca(config: IdentityConfig, certifier: Arc<Certifier>, mut seen: Vec<u8>) {
    loop {
        tokio::time::sleep(config.reload).await;
        match config.load() {
            Ok((ca, files)) if files != seen => {
                tracing::info!(trust_domain = %config.trust_domain, "Mesh CA files changed; issuing with the new issuer and anchors");
                certifier.set_ca(ca);
                seen = files;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Mesh CA files unusable; keeping the CA loaded before"
                );
            }
        }
    }
}

/// How coverage Events are recorded.
#[derive(Debug, Clone, Copy)]
pub struct CoverageConfig {
    /// How often coverage is checked.
    pub interval: Duration,
    /// How long an unchanged warning waits before it is recorded again.
    pub repeat: Duration,
}

/// Binds the listeners and runs the control plane until the process ends.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on {}", config.admin))?;
    run_on(config, listener, admin).await
}

/// Runs the control plane on listeners the caller bound (in a network
/// namespace, on port 0); `config.listen` and `config.admin` are unused.
pub async fn run_on(
    config: Config,
    listener: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let cert = std::fs::read(&config.tls_cert_file)
        .with_context(|| format!("cannot read {}", config.tls_cert_file.display()))?;
    let key = std::fs::read(&config.tls_key_file)
        .with_context(|| format!("cannot read {}", config.tls_key_file.display()))?;
    let tls = crate::serve::server_config(&cert, &key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.tls_cert_file.display()))?;
    let client = picket_state::kube::client(config.kubeconfig.as_ref()).await?;
    let restarts = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "picket_control_watch_restarts_total",
            "Cluster watches restarted, by kind",
        ),
        &["kind"],
    )?;
    registry.register(Box::new(restarts.clone()))?;
    let (writer, snapshots) = StateWriter::new();
    // Services and EndpointSlices: for the views of sidecars that capture
    // outbound connections.
    tokio::spawn(
        KubeSource::new(client.clone(), restarts)
            .with_services()
            .run(writer),
    );
    // The pod's name (the Downward API, or the hostname a pod gets).
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "picket-control".into());
    tokio::spawn(crate::events::run(
        client.clone(),
        snapshots.clone(),
        config.coverage.interval,
        config.coverage.repeat,
        instance.clone(),
    ));
    let auth = Arc::new(Authenticator::new(
        KubeReviewer(client),
        config.review_rate,
        config.review_burst,
    ));
    registry.register(Box::new(auth.reviews.clone()))?;
    let metrics = Arc::new(ControlMetrics::new(&registry));
    let unenforced = metrics.unenforced.clone();
    let ca = match &config.identity {
        Some(identity) => {
            let (ca, files) = identity.load()?;
            tracing::info!(trust_domain = %identity.trust_domain, lifetime = ?identity.lifetime, "Mesh CA loaded");
            Some((ca, files))
        }
        None => {
            tracing::info!(
                "No mesh CA configured (--identity-issuer-cert-file): Certify refuses, mTLS is off"
            );
            None
        }
    };
    let (ca, files) = ca.unzip();
    let certifier = Arc::new(Certifier::new(ca, &registry));
    if let (Some(identity), Some(files)) = (config.identity.clone(), files) {
        tokio::spawn(reload_ca(identity, certifier.clone(), files));
    }
    let service = ControlService::new(snapshots.clone(), auth, metrics, config.stream, certifier);
    let status = Arc::new(StatusSource {
        instance: instance.clone(),
        snapshots: snapshots.clone(),
        connections: service.connections(),
        certificate: cert,
    });
    tracing::info!(addr = %listener.local_addr()?, "Control plane listening");
    tracing::info!(addr = %admin.local_addr()?, "Admin server listening");
    tokio::spawn(serve_admin(admin, snapshots, registry, unenforced, status));
    crate::serve::serve(listener, Arc::new(tls), service).await;
    Ok(())
}

/// What `/status` reports from.
struct StatusSource {
    instance: String,
    snapshots: SnapshotRx,
    connections: Arc<Connections>,
    /// The serving certificate chain (PEM) sidecars verify.
    certificate: Vec<u8>,
}

impl StatusSource {
    fn report(&self) -> StatusReport {
        let snapshot = self.snapshots.borrow().clone();
        StatusReport {
            instance: self.instance.clone(),
            synced: snapshot.is_some(),
            generation: snapshot.map_or(0, |s| s.version),
            // Read at start and known to parse then (rustls took it).
            serving_certificate: CertificateStatus::of_pem(
                &self.certificate,
                std::time::SystemTime::now(),
            )
            .ok(),
            sidecars: self.connections.sidecars(std::time::Instant::now()),
        }
    }
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    snapshots: SnapshotRx,
    registry: prometheus::Registry,
    unenforced: prometheus::IntGaugeVec,
    status: Arc<StatusSource>,
) {
    picket_common::accept::accept_loop(&listener, |tcp, peer| {
        let snapshots = snapshots.clone();
        let registry = registry.clone();
        let unenforced = unenforced.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = match req.uri().path() {
                    "/status" => status_answer(&status, peer),
                    path => {
                        if path == "/metrics" {
                            set_unenforced(&snapshots, &unenforced);
                        }
                        admin_answer(path, &snapshots, &registry)
                    }
                };
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    })
    .await;
}

/// Counts the unenforced pods of the current state, replacing the last
/// counts (a namespace no longer concerned leaves the metric).
fn set_unenforced(snapshots: &SnapshotRx, gauge: &prometheus::IntGaugeVec) {
    let Some(snapshot) = snapshots.borrow().clone() else {
        return;
    };
    gauge.reset();
    for (namespace, count) in picket_policy::coverage::unenforced(&snapshot.index) {
        gauge
            .with_label_values(&[&*namespace])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// `/status` as JSON, to a loopback peer (a port-forward) only: it names
/// the connected pods.
fn status_answer(status: &StatusSource, peer: SocketAddr) -> Response<Full<Bytes>> {
    let (code, body, kind) = if crate::status::may_read_status(peer) {
        let mut body = serde_json::to_string(&status.report()).unwrap_or_default();
        body.push('\n');
        (StatusCode::OK, body, "application/json")
    } else {
        (
            StatusCode::FORBIDDEN,
            "/status is served over loopback only: use a port-forward (picket status)\n".into(),
            "text/plain",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    response
}

fn admin_answer(
    path: &str,
    snapshots: &SnapshotRx,
    registry: &prometheus::Registry,
) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/ready" if snapshots.borrow().is_some() => (StatusCode::OK, "ready\n".to_string()),
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not synced with the cluster yet\n".to_string(),
        ),
        "/live" => (StatusCode::OK, "ok\n".to_string()),
        "/metrics" => {
            let mut out = String::new();
            let _ = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out);
            (StatusCode::OK, out)
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
