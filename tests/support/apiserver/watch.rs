//! Watch streams: newline-delimited JSON events, as `?watch=true` answers them.
//!
//! Async: one task per open watch, spawned on the server's runtime by the router. The task
//! sends the initial events (current objects, or the history after the requested
//! resourceVersion), then every change from its queue in the store, converting changes as the
//! real watch cache does when selectors are in play: an object that starts matching is
//! ADDED, one that stops matching is DELETED. It adds periodic BOOKMARK events when asked.
//! The stream ends cleanly at `timeoutSeconds`, and abruptly on
//! [`super::ApiServer::drop_watches`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::{self, Instant, MissedTickBehavior};

use super::body::{Body, StreamSender};
use super::kind::Kind;
use super::selectors::Selectors;
use super::store::{Change, ChangeType, WatchFrom, WatchStart};
use super::Shared;

/// The annotation on the bookmark that ends the initial events of a streaming list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A watch request, validated.
#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    pub from: WatchFrom,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: end the initial events with a marked bookmark.
    pub initial_events_end: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
}

/// Registers the watch and returns the body that streams it. Like the real server, a
/// resourceVersion that is too old is reported in the stream (HTTP 200, then an ERROR event).
pub(crate) fn start(shared: &Arc<Shared>, req: WatchRequest) -> Body {
    // Subscribe before registering, so a drop right after registration is not missed.
    let drops = shared.faults.watch_drops.subscribe();
    let registered = shared.lock_store().watch(req.kind, req.from);
    let start = match registered {
        Ok(start) => start,
        Err(error) => return Body::full(event_line("ERROR", &error.to_status())),
    };
    let (body, sender) = Body::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut drops = drops;
        let mut stream = Stream {
            shared: &shared,
            req: &req,
            sender: &sender,
            cursor: 0,
        };
        let aborted = tokio::select! {
            _ = drops.changed() => true,
            () = stream.run(start) => false,
        };
        if aborted {
            sender.abort();
        }
    });
    body
}

/// The state of one open watch.
struct Stream<'a> {
    shared: &'a Shared,
    req: &'a WatchRequest,
    sender: &'a StreamSender,
    /// The newest resourceVersion this watch has sent or skipped.
    cursor: u64,
}

impl Stream<'_> {
    async fn run(&mut self, start: WatchStart) {
        let WatchStart {
            rv,
            initial,
            backlog,
            mut queue,
        } = start;
        let after = match self.req.from {
            WatchFrom::After(after) => after,
            WatchFrom::CurrentState | WatchFrom::Now => 0,
        };
        self.cursor = rv.max(after);
        let deadline = self.req.timeout.map(|t| Instant::now() + t);
        let sleep = time::sleep_until(deadline.unwrap_or_else(far_future));
        tokio::pin!(sleep);

        for object in initial.iter().filter(|o| self.visible(o)) {
            if !self.send("ADDED", object).await {
                return;
            }
        }
        if self.req.initial_events_end && self.req.bookmarks {
            let mut bookmark = self.bookmark(rv);
            bookmark["metadata"]["annotations"] = json!({ INITIAL_EVENTS_END: "true" });
            if !self.send("BOOKMARK", &bookmark).await {
                return;
            }
        }
        for change in backlog.iter().filter(|c| c.rv > after) {
            if !self.send_change(change).await {
                return;
            }
        }

        let interval = self.shared.bookmark_interval;
        let mut ticker = time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                () = self.sender.closed() => return,
                change = queue.recv() => match change {
                    Some(change) => {
                        if change.rv > after && !self.send_change(&change).await {
                            return;
                        }
                    }
                    // The store closed this watch as too slow; the client watches again.
                    None => return,
                },
                _ = ticker.tick(), if self.req.bookmarks => {
                    // Every change up to the store's resourceVersion is already queued: send
                    // them, then a bookmark no older than anything sent.
                    let rv = self.shared.lock_store().rv();
                    loop {
                        match queue.try_recv() {
                            Ok(change) => {
                                if change.rv > after && !self.send_change(&change).await {
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                    }
                    let bookmark = self.bookmark(rv.max(self.cursor));
                    if !self.send("BOOKMARK", &bookmark).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends a change as the event this watch should see, if any.
    async fn send_change(&mut self, change: &Change) -> bool {
        self.cursor = self.cursor.max(change.rv);
        match self.convert(change) {
            Some((event, object)) => self.send(event, &object).await,
            None => true,
        }
    }

    /// The event a change becomes for this watch (see the module documentation).
    fn convert(&self, change: &Change) -> Option<(&'static str, Arc<Value>)> {
        let now = change.change != ChangeType::Deleted && self.visible(&change.object);
        let before = change.prev.as_ref().is_some_and(|p| self.visible(p));
        match (before, now) {
            (false, true) => Some(("ADDED", change.object.clone())),
            (true, true) => Some(("MODIFIED", change.object.clone())),
            (true, false) if change.change == ChangeType::Deleted => {
                Some(("DELETED", change.object.clone()))
            }
            (true, false) => {
                // The last state that matched, at the resourceVersion of this change.
                let mut last = change.prev.as_deref().cloned()?;
                last["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                Some(("DELETED", Arc::new(last)))
            }
            (false, false) => None,
        }
    }

    fn visible(&self, object: &Value) -> bool {
        let in_namespace = match &self.req.namespace {
            Some(ns) => {
                object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    == Some(ns)
            }
            None => true,
        };
        in_namespace && self.req.selectors.matches(self.req.kind, object)
    }

    fn bookmark(&self, rv: u64) -> Value {
        json!({
            "kind": self.req.kind.name(),
            "apiVersion": self.req.kind.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        })
    }

    async fn send(&self, event: &str, object: &Value) -> bool {
        let sent = self.sender.send(event_line(event, object)).await;
        if sent && event != "BOOKMARK" {
            self.shared.count_watch_event(self.req.kind);
        }
        sent
    }
}

/// One event as a line of JSON.
pub(crate) fn event_line(event: &str, object: &Value) -> Vec<u8> {
    let mut line = format!("{{\"type\":\"{event}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut line, object).expect("JSON values serialise");
    line.extend_from_slice(b"}\n");
    line
}

/// A deadline that never comes, for watches without `timeoutSeconds`.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
