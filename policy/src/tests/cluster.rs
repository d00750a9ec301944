//! The tiers: ClusterNetworkPolicy's Admin tier above NetworkPolicy, its
//! Baseline tier below, each fed from YAML as an administrator writes it.

use super::*;

fn cnp(name: &str, tier: &str, priority: u16, subject: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata: {{name: {name}}}\nspec: {{tier: {tier}, priority: {priority}, subject: {subject}, {rules}}}\n---\n"
    )
}

const ALL_NAMESPACES: &str = "{namespaces: {}}";
const PROD: &str = "{namespaces: {matchLabels: {env: prod}}}";

fn decide(index: &PolicyIndex, from: &str, to: &str, port: u16) -> Decision {
    index.decide_between_pods(&key(from), &key(to), port, Protocol::Tcp, &node())
}

fn ingress_tier(d: &Decision) -> Option<(String, Action)> {
    match &d.reason {
        Reason::Policies { ingress, .. } => ingress.tier().map(|v| {
            (
                format!("{}:{}#{}", v.tier.label(), v.policy, v.rule),
                v.action,
            )
        }),
        _ => None,
    }
}

#[test]
fn an_admin_accept_overrides_a_networkpolicy_that_isolates() {
    let idx = with(&format!(
        "{}{DENY_DB_INGRESS}",
        cnp(
            "web-to-db",
            "Admin",
            10,
            PROD,
            "ingress: [{action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}], protocols: [{tcp: {destinationPort: {number: 5432}}}]}]",
        )
    ));
    let d = decide(&idx, "prod/web", "prod/db", 5432);
    assert!(d.allowed);
    assert_eq!(
        ingress_tier(&d),
        Some(("admin:web-to-db#0".into(), Action::Accept))
    );
    assert!(
        d.to_string()
            .contains("accepted by Admin tier ClusterNetworkPolicy web-to-db (priority 10) rule 0"),
        "{d}"
    );
    // Another port: the Admin tier does not match; NetworkPolicy isolates.
    assert!(!allowed(&idx, "prod/web", "prod/db", 80));
    assert!(
        allowed(&idx, "dev/web", "prod/db", 5432),
        "dev/web is app=web too"
    );
}

#[test]
fn an_admin_deny_overrides_a_networkpolicy_that_allows() {
    let idx = with(&format!(
        "{}{}",
        cnp(
            "no-dev",
            "Admin",
            5,
            PROD,
            "ingress: [{name: keep-dev-out, action: Deny, from: [{namespaces: {matchLabels: {env: dev}}}]}]",
        ),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: prod}
spec: {podSelector: {}, ingress: [{}]}
"#
    ));
    let d = decide(&idx, "dev/web", "prod/web", 80);
    assert!(!d.allowed);
    assert_eq!(d.reason_label(), "ingress-denied");
    assert!(d.to_string().contains("(keep-dev-out)"), "{d}");
    assert!(
        allowed(&idx, "prod/db", "prod/web", 80),
        "NetworkPolicy allows the rest"
    );
    // The same holds for an address found by a pod's IP.
    assert!(!allowed_from_ip(&idx, "10.0.1.1", "prod/web", 80));
}

#[test]
fn a_pass_skips_the_rest_of_the_admin_tier_and_networkpolicy_decides() {
    let cluster = format!(
        "{}{}",
        cnp(
            "pass-dev",
            "Admin",
            1,
            ALL_NAMESPACES,
            "ingress: [{action: Pass, from: [{namespaces: {matchLabels: {env: dev}}}]}, {action: Deny, from: [{namespaces: {}}]}]",
        ),
        cnp(
            "deny-all",
            "Admin",
            2,
            ALL_NAMESPACES,
            "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
        ),
    );
    let idx = with(&cluster);
    // Passed: no NetworkPolicy isolates prod/web, no Baseline: allowed.
    let d = decide(&idx, "dev/web", "prod/web", 80);
    assert!(d.allowed, "{d}");
    assert_eq!(ingress_tier(&d), None);
    // Not passed: the policy's second rule denies, before deny-all.
    let d = decide(&idx, "prod/db", "prod/web", 80);
    assert_eq!(
        ingress_tier(&d),
        Some(("admin:pass-dev#1".into(), Action::Deny))
    );
    // Passed to a NetworkPolicy that isolates: it decides.
    let idx = with(&format!("{cluster}{DENY_DB_INGRESS}"));
    assert!(!allowed(&idx, "dev/web", "prod/db", 5432));
}

#[test]
fn the_baseline_decides_only_where_no_networkpolicy_isolates() {
    let idx = with(&format!(
        "{}{}",
        cnp(
            "default-deny",
            "Baseline",
            1,
            PROD,
            "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
        ),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]}]
"#
    ));
    // prod/db is isolated by a NetworkPolicy: it allows dev/web; the Baseline never runs.
    assert!(allowed(&idx, "dev/web", "prod/db", 5432));
    // prod/web is not: the Baseline denies.
    let d = decide(&idx, "dev/web", "prod/web", 80);
    assert_eq!(
        ingress_tier(&d),
        Some(("baseline:default-deny#0".into(), Action::Deny))
    );
    // dev pods are no subject: the default allows.
    assert!(allowed(&idx, "prod/web", "dev/web", 80));
}

#[test]
fn lower_priority_numbers_go_first_and_a_policys_rules_in_order() {
    let deny = cnp(
        "a-deny",
        "Admin",
        20,
        ALL_NAMESPACES,
        "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
    );
    let accept = cnp(
        "b-accept",
        "Admin",
        10,
        ALL_NAMESPACES,
        "ingress: [{action: Accept, from: [{namespaces: {}}]}, {action: Deny, from: [{namespaces: {}}]}]",
    );
    let idx = with(&format!("{deny}{accept}"));
    assert!(allowed(&idx, "dev/web", "prod/web", 80));
    // The same priority: the name that sorts first wins (a-deny), and the
    // pair is reported.
    let accept = accept.replace("priority: 10", "priority: 20");
    let idx = with(&format!("{deny}{accept}"));
    assert!(!allowed(&idx, "dev/web", "prod/web", 80));
    let shared: Vec<(&str, &str)> = idx
        .cluster_policies()
        .shared_priorities()
        .into_iter()
        .map(|(a, b)| (&*a.name, &*b.name))
        .collect();
    assert_eq!(shared, [("a-deny", "b-accept")]);
}

#[test]
fn egress_tiers_decide_at_the_source_networks_nodes_and_named_ports() {
    let idx = with(&format!(
        "{}{}{}",
        cnp(
            "egress",
            "Admin",
            1,
            PROD,
            "egress: [\
             {action: Deny, to: [{networks: [8.8.8.0/24]}]},\
             {action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]},\
             {action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}], protocols: [{destinationNamedPort: postgres}]},\
             {action: Accept, to: [{networks: [0.0.0.0/0]}]}]",
        ),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress]}
---
apiVersion: v1
kind: Node
metadata: {name: infra-1, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 192.168.1.2}]}
"#,
        "",
    ));
    let out =
        |dst: &str, port| idx.decide_to_ip(&key("prod/web"), ip(dst), port, Protocol::Tcp, &node());
    assert!(!out("8.8.8.8", 53).allowed);
    assert!(!out("192.168.1.2", 22).allowed, "a node the rule selects");
    assert!(out("192.168.1.1", 22).allowed, "the pod's own node, always");
    assert!(
        !out("10.0.0.2", 5432).allowed,
        "postgres names 5432 on prod/db"
    );
    // The Accept of 0.0.0.0/0 overrides the NetworkPolicy's deny-all...
    assert!(out("1.1.1.1", 443).allowed);
    assert!(out("10.0.1.1", 80).allowed);
    // ...and decides the egress side of an inbound connection too.
    assert!(allowed(&idx, "prod/web", "dev/web", 80));
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
    // IPv6 is no IPv4 network.
    assert!(!out("fd00::9", 80).allowed, "NetworkPolicy's deny-all");
}

#[test]
fn domain_names_never_widen_and_broken_rules_fail_closed() {
    let idx = with(&format!(
        "{}{}{}",
        cnp(
            "dns",
            "Admin",
            1,
            PROD,
            "egress: [{action: Accept, to: [{domainNames: [example.com]}]}]",
        ),
        cnp(
            "future",
            "Admin",
            2,
            PROD,
            "ingress: [{action: Accept, from: [{futurePeer: {}}]}, {action: Pass, from: [{futurePeer: {}}]}]",
        ),
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
    ));
    assert!(
        !idx.decide_to_ip(
            &key("prod/web"),
            ip("93.184.215.14"),
            443,
            Protocol::Tcp,
            &node()
        )
        .allowed
    );
    // The broken Accept matches nothing; the broken Pass denies everything.
    let d = decide(&idx, "dev/web", "prod/web", 80);
    assert_eq!(
        ingress_tier(&d),
        Some(("admin:future#1".into(), Action::Deny))
    );
    let explanation = idx.explain_between_pods(
        &key("prod/web"),
        &key("dev/web"),
        80,
        Protocol::Tcp,
        &node(),
    );
    let egress = explanation.egress.unwrap();
    assert_eq!(&*egress.admin[0].policy, "dns");
    assert!(egress.admin[0].rules[0].unsupported_domain_names);
    assert_eq!(egress.admin[0].rules[0].peer, None);
    let explanation = idx.explain_between_pods(
        &key("dev/web"),
        &key("prod/web"),
        80,
        Protocol::Tcp,
        &node(),
    );
    let ingress = explanation.ingress.unwrap();
    let rules: Vec<(Action, bool, bool)> = ingress.admin[0]
        .rules
        .iter()
        .map(|r| (r.action, r.peer.is_some(), r.broken.is_some()))
        .collect();
    assert_eq!(
        rules,
        [(Action::Accept, false, true), (Action::Deny, true, true)]
    );
}

#[test]
fn an_admin_policy_in_audit_mode_changes_nothing_but_the_audit() {
    let policy = cnp(
        "lockdown",
        "Admin",
        1,
        PROD,
        "ingress: [{action: Deny, from: [{namespaces: {matchLabels: {env: dev}}}]}]",
    )
    .replace(
        "metadata: {name: lockdown}",
        "metadata: {name: lockdown, annotations: {picket.io/mode: audit}}",
    );
    let idx = with(&policy);
    let (from, to) = (key("dev/web"), key("prod/web"));
    assert!(
        idx.decide_between_pods(&from, &to, 80, Protocol::Tcp, &node())
            .allowed
    );
    let audit = idx
        .audit_between_pods(&from, &to, 80, Protocol::Tcp, &node())
        .expect("an audited cluster policy concerns every pair");
    assert!(!audit.decision.allowed);
    assert_eq!(
        audit.policy.map(|p| p.to_string()).as_deref(),
        Some("admin:lockdown")
    );
    let dst_ip = ip("10.0.0.1");
    let audit = idx
        .audit_from_ip(ip("10.0.1.1"), &to, dst_ip, 80, Protocol::Tcp, &node())
        .unwrap();
    assert!(!audit.decision.allowed);
}

#[test]
fn no_cluster_policy_selecting_a_pod_leaves_its_decisions_as_they_were() {
    let plain = with(DENY_DB_INGRESS);
    let tiers = with(&format!(
        "{}{DENY_DB_INGRESS}",
        cnp(
            "elsewhere",
            "Admin",
            1,
            "{namespaces: {matchLabels: {env: staging}}}",
            "ingress: [{action: Deny, from: [{namespaces: {}}]}], egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]",
        )
    ));
    for from in ["prod/web", "prod/db", "dev/web"] {
        for to in ["prod/web", "prod/db", "dev/web"] {
            for port in [80, 5432] {
                assert_eq!(
                    decide(&plain, from, to, port),
                    decide(&tiers, from, to, port)
                );
            }
        }
    }
}

#[test]
fn a_hostnetwork_destination_is_decided_by_the_sources_egress_side_as_the_outbound_proxy_does() {
    let idx = with(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: dev}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.1.2, hostIP: 192.168.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: local-agent, namespace: dev}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.1.1, hostIP: 192.168.1.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: prod}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}
"#,
    );
    let to_agent = decide(&idx, "prod/web", "dev/agent", 80);
    let outbound = idx.decide_to_ip(
        &key("prod/web"),
        ip("192.168.1.2"),
        80,
        Protocol::Tcp,
        &node(),
    );
    assert!(!outbound.allowed);
    assert!(
        !to_agent.allowed,
        "reach agrees with the outbound proxy: {to_agent}"
    );
    // As `picket reach` asks it: with the destination's node, which the
    // host-network destination's address always is in.
    let agents_node = NodeAddrs::from_ips([ip("192.168.1.2")]);
    let d = idx.decide_between_pods(
        &key("prod/web"),
        &key("dev/agent"),
        80,
        Protocol::Tcp,
        &agents_node,
    );
    assert!(!d.allowed, "another node is no own node: {d}");
    // Its own node stays reachable; a source without egress policy too.
    assert!(allowed(&idx, "prod/web", "dev/local-agent", 80));
    assert!(allowed(&idx, "prod/db", "dev/agent", 80));
}
