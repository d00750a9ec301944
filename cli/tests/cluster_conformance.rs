//! The network-policy-api conformance tests (ClusterNetworkPolicy, both
//! tiers), translated to data under `tests/cnp-conformance/cases`, run
//! through the real `picket reach --format json`.
//!
//! Each case builds the upstream model (the houses' namespaces, two pods
//! of each house's StatefulSet, the host-network centaurs, two nodes),
//! applies its steps in order (state accumulates, as upstream's subtests
//! share the cluster), and checks every TCP poke. See
//! `tests/cnp-conformance/README.md` for the format.

#[path = "support/reach.rs"]
mod reach_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

/// The houses: namespace `network-policy-conformance-<house>`, StatefulSet
/// `<set>` with pods `<set>-0` and `<set>-1`.
const HOUSES: [(&str, &str); 4] = [
    ("gryffindor", "harry-potter"),
    ("slytherin", "draco-malfoy"),
    ("hufflepuff", "cedric-diggory"),
    ("ravenclaw", "luna-lovegood"),
];
/// The namespace of the host-network pods.
const FOREST: &str = "forbidden-forrest";
/// The nodes: name and address. Replica `i` of each house runs on node `i`;
/// `centaur-i` (host network) on the other one.
const NODES: [(&str, &str); 2] = [("worker-1", "172.18.0.2"), ("worker-2", "172.18.0.3")];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    upstream: String,
    #[serde(default)]
    manifests: Vec<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    title: String,
    #[serde(default)]
    apply: Vec<Value>,
    #[serde(default)]
    delete: Vec<String>,
    /// Upstream's `mutate` of a stored object, in order after `apply`.
    #[serde(default)]
    swap: Vec<Swap>,
    #[serde(default)]
    set: Vec<Set>,
    #[serde(default)]
    probes: Vec<ProbeSpec>,
}

/// Swaps two entries of a list of a stored object (`spec.ingress[a]` and `[b]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Swap {
    /// `Kind/name` or `Kind/namespace/name`.
    object: String,
    /// A JSON pointer to the list, e.g. `/spec/ingress`.
    list: String,
    a: usize,
    b: usize,
}

/// Sets a field of a stored object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Set {
    object: String,
    /// A JSON pointer, e.g. `/spec/priority`.
    path: String,
    value: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSpec {
    from: String,
    to: String,
    port: u16,
    allowed: bool,
}

#[derive(Debug, Deserialize)]
struct Probe {
    from: String,
    to: String,
    port: u16,
    allowed: bool,
    reason: String,
}

fn namespace(house: &str) -> String {
    format!("network-policy-conformance-{house}")
}

/// `house/pod` as the probe names it, to `namespace/pod` as reach does.
fn pod_key(short: &str) -> String {
    let (house, pod) = short
        .split_once('/')
        .unwrap_or_else(|| panic!("{short}: expected house/pod"));
    format!("{}/{pod}", namespace(house))
}

/// The object's identity: `Kind/name` or `Kind/namespace/name`.
fn object_key(object: &Value) -> String {
    let kind = object["kind"].as_str().expect("kind");
    let meta = &object["metadata"];
    let name = meta["name"].as_str().expect("metadata.name");
    match meta["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// The upstream model, as manifests.
fn model() -> String {
    let mut docs = Vec::new();
    let mut push = |v: serde_json::Value| docs.push(serde_yaml::to_string(&v).unwrap());
    for (house, _) in HOUSES.iter().chain(&[(FOREST, "centaur")]) {
        push(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace(house), "labels": {"conformance-house": house}},
        }));
    }
    for (name, ip) in NODES {
        push(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
        }));
    }
    for (h, (house, set)) in HOUSES.iter().enumerate() {
        for (i, (node, node_ip)) in NODES.iter().enumerate() {
            let pod = format!("{set}-{i}");
            push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace(house), "labels": {
                    "conformance-house": house,
                    "statefulset.kubernetes.io/pod-name": pod,
                    "apps.kubernetes.io/pod-index": i.to_string()}},
                "spec": {"nodeName": node, "containers": [
                    {"name": format!("{set}-client")},
                    {"name": format!("{set}-80"), "ports": [{"containerPort": 80, "protocol": "TCP", "name": "web"}]},
                    {"name": format!("{set}-8080")},
                    {"name": format!("{set}-5353")},
                    {"name": format!("{set}-53"), "ports": [{"containerPort": 53, "protocol": "UDP", "name": "dns"}]},
                    {"name": format!("{set}-9003")},
                    {"name": format!("{set}-9005")},
                ]},
                "status": {"phase": "Running", "hostIP": node_ip,
                           "podIP": format!("10.244.{}.{}", h + 1, 10 + i)},
            }));
        }
    }
    for i in 0..2 {
        let (node, ip) = NODES[1 - i];
        let ports: Vec<serde_json::Value> = (0..7)
            .map(|p| {
                let protocol = ["TCP", "TCP", "UDP", "UDP", "UDP", "SCTP", "SCTP"][p];
                serde_json::json!({"containerPort": 34345 + p, "protocol": protocol,
                                   "name": format!("web-{}", 34345 + p)})
            })
            .collect();
        push(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("centaur-{i}"), "namespace": namespace(FOREST),
                         "labels": {"conformance-house": FOREST}},
            "spec": {"nodeName": node, "hostNetwork": true,
                     "containers": [{"name": "centaur", "ports": ports}]},
            "status": {"phase": "Running", "hostIP": ip, "podIP": ip},
        }));
    }
    docs.join("---\n")
}

/// Runs one case; returns every poke whose verdict differs from upstream's.
fn run_case(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let case: Case =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        case.upstream.starts_with("conformance/tests/"),
        "{}: upstream names the Go file",
        path.display()
    );
    let _ = &case.manifests;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.yaml"), model()).unwrap();
    let mut objects: BTreeMap<String, Value> = BTreeMap::new();
    let mut failures = Vec::new();
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    for (si, step) in case.steps.iter().enumerate() {
        for object in &step.apply {
            objects.insert(object_key(object), object.clone());
        }
        for swap in &step.swap {
            let object = objects
                .get_mut(&swap.object)
                .unwrap_or_else(|| panic!("{file}: step {si}: swap in unknown {}", swap.object));
            let mut json: serde_json::Value = serde_yaml::from_value(object.clone()).unwrap();
            let list = json
                .pointer_mut(&swap.list)
                .and_then(serde_json::Value::as_array_mut)
                .unwrap_or_else(|| {
                    panic!(
                        "{file}: step {si}: {} has no list {}",
                        swap.object, swap.list
                    )
                });
            list.swap(swap.a, swap.b);
            *object = serde_yaml::to_value(&json).unwrap();
        }
        for set in &step.set {
            let object = objects
                .get_mut(&set.object)
                .unwrap_or_else(|| panic!("{file}: step {si}: set in unknown {}", set.object));
            let mut json: serde_json::Value = serde_yaml::from_value(object.clone()).unwrap();
            let field = json
                .pointer_mut(&set.path)
                .unwrap_or_else(|| panic!("{file}: step {si}: {} has no {}", set.object, set.path));
            *field = serde_yaml::from_value(set.value.clone()).unwrap();
            *object = serde_yaml::to_value(&json).unwrap();
        }
        for key in &step.delete {
            assert!(
                objects.remove(key).is_some(),
                "{file}: step {si}: delete of unknown {key}"
            );
        }
        let docs: Vec<String> = objects
            .values()
            .map(|o| serde_yaml::to_string(o).unwrap())
            .collect();
        std::fs::write(dir.path().join("policies.yaml"), docs.join("---\n")).unwrap();
        if step.probes.is_empty() {
            continue;
        }
        let ports: Vec<u16> = step.probes.iter().map(|p| p.port).collect();
        let probes: Vec<Probe> = reach_support::reach(dir.path(), &ports);
        for spec in &step.probes {
            let (from, to) = (pod_key(&spec.from), pod_key(&spec.to));
            let probe = probes
                .iter()
                .find(|p| p.from == from && p.to == to && p.port == spec.port)
                .unwrap_or_else(|| panic!("{file}: no probe {from} -> {to}:{}", spec.port));
            if probe.allowed != spec.allowed {
                failures.push(format!(
                    "{file}: {} / {:?}: {} -> {}:{} expected {} got {} ({})",
                    case.name,
                    step.title,
                    spec.from,
                    spec.to,
                    spec.port,
                    verdict(spec.allowed),
                    verdict(probe.allowed),
                    probe.reason
                ));
            }
        }
    }
    failures
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cnp-conformance/cases")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn conformance_cases_match_upstream_expectations() {
    let cases = cases();
    assert!(
        cases.len() >= 14,
        "expected the translated cases, found {}",
        cases.len()
    );
    let failures: Vec<String> = cases.iter().flat_map(|c| run_case(c)).collect();
    assert!(
        failures.is_empty(),
        "{} pokes differ from upstream's expectations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_case_is_listed_in_the_index() {
    let index = std::fs::read_to_string(cases_dir().join("../INDEX.md")).unwrap();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            index.contains(&format!("cases/{name}")),
            "{name} is not listed in INDEX.md"
        );
    }
}

#[test]
fn a_wrong_expectation_is_caught() {
    // The runner itself must be able to fail: flip one expectation and run.
    let case = cases().into_iter().next().expect("a case");
    let original = std::fs::read_to_string(&case).unwrap();
    let flipped = original.replacen("allowed: true", "allowed: false", 1);
    assert_ne!(original, flipped, "the case has an allowed poke");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.yaml");
    std::fs::write(&path, flipped).unwrap();
    assert!(!run_case(&path).is_empty());
}
