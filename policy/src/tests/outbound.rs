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

/// Every prod pod lets in web on `postgres`, and 10.0.1.0/24 on any port.
const PROD_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: prod-in, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: postgres}]
  - from: [{ipBlock: {cidr: 10.0.1.0/24}}]
"#;

#[test]
fn a_destinations_ingress_side_compiles_with_its_named_ports_resolved_on_it() {
    let idx = with(PROD_INGRESS);
    let (db, web) = (
        idx.pod(&key("prod/db")).unwrap(),
        idx.pod(&key("prod/web")).unwrap(),
    );
    let side = idx.ingress_toward(db, web).unwrap();
    assert_eq!(side.policies, 1);
    // web matches the pod peer: no peers left; postgres is db's 5432.
    assert_eq!(side.rules[0].rule.peers, None);
    assert_eq!(
        side.rules[0].rule.ports,
        Some(vec![PortMatch {
            protocol: Protocol::Tcp,
            port: PortSpec::Range(5432, 5432)
        }])
    );
    // The ipBlock rule is kept for web's address.
    assert!(matches!(
        side.rules[1].rule.peers.as_deref(),
        Some([Peer::IpBlock(_)])
    ));
    // web itself declares no port postgres: toward web (from a web pod),
    // that rule matches no port.
    let toward_web = idx.ingress_toward(web, web).unwrap();
    assert_eq!(toward_web.rules[0].rule.ports, Some(vec![]));
    // dev/web is no pod peer of the policy (another namespace): only the
    // ipBlock rule remains.
    let dev_web = idx.pod(&key("dev/web")).unwrap();
    let from_dev = idx.ingress_toward(db, dev_web).unwrap();
    assert_eq!(from_dev.rules.len(), 1);
    assert_eq!(from_dev.rules[0].index, 1);
}

#[test]
fn a_view_decides_a_destination_it_does_not_hold_by_its_compiled_ingress_side() {
    let cluster = with(PROD_INGRESS);
    let (db, web) = (
        cluster.pod(&key("prod/db")).unwrap(),
        cluster.pod(&key("prod/web")).unwrap(),
    );
    // web's view: web, its namespace, and db's ingress side by address.
    let mut view = PolicyIndex::new();
    view.apply_namespace((**cluster.namespace("prod").unwrap()).clone());
    view.apply_pod((**web).clone());
    let bare = view.clone();
    let side = std::sync::Arc::new(cluster.ingress_toward(db, web).unwrap());
    view.ingress_toward_me_mut()
        .set_address(ip("10.0.0.2"), std::sync::Arc::from([side]));
    for port in [5432, 80] {
        let want = to_ip(&cluster, "prod/web", "10.0.0.2", port);
        let got = to_ip(&view, "prod/web", "10.0.0.2", port);
        assert_eq!(got.allowed, want.allowed, "port {port}");
        assert_eq!(got.allowed, port == 5432, "port {port}");
    }
    // Without outbound parts the view knows no ingress side at all: why a
    // capturing sidecar refuses a view without them.
    assert!(to_ip(&bare, "prod/web", "10.0.0.2", 80).allowed);
}
