//! The admission the test server runs on a client's pod create: the ServiceAccount admission
//! plugin (`plugin/pkg/admission/serviceaccount`), which mounts the service account's token
//! into every container. Mutating webhooks are not called, so a test that plays a webhook
//! sends the pod it produced, and sees what the plugin makes of it (a real server runs the
//! plugin before the webhooks, and again on reinvocation, after them).
//!
//! Pure: no I/O. The store calls [`service_account_name`] and then [`mount_token`] for a pod
//! created over HTTP (not for [`super::ApiServer::apply`], which stores what it is given).
//!
//! What upstream `Admit` does on create, and so what this does:
//!
//! 1. an empty `spec.serviceAccountName` becomes `default`;
//! 2. the service account must exist, else 403 Forbidden (the `default` one is taken to exist
//!    in every namespace, as the service account controller creates it there);
//! 3. unless `automountServiceAccountToken` is false on the pod (the pod's setting wins) or,
//!    when the pod does not set it, on the service account: every init container and
//!    container without a volumeMount at exactly [`TOKEN_DIR`] gets one, read-only, of the
//!    pod's volume named `kube-api-access-*`; when some container got the mount and the pod
//!    has no such volume, one is added, named `kube-api-access-` and five random characters:
//!    a projected service account token, the `kube-root-ca.crt` ConfigMap and the namespace.
//!
//! Not emulated: mirror pods (left alone upstream), the service account's image pull secrets
//! (copied into a pod without any upstream), and the plugin's validation of secret references.

use serde_json::{json, Value};

use super::kind::Kind;
use super::status::ApiError;

/// Where the plugin mounts the token (`DefaultAPITokenMountPath`).
pub(crate) const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The prefix of the token volume's name (`ServiceAccountVolumeName` and a dash).
pub(crate) const TOKEN_VOLUME_PREFIX: &str = "kube-api-access-";

/// The service account the plugin gives a pod without one.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Step 1: the pod's service account, `default` written into the pod when it names none.
pub(crate) fn service_account_name(pod: &mut Value) -> String {
    let named = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .map(str::to_string);
    if let Some(name) = named {
        return name;
    }
    if !pod.get("spec").is_some_and(Value::is_object) {
        pod["spec"] = json!({});
    }
    pod["spec"]["serviceAccountName"] = json!(DEFAULT_SERVICE_ACCOUNT);
    DEFAULT_SERVICE_ACCOUNT.to_string()
}

/// Steps 2 and 3: mounts the token of `service_account` (the stored object, if any) into
/// the pod's containers; `suffix` names a new volume.
pub(crate) fn mount_token(
    pod: &mut Value,
    namespace: &str,
    name: &str,
    service_account: (&str, Option<&Value>),
    suffix: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    let (account, stored) = service_account;
    if stored.is_none() && account != DEFAULT_SERVICE_ACCOUNT {
        return Err(ApiError::forbidden(
            Kind::Pod,
            name,
            &format!(
                "error looking up service account {namespace}/{account}: \
                 serviceaccount \"{account}\" not found"
            ),
        ));
    }
    let automount = |obj: Option<&Value>, pointer: &str| {
        obj.and_then(|o| o.pointer(pointer))
            .and_then(Value::as_bool)
    };
    let wanted = automount(Some(pod), "/spec/automountServiceAccountToken")
        .or_else(|| automount(stored, "/automountServiceAccountToken"))
        .unwrap_or(true);
    if !wanted {
        return Ok(());
    }

    let existing = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|v| v.starts_with(TOKEN_VOLUME_PREFIX))
        .map(str::to_string);
    let volume = existing
        .clone()
        .unwrap_or_else(|| format!("{TOKEN_VOLUME_PREFIX}{}", suffix()));
    let mount = json!({"name": volume, "readOnly": true, "mountPath": TOKEN_DIR});
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        let containers = pod
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            if has_token_dir(container) {
                continue;
            }
            if !container.get("volumeMounts").is_some_and(Value::is_array) {
                container["volumeMounts"] = json!([]);
            }
            if let Some(mounts) = container["volumeMounts"].as_array_mut() {
                mounts.push(mount.clone());
                mounted = true;
            }
        }
    }
    if mounted && existing.is_none() {
        if !pod["spec"].get("volumes").is_some_and(Value::is_array) {
            pod["spec"]["volumes"] = json!([]);
        }
        if let Some(volumes) = pod["spec"]["volumes"].as_array_mut() {
            volumes.push(token_volume(&volume));
        }
    }
    Ok(())
}

/// Whether a container already mounts something at exactly [`TOKEN_DIR`] (upstream compares
/// the path as written: a trailing slash is another path).
fn has_token_dir(container: &Value) -> bool {
    container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_DIR))
}

/// `TokenVolumeSource()`: the projected volume the plugin adds.
fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {
                    "name": "kube-root-ca.crt",
                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                }},
                {"downwardAPI": {"items": [{
                    "path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                }]}},
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(mut pod: Value, stored: Option<Value>) -> Result<Value, ApiError> {
        let account = service_account_name(&mut pod);
        let service_account = (account.as_str(), stored.as_ref());
        mount_token(&mut pod, "shop", "web", service_account, || "x7k2p".into())?;
        Ok(pod)
    }

    fn mounts(pod: &Value, list: &str, index: usize) -> Vec<Value> {
        pod["spec"][list][index]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn token_mount() -> Value {
        json!({"name": "kube-api-access-x7k2p", "readOnly": true, "mountPath": TOKEN_DIR})
    }

    #[test]
    fn every_container_without_its_own_mount_gets_the_token() {
        let own = json!({"name": "empty", "mountPath": TOKEN_DIR, "readOnly": true});
        let pod = admit(
            json!({"spec": {
                "initContainers": [
                    {"name": "init", "image": "i"},
                    {"name": "own", "image": "o", "volumeMounts": [own]},
                ],
                "containers": [{"name": "app", "image": "a",
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "empty", "emptyDir": {}}],
            }}),
            None,
        )
        .expect("admitted");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(mounts(&pod, "initContainers", 0), [token_mount()]);
        assert_eq!(mounts(&pod, "initContainers", 1), [own]);
        assert_eq!(mounts(&pod, "containers", 0)[1], token_mount());
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 3);
        assert_eq!(volumes[2], token_volume("kube-api-access-x7k2p"));
        let sources = &volumes[2]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(
            sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
    }

    #[test]
    fn an_existing_token_volume_is_reused_and_a_trailing_slash_is_another_path() {
        let pod = admit(
            json!({"spec": {
                "serviceAccountName": "default",
                "containers": [{"name": "app", "image": "a", "volumeMounts": [
                    {"name": "kube-api-access-abcde", "mountPath": format!("{TOKEN_DIR}/")},
                ]}],
                "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": []}}],
            }}),
            None,
        )
        .expect("admitted");
        let added = &mounts(&pod, "containers", 0)[1];
        assert_eq!(added["name"], "kube-api-access-abcde");
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn automount_false_on_the_pod_or_its_service_account_mounts_nothing() {
        let app = json!([{"name": "app", "image": "a"}]);
        let quiet_pod = json!({"spec": {"automountServiceAccountToken": false, "containers": app}});
        let pod = admit(quiet_pod, None).expect("admitted");
        assert!(mounts(&pod, "containers", 0).is_empty());
        assert!(pod["spec"].get("volumes").is_none());

        let quiet_account =
            json!({"metadata": {"name": "default"}, "automountServiceAccountToken": false});
        let pod = admit(
            json!({"spec": {"containers": app}}),
            Some(quiet_account.clone()),
        )
        .expect("admitted");
        assert!(mounts(&pod, "containers", 0).is_empty());

        // The pod's own setting wins over its service account's.
        let loud_pod = json!({"spec": {"automountServiceAccountToken": true, "containers": app}});
        let pod = admit(loud_pod, Some(quiet_account)).expect("admitted");
        assert_eq!(mounts(&pod, "containers", 0), [token_mount()]);
    }

    #[test]
    fn a_missing_service_account_is_forbidden_but_default_always_exists() {
        let pod = json!({"spec": {"serviceAccountName": "robot", "containers": []}});
        let err = admit(pod, None).expect_err("no such service account");
        assert_eq!((err.code, err.reason), (403, "Forbidden"));
        assert_eq!(
            err.message,
            "pods \"web\" is forbidden: error looking up service account shop/robot: \
             serviceaccount \"robot\" not found"
        );
        let robot = json!({"metadata": {"name": "robot"}});
        let pod = json!({"spec": {"serviceAccountName": "robot", "containers": []}});
        admit(pod, Some(robot)).expect("a stored service account");
        // No container, no mount: no volume either.
        let pod = admit(json!({}), None).expect("default");
        assert!(pod["spec"].get("volumes").is_none());
    }
}
