//! The upstream Kubernetes NetworkPolicy e2e tests, translated to data under
//! `tests/netpol-e2e/cases`, run through the real `picket reach --format json`.
//!
//! Each case builds the upstream model (namespaces x, y, z; pods a, b, c;
//! ports 80 and 81), applies its steps, and compares every probe with the
//! expected reachability. See `tests/netpol-e2e/README.md` for the format.

#[path = "support/reach.rs"]
mod reach_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Step {
    #[serde(default)]
    apply: Vec<Value>,
    #[serde(default)]
    delete: Vec<String>,
    #[serde(default)]
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    probes: Vec<ProbeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSpec {
    port: u16,
    default: bool,
    #[serde(default)]
    expect: Vec<Expectation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    from: String,
    to: String,
    allowed: bool,
}

#[derive(Debug, Deserialize)]
struct Probe {
    from: String,
    to: String,
    port: u16,
    protocol: String,
    allowed: bool,
    reason: String,
}

/// The cluster a case mutates step by step.
struct Model {
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    policies: BTreeMap<String, Value>,
}

impl Model {
    fn new() -> Self {
        let mut namespace_labels = BTreeMap::new();
        let mut pod_labels = BTreeMap::new();
        for ns in NAMESPACES {
            namespace_labels.insert(ns.to_string(), labels(&[("ns", ns)]));
            for pod in PODS {
                pod_labels.insert(format!("{ns}/{pod}"), labels(&[("pod", pod)]));
            }
        }
        Self {
            namespace_labels,
            pod_labels,
            policies: BTreeMap::new(),
        }
    }

    fn apply(&mut self, step: &Step) {
        for policy in &step.apply {
            let meta = &policy["metadata"];
            let key = format!(
                "{}/{}",
                meta["namespace"].as_str().expect("policy namespace"),
                meta["name"].as_str().expect("policy name")
            );
            self.policies.insert(key, policy.clone());
        }
        for key in &step.delete {
            assert!(
                self.policies.remove(key).is_some(),
                "delete of unknown policy {key}"
            );
        }
        for (pod, labels) in &step.pod_labels {
            assert!(self.pod_labels.contains_key(pod), "unknown pod {pod}");
            self.pod_labels.insert(pod.clone(), labels.clone());
        }
        for (ns, labels) in &step.namespace_labels {
            assert!(self.namespace_labels.contains_key(ns), "unknown ns {ns}");
            self.namespace_labels.insert(ns.clone(), labels.clone());
        }
    }

    fn write(&self, dir: &Path) {
        let mut docs = Vec::new();
        for (ni, ns) in NAMESPACES.iter().enumerate() {
            docs.push(
                serde_yaml::to_string(&serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": self.namespace_labels[*ns]},
                }))
                .unwrap(),
            );
            for (pi, pod) in PODS.iter().enumerate() {
                let mut ports = Vec::new();
                for port in [80, 81] {
                    for proto in ["TCP", "UDP", "SCTP"] {
                        ports.push(serde_json::json!({
                            "name": format!("serve-{port}-{}", proto.to_lowercase()),
                            "containerPort": port, "protocol": proto,
                        }));
                    }
                }
                docs.push(
                    serde_yaml::to_string(&serde_json::json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod, "namespace": ns,
                                     "labels": self.pod_labels[&format!("{ns}/{pod}")]},
                        "spec": {"containers": [{"name": "server", "image": "agnhost", "ports": ports}]},
                        "status": {"phase": "Running", "hostIP": "192.168.0.10",
                                   "podIP": format!("10.0.{}.{}", ni + 1, pi + 1)},
                    }))
                    .unwrap(),
                );
            }
        }
        std::fs::write(dir.join("model.yaml"), docs.join("---\n")).unwrap();
        let policies: Vec<String> = self
            .policies
            .values()
            .map(|p| serde_yaml::to_string(p).unwrap())
            .collect();
        std::fs::write(dir.join("policies.yaml"), policies.join("---\n")).unwrap();
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pattern_matches(pattern: &str, pod: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (pns, pname) = pattern.split_once('/').expect("pattern ns/pod");
    let (ns, name) = pod.split_once('/').unwrap();
    (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn run_case(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let case: Case =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    let mut failures = Vec::new();
    for (si, step) in case.steps.iter().enumerate() {
        model.apply(step);
        model.write(dir.path());
        let ports: Vec<u16> = step.probes.iter().map(|p| p.port).collect();
        let probes: Vec<Probe> = reach_support::reach(dir.path(), &ports);
        for spec in &step.probes {
            for from in all_pods() {
                for to in all_pods() {
                    let mut expected = spec.default;
                    for e in &spec.expect {
                        if pattern_matches(&e.from, &from) && pattern_matches(&e.to, &to) {
                            expected = e.allowed;
                        }
                    }
                    if from == to {
                        expected = true; // a pod can always reach itself
                    }
                    let probe = probes
                        .iter()
                        .find(|p| p.from == from && p.to == to && p.port == spec.port)
                        .unwrap_or_else(|| panic!("no probe {from} -> {to}:{}", spec.port));
                    assert_eq!(probe.protocol, "TCP");
                    if probe.allowed != expected {
                        failures.push(format!(
                            "{}: {:?} step {si}: {from} -> {to}:{} expected {} got {} ({})",
                            path.file_name().unwrap().to_string_lossy(),
                            case.name,
                            spec.port,
                            if expected { "allowed" } else { "denied" },
                            if probe.allowed { "allowed" } else { "denied" },
                            probe.reason
                        ));
                    }
                }
            }
        }
    }
    failures
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol-e2e/cases")
}

#[test]
fn upstream_netpol_cases_match_expected_reachability() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 40,
        "expected the translated cases, found {}",
        cases.len()
    );
    let failures: Vec<String> = cases.iter().flat_map(|c| run_case(c)).collect();
    assert!(
        failures.is_empty(),
        "{} probes differ from upstream's expectations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_case_is_listed_in_the_index() {
    let index = std::fs::read_to_string(cases_dir().join("../INDEX.md")).unwrap();
    for entry in std::fs::read_dir(cases_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            index.contains(&format!("cases/{name}")),
            "{name} is not listed in INDEX.md"
        );
    }
}

#[test]
fn a_wrong_expectation_is_caught() {
    // The runner itself must be able to fail: flip one expectation and run.
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(cases_dir().join("default-deny-ingress.yaml")).unwrap();
    let flipped = original.replacen("default: true", "default: false", 1);
    assert_ne!(original, flipped, "the case has a probe with default: true");
    let path = dir.path().join("flipped.yaml");
    std::fs::write(&path, flipped).unwrap();
    assert!(!run_case(&path).is_empty());
}
