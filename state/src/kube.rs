//! The Kubernetes API as a state source: watches of Pods (all namespaces,
//! finished pods left out by a field selector), Namespaces, NetworkPolicies,
//! ClusterNetworkPolicies and Nodes, and, for a sidecar that captures
//! outbound connections, Services and EndpointSlices; listed in pages of
//! 500 with quorum reads.
//!
//! A cluster without the ClusterNetworkPolicy CRD answers its list with
//! 404: then none can exist, and the kind counts as listed, empty; the
//! watch keeps retrying with backoff, so a CRD installed later is picked
//! up. Once the kind has been listed, a 404 is a failure like any other:
//! the last state stays (a lagging replica or a CRD upgrade must not read
//! as "no policy").
//!
//! Objects are stripped to what the engine needs as they arrive (the
//! watchers keep no store of their own). A relist (a restart, a watch gap,
//! 410 Gone) ends with a complete snapshot of its kind, which replaces that
//! kind wholesale: objects deleted during the gap go. Events are applied in
//! batches (at most 10 ms or 1,000 events) and nothing is published until the
//! initial lists of every kind watched are in: a partial state could open pods.
//! A broken watch is retried with backoff and jitter while the last state
//! keeps being enforced; each transition is logged once.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc;

use picket_policy::{convert, ObjectKey};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};

use crate::kind::{Kind, Object, ObjectRef};
use crate::source::Source;
use crate::writer::StateWriter;

/// The longest a batch of events waits before it is applied.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// The most events applied in one batch.
pub const BATCH_MAX: usize = 1000;
/// Finished pods hold no IP: leave them out at the source.
pub const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// What a watch task hands to the state task.
#[derive(Debug)]
pub enum Update {
    /// An object was added or changed.
    Apply(Object),
    /// An object went away.
    Delete(ObjectRef),
    /// A (re)list completed: every object of the kind that could be read,
    /// and the keys of those that could not (their last good versions stay).
    Relisted(Kind, Vec<Object>, Vec<ObjectKey>),
}

/// A Kubernetes type the source watches, described once: its kind, how to
/// narrow its watch, and how it becomes the engine's model.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The state's kind for this type.
    const KIND: Kind;

    /// Whether the API may not serve the type (a CRD): a 404 then means
    /// that no object of it exists.
    const OPTIONAL: bool = false;

    /// The watch configuration, from the shared one.
    fn watch_config(config: watcher::Config) -> watcher::Config {
        config
    }

    /// Converts one object; an error names the field.
    fn convert(&self) -> Result<Object, String>;
}

/// The Kubernetes API as a state source.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    /// `picket_watch_restarts_total{kind}`.
    watch_restarts: IntCounterVec,
    /// Whether Services and EndpointSlices are watched too.
    services: bool,
}

/// Why the API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Neither in-cluster configuration nor a kubeconfig was found.
    #[error("no Kubernetes configuration (not in a pod, and no kubeconfig): {0}")]
    Infer(String),
    /// The client could not be built.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// A client from a kubeconfig file, or in-cluster configuration (the default in a pod).
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeSourceError::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeSourceError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}

// === impl KubeSource ===

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

impl KubeSource {
    /// A source over this client; watch failures are counted in `watch_restarts` (by kind label).
    pub fn new(client: Client, watch_restarts: IntCounterVec) -> Self {
        Self {
            client,
            watch_restarts,
            services: false,
        }
    }

    /// Watches Services and EndpointSlices too (two more watches), and
    /// publishes nothing before they are listed: the outbound proxy resolves
    /// ClusterIPs with them.
    pub fn with_services(mut self) -> Self {
        self.services = true;
        self
    }

    fn spawn_watch<K: Watched>(&self, config: &watcher::Config, tx: &mpsc::Sender<Update>) {
        tokio::spawn(watch_kind(
            Api::<K>::all(self.client.clone()),
            K::watch_config(config.clone()),
            tx.clone(),
            self.watch_restarts.clone(),
        ));
    }
}

impl Source for KubeSource {
    fn name(&self) -> &'static str {
        "kube"
    }

    /// Starts one watch per kind and applies their updates until the process ends.
    async fn run(self, mut writer: StateWriter) {
        let (tx, rx) = mpsc::channel(4 * BATCH_MAX);
        // Paginated lists are quorum reads: kube-rs sends no resourceVersion=0
        // with a limit (the watch cache would ignore the limit). So a relist
        // can never come from a lagging cache on another API server replica
        // and roll back what was applied (tests/kube_source.rs).
        let config = watcher::Config::default().page_size(500);
        self.spawn_watch::<core::Namespace>(&config, &tx);
        self.spawn_watch::<core::Pod>(&config, &tx);
        self.spawn_watch::<net::NetworkPolicy>(&config, &tx);
        writer.require_cluster();
        self.spawn_watch::<ClusterNetworkPolicy>(&config, &tx);
        self.spawn_watch::<core::Node>(&config, &tx);
        if self.services {
            writer.require_services();
            self.spawn_watch::<core::Service>(&config, &tx);
            self.spawn_watch::<discovery::EndpointSlice>(&config, &tx);
        }
        drop(tx);
        apply_updates(rx, writer).await;
    }
}

async fn watch_kind<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<Update>,
    watch_restarts: IntCounterVec,
) {
    let kind = K::KIND.label();
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<(Vec<Object>, Vec<ObjectKey>)> = None;
    let mut failing = false;
    let mut not_served = false;
    // Once listed, a 404 is no proof that none exists (a replica whose CRD
    // handlers lag, a CRD upgrade): the last state stays, as for any
    // failure.
    let mut listed = false;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) if K::OPTIONAL && !listed && is_not_found(&error) => {
                // The API serves no such resource: none exists.
                if !not_served {
                    tracing::info!(kind, "The API serves no {kind} (its CRD is not installed): none applies; checking again with backoff");
                    not_served = true;
                    relist = None;
                    if tx
                        .send(Update::Relisted(K::KIND, Vec::new(), Vec::new()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                continue;
            }
            Err(error) => {
                watch_restarts.with_label_values(&[kind]).inc();
                if !failing {
                    tracing::warn!(kind, %error, "Watch failed; retrying with backoff, enforcing the last known state");
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            tracing::info!(kind, "Watch recovered");
            failing = false;
        }
        if not_served {
            tracing::info!(kind, "The API serves {kind} now");
            not_served = false;
        }
        let update = match event {
            Event::Init => {
                relist = Some(Default::default());
                continue;
            }
            Event::InitApply(object) => {
                let (objects, unreadable) = relist.get_or_insert_with(Default::default);
                match convert(&object) {
                    Some(object) => objects.push(object),
                    // As for a watch update: the last good version stays.
                    None => unreadable.push(reference(&object).key),
                }
                continue;
            }
            Event::InitDone => {
                listed = true;
                let (objects, unreadable) = relist.take().unwrap_or_default();
                tracing::debug!(
                    kind,
                    objects = objects.len(),
                    unreadable = unreadable.len(),
                    "List complete"
                );
                Update::Relisted(K::KIND, objects, unreadable)
            }
            Event::Apply(object) => match convert(&object) {
                Some(object) => Update::Apply(object),
                // An update that cannot be read keeps the last good object:
                // dropping a policy would open the pods it isolates.
                None => continue,
            },
            Event::Delete(object) => Update::Delete(reference(&object)),
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

fn reference<K: Watched>(object: &K) -> ObjectRef {
    let meta = object.meta();
    ObjectRef::new(
        K::KIND,
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Converts one object, logging (with its identity) what cannot be read.
fn convert<K: Watched>(object: &K) -> Option<Object> {
    match object.convert() {
        Ok(converted) => Some(converted),
        Err(error) => {
            let what = reference(object);
            tracing::error!(kind = K::KIND.label(), object = %what.key, %error, "Object cannot be read; ignoring it");
            None
        }
    }
}

/// Applies updates in batches; publishes only once every kind has been listed.
///
/// Leading edge: an update that follows a quiet window is applied at once,
/// with whatever is already queued; updates arriving within the window of
/// the last batch are gathered until that window ends. A lone event waits
/// for nothing, and a burst still costs at most one commit per window.
async fn apply_updates(mut rx: mpsc::Receiver<Update>, mut writer: StateWriter) {
    let mut last_batch: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        match gather_until(last_batch, tokio::time::Instant::now()) {
            Some(end) => {
                while batch.len() < BATCH_MAX {
                    match tokio::time::timeout_at(end, rx.recv()).await {
                        Ok(Some(update)) => batch.push(update),
                        _ => break,
                    }
                }
            }
            None => {
                while batch.len() < BATCH_MAX {
                    match rx.try_recv() {
                        Ok(update) => batch.push(update),
                        Err(_) => break,
                    }
                }
            }
        }
        last_batch = Some(tokio::time::Instant::now());
        for update in batch {
            match update {
                Update::Apply(object) => writer.apply(object),
                Update::Delete(reference) => writer.delete(&reference),
                Update::Relisted(kind, objects, unreadable) => {
                    writer.replace_all_keeping(kind, objects, &unreadable)
                }
            }
        }
        if writer.commit_if_complete() {
            tracing::debug!("Cluster state committed");
        }
    }
}

/// Until when a batch that starts `now` gathers updates, given when the
/// last batch was applied: the end of that batch's window, or `None` (apply
/// at once) after a quiet window.
fn gather_until(
    last_batch: Option<tokio::time::Instant>,
    now: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    last_batch
        .map(|t| t + BATCH_WINDOW)
        .filter(|end| *end > now)
}

// === impl Watched ===

impl Watched for core::Namespace {
    const KIND: Kind = Kind::Namespace;

    fn convert(&self) -> Result<Object, String> {
        convert::namespace(self)
            .map(Object::Namespace)
            .map_err(|e| e.to_string())
    }
}

impl Watched for core::Pod {
    const KIND: Kind = Kind::Pod;

    fn watch_config(config: watcher::Config) -> watcher::Config {
        config.fields(POD_FIELD_SELECTOR)
    }

    fn convert(&self) -> Result<Object, String> {
        convert::pod(self)
            .map(Object::Pod)
            .map_err(|e| e.to_string())
    }
}

impl Watched for net::NetworkPolicy {
    const KIND: Kind = Kind::Policy;

    fn convert(&self) -> Result<Object, String> {
        let compiled = convert::policy_failing_closed(self).map_err(|e| e.to_string())?;
        for e in &compiled.errors {
            tracing::error!(policy = %compiled.policy.key, error = %e, "Policy or rule cannot be compiled; it isolates and allows nothing through it (a policy that cannot be read at all denies its whole namespace)");
        }
        Ok(Object::Policy(compiled.policy))
    }
}

impl Watched for core::Service {
    const KIND: Kind = Kind::Service;

    fn convert(&self) -> Result<Object, String> {
        convert::service(self)
            .map(Object::Service)
            .map_err(|e| e.to_string())
    }
}

impl Watched for discovery::EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;

    fn convert(&self) -> Result<Object, String> {
        convert::endpoint_slice(self)
            .map(Object::EndpointSlice)
            .map_err(|e| e.to_string())
    }
}

/// Whether a watch failed because the API does not serve the resource.
fn is_not_found(error: &watcher::Error) -> bool {
    let api = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(e))
        | watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::WatchFailed(kube::Error::Api(e)) => e,
        watcher::Error::WatchError(status) => return status.code == 404,
        _ => return false,
    };
    api.code == 404
}

/// A ClusterNetworkPolicy as the API serves it (`policy.networking.k8s.io/v1alpha2`),
/// for the watch: the engine's wire type, with the API's coordinates.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(transparent)]
pub struct ClusterNetworkPolicy(pub convert::cluster::ClusterNetworkPolicy);

impl kube::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "ClusterNetworkPolicy".into()
    }

    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "policy.networking.k8s.io".into()
    }

    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1alpha2".into()
    }

    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "clusternetworkpolicies".into()
    }

    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.0.metadata
    }
}

impl Watched for ClusterNetworkPolicy {
    const KIND: Kind = Kind::ClusterPolicy;
    const OPTIONAL: bool = true;

    fn convert(&self) -> Result<Object, String> {
        let compiled = convert::cluster::cluster_policy(&self.0).map_err(|e| e.to_string())?;
        for e in &compiled.errors {
            tracing::error!(policy = %compiled.policy.name, error = %e, "ClusterNetworkPolicy or rule cannot be compiled; it fails closed (an Accept rule matches nothing, a Deny or Pass rule denies everything; a policy that cannot be read at all denies every pod)");
        }
        Ok(Object::ClusterPolicy(compiled.policy))
    }
}

impl Watched for core::Node {
    const KIND: Kind = Kind::Node;

    fn convert(&self) -> Result<Object, String> {
        convert::cluster::node(self)
            .map(Object::Node)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_waits_only_within_the_window_of_the_last() {
        let t = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(gather_until(None, t), None, "the first update: at once");
        assert_eq!(
            gather_until(Some(t), t + ms(3)),
            Some(t + BATCH_WINDOW),
            "within the window: gathered until it ends"
        );
        assert_eq!(
            gather_until(Some(t), t + BATCH_WINDOW),
            None,
            "the window over: at once"
        );
        assert_eq!(
            gather_until(Some(t), t + ms(500)),
            None,
            "after quiet: at once"
        );
    }
}
