//! The registry strategies: what the real server does to an object of each kind beyond the
//! generic metadata, on create and on update.
//!
//! Pure: no I/O. Called by the store for every write. [`decode`] and [`validate`] apply to
//! clients and tests alike (a real controller's writes are decoded and validated too); the
//! create and update defaults of pods and namespaces depend on [`Origin`] as documented in the
//! module documentation of [`super`].
//!
//! | kind                         | decoding                                 | validation                        |
//! |------------------------------|------------------------------------------|-----------------------------------|
//! | Secret                       | `stringData` folded into `data`, `type` defaults to `Opaque`, `data` must be base64 | keys are config keys, 1 MiB in all, `kubernetes.io/tls` needs `tls.crt` and `tls.key`; `type` is immutable, and so is `data` of an `immutable` Secret |
//! | MutatingWebhookConfiguration | every `caBundle` must be base64           | webhook names: required, DNS subdomains of three segments or more, unique |
//! | Namespace                    | —                                        | — (create: label `kubernetes.io/metadata.name`, status `Active`, finalizer `kubernetes`) |
//!
//! A body the real decoder rejects is 400 BadRequest; a failed validation is 422 Invalid,
//! with the real field paths and messages.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::kind::Kind;
use super::status::ApiError;
use super::store::{meta_str, Origin};

/// The label the API server adds to every namespace.
pub(crate) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The largest total size of a Secret's data (`MaxSecretSize`).
const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// What the real decoder does to a body: conversion (a Secret's `stringData`), defaulting
/// (a Secret's `type`) and the base64 of `[]byte` fields, which it rejects with 400.
pub(crate) fn decode(kind: Kind, obj: &mut Value) -> Result<(), ApiError> {
    match kind {
        Kind::Secret => decode_secret(obj),
        Kind::MutatingWebhookConfiguration => decode_webhooks(obj),
        Kind::Pod
        | Kind::Namespace
        | Kind::NetworkPolicy
        | Kind::ServiceAccount
        | Kind::Service
        | Kind::EndpointSlice
        | Kind::Node
        | Kind::ClusterNetworkPolicy
        | Kind::Event => Ok(()),
    }
}

/// Validates an object about to be stored; `old` is the stored state, for an update.
pub(crate) fn validate(kind: Kind, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let errors = match kind {
        Kind::Secret => validate_secret(obj, old),
        Kind::MutatingWebhookConfiguration => validate_webhooks(obj),
        Kind::Pod
        | Kind::Namespace
        | Kind::NetworkPolicy
        | Kind::ServiceAccount
        | Kind::Service
        | Kind::EndpointSlice
        | Kind::Node
        | Kind::ClusterNetworkPolicy
        | Kind::Event => Vec::new(),
    };
    if errors.is_empty() {
        return Ok(());
    }
    // As `field.ErrorList.ToAggregate` prints one error, or several in brackets.
    let message = if errors.len() == 1 {
        errors.concat()
    } else {
        format!("[{}]", errors.join(", "))
    };
    let name = meta_str(obj, "name").unwrap_or_default();
    Err(ApiError::invalid(&qualified_kind(kind), name, message))
}

/// What create does beyond the generic metadata: a namespace's label, status and finalizer;
/// a pod created by a client starts `Pending` (its status is the kubelet's to write).
pub(crate) fn prepare_for_create(kind: Kind, obj: &mut Value, origin: Origin) {
    match (kind, origin) {
        (Kind::Namespace, _) => {
            add_namespace_label(obj);
            if origin == Origin::Client {
                obj["status"] = json!({"phase": "Active"});
            }
            default_namespace_status(obj);
            let finalizers = obj.pointer("/spec/finalizers").cloned();
            if finalizers.is_none() {
                if !obj.get("spec").is_some_and(Value::is_object) {
                    obj["spec"] = json!({});
                }
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
        }
        (Kind::Pod, Origin::Client) => obj["status"] = json!({"phase": "Pending"}),
        _ => {}
    }
}

/// What a client's update keeps of the stored object: the status (written through the
/// status subresource) and a namespace's finalizers (written through `finalize`).
pub(crate) fn keep_on_client_update(kind: Kind, new: &mut Value, old: &Value) {
    if let Some(status) = old.get("status") {
        new["status"] = status.clone();
    }
    if kind == Kind::Namespace {
        if let Some(finalizers) = old.pointer("/spec/finalizers") {
            new["spec"]["finalizers"] = finalizers.clone();
        }
    }
}

/// What every update of a namespace gets back: its name label and a phase.
pub(crate) fn prepare_for_update(kind: Kind, new: &mut Value) {
    if kind == Kind::Namespace {
        add_namespace_label(new);
        default_namespace_status(new);
    }
}

// === Secret ===

fn decode_secret(obj: &mut Value) -> Result<(), ApiError> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "Secret in version \"v1\" cannot be handled as a Secret: {why}"
        ))
    };
    let map = obj
        .as_object_mut()
        .expect("the store checked for an object");
    let mut data = match map.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(data)) => data,
        Some(other) => {
            return Err(cannot(format!(
            "json: cannot unmarshal {} into Go struct field Secret.data of type map[string][]uint8",
            json_type(&other)
        )))
        }
    };
    for (key, value) in data.iter_mut() {
        // The stored form is the canonical base64 of the decoded bytes.
        let bytes = decode_bytes(value, "Secret.data")
            .map_err(|why| cannot(format!("{why} (data[{key}])")))?;
        *value = json!(STANDARD.encode(bytes));
    }
    // The v1 conversion writes stringData over data; the stored object has no stringData.
    match map.remove("stringData") {
        None | Some(Value::Null) => {}
        Some(Value::Object(strings)) => {
            for (key, value) in strings {
                let Value::String(text) = value else {
                    return Err(cannot(format!(
                        "json: cannot unmarshal {} into Go struct field Secret.stringData of type string",
                        json_type(&value)
                    )));
                };
                data.insert(key, json!(STANDARD.encode(text)));
            }
        }
        Some(other) => {
            return Err(cannot(format!(
                "json: cannot unmarshal {} into Go struct field Secret.stringData of type map[string]string",
                json_type(&other)
            )))
        }
    }
    if !data.is_empty() {
        map.insert("data".into(), Value::Object(data));
    }
    if map
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        map.insert("type".into(), json!("Opaque"));
    }
    Ok(())
}

fn validate_secret(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errors = Vec::new();
    let data = obj
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut total = 0;
    for (key, value) in &data {
        if let Some(why) = config_key_error(key) {
            errors.push(format!("data[{key}]: Invalid value: {key:?}: {why}"));
        }
        total += value
            .as_str()
            .and_then(|v| STANDARD.decode(v).ok())
            .map_or(0, |b| b.len());
    }
    if total > MAX_SECRET_SIZE {
        errors.push(format!(
            "data: Too long: must have at most {MAX_SECRET_SIZE} bytes"
        ));
    }
    let secret_type = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    if secret_type == "kubernetes.io/tls" {
        for key in ["tls.crt", "tls.key"] {
            if !data.contains_key(key) {
                errors.push(format!("data[{key}]: Required value"));
            }
        }
    }
    if let Some(old) = old {
        let old_type = old.get("type").and_then(Value::as_str).unwrap_or_default();
        if old_type != secret_type {
            errors.push(format!(
                "type: Invalid value: {secret_type:?}: field is immutable"
            ));
        }
        let immutable = |o: &Value| o.get("immutable").and_then(Value::as_bool) == Some(true);
        if immutable(old) {
            if !immutable(obj) {
                errors.push(
                    "immutable: Forbidden: field is immutable when `immutable` is set".into(),
                );
            }
            if obj.get("data") != old.get("data") {
                errors.push("data: Forbidden: field is immutable when `immutable` is set".into());
            }
        }
    }
    errors
}

/// `IsConfigMapKey`: why `key` is not a valid key of a Secret's data, if it is not.
fn config_key_error(key: &str) -> Option<&'static str> {
    if key.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if key.is_empty() || !key.chars().all(allowed) {
        return Some(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
             (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        );
    }
    match key {
        "." => Some("must not be '.'"),
        ".." => Some("must not be '..'"),
        _ if key.starts_with("..") => Some("must not start with '..'"),
        _ => None,
    }
}

// === MutatingWebhookConfiguration ===

fn decode_webhooks(obj: &mut Value) -> Result<(), ApiError> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "MutatingWebhookConfiguration in version \"v1\" cannot be handled as a \
             MutatingWebhookConfiguration: {why}"
        ))
    };
    let webhooks = match obj.get_mut("webhooks") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(webhooks)) => webhooks,
        Some(other) => {
            return Err(cannot(format!(
                "json: cannot unmarshal {} into Go struct field \
                 MutatingWebhookConfiguration.webhooks of type []v1.MutatingWebhook",
                json_type(other)
            )))
        }
    };
    for webhook in webhooks {
        if let Some(bundle) = webhook.pointer_mut("/clientConfig/caBundle") {
            let bytes = decode_bytes(bundle, "WebhookClientConfig.clientConfig.caBundle")
                .map_err(cannot)?;
            *bundle = json!(STANDARD.encode(bytes));
        }
    }
    Ok(())
}

fn validate_webhooks(obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let webhooks = obj.get("webhooks").and_then(Value::as_array);
    for (i, webhook) in webhooks.into_iter().flatten().enumerate() {
        let name = webhook
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = format!("webhooks[{i}].name");
        if name.is_empty() {
            errors.push(format!("{path}: Required value"));
            continue;
        }
        if let Some(why) = dns_subdomain_error(name) {
            errors.push(format!("{path}: Invalid value: {name:?}: {why}"));
        } else if name.split('.').count() < 3 {
            errors.push(format!(
                "{path}: Invalid value: {name:?}: should be a domain with at least three segments separated by dots"
            ));
        }
        if !seen.insert(name) {
            errors.push(format!("{path}: Duplicate value: {name:?}"));
        }
    }
    errors
}

// === helpers ===

fn add_namespace_label(obj: &mut Value) {
    let name = meta_str(obj, "name").unwrap_or_default().to_string();
    let meta = obj
        .as_object_mut()
        .expect("the store checked for an object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if !meta.get("labels").is_some_and(Value::is_object) {
        meta["labels"] = json!({});
    }
    meta["labels"][NAMESPACE_NAME_LABEL] = json!(name);
}

fn default_namespace_status(obj: &mut Value) {
    if obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({"phase": "Active"});
    }
}

/// A `[]byte` field as Go's JSON decoder reads it: standard base64 (line breaks ignored);
/// `null` is empty.
fn decode_bytes(value: &Value, field: &str) -> Result<Vec<u8>, String> {
    let text = match value {
        Value::Null => return Ok(Vec::new()),
        Value::String(text) => text,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field {field} of type []uint8",
                json_type(other)
            ))
        }
    };
    let compact: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    STANDARD.decode(&compact).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(at, _)
            | base64::DecodeError::InvalidLastSymbol(at, _) => at,
            base64::DecodeError::InvalidLength(at) => at,
            base64::DecodeError::InvalidPadding => compact.len(),
        };
        format!("illegal base64 data at input byte {at}")
    })
}

/// Why `name` is not a DNS-1123 subdomain, if it is not.
fn dns_subdomain_error(name: &str) -> Option<&'static str> {
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if name.len() > 253 {
        Some("must be no more than 253 characters")
    } else if !name.split('.').all(label_ok) {
        Some("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    } else {
        None
    }
}

/// `Kind.group`, as `schema.GroupKind` prints in Invalid messages.
fn qualified_kind(kind: Kind) -> String {
    if kind.group().is_empty() {
        kind.name().to_string()
    } else {
        format!("{}.{}", kind.name(), kind.group())
    }
}

/// The JSON type name Go's decoder uses in its errors.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(body: Value) -> Result<Value, ApiError> {
        let mut obj = body;
        decode(Kind::Secret, &mut obj)?;
        validate(Kind::Secret, &obj, None)?;
        Ok(obj)
    }

    #[test]
    fn secrets_fold_string_data_and_default_their_type() {
        let obj = secret(json!({
            "metadata": {"name": "s"},
            "data": {"a": "YQ==", "b": "Yg=="},
            "stringData": {"b": "B", "c": "C"},
        }))
        .expect("valid");
        assert_eq!(obj["data"], json!({"a": "YQ==", "b": "Qg==", "c": "Qw=="}));
        assert!(obj.get("stringData").is_none());
        assert_eq!(obj["type"], "Opaque");
    }

    #[test]
    fn secrets_are_decoded_and_validated_as_upstream() {
        let err = secret(json!({"metadata": {"name": "s"}, "data": {"a": "not base64!"}}))
            .expect_err("not base64");
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert!(
            err.message.contains("illegal base64 data at input byte 3"),
            "{err}"
        );

        let err = secret(json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls"}))
            .expect_err("tls without keys");
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert_eq!(
            err.message,
            "Secret \"s\" is invalid: [data[tls.crt]: Required value, data[tls.key]: Required value]"
        );

        let err =
            secret(json!({"metadata": {"name": "s"}, "data": {"a/b": ""}})).expect_err("bad key");
        assert!(err.message.contains("data[a/b]: Invalid value"), "{err}");
    }

    #[test]
    fn secret_updates_keep_type_and_immutable_data() {
        let old =
            secret(json!({"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "immutable": true}))
                .expect("valid");
        let mut new = old.clone();
        new["data"]["a"] = json!("Yg==");
        new["type"] = json!("other");
        let err = validate(Kind::Secret, &new, Some(&old)).expect_err("immutable");
        assert!(err
            .message
            .contains("type: Invalid value: \"other\": field is immutable"));
        assert!(err
            .message
            .contains("data: Forbidden: field is immutable when `immutable` is set"));
        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        validate(Kind::Secret, &labelled, Some(&old)).expect("metadata may change");
    }

    #[test]
    fn webhook_names_are_qualified_and_unique_and_ca_bundles_base64() {
        let mut obj = json!({"metadata": {"name": "w"}, "webhooks": [
            {"name": "a.b.c", "clientConfig": {"caBundle": "YQ=="}},
            {"name": "a.b.c"},
            {"name": "short.name"},
            {},
        ]});
        decode(Kind::MutatingWebhookConfiguration, &mut obj).expect("decodes");
        let err = validate(Kind::MutatingWebhookConfiguration, &obj, None).expect_err("invalid");
        assert_eq!(
            err.message,
            "MutatingWebhookConfiguration.admissionregistration.k8s.io \"w\" is invalid: [\
             webhooks[1].name: Duplicate value: \"a.b.c\", \
             webhooks[2].name: Invalid value: \"short.name\": should be a domain with at least three segments separated by dots, \
             webhooks[3].name: Required value]"
        );
        let mut bad = json!({"webhooks": [{"name": "a.b.c", "clientConfig": {"caBundle": "%%"}}]});
        let err = decode(Kind::MutatingWebhookConfiguration, &mut bad).expect_err("not base64");
        assert_eq!(err.code, 400);
    }
}
