//! The identity manager: a key made in memory (never on disk), a CSR sent
//! with the pod's projected token to the control plane (the mesh CA), the
//! certificate installed; renewed at half its life (± 10%, so a fleet does
//! not renew at once), with a new key each time. A failed renewal keeps
//! the certificate it has and retries with backoff, as ztunnel does.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use picket_state::control::ControlConfig;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::CertificateDer;

use super::credentials::Credentials;

/// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Metrics of the identity manager.
#[derive(Clone, Debug)]
pub struct IdentityMetrics {
    /// The certificate's notAfter (Unix seconds); 0 before the first.
    pub expiration: prometheus::IntGauge,
    /// Certificate requests, by result.
    pub refreshes: prometheus::IntCounterVec,
    /// The trust anchors installed, by fingerprint (1 each).
    pub anchors: prometheus::IntGaugeVec,
}

// === impl IdentityMetrics ===

impl IdentityMetrics {
    /// Registers the metrics.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let metrics = Self {
            expiration: prometheus::IntGauge::new(
                "picket_identity_cert_expiration_timestamp_seconds",
                "When this sidecar's mesh certificate expires (Unix time); 0 before the first",
            )
            .expect("valid"),
            refreshes: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "picket_identity_refresh_total",
                    "Mesh certificate requests to the control plane, by result",
                ),
                &["result"],
            )
            .expect("valid"),
            anchors: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "picket_trust_anchors",
                    "The mesh's trust anchors this sidecar verifies peers against, by SHA-256 fingerprint (the first 16 hex digits): during a root rotation, every sidecar must show both roots before the issuer moves to the new one",
                ),
                &["fingerprint"],
            )
            .expect("valid"),
        };
        let _ = registry.register(Box::new(metrics.expiration.clone()));
        let _ = registry.register(Box::new(metrics.refreshes.clone()));
        let _ = registry.register(Box::new(metrics.anchors.clone()));
        metrics
    }
}

/// Certifies and renews forever.
pub async fn run(config: ControlConfig, credentials: Arc<Credentials>, metrics: IdentityMetrics) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match certify_once(&config, &credentials).await {
            Ok((not_after, anchors)) => {
                metrics.anchors.reset();
                for anchor in &anchors {
                    metrics
                        .anchors
                        .with_label_values(&[&fingerprint(anchor)])
                        .set(1);
                }
                metrics.refreshes.with_label_values(&["ok"]).inc();
                metrics.expiration.set(not_after);
                backoff = FIRST_BACKOFF;
                let wait = renew_after(not_after, unix_now(), fraction());
                tracing::info!(not_after, renew_in = ?wait, "Mesh certificate installed");
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                metrics.refreshes.with_label_values(&["error"]).inc();
                let kept = credentials.not_after();
                tracing::warn!(%error, kept_not_after = ?kept, retry_in = ?backoff, "Cannot get a mesh certificate; keeping the one installed, if any");
                tokio::time::sleep(picket_common::jitter::full(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One request: a new key, a CSR, the certificate installed. Its notAfter,
/// and the anchors installed with it.
async fn certify_once(
    config: &ControlConfig,
    credentials: &Credentials,
) -> Result<(i64, Vec<CertificateDer<'static>>), String> {
    let key = KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    // The CA names the caller from its token: the CSR carries only the key.
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| format!("CSR: {e}"))?;
    let issued = picket_state::control::certify(config, csr.der().to_vec())
        .await
        .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> =
        issued.chain.into_iter().map(CertificateDer::from).collect();
    let anchors: Vec<CertificateDer<'static>> = issued
        .trust_anchors
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    credentials.set(
        chain,
        key.serialize_der(),
        &anchors,
        &issued.trust_domain,
        issued.not_after,
    )?;
    Ok((issued.not_after, anchors))
}

/// A certificate's SHA-256 fingerprint, its first 16 hex digits.
fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long until renewal: at `fraction` (about one half) of the life the
/// certificate has left when it arrives (its notBefore is back-dated for
/// clock skew, so it is not counted); at least a second.
fn renew_after(not_after: i64, now: i64, fraction: f64) -> Duration {
    let left = (not_after - now).max(0) as f64;
    Duration::from_secs_f64((left * fraction).max(1.0))
}

/// 50% ± 10%.
fn fraction() -> f64 {
    0.5 * picket_common::jitter::around(Duration::from_secs(1), 0.2).as_secs_f64()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_the_fraction_of_the_life_never_before_a_second() {
        // A day's certificate, now at issuance.
        let na = 1_000 + 86_400;
        let half = renew_after(na, 1_000, 0.5);
        assert_eq!(half.as_secs(), 43_200);
        assert!(renew_after(na, 1_000, 0.4) < half);
        assert!(renew_after(na, 1_000, 0.6) > half);
        // A six-second certificate renews at three.
        assert_eq!(renew_after(1_006, 1_000, 0.5), Duration::from_secs(3));
        assert_eq!(renew_after(na, na + 10, 0.5), Duration::from_secs(1));
        for _ in 0..100 {
            let f = fraction();
            assert!((0.4..=0.6).contains(&f), "{f}");
        }
    }
}
