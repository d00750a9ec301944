//! The upstream e2e NetworkPolicy cases that involve egress
//! (`tests/netpol-e2e/cases`), run through the real data plane: nine lab pods
//! (namespaces x, y, z; pods a, b, c), each with the real init capturing
//! inbound and outbound connections, the real sidecar, and echo servers on
//! ports 80 and 81. After each step every probe is a real connection, and
//! its outcome must equal the engine's decision on the same manifests (what
//! `picket reach` prints) and the case's expectation. Needs root.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use picket_lab::app::EchoServer;
use picket_lab::proxy::{connect_from, install_binary, run_init, share_dir, Sidecar};
use picket_lab::{Lab, LabPod};
use picket_policy::{NodeAddrs, PodKey, Protocol};
use serde_yaml::Value;
use support::*;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];

/// One lab pod of the model, with its app and sidecar.
struct ModelPod {
    pod: LabPod,
    _echo: Vec<EchoServer>,
    _sidecar: Sidecar,
}

/// The nine pods, their manifests in a watched directory.
struct Model {
    lab: Lab,
    dir: tempfile::TempDir,
    pods: BTreeMap<String, ModelPod>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    policies: BTreeMap<String, Value>,
    _binary: picket_lab::proxy::InstalledBinary,
    interception: Interception,
    /// In tproxy mode, the sidecars' binary (with its file capability).
    tproxy_binary: Option<picket_lab::proxy::InstalledBinary>,
    _state: tempfile::TempDir,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Model {
    fn new(mode: Interception) -> Self {
        let mut lab = Lab::new().expect("create the lab node namespace");
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let path = Path::new(env!("CARGO_BIN_EXE_picket-proxy"));
        let binary = install_binary(path).unwrap();
        let tproxy_binary = mode.sidecar_copy(path);
        let mut lab_pods = Vec::new();
        let mut namespace_labels = BTreeMap::new();
        let mut pod_labels = BTreeMap::new();
        for ns in NAMESPACES {
            namespace_labels.insert(ns.to_string(), labels(&[("ns", ns)]));
            for name in PODS {
                lab_pods.push((ns, lab.add_pod(name).expect("create a lab pod")));
                pod_labels.insert(format!("{ns}/{name}"), labels(&[("pod", name)]));
            }
        }
        let mut model = Self {
            lab,
            dir,
            pods: BTreeMap::new(),
            namespace_labels,
            pod_labels,
            policies: BTreeMap::new(),
            _binary: binary,
            interception: mode,
            tproxy_binary,
            _state: state,
        };
        let ips: BTreeMap<String, IpAddr> = lab_pods
            .iter()
            .map(|(ns, p)| (format!("{ns}/{}", p.name), p.ip))
            .collect();
        model.write_cluster(&ips);
        for (ns, pod) in lab_pods {
            let key = format!("{ns}/{}", pod.name);
            let started = model.start(ns, pod);
            model.pods.insert(key, started);
        }
        model
    }

    /// Init (inbound and outbound), the echo apps, the sidecar; ready.
    fn start(&self, ns: &str, pod: LabPod) -> ModelPod {
        let node_file = self._state.path().join(&pod.netns).join("node");
        let host_ip = self.lab.host_ip().to_string();
        let mode = self.interception.args();
        let mut init = vec![
            "--node-file",
            node_file.to_str().unwrap(),
            "--host-ip",
            &host_ip,
            "--outbound-capture",
            "on",
        ];
        init.extend_from_slice(mode);
        let out = run_init(&self._binary, &pod, &init).unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        share_dir(self._state.path()).unwrap();
        share_dir(node_file.parent().unwrap()).unwrap();
        let echo = PORTS
            .iter()
            .map(|port| EchoServer::start(&pod.netns, SocketAddr::new(pod.ip, *port)).unwrap())
            .collect();
        let dir = self.dir.path().to_string_lossy().to_string();
        let mut args = vec![
            "--cluster-dir",
            &dir,
            "--unknown-ip-wait",
            "0s",
            "--outbound-capture",
            "on",
        ];
        args.extend_from_slice(mode);
        let mut sidecar = Sidecar::start_with(
            self.tproxy_binary.as_ref().unwrap_or(&self._binary),
            &self.lab,
            &pod,
            ns,
            &node_file,
            &args,
        )
        .unwrap();
        sidecar.wait_ready(READY).unwrap();
        ModelPod {
            pod,
            _echo: echo,
            _sidecar: sidecar,
        }
    }

    fn ips(&self) -> BTreeMap<String, IpAddr> {
        self.pods
            .iter()
            .map(|(k, p)| (k.clone(), p.pod.ip))
            .collect()
    }

    /// The model IP of a pod (`10.0.<ns>.<pod>`, as the cases write CIDRs).
    fn model_ip(key: &str) -> String {
        let (ns, pod) = key.split_once('/').unwrap();
        let n = NAMESPACES.iter().position(|x| *x == ns).unwrap() + 1;
        let p = PODS.iter().position(|x| *x == pod).unwrap() + 1;
        format!("10.0.{n}.{p}")
    }

    /// Namespaces and pods (each declaring the upstream ports and the
    /// sidecar container, so that each end enforces its own side).
    fn write_cluster(&self, ips: &BTreeMap<String, IpAddr>) {
        let mut docs = Vec::new();
        for ns in NAMESPACES {
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": self.namespace_labels[ns]},
            }));
        }
        for (key, ip) in ips {
            let (ns, name) = key.split_once('/').unwrap();
            let mut ports = Vec::new();
            for port in PORTS {
                for proto in ["TCP", "UDP", "SCTP"] {
                    ports.push(serde_json::json!({
                        "name": format!("serve-{port}-{}", proto.to_lowercase()),
                        "containerPort": port, "protocol": proto,
                    }));
                }
            }
            docs.push(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": self.pod_labels[key]},
                "spec": {"containers": [{"name": "server", "ports": ports}, {"name": "picket-proxy"}]},
                "status": {"phase": "Running", "podIP": ip.to_string(), "hostIP": self.lab.host_ip().to_string()},
            }));
        }
        let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        self.write("cluster.yaml", &text.join("\n---\n"));
    }

    /// The policies, with the model's pod IPs in CIDRs mapped to the lab's.
    fn write_policies(&self) {
        let mut text: Vec<String> = self
            .policies
            .values()
            .map(|p| serde_yaml::to_string(p).unwrap())
            .collect();
        for doc in &mut text {
            for (key, ip) in self.ips() {
                *doc = doc.replace(&format!("{}/", Self::model_ip(&key)), &format!("{ip}/"));
            }
        }
        self.write("policies.yaml", &text.join("---\n"));
    }

    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
        share_dir(self.dir.path()).unwrap();
    }

    fn apply(&mut self, step: &Value) {
        for policy in step["apply"].as_sequence().into_iter().flatten() {
            let meta = &policy["metadata"];
            let key = format!(
                "{}/{}",
                meta["namespace"].as_str().unwrap(),
                meta["name"].as_str().unwrap()
            );
            self.policies.insert(key, policy.clone());
        }
        for key in step["delete"].as_sequence().into_iter().flatten() {
            self.policies.remove(key.as_str().unwrap());
        }
        for (pod, l) in step["podLabels"].as_mapping().into_iter().flatten() {
            self.pod_labels.insert(
                pod.as_str().unwrap().to_string(),
                serde_yaml::from_value(l.clone()).unwrap(),
            );
        }
        for (ns, l) in step["namespaceLabels"].as_mapping().into_iter().flatten() {
            self.namespace_labels.insert(
                ns.as_str().unwrap().to_string(),
                serde_yaml::from_value(l.clone()).unwrap(),
            );
        }
        self.write_cluster(&self.ips());
        self.write_policies();
    }

    /// What the engine decides on the manifests as written (`picket reach`'s
    /// answer), and how many of those probes the source's egress side
    /// denies (whatever the destination's ingress says).
    fn expected(&self, ports: &[u16]) -> (BTreeMap<(String, String, u16), bool>, usize) {
        let index = picket_state::load_path(self.dir.path()).unwrap().index();
        let mut out = BTreeMap::new();
        let mut egress_denied = 0;
        for from in self.pods.keys() {
            for to in self.pods.keys() {
                let node = NodeAddrs::from_ips([self.lab.host_ip()]);
                for port in ports {
                    let d = index.decide_between_pods(
                        &PodKey::parse(from).unwrap(),
                        &PodKey::parse(to).unwrap(),
                        *port,
                        Protocol::Tcp,
                        &node,
                    );
                    // The source's egress side alone (each end has a sidecar).
                    let to_ip = index.pod(&PodKey::parse(to).unwrap()).unwrap().ips[0];
                    let at_source = index.decide_to_ip(
                        &PodKey::parse(from).unwrap(),
                        to_ip,
                        *port,
                        Protocol::Tcp,
                        &node,
                    );
                    egress_denied += usize::from(!at_source.allowed);
                    out.insert((from.clone(), to.clone(), *port), d.allowed);
                }
            }
        }
        (out, egress_denied)
    }

    /// Outbound connections the pods' own sidecars denied so far (read on
    /// the local admin port: loopback, never captured).
    fn outbound_denied(&self) -> f64 {
        self.pods
            .values()
            .map(|p| {
                let (_, text) = picket_lab::proxy::http_get(
                    &p.pod.netns,
                    SocketAddr::from(([127, 0, 0, 1], picket_common::LOCAL_ADMIN_PORT)),
                    "/metrics",
                )
                .unwrap();
                text.lines()
                    .filter(|l| {
                        l.starts_with("picket_outbound_connections_total{")
                            && l.contains("outcome=\"denied\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .sum()
    }

    /// What the data plane does: a real connection per probe.
    fn observed(&self, ports: &[u16]) -> BTreeMap<(String, String, u16), bool> {
        let mut out = BTreeMap::new();
        for (from, src) in &self.pods {
            for (to, dst) in &self.pods {
                for port in ports {
                    let reached =
                        connect_from(&src.pod.netns, None, SocketAddr::new(dst.pod.ip, *port))
                            .and_then(|mut s| {
                                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                                Ok(echoes(&mut s))
                            })
                            .unwrap_or(false);
                    out.insert((from.clone(), to.clone(), *port), reached);
                }
            }
        }
        out
    }
}

fn egress_cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol-e2e/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && std::fs::read_to_string(p).unwrap().contains("Egress")
        })
        .collect();
    cases.sort();
    cases
}

fn upstream_egress_cases_through_real_sidecars_at_both_ends_match_picket_reach(mode: Interception) {
    if !lab_available() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = egress_cases();
    assert!(cases.len() >= 10, "the egress cases: {cases:?}");
    let mut model = Model::new(mode);
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let parsed: Value = serde_yaml::from_str(&text).unwrap();
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        model.policies.clear();
        for (si, step) in parsed["steps"].as_sequence().unwrap().iter().enumerate() {
            model.apply(step);
            let ports: Vec<u16> = step["probes"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_u64().unwrap() as u16)
                .collect();
            let (expected, egress_denied) = model.expected(&ports);
            // Every sidecar reloads the directory on its own: until the
            // source's sidecar has the step's policies, the destination's
            // sidecar may deny in its place (receiver-side egress), so poll
            // until both the verdicts and the place of denial agree, or the
            // deadline says they do not.
            let deadline = Instant::now() + Duration::from_secs(15);
            let (observed, at_source) = loop {
                let before = model.outbound_denied();
                let observed = model.observed(&ports);
                let at_source = model.outbound_denied() - before;
                let agrees = observed == expected && at_source == egress_denied as f64;
                if agrees || Instant::now() > deadline {
                    break (observed, at_source);
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            // Egress is enforced at the source: every probe the source's
            // egress side denies was reset by the source's own sidecar.
            if at_source != egress_denied as f64 {
                failures.push(format!(
                    "{name} step {si}: {egress_denied} probes are egress-denied, the sources' sidecars denied {at_source}"
                ));
            }
            for (probe, want) in &expected {
                if observed[probe] != *want {
                    failures.push(format!(
                        "{name} step {si}: {} -> {}:{}: reach says {}, the data plane {}",
                        probe.0,
                        probe.1,
                        probe.2,
                        if *want { "allowed" } else { "denied" },
                        if observed[probe] { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} probes differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

in_both_modes!(upstream_egress_cases_through_real_sidecars_at_both_ends_match_picket_reach);
