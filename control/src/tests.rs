//! The differential property test of views: random clusters and random
//! sequences of changes; after every change, every pod's view, sent as
//! messages through the wire format and applied by a subscriber, decides
//! every (source address, port) exactly as the engine on the whole cluster,
//! and, for views with outbound parts, every (destination address, port)
//! the pod may dial.

use std::net::IpAddr;
use std::sync::Arc;

use picket_api::convert::{decode, Removed, SideEntry, Update};
use picket_policy::testgen::{op, Op, Rng, IPS, NAMESPACES, PODS, PORTS};
use picket_policy::{
    CompiledSide, Direction, NodeAddrs, ObjectKey, PodKey, PolicyIndex, Protocol, Reason, Side,
};

use crate::delta::Sent;
use crate::view::Shared;
use picket_state::{Kind, ObjectRef};

/// Applies a decoded message to a subscriber's index, as the sidecar does.
fn apply(index: &mut PolicyIndex, update: Update) {
    if update.full {
        *index = PolicyIndex::new();
        index.egress_toward_me_mut();
        if update.outbound {
            index.ingress_toward_me_mut();
        }
    }
    if update.cluster_wide {
        index.decide_sides_from_policies();
    }
    for policy in update.cluster_policies {
        index.apply_cluster_policy(policy);
    }
    for node in update.nodes {
        index.apply_node(node);
    }
    for ns in update.namespaces {
        index.apply_namespace(ns);
    }
    for pod in update.pods {
        index.apply_pod(pod);
    }
    for policy in update.policies {
        index.apply_policy(policy);
    }
    for removed in update.removed {
        match removed {
            Removed::Namespace(name) => index.delete_namespace(&name),
            Removed::Pod(key) => index.delete_pod(&key),
            Removed::Policy(key) => index.delete_policy(&key),
            Removed::ClusterPolicy(name) => index.delete_cluster_policy(&name),
            Removed::Node(name) => index.delete_node(&name),
            // Services are not the index's (see the services tests).
            Removed::Service(_) | Removed::EndpointSlice(_) => false,
        };
    }
    let entries = (update.egress.into_iter().map(|e| (Direction::Egress, e)))
        .chain(update.ingress.into_iter().map(|e| (Direction::Ingress, e)));
    for (direction, entry) in entries {
        let compiled = match direction {
            Direction::Egress => index.egress_toward_me_mut(),
            Direction::Ingress => index.ingress_toward_me_mut(),
        };
        match entry {
            SideEntry::Pod(key, egress) => compiled.set_pod(key, egress.map(Arc::new)),
            SideEntry::Addresses(ips, claimants) => {
                let claimants: Arc<[Arc<CompiledSide>]> =
                    claimants.into_iter().map(Arc::new).collect();
                for ip in ips {
                    compiled.set_address(ip, claimants.clone());
                }
            }
        }
    }
}

/// Applies a change to the cluster; what it changed, as the writer's log has it.
fn change(index: &mut PolicyIndex, op: Op) -> ObjectRef {
    let (kind, key) = match op {
        Op::Namespace(n) => {
            let key = ObjectKey::new("", &n.name);
            index.apply_namespace(n);
            (Kind::Namespace, key)
        }
        Op::Pod(p) => {
            let key = p.key.clone();
            index.apply_pod(p);
            (Kind::Pod, key)
        }
        Op::Policy(p) => {
            let key = p.key.clone();
            index.apply_policy(p);
            (Kind::Policy, key)
        }
        Op::DeleteNamespace(n) => {
            index.delete_namespace(&n);
            (Kind::Namespace, ObjectKey::new("", &n))
        }
        Op::DeletePod(k) => {
            index.delete_pod(&k);
            (Kind::Pod, k)
        }
        Op::DeletePolicy(k) => {
            index.delete_policy(&k);
            (Kind::Policy, k)
        }
    };
    ObjectRef { kind, key }
}

/// A subscriber: what the control plane sent it and what it holds.
struct Subscriber {
    sent: Sent,
    held: PolicyIndex,
    connected: bool,
    /// Changes not yet brought to it: a subscriber that lags gets several
    /// changes of several kinds at once.
    pending: Vec<ObjectRef>,
}

#[test]
fn shared_work_patched_from_version_to_version_equals_work_built_afresh() {
    let mut checked = 0u64;
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut cluster = PolicyIndex::new();
        let mut shared = Shared::default();
        for step in 0..60 {
            let then = cluster.clone();
            let changed = change(&mut cluster, op(&mut rng));
            shared = shared.next(&then, &cluster, Some(std::slice::from_ref(&changed)));
            // Some versions build nothing: the next patches from an older
            // base, over the changes of both.
            if rng.below(3) == 0 {
                continue;
            }
            if let Err(diff) = shared.check_against_fresh(&cluster) {
                panic!("seed {seed}, step {step}, after {changed:?}: {diff}");
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} versions checked");
}

#[test]
fn every_view_decides_like_the_whole_cluster_after_every_change() {
    let cases: u64 = std::env::var("PICKET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    let sources: Vec<IpAddr> = IPS
        .iter()
        .chain(&["10.0.0.6", "10.9.9.9"])
        .map(|ip| ip.parse().unwrap())
        .collect();
    let pods: Vec<PodKey> = PODS
        .iter()
        .flat_map(|p| NAMESPACES.iter().map(move |ns| ObjectKey::new(ns, p)))
        .collect();
    let mut checked = 0u64;
    let mut smaller = 0u64;
    let mut skipped = 0u64;
    let mut lagged = 0u64;
    // Decisions an address entry denied: egress-isolated pods left out of the view.
    let mut denied_by_address = 0u64;
    // Outbound decisions compared, and those an ingress entry of a pod
    // left out of the view denied.
    let (mut outbound_checked, mut ingress_denied_by_address) = (0u64, 0u64);
    // Decisions an audited policy would make otherwise, inbound and outbound.
    let (mut audited, mut outbound_audited) = (0usize, 0usize);
    for seed in 1..=cases {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut cluster = PolicyIndex::new();
        // Every other seed, the views have outbound parts.
        let outbound = seed % 2 == 0;
        let mut subscribers: Vec<Subscriber> = pods
            .iter()
            .map(|_| Subscriber {
                sent: Sent::new(outbound),
                held: PolicyIndex::new(),
                connected: false,
                pending: Vec::new(),
            })
            .collect();
        let steps = 5 + rng.below(40);
        // As the control plane does: each version's shared work patched
        // from the last's (built afresh after a restart).
        let mut shared = Shared::default();
        for step in 0..steps {
            let then = cluster.clone();
            let changed = change(&mut cluster, op(&mut rng));
            // Now and then the control plane restarts: every subscriber
            // reconnects into a full view.
            let restart = rng.below(15) == 0;
            shared = match restart {
                true => Shared::default(),
                false => shared.next(&then, &cluster, Some(std::slice::from_ref(&changed))),
            };
            for (me, sub) in pods.iter().zip(&mut subscribers) {
                sub.pending.push(changed.clone());
                let full = restart || !sub.connected;
                if !full && rng.below(3) == 0 {
                    lagged += 1;
                    continue;
                }
                // As the control plane does: skip what the change cannot
                // touch, apply pod changes pod by pod when exact, else
                // recompute. A wrong shortcut shows as a divergence below.
                let changed = std::mem::take(&mut sub.pending);
                let Ok(message) = sub.sent.update(&cluster, &shared, me, Some(&changed), full)
                else {
                    sub.connected = false;
                    continue;
                };
                sub.connected = true;
                match message {
                    None => skipped += 1,
                    Some(msg) => {
                        // In small parts, each through the wire, applied in
                        // order (published only after the last).
                        for part in crate::parts::into_parts(msg, 300) {
                            let wire = prost::Message::encode_to_vec(&part);
                            let part = prost::Message::decode(wire.as_slice()).unwrap();
                            apply(&mut sub.held, decode(&part).unwrap());
                        }
                    }
                }
                let dst = cluster.pod(me).unwrap();
                if sub.held.counts().pods < cluster.counts().pods {
                    smaller += 1;
                }
                for dst_ip in dst.ips.iter().copied().chain(["10.0.0.6".parse().unwrap()]) {
                    for &src in &sources {
                        for &port in PORTS {
                            let want =
                                cluster.decide_from_ip(src, me, dst_ip, port, Protocol::Tcp, &node);
                            let got = sub.held.decide_from_ip(
                                src,
                                me,
                                dst_ip,
                                port,
                                Protocol::Tcp,
                                &node,
                            );
                            assert_eq!(
                                got.allowed, want.allowed,
                                "seed {seed} step {step}: {src} -> {me} ({dst_ip}):{port}: view {got:?}, cluster {want:?}"
                            );
                            // A pod left out of the view is decided as an
                            // address: the same verdict and the same ingress
                            // rule, without the peer's name. A pod in the
                            // view is decided exactly alike.
                            if got.source.is_none()
                                && matches!(
                                    got.reason,
                                    Reason::Policies {
                                        egress: Side::Denied { .. },
                                        ..
                                    }
                                )
                            {
                                denied_by_address += 1;
                            }
                            if got.source.is_some() {
                                assert_eq!(
                                    got, want,
                                    "seed {seed} step {step}: {src} -> {me}:{port}"
                                );
                            } else if let (
                                Reason::Policies { ingress: a, .. },
                                Reason::Policies { ingress: b, .. },
                            ) = (&got.reason, &want.reason)
                            {
                                assert_eq!(
                                    a, b,
                                    "seed {seed} step {step}: {src} -> {me}:{port}: ingress side"
                                );
                            }
                            // Audit mode: where an audited policy would
                            // decide otherwise, the view says so too, with
                            // the same verdict.
                            let would = |index: &PolicyIndex, enforced: bool| {
                                index
                                    .audit_from_ip(src, me, dst_ip, port, Protocol::Tcp, &node)
                                    .filter(|a| a.decision.allowed != enforced)
                                    .map(|a| a.decision.allowed)
                            };
                            let want_audit = would(&cluster, want.allowed);
                            assert_eq!(
                                would(&sub.held, got.allowed),
                                want_audit,
                                "seed {seed} step {step}: audit of {src} -> {me} ({dst_ip}):{port}: view holds the source: {:?}, cluster audit {:?}, view audit {:?}",
                                sub.held.pods_with_ip(src),
                                cluster.audit_from_ip(src, me, dst_ip, port, Protocol::Tcp, &node),
                                sub.held.audit_from_ip(src, me, dst_ip, port, Protocol::Tcp, &node),
                            );
                            audited += usize::from(want_audit.is_some());
                            checked += 1;
                        }
                    }
                }
                if !outbound {
                    continue;
                }
                for &dst_ip in &sources {
                    for &port in PORTS {
                        let want = cluster.decide_to_ip(me, dst_ip, port, Protocol::Tcp, &node);
                        let got = sub
                            .held
                            .decide_to_ip(me, dst_ip, port, Protocol::Tcp, &node);
                        assert_eq!(
                            got.allowed, want.allowed,
                            "seed {seed} step {step}: {me} -> {dst_ip}:{port}: view {got:?}, cluster {want:?}"
                        );
                        // A destination in the view is decided exactly
                        // alike; one left out as an address, with the same
                        // egress side (only its ipBlocks can match it).
                        match (&got.reason, &want.reason) {
                            (
                                Reason::Egress {
                                    destination: Some(_),
                                    ..
                                },
                                _,
                            ) => assert_eq!(
                                got, want,
                                "seed {seed} step {step}: {me} -> {dst_ip}:{port}"
                            ),
                            (
                                Reason::Egress {
                                    egress: a,
                                    ingress,
                                    destination: None,
                                },
                                Reason::Egress { egress: b, .. },
                            ) => {
                                assert_eq!(
                                    a, b,
                                    "seed {seed} step {step}: {me} -> {dst_ip}:{port}: egress side"
                                );
                                if matches!(ingress, Some(Side::Denied { .. })) {
                                    ingress_denied_by_address += 1;
                                }
                            }
                            _ => assert_eq!(
                                got, want,
                                "seed {seed} step {step}: {me} -> {dst_ip}:{port}"
                            ),
                        }
                        let would = |index: &PolicyIndex, enforced: bool| {
                            index
                                .audit_to_ip(me, dst_ip, port, Protocol::Tcp, &node)
                                .filter(|a| a.decision.allowed != enforced)
                                .map(|a| a.decision.allowed)
                        };
                        let want_audit = would(&cluster, want.allowed);
                        assert_eq!(
                            would(&sub.held, got.allowed),
                            want_audit,
                            "seed {seed} step {step}: audit of {me} -> {dst_ip}:{port}"
                        );
                        outbound_audited += usize::from(want_audit.is_some());
                        outbound_checked += 1;
                    }
                }
            }
        }
    }
    assert!(
        audited > 0 && outbound_audited > 0,
        "no audited difference compared: {audited} inbound, {outbound_audited} outbound"
    );
    assert!(
        outbound_checked > 10_000,
        "too few outbound decisions compared: {outbound_checked}"
    );
    assert!(
        ingress_denied_by_address > 0,
        "no ingress entry of a pod left out of the view ever decided"
    );
    assert!(checked > 10_000, "too few decisions compared: {checked}");
    assert!(smaller > 0, "no view was ever smaller than the cluster");
    assert!(skipped > 0, "no change was ever skipped");
    assert!(lagged > 0, "no subscriber ever lagged");
    assert!(
        denied_by_address > 0,
        "no address entry ever decided a source's egress side"
    );
}

/// With ClusterNetworkPolicies in the cluster: a pod the tiers may concern
/// gets a cluster-wide view (compiled sides do not carry the tiers), every
/// other pod its compact one, and every view decides exactly as the whole
/// cluster does, after every change.
#[test]
fn with_cluster_policies_every_view_decides_like_the_whole_cluster() {
    let cases: u64 = std::env::var("PICKET_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
        / 3;
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    let addresses: Vec<IpAddr> = IPS
        .iter()
        .chain(&["10.0.0.6", "10.9.9.9"])
        .map(|ip| ip.parse().unwrap())
        .collect();
    let pods: Vec<PodKey> = PODS
        .iter()
        .flat_map(|p| NAMESPACES.iter().map(move |ns| ObjectKey::new(ns, p)))
        .collect();
    let (mut closed, mut served, mut tiers_decided) = (0u64, 0u64, 0u64);
    for seed in 1..=cases {
        let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
        let mut cluster = PolicyIndex::new();
        cluster.apply_node(picket_policy::testgen::infra_node());
        let outbound = seed % 2 == 0;
        let mut subscribers: Vec<(Sent, PolicyIndex, bool)> = pods
            .iter()
            .map(|_| (Sent::new(outbound), PolicyIndex::new(), false))
            .collect();
        let mut shared = Shared::default();
        for step in 0..5 + rng.below(30) {
            let then = cluster.clone();
            let changed = match rng.below(5) {
                0 => {
                    let policy = picket_policy::testgen::cluster_policy(&mut rng);
                    let key = ObjectKey::new("", &policy.name);
                    cluster.apply_cluster_policy(policy);
                    ObjectRef {
                        kind: Kind::ClusterPolicy,
                        key,
                    }
                }
                1 => {
                    let name = rng.pick(&["cnp-1", "cnp-2", "cnp-3", "cnp-4"]);
                    cluster.delete_cluster_policy(name);
                    ObjectRef {
                        kind: Kind::ClusterPolicy,
                        key: ObjectKey::new("", name),
                    }
                }
                _ => change(&mut cluster, op(&mut rng)),
            };
            shared = shared.next(&then, &cluster, Some(std::slice::from_ref(&changed)));
            for (me, (sent, held, connected)) in pods.iter().zip(&mut subscribers) {
                let Ok(message) = sent.update(
                    &cluster,
                    &shared,
                    me,
                    Some(std::slice::from_ref(&changed)),
                    !*connected,
                ) else {
                    *connected = false;
                    continue;
                };
                *connected = true;
                for part in message
                    .into_iter()
                    .flat_map(|m| crate::parts::into_parts(m, 300))
                {
                    let wire = prost::Message::encode_to_vec(&part);
                    let part = prost::Message::decode(wire.as_slice()).unwrap();
                    apply(held, decode(&part).unwrap());
                }
                let cluster_wide = held.egress_toward_me().is_none();
                assert_eq!(
                    cluster_wide,
                    !cluster.cluster_policies_concerning(me, outbound).is_empty(),
                    "seed {seed} step {step}: {me}: the view is cluster-wide exactly when cluster policies concern it"
                );
                if cluster_wide {
                    closed += 1;
                } else if !cluster.cluster_policies().is_empty() {
                    served += 1;
                }
                let dst = cluster.pod(me).unwrap();
                let mut compare =
                    |got: picket_policy::Decision, want: picket_policy::Decision, what: String| {
                        assert_eq!(
                            got.allowed, want.allowed,
                            "seed {seed} step {step}: {what}: view {got:?}, cluster {want:?}"
                        );
                        if cluster_wide {
                            assert_eq!(
                            got, want,
                            "seed {seed} step {step}: {what}: a cluster-wide view decides alike"
                        );
                        }
                        let tiered = match &want.reason {
                            Reason::Policies { ingress, egress } => {
                                ingress.tier().or(egress.tier()).is_some()
                            }
                            Reason::Egress {
                                egress, ingress, ..
                            } => {
                                egress.tier().is_some()
                                    || ingress.as_ref().is_some_and(|i| i.tier().is_some())
                            }
                            _ => false,
                        };
                        tiers_decided += u64::from(tiered);
                    };
                for dst_ip in dst.ips.iter().copied() {
                    for &src in &addresses {
                        for &port in PORTS {
                            let want =
                                cluster.decide_from_ip(src, me, dst_ip, port, Protocol::Tcp, &node);
                            let got =
                                held.decide_from_ip(src, me, dst_ip, port, Protocol::Tcp, &node);
                            compare(got, want, format!("{src} -> {me}:{port}"));
                        }
                    }
                }
                if outbound {
                    for &dst_ip in &addresses {
                        for &port in PORTS {
                            let want = cluster.decide_to_ip(me, dst_ip, port, Protocol::Tcp, &node);
                            let got = held.decide_to_ip(me, dst_ip, port, Protocol::Tcp, &node);
                            compare(got, want, format!("{me} -> {dst_ip}:{port}"));
                        }
                    }
                }
            }
        }
    }
    assert!(closed > 100, "only {closed} views were cluster-wide");
    assert!(
        served > 100,
        "only {served} views served beside cluster policies"
    );
    assert!(
        tiers_decided > 100,
        "the tiers decided only {tiers_decided} decisions"
    );
}

/// A cluster from YAML documents of Namespaces, Pods and NetworkPolicies.
fn cluster_of(yaml: &str) -> PolicyIndex {
    use k8s_openapi::api::{core::v1 as core, networking::v1 as net};
    let mut index = PolicyIndex::new();
    for doc in yaml.split("---\n") {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        match value["kind"].as_str().unwrap() {
            "Namespace" => index.apply_namespace(
                picket_policy::convert::namespace(
                    &serde_yaml::from_value::<core::Namespace>(value).unwrap(),
                )
                .unwrap(),
            ),
            "Pod" => index.apply_pod(
                picket_policy::convert::pod(&serde_yaml::from_value::<core::Pod>(value).unwrap())
                    .unwrap(),
            ),
            "NetworkPolicy" => index.apply_policy(
                picket_policy::convert::policy(
                    &serde_yaml::from_value::<net::NetworkPolicy>(value).unwrap(),
                )
                .unwrap()
                .policy,
            ),
            other => panic!("unexpected kind {other}"),
        }
    }
    index
}

#[test]
fn an_address_two_pods_hold_lets_in_only_what_both_egress_sides_allow() {
    let node = NodeAddrs::from_ips(["192.168.0.1".parse().unwrap()]);
    for (b_egress, allowed) in [("[{}]", true), ("[]", false)] {
        // shop/db admits every peer; a/p1 and b/p2 both hold 10.0.0.9 (both
        // live), each isolated for egress by its namespace's policy: a's
        // allows everything, b's as the case says.
        let cluster = cluster_of(&format!(
            "kind: Namespace\nmetadata: {{name: shop}}\n---\n\
             kind: Namespace\nmetadata: {{name: a}}\n---\n\
             kind: Namespace\nmetadata: {{name: b}}\n---\n\
             kind: Pod\nmetadata: {{name: db, namespace: shop}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.0.1}}\n---\n\
             kind: Pod\nmetadata: {{name: p1, namespace: a, creationTimestamp: \"2026-12-01T01:00:00Z\"}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.0.9}}\n---\n\
             kind: Pod\nmetadata: {{name: p2, namespace: b, creationTimestamp: \"2026-12-01T02:00:00Z\"}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.0.9}}\n---\n\
             kind: NetworkPolicy\nmetadata: {{name: out, namespace: a}}\nspec: {{podSelector: {{}}, policyTypes: [Egress], egress: [{{}}]}}\n---\n\
             kind: NetworkPolicy\nmetadata: {{name: out, namespace: b}}\nspec: {{podSelector: {{}}, policyTypes: [Egress], egress: {b_egress}}}\n"
        ));
        let (me, src) = (ObjectKey::new("shop", "db"), "10.0.0.9".parse().unwrap());
        assert_eq!(cluster.pods_with_ip(src).len(), 2, "both hold the address");
        let dst_ip: IpAddr = "10.0.0.1".parse().unwrap();
        let want = cluster.decide_from_ip(src, &me, dst_ip, 80, Protocol::Tcp, &node);
        assert_eq!(want.allowed, allowed);
        let mut sent = Sent::new(false);
        let message = sent
            .update(&cluster, &Shared::default(), &me, None, true)
            .unwrap()
            .unwrap();
        let mut view = PolicyIndex::new();
        apply(&mut view, decode(&message).unwrap());
        assert!(view.pods_with_ip(src).is_empty(), "the view holds neither");
        let got = view.decide_from_ip(src, &me, dst_ip, 80, Protocol::Tcp, &node);
        assert_eq!(got.allowed, allowed, "b's egress side {b_egress}: {got:?}");
    }
}

#[test]
fn addresses_with_the_same_egress_side_travel_as_one_entry() {
    let pods: String = (0..50)
        .map(|i| {
            format!(
                "---\nkind: Pod\nmetadata: {{name: p{i}, namespace: a}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.1.{i}}}\n"
            )
        })
        .collect();
    let policy = |egress: &str| {
        format!(
            "kind: NetworkPolicy\nmetadata: {{name: out, namespace: a}}\nspec: {{podSelector: {{}}, policyTypes: [Egress], egress: {egress}}}\n"
        )
    };
    let mut cluster = cluster_of(&format!(
        "kind: Namespace\nmetadata: {{name: shop}}\n---\n\
         kind: Namespace\nmetadata: {{name: a}}\n---\n\
         kind: Pod\nmetadata: {{name: db, namespace: shop}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.0.0.1}}\n\
         {pods}---\n{}",
        policy("[]")
    ));
    let me = ObjectKey::new("shop", "db");
    let (shared, mut sent) = (Shared::default(), Sent::new(false));
    let full = sent
        .update(&cluster, &shared, &me, None, true)
        .unwrap()
        .unwrap();
    let addresses = |msg: &picket_api::v1::WatchResponse| -> Vec<usize> {
        msg.egress.iter().map(|e| e.addresses.len()).collect()
    };
    assert_eq!(addresses(&full), vec![50], "one entry for the 50 pods of a");
    let mut view = PolicyIndex::new();
    apply(&mut view, decode(&full).unwrap());
    let node = NodeAddrs::default();
    let dst: IpAddr = "10.0.0.1".parse().unwrap();
    let decide = |view: &PolicyIndex, src: &str| {
        view.decide_from_ip(src.parse().unwrap(), &me, dst, 80, Protocol::Tcp, &node)
            .allowed
    };
    assert!(!decide(&view, "10.0.1.7"), "a's egress allows nothing");
    // The policy now lets a out: one delta entry for all its addresses.
    let changed = cluster_of(&policy("[{}]"));
    let new_policy = changed.policy(&ObjectKey::new("a", "out")).unwrap();
    cluster.apply_policy((**new_policy).clone());
    let changes = [ObjectRef::new(Kind::Policy, "a", "out")];
    let delta = sent
        .update(&cluster, &Shared::default(), &me, Some(&changes), false)
        .unwrap()
        .unwrap();
    assert_eq!(addresses(&delta), vec![50]);
    apply(&mut view, decode(&delta).unwrap());
    assert!(decide(&view, "10.0.1.7"));
    assert!(decide(&view, "10.0.1.49"));
}

/// A view that turns cluster-wide is sent whole, Services included: the
/// outbound proxy resolves ClusterIPs with them, and a Service left out
/// would be decided as the address it is (an Admin Deny of the pods behind
/// it would not match). Found by review: the Services were dropped.
#[test]
fn a_view_turning_cluster_wide_is_sent_whole_with_its_services() {
    use k8s_openapi::api::core::v1 as core;
    let mut cluster = cluster_of(
        "kind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nstatus: {podIP: 10.0.0.1}\n",
    );
    let service: core::Service = serde_yaml::from_str(
        "metadata: {name: db, namespace: shop}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 5432}]}\n",
    )
    .unwrap();
    let mut services = picket_policy::ServiceIndex::new();
    services.apply_service(picket_policy::convert::service(&service).unwrap());
    let me = ObjectKey::new("shop", "web");
    let mut sent = Sent::new(true);
    let shared = Shared::default();
    let mut first = sent
        .update(&cluster, &shared, &me, None, true)
        .unwrap()
        .unwrap();
    sent.services(&services, None, true, &mut first);
    assert_eq!(first.services.len(), 1);
    assert!(!first.cluster_wide);

    let cnp: picket_policy::convert::cluster::ClusterNetworkPolicy = serde_yaml::from_str(
        "metadata: {name: lockdown}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}\n",
    )
    .unwrap();
    cluster.apply_cluster_policy(
        picket_policy::convert::cluster::cluster_policy(&cnp)
            .unwrap()
            .policy,
    );
    let changed = [ObjectRef {
        kind: Kind::ClusterPolicy,
        key: ObjectKey::new("", "lockdown"),
    }];
    let mut next = sent
        .update(&cluster, &Shared::default(), &me, Some(&changed), false)
        .unwrap()
        .expect("the view changed");
    sent.services(&services, Some(&changed), false, &mut next);
    assert!(next.full && next.cluster_wide, "sent whole, cluster-wide");
    assert_eq!(next.cluster_policies.len(), 1);
    assert_eq!(next.services.len(), 1, "the Services go again with it");
}
