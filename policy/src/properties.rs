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
                if let Some(a) = index.audit_between_pods(src, dst, *port, Protocol::Tcp, &node) {
                    out.push((
                        format!("{src} -> {dst}:{port} (audit {:?})", a.policy),
                        a.decision,
                    ));
                }
            }
            for ip in IPS {
                let src: IpAddr = ip.parse().unwrap();
                let dst_ip = "10.0.0.6".parse().unwrap();
                let d = index.decide_from_ip(src, dst, dst_ip, *port, Protocol::Tcp, &node);
                out.push((format!("{ip} -> {dst}:{port}"), d));
                if let Some(a) = index.audit_from_ip(src, dst, dst_ip, *port, Protocol::Tcp, &node)
                {
                    out.push((
                        format!("{ip} -> {dst}:{port} (audit {:?})", a.policy),
                        a.decision,
                    ));
                }
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
        let enforced = PolicyIndex::build(
            namespaces
                .values()
                .cloned()
                .map(|n| Namespace { audit: false, ..n }),
            pods.values().cloned(),
            policies
                .values()
                .cloned()
                .map(|p| Policy { audit: false, ..p }),
        );
        // The same cluster without its audited policies: an audited policy
        // neither isolates nor allows.
        let audited_namespaces: Vec<&str> = namespaces
            .values()
            .filter(|n| n.audit)
            .map(|n| &*n.name)
            .collect();
        let without_audited = PolicyIndex::build(
            namespaces.values().cloned(),
            pods.values().cloned(),
            policies
                .values()
                .filter(|p| !p.audit && !audited_namespaces.contains(&&*p.key.namespace))
                .cloned(),
        );
        let rebuilt = PolicyIndex::build(
            namespaces.into_values(),
            pods.into_values(),
            policies.into_values(),
        );
        assert!(
            index == rebuilt,
            "seed {seed}: the incremental index differs from a rebuild"
        );
        let (got, want) = (decisions(&index), decisions(&rebuilt));
        assert_eq!(
            got.len(),
            want.len(),
            "seed {seed}: as many decisions and audits"
        );
        for ((what, a), (what_b, b)) in got.into_iter().zip(want) {
            assert_eq!(what, what_b, "seed {seed}");
            assert_eq!(a, b, "seed {seed}: {what}");
        }
        audits_decide_as_if_enforced(seed, &rebuilt, &enforced);
        let plain = |d: Vec<(String, Decision)>| -> Vec<(String, Decision)> {
            d.into_iter()
                .filter(|(what, _)| !what.contains("(audit"))
                .collect()
        };
        let (got, want) = (
            plain(decisions(&rebuilt)),
            plain(decisions(&without_audited)),
        );
        for ((what, a), (_, b)) in got.into_iter().zip(want) {
            assert_eq!(
                a, b,
                "seed {seed}: {what}: an audited policy changed the decision"
            );
        }
    }
}

/// An audit decides as the same cluster does with every policy enforced;
/// with nothing audited there is no audit.
fn audits_decide_as_if_enforced(seed: u64, index: &PolicyIndex, enforced: &PolicyIndex) {
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    let pods: Vec<PodKey> = PODS
        .iter()
        .flat_map(|p| NAMESPACES.iter().map(move |ns| ObjectKey::new(ns, p)))
        .collect();
    let audited = index.policies().any(|p| index.is_audited(p));
    for dst in &pods {
        for port in PORTS {
            for src in &pods {
                let audit = index.audit_between_pods(src, dst, *port, Protocol::Tcp, &node);
                assert!(
                    audited || audit.is_none(),
                    "seed {seed}: an audit without audited policies"
                );
                let as_if = audit.map_or_else(
                    || index.decide_between_pods(src, dst, *port, Protocol::Tcp, &node),
                    |a| a.decision,
                );
                let want = enforced.decide_between_pods(src, dst, *port, Protocol::Tcp, &node);
                assert_eq!(as_if, want, "seed {seed}: {src} -> {dst}:{port} audited");
            }
            for ip in IPS {
                let ip: IpAddr = ip.parse().unwrap();
                let dst_ip = "10.0.0.6".parse().unwrap();
                let as_if = index
                    .audit_from_ip(ip, dst, dst_ip, *port, Protocol::Tcp, &node)
                    .map_or_else(
                        || index.decide_from_ip(ip, dst, dst_ip, *port, Protocol::Tcp, &node),
                        |a| a.decision,
                    );
                let want = enforced.decide_from_ip(ip, dst, dst_ip, *port, Protocol::Tcp, &node);
                assert_eq!(as_if, want, "seed {seed}: {ip} -> {dst}:{port} audited");
                let as_if = index
                    .audit_to_ip(dst, ip, *port, Protocol::Tcp, &node)
                    .map_or_else(
                        || index.decide_to_ip(dst, ip, *port, Protocol::Tcp, &node),
                        |a| a.decision,
                    );
                let want = enforced.decide_to_ip(dst, ip, *port, Protocol::Tcp, &node);
                assert_eq!(
                    as_if, want,
                    "seed {seed}: {dst} -> {ip}:{port} (outbound) audited"
                );
            }
        }
    }
}

mod tiers;
