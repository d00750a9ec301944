//! The admin HTTP servers.
//!
//! On the pod IP: `/live` (the process is up), `/ready` (the listener is
//! bound and the first state has loaded; once ready it never flips back, so a
//! lost state source does not pull the pod out of its Services) and
//! `/metrics`. On 127.0.0.1 only, what dumps internals or changes state:
//! `/connections` (the live connection table), `/tap` (this pod's decisions
//! as they happen, JSON lines, for `picket tap` through a port-forward) and
//! `PUT /log-level`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::metrics::ProxyMetrics;
use picket_common::logging::LogHandle;

use picket_policy::NodeAddrs;

use crate::enforce::registry::Registry;
use crate::tap::{Filter, Reader, Received, Tap};

/// Readiness latches: ready once every one is set, and ready for good.
#[derive(Debug, Default)]
pub struct Readiness {
    listener_bound: AtomicBool,
    state_loaded: AtomicBool,
    ready: AtomicBool,
    /// With mTLS on: the credentials that must hold a certificate.
    certificate: std::sync::OnceLock<Arc<crate::mesh::Credentials>>,
}

/// The most admin connections served at once, per admin listener.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// The longest an admin connection lives (probes and scrapes take milliseconds).
/// (A `/tap` stream is exempt: it lives as long as its reader.)
pub const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The most an admin connection buffers, either way, in hyper and in the
/// kernel's send buffer.
pub const ADMIN_BUFFER: usize = 16 * 1024;
/// How often an idle `/tap` stream writes an empty line, so a reader that
/// went away is noticed and its slot freed.
pub const TAP_KEEPALIVE: Duration = Duration::from_secs(5);

/// An admin response's body: whole, or a `/tap` stream.
pub type AdminBody = Either<Full<Bytes>, TapBody>;

/// A `/tap` stream's body: lines made by the stream's own task.
#[derive(Debug)]
pub struct TapBody {
    lines: tokio::sync::mpsc::Receiver<Bytes>,
}

/// What an admin server may show.
#[derive(Clone, Debug)]
pub struct Admin {
    /// Readiness.
    pub readiness: Arc<Readiness>,
    /// The metrics.
    pub metrics: Option<Arc<ProxyMetrics>>,
    /// The connection table, shown only on the local server.
    pub registry: Option<Arc<Registry>>,
    /// The decisions' broadcast, streamed only on the local server.
    pub tap: Option<Arc<Tap>>,
    /// The log filter, changeable only on the local server.
    pub log: Option<LogHandle>,
    /// Clients served beyond the connection cap: the node (kubelet probes
    /// must never queue behind idle connections from pods).
    pub node: NodeAddrs,
}

// === impl Readiness ===

impl Readiness {
    /// Nothing ready yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The inbound listener is bound.
    pub fn set_listener_bound(&self) {
        self.listener_bound.store(true, Ordering::SeqCst);
    }

    /// The first complete state has been applied.
    pub fn set_state_loaded(&self) {
        self.state_loaded.store(true, Ordering::SeqCst);
    }

    /// Readiness also waits for a mesh certificate in `credentials`.
    pub fn require_certificate(&self, credentials: Arc<crate::mesh::Credentials>) {
        let _ = self.certificate.set(credentials);
    }

    /// Ok when ready; otherwise the names of what is pending.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        if self.ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut pending = Vec::new();
        if !self.listener_bound.load(Ordering::SeqCst) {
            pending.push("inbound listener");
        }
        if !self.state_loaded.load(Ordering::SeqCst) {
            pending.push("cluster state");
        }
        if self.certificate.get().is_some_and(|c| !c.is_certified()) {
            pending.push("mesh certificate");
        }
        if pending.is_empty() {
            self.ready.store(true, Ordering::SeqCst);
            Ok(())
        } else {
            Err(pending)
        }
    }
}

// === impl Admin ===

impl Admin {
    /// Serves HTTP/1 on the listener forever. At most
    /// [`MAX_ADMIN_CONNECTIONS`] at a time (more are closed at once, except
    /// from the node), each for at most [`ADMIN_CONNECTION_TIMEOUT`]: idle
    /// connections from pods can neither pile up and take the descriptors
    /// inbound connections need, nor starve the kubelet's probes.
    pub async fn serve(self, listener: TcpListener) {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
        crate::net::listener::accept_loop(&listener, |stream, peer| {
            let permit = open.clone().try_acquire_owned().ok();
            if permit.is_none() && !self.node.contains(peer.ip()) {
                tracing::debug!(client.addr = %peer, "Too many admin connections; closing");
                return;
            }
            // The kernel's share of what a slow `/tap` reader holds.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(ADMIN_BUFFER);
            let admin = self.clone();
            tokio::spawn(async move {
                // Set once the connection serves a tap stream: from then on
                // it lives as long as its reader (a tap slot bounds those).
                let streaming = Arc::new(AtomicBool::new(false));
                let marked = streaming.clone();
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    let marked = marked.clone();
                    async move { Ok::<_, Infallible>(admin.route(req, &marked).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_CONNECTION_TIMEOUT)
                    // Bounds what a slow `/tap` reader holds here; requests are small.
                    .max_buf_size(ADMIN_BUFFER)
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                let timed_out = tokio::time::timeout(ADMIN_CONNECTION_TIMEOUT, connection.as_mut())
                    .await
                    .is_err();
                if timed_out && streaming.load(Ordering::SeqCst) {
                    let _ = connection.await;
                }
                drop(permit);
            });
        })
        .await
    }

    async fn route(&self, req: Request<Incoming>, streaming: &AtomicBool) -> Response<AdminBody> {
        if req.method() == Method::GET && req.uri().path() == "/tap" {
            let Some(tap) = &self.tap else {
                return text(StatusCode::NOT_FOUND, "not found\n".into()).map(Either::Left);
            };
            let filter = match Filter::from_query(req.uri().query().unwrap_or_default()) {
                Ok(filter) => filter,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")).map(Either::Left),
            };
            let Some(reader) = tap.subscribe() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} tap readers are attached already\n",
                        crate::tap::MAX_READERS
                    ),
                )
                .map(Either::Left);
            };
            streaming.store(true, Ordering::SeqCst);
            tracing::info!(?filter, "Tap reader attached");
            let mut resp = Response::new(Either::Right(stream_tap(reader, filter)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-ndjson"),
            );
            return resp;
        }
        self.route_whole(req).await.map(Either::Left)
    }

    async fn route_whole(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::PUT && req.uri().path() == "/log-level" {
            let Some(log) = &self.log else {
                return text(StatusCode::NOT_FOUND, "not found\n".into());
            };
            let body = match Limited::new(req.into_body(), 1024).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "body too large\n".into()),
            };
            let filter = String::from_utf8_lossy(&body).into_owned();
            return match picket_common::logging::set_level(log, &filter) {
                Ok(()) => {
                    tracing::info!(filter = %filter.trim(), "Log level changed");
                    text(StatusCode::OK, format!("log level: {}\n", filter.trim()))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("invalid filter: {e}\n")),
            };
        }
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
        }
        match req.uri().path() {
            "/metrics" => match &self.metrics {
                Some(metrics) => {
                    let body = metrics.encode(self.readiness.check().is_ok());
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    resp
                }
                None => text(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => match self.readiness.check() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(pending) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: waiting for {}\n", pending.join(", ")),
                ),
            },
            "/connections" => match &self.registry {
                Some(registry) => {
                    let body = serde_json::to_string_pretty(&registry.list()).unwrap_or_default();
                    let mut resp = text(StatusCode::OK, body + "\n");
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                None => text(StatusCode::NOT_FOUND, "not found\n".into()),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Streams a tap reader's events as JSON lines, from a task of its own: a
/// client that reads slowly holds up this task, which holds up nothing (the
/// broadcast drops the oldest for it, and it says how many with a
/// `{"dropped": N}` line). Ends when the client goes.
fn stream_tap(mut reader: Reader, filter: Filter) -> TapBody {
    let (tx, lines) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                received = reader.recv() => received,
                () = tx.closed() => break,
                () = tokio::time::sleep(TAP_KEEPALIVE) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let line = match received {
                Some(Received::Event(event)) if filter.matches(&event) => {
                    serde_json::to_vec(&event.line())
                }
                Some(Received::Event(_)) => continue,
                Some(Received::Dropped(n)) => {
                    serde_json::to_vec(&serde_json::json!({ "dropped": n }))
                }
                None => break,
            };
            let Ok(mut line) = line else { continue };
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                break;
            }
        }
        tracing::info!("Tap reader detached");
    });
    TapBody { lines }
}

// === impl TapBody ===

impl hyper::body::Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.lines
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_both_latches_and_never_flips_back() {
        let r = Readiness::new();
        assert_eq!(r.check(), Err(vec!["inbound listener", "cluster state"]));
        r.set_listener_bound();
        assert_eq!(r.check(), Err(vec!["cluster state"]));
        r.set_state_loaded();
        assert_eq!(r.check(), Ok(()));
        r.state_loaded.store(false, Ordering::SeqCst);
        assert_eq!(r.check(), Ok(()), "once ready, always ready");
    }
}
