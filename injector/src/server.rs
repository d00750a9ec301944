//! The HTTPS webhook server (`POST /mutate`) and the plain-HTTP admin server
//! (`/live`, `/ready`, `/metrics`).
//!
//! A thin layer: it reads a bounded body, calls `review.rs`, looks up the
//! namespace labels, and writes the JSON back. `app.rs` binds the listeners
//! and spawns [`serve_https`] and [`serve_admin`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::LiveConfig;
use crate::metrics::{self, Metrics};
use crate::namespace::NamespaceLookup;
use crate::patch::NamespaceView;
use crate::review::{self, Reviewed, Triage};

/// How long a client has to finish the TLS handshake, the headers or the body.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a namespace lookup may take before the pod is injected without it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/mutate` needs.
#[derive(Debug)]
pub struct Webhook {
    /// What to inject (a snapshot per review: the control plane's CA may change).
    pub config: Arc<LiveConfig>,
    /// Namespace labels and annotations, for the Pod Security check and pod opt-outs.
    pub namespaces: Arc<dyn NamespaceLookup>,
    /// Counters.
    pub metrics: Metrics,
    /// Larger bodies are refused with 413.
    pub max_body_bytes: usize,
}

/// What the admin server shows.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The metrics registry.
    pub registry: Registry,
    /// True once the webhook serves with a certificate; false again while draining.
    pub ready: Arc<AtomicBool>,
}

type Resp = Response<Full<Bytes>>;

// === impl Webhook ===

impl Webhook {
    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Resp
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if req.uri().path() != "/mutate" {
            self.metrics.errors.with_label_values(&["not_found"]).inc();
            return text(
                StatusCode::NOT_FOUND,
                "not found; POST AdmissionReviews to /mutate\n",
            );
        }
        if req.method() != Method::POST {
            self.metrics
                .errors
                .with_label_values(&["method_not_allowed"])
                .inc();
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        }
        self.metrics.requests.inc();
        let started = Instant::now();
        let response = self.mutate(req).await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn mutate<B>(&self, req: Request<B>) -> Resp
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return self.too_large();
        }
        let body = Limited::new(req.into_body(), self.max_body_bytes);
        let body = match tokio::time::timeout(IO_TIMEOUT, body.collect()).await {
            Err(_) => {
                self.metrics.errors.with_label_values(&["timeout"]).inc();
                return text(StatusCode::REQUEST_TIMEOUT, "body not received in time\n");
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return self.too_large();
            }
            Ok(Err(error)) => {
                self.metrics.errors.with_label_values(&["read"]).inc();
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read body: {error}\n"),
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };

        let (request, triage) = match review::parse(&body) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(%error, "Bad AdmissionReview");
                self.metrics
                    .errors
                    .with_label_values(&["bad_request"])
                    .inc();
                return text(StatusCode::BAD_REQUEST, &format!("{error}\n"));
            }
        };

        let reviewed = match triage {
            Triage::PassThrough { reason, warning } => {
                tracing::info!(
                    uid = %request.uid,
                    kind = %request.kind.kind,
                    operation = %request.operation,
                    reason,
                    "Passed through unchanged"
                );
                review::respond_unchanged(&request.uid, reason, warning)
            }
            Triage::Refuse { reason, message } => {
                tracing::info!(
                    uid = %request.uid,
                    operation = %request.operation,
                    reason,
                    %message,
                    "Refused pod"
                );
                review::respond_refused(&request.uid, reason, message)
            }
            Triage::Pod { pod, namespace } => {
                let lookup = self.namespaces.lookup(&namespace);
                let meta = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                    Ok(Ok(meta)) => Some(meta),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "Namespace lookup failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(namespace, "Namespace lookup timed out");
                        None
                    }
                };
                let view = NamespaceView {
                    name: &namespace,
                    labels: meta.as_deref().map(|m| &m.labels),
                    annotations: meta.as_deref().map(|m| &m.annotations),
                };
                let reviewed =
                    review::respond_to_pod(&request.uid, &pod, &view, &self.config.current());
                let name = pod
                    .metadata
                    .name
                    .clone()
                    .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
                    .unwrap_or_default();
                tracing::info!(
                    uid = %request.uid,
                    pod.namespace = %namespace,
                    pod.name = %name,
                    decision = reviewed.decision,
                    reason = reviewed.reason,
                    dry_run = request.dry_run.unwrap_or(false),
                    "Reviewed pod"
                );
                reviewed
            }
        };
        self.record(&reviewed);
        match serde_json::to_vec(&reviewed.review) {
            Ok(json) => Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
            Err(error) => {
                self.metrics.errors.with_label_values(&["encode"]).inc();
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode response: {error}\n"),
                )
            }
        }
    }

    fn record(&self, reviewed: &Reviewed) {
        self.metrics
            .reviews
            .with_label_values(&[reviewed.decision, reviewed.reason])
            .inc();
        if reviewed.patched {
            self.metrics.patches.inc();
        }
    }

    fn too_large(&self) -> Resp {
        self.metrics.errors.with_label_values(&["too_large"]).inc();
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {} bytes\n", self.max_body_bytes),
        )
    }
}

// === impl Admin ===

impl Admin {
    fn handle<B>(&self, req: &Request<B>) -> Resp {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "ok\n"),
            "/ready" if self.ready.load(Ordering::SeqCst) => text(StatusCode::OK, "ready\n"),
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/metrics" => Response::builder()
                .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(metrics::encode(&self.registry))))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "metrics\n")),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .keep_alive(true);
    builder
}

/// Serves `/mutate` over TLS on `listener`, forever.
pub async fn serve_https(listener: TcpListener, acceptor: TlsAcceptor, webhook: Arc<Webhook>) {
    picket_common::accept::accept_loop(&listener, |tcp, peer| {
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, peer = %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(webhook.handle(req).await) }
            });
            if let Err(error) = http1().serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%error, peer = %peer, "Connection ended with an error");
            }
        });
    })
    .await;
}

/// Serves the admin endpoints over plain HTTP on `listener`, forever.
pub async fn serve_admin(listener: TcpListener, admin: Admin) {
    picket_common::accept::accept_loop(&listener, |tcp, _| {
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = admin.handle(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1().serve_connection(TokioIo::new(tcp), service).await;
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InjectConfig;
    use crate::namespace::NoNamespaces;

    fn webhook() -> Webhook {
        Webhook {
            config: Arc::new(LiveConfig::new(InjectConfig::for_test())),
            namespaces: Arc::new(NoNamespaces),
            metrics: Metrics::register(&Registry::new()).unwrap(),
            max_body_bytes: 1024,
        }
    }

    fn post(body: &str) -> Request<Full<Bytes>> {
        Request::post("/mutate")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    /// Reviews a plain pod; returns the patched proxy's `PICKET_CONTROL_CA`.
    async fn control_ca_injected(w: &Webhook) -> Option<String> {
        use base64::Engine as _;
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        });
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "namespace": "shop", "operation": "CREATE", "object": pod,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
            },
        });
        let response = w.handle(post(&review.to_string())).await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let patch = answer["response"]["patch"].as_str().expect("a patch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let ops: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &ops).unwrap();
        let proxy = &patched["spec"]["initContainers"][1];
        let env = proxy["env"].as_array()?;
        let ca = env.iter().find(|e| e["name"] == "PICKET_CONTROL_CA")?;
        ca["value"].as_str().map(str::to_string)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_review_injects_the_control_ca_in_force_then() {
        let control = crate::config::ControlPlane {
            addr: "picket-control.picket-system.svc:8443".into(),
            ca_pem: "first CA".into(),
        };
        let w = Webhook {
            config: Arc::new(LiveConfig::new(InjectConfig {
                control: Some(control),
                ..InjectConfig::for_test()
            })),
            max_body_bytes: 64 * 1024,
            ..webhook()
        };
        assert_eq!(control_ca_injected(&w).await.as_deref(), Some("first CA"));
        assert!(w.config.set_control_ca("rotated CA"));
        assert_eq!(control_ca_injected(&w).await.as_deref(), Some("rotated CA"));
        // Direct mode: no CA at all.
        let direct = Webhook {
            max_body_bytes: 64 * 1024,
            ..webhook()
        };
        assert_eq!(control_ca_injected(&direct).await, None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn routes_and_limits() {
        let w = webhook();
        let get = Request::get("/mutate")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(w.handle(get).await.status(), StatusCode::METHOD_NOT_ALLOWED);
        let other = Request::post("/x").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(w.handle(other).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            w.handle(post("nope")).await.status(),
            StatusCode::BAD_REQUEST
        );
        let big = "x".repeat(2048);
        assert_eq!(
            w.handle(post(&big)).await.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let text = metrics::encode(&Registry::new());
        assert!(text.is_empty());
    }
}
