//! Seeded random clusters for property tests here and in the crates that
//! consume the engine (feature `testgen`): reproducible cases without a
//! dependency on a property-testing framework.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::{convert, ClusterPolicy, Namespace, ObjectKey, Pod, PodKey, Policy, PolicyKey};

/// A small, seeded pseudo-random generator (xorshift64*): reproducible cases
/// without a dependency.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// The namespaces cases use.
pub const NAMESPACES: &[&str] = &["ns-a", "ns-b", "ns-c"];
/// The pod names cases use.
pub const PODS: &[&str] = &["p1", "p2", "p3", "p4"];
/// `app` label values.
pub const APPS: &[&str] = &["web", "db", "api"];
/// `env` label values of namespaces.
pub const ENVS: &[&str] = &["prod", "dev"];
/// Few IPs, so that pods share them (IP reuse, two claimants).
pub const IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"];
/// The ports policies name.
pub const PORTS: &[u16] = &[80, 5432, 9090];

/// One change to a cluster.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
    DeleteNamespace(String),
    DeletePod(PodKey),
    DeletePolicy(PolicyKey),
}

/// A random namespace.
pub fn namespace(rng: &mut Rng) -> Namespace {
    let name = rng.pick(NAMESPACES);
    let labels = match rng.below(3) {
        0 => String::new(),
        _ => format!("labels: {{env: {}}}", rng.pick(ENVS)),
    };
    // Now and then every policy of the namespace in audit mode.
    let mode = match rng.below(4) {
        0 => "annotations: {picket.io/mode: audit}",
        _ => "",
    };
    let fields: Vec<String> = [format!("name: {name}"), labels, mode.to_string()]
        .into_iter()
        .filter(|f| !f.is_empty())
        .collect();
    let ns: core::Namespace =
        serde_yaml::from_str(&format!("metadata: {{{}}}", fields.join(", "))).unwrap();
    convert::namespace(&ns).unwrap()
}

/// A random pod.
pub fn pod(rng: &mut Rng) -> Pod {
    let deleting = if rng.below(4) == 0 {
        ", deletionTimestamp: \"2026-12-01T10:00:00Z\""
    } else {
        ""
    };
    // Now and then a host-network pod, which reports its node's address
    // (here one of the pod addresses: a stale pod of a node whose address
    // a pod now has) and claims none.
    let host_network = if rng.below(8) == 0 {
        ", hostNetwork: true"
    } else {
        ""
    };
    // The named port `pg` on one port or another, or none: a named port
    // resolves per pod.
    let ports = match rng.below(4) {
        0 => "[]",
        1 => "[{containerPort: 9090, name: pg}]",
        _ => "[{containerPort: 5432, name: pg}]",
    };
    let yaml = format!(
        "metadata: {{name: {}, namespace: {}, labels: {{app: {}}}, creationTimestamp: \"2026-12-01T0{}:00:00Z\"{deleting}}}\n\
         spec: {{containers: [{{name: c, ports: {ports}}}]{host_network}}}\n\
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

/// A random peer.
pub fn peer(rng: &mut Rng) -> String {
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

/// A random rules.
pub fn rules(rng: &mut Rng, direction: &str) -> String {
    let peers = if direction == "ingress" { "from" } else { "to" };
    let rules: Vec<String> = (0..rng.below(3))
        .map(|_| {
            let port = match rng.below(3) {
                0 => String::new(),
                1 => format!(", ports: [{{port: {}}}]", PORTS[rng.below(PORTS.len())]),
                _ => ", ports: [{port: pg}]".into(),
            };
            // Now and then a rule for every peer.
            match rng.below(6) {
                0 => format!("{{{}}}", port.trim_start_matches(", ")),
                _ => format!("{{{peers}: [{}]{port}}}", peer(rng)),
            }
        })
        .collect();
    format!("{direction}: [{}]", rules.join(", "))
}

/// A random policy.
pub fn policy(rng: &mut Rng) -> Policy {
    let types = rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]);
    let selector = match rng.below(2) {
        0 => "{}".to_string(),
        _ => format!("{{matchLabels: {{app: {}}}}}", rng.pick(APPS)),
    };
    let mode = match rng.below(4) {
        0 => ", annotations: {picket.io/mode: audit}",
        _ => "",
    };
    let yaml = format!(
        "metadata: {{name: {}, namespace: {}{mode}}}\nspec: {{podSelector: {selector}, policyTypes: {types}, {}, {}}}\n",
        rng.pick(&["pol-1", "pol-2", "pol-3"]),
        rng.pick(NAMESPACES),
        rules(rng, "ingress"),
        rules(rng, "egress"),
    );
    let np: NetworkPolicy = serde_yaml::from_str(&yaml).unwrap();
    convert::policy(&np).unwrap().policy
}

/// A random peer of a cluster policy rule (`to` peers for egress).
pub fn cluster_peer(rng: &mut Rng, egress: bool) -> String {
    match rng.below(if egress { 7 } else { 4 }) {
        0 => "{namespaces: {}}".into(),
        1 => format!("{{namespaces: {{matchLabels: {{env: {}}}}}}}", rng.pick(ENVS)),
        2 => format!(
            "{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: {}}}}}}}}}",
            rng.pick(APPS)
        ),
        3 => format!(
            "{{pods: {{namespaceSelector: {{matchExpressions: [{{key: env, operator: NotIn, values: [{}]}}]}}, podSelector: {{}}}}}}",
            rng.pick(ENVS)
        ),
        4 => format!("{{networks: [{}/31]}}", rng.pick(IPS)),
        5 => "{nodes: {matchLabels: {role: infra}}}".into(),
        _ => "{networks: [0.0.0.0/0]}".into(),
    }
}

/// Random rules of a cluster policy for one direction.
pub fn cluster_rules(rng: &mut Rng, direction: &str) -> String {
    let (peers, egress) = match direction {
        "ingress" => ("from", false),
        _ => ("to", true),
    };
    let rules: Vec<String> = (0..rng.below(4))
        .map(|_| {
            // Now and then v1alpha1's `Allow`: unknown here, a rule that
            // fails closed (it denies everything).
            let action = rng.pick(&["Accept", "Deny", "Pass", "Accept", "Deny", "Pass", "Allow"]);
            let ports = match rng.below(4) {
                0 => format!(
                    ", protocols: [{{tcp: {{destinationPort: {{number: {}}}}}}}]",
                    PORTS[rng.below(PORTS.len())]
                ),
                1 => ", protocols: [{destinationNamedPort: pg}]".into(),
                _ => String::new(),
            };
            let list: Vec<String> = (0..1 + rng.below(2))
                .map(|_| cluster_peer(rng, egress))
                .collect();
            format!(
                "{{action: {action}, {peers}: [{}]{ports}}}",
                list.join(", ")
            )
        })
        .collect();
    format!("{direction}: [{}]", rules.join(", "))
}

/// A random ClusterNetworkPolicy of either tier; priorities collide now
/// and then (the order is then by name).
pub fn cluster_policy(rng: &mut Rng) -> ClusterPolicy {
    let subject = match rng.below(3) {
        0 => "{namespaces: {}}".to_string(),
        1 => format!(
            "{{namespaces: {{matchLabels: {{env: {}}}}}}}",
            rng.pick(ENVS)
        ),
        _ => format!(
            "{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: {}}}}}}}}}",
            rng.pick(APPS)
        ),
    };
    let mode = match rng.below(6) {
        0 => ", annotations: {picket.io/mode: audit}",
        _ => "",
    };
    let yaml = format!(
        "metadata: {{name: {}{mode}}}\nspec: {{tier: {}, priority: {}, subject: {subject}, {}, {}}}\n",
        rng.pick(&["cnp-1", "cnp-2", "cnp-3", "cnp-4"]),
        rng.pick(&["Admin", "Admin", "Baseline"]),
        rng.below(3) * 10,
        cluster_rules(rng, "ingress"),
        cluster_rules(rng, "egress"),
    );
    let cnp: convert::cluster::ClusterNetworkPolicy = serde_yaml::from_str(&yaml).unwrap();
    let compiled = convert::cluster::cluster_policy(&cnp).unwrap();
    assert!(
        compiled.errors.iter().all(|e| e.field.ends_with(".action")),
        "{yaml}: {:?}",
        compiled.errors
    );
    compiled.policy
}

/// The node cluster policies' `nodes` peers select (`role: infra`), at
/// one of the pods' addresses (a stale pod of a node whose address a pod
/// now has).
pub fn infra_node() -> crate::Node {
    crate::Node {
        name: "infra-1".into(),
        labels: [("role".to_string(), "infra".to_string())].into(),
        addresses: vec![IPS[4].parse().expect("an address")],
    }
}

/// A random op.
pub fn op(rng: &mut Rng) -> Op {
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
