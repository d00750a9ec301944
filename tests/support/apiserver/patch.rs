//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch, applied to a stored object as the real server applies them.
//!
//! Pure: no I/O. The router parses the body with [`Patch::parse`]; the store applies it to
//! the current object with [`Patch::apply`] and stores the result as an update.
//!
//! Strategic merge patch follows `k8s.io/apimachinery/pkg/util/strategicpatch` as the server
//! runs it (parallel deletion lists merged, unmatched nulls ignored): maps merge key by key
//! and `null` deletes; a list merges only where the Go type declares `patchStrategy:"merge"`
//! ([`Kind::list_merge`]), by its `patchMergeKey` or as a set of scalars, and is replaced
//! otherwise. The directives work as upstream: `$patch: replace | delete` in maps and list
//! elements, `$retainKeys`, `$deleteFromPrimitiveList/<field>` and
//! `$setElementOrder/<field>`. Merged lists are ordered as upstream orders them: the patch's
//! items in the patch's order, interleaved with the server-only items where the live order
//! allows, new items first (a new webhook goes before the existing ones). Errors have the
//! upstream codes: a malformed directive is 400, a list of lists 422, anything else 500.
//!
//! Server-side apply (`application/apply-patch+yaml`) is not supported (415), nor is a
//! strategic merge patch of a pod's lists outside its metadata (415: send a merge patch).

use serde_json::{Map, Value};

use super::kind::{Kind, ListMerge};
use super::status::ApiError;

/// The directive key of strategic merge patch.
const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

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
    /// `application/strategic-merge-patch+json`.
    Strategic(Map<String, Value>),
}

/// Why a strategic merge patch failed, classified as `interpretStrategicMergePatchError` does.
#[derive(Debug)]
enum Failure {
    BadRequest(String),
    Invalid(String),
    Internal(String),
    /// The strategy of this list is not known here.
    Unknown(String),
}

type Merged<T> = Result<T, Failure>;

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
            "application/strategic-merge-patch+json" => {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(patch)) => Ok(Patch::Strategic(patch)),
                    Ok(Value::Null) => Ok(Patch::Strategic(Map::new())),
                    Ok(other) => Err(ApiError::bad_request(format!(
                        "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                        type_name(&other)
                    ))),
                    Err(e) => Err(ApiError::bad_request(e.to_string())),
                }
            }
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
    pub(crate) fn apply(&self, kind: Kind, current: &Value) -> Result<Value, ApiError> {
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
            Patch::Strategic(patch) => {
                let original = current.as_object().cloned().unwrap_or_default();
                let merged = Strategic { kind }
                    .merge_map("", original, patch.clone())
                    .map_err(|failure| match failure {
                        Failure::BadRequest(m) => ApiError::bad_request(m),
                        Failure::Invalid(m) => ApiError::unprocessable(m),
                        Failure::Internal(m) => ApiError::internal(m),
                        Failure::Unknown(path) => ApiError::unsupported_media_type(format!(
                            "the test API server does not know how a strategic merge patch merges \
                             the list {path} of {}; send a JSON merge patch or a JSON patch",
                            kind.plural()
                        )),
                    })?;
                Ok(Value::Object(merged))
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

// === strategic merge patch ===

/// The merge of one kind's objects; `path`s are field names joined by `.`.
struct Strategic {
    kind: Kind,
}

impl Strategic {
    fn list_merge(&self, path: &str) -> Merged<Option<ListMerge>> {
        self.kind
            .list_merge(path)
            .ok_or_else(|| Failure::Unknown(path.to_string()))
    }

    /// `mergeMap`.
    fn merge_map(
        &self,
        path: &str,
        mut original: Map<String, Value>,
        mut patch: Map<String, Value>,
    ) -> Merged<Map<String, Value>> {
        if let Some(directive) = patch.get(DIRECTIVE) {
            return match directive.as_str() {
                Some("replace") => {
                    patch.remove(DIRECTIVE);
                    Ok(patch)
                }
                Some("delete") => Ok(Map::new()),
                _ => Err(bad_patch_type(directive, &patch)),
            };
        }
        if let Some(retain) = patch.remove(RETAIN_KEYS) {
            let bad = || Failure::BadRequest("invalid patch format of retainKeys".into());
            let Value::Array(keys) = retain else {
                return Err(bad());
            };
            let listed = |k: &str| keys.iter().any(|r| r.as_str() == Some(k));
            for (k, v) in &patch {
                let directive =
                    k.starts_with(DELETE_FROM_PRIMITIVE_LIST) || k.starts_with(SET_ELEMENT_ORDER);
                if !v.is_null() && !directive && !listed(k) {
                    return Err(bad());
                }
            }
            original.retain(|k, _| listed(k));
        }
        self.merge_ordered_lists(path, &mut original, &mut patch)?;

        for (key, value) in patch {
            let (key, delete_list) = if key.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
                let error = "invalid patch format of primitive list";
                (
                    directive_field(&key, DELETE_FROM_PRIMITIVE_LIST, error)?,
                    true,
                )
            } else {
                (key, false)
            };
            if value.is_null() {
                original.remove(&key);
                continue;
            }
            let field = child(path, &key);
            let merged = match (original.remove(&key), value) {
                (None, _) if delete_list => None,
                (None, mut value) => {
                    discard_nulls(&mut value);
                    remove_directives(value)
                }
                (Some(Value::Object(o)), Value::Object(p)) => {
                    Some(Value::Object(self.merge_map(&field, o, p)?))
                }
                (Some(Value::Array(o)), Value::Array(p)) => {
                    Some(Value::Array(self.merge_list(&field, o, p, delete_list)?))
                }
                (Some(existing), value) if same_type(&existing, &value) => remove_directives(value),
                (Some(existing), _) if delete_list => Some(existing),
                (Some(_), mut value) => {
                    discard_nulls(&mut value);
                    remove_directives(value)
                }
            };
            if let Some(merged) = merged {
                original.insert(key, merged);
            }
        }
        Ok(original)
    }

    /// `mergeSliceHandler`: merges where the field says so, replaces otherwise.
    fn merge_list(
        &self,
        path: &str,
        original: Vec<Value>,
        patch: Vec<Value>,
        delete_list: bool,
    ) -> Merged<Vec<Value>> {
        let merge_key = match self.list_merge(path)? {
            None => return Ok(patch),
            Some(ListMerge::Scalars) => "",
            Some(ListMerge::ByKey(key)) => key,
        };
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let of_maps = elements_are_maps(&original, &patch)?;
        if !of_maps {
            if delete_list {
                return Ok(original
                    .into_iter()
                    .filter(|v| !patch.contains(v))
                    .collect());
            }
            let mut merged: Vec<Value> = Vec::new();
            for value in original.iter().chain(&patch) {
                if !merged.contains(value) {
                    merged.push(value.clone());
                }
            }
            let (in_patch, server_only) = merged.into_iter().partition(|v| patch.contains(v));
            return normalize_element_order(in_patch, server_only, &patch, &original, "", false);
        }
        if merge_key.is_empty() {
            return Err(Failure::Internal(format!(
                "cannot merge lists without merge key for {path}"
            )));
        }
        let (original, patch) = special_elements(original, patch, merge_key)?;
        let mut merged = original.clone();
        for item in &patch {
            let Some(value) = item.get(merge_key) else {
                return Err(no_merge_key(item, merge_key));
            };
            let found = merged.iter().position(|o| o.get(merge_key) == Some(value));
            match found {
                Some(i) => {
                    let o = as_map(std::mem::take(&mut merged[i]))?;
                    let p = as_map(item.clone())?;
                    merged[i] = Value::Object(self.merge_map(path, o, p)?);
                }
                None => merged.push(item.clone()),
            }
        }
        let (in_patch, server_only) = partition_by_key(merged, &patch, merge_key)?;
        normalize_element_order(in_patch, server_only, &patch, &original, merge_key, true)
    }

    /// `mergePatchIntoOriginal`: the lists that come with a `$setElementOrder` directive.
    fn merge_ordered_lists(
        &self,
        path: &str,
        original: &mut Map<String, Value>,
        patch: &mut Map<String, Value>,
    ) -> Merged<()> {
        let keys: Vec<String> = patch
            .keys()
            .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
            .cloned()
            .collect();
        for key in keys {
            let order = patch.remove(&key).expect("listed above");
            let Value::Array(order) = order else {
                return Err(bad_arg_type("[]interface {}", &order));
            };
            let error = "invalid patch format of setElementOrder list";
            let field_key = directive_field(&key, SET_ELEMENT_ORDER, error)?;
            let list = |value: Option<&Value>| match value {
                None => Ok(None),
                Some(Value::Array(list)) => Ok(Some(list.clone())),
                Some(other) => Err(bad_arg_type("[]interface {}", other)),
            };
            let original_list = list(original.get(&field_key))?;
            let patch_list = list(patch.get(&field_key))?;
            let field = child(path, &field_key);
            let merge_key = match self.list_merge(&field)? {
                Some(ListMerge::ByKey(key)) => key,
                _ => "",
            };
            validate_patch_with_order(patch_list.as_deref().unwrap_or(&[]), &order, merge_key)?;
            let merged = match (&original_list, &patch_list) {
                (Some(o), None) => o.clone(),
                (None, Some(p)) => match remove_directives(Value::Array(p.clone())) {
                    Some(Value::Array(p)) => p,
                    _ => continue,
                },
                (Some(o), Some(p)) => self.merge_list(&field, o.clone(), p.clone(), false)?,
                (None, None) => continue,
            };
            let (in_order, server_only) = if merge_key.is_empty() {
                merged.into_iter().partition(|v| order.contains(v))
            } else {
                partition_by_key(merged, &order, merge_key)?
            };
            let original_list = original_list.unwrap_or_default();
            let of_maps = elements_are_maps(&original_list, patch_list.as_deref().unwrap_or(&[]))?;
            let both = normalize_element_order(
                in_order,
                server_only,
                &order,
                &original_list,
                merge_key,
                of_maps,
            )?;
            original.insert(field_key.clone(), Value::Array(both));
            patch.remove(&field_key);
        }
        Ok(())
    }
}

/// `mergeSliceWithSpecialElements`: applies `$patch: delete` elements to the original, and
/// `$patch: replace` (the patch's other elements become the list).
fn special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Merged<(Vec<Value>, Vec<Value>)> {
    let mut rest = Vec::new();
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            rest.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(value) = item.get(merge_key) else {
                    return Err(no_merge_key(&item, merge_key));
                };
                original.retain(|o| o.get(merge_key) != Some(value));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(Failure::Internal(
                    "merging lists cannot yet be specified in the patch".into(),
                ))
            }
            _ => return Err(bad_patch_type(directive, item.as_object().expect("maps"))),
        }
    }
    if replace {
        Ok((rest, Vec::new()))
    } else {
        Ok((original, rest))
    }
}

/// `normalizeElementOrder`: the patch's items in `patch_order`, the server-only items in
/// `server_order`, then interleaved by `mergeSortedSlice`.
fn normalize_element_order(
    in_patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
    of_maps: bool,
) -> Merged<Vec<Value>> {
    let right = normalize_slice_order(in_patch, patch_order, merge_key, of_maps)?;
    let left = normalize_slice_order(server_only, server_order, merge_key, of_maps)?;
    // Each step takes the server-only item if both are in the live list and it comes first
    // there; otherwise the patch's item (so new items go first).
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                let li = index(server_order, l, merge_key, of_maps);
                let ri = index(server_order, r, merge_key, of_maps);
                matches!((li, ri), (Some(li), Some(ri)) if li < ri)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// `normalizeSliceOrder`: sorts by position in `order`; `$patch: delete` items go last.
fn normalize_slice_order(
    to_sort: Vec<Value>,
    order: &[Value],
    merge_key: &str,
    of_maps: bool,
) -> Merged<Vec<Value>> {
    let (mut to_sort, to_delete): (Vec<Value>, Vec<Value>) = if of_maps {
        for item in to_sort.iter().chain(order) {
            if !item.is_object() {
                return Err(bad_arg_type("map[string]interface {}", item));
            }
            if item.get(merge_key).is_none() {
                return Err(no_merge_key(item, merge_key));
            }
        }
        to_sort.into_iter().partition(|v| !is_delete_directive(v))
    } else {
        (to_sort, Vec::new())
    };
    to_sort.sort_by_key(|v| index(order, v, merge_key, of_maps).unwrap_or(usize::MAX));
    to_sort.extend(to_delete);
    Ok(to_sort)
}

/// `validatePatchWithSetOrderList`: the patch's items appear in the order list, in order.
fn validate_patch_with_order(patch: &[Value], order: &[Value], merge_key: &str) -> Merged<()> {
    if order.is_empty() || patch.is_empty() {
        return Ok(());
    }
    let mut items = Vec::new();
    for item in patch {
        if !merge_key.is_empty() && !item.is_object() {
            return Err(bad_arg_type("map[string]interface {}", item));
        }
        if merge_key.is_empty() || !is_delete_directive(item) {
            items.push(item);
        }
    }
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        if items[p].get(DIRECTIVE).is_some() {
            p += 1;
            continue;
        }
        let equal = if merge_key.is_empty() {
            items[p] == &order[o]
        } else {
            let key = |v: &Value| {
                v.get(merge_key)
                    .cloned()
                    .ok_or_else(|| no_merge_key(v, merge_key))
            };
            key(items[p])? == key(&order[o])?
        };
        if equal {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() && o >= order.len() {
        return Err(Failure::Internal(format!(
            "the order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}",
            Value::Array(patch.to_vec()),
            Value::Array(order.to_vec())
        )));
    }
    Ok(())
}

/// Splits `merged` into the items whose merge key appears in `by`, and the others.
fn partition_by_key(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: &str,
) -> Merged<(Vec<Value>, Vec<Value>)> {
    let mut in_by = Vec::new();
    let mut others = Vec::new();
    for item in merged {
        if !item.is_object() {
            return Err(bad_arg_type("map[string]interface {}", &item));
        }
        let Some(value) = item.get(merge_key) else {
            return Err(no_merge_key(&item, merge_key));
        };
        if by.iter().any(|b| b.get(merge_key) == Some(value)) {
            in_by.push(item);
        } else {
            others.push(item);
        }
    }
    Ok((in_by, others))
}

/// The position of `value` in `list`, by merge key for maps, by value for scalars.
fn index(list: &[Value], value: &Value, merge_key: &str, of_maps: bool) -> Option<usize> {
    if of_maps {
        let wanted = value.get(merge_key);
        list.iter().position(|v| v.get(merge_key) == wanted)
    } else {
        list.iter().position(|v| v == value)
    }
}

/// `sliceElementType`: whether the elements of both lists are maps; they must all be of
/// one JSON type, and not lists.
fn elements_are_maps(a: &[Value], b: &[Value]) -> Merged<bool> {
    let mut first: Option<&Value> = None;
    for value in a.iter().chain(b) {
        if value.is_array() {
            return Err(Failure::Invalid("lists of lists are not supported".into()));
        }
        match first {
            None => first = Some(value),
            Some(f) if same_type(f, value) => {}
            Some(_) => {
                return Err(Failure::Internal(format!(
                    "list element types are not identical: [{} {}]",
                    Value::Array(a.to_vec()),
                    Value::Array(b.to_vec())
                )))
            }
        }
    }
    match first {
        Some(value) => Ok(value.is_object()),
        None => Err(Failure::Internal(
            "no elements in any of the given slices".into(),
        )),
    }
}

/// `removeDirectives`: drops maps carrying `$patch` (and returns `None` for one).
fn remove_directives(value: Value) -> Option<Value> {
    match value {
        Value::Object(map) => {
            if map.contains_key(DIRECTIVE) {
                return None;
            }
            Some(Value::Object(
                map.into_iter()
                    .filter_map(|(k, v)| remove_directives(v).map(|v| (k, v)))
                    .collect(),
            ))
        }
        Value::Array(list) => Some(Value::Array(
            list.into_iter().filter_map(remove_directives).collect(),
        )),
        other => Some(other),
    }
}

/// `discardNullValuesFromPatch`: a new value brings no nulls along.
fn discard_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(discard_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(discard_nulls),
        _ => {}
    }
}

fn is_delete_directive(value: &Value) -> bool {
    value.get(DIRECTIVE).and_then(Value::as_str) == Some("delete")
}

/// The field a `$directive/field` key names.
fn directive_field(key: &str, prefix: &str, error: &str) -> Merged<String> {
    match key.split_once('/') {
        Some((p, field)) if p == prefix => Ok(field.to_string()),
        _ => Err(Failure::BadRequest(error.to_string())),
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn as_map(value: Value) -> Merged<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(bad_arg_type("map[string]interface {}", &other)),
    }
}

fn no_merge_key(item: &Value, merge_key: &str) -> Failure {
    Failure::Internal(format!(
        "map: {item} does not contain declared merge key: {merge_key}"
    ))
}

fn bad_patch_type(directive: &Value, map: &Map<String, Value>) -> Failure {
    let directive = directive
        .as_str()
        .map_or_else(|| directive.to_string(), str::to_string);
    Failure::Internal(format!(
        "unknown patch type: {directive} in map: {}",
        Value::Object(map.clone())
    ))
}

fn bad_arg_type(expected: &str, actual: &Value) -> Failure {
    Failure::Internal(format!(
        "expected a {expected}, but received a {}",
        type_name(actual)
    ))
}

/// The JSON type, as Go's decoder names it in errors.
fn type_name(value: &Value) -> &'static str {
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
    use serde_json::json;

    use super::*;

    fn strategic(kind: Kind, original: Value, patch: Value) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&patch).expect("serialises");
        Patch::parse(Some("application/strategic-merge-patch+json"), &body)?.apply(kind, &original)
    }

    fn hooks(names: &[&str]) -> Value {
        json!({"webhooks": names.iter().map(|n| json!({"name": n, "sideEffects": "None"})).collect::<Vec<_>>()})
    }

    fn names(obj: &Value) -> Vec<&str> {
        obj["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["name"].as_str())
            .collect()
    }

    const MWC: Kind = Kind::MutatingWebhookConfiguration;

    #[test]
    fn webhooks_merge_by_name_and_new_ones_go_first() {
        let original = hooks(&["a.x.io", "b.x.io"]);
        let patched = strategic(
            MWC,
            original.clone(),
            json!({"webhooks": [{"name": "b.x.io", "clientConfig": {"caBundle": "Q0E="}}]}),
        )
        .expect("merges");
        assert_eq!(names(&patched), ["a.x.io", "b.x.io"]);
        assert_eq!(patched["webhooks"][1]["clientConfig"]["caBundle"], "Q0E=");
        assert_eq!(patched["webhooks"][1]["sideEffects"], "None", "kept");
        assert!(patched["webhooks"][0].get("clientConfig").is_none());

        let added = strategic(
            MWC,
            original.clone(),
            json!({"webhooks": [{"name": "c.x.io"}]}),
        )
        .expect("merges");
        assert_eq!(names(&added), ["c.x.io", "a.x.io", "b.x.io"]);

        let reordered = strategic(
            MWC,
            original,
            json!({"webhooks": [{"name": "b.x.io"}, {"name": "a.x.io"}]}),
        )
        .expect("merges");
        assert_eq!(
            names(&reordered),
            ["b.x.io", "a.x.io"],
            "the patch's order wins"
        );
    }

    #[test]
    fn list_directives_delete_replace_and_set_order() {
        let original = hooks(&["a.x.io", "b.x.io", "c.x.io"]);
        let deleted = strategic(
            MWC,
            original.clone(),
            json!({"webhooks": [{"name": "b.x.io", "$patch": "delete"}]}),
        )
        .expect("deletes");
        assert_eq!(names(&deleted), ["a.x.io", "c.x.io"]);

        let replaced = strategic(
            MWC,
            original.clone(),
            json!({"webhooks": [{"name": "z.x.io"}, {"$patch": "replace"}]}),
        )
        .expect("replaces");
        assert_eq!(replaced["webhooks"], json!([{"name": "z.x.io"}]));

        let ordered = strategic(
            MWC,
            original.clone(),
            json!({
                "$setElementOrder/webhooks": [{"name": "c.x.io"}, {"name": "a.x.io"}, {"name": "d.x.io"}, {"name": "b.x.io"}],
                "webhooks": [{"name": "d.x.io"}],
            }),
        )
        .expect("orders");
        assert_eq!(names(&ordered), ["c.x.io", "a.x.io", "d.x.io", "b.x.io"]);

        let err = strategic(
            MWC,
            original,
            json!({"webhooks": [{"sideEffects": "Some"}]}),
        )
        .expect_err("no merge key");
        assert_eq!(err.code, 500);
        assert!(
            err.message
                .contains("does not contain declared merge key: name"),
            "{err}"
        );
    }

    #[test]
    fn maps_merge_nulls_delete_and_unmerged_lists_are_replaced() {
        let original = json!({
            "metadata": {"name": "s", "labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "data": {"k": "djE="},
            "webhooks": [{"name": "a.x.io", "rules": [{"operations": ["CREATE"]}, {"operations": ["UPDATE"]}]}],
        });
        let patched = strategic(
            MWC,
            original,
            json!({
                "metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["z", "x"], "annotations": {"n": null, "m": "1"}},
                "webhooks": [{"name": "a.x.io", "rules": [{"operations": ["DELETE"]}]}],
            }),
        )
        .expect("merges");
        assert_eq!(patched["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(
            patched["metadata"]["annotations"],
            json!({"m": "1"}),
            "nulls in new maps go"
        );
        // A set: the patch's items in its order, new ones first, then the others.
        assert_eq!(patched["metadata"]["finalizers"], json!(["z", "x", "y"]));
        assert_eq!(
            patched["webhooks"][0]["rules"],
            json!([{"operations": ["DELETE"]}]),
            "rules has no patch strategy: replaced"
        );

        let removed = strategic(
            Kind::Secret,
            json!({"metadata": {"finalizers": ["x", "y"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        )
        .expect("deletes from the set");
        assert_eq!(removed["metadata"]["finalizers"], json!(["y"]));

        let retained = strategic(
            Kind::Secret,
            json!({"metadata": {"name": "s"}, "data": {"a": "", "b": ""}}),
            json!({"data": {"$retainKeys": ["b", "c"], "c": "Yw=="}}),
        )
        .expect("retains");
        assert_eq!(retained["data"], json!({"b": "", "c": "Yw=="}));
    }

    #[test]
    fn pods_are_patched_in_metadata_only() {
        let pod = json!({"metadata": {"name": "p", "finalizers": ["a"]}, "spec": {"containers": [{"name": "c"}]}});
        let patched = strategic(
            Kind::Pod,
            pod.clone(),
            json!({"metadata": {"finalizers": ["b"]}}),
        )
        .expect("metadata lists are known");
        assert_eq!(patched["metadata"]["finalizers"], json!(["b", "a"]));
        let err = strategic(
            Kind::Pod,
            pod,
            json!({"spec": {"containers": [{"name": "d"}]}}),
        )
        .expect_err("spec lists are not known");
        assert_eq!((err.code, err.reason), (415, "UnsupportedMediaType"));
        assert!(err.message.contains("spec.containers"), "{err}");
    }

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
            (Some("application/strategic-merge-patch+json"), 400),
            (Some("application/merge-patch+json"), 400),
        ] {
            let err = Patch::parse(content_type, b"[not json").expect_err("refused");
            assert_eq!(err.code, code, "{content_type:?}");
        }
        let err = Patch::parse(Some("application/strategic-merge-patch+json"), b"[]")
            .expect_err("not a map");
        assert_eq!(err.code, 400);
    }
}
