//! Semantics tests: one or more per point of NetworkPolicy v1, each fed from
//! YAML the way a user would write it.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::convert;
use super::*;

/// Builds an index from multi-document YAML of Namespaces, Pods and NetworkPolicies.
fn index(yaml: &str) -> PolicyIndex {
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    let mut policies = Vec::new();
    let mut cluster = Vec::new();
    let mut nodes = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        match value["kind"].as_str().unwrap() {
            "Namespace" => {
                let ns: core::Namespace = serde_yaml::from_value(value).unwrap();
                namespaces.push(convert::namespace(&ns).unwrap());
            }
            "Pod" => {
                let pod: core::Pod = serde_yaml::from_value(value).unwrap();
                pods.push(convert::pod(&pod).unwrap());
            }
            "NetworkPolicy" => {
                let np: NetworkPolicy = serde_yaml::from_value(value).unwrap();
                policies.push(convert::policy(&np).unwrap().policy);
            }
            "ClusterNetworkPolicy" => {
                let cnp: convert::cluster::ClusterNetworkPolicy =
                    serde_yaml::from_value(value).unwrap();
                cluster.push(convert::cluster::cluster_policy(&cnp).unwrap().policy);
            }
            "Node" => {
                let n: core::Node = serde_yaml::from_value(value).unwrap();
                nodes.push(convert::cluster::node(&n).unwrap());
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    let mut index = PolicyIndex::build(namespaces, pods, policies);
    index.replace_cluster_policies(cluster);
    index.replace_nodes(nodes);
    index
}

/// The base cluster: namespaces `prod` (env=prod) and `dev` (env=dev); pods
/// prod/web (app=web), prod/db (app=db, port 5432 named "postgres"),
/// dev/web (app=web), all on node 192.168.1.1.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.0.1, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432, name: postgres}]}]}
status: {podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}], hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dev, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.1, hostIP: 192.168.1.1}
"#;

fn with(policies: &str) -> PolicyIndex {
    index(&format!("{BASE}\n---\n{policies}"))
}

fn key(s: &str) -> PodKey {
    ObjectKey::parse(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node() -> NodeAddrs {
    NodeAddrs::from_ips([ip("192.168.1.1")])
}

fn allowed(index: &PolicyIndex, from: &str, to: &str, port: u16) -> bool {
    index
        .decide_between_pods(&key(from), &key(to), port, Protocol::Tcp, &node())
        .allowed
}

fn allowed_from_ip(index: &PolicyIndex, from: &str, to: &str, port: u16) -> bool {
    let dst = index.pod(&key(to)).unwrap().ips[0];
    index
        .decide_from_ip(ip(from), &key(to), dst, port, Protocol::Tcp, &node())
        .allowed
}

const DENY_DB_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {matchLabels: {app: db}}}
"#;

#[test]
fn a_pod_no_policy_selects_is_not_isolated() {
    let idx = with(DENY_DB_INGRESS);
    assert!(allowed(&idx, "dev/web", "prod/web", 80));
    let d = idx.decide_between_pods(
        &key("dev/web"),
        &key("prod/web"),
        80,
        Protocol::Tcp,
        &node(),
    );
    assert_eq!(
        d.reason,
        Reason::Policies {
            ingress: Side::NotIsolated,
            egress: Side::NotIsolated
        }
    );
}

#[test]
fn a_policy_with_a_type_and_no_rules_denies_that_direction() {
    let idx = with(DENY_DB_INGRESS);
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
    // It does not isolate egress: db may still connect out.
    assert!(allowed(&idx, "prod/db", "prod/web", 80));
}

#[test]
fn empty_pod_selector_selects_all_pods_of_its_namespace_only() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec: {podSelector: {}}
"#,
    );
    assert!(!allowed(&idx, "dev/web", "prod/web", 80));
    assert!(!allowed(&idx, "dev/web", "prod/db", 5432));
    assert!(allowed(&idx, "prod/web", "dev/web", 80));
}

#[test]
fn match_expressions_select_pods() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
"#,
    );
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
    assert!(allowed(&idx, "prod/db", "prod/web", 80));
}

#[test]
fn policy_types_default_to_ingress_and_egress_when_egress_rules_exist() {
    // No policyTypes and egress rules: both directions isolated.
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
"#,
    );
    let web = &key("prod/web");
    assert_eq!(idx.selecting(web, Direction::Ingress).len(), 1);
    assert_eq!(idx.selecting(web, Direction::Egress).len(), 1);
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
    assert!(!allowed(&idx, "prod/web", "dev/web", 80), "egress isolated");
    assert!(
        !allowed(&idx, "prod/db", "prod/web", 80),
        "ingress isolated"
    );
}

#[test]
fn empty_policy_types_are_inferred_and_empty_egress_does_not_isolate_egress() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [], egress: []}
"#,
    );
    assert_eq!(idx.selecting(&key("prod/web"), Direction::Egress).len(), 0);
    assert_eq!(idx.selecting(&key("prod/web"), Direction::Ingress).len(), 1);
}

#[test]
fn egress_only_policy_leaves_ingress_open() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}
"#,
    );
    assert!(allowed(&idx, "dev/web", "prod/web", 80));
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
    let d = idx.decide_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert_eq!(d.reason_label(), "egress-denied");
}

#[test]
fn pod_selector_peer_is_limited_to_the_policy_namespace() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#,
    );
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
    assert!(
        !allowed(&idx, "dev/web", "prod/db", 5432),
        "same labels, other namespace"
    );
}

#[test]
fn namespace_selector_alone_allows_every_pod_of_matching_namespaces() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}]}]
"#,
    );
    assert!(allowed(&idx, "dev/web", "prod/db", 5432));
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
}

#[test]
fn pod_and_namespace_selector_in_one_peer_are_anded() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}
      podSelector: {matchLabels: {app: other}}
"#,
    );
    assert!(!allowed(&idx, "dev/web", "prod/db", 5432));
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}
      podSelector: {matchLabels: {app: web}}
"#,
    );
    assert!(allowed(&idx, "dev/web", "prod/db", 5432));
    assert!(
        !allowed(&idx, "prod/web", "prod/db", 5432),
        "right pod, wrong namespace"
    );
}

#[test]
fn several_peers_are_ored() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}
    - podSelector: {matchLabels: {app: web}}
"#,
    );
    assert!(allowed(&idx, "dev/web", "prod/db", 5432));
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
}

#[test]
fn ip_block_with_except_matches_pod_ips_and_plain_addresses() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
"#,
    );
    assert!(allowed(&idx, "prod/web", "prod/db", 5432), "pod IP in cidr");
    assert!(
        !allowed(&idx, "dev/web", "prod/db", 5432),
        "pod IP in except"
    );
    assert!(allowed_from_ip(&idx, "10.0.7.7", "prod/db", 5432));
    assert!(!allowed_from_ip(&idx, "10.0.1.200", "prod/db", 5432));
    assert!(!allowed_from_ip(&idx, "172.16.0.1", "prod/db", 5432));
}

#[test]
fn ip_block_matches_ipv6() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: "fd00:1::/64", except: ["fd00:1::/120"]}}]}]
"#,
    );
    let db = key("prod/db");
    let v6 = ip("fd00::2");
    let decide = |src: &str| {
        idx.decide_from_ip(ip(src), &db, v6, 5432, Protocol::Tcp, &node())
            .allowed
    };
    assert!(decide("fd00:1::1:1"));
    assert!(!decide("fd00:1::5"), "in except");
    assert!(!decide("fd00:2::1"));
}

#[test]
fn unknown_source_ip_matches_only_ip_blocks() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {}}]
"#,
    );
    // Every pod of every namespace is allowed, but an unknown IP is no pod.
    assert!(allowed_from_ip(&idx, "10.0.0.1", "prod/db", 5432));
    assert!(!allowed_from_ip(&idx, "10.9.9.9", "prod/db", 5432));
}

#[test]
fn absent_from_and_empty_from_allow_every_peer() {
    for rules in ["[{}]", "[{from: []}]", "[{ports: []}]"] {
        let idx = with(&format!(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress: {rules}
"#
        ));
        assert!(allowed(&idx, "dev/web", "prod/db", 5432), "{rules}");
        assert!(allowed_from_ip(&idx, "8.8.8.8", "prod/db", 1), "{rules}");
    }
}

#[test]
fn numeric_ports_and_protocols() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 5432}, {port: 53, protocol: UDP}]}]
"#,
    );
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
    assert!(!allowed(&idx, "prod/web", "prod/db", 5433));
    assert!(
        !allowed(&idx, "prod/web", "prod/db", 53),
        "53 is allowed for UDP only"
    );
    let udp = idx.decide_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        53,
        Protocol::Udp,
        &node(),
    );
    assert!(udp.allowed);
}

#[test]
fn end_port_ranges_are_inclusive() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{ports: [{port: 5000, endPort: 5432}]}]
"#,
    );
    assert!(allowed(&idx, "prod/web", "prod/db", 5000));
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
    assert!(!allowed(&idx, "prod/web", "prod/db", 4999));
    assert!(!allowed(&idx, "prod/web", "prod/db", 5433));
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress: [{ports: [{port: postgres}, {port: nope}]}]
"#,
    );
    assert!(allowed(&idx, "dev/web", "prod/db", 5432));
    assert!(!allowed(&idx, "dev/web", "prod/db", 5433));
    assert!(
        !allowed(&idx, "dev/web", "prod/web", 5432),
        "web names no port postgres"
    );
    assert!(
        !allowed(&idx, "dev/web", "prod/web", 80),
        "a name no container defines matches nothing"
    );
}

#[test]
fn named_port_matches_on_name_and_protocol() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress: [{ports: [{port: postgres, protocol: UDP}]}]
"#,
    );
    assert!(!allowed(&idx, "dev/web", "prod/db", 5432));
}

#[test]
fn egress_named_port_resolves_against_the_destination() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{ports: [{port: postgres}]}]
"#,
    );
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
    assert!(!allowed(&idx, "prod/web", "dev/web", 5432));
}

#[test]
fn both_sides_must_allow() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]
"#,
    );
    let d = idx.decide_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert!(!d.allowed, "egress allows, ingress does not: denied");
    assert_eq!(d.reason_label(), "ingress-denied");
    // The explanation still shows the egress side that allowed.
    let e = idx.explain_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    let egress = e.egress.expect("egress traced");
    assert_eq!(
        egress.policies[0].policy,
        ObjectKey::new("prod", "web-egress")
    );
    assert_eq!(egress.policies[0].rules[0].peer, Some(Some(0)));
    // And an egress deny alone denies too.
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: nobody}}}]}]
"#,
    );
    let d = idx.decide_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        Reason::Policies {
            ingress: Side::NotIsolated,
            egress: Side::Denied { policies: 1 }
        }
    );
}

#[test]
fn policies_only_add_allowances() {
    let one = with(DENY_DB_INGRESS);
    assert!(!allowed(&one, "prod/web", "prod/db", 5432));
    let two = with(&format!(
        "{DENY_DB_INGRESS}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#
    ));
    let d = two.decide_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert!(d.allowed);
    assert_eq!(
        d.ingress_policy(),
        Some(&ObjectKey::new("prod", "allow-web"))
    );
}

#[test]
fn node_traffic_is_always_allowed() {
    let idx = with(DENY_DB_INGRESS);
    let db = key("prod/db");
    let dst = ip("10.0.0.2");
    let mut node = NodeAddrs::from_ips([ip("192.168.1.1")]);
    node.push("10.0.0.0/32".parse().unwrap()); // a gateway, given as a CIDR
    for src in ["192.168.1.1", "10.0.0.0"] {
        let d = idx.decide_from_ip(ip(src), &db, dst, 5432, Protocol::Tcp, &node);
        assert!(d.allowed, "{src}");
        assert_eq!(d.reason, Reason::Node);
    }
    let other = idx.decide_from_ip(ip("192.168.1.2"), &db, dst, 5432, Protocol::Tcp, &node);
    assert!(!other.allowed, "another node is not this node");
}

#[test]
fn a_pod_can_always_reach_itself() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#,
    );
    assert!(allowed(&idx, "prod/db", "prod/db", 5432));
    assert!(allowed_from_ip(&idx, "10.0.0.2", "prod/db", 5432));
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
}

#[test]
fn host_network_pods_are_node_or_address_traffic() {
    let idx = index(&format!(
        "{BASE}\n---\n{}\n---\n{DENY_DB_INGRESS}",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: prod, labels: {app: web}}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.1.1, hostIP: 192.168.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: far-agent, namespace: prod, labels: {app: web}}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.1.9, hostIP: 192.168.1.9}
"#
    ));
    // Not a pod to the IP index.
    assert!(idx.pods_with_ip(ip("192.168.1.1")).is_empty());
    assert!(allowed(&idx, "prod/agent", "prod/db", 5432), "same node");
    assert!(
        !allowed(&idx, "prod/far-agent", "prod/db", 5432),
        "other node: an address, and labels do not count"
    );
}

#[test]
fn an_ip_claimed_by_two_pods_needs_every_claimant_allowed() {
    let stale = r#"
apiVersion: v1
kind: Pod
metadata: {name: stale, namespace: dev, labels: {app: web}}
status: {podIP: 10.0.0.1, hostIP: 192.168.1.1}
"#;
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;
    let idx = index(&format!("{BASE}\n---\n{stale}\n---\n{policy}"));
    assert_eq!(idx.pods_with_ip(ip("10.0.0.1")).len(), 2);
    // prod/web is allowed, dev/stale (same IP) is not: deny.
    let d = idx.decide_from_ip(
        ip("10.0.0.1"),
        &key("prod/db"),
        ip("10.0.0.2"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert!(!d.allowed);
    assert_eq!(d.source, Some(key("dev/stale")));
}

#[test]
fn finished_pods_claim_no_ip() {
    let idx = index(&format!(
        "{BASE}\n---\n{}",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: dev}
status: {phase: Succeeded, podIP: 10.0.0.1, hostIP: 192.168.1.1}
"#
    ));
    assert_eq!(idx.pods_with_ip(ip("10.0.0.1")), &[key("prod/web")]);
}

#[test]
fn a_broken_rule_still_isolates_and_allows_nothing() {
    let np: NetworkPolicy = serde_yaml::from_str(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
"#,
    )
    .unwrap();
    let compiled = convert::policy(&np).unwrap();
    assert_eq!(compiled.errors.len(), 1);
    assert_eq!(
        compiled.errors[0].field,
        "spec.ingress[0].from[0].ipBlock.cidr"
    );
    let mut idx = with("");
    idx.apply_policy(compiled.policy);
    assert!(
        !allowed_from_ip(&idx, "10.0.0.9", "prod/db", 5432),
        "broken rule allows nothing"
    );
    assert!(!allowed(&idx, "dev/web", "prod/db", 5432), "still isolated");
    assert!(
        allowed(&idx, "prod/web", "prod/db", 5432),
        "the good rule still allows"
    );
}

#[test]
fn invalid_pod_selector_fails_the_object() {
    let np: NetworkPolicy = serde_yaml::from_str(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Has}]}
"#,
    )
    .unwrap();
    let err = convert::policy(&np).unwrap_err();
    assert_eq!(err.field, "spec.podSelector.matchExpressions[0].operator");
}

#[test]
fn invalid_fields_are_named() {
    let cases = [
        (
            "ingress: [{ports: [{port: 0}]}]",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "ingress: [{ports: [{port: 80, endPort: 79}]}]",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]",
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        ("ingress: [{from: [{}]}]", "spec.ingress[0].from[0]"),
        (
            "ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        ),
    ];
    for (rules, field) in cases {
        let np: NetworkPolicy = serde_yaml::from_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  podSelector: {{}}\n  {rules}\n"
        ))
        .unwrap();
        let compiled = convert::policy(&np).unwrap();
        assert_eq!(compiled.errors.len(), 1, "{rules}");
        assert_eq!(compiled.errors[0].field, field, "{rules}");
    }
}

#[test]
fn explanations_name_the_policy_and_rule() {
    let idx = with(&format!(
        "{DENY_DB_INGRESS}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: nobody}}}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"#
    ));
    let e = idx.explain_between_pods(
        &key("prod/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert!(e.decision.allowed);
    // The text of explanations is the CLI's (cli/src/render.rs tests it).
    assert_eq!(
        e.decision.reason,
        Reason::Policies {
            ingress: Side::Allowed {
                policy: ObjectKey::new("prod", "allow-web"),
                rule: 1
            },
            egress: Side::NotIsolated
        }
    );
    let ingress = e.ingress.as_ref().expect("ingress traced");
    let names: Vec<String> = ingress
        .policies
        .iter()
        .map(|p| p.policy.to_string())
        .collect();
    assert_eq!(names, ["prod/allow-web", "prod/deny"]);
    let rules = &ingress.policies[0].rules;
    assert_eq!(
        (rules[0].peer, rules[1].peer, rules[1].port),
        (None, Some(Some(0)), Some(Some(0)))
    );
    let e = idx.explain_between_pods(
        &key("dev/web"),
        &key("prod/db"),
        5432,
        Protocol::Tcp,
        &node(),
    );
    assert!(!e.decision.allowed);
    assert_eq!(
        e.decision.to_string(),
        "ingress: isolated by 2 policies, no rule allows; egress: not evaluated"
    );
    let ingress = e.ingress.as_ref().expect("ingress traced");
    assert_eq!(ingress.policies[1].policy, ObjectKey::new("prod", "deny"));
    assert!(
        ingress.policies[1].rules.is_empty(),
        "no ingress rules: denies all"
    );
}

// === incremental index ===

#[test]
fn incremental_changes_equal_a_rebuild() {
    let mut idx = with("");
    let target = with(&format!(
        "{DENY_DB_INGRESS}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}
"#
    ));
    for policy in target.policies() {
        idx.apply_policy((**policy).clone());
    }
    assert_eq!(idx, target);

    // Relabel a pod out of a selector, then back.
    let mut web = (**idx.pod(&key("prod/web")).unwrap()).clone();
    web.labels.insert("app".into(), "api".into());
    idx.apply_pod(web.clone());
    assert!(idx
        .selecting(&key("prod/web"), Direction::Egress)
        .is_empty());
    let rebuilt = PolicyIndex::build(
        idx.namespaces().map(|n| (**n).clone()),
        idx.pods().map(|p| (**p).clone()),
        idx.policies().map(|p| (**p).clone()),
    );
    assert_eq!(idx, rebuilt);

    // Delete a policy and a pod.
    idx.delete_policy(&ObjectKey::new("prod", "deny"));
    idx.delete_pod(&key("dev/web"));
    let rebuilt = PolicyIndex::build(
        idx.namespaces().map(|n| (**n).clone()),
        idx.pods().map(|p| (**p).clone()),
        idx.policies().map(|p| (**p).clone()),
    );
    assert_eq!(idx, rebuilt);
    assert_eq!(idx.counts().policies, 1);
    assert!(idx.pods_with_ip(ip("10.0.1.1")).is_empty());
}

#[test]
fn replace_policies_drops_what_the_snapshot_lacks() {
    let mut idx = with(DENY_DB_INGRESS);
    assert!(!allowed(&idx, "prod/web", "prod/db", 5432));
    idx.replace_policies(Vec::new());
    assert!(allowed(&idx, "prod/web", "prod/db", 5432));
    assert_eq!(idx.counts().policies, 0);
}

#[test]
fn a_new_pod_ip_is_reindexed() {
    let mut idx = with("");
    let mut web = (**idx.pod(&key("prod/web")).unwrap()).clone();
    web.ips = vec![ip("10.0.0.99")];
    idx.apply_pod(web);
    assert!(idx.pods_with_ip(ip("10.0.0.1")).is_empty());
    assert_eq!(idx.pods_with_ip(ip("10.0.0.99")), &[key("prod/web")]);
}

#[test]
fn namespace_label_changes_apply_to_peers() {
    let mut idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}]}]
"#,
    );
    assert!(allowed(&idx, "dev/web", "prod/db", 5432));
    idx.apply_namespace(convert::namespace_with_labels("dev", Labels::new()));
    assert!(!allowed(&idx, "dev/web", "prod/db", 5432));
}

// === unknown namespaces ===

#[test]
fn a_pod_of_an_unknown_namespace_matches_only_the_empty_namespace_selector() {
    // ghost/web's Namespace object has not arrived: its labels are unknown.
    let ghost = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: ghost, labels: {app: web}}
status: {podIP: 10.0.2.1, hostIP: 192.168.1.1}
"#;
    let not_in_dev = with(&format!(
        "{ghost}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: not-dev, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: env, operator: NotIn, values: [dev]}]
  - from:
    - namespaceSelector:
        matchExpressions: [{key: env, operator: DoesNotExist}]
"#
    ));
    assert!(allowed(&not_in_dev, "prod/web", "prod/db", 5432));
    assert!(!allowed(&not_in_dev, "dev/web", "prod/db", 5432));
    assert!(
        !allowed(&not_in_dev, "ghost/web", "prod/db", 5432),
        "NotIn/DoesNotExist must not match a namespace whose labels are not known yet"
    );
    let any_namespace = with(&format!(
        "{ghost}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: any-ns, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {}}]}]
"#
    ));
    assert!(allowed(&any_namespace, "ghost/web", "prod/db", 5432));
}

// === IP reuse ===

const ALLOW_WEB_TO_DB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

fn from_ip(index: &PolicyIndex, src: &str) -> Decision {
    index.decide_from_ip(
        ip(src),
        &key("prod/db"),
        ip("10.0.0.2"),
        5432,
        Protocol::Tcp,
        &node(),
    )
}

#[test]
fn a_pod_whose_containers_all_terminated_holds_no_ip() {
    // prod/old (app=web) has finished its containers; IPAM may give 10.0.3.3
    // to a new pod whose event has not arrived: it must not be judged as web.
    let idx = with(&format!(
        "{ALLOW_WEB_TO_DB}\n---\n{}",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: prod, labels: {app: web}, deletionTimestamp: "2026-12-01T10:00:00Z"}
status:
  podIP: 10.0.3.3
  containerStatuses:
  - {name: c, image: x, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 0}}}
"#
    ));
    assert!(idx.pods_with_ip(ip("10.0.3.3")).is_empty());
    // A native sidecar (or an ephemeral container) still running keeps the
    // pod's network namespace, and so its IP.
    let with_sidecar = with(&format!(
        "{ALLOW_WEB_TO_DB}\n---\n{}",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: prod, labels: {app: web}}
status:
  podIP: 10.0.3.3
  containerStatuses:
  - {name: c, image: x, imageID: "", ready: false, restartCount: 0, state: {terminated: {exitCode: 0}}}
  initContainerStatuses:
  - {name: proxy, image: x, imageID: "", ready: true, restartCount: 0, state: {running: {}}}
"#
    ));
    assert_eq!(with_sidecar.pods_with_ip(ip("10.0.3.3")), [key("prod/old")]);
    let d = from_ip(&idx, "10.0.3.3");
    assert!(
        !d.allowed,
        "an IP no live pod holds matches only ipBlock peers: {d}"
    );
    assert_eq!(d.source, None);
}

#[test]
fn a_pod_being_deleted_yields_its_ip_to_a_newer_pod() {
    // prod/old (app=stranger) is terminating; prod/new (app=web), created
    // later, got its IP: connections from it are prod/new's.
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: prod, labels: {app: stranger}, creationTimestamp: "2026-12-01T09:00:00Z", deletionTimestamp: "2026-12-01T10:00:00Z"}
status: {podIP: 10.0.3.3}
---
apiVersion: v1
kind: Pod
metadata: {name: new, namespace: prod, labels: {app: web}, creationTimestamp: "2026-12-01T10:00:01Z"}
status: {podIP: 10.0.3.3}
"#;
    let idx = with(&format!("{ALLOW_WEB_TO_DB}\n---\n{pods}"));
    assert_eq!(idx.pods_with_ip(ip("10.0.3.3")), [key("prod/new")]);
    let d = from_ip(&idx, "10.0.3.3");
    assert!(d.allowed, "{d}");
    assert_eq!(d.source, Some(key("prod/new")));
    // Two live pods reporting one IP still both hold it (allowed only if both are).
    let idx = with(&format!(
        "{ALLOW_WEB_TO_DB}\n---\n{}",
        pods.replace(", deletionTimestamp: \"2026-12-01T10:00:00Z\"", "")
    ));
    assert_eq!(idx.pods_with_ip(ip("10.0.3.3")).len(), 2);
    assert!(!from_ip(&idx, "10.0.3.3").allowed);
}

#[test]
fn a_policy_that_cannot_be_read_from_the_api_denies_its_whole_namespace() {
    let np: NetworkPolicy = serde_yaml::from_str(
        "metadata: {name: future, namespace: prod}\nspec: {podSelector: {}, policyTypes: [Ingress, Sideways]}\n",
    )
    .unwrap();
    assert!(convert::policy(&np).is_err(), "not compilable");
    let compiled = convert::policy_failing_closed(&np).unwrap();
    assert_eq!(compiled.errors.len(), 1);
    let idx = with("");
    let mut idx = idx;
    idx.apply_policy(compiled.policy);
    assert!(
        !allowed(&idx, "prod/web", "prod/db", 5432),
        "ingress denied"
    );
    assert!(!allowed(&idx, "dev/web", "prod/web", 80));
    assert!(allowed(&idx, "dev/web", "dev/web", 80), "a pod to itself");
    let unnamed: NetworkPolicy = serde_yaml::from_str("spec: {podSelector: {}}").unwrap();
    assert!(
        convert::policy_failing_closed(&unnamed).is_err(),
        "nowhere to place it"
    );
}

// === compiled egress sides (control-mode views) ===

const EGRESS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {containers: [{name: db, ports: [{containerPort: 5432, name: postgres}]}]}
status: {podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {containers: [{name: web}]}
status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: free, namespace: prod, labels: {app: free}}
spec: {containers: [{name: free}]}
status: {podIP: 10.0.0.3, podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: postgres}]
  - to: [{ipBlock: {cidr: 10.0.0.0/30}}]
    ports: [{port: 9090}]
  - to: [{podSelector: {matchLabels: {app: cache}}}]
  - ports: [{port: 53}]
"#;

#[test]
fn an_egress_side_compiled_toward_one_pod_keeps_only_the_rules_that_may_match_it() {
    let index = index(EGRESS);
    let web = ObjectKey::new("prod", "web");
    let db = index.pod(&ObjectKey::new("prod", "db")).unwrap();
    let compiled = index.egress_toward(&web, db).unwrap();
    assert_eq!(compiled.policies, 1);
    // The pod peer that names db matches whatever address is dialled; the
    // ipBlock is kept for the address; the rule for caches cannot match db.
    let rules: Vec<(usize, bool)> = compiled
        .rules
        .iter()
        .map(|r| (r.index, r.rule.peers.is_none()))
        .collect();
    assert_eq!(rules, vec![(0, true), (1, false), (3, true)]);
    // Not isolated for egress: nothing to compile.
    assert!(index
        .egress_toward(&ObjectKey::new("prod", "free"), db)
        .is_none());
}

#[test]
fn a_view_with_compiled_egress_sides_decides_like_the_whole_cluster() {
    let full = index(EGRESS);
    let (web, db) = (ObjectKey::new("prod", "web"), ObjectKey::new("prod", "db"));
    let db_pod = full.pod(&db).unwrap().clone();
    // db's view: db itself, and web's egress side by address only.
    let mut view = PolicyIndex::new();
    view.apply_pod((*db_pod).clone());
    let side = full.egress_toward(&web, &db_pod).map(std::sync::Arc::new);
    view.egress_toward_me_mut()
        .set_address("10.0.0.1".parse().unwrap(), side.into_iter().collect());
    let node = NodeAddrs::default();
    for dst_ip in ["10.0.0.2", "10.9.9.9"] {
        let dst_ip: IpAddr = dst_ip.parse().unwrap();
        for port in [53, 80, 5432, 9090] {
            for src in ["10.0.0.1", "10.0.0.3", "10.7.7.7"] {
                let src: IpAddr = src.parse().unwrap();
                let want = full.decide_from_ip(src, &db, dst_ip, port, Protocol::Tcp, &node);
                let got = view.decide_from_ip(src, &db, dst_ip, port, Protocol::Tcp, &node);
                assert_eq!(
                    got.allowed, want.allowed,
                    "{src} -> {dst_ip}:{port}: {got:?} / {want:?}"
                );
            }
        }
    }
    // web to db on postgres, by the first rule; on 80 by nothing.
    let on = |port| {
        view.decide_from_ip(
            "10.0.0.1".parse().unwrap(),
            &db,
            "10.0.0.2".parse().unwrap(),
            port,
            Protocol::Tcp,
            &node,
        )
    };
    assert!(matches!(
        on(5432).reason,
        Reason::Policies {
            egress: Side::Allowed { rule: 0, .. },
            ..
        }
    ));
    assert!(matches!(
        on(80).reason,
        Reason::Policies {
            egress: Side::Denied { policies: 1 },
            ..
        }
    ));
}

#[test]
fn keys_hash_once_and_compare_by_their_names() {
    use std::hash::BuildHasher;
    let hash = |k: &PodKey| rustc_hash::FxBuildHasher.hash_one(k);
    let (a, b) = (ObjectKey::new("shop", "web"), ObjectKey::new("shop", "web"));
    assert!(!std::sync::Arc::ptr_eq(&a.name, &b.name), "two allocations");
    assert_eq!(a, b);
    assert_eq!(hash(&a), hash(&b));
    // The same letters split differently are another key.
    let (c, d) = (ObjectKey::new("ab", "c"), ObjectKey::new("a", "bc"));
    assert_ne!(c, d);
    assert_ne!(hash(&c), hash(&d));
    assert!(
        ObjectKey::new("a", "z") < ObjectKey::new("b", "a"),
        "by namespace, then name"
    );
    assert!(ObjectKey::new("a", "b") < ObjectKey::new("a", "c"));
    assert_eq!(
        format!("{a:?}"),
        r#"ObjectKey { namespace: "shop", name: "web" }"#
    );
}

mod audit;
mod cluster;
mod outbound;
mod services;
