//! `pods/{name}/portforward` over WebSocket (`v4.channel.k8s.io`), as the real API server
//! proxies it to the kubelet: the kubelet connects to the port inside the pod's network
//! namespace, which a test supplies as a [`Kubelet`] (the lab's pods are network namespaces).
//!
//! The protocol kube-rs and kubectl speak: every binary message starts with a channel byte;
//! port `i` has data channel `2i` and error channel `2i+1`; the server's first message on
//! each channel is the port number (little endian). A failed dial writes its reason on the
//! error channel, as the kubelet does.
//!
//! Async, on the connection's task: the upgrade completes after the 101 response is sent.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::body::Body;
use super::kind::Kind;
use super::params::Query;
use super::status::ApiError;
use super::Shared;

/// What the kubelet does for a port-forward: connect to `port` on the pod's loopback, in its
/// network namespace.
#[derive(Clone)]
pub struct Kubelet(Arc<Dial>);

/// Connects to a port of a pod: namespace, pod name, port.
type Dial = dyn Fn(&str, &str, u16) -> std::io::Result<std::net::TcpStream> + Send + Sync;

impl Kubelet {
    /// A kubelet that dials with `dial` (namespace, pod name, port).
    pub fn new(
        dial: impl Fn(&str, &str, u16) -> std::io::Result<std::net::TcpStream> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(dial))
    }
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kubelet")
    }
}

/// The channel protocol served.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// The pod a port-forward path names: `/api/v1/namespaces/{ns}/pods/{name}/portforward`.
pub(crate) fn target(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, "pods", name, "portforward"] => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

/// Answers a port-forward request: 101 and the forwarding task, or a `Status` error.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(req.uri().query().unwrap_or_default());
    let ports: Vec<u16> = query
        .get("ports")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::bad_request("ports: expected port numbers"))?;
    if ports.is_empty() {
        return Err(ApiError::bad_request("at least one port must be specified"));
    }
    if shared
        .lock_store()
        .get(Kind::Pod, Some(namespace), name)
        .is_none()
    {
        return Err(ApiError::not_found(Kind::Pod, name));
    }
    let headers = req.headers();
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let offers_protocol = headers
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim() == PROTOCOL));
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let (true, true, Some(key)) = (upgrade, offers_protocol, key) else {
        return Err(ApiError::bad_request(format!(
            "port-forward needs a WebSocket upgrade offering {PROTOCOL}"
        )));
    };
    let kubelet = shared.kubelet();
    let (namespace, name) = (namespace.to_string(), name.to_string());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "Port-forward upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        forward(ws, kubelet, &namespace, &name, &ports).await;
    });
    let mut response = Response::new(Body::full(Vec::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

/// Forwards the first port (the only one the clients here ask for; more get their
/// initial frames and an error).
async fn forward<S>(
    mut ws: WebSocketStream<S>,
    kubelet: Option<Kubelet>,
    namespace: &str,
    name: &str,
    ports: &[u16],
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for (i, port) in ports.iter().enumerate() {
        let [lo, hi] = port.to_le_bytes();
        for ch in [2 * i as u8, 2 * i as u8 + 1] {
            if ws.send(Message::binary(vec![ch, lo, hi])).await.is_err() {
                return;
            }
        }
    }
    for (i, port) in ports.iter().enumerate().skip(1) {
        let why = format!("error forwarding port {port}: one port per request here");
        let _ = ws.send(error_frame(2 * i as u8 + 1, &why)).await;
    }
    let port = ports[0];
    let dialled = match kubelet {
        Some(kubelet) => {
            let (ns, pod) = (namespace.to_string(), name.to_string());
            tokio::task::spawn_blocking(move || (kubelet.0)(&ns, &pod, port))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
        None => Err(std::io::Error::other("this test API server has no kubelet")),
    };
    let stream = dialled.and_then(|s| {
        s.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(s)
    });
    let mut tcp = match stream {
        Ok(tcp) => tcp,
        Err(error) => {
            let why = format!(
                "error forwarding port {port} to pod {namespace}/{name}: dial tcp4 127.0.0.1:{port}: {error}"
            );
            let _ = ws.send(error_frame(1, &why)).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut pod_open = true;
    loop {
        tokio::select! {
            read = tcp.read(&mut buf[1..]), if pod_open => match read {
                Ok(0) | Err(_) => {
                    pod_open = false;
                    let _ = ws.close(None).await;
                }
                Ok(n) => {
                    buf[0] = 0;
                    if ws.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
                        return;
                    }
                }
            },
            message = ws.next() => match message {
                Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                    if tcp.write_all(&data[1..]).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn error_frame(channel: u8, why: &str) -> Message {
    let mut frame = vec![channel];
    frame.extend_from_slice(why.as_bytes());
    Message::binary(frame)
}
