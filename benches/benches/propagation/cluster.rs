//! The cluster behind the test API server: the lab's three pods and their
//! policies, plus a generated cluster (namespaces of Deployment-like pods with
//! realistic objects, and the kinds of NetworkPolicies teams write), and the
//! churn that rewrites it at a steady rate.
//!
//! Generated pods take IPs in 10.200.0.0/16 and hostIPs in 10.201.0.0/24,
//! which no lab uses (labs use 10.100-199.0.0/24 and 192.168.x.1). No
//! generated policy lives in the lab's namespace, so none selects the lab pods.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use picket_test_support::apiserver::{ApiServer, Kind};
use serde_json::{json, Value};

/// The Kubernetes namespace of the lab pods.
pub const LAB_NAMESPACE: &str = "bench";
/// The app's port in the server pod (named `http`).
pub const APP_PORT: u16 = 8080;
/// The policy each round creates: the server admits group=b only.
pub const ROUND_POLICY: &str = "server-admits-group-b-only";

/// The apps of every generated namespace; each runs as one Deployment.
const APPS: [&str; 10] = [
    "web", "api", "worker", "cache", "db", "queue", "auth", "search", "report", "gateway",
];
/// Fake nodes the generated pods run on.
const NODES: u32 = 100;

/// How big the generated cluster is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// Generated pods (the lab's three come on top).
    pub pods: usize,
    /// Generated namespaces.
    pub namespaces: usize,
    /// Generated NetworkPolicies (the lab's come on top).
    pub policies: usize,
}

/// A small, fast pseudo-random generator (xorshift64*): the bench needs
/// variety, not cryptography, and the same seed gives the same cluster.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One generated pod, as the churn remembers it.
#[derive(Clone, Debug)]
struct GenPod {
    ns: usize,
    app: usize,
    name: String,
    ip: Ipv4Addr,
    node: u32,
    version: u32,
    canary: bool,
}

/// The generated cluster and its churn.
#[derive(Debug)]
pub struct Generated {
    size: Size,
    rng: Rng,
    pods: Vec<GenPod>,
    used_ips: HashSet<Ipv4Addr>,
    next_ip: u32,
    next_pod: u64,
    /// Per policy (namespace, variant index within it): how often it was modified.
    policy_generation: Vec<u32>,
    /// What the churn did, by operation.
    pub ops: ChurnOps,
}

/// Writes the churn made, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChurnOps {
    /// Pods relabelled (a label value changed).
    pub relabelled: u64,
    /// Pods created.
    pub created: u64,
    /// Pods deleted.
    pub deleted: u64,
    /// Policies modified (a port or a selector value changed).
    pub policies_modified: u64,
}

impl ChurnOps {
    /// Every write.
    pub fn total(&self) -> u64 {
        self.relabelled + self.created + self.deleted + self.policies_modified
    }
}

fn namespace_name(ns: usize) -> String {
    format!("team-{ns:02}")
}

fn env_of(ns: usize) -> &'static str {
    ["prod", "staging", "dev"][ns % 3]
}

// === impl Generated ===

impl Generated {
    /// A cluster of `size`, not yet written anywhere.
    pub fn new(size: Size) -> Self {
        let mut generated = Self {
            size,
            rng: Rng::new(0x5eed_cafe_f00d),
            pods: Vec::with_capacity(size.pods),
            used_ips: HashSet::new(),
            next_ip: 0,
            next_pod: 0,
            policy_generation: vec![0; size.policies],
            ops: ChurnOps::default(),
        };
        for i in 0..size.pods {
            let ns = i % size.namespaces;
            let app = (i / size.namespaces) % APPS.len();
            let pod = generated.new_pod(ns, app);
            generated.pods.push(pod);
        }
        generated
    }

    /// Generated pods alive now.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    fn new_pod(&mut self, ns: usize, app: usize) -> GenPod {
        let ip = loop {
            // 10.200.0.1 .. 10.200.255.254, skipping .0 and .255.
            let n = self.next_ip % (256 * 254);
            self.next_ip += 1;
            let ip = Ipv4Addr::new(10, 200, (n / 254) as u8, (n % 254 + 1) as u8);
            if self.used_ips.insert(ip) {
                break ip;
            }
        };
        self.next_pod += 1;
        // 7919 is prime to 27^5: distinct counters give distinct suffixes.
        let suffix = pod_suffix(self.next_pod * 7919 % 14_348_907);
        GenPod {
            ns,
            app,
            name: format!("{}-{}-{suffix}", APPS[app], template_hash(ns, app)),
            ip,
            node: self.rng.below(NODES as usize) as u32,
            version: 1,
            canary: false,
        }
    }

    /// Every object of the generated cluster, as JSON documents.
    pub fn initial_objects(&self) -> Vec<Value> {
        let mut docs: Vec<Value> = (0..self.size.namespaces).map(namespace).collect();
        docs.extend(self.pods.iter().map(pod_object));
        docs.extend((0..self.size.policies).map(|i| self.policy_object(i)));
        docs
    }

    fn policy_object(&self, i: usize) -> Value {
        let ns = i % self.size.namespaces;
        let variant = i / self.size.namespaces;
        policy(
            &namespace_name(ns),
            ns,
            self.size.namespaces,
            variant,
            self.policy_generation[i],
        )
    }

    /// One churn write: relabel, create or delete a pod, or modify a policy.
    /// The pod count stays near its initial value.
    pub fn churn_step(&mut self, api: &ApiServer) -> Result<()> {
        let target = self.size.pods;
        let roll = self.rng.below(10);
        let op = if self.pods.len() + 20 < target {
            4
        } else if self.pods.len() > target + 20 {
            6
        } else {
            roll
        };
        match op {
            0..=3 => {
                let i = self.rng.below(self.pods.len());
                let pod = &mut self.pods[i];
                if self.rng.next() % 2 == 0 {
                    pod.version += 1;
                } else {
                    pod.canary = !pod.canary;
                }
                let doc = pod_object(&self.pods[i]);
                apply(api, &doc)?;
                self.ops.relabelled += 1;
            }
            4 | 5 => {
                let ns = self.rng.below(self.size.namespaces);
                let app = self.rng.below(APPS.len());
                let pod = self.new_pod(ns, app);
                apply(api, &pod_object(&pod))?;
                self.pods.push(pod);
                self.ops.created += 1;
            }
            6 | 7 => {
                let i = self.rng.below(self.pods.len());
                let pod = self.pods.swap_remove(i);
                self.used_ips.remove(&pod.ip);
                api.delete(Kind::Pod, Some(&namespace_name(pod.ns)), &pod.name)
                    .with_context(|| format!("deleting pod {}", pod.name))?;
                self.ops.deleted += 1;
            }
            _ => {
                let i = self.rng.below(self.size.policies);
                self.policy_generation[i] += 1;
                apply(api, &self.policy_object(i))?;
                self.ops.policies_modified += 1;
            }
        }
        Ok(())
    }
}

/// Writes one object through the test API server, as a controller would.
pub fn apply(api: &ApiServer, doc: &Value) -> Result<()> {
    api.apply(&doc.to_string())
        .with_context(|| format!("applying {}", doc["metadata"]["name"]))?;
    Ok(())
}

/// Writes many objects in one call (namespaces first).
pub fn apply_all(api: &ApiServer, docs: &[Value]) -> Result<()> {
    // JSON is YAML: one multi-document text, each document on one line.
    for chunk in docs.chunks(1000) {
        let text: Vec<String> = chunk.iter().map(Value::to_string).collect();
        api.apply(&text.join("\n---\n"))
            .context("loading the generated cluster into the test API server")?;
    }
    Ok(())
}

fn template_hash(ns: usize, app: usize) -> String {
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = (ns as u64 * 31 + app as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..10)
        .map(|_| {
            let c = alphabet[(x % alphabet.len() as u64) as usize] as char;
            x /= alphabet.len() as u64;
            c
        })
        .collect()
}

fn pod_suffix(mut x: u64) -> String {
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = alphabet[(x % alphabet.len() as u64) as usize] as char;
            x /= alphabet.len() as u64;
            c
        })
        .collect()
}

fn namespace(ns: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": namespace_name(ns),
            "labels": {"team": namespace_name(ns), "env": env_of(ns)},
            "annotations": {"owner": format!("team-{ns:02}@example.com")},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

/// A pod as a Deployment's ReplicaSet and the kubelet leave it: about 4 KB of
/// JSON, managed fields included (clients such as kube-rs decode them all).
fn pod_object(p: &GenPod) -> Value {
    let app = APPS[p.app];
    let ns = namespace_name(p.ns);
    let hash = template_hash(p.ns, p.app);
    let node_ip = format!("10.201.0.{}", p.node + 1);
    let mut labels = BTreeMap::from([
        ("app".to_string(), app.to_string()),
        ("pod-template-hash".to_string(), hash.clone()),
        (
            "tier".to_string(),
            if p.app < 3 { "frontend" } else { "backend" }.to_string(),
        ),
        ("version".to_string(), format!("v{}", p.version)),
        ("app.kubernetes.io/part-of".to_string(), ns.clone()),
    ]);
    if p.canary {
        labels.insert("track".into(), "canary".into());
    }
    let time = "2025-01-01T00:00:00Z";
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": p.name,
            "generateName": format!("{app}-{hash}-"),
            "namespace": ns,
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/restartedAt": time,
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"),
                "uid": format!("6f1b7c2e-{:04x}-4d5e-9a8b-{:012x}", p.ns, p.app),
                "controller": true, "blockOwnerDeletion": true,
            }],
            "managedFields": [
                {
                    "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:tier": {}, "f:version": {}},
                                 "f:ownerReferences": {".": {}, "k:{\"uid\":\"6f1b7c2e\"}": {}}},
                                 "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                                            "f:ports": {}, "f:readinessProbe": {}, "f:resources": {}, "f:volumeMounts": {}}},
                                            "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:terminationGracePeriodSeconds": {}}},
                },
                {
                    "manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": time,
                    "fieldsType": "FieldsV1", "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {},
                                 "f:phase": {}, "f:podIP": {}, "f:podIPs": {".": {}, "k:{\"ip\":\"10.200.0.1\"}": {}}, "f:startTime": {}}},
                },
            ],
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": format!("registry.example.com/{ns}/{app}:1.{}.0", p.version),
                "imagePullPolicy": "IfNotPresent",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                ],
                "env": [
                    {"name": "APP_NAME", "value": app},
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
                                   "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/app"},
                    {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                ],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": format!("{app}-config"), "defaultMode": 420}},
                {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                ]}},
            ],
            "nodeName": format!("node-{:02}", p.node),
            "serviceAccountName": "default",
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": p.ip.to_string(),
            "podIPs": [{"ip": p.ip.to_string()}],
            "hostIP": node_ip,
            "hostIPs": [{"ip": node_ip}],
            "startTime": time,
            "qosClass": "Burstable",
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": time},
                {"type": "Initialized", "status": "True", "lastTransitionTime": time},
                {"type": "Ready", "status": "True", "lastTransitionTime": time},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": time},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": time},
            ],
            "containerStatuses": [{
                "name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": format!("registry.example.com/{ns}/{app}:1.{}.0", p.version),
                "imageID": format!("registry.example.com/{ns}/{app}@sha256:{:064x}", p.app),
                "containerID": format!("containerd://{:064x}", p.ip.to_bits()),
                "state": {"running": {"startedAt": time}},
            }],
        },
    })
}

/// The kinds of policies teams write, one per `variant` (0..=9; beyond that,
/// numbered copies); `generation` changes a port or a selector value.
fn policy(ns: &str, ns_index: usize, namespaces: usize, variant: usize, generation: u32) -> Value {
    let g = generation as u16;
    let (name, spec) = match variant % 10 {
        0 => (
            "default-deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        1 => (
            "web-from-gateway",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "gateway"}}}],
                                "ports": [{"protocol": "TCP", "port": "http"}]}]}),
        ),
        2 => (
            "api-from-frontends",
            json!({"podSelector": {"matchLabels": {"app": "api"}},
                   "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "gateway"]}]}}],
                                "ports": [{"protocol": "TCP", "port": 8080 + g % 10}]}]}),
        ),
        3 => (
            "db-from-api",
            json!({"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}},
                                         {"podSelector": {"matchLabels": {"app": "worker"}}}],
                                "ports": [{"protocol": "TCP", "port": 5432}]}]}),
        ),
        4 => (
            "metrics-from-monitoring",
            json!({"podSelector": {},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": env_of(generation as usize)}},
                                          "podSelector": {"matchLabels": {"app": "report"}}}],
                                "ports": [{"protocol": "TCP", "port": "metrics"}]}]}),
        ),
        5 => (
            "cache-from-tiers",
            json!({"podSelector": {"matchLabels": {"app": "cache"}},
                   "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}],
                                "ports": [{"protocol": "TCP", "port": 6379}]}]}),
        ),
        6 => (
            "egress-dns",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        ),
        7 => (
            "worker-egress-next-team",
            json!({"podSelector": {"matchLabels": {"app": "worker"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": namespace_name((ns_index + 1 + generation as usize) % namespaces)}},
                                       "podSelector": {"matchLabels": {"app": "api"}}}],
                               "ports": [{"protocol": "TCP", "port": 8080, "endPort": 8090 + g % 10}]}]}),
        ),
        8 => (
            "gateway-from-cidr",
            json!({"podSelector": {"matchLabels": {"app": "gateway"}},
                   "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": [format!("10.200.{}.0/24", 99 + g % 100)]}}],
                                "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}]}]}),
        ),
        _ => (
            "search-from-envs",
            json!({"podSelector": {"matchLabels": {"app": "search"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]},
                                          "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]},
                                                                                {"key": "version", "operator": "DoesNotExist"}]}}]}]}),
        ),
    };
    let name = if variant < 10 {
        name.to_string()
    } else {
        format!("{name}-{}", variant / 10)
    };
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns, "labels": {"team": ns}},
        "spec": spec,
    })
}

/// The lab's pods, as the kubelet reports them: the server (app=server) and
/// two clients (app=client, group=a and group=b), with their real IPs.
pub fn lab_pod(name: &str, ip: IpAddr, host_ip: IpAddr, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": LAB_NAMESPACE, "labels": labels},
        "spec": {"containers": [{"name": "app", "ports": [{"containerPort": APP_PORT, "name": "http", "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "hostIP": host_ip.to_string(), "hostIPs": [{"ip": host_ip.to_string()}]},
    })
}

/// The lab namespace and the policies that always hold there: the server
/// pod is selected for egress only (so not isolated for ingress), and the
/// clients may reach it on the app port (so their egress is checked too).
pub fn lab_objects() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": LAB_NAMESPACE, "labels": {"team": "bench", "env": "bench"}}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "server-egress", "namespace": LAB_NAMESPACE},
               "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"namespaceSelector": {}}]}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "clients-to-server", "namespace": LAB_NAMESPACE},
               "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
                                    "ports": [{"protocol": "TCP", "port": APP_PORT}]}]}}),
    ]
}

/// The policy each round creates: the server pod becomes isolated for
/// ingress and admits only group=b on its named port.
pub fn round_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": ROUND_POLICY, "namespace": LAB_NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"group": "b"}}}],
                              "ports": [{"protocol": "TCP", "port": "http"}]}]},
    })
}
