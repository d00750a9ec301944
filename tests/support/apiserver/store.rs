//! The object store: current objects, the history of changes, one global resourceVersion
//! counter (as etcd has), and the registered watchers.
//!
//! Synchronous: the server keeps it behind a `std::sync::Mutex` and never holds the lock across
//! an await. Writes record a [`Change`] in the history and push it to every watcher of its kind
//! while the lock is held, so a watcher sees changes in resourceVersion order and none twice.
//!
//! ```text
//!   write ──▶ objects (kind ▶ "ns/name" ▶ object)      list: current objects, or undo the
//!        └──▶ history (changes with rv > compacted)     history back to an older rv
//!        └──▶ watchers (bounded queues, one per watch)  watch: history backlog, then queue
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use super::admission;
use super::kind::Kind;
use super::patch::Patch;
use super::selectors::Selectors;
use super::status::ApiError;
use super::strategy;

/// How many changes a watcher may have queued before the server closes it as too slow
/// (the real watch cache closes unresponsive watchers the same way).
const WATCH_QUEUE: usize = 10_000;

/// One recorded write.
#[derive(Debug)]
pub(crate) struct Change {
    /// The resourceVersion this write produced.
    pub rv: u64,
    pub kind: Kind,
    /// `namespace/name`, or `name` for cluster-scoped kinds.
    pub key: String,
    pub change: ChangeType,
    /// The new state; for a deletion, the last state carrying the deletion's resourceVersion.
    pub object: Arc<Value>,
    /// The state before this write, if there was one.
    pub prev: Option<Arc<Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// Who is writing: clients over HTTP get the API server's strategies (a pod's status is reset on
/// create and kept on update, as the real registry does); tests store exactly what they give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Client,
    Test,
}

/// Which part of an object an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// Every object, by kind, then by key.
type Objects = BTreeMap<Kind, BTreeMap<String, Arc<Value>>>;

/// At which resourceVersion a list reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadAt {
    /// The newest state (a quorum read).
    Latest,
    /// Any state (`resourceVersion=0`): the watch cache's, which is the
    /// newest unless a test made the cache lag ([`Store::freeze_cache`]).
    Cache,
    /// The state at exactly this resourceVersion.
    Exact(u64),
    /// A page after the first, from a continue token.
    Continue(ContinueToken),
}

/// A list request, validated.
#[derive(Debug, Clone)]
pub(crate) struct ListRequest {
    pub namespace: Option<String>,
    pub selectors: Selectors,
    pub limit: Option<usize>,
    pub read: ReadAt,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub rv: u64,
    pub items: Vec<Arc<Value>>,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// The position a paged list continues from, encoded as the real server encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContinueToken {
    /// The resourceVersion of the first page; -1 continues at the newest state.
    pub rv: i64,
    /// The first key of the next page.
    pub start: String,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// Send every current object as ADDED first.
    CurrentState,
    /// Send the changes strictly after this resourceVersion.
    After(u64),
    /// Send the changes from now on.
    Now,
}

/// A registered watch: what to send first, then the queue of later changes.
#[derive(Debug)]
pub(crate) struct WatchStart {
    /// The resourceVersion the watch is synchronised at.
    pub rv: u64,
    /// Current objects to send as ADDED (for [`WatchFrom::CurrentState`]).
    pub initial: Vec<Arc<Value>>,
    /// Changes from the history to send first (for [`WatchFrom::After`]).
    pub backlog: Vec<Arc<Change>>,
    pub queue: mpsc::Receiver<Arc<Change>>,
}

/// The store; see the module documentation.
#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    /// History holds every change with `rv > compacted`.
    compacted: u64,
    objects: Objects,
    history: VecDeque<Arc<Change>>,
    watchers: Vec<(Kind, mpsc::Sender<Arc<Change>>)>,
    rv_tx: watch::Sender<u64>,
    seed: u64,
    counter: u64,
    /// A lagging watch cache: lists at any resourceVersion are served from
    /// this copy of every object, taken at its resourceVersion.
    lagging_cache: Option<(u64, Objects)>,
}

// === impl Store ===

impl Store {
    /// An empty store at resourceVersion 1.
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Self {
            rv: 1,
            compacted: 1,
            objects: Kind::ALL.iter().map(|k| (*k, BTreeMap::new())).collect(),
            history: VecDeque::new(),
            watchers: Vec::new(),
            rv_tx: watch::Sender::new(1),
            seed: nanos ^ (u64::from(std::process::id()) << 32),
            counter: 0,
            lagging_cache: None,
        }
    }

    /// The newest resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// A receiver of the newest resourceVersion, to wait for the store to reach one.
    pub(crate) fn rv_watch(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    /// Forgets the history: watches and lists at older resourceVersions now get 410 Expired.
    /// From now on, lists at any resourceVersion (`resourceVersion=0`) are
    /// served as of now, as a watch cache on a lagging API server replica
    /// would, until [`Store::thaw_cache`].
    pub(crate) fn freeze_cache(&mut self) {
        self.lagging_cache = Some((self.rv, self.objects.clone()));
    }

    /// Lists at any resourceVersion are served from the newest state again.
    pub(crate) fn thaw_cache(&mut self) {
        self.lagging_cache = None;
    }

    pub(crate) fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    pub(crate) fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<Value>> {
        self.map(kind).get(&key(kind, namespace, name)).cloned()
    }

    /// Every current object of a kind, in key order.
    pub(crate) fn all(&self, kind: Kind) -> Vec<Arc<Value>> {
        self.map(kind).values().cloned().collect()
    }

    /// Creates an object; `url_namespace` is the namespace of the request path, if any.
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        body: Value,
        url_namespace: Option<&str>,
        origin: Origin,
    ) -> Result<Arc<Value>, ApiError> {
        let mut obj = check_type(kind, body)?;
        strategy::decode(kind, &mut obj)?;
        let namespace = self.resolve_namespace(kind, &mut obj, url_namespace)?;
        let name = match meta_str(&obj, "name") {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match meta_str(&obj, "generateName") {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{}", self.random_suffix());
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                    name
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind.name(),
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        validate_name(kind, &name)?;
        strategy::validate(kind, &obj, None)?;
        if let Some(ns) = &namespace {
            if self.get(Kind::Namespace, None, ns).is_none() {
                return Err(ApiError::not_found(Kind::Namespace, ns));
            }
            if kind == Kind::Pod && origin == Origin::Client {
                self.admit_pod(&mut obj, ns, &name)?;
            }
        }
        let key = key(kind, namespace.as_deref(), &name);
        if self.map(kind).contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }

        let rv = self.rv + 1;
        let uid = self.uid();
        let meta = meta_mut(&mut obj);
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(rfc3339_now()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        for server_owned in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(server_owned);
        }
        if !kind.generation_fields().is_empty() {
            meta.insert("generation".into(), json!(1));
        }
        strategy::prepare_for_create(kind, &mut obj, origin);
        Ok(self.record(kind, key, ChangeType::Added, obj, None))
    }

    /// The ServiceAccount admission plugin's step on a client's pod create (`admission.rs`).
    fn admit_pod(&mut self, pod: &mut Value, namespace: &str, name: &str) -> Result<(), ApiError> {
        let account = admission::service_account_name(pod);
        let stored = self.get(Kind::ServiceAccount, Some(namespace), &account);
        let service_account = (account.as_str(), stored.as_deref());
        admission::mount_token(pod, namespace, name, service_account, || {
            self.random_suffix()
        })
    }

    /// Replaces an object, or its status. A resourceVersion in the body is a precondition.
    /// An update that changes nothing stores nothing and keeps the resourceVersion, as etcd's
    /// guaranteed update does.
    pub(crate) fn replace(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        origin: Origin,
        part: Part,
    ) -> Result<Arc<Value>, ApiError> {
        let mut obj = check_type(kind, body)?;
        if part == Part::Main {
            strategy::decode(kind, &mut obj)?;
        }
        let body_name = meta_str(&obj, "name").unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let namespace = self.resolve_namespace(kind, &mut obj, namespace)?;
        let key = key(kind, namespace.as_deref(), name);
        let Some(old) = self.map(kind).get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        let old_rv = meta_str(&old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        match meta_str(&obj, "resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != old_rv && origin == Origin::Client => {
                return Err(ApiError::conflict(
                    kind,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            _ => {}
        }

        let mut new = match (origin, part) {
            (_, Part::Status) => {
                let mut new = (*old).clone();
                new["status"] = obj.get("status").cloned().unwrap_or_else(|| json!({}));
                new
            }
            (Origin::Client, Part::Main) => {
                strategy::keep_on_client_update(kind, &mut obj, &old);
                obj
            }
            (Origin::Test, Part::Main) => obj,
        };
        let meta = meta_mut(&mut new);
        for kept in ["uid", "creationTimestamp", "generation"] {
            match old.pointer(&format!("/metadata/{kept}")) {
                Some(v) => meta.insert(kept.into(), v.clone()),
                None => meta.remove(kept),
            };
        }
        meta.insert("resourceVersion".into(), json!(old_rv));
        strategy::prepare_for_update(kind, &mut new);
        let fields = kind.generation_fields();
        if fields.iter().any(|f| new.get(f) != old.get(f)) {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64);
            meta_mut(&mut new).insert("generation".into(), json!(generation.unwrap_or(0) + 1));
        }
        if new == *old {
            return Ok(old);
        }
        strategy::validate(kind, &new, Some(&old))?;
        meta_mut(&mut new).insert("resourceVersion".into(), json!((self.rv + 1).to_string()));
        Ok(self.record(kind, key, ChangeType::Modified, new, Some(old)))
    }

    /// Patches an object, or its status, as a client does: the patch applies to the stored
    /// object, and the result is an update (so a resourceVersion the patch sets is a
    /// precondition, and a patch that changes nothing stores nothing).
    pub(crate) fn patch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Patch,
        part: Part,
    ) -> Result<Arc<Value>, ApiError> {
        let namespace = if kind.namespaced() { namespace } else { None };
        let Some(current) = self.get(kind, namespace, name) else {
            return Err(ApiError::not_found(kind, name));
        };
        let patched = patch.apply(kind, &current)?;
        self.replace(kind, namespace, name, patched, Origin::Client, part)
    }

    /// Deletes an object at once (no graceful deletion). Deleting a namespace first deletes
    /// every object in it, each with its own DELETED event.
    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Arc<Value>, ApiError> {
        let namespace = if kind.namespaced() { namespace } else { None };
        let key = key(kind, namespace, name);
        let Some(old) = self.map(kind).get(&key).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        preconditions.check(kind, name, &old)?;
        if kind == Kind::Namespace {
            for inner in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                let prefix = format!("{name}/");
                let keys: Vec<String> = self
                    .map(inner)
                    .range::<String, _>(&prefix..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.remove(inner, k);
                }
            }
        }
        Ok(self.remove(kind, key))
    }

    /// One page of a list, at the resourceVersion the request asks for.
    pub(crate) fn list(&self, kind: Kind, req: &ListRequest) -> Result<ListPage, ApiError> {
        if let (ReadAt::Cache, Some((rv, objects))) = (&req.read, &self.lagging_cache) {
            return Ok(self.page(kind, req, *rv, String::new(), &objects[&kind]));
        }
        let (rv, start) = match &req.read {
            ReadAt::Latest | ReadAt::Cache => (self.rv, String::new()),
            ReadAt::Exact(rv) => {
                self.check_not_compacted(*rv)?;
                (*rv, String::new())
            }
            ReadAt::Continue(token) => {
                if token.rv == -1 {
                    (self.rv, token.start.clone())
                } else {
                    let rv = u64::try_from(token.rv).unwrap_or(0);
                    if rv > self.rv {
                        return Err(ApiError::bad_request(
                            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                        ));
                    }
                    if rv < self.compacted {
                        let inconsistent = ContinueToken {
                            rv: -1,
                            start: token.start.clone(),
                        };
                        return Err(ApiError::expired_continue(
                            "The provided continue parameter is too old to display a consistent list result. \
                             You can start a new list without the continue parameter, or use the continue token \
                             in this response to retrieve the remainder of the results. Continuing with the \
                             provided token results in an inconsistent list - objects that were created, \
                             modified, or deleted between the time the first chunk was returned and now may \
                             show up in the list.",
                            Some(inconsistent.encode()),
                        ));
                    }
                    (rv, token.start.clone())
                }
            }
        };
        let objects = self.snapshot(kind, rv);
        Ok(self.page(kind, req, rv, start, &objects))
    }

    /// One page of `objects` (a kind's state at `rv`), from the key `start`.
    fn page(
        &self,
        kind: Kind,
        req: &ListRequest,
        rv: u64,
        start: String,
        objects: &BTreeMap<String, Arc<Value>>,
    ) -> ListPage {
        let prefix = req
            .namespace
            .as_ref()
            .filter(|_| kind.namespaced())
            .map(|ns| format!("{ns}/"))
            .unwrap_or_default();
        let from = if start > prefix {
            start
        } else {
            prefix.clone()
        };
        let mut in_range = objects
            .range::<String, _>((Bound::Included(&from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix));

        let limit = req.limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut last_key = None;
        for (k, obj) in in_range.by_ref() {
            if req.selectors.matches(kind, obj) {
                items.push(obj.clone());
                if items.len() == limit {
                    last_key = Some(k.clone());
                    break;
                }
            }
        }
        let remaining = in_range.count();
        let continue_token = match last_key {
            Some(k) if remaining > 0 => Some(
                ContinueToken {
                    rv: rv as i64,
                    start: format!("{k}\0"),
                }
                .encode(),
            ),
            _ => None,
        };
        let remaining = (continue_token.is_some() && req.selectors.is_empty()).then_some(remaining);
        ListPage {
            rv,
            items,
            continue_token,
            remaining,
        }
    }

    /// Registers a watch of `kind`. Fails with 410 Expired when `from` is compacted away.
    pub(crate) fn watch(&mut self, kind: Kind, from: WatchFrom) -> Result<WatchStart, ApiError> {
        let (initial, backlog) = match from {
            WatchFrom::CurrentState | WatchFrom::Now => {
                let initial = if from == WatchFrom::Now {
                    Vec::new()
                } else {
                    self.all(kind)
                };
                (initial, Vec::new())
            }
            WatchFrom::After(after) => {
                if after < self.compacted {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {after} ({})",
                        self.compacted + 1
                    )));
                }
                let backlog = self
                    .history
                    .iter()
                    .filter(|c| c.kind == kind && c.rv > after)
                    .cloned()
                    .collect();
                (Vec::new(), backlog)
            }
        };
        let (tx, queue) = mpsc::channel(WATCH_QUEUE);
        self.watchers.push((kind, tx));
        Ok(WatchStart {
            rv: self.rv,
            initial,
            backlog,
            queue,
        })
    }

    /// How many registered watches (of `kind`, or of every kind) are still streaming: a
    /// watch's queue closes when its stream ends, for whatever reason.
    pub(crate) fn open_watches(&self, kind: Option<Kind>) -> usize {
        self.watchers
            .iter()
            .filter(|(k, tx)| kind.is_none_or(|kind| *k == kind) && !tx.is_closed())
            .count()
    }

    /// Checks that the state at `rv` can still be read.
    pub(crate) fn check_not_compacted(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.compacted {
            return Err(ApiError::expired(
                "The resourceVersion for the provided list is too old.",
            ));
        }
        Ok(())
    }

    // --- internals ---

    fn map(&self, kind: Kind) -> &BTreeMap<String, Arc<Value>> {
        self.objects.get(&kind).expect("every kind has a map")
    }

    fn map_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Arc<Value>> {
        self.objects.get_mut(&kind).expect("every kind has a map")
    }

    /// The objects of a kind as they were at `rv`, undoing later changes.
    fn snapshot(&self, kind: Kind, rv: u64) -> Cow<'_, BTreeMap<String, Arc<Value>>> {
        if rv >= self.rv {
            return Cow::Borrowed(self.map(kind));
        }
        let mut objects = self.map(kind).clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.kind != kind {
                continue;
            }
            match &change.prev {
                Some(prev) => objects.insert(change.key.clone(), prev.clone()),
                None => objects.remove(&change.key),
            };
        }
        Cow::Owned(objects)
    }

    fn remove(&mut self, kind: Kind, key: String) -> Arc<Value> {
        let old = self
            .map_mut(kind)
            .remove(&key)
            .expect("caller checked the key");
        let mut last = (*old).clone();
        meta_mut(&mut last).insert("resourceVersion".into(), json!((self.rv + 1).to_string()));
        self.record(kind, key, ChangeType::Deleted, last, Some(old))
    }

    /// Assigns the next resourceVersion to a write, stores it and tells the watchers.
    fn record(
        &mut self,
        kind: Kind,
        key: String,
        change: ChangeType,
        object: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        let object = Arc::new(object);
        if change == ChangeType::Deleted {
            self.map_mut(kind).remove(&key);
        } else {
            self.map_mut(kind).insert(key.clone(), object.clone());
        }
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            key,
            change,
            object: object.clone(),
            prev,
        });
        self.history.push_back(change.clone());
        self.watchers.retain(|(k, tx)| {
            if *k != kind {
                return !tx.is_closed();
            }
            match tx.try_send(change.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(kind = %kind, "Closing a watch that fell too far behind");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.rv_tx.send_replace(self.rv);
        object
    }

    /// The namespace an object lives in: the request's, else the body's, else `default`
    /// (as kubectl defaults it); none for cluster-scoped kinds.
    fn resolve_namespace(
        &self,
        kind: Kind,
        obj: &mut Value,
        url_namespace: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let meta = meta_mut(obj);
        if !kind.namespaced() {
            meta.remove("namespace");
            return Ok(None);
        }
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let ns = match (url_namespace, body_ns) {
            (Some(url), Some(body)) if url != body => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            (Some(url), _) => url.to_string(),
            (None, Some(body)) => body.to_string(),
            (None, None) => "default".to_string(),
        };
        meta.insert("namespace".into(), json!(ns));
        Ok(Some(ns))
    }

    fn uid(&mut self) -> String {
        self.counter += 1;
        let s = self.seed;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (s >> 32) as u32,
            (s >> 16) as u16,
            (s >> 4) & 0xfff,
            s & 0xfff,
            self.counter
        )
    }

    fn random_suffix(&mut self) -> String {
        // The alphabet of apimachinery's rand.String: no vowels, no confusable characters.
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.counter += 1;
        let mut x = self
            .seed
            .wrapping_add(self.counter)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..5)
            .map(|_| {
                let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                x /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

/// `uid` and `resourceVersion` preconditions of a delete (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    fn check(&self, kind: Kind, name: &str, obj: &Value) -> Result<(), ApiError> {
        let checks = [
            ("UID", "uid", &self.uid),
            ("ResourceVersion", "resourceVersion", &self.resource_version),
        ];
        for (label, field, want) in checks {
            let actual = meta_str(obj, field).unwrap_or_default();
            if let Some(want) = want {
                if want != actual {
                    return Err(ApiError::conflict(
                        kind,
                        name,
                        &format!("Precondition failed: {label} in precondition: {want}, {label} in object meta: {actual}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

// === impl ContinueToken ===

impl ContinueToken {
    /// The token as the real server writes it: unpadded URL-safe base64 of a small JSON object.
    pub(crate) fn encode(&self) -> String {
        let json = json!({"v": "meta.k8s.io/v1", "rv": self.rv, "start": self.start});
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    /// Parses a token; the error is the message of a 400 Bad Request.
    pub(crate) fn decode(token: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("continue key is not valid: {why}");
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|e| invalid(&e.to_string()))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(&e.to_string()))?;
        if value.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
            return Err(invalid("server does not recognize this encoded key"));
        }
        let rv = value.get("rv").and_then(Value::as_i64).unwrap_or(0);
        let start = value
            .get("start")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if rv == 0 || rv < -1 {
            return Err(invalid(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        if start.is_empty() {
            return Err(invalid("encoded start key is empty"));
        }
        Ok(Self {
            rv,
            start: start.to_string(),
        })
    }
}

// === object helpers ===

/// The store key of an object: `namespace/name`, or `name` for cluster-scoped kinds.
pub(crate) fn key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if kind.namespaced() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// A string field of `metadata`.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let root = obj
        .as_object_mut()
        .expect("objects are checked to be JSON objects");
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .expect("metadata was just made an object")
}

/// Checks that a body is an object of `kind` and fills in `apiVersion` and `kind`.
fn check_type(kind: Kind, body: Value) -> Result<Value, ApiError> {
    let Value::Object(mut map) = body else {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    };
    if let Some(v) = map.get("apiVersion").and_then(Value::as_str) {
        if v != kind.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                kind.api_version()
            )));
        }
    }
    if let Some(k) = map.get("kind").and_then(Value::as_str) {
        if k != kind.name() {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.name()
            )));
        }
    }
    map.insert("apiVersion".into(), json!(kind.api_version()));
    map.insert("kind".into(), json!(kind.name()));
    if !map.get("metadata").is_some_and(Value::is_object) {
        map.insert("metadata".into(), json!({}));
    }
    Ok(Value::Object(map))
}

/// Names: DNS-1123 labels for namespaces, DNS-1123 subdomains for the other kinds.
fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let (ok, what) = if kind == Kind::Namespace {
        (label_ok(name), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")
    } else {
        (
            name.len() <= 253 && name.split('.').all(label_ok),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            kind.name(),
            name,
            format!("metadata.name: Invalid value: \"{name}\": {what}"),
        ))
    }
}

/// Now, as an RFC 3339 UTC timestamp with seconds, as `metav1.Time` serialises.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
