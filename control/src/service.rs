//! The `Watch` service: one task per connected sidecar, which sends its
//! pod's view in full, then one message per change of the view.
//!
//! Level-triggered, after Linkerd's watches and Typha's breadcrumbs: the
//! cluster state is one `watch` channel the writer never blocks on; a
//! subscriber wakes on a change (a commit: the state source gathers the
//! cluster's events into batches of at most 10 ms), waits out its own batch
//! window if one is configured (none by default: a second window only adds
//! latency), and diffs the latest state against what it has sent. A
//! subscriber that falls behind skips the states it missed; one that does not drain for the stall bound
//! (its send stays blocked, or it acknowledges nothing it was sent) is
//! disconnected, and reconnects into a full view. Memory is what each
//! subscriber last sent, not a queue per subscriber.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_api::convert::{ip_from_wire, ip_to_wire};
use picket_api::v1;
use picket_api::v1::control_server::Control;
use picket_policy::{ObjectKey, PolicyIndex};
use picket_state::{Snapshot, SnapshotRx};
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, PodIdentity, Refusal, Reviewer};
use crate::certify::Certifier;
use crate::delta::Sent;
use crate::metrics::ControlMetrics;
use crate::parts::{into_parts, PART_BYTES};
use crate::status::{Connections, Registration};
use crate::view::Shared;

/// The most unanswered address questions a subscriber keeps.
const MAX_RESOLVES: usize = 1024;

/// How many whole views are computed and sent at once. When every sidecar
/// reconnects at once (a replica restarts), each would otherwise hold its
/// whole view in memory until its sidecar has read it: the others wait
/// their turn, and memory stays bounded.
pub const FULL_VIEWS_IN_FLIGHT: usize = 8;

/// Stream timing.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    /// How long a subscriber gathers commits into one message, beyond the
    /// state source's batching (zero: none).
    pub batch: Duration,
    /// How long a subscriber may not drain before it is disconnected.
    pub stall: Duration,
    /// How long a stream lives (jittered ±20%), so sidecars rebalance across
    /// replicas and present fresh tokens.
    pub lifetime: Duration,
}

/// The service.
#[derive(Debug)]
pub struct ControlService<R> {
    snapshots: SnapshotRx,
    auth: Arc<Authenticator<R>>,
    metrics: Arc<ControlMetrics>,
    config: StreamConfig,
    shared: Arc<SharedCache>,
    /// Whole views being computed and sent (see [`FULL_VIEWS_IN_FLIGHT`]).
    full_views: Arc<tokio::sync::Semaphore>,
    /// The connected sidecars, for `/status`.
    connections: Arc<Connections>,
    /// The mesh CA's side of `Certify`.
    certifier: Arc<Certifier>,
}

/// The views' shared work for the latest snapshot version, derived from
/// the version before (see [`Shared::next`]).
#[derive(Debug, Default)]
pub struct SharedCache {
    latest: std::sync::Mutex<Option<Latest>>,
}

/// The shared work of one snapshot version, with its index.
#[derive(Debug)]
struct Latest {
    version: u64,
    index: PolicyIndex,
    shared: Arc<Shared>,
}

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::WatchResponse, Status>> + Send>>;

// === impl SharedCache ===

impl SharedCache {
    /// The shared work for `snapshot`. A subscriber still on an older
    /// version than the latest gets its own, which nobody else reuses.
    fn for_snapshot(&self, snapshot: &Snapshot) -> Arc<Shared> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let shared = match &*latest {
            Some(l) if l.version == snapshot.version => return l.shared.clone(),
            Some(l) if l.version > snapshot.version => return Arc::default(),
            Some(l) => {
                let changed = snapshot.log.between(l.version, snapshot.version);
                l.shared
                    .next(&l.index, &snapshot.index, changed.as_deref())
                    .into()
            }
            None => Arc::default(),
        };
        *latest = Some(Latest {
            version: snapshot.version,
            index: snapshot.index.clone(),
            shared: Arc::clone(&shared),
        });
        shared
    }
}

// === impl ControlService ===

impl<R: Reviewer> ControlService<R> {
    /// A service over the cluster state `snapshots`.
    pub fn new(
        snapshots: SnapshotRx,
        auth: Arc<Authenticator<R>>,
        metrics: Arc<ControlMetrics>,
        config: StreamConfig,
        certifier: Arc<Certifier>,
    ) -> Self {
        Self {
            snapshots,
            auth,
            metrics,
            config,
            shared: Arc::default(),
            full_views: Arc::new(tokio::sync::Semaphore::new(FULL_VIEWS_IN_FLIGHT)),
            connections: Arc::default(),
            certifier,
        }
    }

    /// The caller of a request: its token reviewed, its pod in the cluster
    /// as the token names it, running the sidecar.
    async fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        call: &str,
    ) -> Result<(PodIdentity, ObjectKey), Status> {
        let token = bearer(metadata).unwrap_or_default();
        let identity = self.auth.authenticate(token).await.map_err(|refusal| {
            tracing::info!(%refusal, call, "Call refused");
            match refusal {
                Refusal::RateLimited | Refusal::Unavailable(_) => {
                    Status::unavailable(refusal.to_string())
                }
                other => Status::unauthenticated(other.to_string()),
            }
        })?;
        let Some(snapshot) = self.snapshots.borrow().clone() else {
            return Err(Status::unavailable(
                "the control plane has not synced with the cluster yet",
            ));
        };
        let me = check_pod(&snapshot.index, &identity).map_err(|why| {
            tracing::info!(pod.namespace = %identity.namespace, pod.name = %identity.name, %why, call, "Call refused");
            Status::unauthenticated(why)
        })?;
        Ok((identity, me))
    }

    /// The connected sidecars.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }
}

#[tonic::async_trait]
impl<R: Reviewer> Control for ControlService<R> {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<v1::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // A sidecar of another view format would read views wrong: refused
        // before anything is sent (it keeps its last view, or waits).
        let format = request
            .metadata()
            .get(picket_api::VIEW_FORMAT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        if format != Some(picket_api::VIEW_FORMAT) {
            tracing::info!(?format, "Watch refused: view format");
            return Err(Status::failed_precondition(format!(
                "this control plane serves view format {}, the sidecar speaks {}: restart the pod to get the current proxy",
                picket_api::VIEW_FORMAT,
                format.map_or("an older one".to_string(), |f| f.to_string()),
            )));
        }
        // A sidecar that captures outbound connections asks for the parts
        // that decide them.
        let outbound = request
            .metadata()
            .get(picket_api::VIEW_OUTBOUND_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1");
        let (identity, me) = self.caller(request.metadata(), "Watch").await?;
        let (tx, rx) = mpsc::channel(1);
        let registration = self
            .connections
            .register(me.to_string(), identity.uid.clone());
        let subscriber = Subscriber {
            registration,
            me,
            identity,
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
            config: self.config,
            shared: self.shared.clone(),
            full_views: self.full_views.clone(),
            sent: Sent::new(outbound),
            tx,
            sent_at: None,
            unacked_since: None,
            resolves: Vec::new(),
            seen_version: 0,
        };
        tokio::spawn(subscriber.run(request.into_inner()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn certify(
        &self,
        request: Request<v1::CertifyRequest>,
    ) -> Result<Response<v1::CertifyResponse>, Status> {
        let (identity, _) = self
            .caller(request.metadata(), "Certify")
            .await
            .inspect_err(|_| self.certifier.refused("unauthenticated"))?;
        self.certifier
            .certify(&identity, &request.get_ref().csr)
            .map(Response::new)
    }
}

/// The pod a token names, when the cluster has it as the token says and it
/// runs the sidecar.
fn check_pod(index: &PolicyIndex, id: &PodIdentity) -> Result<ObjectKey, String> {
    let key = ObjectKey::new(&id.namespace, &id.name);
    let Some(pod) = index.pod(&key) else {
        return Err(format!("pod {key} not found"));
    };
    if *pod.uid != *id.uid {
        return Err(format!(
            "pod {key} has UID {}, the token is bound to {}",
            pod.uid, id.uid
        ));
    }
    if *pod.service_account != *id.service_account {
        return Err(format!(
            "pod {key} runs as service account {:?}, the token is {:?}'s",
            pod.service_account, id.service_account
        ));
    }
    if !pod.sidecar {
        return Err(format!("pod {key} has no Picket sidecar"));
    }
    Ok(key)
}

/// The answer about an address: whether a pod holds it, and, when the
/// pod holding it is meshed, who its certificate must name.
fn resolved(index: &PolicyIndex, ip: std::net::IpAddr) -> v1::Resolved {
    v1::Resolved {
        ip: ip_to_wire(&ip),
        pod: !index.pods_with_ip(ip).is_empty(),
        meshed: index
            .holder_of(ip)
            .filter(|p| p.meshed())
            .map(|p| v1::MeshedPod {
                namespace: p.key.namespace.to_string(),
                name: p.key.name.to_string(),
                uid: p.uid.to_string(),
                service_account: p.service_account.to_string(),
                originates_mtls: p.originates_mtls(),
            }),
    }
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// One connected sidecar.
struct Subscriber {
    /// Its line in `/status`.
    registration: Registration,
    me: ObjectKey,
    identity: PodIdentity,
    snapshots: SnapshotRx,
    metrics: Arc<ControlMetrics>,
    config: StreamConfig,
    shared: Arc<SharedCache>,
    full_views: Arc<tokio::sync::Semaphore>,
    sent: Sent,
    tx: mpsc::Sender<Result<v1::WatchResponse, Status>>,
    /// The last message sent and when, for convergence.
    sent_at: Option<(u64, Instant)>,
    /// Since when a sent message waits for its acknowledgement: a sidecar
    /// that applies nothing for the stall bound is disconnected.
    unacked_since: Option<tokio::time::Instant>,
    /// Addresses asked about, to answer with the next message.
    resolves: Vec<std::net::IpAddr>,
    /// The snapshot version the view was last brought up to.
    seen_version: u64,
}

/// Why a stream ends.
enum End {
    /// The sidecar went away.
    Gone,
    /// Its pod is gone or is another pod now.
    Revoked(String),
    /// It did not drain for the stall bound.
    Stalled,
    /// The stream reached its lifetime.
    Expired,
}

impl Subscriber {
    async fn run(mut self, mut requests: Streaming<v1::WatchRequest>) {
        self.metrics.connected.inc();
        let deadline =
            tokio::time::Instant::now() + picket_common::jitter::around(self.config.lifetime, 0.2);
        let end = self.serve(&mut requests, deadline).await;
        self.metrics.connected.dec();
        let (label, status) = match end {
            End::Gone => ("gone", None),
            End::Revoked(why) => ("revoked", Some(Status::unauthenticated(why))),
            End::Stalled => ("stalled", None),
            End::Expired => (
                "expired",
                Some(Status::unavailable("stream lifetime reached; reconnect")),
            ),
        };
        self.metrics.disconnects.with_label_values(&[label]).inc();
        tracing::debug!(pod = %self.me, reason = label, "Watch ended");
        if let Some(status) = status {
            let _ = self.tx.try_send(Err(status));
        }
    }

    async fn serve(
        &mut self,
        requests: &mut Streaming<v1::WatchRequest>,
        deadline: tokio::time::Instant,
    ) -> End {
        let mut full = true;
        loop {
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                if let Err(end) = self.send_view(&snapshot, full).await {
                    return end;
                }
                full = false;
            }
            // Wait for a change, reading acknowledgements meanwhile; a
            // question about an address is answered at once.
            let changed = loop {
                let stalled_at = self.unacked_since.map(|t| t + self.config.stall);
                tokio::select! {
                    () = sleep_until_some(stalled_at) => return End::Stalled,
                    changed = self.snapshots.changed() => {
                        if changed.is_err() {
                            return End::Gone;
                        }
                        break true;
                    }
                    message = requests.message() => match message {
                        Ok(Some(request)) => {
                            if self.on_request(request) {
                                break false;
                            }
                        }
                        _ => return End::Gone,
                    },
                    () = tokio::time::sleep_until(deadline) => return End::Expired,
                }
            };
            if changed && !self.config.batch.is_zero() {
                tokio::time::sleep(self.config.batch).await;
            }
        }
    }

    async fn send_view(&mut self, snapshot: &Snapshot, full: bool) -> Result<(), End> {
        let _turn = match full {
            true => Some(
                self.full_views
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| End::Gone)?,
            ),
            false => None,
        };
        let index = &snapshot.index;
        let changed = snapshot.log.between(self.seen_version, snapshot.version);
        self.seen_version = snapshot.version;
        let still_mine = index
            .pod(&self.me)
            .is_some_and(|p| *p.uid == *self.identity.uid);
        if !still_mine {
            return Err(End::Revoked(format!("pod {} is gone", self.me)));
        }
        // Most changes concern other pods' views: they cost a check here.
        let shared = self.shared.for_snapshot(snapshot);
        let Ok(change) = self
            .sent
            .update(index, &shared, &self.me, changed.as_deref(), full)
        else {
            return Err(End::Revoked(format!("pod {} is gone", self.me)));
        };
        self.metrics
            .updates
            .with_label_values(&[self.sent.how().as_str()])
            .inc();
        let mut message = change.unwrap_or_default();
        self.sent
            .services(&snapshot.services, changed.as_deref(), full, &mut message);
        if message == v1::WatchResponse::default() && self.resolves.is_empty() {
            return Ok(());
        }
        // After the view's change: a pod the question is about that belongs
        // in the view is in this message.
        message.resolved = self
            .resolves
            .drain(..)
            .map(|ip| resolved(index, ip))
            .collect();
        message.generation = snapshot.version;
        message.me = Some(v1::PodRef {
            namespace: self.identity.namespace.clone(),
            name: self.identity.name.clone(),
            uid: self.identity.uid.clone(),
        });
        // In parts: no stream keeps a buffer the size of a whole view. The
        // stall bound holds for each part of a delta, and for the whole of a
        // full view (which holds one of the few turns meanwhile).
        self.registration.sending(snapshot.version);
        let mut deadline = tokio::time::Instant::now() + self.config.stall;
        for part in into_parts(message, PART_BYTES) {
            let bytes = part.encoded_len();
            if !full {
                deadline = tokio::time::Instant::now() + self.config.stall;
            }
            match tokio::time::timeout_at(deadline, self.tx.send(Ok(part))).await {
                Ok(Ok(())) => {
                    self.metrics.messages.inc();
                    self.metrics.bytes.inc_by(bytes as u64);
                }
                Ok(Err(_)) => return Err(End::Gone),
                Err(_) => return Err(End::Stalled),
            }
        }
        self.sent_at = Some((snapshot.version, Instant::now()));
        self.unacked_since
            .get_or_insert_with(tokio::time::Instant::now);
        Ok(())
    }

    /// Takes a request; `true` when it asks a question to answer now.
    fn on_request(&mut self, request: v1::WatchRequest) -> bool {
        match request.kind {
            Some(v1::watch_request::Kind::Ack(ack)) => {
                self.registration.acked(ack.generation);
                if let Some((generation, at)) = self.sent_at {
                    if ack.generation >= generation {
                        self.metrics.convergence.observe(at.elapsed().as_secs_f64());
                        self.sent_at = None;
                        self.unacked_since = None;
                    }
                }
                false
            }
            Some(v1::watch_request::Kind::Resolve(resolve)) => {
                // Bounded: a sidecar asks about addresses of connections it
                // holds waiting; beyond the bound it simply waits them out.
                match ip_from_wire(&resolve.ip) {
                    Some(ip) if self.resolves.len() < MAX_RESOLVES => {
                        self.resolves.push(ip);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// Sleeps until `at`; never returns without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
