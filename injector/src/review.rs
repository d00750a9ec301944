//! AdmissionReview `admission.k8s.io/v1`: parsing requests and building
//! responses around [`crate::patch::plan`].
//!
//! Pure: no I/O. The server calls [`parse`] on the body, looks up the
//! namespace of a [`Triage::Pod`], then calls [`respond_to_pod`]; a
//! [`Triage::Refuse`] is answered by [`respond_refused`], every other case by
//! [`respond_unchanged`]. Every response carries the request's uid.
//!
//! Bad input never lets a pod through unenforced: a body that is not an
//! AdmissionReview is an error (HTTP 400); a pod creation whose object does
//! not decode as a Pod (or that has no object or namespace) is refused, naming
//! the field; a review of another kind or operation is allowed unchanged.

#![warn(missing_docs)]

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::config::InjectConfig;
use crate::patch::{self, Decision, NamespaceView, Plan};

/// The only AdmissionReview version we speak.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The AdmissionReview kind.
pub const KIND: &str = "AdmissionReview";

/// A body that is not an AdmissionReview request (answered with HTTP 400).
#[derive(Debug, Error)]
pub enum ReviewError {
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not an AdmissionReview of our version.
    #[error("expected apiVersion {API_VERSION:?} kind {KIND:?}, got apiVersion {api_version:?} kind {kind:?}")]
    NotAdmissionReview {
        /// The body's apiVersion.
        api_version: String,
        /// The body's kind.
        kind: String,
    },
    /// The AdmissionReview has no `request`, or a malformed one.
    #[error("AdmissionReview has no valid request: {0}")]
    BadRequest(String),
}

/// The fields of an AdmissionRequest we use.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this review; echoed in the response.
    pub uid: String,
    /// The kind of the object.
    pub kind: GroupVersionKind,
    /// The object's namespace, as the API server knows it.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name (empty for `generateName` pods).
    #[serde(default)]
    pub name: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: String,
    /// A subresource (`status`, `ephemeralcontainers`), if any.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// The object being admitted.
    #[serde(default)]
    pub object: Option<Value>,
    /// Whether the API server will not persist the object.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// An API group, version and kind.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    /// The group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// The version.
    #[serde(default)]
    pub version: String,
    /// The kind.
    #[serde(default)]
    pub kind: String,
}

/// What to do with a parsed request.
#[derive(Debug)]
pub enum Triage {
    /// A Pod being created: look up its namespace, then [`respond_to_pod`].
    Pod {
        /// The decoded pod.
        pod: Box<Pod>,
        /// The namespace it is created in.
        namespace: String,
    },
    /// A pod creation the injector cannot read: refused, as it would run unenforced.
    Refuse {
        /// A static label for metrics and logs.
        reason: &'static str,
        /// What is wrong, for the client.
        message: String,
    },
    /// Anything else: allowed unchanged, with this warning if any.
    PassThrough {
        /// A static label for metrics and logs.
        reason: &'static str,
        /// A warning for the response.
        warning: Option<String>,
    },
}

/// The AdmissionReview sent back.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    /// Always [`API_VERSION`].
    pub api_version: &'static str,
    /// Always [`KIND`].
    pub kind: &'static str,
    /// The response.
    pub response: AdmissionResponse,
}

/// The answer to one AdmissionRequest.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the pod may be created.
    pub allowed: bool,
    /// `JSONPatch` when there is a patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The JSONPatch, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Why the pod is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Warnings shown to the client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The status of a refused request.
#[derive(Debug, Serialize)]
pub struct Status {
    /// An HTTP status code.
    pub code: u16,
    /// What is wrong, for the client.
    pub message: String,
    /// A machine-readable reason.
    pub reason: &'static str,
}

/// The outcome of one review, for logs and metrics.
#[derive(Debug)]
pub struct Reviewed {
    /// The response to serialize.
    pub review: AdmissionReviewResponse,
    /// What was decided, as a static label.
    pub decision: &'static str,
    /// A finer static label (skip reason, pass-through reason).
    pub reason: &'static str,
    /// Whether the response carries a patch.
    pub patched: bool,
}

// === parse ===

/// Parses a body as an AdmissionReview request and decides what it is about.
pub fn parse(body: &[u8]) -> Result<(AdmissionRequest, Triage), ReviewError> {
    let value: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != API_VERSION || kind != KIND {
        return Err(ReviewError::NotAdmissionReview { api_version, kind });
    }
    let Some(request) = value.get("request") else {
        return Err(ReviewError::BadRequest("no request".into()));
    };
    let request: AdmissionRequest = serde_json::from_value(request.clone())
        .map_err(|e| ReviewError::BadRequest(e.to_string()))?;
    if request.uid.is_empty() {
        return Err(ReviewError::BadRequest("request.uid is empty".into()));
    }
    let triage = triage(&request);
    Ok((request, triage))
}

fn triage(request: &AdmissionRequest) -> Triage {
    let pass = |reason, warning: Option<String>| Triage::PassThrough { reason, warning };
    let pod_kind = GroupVersionKind {
        group: String::new(),
        version: "v1".into(),
        kind: "Pod".into(),
    };
    if request.kind != pod_kind {
        let k = &request.kind;
        let warning = format!(
            "picket: injector only mutates v1 Pods, got {}/{} {}; allowed unchanged",
            k.group, k.version, k.kind
        );
        return pass("other_kind", Some(warning));
    }
    if request.operation != "CREATE" || request.sub_resource.is_some() {
        // Only creation can add containers; nothing to warn about.
        return pass("other_operation", None);
    }
    let refuse = |reason, message: String| Triage::Refuse { reason, message };
    let Some(object) = &request.object else {
        return refuse(
            "no_object",
            "picket: AdmissionReview of a pod creation has no request.object".into(),
        );
    };
    let pod: Pod = match serde_path_to_error::deserialize(object) {
        Ok(pod) => pod,
        Err(e) => {
            let message = format!(
                "picket: request.object does not decode as a Pod: {}: {}",
                e.path(),
                e.inner()
            );
            return refuse("undecodable", message);
        }
    };
    // The object's namespace may be empty; the request's is authoritative.
    let namespace = request
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .or_else(|| pod.metadata.namespace.clone().filter(|ns| !ns.is_empty()));
    let Some(namespace) = namespace else {
        return refuse(
            "no_namespace",
            "picket: AdmissionReview of a pod creation has no namespace (request.namespace \
             and request.object.metadata.namespace are empty)"
                .into(),
        );
    };
    Triage::Pod {
        pod: Box::new(pod),
        namespace,
    }
}

// === respond ===

/// Plans the injection of `pod` and builds the response.
pub fn respond_to_pod(
    uid: &str,
    pod: &Pod,
    namespace: &NamespaceView<'_>,
    cfg: &InjectConfig,
) -> Reviewed {
    let Plan {
        decision,
        ops,
        warnings,
    } = patch::plan(pod, namespace, cfg);
    let reason = match &decision {
        Decision::Injected(mode) => mode.as_str(),
        Decision::AlreadyInjected => "already_injected",
        Decision::Skipped(reason) => reason.as_str(),
        Decision::Rejected(rejection) => rejection.as_str(),
    };
    let mut response = AdmissionResponse {
        uid: uid.to_string(),
        allowed: true,
        patch_type: None,
        patch: None,
        status: None,
        warnings,
    };
    if let Decision::Rejected(rejection) = &decision {
        response.allowed = false;
        response.status = Some(bad_request(format!("picket: {rejection}")));
    } else if !ops.is_empty() {
        let json = serde_json::to_vec(&ops).expect("JSON patch ops always serialize");
        response.patch_type = Some("JSONPatch");
        response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
    }
    let patched = response.patch.is_some();
    Reviewed {
        review: wrap(response),
        decision: decision.as_str(),
        reason,
        patched,
    }
}

/// Allows the request unchanged, with a warning if any.
pub fn respond_unchanged(uid: &str, reason: &'static str, warning: Option<String>) -> Reviewed {
    let response = AdmissionResponse {
        uid: uid.to_string(),
        allowed: true,
        patch_type: None,
        patch: None,
        status: None,
        warnings: warning.into_iter().collect(),
    };
    Reviewed {
        review: wrap(response),
        decision: "passed_through",
        reason,
        patched: false,
    }
}

/// Refuses the request with `message` (a [`Triage::Refuse`]).
pub fn respond_refused(uid: &str, reason: &'static str, message: String) -> Reviewed {
    let response = AdmissionResponse {
        uid: uid.to_string(),
        allowed: false,
        patch_type: None,
        patch: None,
        status: Some(bad_request(message)),
        warnings: Vec::new(),
    };
    Reviewed {
        review: wrap(response),
        decision: "rejected",
        reason,
        patched: false,
    }
}

fn bad_request(message: String) -> Status {
    Status {
        code: 400,
        message,
        reason: "BadRequest",
    }
}

fn wrap(response: AdmissionResponse) -> AdmissionReviewResponse {
    AdmissionReviewResponse {
        api_version: API_VERSION,
        kind: KIND,
        response,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "request": request,
        }))
        .unwrap()
    }

    fn pod_request(object: Value) -> Value {
        serde_json::json!({
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": object,
        })
    }

    fn plain_pod() -> Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        })
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Parses a pod CREATE review and answers it, in its namespace with no
    /// labels or annotations.
    fn review_pod(object: Value) -> (AdmissionRequest, Reviewed) {
        let (request, triage) = parse(&review(pod_request(object))).unwrap();
        let Triage::Pod { pod, namespace } = triage else {
            panic!("not a pod: {triage:?}");
        };
        let labels = labels();
        let ns = NamespaceView {
            name: &namespace,
            labels: Some(&labels),
            annotations: Some(&labels),
        };
        let reviewed = respond_to_pod(&request.uid, &pod, &ns, &InjectConfig::for_test());
        (request, reviewed)
    }

    #[test]
    fn pod_create_is_patched_with_base64_json_patch_and_uid() {
        let (request, triage) = parse(&review(pod_request(plain_pod()))).unwrap();
        let Triage::Pod { pod, namespace } = triage else {
            panic!("not a pod: {triage:?}");
        };
        assert_eq!(namespace, "shop");
        let labels = labels();
        let ns = NamespaceView {
            name: &namespace,
            labels: Some(&labels),
            annotations: Some(&labels),
        };
        let reviewed = respond_to_pod(&request.uid, &pod, &ns, &InjectConfig::for_test());
        let json = serde_json::to_value(&reviewed.review).unwrap();
        assert_eq!(json["apiVersion"], API_VERSION);
        assert_eq!(json["kind"], KIND);
        assert_eq!(json["response"]["uid"], request.uid);
        assert_eq!(json["response"]["allowed"], true);
        assert_eq!(json["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(json["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        assert!(!ops.0.is_empty());
        assert!(reviewed.patched);
        assert_eq!(reviewed.decision, "injected");
    }

    #[test]
    fn namespace_falls_back_to_the_objects() {
        let mut request = pod_request(plain_pod());
        request["namespace"] = Value::Null;
        request["object"]["metadata"]["namespace"] = "shop".into();
        let (_, triage) = parse(&review(request)).unwrap();
        assert!(matches!(triage, Triage::Pod { namespace, .. } if namespace == "shop"));
    }

    #[test]
    fn not_an_admission_review_is_an_error() {
        assert!(matches!(parse(b"{not json"), Err(ReviewError::NotJson(_))));
        assert!(matches!(
            parse(br#"{"apiVersion":"v1","kind":"Pod"}"#),
            Err(ReviewError::NotAdmissionReview { .. })
        ));
        let v1beta1 =
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#;
        let err = parse(v1beta1).unwrap_err();
        assert!(
            err.to_string().contains("admission.k8s.io/v1beta1"),
            "{err}"
        );
        assert!(matches!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(ReviewError::BadRequest(_))
        ));
        let no_uid = review(serde_json::json!({"kind": {}, "operation": "CREATE"}));
        assert!(matches!(parse(&no_uid), Err(ReviewError::BadRequest(_))));
    }

    #[test]
    fn other_kinds_pass_through_with_a_warning() {
        let mut request = pod_request(serde_json::json!({}));
        request["kind"] =
            serde_json::json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (request, triage) = parse(&review(request)).unwrap();
        let Triage::PassThrough { reason, warning } = triage else {
            panic!("{triage:?}");
        };
        assert_eq!(reason, "other_kind");
        let reviewed = respond_unchanged(&request.uid, reason, warning);
        let json = serde_json::to_value(&reviewed.review).unwrap();
        assert_eq!(json["response"]["uid"], request.uid);
        assert_eq!(json["response"]["allowed"], true);
        assert!(json["response"].get("patch").is_none());
        assert!(json["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Deployment"));
    }

    #[test]
    fn undecodable_pods_are_refused_naming_the_field() {
        let object = serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": "no"}});
        let (request, triage) = parse(&review(pod_request(object))).unwrap();
        let Triage::Refuse { reason, message } = triage else {
            panic!("{triage:?}");
        };
        assert_eq!(reason, "undecodable");
        assert!(message.contains("request.object"), "{message}");
        assert!(message.contains("spec.containers"), "{message}");
        let reviewed = respond_refused(&request.uid, reason, message);
        let json = serde_json::to_value(&reviewed.review).unwrap();
        assert_eq!(json["response"]["uid"], request.uid);
        assert_eq!(json["response"]["allowed"], false);
        assert_eq!(json["response"]["status"]["code"], 400);
        assert!(json["response"].get("patch").is_none());
        assert_eq!(reviewed.decision, "rejected");
    }

    #[test]
    fn pod_creations_without_object_or_namespace_are_refused() {
        let mut no_object = pod_request(plain_pod());
        no_object.as_object_mut().unwrap().remove("object");
        let mut no_namespace = pod_request(plain_pod());
        no_namespace["namespace"] = Value::Null;
        for (request, expected) in [(no_object, "no_object"), (no_namespace, "no_namespace")] {
            let (_, triage) = parse(&review(request)).unwrap();
            assert!(
                matches!(triage, Triage::Refuse { reason, .. } if reason == expected),
                "{expected}: {triage:?}"
            );
        }
    }

    #[test]
    fn updates_pass_through_silently() {
        let mut request = pod_request(plain_pod());
        request["operation"] = "UPDATE".into();
        let (_, triage) = parse(&review(request)).unwrap();
        assert!(matches!(
            triage,
            Triage::PassThrough {
                reason: "other_operation",
                warning: None
            }
        ));
    }

    #[test]
    fn invalid_annotation_is_refused_with_uid() {
        let mut object = plain_pod();
        object["metadata"]["annotations"] =
            serde_json::json!({"picket.io/sidecar-mode": "sometimes"});
        let (request, reviewed) = review_pod(object);
        let json = serde_json::to_value(&reviewed.review).unwrap();
        assert_eq!(json["response"]["uid"], request.uid);
        assert_eq!(json["response"]["allowed"], false);
        assert_eq!(json["response"]["status"]["code"], 400);
        let message = json["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("picket.io/sidecar-mode"), "{message}");
    }

    #[test]
    fn port_range_leaving_no_free_port_is_refused_naming_the_field() {
        let mut object = plain_pod();
        object["spec"]["securityContext"] = serde_json::json!({
            "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "15006 15006"}],
        });
        let (_, reviewed) = review_pod(object);
        let json = serde_json::to_value(&reviewed.review).unwrap();
        assert_eq!(json["response"]["allowed"], false);
        assert_eq!(json["response"]["status"]["code"], 400);
        assert!(json["response"].get("patch").is_none());
        let message = json["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("spec.securityContext.sysctls") && message.contains("15006 15006"),
            "{message}"
        );
        assert_eq!(reviewed.reason, "invalid_sysctl");
    }

    /// Untrusted AdmissionReviews: random bytes, random JSON-ish text and
    /// odd but well-formed pods give a response or an error, never a panic.
    #[test]
    fn random_and_odd_reviews_never_panic() {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = br#"{}[]:,"\ 0123456789.-eEtruefalsnapiVersionkindrequestuidobject"#;
        for case in 0..3000 {
            let len = case % 300 + 1;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if case % 2 == 0 {
                        alphabet[(r % alphabet.len() as u64) as usize]
                    } else {
                        (r & 0xff) as u8
                    }
                })
                .collect();
            let _ = parse(&body);
        }
        let odd_pods = [
            serde_json::json!({"spec": {"containers": []}}),
            serde_json::json!({"spec": {"containers": [{"name": ""}]}}),
            serde_json::json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15006}, {"containerPort": 70000}]}]}}),
            serde_json::json!({"metadata": {"annotations": {"picket.io/exclude-inbound-ports": "1,2,99999,-3,,x"}}, "spec": {"containers": [{"name": "a"}]}}),
            serde_json::json!({"metadata": {"annotations": {"picket.io/proxy-log-level": "\u{0}\u{7f}[[[="}}, "spec": {"containers": [{"name": "a"}]}}),
            serde_json::json!({"spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "65535 1"}]}, "containers": [{"name": "a"}]}}),
            serde_json::json!({"spec": {"initContainers": [{"name": "picket-init"}], "containers": [{"name": "picket-proxy"}]}}),
            serde_json::json!({"spec": {"hostNetwork": true, "containers": [{"name": "a", "env": [{"name": "x".repeat(10_000)}]}]}}),
            serde_json::json!({"spec": {"containers": [{"name": "a", "volumeMounts": [{"name": "v", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}], "volumes": [{"name": "v"}]}}),
        ];
        let labels = labels();
        let ns = NamespaceView {
            name: "shop",
            labels: Some(&labels),
            annotations: Some(&labels),
        };
        for pod in odd_pods {
            if let Ok((request, Triage::Pod { pod, .. })) = parse(&review(pod_request(pod))) {
                let reviewed = respond_to_pod(&request.uid, &pod, &ns, &InjectConfig::for_test());
                let json = serde_json::to_value(&reviewed.review).unwrap();
                assert_eq!(json["response"]["uid"], request.uid.as_str());
            }
        }
    }
}
