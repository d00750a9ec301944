//! Property tests of the index: after any sequence of applies and deletes
//! of pods, namespaces and policies, the incremental index equals the index
//! rebuilt from the final objects, and gives the same decision for every
//! (source, destination, port). Sequences come from a seeded generator; a
//! failure names its seed (`PICKET_PROPTEST_CASES` raises the case count).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::*;

/// A small, seeded pseudo-random generator (xorshift64*): reproducible cases
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMESPACES: &[&str] = &["ns-a", "ns-b", "ns-c"];
const PODS: &[&str] = &["p1", "p2", "p3", "p4"];
const APPS: &[&str] = &["web", "db", "api"];
const ENVS: &[&str] = &["prod", "dev"];
/// Few IPs, so that pods share them (IP reuse, two claimants).
const IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
const PORTS: &[u16] = &[80, 5432, 9090];

#[derive(Clone, Debug)]
enum Op {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
    DeleteNamespace(String),
    DeletePod(PodKey),
    DeletePolicy(PolicyKey),
}

fn namespace(rng: &mut Rng) -> Namespace {
    let name = rng.pick(NAMESPACES);
    let labels = match rng.below(3) {
        0 => String::new(),
        _ => format!("labels: {{env: {}}}", rng.pick(ENVS)),
    };
    let ns: core::Namespace =
        serde_yaml::from_str(&format!("metadata: {{name: {name}, {labels}}}")).unwrap();
    convert::namespace(&ns).unwrap()
}

fn pod(rng: &mut Rng) -> Pod {
    let deleting = if rng.below(4) == 0 {
        ", deletionTimestamp: \"2026-12-01T10:00:00Z\""
    } else {
        ""
    };
    let yaml = format!(
        "metadata: {{name: {}, namespace: {}, labels: {{app: {}}}, creationTimestamp: \"2026-12-01T0{}:00:00Z\"{deleting}}}\n\
         spec: {{containers: [{{name: c, ports: [{{containerPort: 5432, name: pg}}]}}]}}\n\
         status: {{podIP: {}}}\n",
        rng.pick(PODS),
        rng.pick(NAMESPACES),
        rng.pick(APPS),
        rng.below(10),
        rng.pick(IPS),
    );
    let pod: core::Pod = serde_yaml::from_str(&yaml).unwrap();
    convert::pod(&pod).unwrap()
}

fn peer(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => format!("{{podSelector: {{matchLabels: {{app: {}}}}}}}", rng.pick(APPS)),
        1 => format!(
            "{{namespaceSelector: {{matchExpressions: [{{key: env, operator: {}, values: [{}]}}]}}}}",
            rng.pick(&["In", "NotIn"]),
            rng.pick(ENVS)
        ),
        2 => "{namespaceSelector: {}}".into(),
        3 => format!("{{ipBlock: {{cidr: 10.0.0.0/29, except: [{}/32]}}}}", rng.pick(IPS)),
        _ => format!(
            "{{namespaceSelector: {{matchLabels: {{env: {}}}}}, podSelector: {{matchExpressions: [{{key: app, operator: Exists}}]}}}}",
            rng.pick(ENVS)
        ),
    }
}

fn rules(rng: &mut Rng, direction: &str) -> String {
    let peers = if direction == "ingress" { "from" } else { "to" };
    let rules: Vec<String> = (0..rng.below(3))
        .map(|_| {
            let port = match rng.below(3) {
                0 => String::new(),
                1 => format!(", ports: [{{port: {}}}]", PORTS[rng.below(PORTS.len())]),
                _ => ", ports: [{port: pg}]".into(),
            };
            format!("{{{peers}: [{}]{port}}}", peer(rng))
        })
        .collect();
    format!("{direction}: [{}]", rules.join(", "))
}

fn policy(rng: &mut Rng) -> Policy {
    let types = rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]);
    let selector = match rng.below(2) {
        0 => "{}".to_string(),
        _ => format!("{{matchLabels: {{app: {}}}}}", rng.pick(APPS)),
    };
    let yaml = format!(
        "metadata: {{name: {}, namespace: {}}}\nspec: {{podSelector: {selector}, policyTypes: {types}, {}, {}}}\n",
        rng.pick(&["pol-1", "pol-2", "pol-3"]),
        rng.pick(NAMESPACES),
        rules(rng, "ingress"),
        rules(rng, "egress"),
    );
    let np: NetworkPolicy = serde_yaml::from_str(&yaml).unwrap();
    convert::policy(&np).unwrap().policy
}

fn op(rng: &mut Rng) -> Op {
    match rng.below(10) {
        0 | 1 => Op::Namespace(namespace(rng)),
        2..=4 => Op::Pod(pod(rng)),
        5..=7 => Op::Policy(policy(rng)),
        8 => match rng.below(2) {
            0 => Op::DeleteNamespace(rng.pick(NAMESPACES).into()),
            _ => Op::DeletePod(ObjectKey::new(rng.pick(NAMESPACES), rng.pick(PODS))),
        },
        _ => Op::DeletePolicy(ObjectKey::new(
            rng.pick(NAMESPACES),
            rng.pick(&["pol-1", "pol-2", "pol-3"]),
        )),
    }
}

/// Every decision the index can give between its pods and from its IPs.
fn decisions(index: &PolicyIndex) -> Vec<(String, Decision)> {
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    let mut out = Vec::new();
    let pods: Vec<PodKey> = PODS
        .iter()
        .flat_map(|p| NAMESPACES.iter().map(move |ns| ObjectKey::new(ns, p)))
        .collect();
    for dst in &pods {
        for port in PORTS {
            for src in &pods {
                let d = index.decide_between_pods(src, dst, *port, Protocol::Tcp, &node);
                out.push((format!("{src} -> {dst}:{port}"), d));
            }
            for ip in IPS {
                let src: IpAddr = ip.parse().unwrap();
                let dst_ip = "10.0.0.6".parse().unwrap();
                let d = index.decide_from_ip(src, dst, dst_ip, *port, Protocol::Tcp, &node);
                out.push((format!("{ip} -> {dst}:{port}"), d));
            }
        }
    }
    out
}

#[test]
fn any_sequence_of_changes_equals_a_rebuild_and_decides_the_same() {
    let cases: u64 = std::env::var("PICKET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for seed in 1..=cases {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut index = PolicyIndex::new();
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        let mut pods: BTreeMap<PodKey, Pod> = BTreeMap::new();
        let mut policies: BTreeMap<PolicyKey, Policy> = BTreeMap::new();
        let steps = 5 + rng.below(40);
        for _ in 0..steps {
            match op(&mut rng) {
                Op::Namespace(n) => {
                    namespaces.insert(n.name.to_string(), n.clone());
                    index.apply_namespace(n);
                }
                Op::Pod(p) => {
                    pods.insert(p.key.clone(), p.clone());
                    index.apply_pod(p);
                }
                Op::Policy(p) => {
                    policies.insert(p.key.clone(), p.clone());
                    index.apply_policy(p);
                }
                Op::DeleteNamespace(n) => {
                    namespaces.remove(&n);
                    index.delete_namespace(&n);
                }
                Op::DeletePod(k) => {
                    pods.remove(&k);
                    index.delete_pod(&k);
                }
                Op::DeletePolicy(k) => {
                    policies.remove(&k);
                    index.delete_policy(&k);
                }
            }
        }
        let rebuilt = PolicyIndex::build(
            namespaces.into_values(),
            pods.into_values(),
            policies.into_values(),
        );
        assert!(
            index == rebuilt,
            "seed {seed}: the incremental index differs from a rebuild"
        );
        for ((what, a), (_, b)) in decisions(&index).into_iter().zip(decisions(&rebuilt)) {
            assert_eq!(a, b, "seed {seed}: {what}");
        }
    }
}
