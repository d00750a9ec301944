//! The Kubernetes API as a state source: watches of Pods (all namespaces,
//! finished pods left out by a field selector), Namespaces and
//! NetworkPolicies, listed from the API server's watch cache.
//!
//! Objects are stripped to what the engine needs as they arrive (the
//! watchers keep no store of their own). A relist (a restart, a watch gap,
//! 410 Gone) ends with a complete snapshot of its kind, which replaces that
//! kind wholesale: objects deleted during the gap go. Events are applied in
//! batches (at most 10 ms or 1,000 events) and nothing is published until the
//! initial lists of all three kinds are in: a partial state could open pods.
//! A broken watch is retried with backoff and jitter while the last state
//! keeps being enforced; each transition is logged once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::state::{KindSnapshot, Object, ObjectRef, StateWriter};
use crate::metrics::ProxyMetrics;
use crate::policy::{convert, ObjectKey};

/// The longest a batch of events waits before it is applied.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// The most events applied in one batch.
pub const BATCH_MAX: usize = 1000;
/// Finished pods hold no IP: leave them out at the source.
pub const POD_FIELD_SELECTOR: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// The kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Pods.
    Pods,
    /// Namespaces.
    Namespaces,
    /// NetworkPolicies.
    Policies,
}

/// What a watch task hands to the state task.
#[derive(Debug)]
pub enum Update {
    /// An object was added or changed.
    Apply(Object),
    /// An object went away.
    Delete(ObjectRef),
    /// A (re)list completed: the whole kind.
    Relisted(KindSnapshot),
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

// === impl Kind ===

impl Kind {
    /// The metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Policies => "networkpolicies",
        }
    }
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

/// Starts the three watches and the state task; returns when they are spawned.
pub fn spawn(client: Client, writer: StateWriter, metrics: Arc<ProxyMetrics>) {
    let (tx, rx) = mpsc::channel(4 * BATCH_MAX);
    let cache = watcher::Config::default().any_semantic().page_size(500);
    tokio::spawn(watch_kind(
        Api::<core::Pod>::all(client.clone()),
        cache.clone().fields(POD_FIELD_SELECTOR),
        Kind::Pods,
        convert_pod,
        tx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<core::Namespace>::all(client.clone()),
        cache.clone(),
        Kind::Namespaces,
        convert_namespace,
        tx.clone(),
        metrics.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<net::NetworkPolicy>::all(client),
        cache,
        Kind::Policies,
        convert_policy,
        tx,
        metrics,
    ));
    tokio::spawn(apply_updates(rx, writer));
}

type Converted = (Option<Object>, ObjectRef);

async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    convert: fn(&K) -> Converted,
    tx: mpsc::Sender<Update>,
    metrics: Arc<ProxyMetrics>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<Vec<Object>> = None;
    let mut failing = false;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                metrics
                    .watch_restarts
                    .with_label_values(&[kind.as_str()])
                    .inc();
                if !failing {
                    tracing::warn!(kind = kind.as_str(), %error, "Watch failed; retrying with backoff, enforcing the last known state");
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            tracing::info!(kind = kind.as_str(), "Watch recovered");
            failing = false;
        }
        let update = match event {
            Event::Init => {
                relist = Some(Vec::new());
                continue;
            }
            Event::InitApply(object) => {
                if let (Some(object), _) = convert(&object) {
                    relist.get_or_insert_with(Vec::new).push(object);
                }
                continue;
            }
            Event::InitDone => {
                let objects = relist.take().unwrap_or_default();
                tracing::debug!(
                    kind = kind.as_str(),
                    objects = objects.len(),
                    "List complete"
                );
                Update::Relisted(snapshot_of(kind, objects))
            }
            Event::Apply(object) => match convert(&object) {
                (Some(object), _) => Update::Apply(object),
                // An update that cannot be read keeps the last good object:
                // dropping a policy would open the pods it isolates.
                (None, _) => continue,
            },
            Event::Delete(object) => Update::Delete(convert(&object).1),
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

fn snapshot_of(kind: Kind, objects: Vec<Object>) -> KindSnapshot {
    match kind {
        Kind::Pods => KindSnapshot::Pods(
            objects
                .into_iter()
                .filter_map(|o| match o {
                    Object::Pod(p) => Some(p),
                    _ => None,
                })
                .collect(),
        ),
        Kind::Namespaces => KindSnapshot::Namespaces(
            objects
                .into_iter()
                .filter_map(|o| match o {
                    Object::Namespace(n) => Some(n),
                    _ => None,
                })
                .collect(),
        ),
        Kind::Policies => KindSnapshot::Policies(
            objects
                .into_iter()
                .filter_map(|o| match o {
                    Object::Policy(p) => Some(p),
                    _ => None,
                })
                .collect(),
        ),
    }
}

/// Applies updates in batches; publishes only once every kind has been listed.
async fn apply_updates(mut rx: mpsc::Receiver<Update>, mut writer: StateWriter) {
    let mut listed = [false; 3];
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(update)) => batch.push(update),
                _ => break,
            }
        }
        for update in batch {
            match update {
                Update::Apply(object) => writer.apply(object),
                Update::Delete(reference) => writer.delete(&reference),
                Update::Relisted(snapshot) => {
                    let i = match &snapshot {
                        KindSnapshot::Pods(_) => 0,
                        KindSnapshot::Namespaces(_) => 1,
                        KindSnapshot::Policies(_) => 2,
                    };
                    writer.replace_all(snapshot);
                    listed[i] = true;
                }
            }
        }
        if listed.iter().all(|l| *l) && writer.commit() {
            tracing::debug!("Cluster state committed");
        }
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn convert_pod(pod: &core::Pod) -> Converted {
    let reference = ObjectRef::Pod(key_of(&pod.metadata));
    match convert::pod(pod) {
        Ok(p) => (Some(Object::Pod(p)), reference),
        Err(e) => {
            tracing::error!(pod = ?reference, error = %e, "Pod cannot be read; ignoring it");
            (None, reference)
        }
    }
}

fn convert_namespace(ns: &core::Namespace) -> Converted {
    let reference = ObjectRef::Namespace(ns.metadata.name.clone().unwrap_or_default());
    match convert::namespace(ns) {
        Ok(n) => (Some(Object::Namespace(n)), reference),
        Err(e) => {
            tracing::error!(namespace = ?reference, error = %e, "Namespace cannot be read; ignoring it");
            (None, reference)
        }
    }
}

fn convert_policy(np: &net::NetworkPolicy) -> Converted {
    let key = key_of(&np.metadata);
    let reference = ObjectRef::Policy(key.clone());
    match convert::policy(np) {
        Ok(compiled) => {
            for e in &compiled.errors {
                tracing::error!(policy = %key, error = %e, "Rule cannot be compiled; its policy isolates and allows nothing through it");
            }
            (Some(Object::Policy(compiled.policy)), reference)
        }
        Err(e) => {
            tracing::error!(policy = %key, error = %e, "NetworkPolicy cannot be read; ignoring it");
            (None, reference)
        }
    }
}
