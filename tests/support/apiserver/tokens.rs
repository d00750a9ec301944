//! Bearer tokens: the static ones tests register, and service-account tokens as the
//! TokenRequest API issues them, reviewed as the real authenticator chain reviews them.
//!
//! Pure but for the store it reads: the server calls [`ServiceAccountToken::issue`] with the
//! store locked, and [`authenticate`] for TokenReview and for every request's log entry.
//!
//! What upstream does, and so what this does:
//!
//! - Issuing (`pkg/registry/core/serviceaccount/storage/token.go`, `pkg/serviceaccount/claims.go`):
//!   a token names the service account (name and uid) and, when bound, the pod (name and uid);
//!   it has audiences (the API server's own, [`API_AUDIENCE`], when none are asked for), an
//!   expiry at least 10 minutes and at most 2^32 seconds away (422 otherwise), and a `jti`.
//!   A pod-bound token is for the pod's `spec.serviceAccountName`. The token is a JWT in
//!   shape, with the real claims, but its signature is random bytes: nothing checks it, the
//!   server only looks the whole token up.
//! - Reviewing (`pkg/serviceaccount/jwt.go`, then the validator in `claims.go`): the requested
//!   audiences (the request's, else the API server's) must intersect the token's, and that
//!   intersection is the answer's `audiences`; the token must not have expired, with the
//!   validator's one minute of leeway; the service account and the bound pod must still exist
//!   with the uids the token names. The user is `system:serviceaccount:<ns>:<name>` in
//!   `system:serviceaccounts`, `system:serviceaccounts:<ns>` and `system:authenticated`, with
//!   the pod's name and uid and the credential id (`JTI=<jti>`) as extras.
//! - Failing: the validator's error, behind the `invalid bearer token` of the loopback
//!   authenticator that kube-apiserver puts in front of the chain; the two are aggregated as
//!   `[invalid bearer token, <error>]`, and an unknown token gets `invalid bearer token` alone
//!   (the aggregate drops the repeat).
//!
//! Assumptions where the test server has less than a cluster: a service account that is not
//! stored stands in for the one the service account controller would create (as the admission
//! step assumes for `default`): its uid is made up, stable per namespace and name, and review
//! does not check it. No nodes, so no node extras; no `warnafter` extension of kubelet tokens.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::kind::Kind;
use super::status::ApiError;
use super::store::{meta_str, Store};

/// The API server's own audience, which is also its service-account issuer: the audience of
/// tokens issued without one, and what a TokenReview without `spec.audiences` checks against
/// (kube-apiserver's `--api-audiences` defaults to `--service-account-issuer`, which is this in
/// kubeadm and kind clusters).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The error the bearer token authenticator gives when no token authenticator knows a token.
const INVALID_BEARER_TOKEN: &str = "invalid bearer token";

/// How late a token may be used after its expiry (go-jose's `DefaultLeeway`).
const LEEWAY: Duration = Duration::from_secs(60);

/// The shortest and longest token lifetimes TokenRequest validation allows.
const MIN_EXPIRATION_SECONDS: u64 = 10 * 60;
const MAX_EXPIRATION_SECONDS: u64 = 1 << 32;

/// The extras of a service account's user (`k8s.io/apiserver/pkg/authentication/serviceaccount`).
const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";
const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";

/// What a registered token authenticates as.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// Registered with [`super::ApiServer::add_token`], or the admin token.
    Static(StaticUser),
    /// Issued by [`super::ApiServer::issue_pod_token`] and its unbound variant.
    ServiceAccount(ServiceAccountToken),
}

/// A static token's user. Any audience is accepted, and echoed in the review.
#[derive(Debug, Clone)]
pub(crate) struct StaticUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// What a service-account token is issued for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binding<'a> {
    /// Bound to this pod, for the pod's service account.
    Pod(&'a str),
    /// For this service account, bound to nothing.
    Unbound(&'a str),
}

/// The claims of an issued service-account token that review checks.
#[derive(Debug, Clone)]
pub(crate) struct ServiceAccountToken {
    namespace: String,
    service_account: ObjectRef,
    /// Whether the service account was stored at issue, so review checks it still is.
    service_account_stored: bool,
    pod: Option<ObjectRef>,
    audiences: Vec<String>,
    issued: SystemTime,
    expires: SystemTime,
    /// The `jti` claim.
    id: String,
}

/// A name and uid, as the token's claims refer to objects.
#[derive(Debug, Clone)]
struct ObjectRef {
    name: String,
    uid: String,
}

/// A successful authentication.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    pub username: String,
    uid: String,
    groups: Vec<String>,
    extra: BTreeMap<&'static str, Vec<String>>,
    /// The audiences the token is valid for among the requested ones, if the authenticator
    /// says.
    audiences: Option<Vec<String>>,
}

/// Authenticates `credential` (`None`: an unknown token) for the `requested` audiences
/// (`None`: the API server's own). The error is a TokenReview's `status.error`.
pub(crate) fn authenticate(
    credential: Option<&Credential>,
    store: &Store,
    now: SystemTime,
    requested: Option<&[String]>,
) -> Result<Authenticated, String> {
    match credential {
        None => Err(INVALID_BEARER_TOKEN.to_string()),
        Some(Credential::Static(user)) => Ok(user.authenticated(requested)),
        Some(Credential::ServiceAccount(token)) => token
            .review(store, now, requested)
            .map_err(|error| format!("[{INVALID_BEARER_TOKEN}, {error}]")),
    }
}

/// A TokenReview's `status` for the outcome of [`authenticate`]. Not authenticated is
/// `authenticated` left out and an empty `user`, as `omitempty` and a non-pointer struct
/// serialise.
pub(crate) fn review_status(outcome: Result<Authenticated, String>) -> Value {
    match outcome {
        Ok(user) => {
            let mut status = json!({"authenticated": true, "user": user.user_info()});
            if let Some(audiences) = user.audiences {
                status["audiences"] = json!(audiences);
            }
            status
        }
        Err(error) => json!({"user": {}, "error": error}),
    }
}

// === impl StaticUser ===

impl StaticUser {
    fn authenticated(&self, requested: Option<&[String]>) -> Authenticated {
        Authenticated {
            username: self.username.clone(),
            uid: self.uid.clone(),
            groups: self.groups.clone(),
            extra: BTreeMap::new(),
            audiences: requested.map(<[String]>::to_vec),
        }
    }
}

// === impl ServiceAccountToken ===

impl ServiceAccountToken {
    /// Issues a token as TokenRequest does: 404 when the pod (or, for an unbound token, the
    /// namespace) does not exist, 422 for a lifetime out of bounds.
    pub(crate) fn issue(
        store: &Store,
        namespace: &str,
        binding: Binding<'_>,
        audiences: &[&str],
        expiration: Duration,
        now: SystemTime,
    ) -> Result<Self, ApiError> {
        let (account, pod) = match binding {
            Binding::Pod(name) => {
                let pod = store
                    .get(Kind::Pod, Some(namespace), name)
                    .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
                let account = pod
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    .filter(|account| !account.is_empty())
                    .unwrap_or("default")
                    .to_string();
                let uid = meta_str(&pod, "uid").unwrap_or_default().to_string();
                let name = name.to_string();
                (account, Some(ObjectRef { name, uid }))
            }
            Binding::Unbound(account) => {
                if store.get(Kind::Namespace, None, namespace).is_none() {
                    return Err(ApiError::not_found(Kind::ServiceAccount, account));
                }
                (account.to_string(), None)
            }
        };
        check_expiration(&account, expiration)?;
        let stored = store.get(Kind::ServiceAccount, Some(namespace), &account);
        let uid = match stored.as_deref().and_then(|sa| meta_str(sa, "uid")) {
            Some(uid) => uid.to_string(),
            None => stand_in_uid(namespace, &account),
        };
        let audiences = if audiences.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            audiences.iter().map(|a| a.to_string()).collect()
        };
        Ok(Self {
            namespace: namespace.to_string(),
            service_account: ObjectRef { name: account, uid },
            service_account_stored: stored.is_some(),
            pod,
            audiences,
            issued: now,
            expires: now + Duration::from_secs(expiration.as_secs()),
            id: uuid(super::random_u64(), super::random_u64()),
        })
    }

    /// The token: a JWT with the claims upstream puts in, and a random signature.
    pub(crate) fn encode(&self) -> String {
        let mut kubernetes = json!({
            "namespace": self.namespace,
            "serviceaccount": {"name": self.service_account.name, "uid": self.service_account.uid},
        });
        if let Some(pod) = &self.pod {
            kubernetes["pod"] = json!({"name": pod.name, "uid": pod.uid});
        }
        let claims = json!({
            "aud": self.audiences,
            "exp": unix_seconds(self.expires),
            "iat": unix_seconds(self.issued),
            "iss": API_AUDIENCE,
            "jti": self.id,
            "kubernetes.io": kubernetes,
            "nbf": unix_seconds(self.issued),
            "sub": self.username(),
        });
        let header = json!({"alg": "RS256", "kid": "picket-test"});
        // An RS256 signature with a 2048-bit key is 256 bytes.
        let signature: Vec<u8> = (0..32)
            .flat_map(|_| super::random_u64().to_le_bytes())
            .collect();
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account.name
        )
    }

    /// The service-account authenticator: the audiences, then the validator's checks.
    fn review(
        &self,
        store: &Store,
        now: SystemTime,
        requested: Option<&[String]>,
    ) -> Result<Authenticated, String> {
        let api = [API_AUDIENCE.to_string()];
        let requested = requested.unwrap_or(&api);
        let audiences: Vec<String> = requested
            .iter()
            .filter(|a| self.audiences.contains(a))
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_quoted(&self.audiences),
                go_quoted(requested)
            ));
        }
        self.validate(store, now)?;
        Ok(Authenticated {
            username: self.username(),
            uid: self.service_account.uid.clone(),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{}", self.namespace),
                "system:authenticated".to_string(),
            ],
            extra: self.extra(),
            audiences: Some(audiences),
        })
    }

    /// The validator's checks, in its order: expiry, service account, bound pod.
    fn validate(&self, store: &Store, now: SystemTime) -> Result<(), String> {
        if now > self.expires + LEEWAY {
            return Err("service account token has expired".to_string());
        }
        let namespace = Some(self.namespace.as_str());
        if self.service_account_stored {
            let claimed = &self.service_account;
            let Some(account) = store.get(Kind::ServiceAccount, namespace, &claimed.name) else {
                return Err(ApiError::not_found(Kind::ServiceAccount, &claimed.name).message);
            };
            let uid = meta_str(&account, "uid").unwrap_or_default();
            if uid != claimed.uid {
                return Err(format!(
                    "service account UID ({uid}) does not match claim ({})",
                    claimed.uid
                ));
            }
        }
        if let Some(claimed) = &self.pod {
            let Some(pod) = store.get(Kind::Pod, namespace, &claimed.name) else {
                return Err("service account token has been invalidated".to_string());
            };
            let uid = meta_str(&pod, "uid").unwrap_or_default();
            if uid != claimed.uid {
                return Err(format!(
                    "pod UID ({uid}) does not match service account pod ref claim ({})",
                    claimed.uid
                ));
            }
        }
        Ok(())
    }

    fn extra(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut extra = BTreeMap::new();
        if let Some(pod) = &self.pod {
            extra.insert(POD_NAME_KEY, vec![pod.name.clone()]);
            extra.insert(POD_UID_KEY, vec![pod.uid.clone()]);
        }
        extra.insert(CREDENTIAL_ID_KEY, vec![format!("JTI={}", self.id)]);
        extra
    }
}

// === impl Authenticated ===

impl Authenticated {
    /// The `user` of a TokenReview's status (`UserInfo`; `extra` is left out when empty).
    fn user_info(&self) -> Value {
        let mut user = json!({"username": self.username, "uid": self.uid, "groups": self.groups});
        if !self.extra.is_empty() {
            user["extra"] = json!(self.extra);
        }
        user
    }
}

// === helpers ===

/// TokenRequest validation of `spec.expirationSeconds`.
fn check_expiration(account: &str, expiration: Duration) -> Result<(), ApiError> {
    let seconds = expiration.as_secs();
    let why = if seconds < MIN_EXPIRATION_SECONDS {
        "may not specify a duration less than 10 minutes"
    } else if seconds > MAX_EXPIRATION_SECONDS {
        "may not specify a duration larger than 2^32 seconds"
    } else {
        return Ok(());
    };
    Err(ApiError::invalid(
        "TokenRequest.authentication.k8s.io",
        account,
        format!("spec.expirationSeconds: Invalid value: {seconds}: {why}"),
    ))
}

/// The uid of a service account that is not stored: made up, the same every time.
fn stand_in_uid(namespace: &str, name: &str) -> String {
    let key = format!("{namespace}/{name}");
    uuid(fnv1a(&key, 0), fnv1a(&key, 1))
}

fn fnv1a(text: &str, salt: u8) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in std::iter::once(salt).chain(text.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A version 4 UUID made of these bits.
fn uuid(high: u64, low: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    )
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A list as Go's `%q` prints a `[]string`: `["a" "b"]`.
fn go_quoted(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_uids_are_stable_uuids() {
        let uid = stand_in_uid("shop", "default");
        assert_eq!(uid, stand_in_uid("shop", "default"));
        assert_ne!(uid, stand_in_uid("shop", "proxy"));
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(uid.as_bytes()[14] == b'4', "{uid}");
    }

    #[test]
    fn audiences_print_as_go_does() {
        let list = ["picket".to_string(), "a\"b".to_string()];
        assert_eq!(go_quoted(&list), r#"["picket" "a\"b"]"#);
    }

    #[test]
    fn lifetimes_out_of_bounds_are_invalid() {
        let short = check_expiration("proxy", Duration::from_secs(599)).expect_err("short");
        assert_eq!(short.code, 422);
        assert_eq!(
            short.message,
            "TokenRequest.authentication.k8s.io \"proxy\" is invalid: spec.expirationSeconds: \
             Invalid value: 599: may not specify a duration less than 10 minutes"
        );
        assert!(check_expiration("proxy", Duration::from_secs(600)).is_ok());
        assert!(check_expiration("proxy", Duration::from_secs((1 << 32) + 1)).is_err());
    }
}
