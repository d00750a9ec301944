//! The injector's Prometheus metrics, registered on one registry that
//! `app.rs` creates and the admin server encodes on `/metrics`.
//!
//! No I/O. Labels are static strings (decision and reason labels come from
//! `review.rs`), so cardinality stays bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Counters and the latency histogram of `/mutate`.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Every request to `/mutate`.
    pub requests: IntCounter,
    /// Reviews answered, by decision and reason.
    pub reviews: IntCounterVec,
    /// Responses carrying a patch.
    pub patches: IntCounter,
    /// Requests refused before a review (bad body, too large, wrong method), by kind.
    pub errors: IntCounterVec,
    /// Time from request to response.
    pub latency: Histogram,
    /// Certificates reloaded while serving.
    pub cert_reloads: IntCounter,
}

// === impl Metrics ===

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounter::new("picket_injector_requests_total", "Requests to /mutate.")?;
        let reviews = IntCounterVec::new(
            Opts::new(
                "picket_injector_reviews_total",
                "AdmissionReviews answered, by decision and reason.",
            ),
            &["decision", "reason"],
        )?;
        let patches = IntCounter::new(
            "picket_injector_patches_total",
            "Responses carrying a JSONPatch.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "picket_injector_errors_total",
                "Requests refused before any review, by kind.",
            ),
            &["kind"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "picket_injector_request_duration_seconds",
                "Time to answer a request to /mutate.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let cert_reloads = IntCounter::new(
            "picket_injector_certificate_reloads_total",
            "Serving certificates swapped in while running.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(reviews.clone()))?;
        registry.register(Box::new(patches.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(cert_reloads.clone()))?;
        Ok(Metrics {
            requests,
            reviews,
            patches,
            errors,
            latency,
            cert_reloads,
        })
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(%error, "Cannot encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_their_names() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.requests.inc();
        m.reviews.with_label_values(&["injected", "native"]).inc();
        m.errors.with_label_values(&["bad_request"]).inc();
        m.latency.observe(0.002);
        let text = encode(&registry);
        assert!(text.contains("picket_injector_requests_total 1"), "{text}");
        assert!(text
            .contains("picket_injector_reviews_total{decision=\"injected\",reason=\"native\"} 1"));
        assert!(text.contains("picket_injector_request_duration_seconds_bucket"));
    }
}
