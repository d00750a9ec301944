//! Property tests of the index: after any sequence of applies and deletes
//! of pods, namespaces and policies, the incremental index equals the index
//! rebuilt from the final objects, and gives the same decision for every
//! (source, destination, port). Sequences come from a seeded generator; a
//! failure names its seed (`PICKET_PROPTEST_CASES` raises the case count).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::testgen::{op, Op, Rng, IPS, NAMESPACES, PODS, PORTS};
use super::*;

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
                let d = index.decide_to_ip(dst, src, *port, Protocol::Tcp, &node);
                out.push((format!("{dst} -> {ip}:{port} (outbound)"), d));
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
