//! Property tests of the tiers, on seeded random clusters with random
//! ClusterNetworkPolicies of both tiers:
//!
//! - a Pass in the Admin tier is the absence of the Admin tier for what
//!   it passes: wherever the Admin tier's first matching rule on each side
//!   is a Pass (or none matches), the decision is the one the cluster
//!   without any Admin policy gives;
//! - without Admin policies, a side NetworkPolicy isolates is decided as
//!   it was without tiers: the Baseline tier never overrides it;
//! - cluster policies in audit mode change no decision, only audits.

use super::super::testgen::{cluster_policy, namespace, op, pod, policy, Op, Rng};
use super::*;
use crate::trace::{ClusterPolicyTrace, SideTrace};

fn cases() -> u64 {
    std::env::var("PICKET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A random cluster: all namespaces, some pods and policies, and
/// cluster policies of both tiers.
fn cluster(rng: &mut Rng) -> (PolicyIndex, Vec<ClusterPolicy>) {
    let mut index = PolicyIndex::new();
    for _ in 0..4 {
        index.apply_namespace(namespace(rng));
    }
    for _ in 0..8 + rng.below(6) {
        index.apply_pod(pod(rng));
    }
    for _ in 0..rng.below(5) {
        index.apply_policy(policy(rng));
    }
    // A few more changes of any kind, deletions included.
    for _ in 0..rng.below(6) {
        match op(rng) {
            Op::Namespace(n) => index.apply_namespace(n),
            Op::Pod(p) => index.apply_pod(p),
            Op::Policy(p) => index.apply_policy(p),
            Op::DeleteNamespace(n) => drop(index.delete_namespace(&n)),
            Op::DeletePod(k) => drop(index.delete_pod(&k)),
            Op::DeletePolicy(k) => drop(index.delete_policy(&k)),
        }
    }
    index.apply_node(super::super::testgen::infra_node());
    let mut cluster = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let p = cluster_policy(rng);
        cluster.retain(|c: &ClusterPolicy| c.name != p.name);
        cluster.push(p);
    }
    (index, cluster)
}

fn with_cluster(
    index: &PolicyIndex,
    cluster: impl IntoIterator<Item = ClusterPolicy>,
) -> PolicyIndex {
    let mut index = index.clone();
    index.replace_cluster_policies(cluster);
    index
}

fn pod_keys() -> Vec<PodKey> {
    PODS.iter()
        .flat_map(|p| NAMESPACES.iter().map(move |ns| ObjectKey::new(ns, p)))
        .collect()
}

/// What a side's Admin tier did: the action of its first matching rule.
fn admin_action(side: Option<&SideTrace>) -> Option<Action> {
    first_match(&side?.admin)
}

fn first_match(policies: &[ClusterPolicyTrace]) -> Option<Action> {
    policies
        .iter()
        .flat_map(|p| &p.rules)
        .find(|r| r.peer.is_some() && r.port.is_some())
        .map(|r| r.action)
}

#[test]
fn an_admin_pass_decides_as_the_cluster_without_admin_policies() {
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    let mut passed = 0;
    for seed in 1..=cases() {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let (plain, cluster) = cluster(&mut rng);
        let baseline: Vec<ClusterPolicy> = cluster
            .iter()
            .filter(|p| p.tier == Tier::Baseline)
            .cloned()
            .collect();
        let full = with_cluster(&plain, cluster);
        let no_admin = with_cluster(&plain, baseline);
        for src in &pod_keys() {
            for dst in &pod_keys() {
                for port in PORTS {
                    let e = full.explain_between_pods(src, dst, *port, Protocol::Tcp, &node);
                    let (ingress, egress) = (
                        admin_action(e.ingress.as_ref()),
                        admin_action(e.egress.as_ref()),
                    );
                    let undecided = |a: Option<Action>| matches!(a, None | Some(Action::Pass));
                    if !undecided(ingress) || !undecided(egress) {
                        continue;
                    }
                    if ingress == Some(Action::Pass) || egress == Some(Action::Pass) {
                        passed += 1;
                    }
                    let want = no_admin.decide_between_pods(src, dst, *port, Protocol::Tcp, &node);
                    assert_eq!(
                        e.decision, want,
                        "seed {seed}: {src} -> {dst}:{port}: the Admin tier passed"
                    );
                    assert_eq!(
                        full.decide_between_pods(src, dst, *port, Protocol::Tcp, &node),
                        want,
                        "seed {seed}: {src} -> {dst}:{port}: explain and decide agree"
                    );
                }
            }
        }
    }
    assert!(passed > 100, "only {passed} decisions went through a Pass");
}

#[test]
fn without_admin_policies_networkpolicy_decides_every_side_it_isolates() {
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    let mut baseline_decided = 0;
    for seed in 1..=cases() {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let (plain, cluster) = cluster(&mut rng);
        let tiers = with_cluster(
            &plain,
            cluster.into_iter().map(|p| ClusterPolicy {
                tier: Tier::Baseline,
                ..p
            }),
        );
        for src in &pod_keys() {
            for dst in &pod_keys() {
                for port in PORTS {
                    let want = plain.decide_between_pods(src, dst, *port, Protocol::Tcp, &node);
                    let got = tiers.decide_between_pods(src, dst, *port, Protocol::Tcp, &node);
                    let (Some((wi, we)), Some((gi, ge))) = (sides(&want), sides(&got)) else {
                        assert_eq!(got, want, "seed {seed}: {src} -> {dst}:{port}");
                        continue;
                    };
                    for (w, g, side) in [(&wi, &gi, "ingress"), (&we, &ge, "egress")] {
                        match w {
                            Side::NotIsolated => {
                                if g.tier().is_some() {
                                    baseline_decided += 1;
                                } else {
                                    assert!(
                                        matches!(g, Side::NotIsolated | Side::NotEvaluated),
                                        "seed {seed}: {src} -> {dst}:{port} {side}: {g:?}"
                                    );
                                }
                            }
                            // Not evaluated once the other side denied: the
                            // tiers may have denied the other side first.
                            Side::NotEvaluated => {}
                            _ if matches!(g, Side::NotEvaluated) => {}
                            _ => assert_eq!(
                                g, w,
                                "seed {seed}: {src} -> {dst}:{port} {side}: the Baseline overrode NetworkPolicy"
                            ),
                        }
                    }
                }
            }
        }
    }
    assert!(
        baseline_decided > 100,
        "the Baseline decided only {baseline_decided} sides"
    );
}

/// A decision's ingress and egress sides; a hostNetwork destination's
/// ingress, and a side the decision did not reach, are not isolated.
fn sides(d: &Decision) -> Option<(Side, Side)> {
    match &d.reason {
        Reason::Policies { ingress, egress } => Some((ingress.clone(), egress.clone())),
        Reason::Egress {
            egress, ingress, ..
        } => Some((ingress.clone().unwrap_or(Side::NotIsolated), egress.clone())),
        Reason::HostNetworkDestination => Some((Side::NotIsolated, Side::NotIsolated)),
        _ => None,
    }
}

#[test]
fn cluster_policies_in_audit_mode_change_no_decision() {
    for seed in 1..=cases() / 4 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5);
        let (plain, cluster) = cluster(&mut rng);
        let audited = with_cluster(
            &plain,
            cluster
                .into_iter()
                .map(|p| ClusterPolicy { audit: true, ..p }),
        );
        let strip = |d: Vec<(String, Decision)>| -> Vec<(String, Decision)> {
            d.into_iter()
                .filter(|(what, _)| !what.contains("(audit"))
                .collect()
        };
        let (got, want) = (strip(decisions(&audited)), strip(decisions(&plain)));
        assert_eq!(got.len(), want.len());
        for ((what, a), (_, b)) in got.into_iter().zip(want) {
            assert_eq!(
                a, b,
                "seed {seed}: {what}: an audited cluster policy changed it"
            );
        }
    }
}
