//! `picket status`: is everything the policies concern enforced?
//!
//! Reads the live cluster (a kubeconfig, or in-cluster): the control
//! plane's replicas and whether each is ready, and from each its own
//! `/status` (the sidecars connected to it, their view lag, the serving
//! certificate's expiry), read through a port-forward to its admin port as
//! `picket tap` reads a sidecar (the caller needs `pods/portforward` in
//! the control plane's namespace; `/status` names pods, so the replica
//! serves it over loopback only); how many pods run the sidecar and how
//! many of those are ready; and, per namespace, the pods
//! NetworkPolicy concerns that nothing enforces (the same count as
//! `picket_unenforced_pods`, see [`picket_policy::coverage`]). The cluster
//! is read by the same list-and-watch source the sidecars and the control
//! plane use, until it has listed every kind once. The report fails (the
//! command exits non-zero) when a pod is unenforced, so that it can gate a
//! pipeline. It fails too when a replica's serving certificate has expired
//! (sidecars cannot reconnect) or a sidecar's view lags more than
//! [`LAG_LIMIT`] (it enforces a stale view).
//!
//! I/O here; the report itself (`Report`, `render`) is pure.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use picket_policy::coverage::{coverage, NamespaceCoverage};
use picket_policy::PolicyIndex;
use serde::{Deserialize, Serialize};

/// The control plane's pod label.
const CONTROL_SELECTOR: &str = "app.kubernetes.io/name=picket-control";

/// The admin port's name in the control plane's pod, and its default.
const ADMIN_PORT_NAME: &str = "admin";
const ADMIN_PORT: u16 = 9991;

/// How long a replica may take to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// A view that has waited longer than this for a sidecar to apply it is
/// stale: the report fails. (A replica disconnects a sidecar that does not
/// drain for its stall bound, 60 s by default.)
pub const LAG_LIMIT: Duration = Duration::from_secs(30);

/// A serving certificate closer than this to its expiry is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// What `picket status` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The control plane's replicas.
    pub control_plane: ControlPlane,
    /// Pods running the sidecar, and how many report it ready.
    pub sidecars: Sidecars,
    /// Per namespace NetworkPolicy concerns, its unenforced pods.
    pub namespaces: Vec<NamespaceReport>,
    /// How many pods are unenforced in all.
    pub unenforced: usize,
}

/// The control plane's replicas, in their namespace.
#[derive(Debug, Serialize)]
pub struct ControlPlane {
    /// Where it runs.
    pub namespace: String,
    /// Each replica.
    pub replicas: Vec<Replica>,
}

/// One replica of `picket-control`.
#[derive(Debug, Serialize)]
pub struct Replica {
    /// The pod's name.
    pub name: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Container restarts, summed.
    pub restarts: i32,
    /// What the replica says of itself at `/status`.
    pub status: Option<ReplicaStatus>,
    /// Why its `/status` could not be read.
    pub status_error: Option<String>,
}

/// A replica's `/status` (what this command reads of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Synced with the cluster.
    pub synced: bool,
    /// The certificate sidecars verify when they connect.
    pub serving_certificate: Option<CertificateStatus>,
    /// The sidecars connected to it.
    pub sidecars: Vec<ConnectedSidecar>,
}

/// A certificate's expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// notAfter, in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Seconds left (negative: expired).
    pub expires_in_seconds: i64,
}

/// A sidecar connected to a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectedSidecar {
    /// `namespace/name`.
    pub pod: String,
    /// How long a change of its view has waited for it to apply it.
    pub lag_seconds: f64,
}

/// The sidecars of the cluster.
#[derive(Debug, Serialize)]
pub struct Sidecars {
    /// Pods whose spec runs the sidecar.
    pub pods: usize,
    /// Of those, how many report the sidecar container ready.
    pub ready: usize,
    /// How many are connected to a replica that answered (none: no
    /// replica answered).
    pub connected: Option<usize>,
}

/// One namespace NetworkPolicy concerns.
#[derive(Debug, Serialize)]
pub struct NamespaceReport {
    /// The namespace.
    pub namespace: String,
    /// Pods NetworkPolicy concerns there.
    pub concerned: usize,
    /// Those nothing enforces, as `namespace/name`.
    pub unenforced: Vec<String>,
}

// === impl Report ===

impl Report {
    /// The report of an index and the control plane's replicas.
    pub fn of(index: &PolicyIndex, control_plane: ControlPlane) -> Self {
        let sidecars = index.pods().filter(|p| p.sidecar && !p.host_network);
        let (pods, ready) =
            sidecars.fold((0, 0), |(n, r), p| (n + 1, r + p.sidecar_ready as usize));
        let namespaces: Vec<NamespaceReport> = coverage(index)
            .into_iter()
            .map(
                |(
                    ns,
                    NamespaceCoverage {
                        concerned,
                        unenforced,
                    },
                )| NamespaceReport {
                    namespace: ns.to_string(),
                    concerned,
                    unenforced: unenforced.iter().map(ToString::to_string).collect(),
                },
            )
            .collect();
        let unenforced = namespaces.iter().map(|n| n.unenforced.len()).sum();
        let answered = control_plane
            .replicas
            .iter()
            .filter_map(|r| r.status.as_ref());
        let connected = answered.fold(None, |n: Option<usize>, s| {
            Some(n.unwrap_or(0) + s.sidecars.len())
        });
        Self {
            control_plane,
            sidecars: Sidecars {
                pods,
                ready,
                connected,
            },
            namespaces,
            unenforced,
        }
    }

    /// Whether something is wrong: a pod nothing enforces; a control
    /// plane whose every replica is unready (sidecars that use it cannot
    /// start); an expired serving certificate (sidecars cannot reconnect);
    /// a sidecar whose view lags more than [`LAG_LIMIT`]; a replica not
    /// synced with the cluster; no replica answering `/status` (nothing
    /// could be checked, say for want of `pods/portforward`). A cluster without
    /// a control plane (sidecars watching the API directly) is not wrong.
    pub fn failed(&self) -> bool {
        let replicas = &self.control_plane.replicas;
        self.unenforced > 0
            || (!replicas.is_empty() && replicas.iter().all(|r| !r.ready))
            // What cannot be checked is not passed: no replica answered.
            || (!replicas.is_empty() && replicas.iter().all(|r| r.status.is_none()))
            || replicas.iter().any(|r| {
                r.expired()
                    || !r.lagging().is_empty()
                    || r.status.as_ref().is_some_and(|s| !s.synced)
            })
    }

    /// The report for people.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let cp = &self.control_plane;
        let ready = cp.replicas.iter().filter(|r| r.ready).count();
        let _ = writeln!(
            out,
            "control plane ({}): {} replicas, {ready} ready",
            cp.namespace,
            cp.replicas.len()
        );
        for r in &cp.replicas {
            let state = if r.ready { "ready" } else { "NOT READY" };
            let _ = writeln!(out, "  {}  {state}  restarts {}", r.name, r.restarts);
            r.render_status(&mut out);
        }
        if !cp.replicas.is_empty() && cp.replicas.iter().all(|r| r.status.is_none()) {
            let _ = writeln!(
                out,
                "CONTROL PLANE UNCHECKED: no replica answered /status (port-forward permission?)"
            );
        }
        if !cp.replicas.is_empty() && ready == 0 {
            let _ = writeln!(
                out,
                "CONTROL PLANE DOWN: no replica is ready; sidecars that use it cannot start"
            );
        }
        let _ = write!(
            out,
            "sidecars: {} pods run one, {} ready",
            self.sidecars.pods, self.sidecars.ready
        );
        let _ = match self.sidecars.connected {
            Some(n) => writeln!(out, ", {n} connected to the control plane"),
            None => writeln!(out),
        };
        if self.unenforced == 0 {
            let _ = writeln!(
                out,
                "enforced: every pod NetworkPolicy concerns has a ready sidecar ({} namespaces)",
                self.namespaces.len()
            );
            return out;
        }
        let _ = writeln!(
            out,
            "UNENFORCED: {} pods that NetworkPolicy concerns have no ready sidecar; nothing enforces their policies",
            self.unenforced
        );
        for ns in self.namespaces.iter().filter(|n| !n.unenforced.is_empty()) {
            let _ = writeln!(
                out,
                "  {}: {} of {}: {}",
                ns.namespace,
                ns.unenforced.len(),
                ns.concerned,
                ns.unenforced.join(", ")
            );
        }
        out
    }
}

// === impl Replica ===

impl Replica {
    /// Its serving certificate has expired.
    fn expired(&self) -> bool {
        self.certificate()
            .is_some_and(|c| c.expires_in_seconds <= 0)
    }

    fn certificate(&self) -> Option<&CertificateStatus> {
        self.status.as_ref()?.serving_certificate.as_ref()
    }

    /// Its sidecars whose view lags more than [`LAG_LIMIT`].
    fn lagging(&self) -> Vec<&ConnectedSidecar> {
        let limit = LAG_LIMIT.as_secs_f64();
        self.status
            .iter()
            .flat_map(|s| &s.sidecars)
            .filter(|s| s.lag_seconds > limit)
            .collect()
    }

    /// The lines of its `/status` under its own.
    fn render_status(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(status) = &self.status else {
            if let Some(error) = &self.status_error {
                let _ = writeln!(out, "    status unknown: {error}");
            }
            return;
        };
        let max_lag = status
            .sidecars
            .iter()
            .map(|s| s.lag_seconds)
            .fold(0.0, f64::max);
        let synced = if status.synced {
            ""
        } else {
            "  NOT SYNCED with the cluster"
        };
        let _ = writeln!(
            out,
            "    {} sidecars connected, view lag at most {max_lag:.1}s{synced}",
            status.sidecars.len()
        );
        for s in self.lagging() {
            let _ = writeln!(
                out,
                "    VIEW LAG: {} has not applied its view for {:.1}s (limit {}s)",
                s.pod,
                s.lag_seconds,
                LAG_LIMIT.as_secs()
            );
        }
        if let Some(c) = &status.serving_certificate {
            let date = civil_date(c.not_after_unix);
            let days = c.expires_in_seconds / 86_400;
            let _ = match c.expires_in_seconds {
                ..=0 => writeln!(
                    out,
                    "    SERVING CERTIFICATE EXPIRED on {date}: sidecars cannot reconnect"
                ),
                left if left < EXPIRY_WARNING.as_secs() as i64 => writeln!(
                    out,
                    "    serving certificate expires {date}: SOON, in {days} days"
                ),
                _ => writeln!(
                    out,
                    "    serving certificate expires {date} (in {days} days)"
                ),
            };
        }
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time (the civil-from-days algorithm of
/// Howard Hinnant's date library).
fn civil_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Reads the cluster and reports.
pub fn status(kubeconfig: Option<&PathBuf>, control_namespace: &str) -> anyhow::Result<Report> {
    crate::live::block_on(async {
        let client = crate::live::client(kubeconfig).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), control_namespace);
        let listed = pods
            .list(&ListParams::default().labels(CONTROL_SELECTOR))
            .await
            .with_context(|| {
                format!("cannot list the control plane's pods in {control_namespace}")
            })?;
        let mut replicas = Vec::new();
        for pod in &listed.items {
            let mut replica = replica(pod);
            match replica_status(&pods, pod).await {
                Ok(status) => replica.status = Some(status),
                Err(e) => replica.status_error = Some(format!("{e:#}")),
            }
            replicas.push(replica);
        }
        replicas.sort_by(|a, b| a.name.cmp(&b.name));
        let index = crate::live::index(client).await?;
        Ok(Report::of(
            &index,
            ControlPlane {
                namespace: control_namespace.to_string(),
                replicas,
            },
        ))
    })
}

/// A replica's `/status`, through a port-forward to its admin port.
async fn replica_status(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<ReplicaStatus> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let port = admin_port(pod);
    let read = async {
        let mut forward = pods
            .portforward(&name, &[port])
            .await
            .with_context(|| format!("cannot port-forward to {name}, port {port}"))?;
        let stream = forward
            .take_stream(port)
            .context("the port-forward has no stream for the admin port")?;
        let failed = forward.take_error(port);
        let answer = match (get_status(stream, &name).await, failed) {
            (Err(e), Some(failed)) => {
                // The kubelet says why on the port's error channel.
                match tokio::time::timeout(Duration::from_secs(1), failed).await {
                    Ok(Some(why)) => Err(anyhow::anyhow!(
                        "the port-forward to {name} failed: {why} ({e:#})"
                    )),
                    _ => Err(e),
                }
            }
            (answer, _) => answer,
        };
        forward.abort();
        let (code, body) = answer?;
        if code == hyper::StatusCode::NOT_FOUND {
            anyhow::bail!("{name} serves no /status (a picket-control older than picket status?)");
        }
        if !code.is_success() {
            anyhow::bail!(
                "{name} refused /status: {code}: {}",
                String::from_utf8_lossy(&body).trim()
            );
        }
        serde_json::from_slice::<ReplicaStatus>(&body)
            .with_context(|| format!("{name}'s /status is not what picket status reads"))
    };
    tokio::time::timeout(STATUS_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            anyhow::bail!(
                "{name} did not answer /status within {}s",
                STATUS_TIMEOUT.as_secs()
            )
        })
}

/// `GET /status` over `stream`: the status code and the body.
async fn get_status(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    name: &str,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(|| format!("cannot speak HTTP to {name}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/status")
        .header(hyper::header::HOST, "localhost")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{name} did not answer /status"))?;
    let code = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((code, body))
}

/// The container port named `admin` of the control plane's pod.
fn admin_port(pod: &Pod) -> u16 {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(ADMIN_PORT)
}

fn replica(pod: &Pod) -> Replica {
    let status = pod.status.as_ref();
    Replica {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        restarts: status
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |c| c.iter().map(|c| c.restart_count).sum()),
        status: None,
        status_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(replicas: &[bool]) -> Report {
        Report::of(
            &PolicyIndex::new(),
            ControlPlane {
                namespace: "picket-system".into(),
                replicas: replicas
                    .iter()
                    .enumerate()
                    .map(|(i, ready)| Replica {
                        name: format!("picket-control-{i}"),
                        ready: *ready,
                        restarts: 0,
                        status: None,
                        status_error: None,
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn a_control_plane_with_no_ready_replica_fails_and_none_at_all_does_not() {
        assert!(!report(&[]).failed(), "sidecars watching the API directly");
        let mut answered = report(&[true, false]);
        assert!(answered.failed(), "no replica answered /status");
        assert!(answered.render().contains("CONTROL PLANE UNCHECKED"));
        answered.control_plane.replicas[0].status = Some(ReplicaStatus {
            synced: true,
            serving_certificate: None,
            sidecars: Vec::new(),
        });
        assert!(!answered.failed(), "{}", answered.render());
        answered.control_plane.replicas[0]
            .status
            .as_mut()
            .unwrap()
            .synced = false;
        assert!(answered.failed(), "a replica not synced");
        let down = report(&[false, false]);
        assert!(down.failed());
        assert!(
            down.render().contains("CONTROL PLANE DOWN"),
            "{}",
            down.render()
        );
    }

    fn one_replica_saying(expires_in_seconds: i64, lag_seconds: f64) -> Report {
        let mut r = report(&[true]);
        r.control_plane.replicas[0].status = Some(ReplicaStatus {
            synced: true,
            serving_certificate: Some(CertificateStatus {
                not_after_unix: 1_700_000_000 + expires_in_seconds,
                expires_in_seconds,
            }),
            sidecars: vec![ConnectedSidecar {
                pod: "shop/api".into(),
                lag_seconds,
            }],
        });
        r
    }

    #[test]
    fn an_expired_certificate_or_a_lagging_view_fails_and_a_soon_expiring_one_warns() {
        let healthy = one_replica_saying(90 * 86_400, 0.2);
        assert!(!healthy.failed(), "{}", healthy.render());
        assert!(healthy
            .render()
            .contains("1 sidecars connected, view lag at most 0.2s"));
        assert!(
            healthy.render().contains("(in 90 days)"),
            "{}",
            healthy.render()
        );
        let soon = one_replica_saying(2 * 86_400, 0.0);
        assert!(!soon.failed());
        assert!(
            soon.render().contains("SOON, in 2 days"),
            "{}",
            soon.render()
        );
        let expired = one_replica_saying(-5, 0.0);
        assert!(expired.failed());
        assert!(expired.render().contains("SERVING CERTIFICATE EXPIRED"));
        let lagging = one_replica_saying(90 * 86_400, LAG_LIMIT.as_secs_f64() + 1.0);
        assert!(lagging.failed());
        assert!(
            lagging
                .render()
                .contains("VIEW LAG: shop/api has not applied its view for 31.0s"),
            "{}",
            lagging.render()
        );
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(67_090_118_400), "4096-01-01");
        assert_eq!(civil_date(-86_400), "1969-12-31");
    }
}
