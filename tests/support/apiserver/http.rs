//! The HTTP side: routes requests to the store, watches, discovery and TokenReview, and
//! turns failures into `Status` responses.
//!
//! Async, called once per request by the connection tasks of [`super::server`]. Paths follow
//! the real API: `/api/v1/pods`, `/api/v1/namespaces/{ns}/pods/{name}[/status]`,
//! `/apis/networking.k8s.io/v1/...`, `/api/v1/namespaces/{name}`,
//! `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::body::Body;
use super::kind::Kind;
use super::params::{parse_read, Query, Read};
use super::patch::Patch;
use super::status::ApiError;
use super::store::{Origin, Part, Preconditions};
use super::{portforward, watch, RecordedRequest, Shared};

/// The largest request body accepted, as the real server's 3 MiB object limit, with slack.
const MAX_BODY: usize = 8 << 20;

/// How long a read at a future resourceVersion waits for the store to catch up (as the watch
/// cache waits), before failing with 504 "Too large resource version".
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// The Kubernetes version `/version` reports.
const MINOR: &str = "37";

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Version,
    Health,
    CoreVersions,
    Groups,
    Group(&'static str),
    Resources(&'static str),
    TokenReview,
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        kind: Kind,
        namespace: Option<String>,
        name: String,
        part: Part,
    },
}

/// The served API groups other than the core group, each at `v1`.
const GROUPS: [&str; 5] = [
    "networking.k8s.io",
    "authentication.k8s.io",
    "admissionregistration.k8s.io",
    "discovery.k8s.io",
    "policy.networking.k8s.io",
];

/// The version served of each of [`GROUPS`].
const GROUP_VERSIONS: [&str; 5] = [
    "networking.k8s.io/v1",
    "authentication.k8s.io/v1",
    "admissionregistration.k8s.io/v1",
    "discovery.k8s.io/v1",
    "policy.networking.k8s.io/v1alpha2",
];

/// Answers one request. Never fails: errors become `Status` bodies.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or_default().to_string();
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // As the real server authenticates a request: for its own audience.
    let user = token
        .and_then(|t| shared.authenticate(t, None).ok())
        .map(|u| u.username);
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
        user,
        status: None,
    };
    let id = shared.record_request(recorded.clone());
    tracing::debug!(%method, %path, query = %raw_query, "API request");
    shared.pass_barriers(&recorded).await;

    // A port-forward keeps the request: its connection is upgraded.
    if let Some((namespace, name)) = portforward::target(&path) {
        let response = if method == Method::GET || method == Method::POST {
            portforward::serve(&shared, req, &namespace, &name)
                .unwrap_or_else(|error| status_response(&error))
        } else {
            status_response(&ApiError::method_not_allowed(method.as_str()))
        };
        shared.record_status(id, response.status().as_u16());
        return Ok(response);
    }

    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            let query = Query::parse(&raw_query);
            let served = serve(&shared, &method, &path, &query, &body, content_type).await;
            served.unwrap_or_else(|error| status_response(&error))
        }
        Err(e) => {
            let error = ApiError::bad_request(format!("reading the request body: {e}"));
            status_response(&error)
        }
    };
    shared.record_status(id, response.status().as_u16());
    Ok(response)
}

async fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &Query,
    body: &Bytes,
    content_type: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let yaml = content_type
        .as_deref()
        .is_some_and(|ct| ct.contains("yaml"));
    let route = resolve(path)?;
    let read_only = |response: Response<Body>| {
        if method == Method::GET {
            Ok(response)
        } else {
            Err(ApiError::method_not_allowed(method.as_str()))
        }
    };
    if query.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test API server",
        ));
    }
    match route {
        Route::Version => read_only(json_response(StatusCode::OK, &version())),
        Route::Health => read_only(text_response("ok")),
        Route::CoreVersions => read_only(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": shared.address.to_string()}
                ],
            }),
        )),
        Route::Groups => read_only(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": GROUPS.iter().map(|g| group(g)).collect::<Vec<_>>(),
            }),
        )),
        Route::Group(g) => read_only(json_response(StatusCode::OK, &group(g))),
        Route::Resources(gv) => read_only(json_response(StatusCode::OK, &resources(gv))),
        Route::TokenReview => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            let review = parse_body(body, yaml)?;
            Ok(json_response(StatusCode::CREATED, &shared.review(&review)?))
        }
        Route::Collection { kind, namespace } => match *method {
            Method::GET => read_collection(shared, kind, namespace, query).await,
            Method::POST if namespace.is_some() || !kind.namespaced() => {
                let obj = parse_body(body, yaml)?;
                let created =
                    shared
                        .lock_store()
                        .create(kind, obj, namespace.as_deref(), Origin::Client)?;
                Ok(json_response(StatusCode::CREATED, &created))
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        },
        Route::Object {
            kind,
            namespace,
            name,
            part,
        } => {
            let ns = namespace.as_deref();
            match *method {
                Method::GET => match shared.lock_store().get(kind, ns, &name) {
                    Some(obj) => Ok(json_response(StatusCode::OK, &obj)),
                    None => Err(ApiError::not_found(kind, &name)),
                },
                Method::PUT => {
                    let obj = parse_body(body, yaml)?;
                    let stored =
                        shared
                            .lock_store()
                            .replace(kind, ns, &name, obj, Origin::Client, part)?;
                    Ok(json_response(StatusCode::OK, &stored))
                }
                Method::PATCH => {
                    let patch = Patch::parse(content_type.as_deref(), body)?;
                    let patched = shared.lock_store().patch(kind, ns, &name, &patch, part)?;
                    Ok(json_response(StatusCode::OK, &patched))
                }
                Method::DELETE if part == Part::Main => {
                    let preconditions = delete_preconditions(body)?;
                    let deleted = shared
                        .lock_store()
                        .delete(kind, ns, &name, &preconditions)?;
                    Ok(json_response(StatusCode::OK, &deleted))
                }
                _ => Err(ApiError::method_not_allowed(method.as_str())),
            }
        }
    }
}

async fn read_collection(
    shared: &Arc<Shared>,
    kind: Kind,
    namespace: Option<String>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    match parse_read(kind, namespace, query)? {
        Read::List { req, wait_for } => {
            if let Some(rv) = wait_for {
                wait_for_rv(shared, rv).await?;
            }
            let page = shared.lock_store().list(kind, &req)?;
            let mut metadata = json!({"resourceVersion": page.rv.to_string()});
            if let Some(token) = page.continue_token {
                metadata["continue"] = json!(token);
            }
            if let Some(remaining) = page.remaining {
                metadata["remainingItemCount"] = json!(remaining);
            }
            // Real servers leave kind and apiVersion off the items of a list.
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|obj| {
                    let mut item = (**obj).clone();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    item
                })
                .collect();
            let list = json!({
                "kind": kind.list_kind(),
                "apiVersion": kind.api_version(),
                "metadata": metadata,
                "items": items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        Read::Watch { req, wait_for } => {
            if let Some(rv) = wait_for {
                wait_for_rv(shared, rv).await?;
            }
            let body = watch::start(shared, req);
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
    }
}

/// Waits until the store has reached `rv`, or fails as the real server does.
async fn wait_for_rv(shared: &Shared, rv: u64) -> Result<(), ApiError> {
    let mut current = shared.lock_store().rv_watch();
    let reached = tokio::time::timeout(FRESHNESS_WAIT, current.wait_for(|now| *now >= rv)).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ApiError::too_large_resource_version(
            rv,
            shared.lock_store().rv(),
        )),
    }
}

/// Maps a path to what it names; 404 for anything not served.
fn resolve(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest): (String, &[&str]) = match segments.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "readyz" | "livez"] => return Ok(Route::Health),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["api", "v1"] => return Ok(Route::Resources("v1")),
        ["apis", g] => {
            return GROUPS
                .iter()
                .find(|known| *known == g)
                .map(|known| Route::Group(known))
                .ok_or_else(ApiError::no_route)
        }
        ["apis", g, v] => {
            let group_version = format!("{g}/{v}");
            return GROUP_VERSIONS
                .iter()
                .find(|known| **known == group_version)
                .map(|known| Route::Resources(known))
                .ok_or_else(ApiError::no_route);
        }
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => return Ok(Route::TokenReview),
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return Err(ApiError::no_route()),
    };
    let kind =
        |plural: &str| Kind::from_path(&group_version, plural).ok_or_else(ApiError::no_route);
    let object = |kind: Kind, namespace: Option<&str>, name: &str, part: Part| {
        if kind.namespaced() != namespace.is_some() || (part == Part::Status && !kind.has_status())
        {
            return Err(ApiError::no_route());
        }
        Ok(Route::Object {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            part,
        })
    };
    match rest {
        [plural] => Ok(Route::Collection {
            kind: kind(plural)?,
            namespace: None,
        }),
        ["namespaces", name] => object(kind("namespaces")?, None, name, Part::Main),
        ["namespaces", name, "status"] => object(kind("namespaces")?, None, name, Part::Status),
        ["namespaces", ns, plural] => {
            let kind = kind(plural)?;
            if !kind.namespaced() {
                return Err(ApiError::no_route());
            }
            Ok(Route::Collection {
                kind,
                namespace: Some(ns.to_string()),
            })
        }
        ["namespaces", ns, plural, name] => object(kind(plural)?, Some(ns), name, Part::Main),
        ["namespaces", ns, plural, name, "status"] => {
            object(kind(plural)?, Some(ns), name, Part::Status)
        }
        [plural, name] => object(kind(plural)?, None, name, Part::Main),
        [plural, name, "status"] => object(kind(plural)?, None, name, Part::Status),
        _ => Err(ApiError::no_route()),
    }
}

fn parse_body(body: &Bytes, yaml: bool) -> Result<Value, ApiError> {
    let parsed = if yaml {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

fn delete_preconditions(body: &Bytes) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let options = parse_body(body, false)?;
    let field = |name: &str| {
        options
            .pointer(&format!("/preconditions/{name}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Preconditions {
        uid: field("uid"),
        resource_version: field("resourceVersion"),
    })
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("JSON values serialise");
    let mut response = Response::new(Body::full(bytes));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn status_response(error: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let status = error.to_status();
    let mut response = json_response(code, &status);
    // The real server turns details.retryAfterSeconds into a Retry-After header.
    if let Some(seconds) = status
        .pointer("/details/retryAfterSeconds")
        .and_then(Value::as_u64)
    {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

// === discovery documents ===

fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "emulationMajor": "1",
        "emulationMinor": MINOR,
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": format!("v1.{MINOR}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group(name: &str) -> Value {
    let group_version = GROUP_VERSIONS
        .iter()
        .find(|gv| gv.split_once('/').is_some_and(|(g, _)| g == name))
        .expect("every group has a version");
    let (_, v) = group_version.split_once('/').unwrap_or_default();
    let version = json!({"groupVersion": group_version, "version": v});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [version],
        "preferredVersion": version,
    })
}

fn resources(group_version: &str) -> Value {
    let mut resources = Vec::new();
    for kind in Kind::ALL
        .into_iter()
        .filter(|k| k.api_version() == group_version)
    {
        let singular = kind.name().to_lowercase();
        let mut resource = json!({
            "name": kind.plural(),
            "singularName": singular,
            "namespaced": kind.namespaced(),
            "kind": kind.name(),
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        });
        if !kind.short_names().is_empty() {
            resource["shortNames"] = json!(kind.short_names());
        }
        resources.push(resource);
        if kind.has_status() {
            resources.push(json!({
                "name": format!("{}/status", kind.plural()),
                "singularName": "",
                "namespaced": kind.namespaced(),
                "kind": kind.name(),
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if group_version == "authentication.k8s.io/v1" {
        resources.push(json!({
            "name": "tokenreviews",
            "singularName": "tokenreview",
            "namespaced": false,
            "kind": "TokenReview",
            "verbs": ["create"],
        }));
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: Kind, namespace: Option<&str>, name: &str, part: Part) -> Route {
        Route::Object {
            kind,
            namespace: namespace.map(str::to_string),
            name: name.into(),
            part,
        }
    }

    #[test]
    fn paths_resolve_as_in_the_real_api() {
        let cases = [
            (
                "/api/v1/pods",
                Route::Collection {
                    kind: Kind::Pod,
                    namespace: None,
                },
            ),
            (
                "/api/v1/namespaces/a/pods",
                Route::Collection {
                    kind: Kind::Pod,
                    namespace: Some("a".into()),
                },
            ),
            (
                "/api/v1/namespaces/a/pods/p",
                obj(Kind::Pod, Some("a"), "p", Part::Main),
            ),
            (
                "/api/v1/namespaces/a/pods/p/status",
                obj(Kind::Pod, Some("a"), "p", Part::Status),
            ),
            (
                "/api/v1/namespaces",
                Route::Collection {
                    kind: Kind::Namespace,
                    namespace: None,
                },
            ),
            (
                "/api/v1/namespaces/a",
                obj(Kind::Namespace, None, "a", Part::Main),
            ),
            (
                "/api/v1/namespaces/a/status",
                obj(Kind::Namespace, None, "a", Part::Status),
            ),
            (
                "/apis/networking.k8s.io/v1/networkpolicies",
                Route::Collection {
                    kind: Kind::NetworkPolicy,
                    namespace: None,
                },
            ),
            (
                "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/d",
                obj(Kind::NetworkPolicy, Some("a"), "d", Part::Main),
            ),
            (
                "/apis/authentication.k8s.io/v1/tokenreviews",
                Route::TokenReview,
            ),
            (
                "/api/v1/secrets",
                Route::Collection {
                    kind: Kind::Secret,
                    namespace: None,
                },
            ),
            (
                "/api/v1/namespaces/a/secrets/s",
                obj(Kind::Secret, Some("a"), "s", Part::Main),
            ),
            (
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                Route::Collection {
                    kind: Kind::MutatingWebhookConfiguration,
                    namespace: None,
                },
            ),
            (
                "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/w",
                obj(Kind::MutatingWebhookConfiguration, None, "w", Part::Main),
            ),
            (
                "/apis/admissionregistration.k8s.io/v1",
                Route::Resources("admissionregistration.k8s.io/v1"),
            ),
            ("/version", Route::Version),
            ("/apis", Route::Groups),
        ];
        for (path, want) in cases {
            assert_eq!(resolve(path), Ok(want), "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "/api/v1/configmaps",
            "/api/v2/pods",
            "/apis/networking.k8s.io/v1/pods",
            "/api/v1/namespaces/a/namespaces",
            "/api/v1/pods/p",
            "/api/v1/namespaces/a/pods/p/log",
            "/api/v1/namespaces/a/secrets/s/status",
            "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/d/status",
            "/apis/admissionregistration.k8s.io/v1/namespaces/a/mutatingwebhookconfigurations",
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/w/status",
            "/apis/admissionregistration.k8s.io/v1beta1",
            "/nonsense",
        ] {
            let err = resolve(path).expect_err(path);
            assert_eq!(err.code, 404, "{path}");
        }
    }

    #[test]
    fn discovery_lists_the_served_resources() {
        let core = resources("v1");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "pods",
                "pods/status",
                "namespaces",
                "namespaces/status",
                "secrets",
                "serviceaccounts",
                "services",
                "services/status",
                "events",
                "nodes",
                "nodes/status"
            ]
        );
        let policy = resources("policy.networking.k8s.io/v1alpha2");
        assert_eq!(policy["resources"][0]["name"], "clusternetworkpolicies");
        assert_eq!(policy["resources"][0]["namespaced"], false);
        assert_eq!(
            group("policy.networking.k8s.io")["preferredVersion"]["version"],
            "v1alpha2"
        );
        let admission = resources("admissionregistration.k8s.io/v1");
        assert_eq!(
            admission["resources"][0],
            json!({
                "name": "mutatingwebhookconfigurations",
                "singularName": "mutatingwebhookconfiguration",
                "namespaced": false,
                "kind": "MutatingWebhookConfiguration",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })
        );
    }
}
