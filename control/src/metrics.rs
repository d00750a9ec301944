//! The control plane's own metrics.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Counters and gauges of the `Watch` service.
#[derive(Debug, Clone)]
pub struct ControlMetrics {
    /// Sidecars connected now.
    pub connected: IntGauge,
    /// Messages sent.
    pub messages: IntCounter,
    /// Subscribers' updates, by how they were computed (skipped, entries,
    /// recomputed, full).
    pub updates: IntCounterVec,
    /// Bytes of messages sent (protobuf encoded).
    pub bytes: IntCounter,
    /// Streams ended, by reason.
    pub disconnects: IntCounterVec,
    /// From sending a message to its acknowledgement.
    pub convergence: Histogram,
    /// Pods NetworkPolicy concerns that nothing enforces, by namespace
    /// (see `picket_policy::coverage`; set at scrape time).
    pub unenforced: IntGaugeVec,
}

impl ControlMetrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            connected: IntGauge::new(
                "picket_control_connected_sidecars",
                "Sidecars connected to this replica",
            )
            .expect("valid"),
            messages: IntCounter::new(
                "picket_control_messages_sent_total",
                "View messages sent to sidecars",
            )
            .expect("valid"),
            updates: IntCounterVec::new(
                Opts::new(
                    "picket_control_view_updates_total",
                    "Sidecar view updates, by how they were computed: skipped (the changes cannot touch the view), entries (applied object by object), recomputed, full (a new stream)",
                ),
                &["how"],
            )
            .expect("valid"),
            bytes: IntCounter::new(
                "picket_control_bytes_sent_total",
                "Bytes of view messages sent to sidecars",
            )
            .expect("valid"),
            disconnects: IntCounterVec::new(
                Opts::new(
                    "picket_control_stream_ends_total",
                    "Watch streams ended, by reason",
                ),
                &["reason"],
            )
            .expect("valid"),
            convergence: Histogram::with_opts(
                HistogramOpts::new(
                    "picket_control_convergence_seconds",
                    "From a view message sent to the sidecar's acknowledgement that it applied it",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("valid"),
            unenforced: IntGaugeVec::new(
                Opts::new(
                    "picket_unenforced_pods",
                    "Pods that a NetworkPolicy selects, or in a namespace labelled for injection, without a ready Picket sidecar: nothing enforces their policies. By namespace; 0 where every such pod is enforced",
                ),
                &["namespace"],
            )
            .expect("valid"),
        };
        for c in [
            Box::new(metrics.connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.messages.clone()),
            Box::new(metrics.updates.clone()),
            Box::new(metrics.bytes.clone()),
            Box::new(metrics.disconnects.clone()),
            Box::new(metrics.convergence.clone()),
            Box::new(metrics.unenforced.clone()),
        ] {
            let _ = registry.register(c);
        }
        metrics
    }
}
