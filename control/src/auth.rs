//! Who is calling: a sidecar's projected service-account token, checked
//! with a TokenReview, names its pod. The pod comes from the token's
//! bound-object claims, never from the request.
//!
//! Reviews are cached by the token's SHA-256 until the token expires (at
//! most ten minutes) and rate-limited; the checks on a review are pure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;

/// The audience a sidecar's token must be for.
pub const AUDIENCE: &str = "picket";
/// The bound-pod claims the API server puts in a review's `extra`.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// The longest a review is trusted.
const MAX_CACHE: Duration = Duration::from_secs(600);
/// The most reviews cached.
const MAX_ENTRIES: usize = 50_000;

/// The pod a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// Its service account.
    pub service_account: String,
}

/// Why a caller is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No bearer token.
    #[error("no bearer token")]
    NoToken,
    /// The API server did not authenticate the token.
    #[error("token not authenticated: {0}")]
    NotAuthenticated(String),
    /// Authenticated, but not for audience `picket`.
    #[error("token is not for audience {AUDIENCE:?}")]
    WrongAudience,
    /// Not a service account's token.
    #[error("token is not a service account's: {0:?}")]
    NotServiceAccount(String),
    /// No bound-pod claims: not a projected token bound to a pod.
    #[error("token is not bound to a pod")]
    NotBoundToPod,
    /// Too many reviews: try again later.
    #[error("too many token reviews; retry")]
    RateLimited,
    /// The API server could not be asked.
    #[error("token review failed: {0}")]
    Unavailable(String),
}

/// Asks the API server about tokens.
pub trait Reviewer: Send + Sync + 'static {
    /// Reviews a token for audience [`AUDIENCE`].
    fn review(
        &self,
        token: &str,
    ) -> impl std::future::Future<Output = Result<TokenReviewStatus, String>> + Send;
}

/// The Kubernetes TokenReview API.
#[derive(Clone)]
pub struct KubeReviewer(pub kube::Client);

/// Reviews with a cache and a rate limit.
#[derive(Debug)]
pub struct Authenticator<R> {
    reviewer: R,
    cache: Mutex<HashMap<[u8; 32], (PodIdentity, Instant)>>,
    bucket: Mutex<Bucket>,
    /// Reviews asked of the API server, by result (for metrics).
    pub reviews: prometheus::IntCounterVec,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    rate: f64,
    burst: f64,
}

// === impl KubeReviewer ===

impl std::fmt::Debug for KubeReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeReviewer")
    }
}

impl Reviewer for KubeReviewer {
    async fn review(&self, token: &str) -> Result<TokenReviewStatus, String> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.0.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer.status.unwrap_or_default())
    }
}

// === impl Authenticator ===

impl<R: Reviewer> Authenticator<R> {
    /// An authenticator allowing `rate` reviews a second, `burst` at once.
    pub fn new(reviewer: R, rate: f64, burst: f64) -> Self {
        Self {
            reviewer,
            cache: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
                rate,
                burst,
            }),
            reviews: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "picket_control_token_reviews_total",
                    "TokenReviews asked of the API server, by result",
                ),
                &["result"],
            )
            .expect("valid metric"),
        }
    }

    /// The pod a token is bound to.
    pub async fn authenticate(&self, token: &str) -> Result<PodIdentity, Refusal> {
        if token.is_empty() {
            return Err(Refusal::NoToken);
        }
        let hash = sha256(token);
        let now = Instant::now();
        if let Some((identity, until)) = self.lock_cache().get(&hash) {
            if *until > now {
                return Ok(identity.clone());
            }
        }
        if !self.take_token(now) {
            self.reviews.with_label_values(&["rate-limited"]).inc();
            return Err(Refusal::RateLimited);
        }
        let status = match self.reviewer.review(token).await {
            Ok(status) => status,
            Err(e) => {
                self.reviews.with_label_values(&["error"]).inc();
                return Err(Refusal::Unavailable(e));
            }
        };
        let identity = match identity_of(&status) {
            Ok(identity) => identity,
            Err(refusal) => {
                self.reviews.with_label_values(&["refused"]).inc();
                return Err(refusal);
            }
        };
        self.reviews.with_label_values(&["authenticated"]).inc();
        let lifetime = expiry_of(token)
            .map(|exp| exp.saturating_sub(unix_now()))
            .map_or(Duration::from_secs(60), Duration::from_secs)
            .min(MAX_CACHE);
        let mut cache = self.lock_cache();
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(hash, (identity.clone(), now + lifetime));
        Ok(identity)
    }

    fn take_token(&self, now: Instant) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.duration_since(b.at).as_secs_f64() * b.rate;
        b.tokens = (b.tokens + refill).min(b.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (PodIdentity, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pod a review names, or why it names none.
pub fn identity_of(status: &TokenReviewStatus) -> Result<PodIdentity, Refusal> {
    if status.authenticated != Some(true) {
        return Err(Refusal::NotAuthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "unknown token".into()),
        ));
    }
    // The API server answers with the audiences the token is valid for among
    // those asked; none of ours means it is not for us.
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == AUDIENCE))
    {
        return Err(Refusal::WrongAudience);
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(Refusal::NotServiceAccount(username));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Some(value.clone()),
        _ => None,
    };
    let (Some(name), Some(uid)) = (one(POD_NAME), one(POD_UID)) else {
        return Err(Refusal::NotBoundToPod);
    };
    Ok(PodIdentity {
        namespace: namespace.to_string(),
        name,
        uid,
        service_account: service_account.to_string(),
    })
}

/// The `exp` claim of a JWT, unverified (the review verified it; this only
/// bounds how long the review is cached).
fn expiry_of(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn bound(audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:shop:api".into()),
                extra: Some(
                    [
                        (POD_NAME.to_string(), vec!["api-0".to_string()]),
                        (POD_UID.to_string(), vec!["u-1".to_string()]),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_bound_token_names_its_pod() {
        let id = identity_of(&bound(&[AUDIENCE])).unwrap();
        assert_eq!(
            id,
            PodIdentity {
                namespace: "shop".into(),
                name: "api-0".into(),
                uid: "u-1".into(),
                service_account: "api".into(),
            }
        );
    }

    #[test]
    fn every_other_review_is_refused() {
        assert_eq!(identity_of(&bound(&["other"])), Err(Refusal::WrongAudience));
        let mut unbound = bound(&[AUDIENCE]);
        unbound.user.as_mut().unwrap().extra = None;
        assert_eq!(identity_of(&unbound), Err(Refusal::NotBoundToPod));
        let mut user = bound(&[AUDIENCE]);
        user.user.as_mut().unwrap().username = Some("alice".into());
        assert!(matches!(
            identity_of(&user),
            Err(Refusal::NotServiceAccount(_))
        ));
        let mut failed = bound(&[AUDIENCE]);
        failed.authenticated = None;
        assert!(matches!(
            identity_of(&failed),
            Err(Refusal::NotAuthenticated(_))
        ));
    }

    struct Counting(std::sync::atomic::AtomicUsize);

    impl Reviewer for Counting {
        async fn review(&self, _: &str) -> Result<TokenReviewStatus, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(bound(&[AUDIENCE]))
        }
    }

    #[tokio::test]
    async fn reviews_are_cached_and_rate_limited() {
        let auth = Authenticator::new(Counting(0.into()), 0.0, 2.0);
        for _ in 0..3 {
            auth.authenticate("t1").await.unwrap();
        }
        assert_eq!(auth.reviewer.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        auth.authenticate("t2").await.unwrap();
        assert_eq!(auth.authenticate("t3").await, Err(Refusal::RateLimited));
        assert_eq!(auth.authenticate("").await, Err(Refusal::NoToken));
    }
}
