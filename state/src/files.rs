//! Manifests on disk: a file or a directory of multi-document YAML or JSON,
//! read into the engine's model.
//!
//! Does file I/O; the parsing of one file's text (`parse_manifest`) is pure.
//! Namespaces, Pods, NetworkPolicies, Services and EndpointSlices are read
//! as they are; workloads
//! (Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
//! Job, CronJob) each become one representative pod built from their
//! template; `kind: List` (and `*List`) is unwrapped; other kinds are skipped
//! with a warning. Objects without a namespace land in `default`, as
//! `kubectl apply` would put them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use picket_policy::convert::{self, InvalidField};
use picket_policy::{
    ClusterPolicy, EndpointSlice, Labels, Namespace, Node, ObjectKey, Pod, Policy, PolicyIndex,
    Service,
};

use crate::kind::{Kind, Object};

/// The namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The objects read from one file or a whole path.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    /// Namespaces, declared or synthesized.
    pub namespaces: Vec<Namespace>,
    /// Pods, and one representative pod per workload.
    pub pods: Vec<Pod>,
    /// Compiled NetworkPolicies.
    pub policies: Vec<Policy>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// Compiled ClusterNetworkPolicies.
    pub cluster_policies: Vec<ClusterPolicy>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Things worth telling the user that did not stop the load.
    pub warnings: Vec<String>,
    /// Rules that could not be compiled (their policies still isolate).
    pub errors: Vec<LoadError>,
}

/// A manifest that could not be read, named by file, object and field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// The object, as `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// The field, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

// === impl LoadError ===

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

// === impl ClusterObjects ===

impl ClusterObjects {
    /// Adds a namespace, with a warning, for every namespace that objects
    /// reference but no manifest declares.
    pub fn synthesize_namespaces(&mut self) {
        let declared: BTreeSet<&str> = self.namespaces.iter().map(|n| &*n.name).collect();
        let referenced: BTreeSet<String> = self
            .pods
            .iter()
            .map(|p| p.key.namespace.to_string())
            .chain(self.policies.iter().map(|p| p.key.namespace.to_string()))
            .filter(|ns| !declared.contains(ns.as_str()))
            .collect();
        for ns in referenced {
            self.warnings.push(format!(
                "namespace {ns} is referenced but not declared; assuming it exists with no labels but {}",
                convert::NAMESPACE_NAME_LABEL
            ));
            self.namespaces
                .push(convert::namespace_with_labels(&ns, Labels::new()));
        }
    }

    /// Builds the engine's index from these objects.
    pub fn index(&self) -> PolicyIndex {
        let mut index = PolicyIndex::build(
            self.namespaces.iter().cloned(),
            self.pods.iter().cloned(),
            self.policies.iter().cloned(),
        );
        index.replace_cluster_policies(self.cluster_policies.iter().cloned());
        index.replace_nodes(self.nodes.iter().cloned());
        index
    }

    /// Every object of one kind, for [`crate::StateWriter::replace_all`].
    pub fn objects(&self, kind: Kind) -> Vec<Object> {
        match kind {
            Kind::Namespace => self
                .namespaces
                .iter()
                .cloned()
                .map(Object::Namespace)
                .collect(),
            Kind::Pod => self.pods.iter().cloned().map(Object::Pod).collect(),
            Kind::Policy => self.policies.iter().cloned().map(Object::Policy).collect(),
            Kind::Service => self.services.iter().cloned().map(Object::Service).collect(),
            Kind::EndpointSlice => self
                .slices
                .iter()
                .cloned()
                .map(Object::EndpointSlice)
                .collect(),
            Kind::ClusterPolicy => self
                .cluster_policies
                .iter()
                .cloned()
                .map(Object::ClusterPolicy)
                .collect(),
            Kind::Node => self.nodes.iter().cloned().map(Object::Node).collect(),
        }
    }

    /// Adds another file's objects (not its warnings or errors).
    pub fn merge(&mut self, other: &ClusterObjects) {
        self.namespaces.extend(other.namespaces.iter().cloned());
        self.pods.extend(other.pods.iter().cloned());
        self.policies.extend(other.policies.iter().cloned());
        self.services.extend(other.services.iter().cloned());
        self.slices.extend(other.slices.iter().cloned());
        self.cluster_policies
            .extend(other.cluster_policies.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }

    fn extend(&mut self, other: ClusterObjects) {
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.policies.extend(other.policies);
        self.services.extend(other.services);
        self.slices.extend(other.slices);
        self.cluster_policies.extend(other.cluster_policies);
        self.nodes.extend(other.nodes);
        self.warnings.extend(other.warnings);
        self.errors.extend(other.errors);
    }
}

/// Reads a manifest file, or every `.yaml`/`.yml`/`.json` file under a
/// directory (recursively, in name order), and synthesizes undeclared
/// namespaces. Fails on the first file that cannot be read or parsed.
pub fn load_path(path: &Path) -> Result<ClusterObjects, LoadError> {
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    let mut all = ClusterObjects::default();
    for file in files {
        all.extend(load_file(&file)?);
    }
    check_duplicates(&all, path)?;
    all.synthesize_namespaces();
    Ok(all)
}

/// Reads one manifest file.
pub fn load_file(file: &Path) -> Result<ClusterObjects, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|e| LoadError {
        file: file.to_path_buf(),
        object: None,
        field: None,
        reason: format!("cannot read: {e}"),
    })?;
    parse_manifest(file, &text)
}

/// Whether a file name looks like a manifest.
pub fn is_manifest_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io_error = |e: std::io::Error| LoadError {
        file: path.to_path_buf(),
        object: None,
        field: None,
        reason: format!("cannot read: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if meta.is_file() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, files)?;
        } else if is_manifest_file(&entry) {
            files.push(entry);
        }
    }
    Ok(())
}

/// Parses one file's text: multi-document YAML (JSON is YAML too).
pub fn parse_manifest(file: &Path, text: &str) -> Result<ClusterObjects, LoadError> {
    let mut out = ClusterObjects::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| LoadError {
            file: file.to_path_buf(),
            object: None,
            field: None,
            reason: format!("document {}: not valid YAML: {e}", index + 1),
        })?;
        if value.is_null() {
            continue;
        }
        read_object(file, value, &mut out)?;
    }
    Ok(out)
}

fn read_object(file: &Path, mut value: Value, out: &mut ClusterObjects) -> Result<(), LoadError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let shown_name = if name.is_empty() { "(no name)" } else { &name };
    let cluster_scoped = matches!(kind.as_str(), "Namespace" | "ClusterNetworkPolicy" | "Node")
        || kind.ends_with("List");
    if !cluster_scoped {
        default_namespace(&mut value);
    }
    let namespace = value
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let object = if kind.is_empty() {
        "object without kind".to_string()
    } else if cluster_scoped {
        format!("{kind} {shown_name}")
    } else {
        format!("{kind} {namespace}/{shown_name}")
    };
    let error = |field: Option<String>, reason: String| LoadError {
        file: file.to_path_buf(),
        object: Some(object.clone()),
        field,
        reason,
    };
    let invalid = |e: InvalidField| error(Some(e.field), e.reason);
    if kind.is_empty() {
        return Err(error(Some("kind".into()), "required".into()));
    }

    if kind.ends_with("List") {
        let items = match value.get_mut("items") {
            Some(Value::Sequence(items)) => std::mem::take(items),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(error(Some("items".into()), "must be a list".into())),
        };
        for item in items {
            read_object(file, item, out)?;
        }
        return Ok(());
    }

    match kind.as_str() {
        "Namespace" => {
            let ns: core::Namespace = typed(value).map_err(|(f, r)| error(f, r))?;
            out.namespaces
                .push(convert::namespace(&ns).map_err(invalid)?);
        }
        "Pod" => {
            let pod: core::Pod = typed(value).map_err(|(f, r)| error(f, r))?;
            out.pods.push(convert::pod(&pod).map_err(invalid)?);
        }
        "NetworkPolicy" => {
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                typed(value).map_err(|(f, r)| error(f, r))?;
            let compiled = convert::policy(&np).map_err(invalid)?;
            for e in compiled.errors {
                out.errors.push(invalid(e));
            }
            out.policies.push(compiled.policy);
        }
        "ClusterNetworkPolicy" => {
            let version = value.get("apiVersion").and_then(Value::as_str);
            if version != Some(convert::cluster::API_VERSION) {
                return Err(error(
                    Some("apiVersion".into()),
                    format!(
                        "{version:?} is not served (expected {})",
                        convert::cluster::API_VERSION
                    ),
                ));
            }
            let cnp: convert::cluster::ClusterNetworkPolicy =
                typed(value).map_err(|(f, r)| error(f, r))?;
            let compiled = convert::cluster::cluster_policy(&cnp).map_err(invalid)?;
            for e in compiled.errors {
                out.errors.push(invalid(e));
            }
            out.cluster_policies.push(compiled.policy);
        }
        "Node" => {
            let node: core::Node = typed(value).map_err(|(f, r)| error(f, r))?;
            out.nodes
                .push(convert::cluster::node(&node).map_err(invalid)?);
        }
        "Service" => {
            let service: core::Service = typed(value).map_err(|(f, r)| error(f, r))?;
            out.services
                .push(convert::service(&service).map_err(invalid)?);
        }
        "EndpointSlice" => {
            let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
                typed(value).map_err(|(f, r)| error(f, r))?;
            out.slices
                .push(convert::endpoint_slice(&slice).map_err(invalid)?);
        }
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        | "CronJob" => {
            let key = workload_key(&name, &namespace).map_err(invalid)?;
            let (template, field) =
                workload_template(&kind, value).map_err(|(f, r)| error(f, r))?;
            let Some(template) = template else {
                return Err(error(Some(field), "required".into()));
            };
            out.pods
                .push(convert::template_pod(key, &template, &field).map_err(invalid)?);
        }
        other => out.warnings.push(format!(
            "{}: skipping {other} {}: not a kind picket reads",
            file.display(),
            if namespace.is_empty() {
                name.clone()
            } else {
                format!("{namespace}/{name}")
            }
        )),
    }
    Ok(())
}

/// Deserializes a typed object, naming the field that failed.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        (field, e.into_inner().to_string())
    })
}

fn workload_template(
    kind: &str,
    value: Value,
) -> Result<(Option<core::PodTemplateSpec>, String), (Option<String>, String)> {
    Ok(match kind {
        "Deployment" => {
            let d: apps::Deployment = typed(value)?;
            (Some(d.spec.template), "spec.template".into())
        }
        "StatefulSet" => {
            let d: apps::StatefulSet = typed(value)?;
            (Some(d.spec.template), "spec.template".into())
        }
        "DaemonSet" => {
            let d: apps::DaemonSet = typed(value)?;
            (Some(d.spec.template), "spec.template".into())
        }
        "ReplicaSet" => {
            let d: apps::ReplicaSet = typed(value)?;
            (d.spec.template, "spec.template".into())
        }
        "ReplicationController" => {
            let d: core::ReplicationController = typed(value)?;
            (d.spec.and_then(|s| s.template), "spec.template".into())
        }
        "Job" => {
            let d: batch::Job = typed(value)?;
            (d.spec.map(|s| s.template), "spec.template".into())
        }
        _ => {
            let d: batch::CronJob = typed(value)?;
            (
                d.spec.job_template.spec.map(|s| s.template),
                "spec.jobTemplate.spec.template".into(),
            )
        }
    })
}

fn workload_key(name: &str, namespace: &str) -> Result<ObjectKey, InvalidField> {
    if name.is_empty() {
        return Err(InvalidField {
            field: "metadata.name".into(),
            reason: "required".into(),
        });
    }
    Ok(ObjectKey::new(namespace, name))
}

fn default_namespace(value: &mut Value) {
    let Some(Value::Mapping(meta)) = value.get_mut("metadata") else {
        return;
    };
    let key = Value::String("namespace".into());
    let missing = meta
        .get(&key)
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if missing {
        meta.insert(key, Value::String(DEFAULT_NAMESPACE.into()));
    }
}

fn check_duplicates(all: &ClusterObjects, path: &Path) -> Result<(), LoadError> {
    let dup = |what: &str, name: String| LoadError {
        file: path.to_path_buf(),
        object: Some(format!("{what} {name}")),
        field: None,
        reason: "declared more than once".into(),
    };
    let mut seen = BTreeMap::new();
    for ns in &all.namespaces {
        if seen.insert(ns.name.to_string(), ()).is_some() {
            return Err(dup("Namespace", ns.name.to_string()));
        }
    }
    let mut seen = BTreeSet::new();
    for pod in &all.pods {
        if !seen.insert(&pod.key) {
            return Err(dup("Pod (or workload)", pod.key.to_string()));
        }
    }
    let mut seen = BTreeSet::new();
    for policy in &all.policies {
        if !seen.insert(&policy.key) {
            return Err(dup("NetworkPolicy", policy.key.to_string()));
        }
    }
    let mut seen = BTreeSet::new();
    for policy in &all.cluster_policies {
        if !seen.insert(policy.name.to_string()) {
            return Err(dup("ClusterNetworkPolicy", policy.name.to_string()));
        }
    }
    let mut seen = BTreeSet::new();
    for node in &all.nodes {
        if !seen.insert(node.name.to_string()) {
            return Err(dup("Node", node.name.to_string()));
        }
    }
    let mut seen = BTreeSet::new();
    for service in &all.services {
        if !seen.insert(&service.key) {
            return Err(dup("Service", service.key.to_string()));
        }
    }
    let mut seen = BTreeSet::new();
    for slice in &all.slices {
        if !seen.insert(&slice.key) {
            return Err(dup("EndpointSlice", slice.key.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_policy::{Direction, ObjectKey};

    fn parse(text: &str) -> Result<ClusterObjects, LoadError> {
        parse_manifest(Path::new("m.yaml"), text)
    }

    #[test]
    fn invalid_yaml_names_the_file_and_document() {
        let err =
            parse("kind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n").unwrap_err();
        assert_eq!(err.file, Path::new("m.yaml"));
        assert!(err.reason.contains("document 2"), "{err}");
        assert!(err.reason.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let err = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress: [{from: [{ipBlock: {except: []}}]}]\n",
        )
        .unwrap()
        .errors
        .remove(0);
        assert_eq!(err.object.as_deref(), Some("NetworkPolicy x/p"));
        assert_eq!(
            err.field.as_deref(),
            Some("spec.ingress[0].from[0].ipBlock.cidr")
        );
        assert_eq!(err.reason, "required");
        let err = parse("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("metadata.name"));
        let text = err.to_string();
        assert_eq!(text, "m.yaml: Pod x/(no name): metadata.name: required");
        let err = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: [1]}\n",
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.podSelector"), "{err}");
    }

    #[test]
    fn an_invalid_cidr_is_reported_with_file_object_and_field() {
        let objects = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 300.0.0.0/8}}]}]\n",
        )
        .unwrap();
        assert_eq!(objects.policies.len(), 1, "the policy still isolates");
        let err = &objects.errors[0];
        assert_eq!(
            err.to_string(),
            "m.yaml: NetworkPolicy default/p: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR \"300.0.0.0/8\""
        );
    }

    #[test]
    fn unknown_kinds_are_skipped_with_a_warning() {
        let objects =
            parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s, namespace: x}\n").unwrap();
        assert!(objects.pods.is_empty());
        assert_eq!(objects.warnings.len(), 1);
        assert!(objects.warnings[0].contains("ConfigMap x/s"));
    }

    #[test]
    fn lists_are_unwrapped_and_namespaces_get_their_name_label() {
        let objects = parse(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop}
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: shop}
"#,
        )
        .unwrap();
        assert_eq!(objects.pods.len(), 1);
        assert_eq!(
            objects.namespaces[0]
                .labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("shop")
        );
    }

    #[test]
    fn workloads_become_representative_pods_without_ips() {
        let objects = parse(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: report}}
        spec: {containers: [{name: c}], restartPolicy: Never}
"#,
        )
        .unwrap();
        assert_eq!(objects.pods.len(), 2);
        let api = &objects.pods[0];
        assert_eq!(api.key, ObjectKey::new("shop", "api"));
        assert_eq!(api.labels.get("app").map(String::as_str), Some("api"));
        assert!(api.ips.is_empty());
        assert_eq!(api.ports[0].port, 8080);
        assert_eq!(objects.pods[1].key, ObjectKey::new("default", "report"));
    }

    #[test]
    fn undeclared_namespaces_are_synthesized_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let objects = load_path(dir.path()).unwrap();
        assert_eq!(objects.namespaces.len(), 1);
        assert_eq!(&*objects.namespaces[0].name, "shop");
        assert!(objects
            .warnings
            .iter()
            .any(|w| w.contains("namespace shop")));
        let index = objects.index();
        assert_eq!(index.counts().policies, 1);
        assert!(index
            .selecting(&ObjectKey::new("shop", "x"), Direction::Ingress)
            .is_empty());
    }

    #[test]
    fn duplicate_objects_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n";
        std::fs::write(dir.path().join("a.yaml"), pod).unwrap();
        std::fs::write(dir.path().join("b.yml"), pod).unwrap();
        let err = load_path(dir.path()).unwrap_err();
        assert!(err.to_string().contains("declared more than once"), "{err}");
    }

    #[test]
    fn json_manifests_are_read() {
        let objects =
            parse(r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}"#)
                .unwrap();
        assert_eq!(&*objects.namespaces[0].name, "j");
    }

    /// Untrusted manifests: random bytes and odd but well-formed objects
    /// give a result or an error naming the file, never a panic.
    #[test]
    fn random_and_odd_manifests_never_panic() {
        let file = Path::new("odd.yaml");
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"{}[]:,-\"' \n\tabkindPodNetworkPolicymetadata0123456789.&*!|>%@";
        for case in 0..2000 {
            let len = (case % 200) + 1;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if case % 2 == 0 {
                        alphabet[(state % alphabet.len() as u64) as usize]
                    } else {
                        (state & 0xff) as u8
                    }
                })
                .collect();
            if let Err(e) = parse_manifest(file, &String::from_utf8_lossy(&text)) {
                assert!(e.to_string().starts_with("odd.yaml"), "{e}");
            }
        }
        let long = "x".repeat(100_000);
        let odd = [
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}".to_string(),
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: [{containerPort: -1, name: \"\"}]}]}".into(),
            "kind: Pod\nmetadata: {name: p}\nstatus: {podIP: \"fe80::1%eth0\", podIPs: [{ip: nonsense}]}".into(),
            "kind: Pod\nmetadata: {name: p, labels: {\"/\": \"\", \"a/b/c\": x}}".into(),
            "kind: Pod\nmetadata: {name: \"\"}".into(),
            "kind: Pod\nmetadata: 7".into(),
            "kind: [Pod]".into(),
            "kind: List\nitems: [null, 3, {kind: Pod}]".into(),
            "kind: PodList\nitems: {a: b}".into(),
            "kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {matchExpressions: [{key: a, operator: Gt, values: [\"1\"]}]}}".into(),
            "kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000, endPort: 10}]}]}".into(),
            "kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 10, protocol: ICMP}]}]}".into(),
            "kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8, \"::/0\", x]}}]}]}".into(),
            "kind: NetworkPolicy\nmetadata: {name: n}\nspec: {podSelector: {}, policyTypes: [Sideways]}".into(),
            "kind: Deployment\nmetadata: {name: d}\nspec: {template: 5}".into(),
            "kind: CronJob\nmetadata: {name: c}\nspec: {schedule: x, jobTemplate: {spec: {}}}".into(),
            format!("kind: Namespace\nmetadata: {{name: {long}}}"),
            format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
            "a: &a [*a, *a]\nkind: Pod".into(),
        ];
        for text in &odd {
            if let Err(e) = parse_manifest(file, text) {
                assert!(e.to_string().starts_with("odd.yaml"), "{e}");
            }
        }
    }
}
