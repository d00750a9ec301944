//! Kubernetes `Status` errors: what the server answers when a request fails, and what the
//! Rust API returns for the same failures.
//!
//! Pure: no I/O. The reasons and messages follow `k8s.io/apimachinery/pkg/api/errors`.

use serde_json::{json, Value};

use super::kind::Kind;

/// A failed API request, as a Kubernetes `Status` (code, reason, message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code, e.g. 404.
    pub code: u16,
    /// The machine-readable reason, e.g. `NotFound`.
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
    details: Option<Value>,
    list_continue: Option<String>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            list_continue: None,
        }
    }

    fn with_details(mut self, kind: Kind, name: &str) -> Self {
        let mut details = json!({"name": name, "kind": kind.plural()});
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        self.details = Some(details);
        self
    }

    /// 404: the named object does not exist.
    pub(crate) fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(kind)),
        )
        .with_details(kind, name)
    }

    /// 404: no resource is served at this path.
    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409: an object with this name exists already.
    pub(crate) fn already_exists(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(kind)),
        )
        .with_details(kind, name)
    }

    /// 409: an update or delete precondition (resourceVersion, uid) does not hold.
    pub(crate) fn conflict(kind: Kind, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(kind)
            ),
        )
        .with_details(kind, name)
    }

    /// 403: an admission plugin refused the request.
    pub(crate) fn forbidden(kind: Kind, name: &str, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", qualified(kind)),
        )
        .with_details(kind, name)
    }

    /// 400: a malformed request.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422: the object or the options fail validation.
    pub(crate) fn invalid(kind_name: &str, name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind_name} \"{name}\" is invalid: {message}"),
        );
        e.details = Some(json!({"name": name, "kind": kind_name}));
        e
    }

    /// 422 with the message as it is, as the real server reports a JSON patch that does not
    /// apply (a `test` that fails, a path that does not exist).
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 415: the body's media type is not one this resource accepts.
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 405: the path exists but not for this verb.
    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 410 Expired: the requested resourceVersion has been compacted away.
    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 410 Expired for a continue token, carrying a token that continues inconsistently.
    pub(crate) fn expired_continue(message: impl Into<String>, token: Option<String>) -> Self {
        let mut e = Self::expired(message);
        e.list_continue = token;
        e
    }

    /// 504 Timeout: the requested resourceVersion is newer than the server's.
    pub(crate) fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        );
        e.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1
        }));
        e
    }

    /// The `Status` object the server sends for this error.
    pub fn to_status(&self) -> Value {
        let mut metadata = json!({});
        if let Some(token) = &self.list_continue {
            metadata["continue"] = json!(token);
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": metadata,
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `pods` or `networkpolicies.networking.k8s.io`, as messages name a resource.
fn qualified(kind: Kind) -> String {
    if kind.group().is_empty() {
        kind.plural().to_string()
    } else {
        format!("{}.{}", kind.plural(), kind.group())
    }
}
