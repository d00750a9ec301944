//! PATCH bodies: JSON patch (RFC 6902) and JSON merge patch (RFC 7386), applied to a
//! stored object as the real server applies them.
//!
//! Pure: no I/O. The router parses the body with [`Patch::parse`]; the store applies it to
//! the current object with [`Patch::apply`] and stores the result as an update.
//!
//! Only what the clients here send is emulated: server-side apply and strategic merge patch
//! get 415 (the injector updates its webhook's caBundle with a JSON patch whose `test`
//! operations are its preconditions).

use serde_json::{Map, Value};

use super::kind::Kind;
use super::status::ApiError;

/// The media types the real server accepts for PATCH, as its 415 lists them.
const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, \
                        application/apply-patch+yaml, application/strategic-merge-patch+json, \
                        application/apply-patch+cbor";

/// A parsed PATCH body.
#[derive(Debug, Clone)]
pub(crate) enum Patch {
    /// `application/json-patch+json`.
    Json(json_patch::Patch),
    /// `application/merge-patch+json`.
    Merge(Value),
}

// === impl Patch ===

impl Patch {
    /// Reads a body of the given `Content-Type`: 415 for a media type the server does not
    /// take, 400 for a body that does not parse.
    pub(crate) fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let media_type = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match media_type.as_str() {
            "application/json-patch+json" => serde_json::from_slice(body)
                .map(Patch::Json)
                .map_err(|e| ApiError::bad_request(e.to_string())),
            "application/merge-patch+json" => match serde_json::from_slice::<Value>(body) {
                Ok(Value::Null) | Err(_) => Err(ApiError::bad_request("Invalid JSON Patch")),
                Ok(patch) => Ok(Patch::Merge(patch)),
            },
            "application/strategic-merge-patch+json" => Err(ApiError::unsupported_media_type(
                "strategic merge patch is not supported by the test API server (no client here \
                 sends one): send a JSON patch or a JSON merge patch",
            )),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Err(ApiError::unsupported_media_type(
                    "server-side apply is not supported by the test API server",
                ))
            }
            _ => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: {ACCEPTED}"
            ))),
        }
    }

    /// The object `current` with the patch applied. The caller validates the result.
    pub(crate) fn apply(&self, _kind: Kind, current: &Value) -> Result<Value, ApiError> {
        match self {
            Patch::Json(ops) => {
                let mut doc = current.clone();
                json_patch::patch(&mut doc, ops)
                    .map_err(|e| ApiError::unprocessable(e.to_string()))?;
                Ok(doc)
            }
            Patch::Merge(patch) => {
                let mut doc = current.clone();
                merge_patch(&mut doc, patch);
                Ok(doc)
            }
        }
    }
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("just made an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_and_json_patches_and_content_types() {
        let original =
            json!({"metadata": {"name": "s", "finalizers": ["a"]}, "data": {"k": "djE="}});
        let merge = Patch::parse(
            Some("application/merge-patch+json; charset=utf-8"),
            br#"{"metadata": {"finalizers": ["b"]}, "data": {"k": null}}"#,
        )
        .expect("parses");
        let patched = merge.apply(Kind::Secret, &original).expect("applies");
        assert_eq!(
            patched["metadata"]["finalizers"],
            json!(["b"]),
            "merge patch replaces lists"
        );
        assert_eq!(patched["data"], json!({}));

        let ops = Patch::parse(
            Some("application/json-patch+json"),
            br#"[{"op": "test", "path": "/data/k", "value": "djE="}, {"op": "replace", "path": "/data/k", "value": "djI="}]"#,
        )
        .expect("parses");
        assert_eq!(
            ops.apply(Kind::Secret, &original).expect("applies")["data"]["k"],
            "djI="
        );
        let failing = Patch::parse(
            Some("application/json-patch+json"),
            br#"[{"op": "test", "path": "/data/k", "value": "x"}]"#,
        )
        .expect("parses");
        let err = failing
            .apply(Kind::Secret, &original)
            .expect_err("test fails");
        assert_eq!((err.code, err.reason), (422, "Invalid"));

        for (content_type, code) in [
            (Some("application/json"), 415),
            (None, 415),
            (Some("application/apply-patch+yaml"), 415),
            (Some("application/strategic-merge-patch+json"), 415),
            (Some("application/merge-patch+json"), 400),
        ] {
            let err = Patch::parse(content_type, b"[not json").expect_err("refused");
            assert_eq!(err.code, code, "{content_type:?}");
        }
    }
}
