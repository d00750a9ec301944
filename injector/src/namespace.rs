//! Namespace labels and annotations: the webhook receives only the pod, so
//! what the patch needs of its namespace (the Pod Security level, a label;
//! whether pods may opt out, an annotation) is read from the API (cached).
//!
//! I/O behind a trait: the server holds an `Arc<dyn NamespaceLookup>`;
//! [`KubeNamespaces`] reads the API, [`NoNamespaces`] (tests, or clusters
//! without Pod Security labels) answers "no labels, no annotations".

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use thiserror::Error;

/// Labels (or annotations) of a namespace.
pub type Labels = BTreeMap<String, String>;

/// What the injector reads of a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    /// Its labels (the Pod Security level).
    pub labels: Labels,
    /// Its annotations (whether its pods may opt out).
    pub annotations: Labels,
}

/// A boxed future, so the trait can be used as `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A namespace could not be read.
#[derive(Debug, Error)]
#[error("cannot read namespace {namespace}: {source}")]
pub struct LookupError {
    /// The namespace.
    pub namespace: String,
    /// Why.
    #[source]
    pub source: kube::Error,
}

/// Where the server gets a namespace's labels and annotations.
pub trait NamespaceLookup: Send + Sync + std::fmt::Debug {
    /// The labels and annotations of `namespace`; empty when it has none or does not exist.
    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Arc<NamespaceMeta>, LookupError>>;
}

/// Answers "no labels, no annotations" for every namespace: no Pod Security
/// check, and no pod may opt out.
#[derive(Debug, Default)]
pub struct NoNamespaces;

/// Reads namespaces from the API, caching each for a while.
#[derive(Debug)]
pub struct KubeNamespaces {
    api: Api<Namespace>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Arc<NamespaceMeta>)>>,
}

// === impl NoNamespaces ===

impl NamespaceLookup for NoNamespaces {
    fn lookup<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Arc<NamespaceMeta>, LookupError>> {
        Box::pin(async { Ok(Arc::new(NamespaceMeta::default())) })
    }
}

// === impl KubeNamespaces ===

impl KubeNamespaces {
    /// Reads through `client`, keeping answers for `ttl`.
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        KubeNamespaces {
            api: Api::all(client),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, namespace: &str, fresh_only: bool) -> Option<Arc<NamespaceMeta>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, labels) = cache.get(namespace)?;
        (!fresh_only || at.elapsed() < self.ttl).then(|| labels.clone())
    }
}

impl NamespaceLookup for KubeNamespaces {
    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Arc<NamespaceMeta>, LookupError>> {
        Box::pin(async move {
            if let Some(labels) = self.cached(namespace, true) {
                return Ok(labels);
            }
            // A full get rather than a metadata-only one: namespaces are small,
            // and every API server (and test server) answers it.
            match self.api.get_opt(namespace).await {
                Ok(found) => {
                    let metadata = found.map(|ns| ns.metadata).unwrap_or_default();
                    let labels = Arc::new(NamespaceMeta {
                        labels: metadata.labels.unwrap_or_default(),
                        annotations: metadata.annotations.unwrap_or_default(),
                    });
                    let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() > 10_000 {
                        cache.clear();
                    }
                    cache.insert(namespace.to_string(), (Instant::now(), labels.clone()));
                    Ok(labels)
                }
                Err(source) => {
                    // A stale answer beats none: namespaces rarely change.
                    if let Some(labels) = self.cached(namespace, false) {
                        tracing::warn!(namespace, error = %source, "Namespace lookup failed; using the cached answer");
                        return Ok(labels);
                    }
                    Err(LookupError {
                        namespace: namespace.to_string(),
                        source,
                    })
                }
            }
        })
    }
}
