//! The proxy's Prometheus metrics: one registry per process, served on the
//! admin port's `/metrics`.
//!
//! Names follow Prometheus conventions (`picket_` prefix, `_total` counters,
//! base units); the process collector keeps the standard `process_*` names.
//! Label values stay bounded: destination ports only when the pod declares
//! them or a policy names them (else `other`), peers only up to a
//! cardinality limit (else `other`), reasons from fixed sets.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use picket_policy::{Direction, PodKey};
use picket_state::{ChangeReason, Kind};

/// The default limit on distinct peer namespaces and workloads in labels.
pub const DEFAULT_PEER_LABEL_LIMIT: usize = 100;

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Registry,
    /// Connections decided, by outcome, deciding policy and destination port.
    pub connections: IntCounterVec,
    /// Connections refused before a decision, by reason.
    pub refused: IntCounterVec,
    /// Denied connections by peer namespace and workload (bounded).
    pub denied_peers: IntCounterVec,
    /// Connections being relayed.
    pub open: IntGauge,
    /// How long relayed connections lasted.
    pub duration: Histogram,
    /// Bytes relayed, by direction.
    pub bytes: IntCounterVec,
    /// Live connections reset by a state change, by reason.
    pub teardowns: IntCounterVec,
    /// Time to decide one connection.
    pub decision: Histogram,
    /// Relay failures, by kind.
    pub relay_errors: IntCounterVec,
    /// 1 once ready.
    pub ready: IntGauge,
    /// Seconds since the last applied state update (set at scrape time).
    pub state_age: Gauge,
    /// Objects known, by kind.
    pub state_objects: IntGaugeVec,
    /// State updates applied.
    pub state_updates: IntCounter,
    /// Watch restarts, by kind.
    pub watch_restarts: IntCounterVec,
    /// Connections from unknown IPs that waited for a state update, by result.
    pub unknown_ip_waits: IntCounterVec,
    /// The outbound side's own families (captured connections this pod opens).
    pub outbound: OutboundMetrics,
    /// `picket tap` readers attached.
    pub tap_readers: IntGauge,
    /// Events tap readers lost by falling behind.
    pub tap_dropped: IntCounter,
    last_update_ms: std::sync::atomic::AtomicU64,
    peers: LabelLimiter,
}

/// The metrics of captured outbound connections: the inbound families'
/// siblings, with the destination in place of the peer.
#[derive(Debug)]
pub struct OutboundMetrics {
    /// Connections decided, by outcome, deciding policy and destination (bounded).
    pub connections: IntCounterVec,
    /// Connections refused before a decision, by reason.
    pub refused: IntCounterVec,
    /// Connections being relayed.
    pub open: IntGauge,
    /// Bytes relayed, by direction.
    pub bytes: IntCounterVec,
    /// Live connections reset by a state change, by reason.
    pub teardowns: IntCounterVec,
}

/// Lets through at most `limit` distinct values; the rest become `other`.
#[derive(Debug)]
pub struct LabelLimiter {
    limit: usize,
    seen: Mutex<HashSet<String>>,
}

// === impl ProxyMetrics ===

impl ProxyMetrics {
    /// Creates and registers every metric; `peer_label_limit` bounds peer labels.
    pub fn new(peer_label_limit: usize) -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let connections = counter_vec(
            "picket_inbound_connections_total",
            "Inbound connections decided, by outcome (allowed, denied; would-deny, would-allow where a policy in audit mode would decide otherwise, counted beside the outcome), deciding policy (namespace/name; admin:<name> or baseline:<name> when a ClusterNetworkPolicy tier decided; no-policy, node, same-pod, isolated) and destination port (declared or named by a policy, else other).",
            &["outcome", "policy", "port"],
        );
        let refused = counter_vec(
            "picket_inbound_refused_total",
            "Inbound connections reset before a policy decision, by reason (no-state, own-port, over-limit, no-original-destination).",
            &["reason"],
        );
        let denied_peers = counter_vec(
            "picket_inbound_denied_peers_total",
            "Denied inbound connections by peer namespace and workload (bounded; beyond the limit: other).",
            &["peer_namespace", "peer_workload"],
        );
        let bytes = counter_vec(
            "picket_inbound_bytes_total",
            "Bytes relayed, by direction (in: client to app, out: app to client).",
            &["direction"],
        );
        let teardowns = counter_vec(
            "picket_inbound_teardowns_total",
            "Live connections reset because a state change forbids them, by reason (policy-added, policy-modified, policy-deleted, pod-labels, namespace-labels, pod-ip).",
            &["reason"],
        );
        let relay_errors = counter_vec(
            "picket_relay_errors_total",
            "Relay failures, by kind (connect-refused, connect-timeout, connect-other, reset, register, other).",
            &["kind"],
        );
        let watch_restarts = counter_vec(
            "picket_watch_restarts_total",
            "Restarts of a state source's watch, by kind.",
            &["kind"],
        );
        let unknown_ip_waits = counter_vec(
            "picket_unknown_ip_waits_total",
            "Connections from an unknown source IP that waited for a state update, by result (resolved; outside-view: the control plane says a pod outside this pod's view holds it; timeout).",
            &["result"],
        );
        let open = IntGauge::new(
            "picket_inbound_open_connections",
            "Inbound connections being relayed.",
        )
        .expect("valid metric");
        let outbound_open = IntGauge::new(
            "picket_outbound_open_connections",
            "Outbound connections (captured, this pod's own) being relayed.",
        )
        .expect("valid metric");
        let outbound = OutboundMetrics {
            connections: counter_vec(
                "picket_outbound_connections_total",
                "Outbound connections this pod opened, decided at the source by its egress policies: by outcome (allowed, denied; would-deny, would-allow where a policy in audit mode would decide otherwise, counted beside the outcome), deciding policy (namespace/name; admin:<name> or baseline:<name> when a ClusterNetworkPolicy tier decided; no-policy, node, same-pod, isolated) and destination (namespace/workload of the pod dialled, bounded; a Service's namespace/name when none of its endpoints is allowed; node; external: an address that is no pod's, or in control mode one of a pod outside the view).",
                &["outcome", "policy", "destination"],
            ),
            refused: counter_vec(
                "picket_outbound_refused_total",
                "Outbound connections reset before a policy decision, by reason (no-state, loop, over-limit, no-original-destination).",
                &["reason"],
            ),
            open: outbound_open.clone(),
            bytes: counter_vec(
                "picket_outbound_bytes_total",
                "Bytes relayed on outbound connections, by direction (out: app to destination, in: destination to app).",
                &["direction"],
            ),
            teardowns: counter_vec(
                "picket_outbound_teardowns_total",
                "Live outbound connections reset because a state change forbids them, by reason.",
                &["reason"],
            ),
        };
        let ready =
            IntGauge::new("picket_ready", "1 once the proxy is ready.").expect("valid metric");
        let tap_readers = IntGauge::new(
            "picket_tap_readers",
            "picket tap readers attached to this sidecar's local admin port.",
        )
        .expect("valid metric");
        let tap_dropped = IntCounter::new(
            "picket_tap_dropped_events_total",
            "Decisions tap readers lost by falling behind (the data path never waits for them).",
        )
        .expect("valid metric");
        let state_age = Gauge::new(
            "picket_state_age_seconds",
            "Seconds since the last applied cluster state update.",
        )
        .expect("valid metric");
        let state_updates = IntCounter::new(
            "picket_state_updates_total",
            "Cluster state updates applied.",
        )
        .expect("valid metric");
        let state_objects = IntGaugeVec::new(
            Opts::new(
                "picket_state_objects",
                "Objects known, by kind (pods, namespaces, networkpolicies).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "picket_inbound_connection_duration_seconds",
                "How long relayed inbound connections lasted.",
            )
            .buckets(vec![0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0]),
        )
        .expect("valid metric");
        let decision = Histogram::with_opts(
            HistogramOpts::new(
                "picket_policy_decision_duration_seconds",
                "Time to decide one connection against the policy snapshot.",
            )
            .buckets(vec![
                100e-9, 250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6,
                500e-6, 1e-3,
            ]),
        )
        .expect("valid metric");
        for c in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(outbound_open),
            Box::new(ready.clone()),
            Box::new(tap_readers.clone()),
            Box::new(tap_dropped.clone()),
            Box::new(state_age.clone()),
            Box::new(state_updates.clone()),
            Box::new(state_objects.clone()),
            Box::new(duration.clone()),
            Box::new(decision.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Self {
            registry,
            connections,
            refused,
            denied_peers,
            open,
            duration,
            bytes,
            teardowns,
            decision,
            relay_errors,
            ready,
            state_age,
            state_objects,
            state_updates,
            watch_restarts,
            unknown_ip_waits,
            outbound,
            tap_readers,
            tap_dropped,
            last_update_ms: Default::default(),
            peers: LabelLimiter::new(peer_label_limit),
        }
    }

    /// Records a denial's peer, folding values beyond the limit into `other`.
    pub fn denied_peer(&self, namespace: &str, workload: &str) {
        let namespace = self.peers.admit("ns", namespace);
        let workload = self.peers.admit(namespace, workload);
        self.denied_peers
            .with_label_values(&[namespace, workload])
            .inc();
    }

    /// Records an applied state update.
    pub fn state_applied(&self, snapshot: &picket_state::Snapshot) {
        self.state_updates.inc();
        self.last_update_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        for kind in Kind::ALL {
            self.state_objects
                .with_label_values(&[kind.label()])
                .set(kind.count(snapshot) as i64);
        }
    }

    /// Records connections of one direction torn down by a state change.
    pub fn torn_down(&self, direction: Direction, reason: ChangeReason, n: usize) {
        self.teardowns_of(direction)
            .with_label_values(&[reason.as_str()])
            .inc_by(n as u64);
    }

    /// Connections of a direction refused before a decision, by reason.
    pub fn refused_of(&self, direction: Direction) -> &IntCounterVec {
        match direction {
            Direction::Ingress => &self.refused,
            Direction::Egress => &self.outbound.refused,
        }
    }

    /// Connections of a direction being relayed.
    pub fn open_of(&self, direction: Direction) -> &IntGauge {
        match direction {
            Direction::Ingress => &self.open,
            Direction::Egress => &self.outbound.open,
        }
    }

    /// Live connections of a direction reset by a state change, by reason.
    pub fn teardowns_of(&self, direction: Direction) -> &IntCounterVec {
        match direction {
            Direction::Ingress => &self.teardowns,
            Direction::Egress => &self.outbound.teardowns,
        }
    }

    /// Records an outbound decision, its destination bounded like peers:
    /// the pod's `namespace/workload`, else `otherwise` (`external`, `node`).
    pub fn outbound_decided(
        &self,
        outcome: &str,
        policy: &str,
        destination: Option<&PodKey>,
        otherwise: &str,
    ) {
        let label;
        let destination = match destination {
            Some(pod) => {
                let namespace = self.peers.admit("ns", &pod.namespace);
                let workload = self.peers.admit(namespace, workload_of(&pod.name));
                label = format!("{namespace}/{workload}");
                &label
            }
            None => otherwise,
        };
        self.outbound
            .connections
            .with_label_values(&[outcome, policy, destination])
            .inc();
    }

    /// The registry, for metrics of other modules (the state source's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric, with scrape-time gauges updated.
    pub fn encode(&self, ready: bool) -> String {
        self.ready.set(ready as i64);
        let last = self
            .last_update_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if last > 0 {
            let age = Duration::from_millis(now_ms().saturating_sub(last));
            self.state_age.set(age.as_secs_f64());
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The workload a pod belongs to, from its name: the ReplicaSet and pod
/// hashes of a Deployment's pods (`api-7d9c5b6f4-x2x9q`) and the ordinal or
/// hash of other controllers' pods are dropped.
pub fn workload_of(pod: &str) -> &str {
    let mut name = pod;
    for _ in 0..2 {
        match name.rsplit_once('-') {
            Some((head, tail))
                if !head.is_empty()
                    && (5..=10).contains(&tail.len())
                    && tail
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && tail.chars().any(|c| c.is_ascii_digit()) =>
            {
                name = head;
            }
            _ => break,
        }
    }
    name
}

// === impl LabelLimiter ===

impl LabelLimiter {
    /// A limiter letting through `limit` distinct values per scope.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The value itself when already seen or under the limit, else `other`.
    pub fn admit<'a>(&self, scope: &str, value: &'a str) -> &'a str {
        let key = format!("{scope}\u{0}{value}");
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&key) {
            return value;
        }
        if seen.len() >= self.limit {
            return "other";
        }
        seen.insert(key);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_labels_fold_into_other_beyond_the_limit() {
        let m = ProxyMetrics::new(3);
        for i in 0..10 {
            m.denied_peer("ns", &format!("w{i}"));
        }
        let text = m.encode(true);
        let series = text
            .lines()
            .filter(|l| l.starts_with("picket_inbound_denied_peers_total{"))
            .count();
        assert!(series <= 3, "{text}");
        assert!(text.contains("peer_workload=\"other\""), "{text}");
    }

    #[test]
    fn workloads_are_pod_names_without_controller_suffixes() {
        assert_eq!(workload_of("api-7d9c5b6f4-x2x9q"), "api");
        assert_eq!(workload_of("web-0"), "web-0");
        assert_eq!(workload_of("coffeeshop"), "coffeeshop");
        assert_eq!(workload_of("daemon-k8x2z"), "daemon");
    }

    #[test]
    fn exposition_has_the_standard_process_metrics_and_ours() {
        let m = ProxyMetrics::new(10);
        m.connections
            .with_label_values(&["allowed", "no-policy", "80"])
            .inc();
        let text = m.encode(false);
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        assert!(text.contains("picket_inbound_connections_total{outcome=\"allowed\",policy=\"no-policy\",port=\"80\"} 1"));
        assert!(text.contains("picket_ready 0"));
    }
}
