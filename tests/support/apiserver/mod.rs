//! A small Kubernetes API server for tests, speaking the real list and watch protocol over
//! HTTPS, so that kube-rs (and Picket's proxy on top of it) runs its real code paths.
//!
//! # What it serves
//!
//! | path                                                        | verbs                      |
//! |-------------------------------------------------------------|----------------------------|
//! | `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods`              | list, watch (+ create)     |
//! | `/api/v1/namespaces/{ns}/pods/{name}[/status]`              | get, replace, patch, delete |
//! | `/api/v1/namespaces`, `/api/v1/namespaces/{name}[/status]`  | list, watch, create, get, replace, patch, delete |
//! | `/apis/networking.k8s.io/v1/[namespaces/{ns}/]networkpolicies[/{name}]` | the same, no status |
//! | `/api/v1/[namespaces/{ns}/]secrets[/{name}]`                | the same                   |
//! | `/api/v1/[namespaces/{ns}/]serviceaccounts[/{name}]`        | the same                   |
//! | `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations[/{name}]` | the same |
//! | `/apis/authentication.k8s.io/v1/tokenreviews`               | create (see below)         |
//! | `/api/v1/namespaces/{ns}/pods/{name}/portforward`           | get (WebSocket, through a test's [`Kubelet`]) |
//! | `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}[/v1]`, `/healthz` | get           |
//!
//! Objects are stored as JSON, so every field survives a round trip. Writes take the next value
//! of one global resourceVersion counter, as etcd does, and set `uid`, `creationTimestamp` and,
//! for the kinds that have one, `generation` (bumped when the spec changes, or a webhook
//! configuration's `webhooks`); namespaces get the `kubernetes.io/metadata.name` label. Every
//! write is decoded and validated as the real server does it for the kind (`strategy.rs`): a
//! Secret's `stringData` is folded into `data` and its `type` defaults to `Opaque`, `[]byte`
//! fields must be base64 (400), a `kubernetes.io/tls` Secret needs `tls.crt` and `tls.key`, an
//! `immutable` Secret's data cannot change, webhook names are unique qualified names (422).
//! Creating an object that exists is 409 `AlreadyExists`. Clients writing over HTTP get the
//! real registry's strategies: a created pod's status is reset to `Pending`, an update keeps
//! the status (use the `status` subresource), a no-op update keeps the resourceVersion, a
//! resourceVersion in an update is a precondition (409 `Conflict`), and a namespaced object
//! needs its namespace to exist (404). A pod created over HTTP also goes through the
//! ServiceAccount admission plugin's step (`admission.rs`): `spec.serviceAccountName` defaults
//! to `default`, and, unless `automountServiceAccountToken` is false on the pod or its
//! service account, every container and init container without a mount at
//! `/var/run/secrets/kubernetes.io/serviceaccount` gets one of the pod's `kube-api-access-*`
//! projected volume, added when absent; a service account other than `default` must be
//! stored (else 403). Tests writing through [`ApiServer::apply`] play the part of the
//! controllers and kubelet instead: what they give is stored as given, status included.
//!
//! PATCH takes the patch types the clients here send (`patch.rs`): JSON patch
//! (`application/json-patch+json`, whose `test` operations are preconditions: 422 when one
//! fails) and JSON merge patch (`application/merge-patch+json`). The patched object is then
//! stored as an update, so a resourceVersion in the patch is a precondition and a patch that
//! changes nothing changes no resourceVersion.
//!
//! Lists and watches follow the "Resource versions" and "Efficient detection of changes"
//! sections of the Kubernetes API concepts (`params.rs` has the table): `resourceVersion`
//! and `resourceVersionMatch` (`NotOlderThan`, `Exact`), `limit` and `continue` with the real
//! token format (an expired token is 410 `Expired`, with an inconsistent-continue token as the
//! real server gives), `labelSelector` and `fieldSelector` (the fields each kind supports
//! upstream). Watches stream one JSON event per line; a resourceVersion older than the history
//! is an ERROR event with a 410 `Expired` Status in an HTTP 200 stream; `allowWatchBookmarks`
//! gives a BOOKMARK every [`ApiServerBuilder::bookmark_interval`]; `sendInitialEvents=true`
//! gives ADDED for every object then a BOOKMARK annotated `k8s.io/initial-events-end` (as does
//! a watch without resourceVersion or at `0`, which WatchList defaulting turns into one);
//! `timeoutSeconds` closes the stream. List items carry no `kind`/`apiVersion`, as on a
//! real server; watch event objects do.
//!
//! Requests need no credentials (there is no authorization), but bearer tokens authenticate,
//! both for TokenReview and in the request log ([`ApiServer::requests`], with each answer's
//! status code), which tests use to assert how a client talked to the server. Two sorts:
//!
//! - static tokens registered with [`ApiServer::add_token`] (and the kubeconfig's admin token):
//!   a fixed user, for any audience a review names, which it echoes;
//! - service-account tokens, issued as the TokenRequest API issues them
//!   (`tokens.rs`): [`ApiServer::issue_pod_token`] binds one to a stored pod, as the kubelet's
//!   projected `serviceAccountToken` volumes are, and
//!   [`ApiServer::issue_service_account_token`] binds one to nothing. A review answers as the
//!   real service-account authenticator: the user `system:serviceaccount:<ns>:<name>` with
//!   the service account's uid, its groups and `system:authenticated`, the pod's name and uid
//!   and the credential id (`JTI=…`) as `extra`, and as `audiences` those of the token among
//!   the requested ones; a review without `spec.audiences` checks the server's own,
//!   [`API_AUDIENCE`] (as do requests to the server, so only tokens for it show a user in the
//!   request log). Not authenticated, with the real `error`, when no audience is in common,
//!   when the token has expired (past a minute's leeway, on a clock tests move with
//!   [`ApiServer::advance_token_clock`]), when the bound pod or a stored service account is
//!   gone or was created again (another uid), and for an unknown token.
//!
//! [`ApiServer::open_watches_of`] counts the open watch streams of a kind, and
//! [`ApiServer::watch_events_sent`] the events they sent, for tests of how clients watch.
//!
//! # Faults
//!
//! [`ApiServer::drop_watches`] cuts every open watch mid-stream; [`ApiServer::drop_connections`]
//! closes every connection; [`ApiServer::refuse_connections`] resets new connections at accept;
//! [`ApiServer::compact`] forgets the history, so watches and exact lists at older
//! resourceVersions get 410 and clients must relist. [`ApiServer::barrier`] holds matching
//! requests until several have arrived, so that clients race deterministically.
//!
//! # Running it
//!
//! The server runs on its own thread and single-threaded tokio runtime, so sync and async tests
//! use it alike; dropping the [`ApiServer`] stops it. It serves on a listener the caller bound,
//! which is how tests put it inside a network namespace: bind a `std::net::TcpListener` on a
//! thread that has entered the namespace, and pass it to [`ApiServer::start`] from anywhere —
//! a socket stays in the namespace it was created in. [`ApiServer::kubeconfig`] writes a
//! kubeconfig that `kube::Config` accepts, with the CA and an admin bearer token.
//!
//! ```no_run
//! use picket_test_support::apiserver::{ApiServer, Kind};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let server = ApiServer::builder().host("10.0.0.1").start(listener).unwrap();
//! server.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n").unwrap();
//! server.kubeconfig("/tmp/kubeconfig").unwrap();
//! server.delete(Kind::Namespace, None, "shop").unwrap();
//! ```
//!
//! # Limits
//!
//! Only Pods, Namespaces, NetworkPolicies, Secrets, ServiceAccounts and
//! MutatingWebhookConfigurations (and TokenReview). JSON only (no protobuf, no table output),
//! HTTP/1.1 only. No server-side apply and no strategic merge patch (415: no client here sends
//! one), no dry run (400), no `/watch/` legacy paths, no graceful deletion (deletes are
//! immediate; a namespace's objects are deleted with it), no deletecollection, no admission but
//! the ServiceAccount step above (the webhook configurations are stored, not called), no
//! defaulting or validation beyond what is listed above (a webhook's `sideEffects` is not
//! required, for one), no authorization. Service-account tokens are issued through the Rust
//! API only (no `serviceaccounts/{name}/token` subresource, no legacy Secret-based tokens);
//! their signature is random and never checked (the server looks the whole token up); a
//! service account that is not stored is taken to exist, with a made-up uid, as the admission
//! step takes `default`; there are no nodes, so no node extras; kubelet tokens get no
//! `warnafter` extension of their lifetime. The history grows until [`ApiServer::compact`]. A
//! watch from a future resourceVersion simply waits for changes after it.

mod admission;
mod body;
mod http;
mod kind;
mod params;
mod patch;
mod portforward;
mod selectors;
mod server;
mod status;
mod store;
mod strategy;
mod tls;
mod tokens;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::{json, Value};
use tokio::sync::watch as signal;

pub use kind::Kind;
pub use portforward::Kubelet;
pub use status::ApiError;
pub use tls::TlsError;
pub use tokens::API_AUDIENCE;

use store::{Origin, Preconditions, Store};
use tokens::{Binding, Credential, ServiceAccountToken, StaticUser};

/// Namespaces every cluster has, created at start unless the builder says otherwise.
const DEFAULT_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The user the kubeconfig's token authenticates as.
const ADMIN_USER: &str = "kubernetes-admin";

/// Configures and starts an [`ApiServer`].
#[derive(Debug, Clone)]
pub struct ApiServerBuilder {
    hosts: Vec<String>,
    advertise: Option<String>,
    bookmark_interval: Duration,
    default_namespaces: bool,
}

/// A running test API server; dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct ApiServer {
    url: String,
    addr: SocketAddr,
    ca_pem: String,
    admin_token: String,
    shared: Arc<Shared>,
    shutdown: Option<signal::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, e.g. `/api/v1/pods`.
    pub path: String,
    /// The raw query string, still percent-encoded; see [`RecordedRequest::param`].
    pub query: String,
    /// The user the bearer token authenticated as, if any (service-account tokens only when
    /// valid for the server's own audience, [`API_AUDIENCE`]).
    pub user: Option<String>,
    /// The status code of the answer; `None` until the server has answered (a watch is
    /// answered 200 when its stream starts).
    pub status: Option<u16>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding, configuring the listener or starting the runtime failed.
    #[error("starting the test API server: {0}")]
    Io(#[from] io::Error),
    /// The certificates could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why [`ApiServer::apply`] failed; documents before the failing one were applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A document is not valid YAML or JSON.
    #[error("document {index}: {source}")]
    Parse {
        /// The 0-based index of the document.
        index: usize,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A document is not an object of a served kind.
    #[error("document {index}: not a served kind (apiVersion {api_version:?}, kind {kind:?})")]
    UnknownKind {
        /// The 0-based index of the document.
        index: usize,
        /// The document's `apiVersion`.
        api_version: String,
        /// The document's `kind`.
        kind: String,
    },
    /// The server refused the object (bad name, missing namespace, ...).
    #[error("{kind} {name:?}: {source}")]
    Api {
        /// The object's kind.
        kind: Kind,
        /// The object's name.
        name: String,
        /// The server's answer.
        #[source]
        source: Box<ApiError>,
    },
}

/// State shared by the Rust API and the server's tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    tokens: Mutex<HashMap<String, Credential>>,
    /// How far [`ApiServer::advance_token_clock`] has moved the tokens' clock.
    token_clock: Mutex<Duration>,
    /// Object events sent by watches, by kind, in the order of [`Kind::ALL`].
    watch_events: [AtomicU64; Kind::ALL.len()],
    requests: Mutex<RequestLog>,
    barriers: Mutex<Barriers>,
    faults: Faults,
    bookmark_interval: Duration,
    address: SocketAddr,
    /// What serves `pods/portforward`, set by [`ApiServer::set_kubelet`].
    kubelet: Mutex<Option<Kubelet>>,
}

/// The recorded requests, each with an id so that its status can be filled in later.
#[derive(Debug, Default)]
struct RequestLog {
    next_id: u64,
    entries: Vec<(u64, RecordedRequest)>,
}

/// The barriers set by [`ApiServer::barrier`] and not yet open.
#[derive(Default)]
struct Barriers {
    next_id: u64,
    waiting: Vec<Barrier>,
}

/// One barrier: how many requests it waits for, and the signal that opens it.
struct Barrier {
    id: u64,
    matches: Box<dyn Fn(&RecordedRequest) -> bool + Send + Sync>,
    parties: usize,
    arrived: usize,
    timeout: Duration,
    open: signal::Sender<bool>,
}

/// Fault-injection switches, read by the accept loop, connections and watches.
#[derive(Debug)]
struct Faults {
    refuse: AtomicBool,
    watch_drops: signal::Sender<u64>,
    connection_drops: signal::Sender<u64>,
}

// === impl ApiServerBuilder ===

impl Default for ApiServerBuilder {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            advertise: None,
            bookmark_interval: Duration::from_secs(1),
            default_namespaces: true,
        }
    }
}

impl ApiServerBuilder {
    /// Adds an IP address or DNS name to the serving certificate. The listener's own address,
    /// `127.0.0.1`, `localhost` and the `kubernetes.default.svc` names are always there.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.hosts.push(host.into());
        self
    }

    /// The host clients use in [`ApiServer::url`] and the kubeconfig (default: the listener's
    /// IP, or `127.0.0.1` for a wildcard listener). It is added to the certificate.
    pub fn advertise(mut self, host: impl Into<String>) -> Self {
        let host = host.into();
        self.hosts.push(host.clone());
        self.advertise = Some(host);
        self
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (default 1 s; real
    /// servers send one about every minute).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Starts without the `default`, `kube-system`, `kube-public` and `kube-node-lease`
    /// namespaces a real cluster has.
    pub fn without_default_namespaces(mut self) -> Self {
        self.default_namespaces = false;
        self
    }

    /// Binds `addr` on the calling thread (so in its network namespace) and starts.
    pub fn bind(self, addr: impl ToSocketAddrs) -> Result<ApiServer, StartError> {
        self.start(TcpListener::bind(addr)?)
    }

    /// Starts serving on a listener the caller bound.
    pub fn start(self, listener: TcpListener) -> Result<ApiServer, StartError> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let mut ips = vec![addr.ip()];
        ips.extend(self.hosts.iter().filter_map(|h| h.parse::<IpAddr>().ok()));
        let names: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.parse::<IpAddr>().is_err())
            .cloned()
            .collect();
        let certs = tls::Certs::generate(&ips, &names)?;

        let url_host = match &self.advertise {
            Some(host) => host.clone(),
            None if addr.ip().is_unspecified() => "127.0.0.1".to_string(),
            None => addr.ip().to_string(),
        };
        let url = match url_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{}", addr.port()),
            _ => format!("https://{url_host}:{}", addr.port()),
        };

        let mut store = Store::new();
        if self.default_namespaces {
            for name in DEFAULT_NAMESPACES {
                let ns =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                store
                    .create(Kind::Namespace, ns, None, Origin::Test)
                    .expect("the default namespaces are valid and new");
            }
        }
        let admin_token = format!("picket-test-{:016x}", random_u64());
        let mut tokens = HashMap::new();
        tokens.insert(
            admin_token.clone(),
            Credential::Static(StaticUser {
                username: ADMIN_USER.into(),
                uid: "admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
            }),
        );
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            tokens: Mutex::new(tokens),
            token_clock: Mutex::new(Duration::ZERO),
            watch_events: std::array::from_fn(|_| AtomicU64::new(0)),
            requests: Mutex::new(RequestLog::default()),
            barriers: Mutex::new(Barriers::default()),
            faults: Faults {
                refuse: AtomicBool::new(false),
                watch_drops: signal::Sender::new(0),
                connection_drops: signal::Sender::new(0),
            },
            bookmark_interval: self.bookmark_interval,
            address: addr,
            kubelet: Mutex::new(None),
        });

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config);
        let (shutdown, shutdown_rx) = signal::channel(());
        let loop_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-apiserver-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(server::accept_loop(
                    listener,
                    acceptor,
                    loop_shared,
                    shutdown_rx,
                ));
            })?;
        tracing::debug!(%url, "Test API server started");
        Ok(ApiServer {
            url,
            addr,
            ca_pem: certs.ca_pem,
            admin_token,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

// === impl ApiServer ===

impl ApiServer {
    /// A builder, for certificate names, bookmark interval and default namespaces.
    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    /// Starts with defaults on a listener the caller bound.
    pub fn start(listener: TcpListener) -> Result<Self, StartError> {
        Self::builder().start(listener)
    }

    /// Binds `addr` (e.g. `127.0.0.1:0`) and starts with defaults.
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Self, StartError> {
        Self::builder().bind(addr)
    }

    /// The URL clients use, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token of the kubeconfig's user (`kubernetes-admin`, `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kubeconfig (YAML) for the server, authenticating with `token`.
    pub fn kubeconfig_yaml_with_token(&self, token: &str) -> String {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "picket-test",
                "cluster": {
                    "server": self.url,
                    "certificate-authority-data": STANDARD.encode(&self.ca_pem),
                },
            }],
            "users": [{"name": "picket-test", "user": {"token": token}}],
            "contexts": [{
                "name": "picket-test",
                "context": {"cluster": "picket-test", "user": "picket-test", "namespace": "default"},
            }],
            "current-context": "picket-test",
            "preferences": {},
        });
        serde_yaml::to_string(&config).expect("a JSON value serialises to YAML")
    }

    /// A kubeconfig (YAML) for the server, authenticating with the admin token.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_with_token(&self.admin_token)
    }

    /// Writes [`ApiServer::kubeconfig_yaml`] to `path`.
    pub fn kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Creates or replaces every object in `text`: YAML, possibly several `---` documents, or
    /// JSON; a `kind: List` document contributes its items. Namespaces are applied first.
    /// Objects are stored as given (status included), with server-set metadata; an object
    /// without a namespace goes to `default`. Returns the stored objects in document order.
    pub fn apply(&self, text: &str) -> Result<Vec<Value>, ApplyError> {
        let mut objects = Vec::new();
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .and_then(serde_yaml::from_value::<Value>)
                .map_err(|source| ApplyError::Parse { index, source })?;
            let items = match value {
                Value::Null => continue,
                Value::Object(ref map) if map.get("kind") == Some(&json!("List")) => map
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                other => vec![other],
            };
            for item in items {
                let field = |name: &str| item.get(name).and_then(Value::as_str).unwrap_or_default();
                let kind =
                    Kind::from_type(field("apiVersion"), field("kind")).ok_or_else(|| {
                        ApplyError::UnknownKind {
                            index,
                            api_version: field("apiVersion").to_string(),
                            kind: field("kind").to_string(),
                        }
                    })?;
                objects.push((kind, item));
            }
        }
        // Namespaces first, so that one file can hold a namespace and what lives in it.
        let mut order: Vec<usize> = (0..objects.len()).collect();
        order.sort_by_key(|i| objects[*i].0 != Kind::Namespace);
        let mut applied: Vec<(usize, Value)> = Vec::new();
        for i in order {
            let (kind, value) = objects[i].clone();
            applied.push((i, self.apply_one(kind, value)?));
        }
        applied.sort_by_key(|(position, _)| *position);
        Ok(applied.into_iter().map(|(_, v)| v).collect())
    }

    fn apply_one(&self, kind: Kind, value: Value) -> Result<Value, ApplyError> {
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let namespace = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
            .to_string();
        let ns = kind.namespaced().then_some(namespace.as_str());
        let mut store = self.shared.lock_store();
        let stored = if store.get(kind, ns, &name).is_some() {
            store.replace(kind, ns, &name, value, Origin::Test, store::Part::Main)
        } else {
            store.create(kind, value, ns, Origin::Test)
        };
        stored
            .map(|obj| (*obj).clone())
            .map_err(|source| ApplyError::Api {
                kind,
                name,
                source: Box::new(source),
            })
    }

    /// Deletes an object now (`namespace` is `None` for namespaces). Deleting a namespace
    /// deletes everything in it first. Returns the object's last state.
    pub fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut store = self.shared.lock_store();
        let deleted = store.delete(kind, namespace, name, &Preconditions::default())?;
        Ok((*deleted).clone())
    }

    /// The stored object, if it exists.
    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let obj = self.shared.lock_store().get(kind, namespace, name)?;
        Some((*obj).clone())
    }

    /// Every stored object of a kind, ordered by namespace and name.
    pub fn objects(&self, kind: Kind) -> Vec<Value> {
        let all = self.shared.lock_store().all(kind);
        all.iter().map(|obj| (**obj).clone()).collect()
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock_store().rv()
    }

    /// Registers a bearer token: TokenReview then authenticates it as `username` in `groups`,
    /// for whatever audiences the review names (which it echoes), as an authentication webhook
    /// might.
    pub fn add_token(&self, token: &str, username: &str, groups: &[&str]) {
        let user = StaticUser {
            username: username.to_string(),
            uid: format!("uid-{username}"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let credential = Credential::Static(user);
        self.shared
            .lock_tokens()
            .insert(token.to_string(), credential);
    }

    /// Issues a service-account token bound to the stored pod `namespace/pod`, as the kubelet
    /// gets one through the TokenRequest API for a pod's projected `serviceAccountToken`
    /// volume: for the pod's `spec.serviceAccountName` (`default` if unset), valid for
    /// `audiences` (the API server's own, [`API_AUDIENCE`], if empty) until `expiration` from
    /// now on the tokens' clock ([`ApiServer::advance_token_clock`]). TokenReview then
    /// authenticates it with the pod's name and uid as extras while that pod exists; a pod
    /// deleted, or deleted and created again, invalidates it. See `tokens.rs` for what is
    /// checked and the exact errors.
    ///
    /// Fails with 404 when the pod does not exist, and 422 when `expiration` is under 10
    /// minutes or over 2^32 seconds (as TokenRequest validation does; to test expiry, advance
    /// the clock).
    pub fn issue_pod_token(
        &self,
        namespace: &str,
        pod: &str,
        audiences: &[&str],
        expiration: Duration,
    ) -> Result<String, ApiError> {
        self.issue_token(namespace, Binding::Pod(pod), audiences, expiration)
    }

    /// Issues a service-account token bound to no object, as `kubectl create token` gets one:
    /// like [`ApiServer::issue_pod_token`], but TokenReview gives no pod extras and no pod
    /// deletion invalidates it. Fails with 404 when the namespace does not exist.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        expiration: Duration,
    ) -> Result<String, ApiError> {
        let binding = Binding::Unbound(service_account);
        self.issue_token(namespace, binding, audiences, expiration)
    }

    fn issue_token(
        &self,
        namespace: &str,
        binding: Binding<'_>,
        audiences: &[&str],
        expiration: Duration,
    ) -> Result<String, ApiError> {
        let now = self.shared.token_now();
        let store = self.shared.lock_store();
        let token =
            ServiceAccountToken::issue(&store, namespace, binding, audiences, expiration, now)?;
        drop(store);
        let encoded = token.encode();
        self.shared
            .lock_tokens()
            .insert(encoded.clone(), Credential::ServiceAccount(token));
        Ok(encoded)
    }

    /// Moves the clock that service-account tokens are issued and checked by forward, so
    /// that tests see tokens expire: a token is rejected once this clock is more than a
    /// minute (the validator's leeway) past its expiry. Nothing else reads this clock.
    pub fn advance_token_clock(&self, by: Duration) {
        *lock(&self.shared.token_clock) += by;
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let log = self.shared.lock_requests();
        log.entries.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.lock_requests().entries.clear();
    }

    /// Polls the request log until a request satisfies `matches`, for at most `timeout`.
    pub fn wait_for_request(
        &self,
        timeout: Duration,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> Option<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.shared.lock_requests();
            if let Some((_, found)) = log.entries.iter().find(|(_, r)| matches(r)) {
                return Some(found.clone());
            }
            drop(log);
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many watch streams are open, of every kind.
    pub fn open_watches(&self) -> usize {
        self.shared.lock_store().open_watches(None)
    }

    /// How many watch streams of `kind` are open right now, all namespaces and cluster-wide
    /// paths together. A stream stops counting when it ends, whatever the reason: the client
    /// went away, `timeoutSeconds`, [`ApiServer::drop_watches`], or the server closing it as
    /// too slow.
    pub fn open_watches_of(&self, kind: Kind) -> usize {
        self.shared.lock_store().open_watches(Some(kind))
    }

    /// How many ADDED, MODIFIED and DELETED events watches of `kind` have sent so far (to
    /// the connection; not BOOKMARKs or ERRORs), over every watch since the server started.
    pub fn watch_events_sent(&self, kind: Kind) -> u64 {
        self.shared.watch_events[kind_index(kind)].load(Ordering::SeqCst)
    }

    /// Ends every open watch stream abruptly: the connection is cut without the final chunk.
    pub fn drop_watches(&self) {
        self.shared.faults.watch_drops.send_modify(|n| *n += 1);
    }

    /// Plays the kubelet's part in `pods/{name}/portforward`: `dial` connects to a port on
    /// the pod's loopback (inside its network namespace). Without one, a port-forward
    /// reports the failure on its error channel, as a kubelet that cannot dial does.
    pub fn set_kubelet(&self, dial: Kubelet) {
        *lock(&self.shared.kubelet) = Some(dial);
    }

    /// Closes every open connection, watches included.
    pub fn drop_connections(&self) {
        self.shared.faults.connection_drops.send_modify(|n| *n += 1);
    }

    /// While `refuse` is true, new connections are reset as soon as they are accepted. Open
    /// connections stay; add [`ApiServer::drop_connections`] for an outage.
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared.faults.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Makes the watch cache lag: from now on, lists at any resourceVersion
    /// (`resourceVersion=0`, what clients use to list cheaply) are served as
    /// of now, as by an API server replica whose cache is behind, until
    /// [`ApiServer::catch_up_cache`]. Quorum lists still read the newest state.
    pub fn lag_cache(&self) {
        self.shared.lock_store().freeze_cache();
    }

    /// Ends [`ApiServer::lag_cache`].
    pub fn catch_up_cache(&self) {
        self.shared.lock_store().thaw_cache();
    }

    /// Forgets the history up to now, as an etcd compaction does: watches from, and exact or
    /// continued lists at, an older resourceVersion now get 410 Expired.
    pub fn compact(&self) {
        self.shared.lock_store().compact();
    }

    /// Holds the requests that `matches` until `parties` of them have arrived, then lets them
    /// all through at once, so that clients race deterministically (two replicas both reading
    /// an object before either creates it, say). A held request waits at most `timeout`, after
    /// which the barrier opens for everyone. An open barrier is gone; later requests pass.
    /// Requests are in [`ApiServer::requests`] from their arrival, held or not.
    pub fn barrier(
        &self,
        parties: usize,
        timeout: Duration,
        matches: impl Fn(&RecordedRequest) -> bool + Send + Sync + 'static,
    ) {
        let mut barriers = lock(&self.shared.barriers);
        barriers.next_id += 1;
        let id = barriers.next_id;
        barriers.waiting.push(Barrier {
            id,
            matches: Box::new(matches),
            parties,
            arrived: 0,
            timeout,
            open: signal::Sender::new(false),
        });
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The runtime is dropped on its own thread, which cancels every connection task.
            let _ = thread.join();
        }
    }
}

// === impl RecordedRequest ===

impl RecordedRequest {
    /// A query parameter, decoded (the first one, if repeated).
    pub fn param(&self, name: &str) -> Option<String> {
        params::Query::parse(&self.query)
            .get(name)
            .map(str::to_string)
    }

    /// Whether this was a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }
}

// === impl Shared ===

impl Shared {
    fn lock_store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn kubelet(&self) -> Option<Kubelet> {
        lock(&self.kubelet).clone()
    }

    fn lock_tokens(&self) -> MutexGuard<'_, HashMap<String, Credential>> {
        lock(&self.tokens)
    }

    /// Now, on the clock of service-account tokens.
    fn token_now(&self) -> SystemTime {
        SystemTime::now() + *lock(&self.token_clock)
    }

    /// Authenticates a bearer token for the `requested` audiences (`None`: the API server's
    /// own, as for a request to it); the error is what TokenReview reports.
    pub(crate) fn authenticate(
        &self,
        token: &str,
        requested: Option<&[String]>,
    ) -> Result<tokens::Authenticated, String> {
        let credential = self.lock_tokens().get(token).cloned();
        let now = self.token_now();
        tokens::authenticate(credential.as_ref(), &self.lock_store(), now, requested)
    }

    /// Counts an object event a watch of `kind` sent.
    pub(crate) fn count_watch_event(&self, kind: Kind) {
        self.watch_events[kind_index(kind)].fetch_add(1, Ordering::SeqCst);
    }

    fn lock_requests(&self) -> MutexGuard<'_, RequestLog> {
        lock(&self.requests)
    }

    /// Appends a request to the log; returns its id for [`Shared::record_status`].
    fn record_request(&self, request: RecordedRequest) -> u64 {
        let mut log = self.lock_requests();
        log.next_id += 1;
        let id = log.next_id;
        log.entries.push((id, request));
        id
    }

    /// Fills in the status of a logged request (unless the log was cleared since).
    fn record_status(&self, id: u64, status: u16) {
        let mut log = self.lock_requests();
        if let Some((_, request)) = log.entries.iter_mut().rev().find(|(i, _)| *i == id) {
            request.status = Some(status);
        }
    }

    /// Waits at the first barrier `request` matches, if any, until it opens.
    async fn pass_barriers(&self, request: &RecordedRequest) {
        let (id, timeout, mut open) = {
            let mut barriers = lock(&self.barriers);
            let Some(i) = barriers.waiting.iter().position(|b| (b.matches)(request)) else {
                return;
            };
            let barrier = &mut barriers.waiting[i];
            barrier.arrived += 1;
            if barrier.arrived >= barrier.parties {
                let barrier = barriers.waiting.remove(i);
                barrier.open.send_replace(true);
                tracing::debug!(path = %request.path, "Barrier open");
                return;
            }
            (barrier.id, barrier.timeout, barrier.open.subscribe())
        };
        let opened = tokio::time::timeout(timeout, open.wait_for(|open| *open)).await;
        if opened.is_err() {
            tracing::debug!(path = %request.path, "Barrier timed out; opening it");
            let mut barriers = lock(&self.barriers);
            if let Some(i) = barriers.waiting.iter().position(|b| b.id == id) {
                barriers.waiting.remove(i).open.send_replace(true);
            }
        }
    }

    /// Answers a TokenReview as the real authenticator chain does (`tokens.rs`).
    fn review(&self, review: &Value) -> Result<Value, ApiError> {
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let token = spec
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::bad_request(
                "token is required for TokenReview in authentication",
            ));
        }
        let audiences: Vec<String> = spec
            .get("audiences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        // An empty `spec.audiences` means the API server's own.
        let requested = (!audiences.is_empty()).then_some(audiences.as_slice());
        let status = tokens::review_status(self.authenticate(token, requested));
        Ok(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {},
            "spec": spec,
            "status": status,
        }))
    }
}

impl std::fmt::Debug for Barriers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting: Vec<(usize, usize)> = self
            .waiting
            .iter()
            .map(|b| (b.arrived, b.parties))
            .collect();
        f.debug_struct("Barriers")
            .field("waiting (arrived, parties)", &waiting)
            .finish()
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test thread leaves the data consistent
/// (no lock is held across a partial update).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The position of `kind` in [`Kind::ALL`].
fn kind_index(kind: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in Kind::ALL")
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.finish()
}
