//! `picket tap NS/POD`: one sidecar's live decisions, as they happen.
//!
//! The sidecar publishes them on its local admin port (`/tap`, 127.0.0.1
//! only); this command reaches it through the API server with a
//! port-forward, as `kubectl port-forward` does (RBAC: `create` on
//! `pods/portforward` in the pod's namespace), or at `--address` directly.
//! Filters run in the sidecar, so a filtered stream drops less.
//!
//! `render` is pure; `run` does the I/O.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

/// The sidecar's local admin port (`--local-admin-port`).
pub const LOCAL_ADMIN_PORT: u16 = 15000;

/// What to tap, and how to show it.
#[derive(Debug, Clone)]
pub struct TapRequest {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod.
    pub name: String,
    /// The kubeconfig (else inferred, as kubectl).
    pub kubeconfig: Option<PathBuf>,
    /// Connect here instead of port-forwarding (a `kubectl port-forward` of
    /// the local admin port, or from inside the pod).
    pub address: Option<SocketAddr>,
    /// The sidecar's local admin port.
    pub admin_port: u16,
    /// The query the sidecar filters by (`denied`, `peer=`, `port=`).
    pub query: String,
    /// JSON lines as the sidecar sends them, instead of text.
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<usize>,
}

/// The query string of `/tap` for these filters.
pub fn query(denied: bool, peer: Option<&str>, port: Option<u16>) -> String {
    let mut parts = Vec::new();
    if denied {
        parts.push("denied=true".to_string());
    }
    if let Some(peer) = peer {
        parts.push(format!(
            "peer={}",
            peer.replace('%', "%25").replace('&', "%26")
        ));
    }
    if let Some(port) = port {
        parts.push(format!("port={port}"));
    }
    parts.join("&")
}

/// Streams the pod's decisions to `out` until the sidecar or the
/// connection goes, or `count` events have been shown.
pub async fn run(request: &TapRequest, out: &mut impl Write) -> anyhow::Result<()> {
    let target = format!("{}/{}", request.namespace, request.name);
    match request.address {
        Some(address) => {
            let stream = tokio::net::TcpStream::connect(address)
                .await
                .with_context(|| format!("cannot connect to the tap of {target} at {address}"))?;
            stream_from(stream, request, out).await
        }
        None => {
            let client = crate::live::client(request.kubeconfig.as_ref()).await?;
            let pods: kube::Api<Pod> = kube::Api::namespaced(client, &request.namespace);
            let mut forward = pods
                .portforward(&request.name, &[request.admin_port])
                .await
                .with_context(|| {
                    format!(
                        "cannot port-forward to pod {target}, port {}",
                        request.admin_port
                    )
                })?;
            let stream = forward
                .take_stream(request.admin_port)
                .context("the port-forward has no stream for the admin port")?;
            let failed = forward.take_error(request.admin_port);
            let streamed = stream_from(stream, request, out).await;
            if let (Err(e), Some(failed)) = (&streamed, failed) {
                // The kubelet says why on the port's error channel.
                if let Ok(Some(why)) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), failed).await
                {
                    bail!("the port-forward to pod {target} failed: {why} ({e:#})");
                }
            }
            forward.abort();
            streamed
        }
    }
}

/// Asks for `/tap` over `stream` and renders what comes.
async fn stream_from(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: &TapRequest,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let target = format!("{}/{}", request.namespace, request.name);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| format!("cannot speak HTTP to the sidecar of {target}"))?;
    tokio::spawn(connection);
    let path = match request.query.as_str() {
        "" => "/tap".to_string(),
        q => format!("/tap?{q}"),
    };
    let req = hyper::Request::get(&path)
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let response = sender
        .send_request(req)
        .await
        .with_context(|| format!("the sidecar of {target} did not answer {path}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        if status == hyper::StatusCode::NOT_FOUND {
            bail!("the sidecar of {target} serves no tap (a picket-proxy older than picket tap?)");
        }
        bail!(
            "the sidecar of {target} refused the tap: {status}: {}",
            text.trim()
        );
    }
    let mut pending = Vec::new();
    let mut shown = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("the tap of {target} broke off"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let Some(text) = render(line.trim(), request.json) else {
                continue;
            };
            out.write_all(text.as_bytes())?;
            out.flush()?;
            if !is_dropped_notice(line.trim()) {
                shown += 1;
            }
            if request.count.is_some_and(|count| shown >= count) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Whether a line is the sidecar's count of lost events, not an event.
fn is_dropped_notice(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v.get("dropped").is_some())
}

/// One line of the stream as shown: JSON as it came, or a line of text.
/// `None` for keep-alives (empty lines).
pub fn render(line: &str, json: bool) -> Option<String> {
    if line.is_empty() {
        return None;
    }
    if json {
        return Some(format!("{line}\n"));
    }
    let Ok(event) = serde_json::from_str::<Value>(line) else {
        return Some(format!("? {line}\n"));
    };
    if let Some(n) = event.get("dropped").and_then(Value::as_u64) {
        return Some(format!(
            "... {n} events dropped: this reader fell behind the sidecar\n"
        ));
    }
    let s = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or("");
    let time = s("time")
        .split('T')
        .nth(1)
        .unwrap_or("")
        .trim_end_matches('Z');
    let arrow = if s("direction") == "inbound" {
        "<-"
    } else {
        "->"
    };
    let peer = match s("peer") {
        "" => "(no pod)".to_string(),
        peer => peer.to_string(),
    };
    let peer_addr = if s("direction") == "inbound" {
        s("client")
    } else {
        s("destination")
    };
    let verdict = match (s("event"), s("verdict")) {
        ("teardown", _) => "TORN DOWN",
        (_, "allowed") => "allowed",
        _ => "DENIED",
    };
    let mut text = format!(
        "{time:<12} {:<8} {verdict:<9} :{:<5} {arrow} {peer} {peer_addr}",
        s("direction"),
        event.get("port").and_then(Value::as_u64).unwrap_or(0),
    );
    match (
        event.get("policy").and_then(Value::as_str),
        event.get("rule"),
    ) {
        (Some(policy), Some(rule)) => text.push_str(&format!("  by {policy} rule {rule}")),
        _ => text.push_str(&format!("  {}", s("reason"))),
    }
    if let Some(policies) = event.get("isolated_by").and_then(Value::as_array) {
        let names: Vec<&str> = policies.iter().filter_map(Value::as_str).collect();
        text.push_str(&format!(" [isolated by {}]", names.join(", ")));
    }
    if let Some(change) = event.get("change").and_then(Value::as_str) {
        text.push_str(&format!(" (after {change})"));
    }
    if let Some(audit) = event.get("audit") {
        let a = |key: &str| audit.get(key).and_then(Value::as_str).unwrap_or("");
        text.push_str(&format!("  [audit: {} by {}]", a("verdict"), a("policy")));
    }
    text.push('\n');
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_the_verdict_peer_policy_and_rule() {
        let line = r#"{"time":"2026-12-02T09:10:11.123Z","event":"decision","direction":"inbound","client":"10.0.0.2:40000","destination":"10.0.0.3:80","peer":"prod/client-1","port":80,"verdict":"allowed","policy":"prod/allow-web","rule":1,"reason":"allowed"}"#;
        let text = render(line, false).unwrap();
        assert_eq!(
            text,
            "09:10:11.123 inbound  allowed   :80    <- prod/client-1 10.0.0.2:40000  by prod/allow-web rule 1\n"
        );
        let torn = r#"{"time":"2026-12-02T09:10:12.000Z","event":"teardown","direction":"outbound","client":"10.0.0.3:5000","destination":"10.0.0.9:443","port":443,"verdict":"denied","reason":"no rule allows it","isolated_by":["prod/lock","prod/web"],"change":"policy-added","audit":{"verdict":"would-deny","policy":"prod/audit"}}"#;
        let text = render(torn, false).unwrap();
        assert!(text.contains("TORN DOWN"), "{text}");
        assert!(
            text.contains("-> (no pod) 10.0.0.9:443  no rule allows it [isolated by prod/lock, prod/web] (after policy-added)"),
            "{text}"
        );
        assert!(text.contains("[audit: would-deny by prod/audit]"), "{text}");
        assert!(render(r#"{"dropped":7}"#, false)
            .unwrap()
            .contains("7 events dropped"));
        assert_eq!(render("", false), None, "keep-alives are not shown");
        assert_eq!(
            render(r#"{"dropped":7}"#, true).unwrap(),
            "{\"dropped\":7}\n"
        );
    }

    #[test]
    fn filters_become_the_query() {
        assert_eq!(query(false, None, None), "");
        assert_eq!(
            query(true, Some("prod/a&b"), Some(80)),
            "denied=true&peer=prod/a%26b&port=80"
        );
    }
}
