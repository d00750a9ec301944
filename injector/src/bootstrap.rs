//! The shared certificate: one Secret holds the CA and the serving
//! certificate so that every replica serves the same one, and the CA goes
//! into our MutatingWebhookConfiguration's `caBundle`.
//!
//! ```text
//!  replica ─► get Secret ─┬─ found ───────────────────────────► serve it
//!                         └─ absent ─► generate ─► create ─┬─ created ─► serve it
//!                                                          └─ 409 ─► get again (another replica won)
//!  then: caBundle of each webhook ≠ CA ?  ─► patch (only the webhooks that differ)
//! ```
//!
//! The logic is generic over two small store traits; [`KubeSecrets`] and
//! [`KubeWebhooks`] implement them with kube `Api` calls (RBAC: get/create on
//! Secrets in our namespace, get/patch on our webhook configuration by
//! `resourceNames`). `app.rs` runs [`ensure_secret`] at startup and
//! [`sync`] periodically.

use std::collections::BTreeMap;
use std::future::Future;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use thiserror::Error;

use crate::certs::{CertBundle, CertError};

/// Secret key of the CA certificate.
pub const CA_CERT_KEY: &str = "ca.crt";
/// Secret key of the CA's private key.
pub const CA_KEY_KEY: &str = "ca.key";
/// Secret key of the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// Secret key of the serving key.
pub const KEY_KEY: &str = "tls.key";

/// Whether a create made the object or found it made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    Created,
    /// It already existed (409 Conflict).
    AlreadyExists,
}

/// Where the serving certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from an existing Secret.
    Existing,
    /// Generated and stored by this replica.
    Generated,
}

/// A failed store operation or an unusable stored certificate.
#[derive(Debug, Error)]
pub enum BootstrapError {
    /// The API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but lacks a key or holds non-UTF-8 data.
    #[error("secret {name}: {message} (delete it to have a new one generated)")]
    InvalidSecret {
        /// The Secret's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// No certificate could be generated.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The Secret kept appearing and disappearing.
    #[error("secret {0} neither readable nor creatable after several attempts")]
    Unsettled(String),
    /// The webhook configuration kept changing under our patch's preconditions.
    #[error("mutatingwebhookconfiguration {0} kept changing while its caBundle was patched")]
    Contended(String),
}

/// A webhook whose `caBundle` differs from ours, as read: the patch's
/// preconditions (its position and name, and the bundle it held).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleWebhook {
    /// Its index in `webhooks`.
    pub index: usize,
    /// Its name.
    pub name: String,
    /// The `caBundle` it held (PEM bytes; empty when unset).
    pub ca_bundle: Vec<u8>,
}

/// What a conditional update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Updated {
    /// Applied.
    Done,
    /// A precondition failed: the object changed since it was read.
    Conflict,
}

/// Where the shared certificate is kept.
pub trait SecretStore: Send + Sync {
    /// The Secret's name, for messages.
    fn name(&self) -> &str;
    /// The stored bundle, if the Secret exists.
    fn get(&self) -> impl Future<Output = Result<Option<CertBundle>, BootstrapError>> + Send;
    /// Stores a bundle unless the Secret already exists.
    fn create(
        &self,
        bundle: &CertBundle,
    ) -> impl Future<Output = Result<Created, BootstrapError>> + Send;
}

/// Our webhook configuration's `caBundle`s.
pub trait WebhookStore: Send + Sync {
    /// Each webhook's name and `caBundle` (PEM bytes; empty when unset).
    fn ca_bundles(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, BootstrapError>> + Send;
    /// Sets the `caBundle` of these webhooks, provided each still stands
    /// where it was read, with the bundle it held (optimistic concurrency).
    fn set_ca_bundle(
        &self,
        stale: &[StaleWebhook],
        ca_pem: &[u8],
    ) -> impl Future<Output = Result<Updated, BootstrapError>> + Send;
}

/// Secrets through the API.
#[derive(Clone)]
pub struct KubeSecrets {
    api: Api<Secret>,
    name: String,
}

/// The MutatingWebhookConfiguration through the API.
#[derive(Clone)]
pub struct KubeWebhooks {
    api: Api<MutatingWebhookConfiguration>,
    name: String,
}

// === logic ===

/// Reads the shared Secret, or creates it with `generate()` if absent; on a
/// conflict, reads the one another replica created.
pub async fn ensure_secret<S: SecretStore>(
    store: &S,
    generate: impl Fn() -> Result<CertBundle, CertError>,
) -> Result<(CertBundle, Origin), BootstrapError> {
    for _ in 0..5 {
        if let Some(bundle) = store.get().await? {
            return Ok((bundle, Origin::Existing));
        }
        let bundle = generate()?;
        match store.create(&bundle).await? {
            Created::Created => {
                tracing::info!(secret = store.name(), "Created the certificate Secret");
                return Ok((bundle, Origin::Generated));
            }
            Created::AlreadyExists => {
                tracing::info!(
                    secret = store.name(),
                    "Another replica created the certificate Secret; reading it"
                );
            }
        }
    }
    Err(BootstrapError::Unsettled(store.name().to_string()))
}

/// Sets `caBundle` on the webhooks where it differs from `ca_pem`; returns
/// their names. The patch holds only if the configuration did not change
/// since it was read; if it did (another replica, an operator), it is read
/// again, a few times.
pub async fn ensure_ca_bundle<W: WebhookStore>(
    store: &W,
    ca_pem: &str,
) -> Result<Vec<String>, BootstrapError> {
    for _ in 0..5 {
        let stale: Vec<StaleWebhook> = store
            .ca_bundles()
            .await?
            .into_iter()
            .enumerate()
            .filter(|(_, (_, bundle))| bundle.as_slice() != ca_pem.as_bytes())
            .map(|(index, (name, ca_bundle))| StaleWebhook {
                index,
                name,
                ca_bundle,
            })
            .collect();
        let names: Vec<String> = stale.iter().map(|w| w.name.clone()).collect();
        if stale.is_empty() {
            return Ok(names);
        }
        match store.set_ca_bundle(&stale, ca_pem.as_bytes()).await? {
            Updated::Done => {
                tracing::info!(webhooks = ?names, "Patched caBundle");
                return Ok(names);
            }
            Updated::Conflict => {
                tracing::info!(webhooks = ?names, "The webhook configuration changed since it was read; reading it again");
            }
        }
    }
    Err(BootstrapError::Contended(
        "the webhook configuration".into(),
    ))
}

/// One round of both: the bundle to serve, and the webhooks patched.
pub async fn sync<S: SecretStore, W: WebhookStore>(
    secrets: &S,
    webhooks: &W,
    generate: impl Fn() -> Result<CertBundle, CertError>,
) -> Result<(CertBundle, Origin, Vec<String>), BootstrapError> {
    let (bundle, origin) = ensure_secret(secrets, generate).await?;
    let patched = ensure_ca_bundle(webhooks, &bundle.ca_cert_pem).await?;
    Ok((bundle, origin, patched))
}

// === impl KubeSecrets ===

impl KubeSecrets {
    /// The Secret `name` in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        KubeSecrets {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
        }
    }

    fn decode(&self, secret: Secret) -> Result<CertBundle, BootstrapError> {
        let data = secret.data.unwrap_or_default();
        let get = |key: &str| {
            let bytes = data.get(key).ok_or_else(|| BootstrapError::InvalidSecret {
                name: self.name.clone(),
                message: format!("no key {key}"),
            })?;
            String::from_utf8(bytes.0.clone()).map_err(|_| BootstrapError::InvalidSecret {
                name: self.name.clone(),
                message: format!("{key} is not UTF-8 PEM"),
            })
        };
        Ok(CertBundle {
            ca_cert_pem: get(CA_CERT_KEY)?,
            ca_key_pem: get(CA_KEY_KEY)?,
            cert_pem: get(CERT_KEY)?,
            key_pem: get(KEY_KEY)?,
        })
    }
}

impl SecretStore for KubeSecrets {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self) -> Result<Option<CertBundle>, BootstrapError> {
        let secret = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|source| BootstrapError::Api {
                what: format!("get secret {}", self.name),
                source,
            })?;
        secret.map(|s| self.decode(s)).transpose()
    }

    async fn create(&self, bundle: &CertBundle) -> Result<Created, BootstrapError> {
        let data = BTreeMap::from([
            (CA_CERT_KEY, &bundle.ca_cert_pem),
            (CA_KEY_KEY, &bundle.ca_key_pem),
            (CERT_KEY, &bundle.cert_pem),
            (KEY_KEY, &bundle.key_pem),
        ])
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_string(),
                    "picket-injector".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Secret::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Created::Created),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::AlreadyExists),
            Err(source) => Err(BootstrapError::Api {
                what: format!("create secret {}", self.name),
                source,
            }),
        }
    }
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecrets")
            .field("name", &self.name)
            .finish()
    }
}

// === impl KubeWebhooks ===

impl KubeWebhooks {
    /// The MutatingWebhookConfiguration `name`.
    pub fn new(client: kube::Client, name: &str) -> Self {
        KubeWebhooks {
            api: Api::all(client),
            name: name.to_string(),
        }
    }
}

impl WebhookStore for KubeWebhooks {
    async fn ca_bundles(&self) -> Result<Vec<(String, Vec<u8>)>, BootstrapError> {
        let config = self
            .api
            .get(&self.name)
            .await
            .map_err(|source| BootstrapError::Api {
                what: format!("get mutatingwebhookconfiguration {}", self.name),
                source,
            })?;
        Ok(config
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|w| {
                (
                    w.name,
                    w.client_config.ca_bundle.map(|b| b.0).unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn set_ca_bundle(
        &self,
        stale: &[StaleWebhook],
        ca_pem: &[u8],
    ) -> Result<Updated, BootstrapError> {
        let patch = ca_bundle_patch(stale, ca_pem);
        let patched = self
            .api
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await;
        match patched {
            Ok(_) => Ok(Updated::Done),
            // A `test` that failed: the configuration changed since it was read.
            Err(kube::Error::Api(status)) if status.code == 422 => Ok(Updated::Conflict),
            Err(source) => Err(BootstrapError::Api {
                what: format!("patch mutatingwebhookconfiguration {}", self.name),
                source,
            }),
        }
    }
}

/// The JSON patch that sets `ca_pem` on the stale webhooks: for each, a
/// `test` of its name at its index and of the bundle it held, then the new
/// bundle. (An unset bundle cannot be tested for absence: racing replicas
/// then write the same bundle, from the one shared Secret.)
pub fn ca_bundle_patch(stale: &[StaleWebhook], ca_pem: &[u8]) -> json_patch::Patch {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut ops = Vec::new();
    for webhook in stale {
        let at = format!("/webhooks/{}", webhook.index);
        ops.push(
            serde_json::json!({"op": "test", "path": format!("{at}/name"), "value": webhook.name}),
        );
        let bundle = format!("{at}/clientConfig/caBundle");
        if webhook.ca_bundle.is_empty() {
            ops.push(serde_json::json!({"op": "add", "path": bundle, "value": b64(ca_pem)}));
        } else {
            ops.push(
                serde_json::json!({"op": "test", "path": bundle, "value": b64(&webhook.ca_bundle)}),
            );
            ops.push(serde_json::json!({"op": "replace", "path": bundle, "value": b64(ca_pem)}));
        }
    }
    serde_json::from_value(serde_json::Value::Array(ops))
        .expect("JSON patch operations are well formed")
}

impl std::fmt::Debug for KubeWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWebhooks")
            .field("name", &self.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use super::*;
    use crate::certs;

    /// A Secret store where the first `blind_reads` reads see nothing, so
    /// that two replicas both try to create.
    #[derive(Default)]
    struct MemSecrets {
        stored: Mutex<Option<CertBundle>>,
        blind_reads: AtomicUsize,
        creates: AtomicUsize,
    }

    impl SecretStore for MemSecrets {
        fn name(&self) -> &str {
            "picket-injector-tls"
        }
        async fn get(&self) -> Result<Option<CertBundle>, BootstrapError> {
            tokio::task::yield_now().await;
            let blind = self
                .blind_reads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if blind {
                return Ok(None);
            }
            Ok(self.stored.lock().unwrap().clone())
        }
        async fn create(&self, bundle: &CertBundle) -> Result<Created, BootstrapError> {
            tokio::task::yield_now().await;
            self.creates.fetch_add(1, Ordering::SeqCst);
            let mut stored = self.stored.lock().unwrap();
            if stored.is_some() {
                return Ok(Created::AlreadyExists);
            }
            *stored = Some(bundle.clone());
            Ok(Created::Created)
        }
    }

    #[derive(Default)]
    struct MemWebhooks {
        bundles: Mutex<Vec<(String, Vec<u8>)>>,
        patches: AtomicUsize,
    }

    impl WebhookStore for MemWebhooks {
        async fn ca_bundles(&self) -> Result<Vec<(String, Vec<u8>)>, BootstrapError> {
            Ok(self.bundles.lock().unwrap().clone())
        }
        async fn set_ca_bundle(
            &self,
            stale: &[StaleWebhook],
            ca: &[u8],
        ) -> Result<Updated, BootstrapError> {
            self.patches.fetch_add(1, Ordering::SeqCst);
            let mut bundles = self.bundles.lock().unwrap();
            let holds = stale.iter().all(|w| {
                bundles
                    .get(w.index)
                    .is_some_and(|(name, bundle)| *name == w.name && *bundle == w.ca_bundle)
            });
            if !holds {
                return Ok(Updated::Conflict);
            }
            for w in stale {
                bundles[w.index].1 = ca.to_vec();
            }
            Ok(Updated::Done)
        }
    }

    fn generate() -> Result<CertBundle, CertError> {
        certs::generate(
            &["picket-injector.picket-system.svc".into()],
            SystemTime::now(),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_replicas_racing_serve_the_same_certificate() {
        let store = Arc::new(MemSecrets {
            blind_reads: AtomicUsize::new(2),
            ..MemSecrets::default()
        });
        let (a, b) = tokio::join!(
            ensure_secret(&*store, generate),
            ensure_secret(&*store, generate)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            store.creates.load(Ordering::SeqCst),
            2,
            "both tried to create"
        );
        assert_eq!(a.0, b.0, "replicas serve different certificates");
        let mut origins = [a.1, b.1];
        origins.sort_by_key(|o| *o == Origin::Generated);
        assert_eq!(origins, [Origin::Existing, Origin::Generated]);
        // A later start reads the stored one without creating.
        let (c, origin) = ensure_secret(&*store, generate).await.unwrap();
        assert_eq!((c, origin), (a.0, Origin::Existing));
        assert_eq!(store.creates.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ca_bundle_is_patched_only_where_it_differs() {
        let ca = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let hooks = MemWebhooks {
            bundles: Mutex::new(vec![
                ("pods.picket.io".into(), Vec::new()),
                ("other.picket.io".into(), ca.as_bytes().to_vec()),
            ]),
            ..MemWebhooks::default()
        };
        let patched = ensure_ca_bundle(&hooks, ca).await.unwrap();
        assert_eq!(patched, ["pods.picket.io"]);
        assert_eq!(hooks.patches.load(Ordering::SeqCst), 1);
        let patched = ensure_ca_bundle(&hooks, ca).await.unwrap();
        assert!(patched.is_empty());
        assert_eq!(
            hooks.patches.load(Ordering::SeqCst),
            1,
            "patched when equal"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_patch_over_a_changed_configuration_reads_it_again() {
        let ca = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
        // Read: one webhook with an old bundle. Before the patch lands, an
        // operator inserts another webhook in front: the index moved.
        struct Moving(MemWebhooks, AtomicUsize);
        impl WebhookStore for Moving {
            async fn ca_bundles(&self) -> Result<Vec<(String, Vec<u8>)>, BootstrapError> {
                self.0.ca_bundles().await
            }
            async fn set_ca_bundle(
                &self,
                stale: &[StaleWebhook],
                ca: &[u8],
            ) -> Result<Updated, BootstrapError> {
                if self.1.fetch_add(1, Ordering::SeqCst) == 0 {
                    let mut bundles = self.0.bundles.lock().unwrap();
                    bundles.insert(0, ("new.example.io".into(), ca.to_vec()));
                }
                self.0.set_ca_bundle(stale, ca).await
            }
        }
        let hooks = Moving(
            MemWebhooks {
                bundles: Mutex::new(vec![("pods.picket.io".into(), b"old".to_vec())]),
                ..MemWebhooks::default()
            },
            AtomicUsize::new(0),
        );
        let patched = ensure_ca_bundle(&hooks, ca).await.unwrap();
        assert_eq!(patched, ["pods.picket.io"]);
        assert_eq!(
            hooks.0.patches.load(Ordering::SeqCst),
            2,
            "a conflict, then a patch"
        );
        let bundles = hooks.0.bundles.lock().unwrap().clone();
        assert!(
            bundles.iter().all(|(_, b)| b == ca.as_bytes()),
            "{bundles:?}"
        );
    }

    #[test]
    fn the_patch_tests_the_name_and_the_old_bundle_before_writing() {
        let stale = [
            StaleWebhook {
                index: 0,
                name: "a.picket.io".into(),
                ca_bundle: Vec::new(),
            },
            StaleWebhook {
                index: 2,
                name: "c.picket.io".into(),
                ca_bundle: b"old".to_vec(),
            },
        ];
        let patch = serde_json::to_value(ca_bundle_patch(&stale, b"new")).unwrap();
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "a.picket.io"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "bmV3"},
                {"op": "test", "path": "/webhooks/2/name", "value": "c.picket.io"},
                {"op": "test", "path": "/webhooks/2/clientConfig/caBundle", "value": "b2xk"},
                {"op": "replace", "path": "/webhooks/2/clientConfig/caBundle", "value": "bmV3"},
            ])
        );
    }
}
