//! Outbound decisions: a pod's egress side toward the address it dials, as
//! its own sidecar decides them at the source.

use super::*;

fn to_ip(index: &PolicyIndex, from: &str, to: &str, port: u16) -> Decision {
    index.decide_to_ip(&key(from), ip(to), port, Protocol::Tcp, &node())
}

/// prod/web may reach prod/db on `postgres` and 203.0.113.0/24 but .9, on 443.
const WEB_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: postgres}]
  - to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.9/32]}}]
    ports: [{port: 443}]
"#;

#[test]
fn a_pod_no_egress_policy_selects_may_dial_anything() {
    let idx = with("");
    let d = to_ip(&idx, "prod/web", "198.51.100.7", 443);
    assert!(d.allowed);
    assert_eq!(
        d.reason,
        Reason::Egress {
            ingress: None,
            egress: Side::NotIsolated,
            destination: None
        }
    );
}

#[test]
fn default_deny_egress_denies_addresses_outside_and_pods_alike() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-out, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
    );
    let out = to_ip(&idx, "prod/web", "198.51.100.7", 443);
    assert!(!out.allowed);
    assert_eq!(out.reason_label(), "egress-denied");
    let pod = to_ip(&idx, "prod/web", "10.0.1.1", 80);
    assert!(!pod.allowed);
    assert_eq!(
        pod.reason,
        Reason::Egress {
            ingress: None,
            egress: Side::Denied { policies: 1 },
            destination: Some(key("dev/web"))
        }
    );
    // dev is not selected: its pods dial freely.
    assert!(to_ip(&idx, "dev/web", "198.51.100.7", 443).allowed);
}

#[test]
fn an_ip_block_opens_exactly_its_addresses_and_ports() {
    let idx = with(WEB_EGRESS);
    assert!(to_ip(&idx, "prod/web", "203.0.113.10", 443).allowed);
    assert!(
        !to_ip(&idx, "prod/web", "203.0.113.9", 443).allowed,
        "except"
    );
    assert!(!to_ip(&idx, "prod/web", "203.0.114.10", 443).allowed);
    assert!(!to_ip(&idx, "prod/web", "203.0.113.10", 80).allowed);
    let d = to_ip(&idx, "prod/web", "203.0.113.10", 443);
    assert_eq!(d.egress_policy(), Some(&key("prod/web-out")));
}

#[test]
fn pod_peers_match_the_destination_pods_labels_and_named_ports_its_ports() {
    let idx = with(WEB_EGRESS);
    assert!(to_ip(&idx, "prod/web", "10.0.0.2", 5432).allowed);
    assert!(
        to_ip(&idx, "prod/web", "fd00::2", 5432).allowed,
        "any of its IPs"
    );
    assert!(
        !to_ip(&idx, "prod/web", "10.0.0.2", 5433).allowed,
        "not named"
    );
    assert!(
        !to_ip(&idx, "prod/web", "10.0.1.1", 5432).allowed,
        "app=web"
    );
}

#[test]
fn a_named_port_never_resolves_on_an_address_that_is_no_pod() {
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
    assert!(to_ip(&idx, "prod/web", "10.0.0.2", 5432).allowed);
    assert!(!to_ip(&idx, "prod/web", "198.51.100.7", 5432).allowed);
}

#[test]
fn end_ports_bound_egress_ranges() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 8000, endPort: 8080}]}]
"#,
    );
    assert!(to_ip(&idx, "prod/web", "198.51.100.7", 8000).allowed);
    assert!(to_ip(&idx, "prod/web", "198.51.100.7", 8080).allowed);
    assert!(!to_ip(&idx, "prod/web", "198.51.100.7", 8081).allowed);
}

#[test]
fn the_node_and_the_pod_itself_are_always_reachable() {
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-out, namespace: prod}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
    );
    assert_eq!(
        to_ip(&idx, "prod/web", "192.168.1.1", 10250).reason,
        Reason::Node
    );
    assert_eq!(
        to_ip(&idx, "prod/db", "fd00::2", 5432).reason,
        Reason::SamePod
    );
    let other_node = idx.decide_to_ip(
        &key("prod/web"),
        ip("192.168.1.1"),
        22,
        Protocol::Tcp,
        &NodeAddrs::default(),
    );
    assert_eq!(other_node.reason, Reason::Node, "its own hostIP");
}

#[test]
fn an_unknown_source_is_denied() {
    let idx = with("");
    let d = to_ip(&idx, "prod/gone", "198.51.100.7", 443);
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::UnknownSource);
}

#[test]
fn an_address_two_pods_hold_must_be_allowed_toward_both() {
    let stale = r#"
apiVersion: v1
kind: Pod
metadata: {name: stale, namespace: dev, labels: {app: web}}
status: {podIP: 10.0.0.2, hostIP: 192.168.1.1}
"#;
    let idx = index(&format!("{BASE}\n---\n{stale}\n---\n{WEB_EGRESS}"));
    assert_eq!(idx.pods_with_ip(ip("10.0.0.2")).len(), 2);
    let d = to_ip(&idx, "prod/web", "10.0.0.2", 5432);
    assert!(!d.allowed, "dev/stale holds it too, and is no db");
    assert_eq!(
        d.reason,
        Reason::Egress {
            ingress: None,
            egress: Side::Denied { policies: 1 },
            destination: Some(key("dev/stale"))
        }
    );
}

#[test]
fn the_egress_side_at_the_source_is_the_one_the_receiver_checks() {
    // Every pod to every pod and port, both policies: what the source's
    // sidecar decides equals the egress side the receiver's decision has
    // when every rule is tried.
    let idx = with(&format!(
        "{WEB_EGRESS}\n---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dev-out, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {env: prod}}}], ports: [{port: 80}]}]
"#
    ));
    let pods = ["prod/web", "prod/db", "dev/web"];
    for src in pods {
        for dst in pods {
            if src == dst {
                continue;
            }
            for port in [80, 443, 5432] {
                let dst_ip = idx.pod(&key(dst)).unwrap().ips[0];
                let at_source = to_ip(&idx, src, &dst_ip.to_string(), port);
                let explained =
                    idx.explain_between_pods(&key(src), &key(dst), port, Protocol::Tcp, &node());
                let Reason::Policies {
                    ingress: Side::NotIsolated,
                    egress,
                } = &explained.decision.reason
                else {
                    panic!("{src} -> {dst}: {:?}", explained.decision.reason);
                };
                assert_eq!(
                    at_source.allowed,
                    egress.allows(),
                    "{src} -> {dst}:{port}: {at_source} / {}",
                    explained.decision
                );
            }
        }
    }
}

#[test]
fn the_destinations_ingress_is_checked_at_the_source_sidecar_or_not() {
    // prod/db admits only app=api; no pod of BASE runs a sidecar.
    let idx = with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-in, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}]}]
"#,
    );
    let expected = Reason::Egress {
        egress: Side::NotIsolated,
        ingress: Some(Side::Denied { policies: 1 }),
        destination: Some(key("prod/db")),
    };
    let d = to_ip(&idx, "prod/web", "10.0.0.2", 5432);
    assert!(!d.allowed);
    assert_eq!(d.reason_label(), "ingress-denied");
    assert_eq!(d.reason, expected);
    // A container named like the sidecar changes nothing: anyone can name one so.
    let sidecar = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {containers: [{name: c, ports: [{containerPort: 5432, name: postgres}]}, {name: picket-proxy}]}
status: {podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}], hostIP: 192.168.1.1}
"#;
    let mut idx = idx;
    let pod = serde_yaml::from_str::<core::Pod>(sidecar).unwrap();
    idx.apply_pod(convert::pod(&pod).unwrap());
    assert_eq!(to_ip(&idx, "prod/web", "10.0.0.2", 5432).reason, expected);
    let api = r#"
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
status: {podIP: 10.0.0.3, hostIP: 192.168.1.1}
"#;
    let pod = serde_yaml::from_str::<core::Pod>(api).unwrap();
    idx.apply_pod(convert::pod(&pod).unwrap());
    assert!(
        to_ip(&idx, "prod/api", "10.0.0.2", 5432).allowed,
        "app=api is admitted"
    );
}
