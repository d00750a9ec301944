//! Tap: this pod's live decisions (admissions, refusals, teardowns, audit
//! differences) as they happen, for `picket tap` through the local admin
//! port.
//!
//! Bounded and never in the data path's way: events go into a broadcast
//! ring of [`CAPACITY`]; a reader that falls behind loses the oldest and is
//! told how many. With no reader attached, publishing is one atomic load
//! and the event is never built.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::broadcast;

use picket_policy::{Decision, Direction, PodKey, PolicyIndex, PolicyKey, Reason, Side};

/// Events held for readers; a reader further behind loses the oldest.
pub const CAPACITY: usize = 1024;
/// Readers attached at once (each one costs a formatting task).
pub const MAX_READERS: usize = 4;

/// The broadcast of this pod's decisions.
#[derive(Debug)]
pub struct Tap {
    tx: broadcast::Sender<Arc<Event>>,
    readers: AtomicUsize,
    metrics: TapMetrics,
}

/// What the tap counts.
#[derive(Clone, Debug, Default)]
pub struct TapMetrics {
    /// Readers attached.
    pub readers: Option<IntGauge>,
    /// Events readers lost.
    pub dropped: Option<IntCounter>,
}

/// One decision as it happened.
#[derive(Clone, Debug)]
pub struct Event {
    /// When.
    pub at: SystemTime,
    /// An admission or a teardown.
    pub kind: Kind,
    /// Inbound (`Ingress`) or outbound (`Egress`).
    pub direction: Direction,
    /// The connection's client.
    pub client: SocketAddr,
    /// Its destination (the endpoint dialled, for an outbound one to a Service).
    pub dst: SocketAddr,
    /// Whether it may proceed.
    pub allowed: bool,
    /// The engine's decision, when one was made.
    pub decision: Option<Decision>,
    /// For a denial: the policies that isolate the side that denied it
    /// (none of their rules allowed it).
    pub isolating: Vec<PolicyKey>,
    /// This pod (the peer of an outbound connection to itself).
    pub pod: PodKey,
    /// Why it was refused without a policy decision (`no-state`,
    /// `foreign-destination`, `loop`, `capture-off`, `no-endpoint`).
    pub refusal: Option<&'static str>,
    /// Where audited policies would decide otherwise: the outcome
    /// (`would-deny`, `would-allow`) and the audited policy.
    pub audit: Option<(&'static str, String)>,
}

/// What happened to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Decided when it was accepted.
    Decision,
    /// Torn down by a re-check: the change that caused it.
    Teardown(&'static str),
}

/// An attached reader; dropping it detaches.
#[derive(Debug)]
pub struct Reader {
    rx: broadcast::Receiver<Arc<Event>>,
    tap: Arc<Tap>,
}

/// What a reader receives.
#[derive(Debug)]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// This many events were lost: the reader fell behind.
    Dropped(u64),
}

/// Which events a reader wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only refusals, teardowns and audited would-denies.
    pub denied: bool,
    /// Only this peer: `NAMESPACE/NAME`, a namespace, or an IP address.
    pub peer: Option<String>,
    /// Only this destination port.
    pub port: Option<u16>,
}

/// One event as a JSON line.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    /// `decision` or `teardown`.
    pub event: &'static str,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The client address.
    pub client: String,
    /// The destination address.
    pub destination: String,
    /// The peer pod, `NAMESPACE/NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The destination port.
    pub port: u16,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// The policy whose rule allowed it on this pod's side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// That rule's index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// Why, in words.
    pub reason: String,
    /// For a denial: the policies isolating the side that denied it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// The change that tore it down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<&'static str>,
    /// What audited policies would have decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditLine<'a>>,
}

/// An audit difference in a [`Line`].
#[derive(Debug, Serialize)]
pub struct AuditLine<'a> {
    /// `would-deny` or `would-allow`.
    pub verdict: &'static str,
    /// The audited policy.
    pub policy: &'a str,
}

// === impl Tap ===

impl Tap {
    /// A tap with no reader, counting nothing.
    pub fn new() -> Arc<Self> {
        Self::with_metrics(TapMetrics::default())
    }

    /// A tap with no reader.
    pub fn with_metrics(metrics: TapMetrics) -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(CAPACITY).0,
            readers: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Whether a reader is attached (events are built only then).
    pub fn is_tapped(&self) -> bool {
        self.readers.load(Ordering::Relaxed) > 0
    }

    /// Publishes the event `build` makes, if a reader is attached. Never waits.
    pub fn publish(&self, build: impl FnOnce() -> Event) {
        if self.is_tapped() {
            let _ = self.tx.send(Arc::new(build()));
        }
    }

    /// Attaches a reader; `None` when [`MAX_READERS`] are attached.
    pub fn subscribe(self: &Arc<Self>) -> Option<Reader> {
        let attached = self
            .readers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_READERS).then_some(n + 1)
            });
        attached.ok()?;
        if let Some(readers) = &self.metrics.readers {
            readers.inc();
        }
        Some(Reader {
            rx: self.tx.subscribe(),
            tap: self.clone(),
        })
    }
}

// === impl Reader ===

impl Reader {
    /// The next event, or how many were lost; `None` never happens while
    /// the tap lives.
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                if let Some(dropped) = &self.tap.metrics.dropped {
                    dropped.inc_by(n);
                }
                Some(Received::Dropped(n))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.tap.readers.fetch_sub(1, Ordering::SeqCst);
        if let Some(readers) = &self.tap.metrics.readers {
            readers.dec();
        }
    }
}

// === impl Event ===

impl Event {
    /// A decision made at admission, on `index`.
    pub fn decided(
        index: &PolicyIndex,
        pod: &PodKey,
        direction: Direction,
        client: SocketAddr,
        dst: SocketAddr,
        decision: &Decision,
    ) -> Self {
        Self {
            isolating: isolating(index, pod, decision),
            at: SystemTime::now(),
            kind: Kind::Decision,
            direction,
            client,
            dst,
            allowed: decision.allowed,
            decision: Some(decision.clone()),
            pod: pod.clone(),
            refusal: None,
            audit: None,
        }
    }

    /// A refusal made without a policy decision.
    pub fn refused(
        pod: &PodKey,
        direction: Direction,
        client: SocketAddr,
        dst: SocketAddr,
        refusal: &'static str,
    ) -> Self {
        Self {
            at: SystemTime::now(),
            kind: Kind::Decision,
            direction,
            client,
            dst,
            allowed: false,
            decision: None,
            isolating: Vec::new(),
            pod: pod.clone(),
            refusal: Some(refusal),
            audit: None,
        }
    }

    /// The peer pod: the source of an inbound connection, the destination of an outbound one.
    pub fn peer(&self) -> Option<&PodKey> {
        let decision = self.decision.as_ref()?;
        match (&decision.reason, self.direction) {
            (_, Direction::Ingress) => decision.source.as_ref(),
            (Reason::Egress { destination, .. }, Direction::Egress) => destination.as_ref(),
            (Reason::SamePod, Direction::Egress) => Some(&self.pod),
            _ => None,
        }
    }

    /// The peer's address: the client inbound, the destination outbound.
    pub fn peer_addr(&self) -> SocketAddr {
        match self.direction {
            Direction::Ingress => self.client,
            Direction::Egress => self.dst,
        }
    }

    /// The policy and rule that allowed it on this pod's side.
    pub fn allowed_by(&self) -> Option<(String, usize)> {
        let decision = self.decision.as_ref().filter(|d| d.allowed)?;
        let side = match (&decision.reason, self.direction) {
            (Reason::Policies { ingress, .. }, Direction::Ingress) => ingress,
            (Reason::Egress { egress, .. }, Direction::Egress) => egress,
            _ => return None,
        };
        match side {
            Side::Allowed { policy, rule } => Some((policy.to_string(), *rule)),
            _ => None,
        }
    }

    /// Whether it was refused, torn down, or would be denied by an audited policy.
    pub fn is_denial(&self) -> bool {
        !self.allowed
            || matches!(self.kind, Kind::Teardown(_))
            || matches!(self.audit, Some(("would-deny", _)))
    }

    /// The reason in words.
    pub fn reason(&self) -> String {
        match (&self.decision, self.refusal) {
            (Some(decision), _) => decision.to_string(),
            (None, Some("no-state")) => "no cluster state yet".to_string(),
            (None, Some("foreign-destination")) => {
                "the original destination is not this pod's address".to_string()
            }
            (None, Some("loop")) => "an outbound connection to loopback, uncaptured".to_string(),
            (None, Some("capture-off")) => "outbound capture is off in this sidecar".to_string(),
            (None, Some("no-endpoint")) => {
                "the Service has no ready endpoint for this port".to_string()
            }
            (None, other) => other.unwrap_or("unknown").to_string(),
        }
    }

    /// The event as a JSON line's fields.
    pub fn line(&self) -> Line<'_> {
        let allowed_by = self.allowed_by();
        Line {
            time: jiff::Timestamp::try_from(self.at)
                .map(|t| format!("{t:.3}"))
                .unwrap_or_default(),
            event: match self.kind {
                Kind::Decision => "decision",
                Kind::Teardown(_) => "teardown",
            },
            direction: match self.direction {
                Direction::Ingress => "inbound",
                Direction::Egress => "outbound",
            },
            client: self.client.to_string(),
            destination: self.dst.to_string(),
            peer: self.peer().map(ToString::to_string),
            port: self.dst.port(),
            verdict: if self.allowed { "allowed" } else { "denied" },
            policy: allowed_by.as_ref().map(|(p, _)| p.clone()),
            rule: allowed_by.map(|(_, r)| r),
            reason: self.reason(),
            isolated_by: self.isolating.iter().map(ToString::to_string).collect(),
            change: match self.kind {
                Kind::Teardown(change) => Some(change),
                Kind::Decision => None,
            },
            audit: self.audit.as_ref().map(|(verdict, policy)| AuditLine {
                verdict,
                policy: policy.as_str(),
            }),
        }
    }
}

/// The policies isolating the side that denied `decision` (this pod's,
/// or the peer's when the index knows its policies).
fn isolating(index: &PolicyIndex, pod: &PodKey, decision: &Decision) -> Vec<PolicyKey> {
    let denied = |side: &Side| matches!(side, Side::Denied { .. });
    let (whose, direction) = match &decision.reason {
        _ if decision.allowed => return Vec::new(),
        Reason::Policies { ingress, .. } if denied(ingress) => (pod, Direction::Ingress),
        Reason::Policies { egress, .. } if denied(egress) => match &decision.source {
            Some(source) => (source, Direction::Egress),
            None => return Vec::new(),
        },
        Reason::Egress { egress, .. } if denied(egress) => (pod, Direction::Egress),
        Reason::Egress {
            ingress: Some(ingress),
            destination: Some(destination),
            ..
        } if denied(ingress) => (destination, Direction::Ingress),
        _ => return Vec::new(),
    };
    index
        .selecting(whose, direction)
        .iter()
        .map(|p| p.key.clone())
        .collect()
}

// === impl Filter ===

impl Filter {
    /// From a query string: `denied` (or `denied=true`), `peer=X`, `port=N`.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut filter = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "denied" => {
                    filter.denied = match value.as_str() {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(format!("denied: expected true or false, got {other:?}"))
                        }
                    }
                }
                "peer" if !value.is_empty() => filter.peer = Some(value),
                "port" => {
                    let port = value
                        .parse()
                        .map_err(|_| format!("port: expected a port number, got {value:?}"))?;
                    filter.port = Some(port);
                }
                other => return Err(format!("unknown parameter {other:?} (denied, peer, port)")),
            }
        }
        Ok(filter)
    }

    /// Whether the reader wants the event.
    pub fn matches(&self, event: &Event) -> bool {
        if self.denied && !event.is_denial() {
            return false;
        }
        if self.port.is_some_and(|port| port != event.dst.port()) {
            return false;
        }
        let Some(wanted) = &self.peer else {
            return true;
        };
        if let Ok(ip) = wanted.parse::<std::net::IpAddr>() {
            return event.peer_addr().ip().to_canonical() == ip.to_canonical();
        }
        event
            .peer()
            .is_some_and(|peer| match wanted.split_once('/') {
                Some((namespace, name)) => &*peer.namespace == namespace && &*peer.name == name,
                None => &*peer.namespace == wanted.as_str(),
            })
    }
}

/// Decodes `%XX` escapes (a pod name never needs more).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> PodKey {
        PodKey::new(ns, name)
    }

    fn inbound(source: Option<PodKey>, allowed: bool) -> Event {
        let decision = Decision {
            allowed,
            reason: Reason::Policies {
                ingress: if allowed {
                    Side::Allowed {
                        policy: picket_policy::PolicyKey::new("prod", "allow-web"),
                        rule: 1,
                    }
                } else {
                    Side::Denied { policies: 1 }
                },
                egress: Side::NotApplicable,
            },
            source,
        };
        Event::decided(
            &PolicyIndex::default(),
            &key("prod", "web"),
            Direction::Ingress,
            "10.0.0.2:40000".parse().unwrap(),
            "10.0.0.3:80".parse().unwrap(),
            &decision,
        )
    }

    #[tokio::test]
    async fn nothing_is_built_without_a_reader_and_a_slow_reader_is_told_what_it_lost() {
        let tap = Tap::new();
        let mut built = 0;
        tap.publish(|| {
            built += 1;
            inbound(None, true)
        });
        assert_eq!(built, 0, "no reader: the event is never built");

        let mut reader = tap.subscribe().unwrap();
        for _ in 0..CAPACITY + 10 {
            tap.publish(|| inbound(None, true));
        }
        assert!(matches!(reader.recv().await, Some(Received::Dropped(10))));
        assert!(matches!(reader.recv().await, Some(Received::Event(_))));

        let more: Vec<_> = (1..MAX_READERS).map(|_| tap.subscribe().unwrap()).collect();
        assert!(tap.subscribe().is_none(), "at most {MAX_READERS} readers");
        drop(more);
        drop(reader);
        assert!(!tap.is_tapped());
    }

    #[test]
    fn a_line_names_the_peer_the_policy_and_the_rule() {
        let event = inbound(Some(key("prod", "client-1")), true);
        let json = serde_json::to_value(event.line()).unwrap();
        assert_eq!(json["peer"], "prod/client-1");
        assert_eq!(json["policy"], "prod/allow-web");
        assert_eq!(json["rule"], 1);
        assert_eq!(json["verdict"], "allowed");
        assert_eq!(json["direction"], "inbound");
        assert_eq!(json["port"], 80);
        assert!(json["time"].as_str().unwrap().ends_with('Z'), "{json}");
        let denied = serde_json::to_value(inbound(None, false).line()).unwrap();
        assert_eq!(denied["verdict"], "denied");
        assert!(denied.get("policy").is_none());
    }

    #[test]
    fn filters_by_denial_peer_and_port() {
        let allowed = inbound(Some(key("prod", "client-1")), true);
        let denied = inbound(Some(key("dev", "probe")), false);
        let f = |q: &str| Filter::from_query(q).unwrap();
        assert!(f("").matches(&allowed));
        assert!(!f("denied").matches(&allowed));
        assert!(f("denied=true").matches(&denied));
        assert!(f("peer=prod%2Fclient-1").matches(&allowed));
        assert!(!f("peer=prod/client-2").matches(&allowed));
        assert!(f("peer=dev").matches(&denied));
        assert!(f("peer=10.0.0.2").matches(&denied));
        assert!(!f("peer=10.0.0.9").matches(&denied));
        assert!(f("port=80").matches(&allowed));
        assert!(!f("port=81").matches(&allowed));
        let mut torn = allowed;
        torn.kind = Kind::Teardown("policy-modified");
        assert!(f("denied").matches(&torn));
        assert!(Filter::from_query("port=http")
            .unwrap_err()
            .contains("port"));
        assert!(Filter::from_query("verdict=x")
            .unwrap_err()
            .contains("verdict"));
    }
}
