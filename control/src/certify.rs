//! The `Certify` call: an authenticated sidecar's CSR, rate-limited per
//! pod, signed by the CA (see [`crate::ca`]) for the pod its token names.
//!
//! Authentication is the `Watch` stream's (the service does it); this
//! module limits, signs, counts and answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use picket_api::v1;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tonic::Status;

use crate::auth::PodIdentity;
use crate::ca::{Ca, CaError};

/// CSRs a pod may send per window: a minute, or a certificate's lifetime
/// when that is shorter (a sidecar renews twice a lifetime).
pub const CSRS_PER_WINDOW: u32 = 5;
/// The rate limit's longest window.
const WINDOW: Duration = Duration::from_secs(60);
/// Pods whose windows are remembered; older ones are forgotten first.
const MAX_PODS: usize = 100_000;

/// Signs certificates for authenticated pods.
#[derive(Debug)]
pub struct Certifier {
    ca: std::sync::RwLock<Option<std::sync::Arc<Ca>>>,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    /// Certificates issued.
    pub issued: IntCounter,
    /// Refusals, by reason.
    pub errors: IntCounterVec,
}

// === impl Certifier ===

impl Certifier {
    /// A certifier signing with `ca`; none: mTLS is not configured, and every
    /// CSR is refused, saying so.
    pub fn new(ca: Option<Ca>, registry: &Registry) -> Self {
        let issued = IntCounter::new(
            "picket_ca_certs_issued_total",
            "Workload certificates the mesh CA issued",
        )
        .expect("valid");
        let errors = IntCounterVec::new(
            Opts::new(
                "picket_ca_errors_total",
                "CSRs the mesh CA refused, by reason (unauthenticated, rate-limited, invalid-csr, not-configured, issuer)",
            ),
            &["reason"],
        )
        .expect("valid");
        let _ = registry.register(Box::new(issued.clone()));
        let _ = registry.register(Box::new(errors.clone()));
        Self {
            ca: std::sync::RwLock::new(ca.map(std::sync::Arc::new)),
            windows: Mutex::default(),
            issued,
            errors,
        }
    }

    /// Replaces the CA (the issuer or the anchors were rotated): new
    /// certificates are signed by it, and carry its anchors.
    pub fn set_ca(&self, ca: Ca) {
        *self.ca.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(ca));
    }

    /// Counts a refusal made before signing (authentication).
    pub fn refused(&self, reason: &str) {
        self.errors.with_label_values(&[reason]).inc();
    }

    /// Signs `csr` for `caller`, who has been authenticated.
    pub fn certify(&self, caller: &PodIdentity, csr: &[u8]) -> Result<v1::CertifyResponse, Status> {
        let ca = self.ca.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(ca) = ca else {
            self.refused("not-configured");
            return Err(Status::failed_precondition(
                "this control plane has no mesh CA (--identity-issuer-cert-file): mTLS is not configured",
            ));
        };
        if !self.take(&caller.uid, Instant::now(), WINDOW.min(ca.lifetime())) {
            self.refused("rate-limited");
            return Err(Status::resource_exhausted(format!(
                "pod {}/{} sent more than {CSRS_PER_WINDOW} CSRs in a minute",
                caller.namespace, caller.name
            )));
        }
        let issued = ca.issue(csr, caller, SystemTime::now()).map_err(|error| {
            let (reason, status) = match &error {
                CaError::Csr(_) | CaError::Identity(_) => {
                    ("invalid-csr", Status::invalid_argument(error.to_string()))
                }
                _ => ("issuer", Status::unavailable(error.to_string())),
            };
            self.refused(reason);
            tracing::warn!(pod.namespace = %caller.namespace, pod.name = %caller.name, %error, "CSR refused");
            status
        })?;
        self.issued.inc();
        tracing::info!(
            pod.namespace = %caller.namespace,
            pod.name = %caller.name,
            pod.uid = %caller.uid,
            not_after = issued.not_after,
            "Certificate issued"
        );
        Ok(v1::CertifyResponse {
            chain: issued.chain.iter().map(|c| c.to_vec()).collect(),
            trust_anchors: ca.anchors().iter().map(|c| c.to_vec()).collect(),
            not_after: issued.not_after,
            not_before: issued.not_before,
            trust_domain: ca.trust_domain().to_string(),
        })
    }

    /// Takes one CSR from the pod's window.
    fn take(&self, uid: &str, now: Instant, window: Duration) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_PODS {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let (start, count) = windows.entry(uid.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            *start = now;
            *count = 0;
        }
        *count += 1;
        *count <= CSRS_PER_WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pod_has_its_own_window_of_five() {
        let certifier = Certifier::new(None, &Registry::new());
        let now = Instant::now();
        for _ in 0..CSRS_PER_WINDOW {
            assert!(certifier.take("a", now, WINDOW));
        }
        assert!(
            !certifier.take("a", now, WINDOW),
            "a sixth CSR in the minute"
        );
        assert!(
            certifier.take("b", now, WINDOW),
            "another pod is not limited by a's"
        );
        assert!(certifier.take("a", now + WINDOW, WINDOW), "a new minute");
        // Four-second certificates: the window is four seconds.
        let short = Duration::from_secs(4);
        for _ in 0..CSRS_PER_WINDOW {
            assert!(certifier.take("c", now, short));
        }
        assert!(!certifier.take("c", now, short));
        assert!(certifier.take("c", now + short, short));
    }

    #[test]
    fn without_a_ca_every_csr_is_refused_saying_why() {
        let certifier = Certifier::new(None, &Registry::new());
        let caller = PodIdentity {
            namespace: "shop".into(),
            name: "api-0".into(),
            uid: "u".into(),
            service_account: "api".into(),
        };
        let status = certifier.certify(&caller, b"csr").unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("mTLS is not configured"));
        assert_eq!(
            certifier
                .errors
                .with_label_values(&["not-configured"])
                .get(),
            1
        );
    }
}
