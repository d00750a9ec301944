//! Services and EndpointSlices from YAML, as the API serves them.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use super::*;

fn service(yaml: &str) -> Result<Service, convert::InvalidField> {
    convert::service(&serde_yaml::from_str::<core::Service>(yaml).unwrap())
}

fn slice(yaml: &str) -> EndpointSlice {
    convert::endpoint_slice(&serde_yaml::from_str::<discovery::EndpointSlice>(yaml).unwrap())
        .unwrap()
}

#[test]
fn a_service_keeps_its_addresses_and_ports_and_headless_ones_have_none() {
    let s = service(
        r#"
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ports: [{name: sql, port: 5432, targetPort: postgres}, {port: 53, protocol: UDP}]
"#,
    )
    .unwrap();
    assert_eq!(s.addresses, vec![ip("10.96.0.10"), ip("fd00:96::10")]);
    // Load balancers and external IPs lead to the endpoints too: an ipBlock
    // for "the internet" must not reach the pods behind them.
    let lb = service(
        r#"
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.96.0.11, externalIPs: [192.0.2.7], ports: [{port: 443}]}
status: {loadBalancer: {ingress: [{ip: 203.0.113.50}, {hostname: lb.example.com}]}}
"#,
    )
    .unwrap();
    assert_eq!(
        lb.addresses,
        vec![ip("10.96.0.11"), ip("192.0.2.7"), ip("203.0.113.50")]
    );
    assert_eq!(s.ports[0].name.as_deref(), Some("sql"));
    assert_eq!(
        (s.ports[0].port, s.ports[0].protocol),
        (5432, Protocol::Tcp)
    );
    assert_eq!(s.ports[1].protocol, Protocol::Udp);
    for spec in [
        "{clusterIP: None, ports: [{port: 80}]}",
        "{type: ExternalName, externalName: db.example.com}",
    ] {
        let s = service(&format!(
            "metadata: {{name: h, namespace: shop}}\nspec: {spec}"
        ))
        .unwrap();
        assert!(s.addresses.is_empty(), "{spec}");
    }
    let bad = service("metadata: {name: b, namespace: shop}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 70000}]}")
        .unwrap_err();
    assert_eq!(bad.field, "spec.ports[0].port");
}

#[test]
fn a_slice_names_its_service_pods_and_readiness() {
    let s = slice(
        r#"
metadata: {name: db-x1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints:
- {addresses: [10.0.0.2], targetRef: {kind: Pod, name: db-0, namespace: shop}}
- {addresses: [10.0.0.3], conditions: {ready: false}}
"#,
    );
    assert_eq!(s.service, Some(key("shop/db")));
    assert_eq!(s.ports[0].port, 15432);
    assert_eq!(s.endpoints[0].pod, Some(key("shop/db-0")));
    assert!(s.endpoints[0].ready, "unset means ready");
    assert!(!s.endpoints[1].ready);
    let fqdn = slice(
        r#"
metadata: {name: ext, namespace: shop}
addressType: FQDN
endpoints: [{addresses: [db.example.com]}]
"#,
    );
    assert_eq!(fqdn.service, None);
    assert!(fqdn.endpoints[0].addresses.is_empty());
}

/// shop/db has three endpoints: prod/db (app=db, 10.0.0.2), and two more
/// pods, one labelled app=db, one app=cache.
fn db_service() -> ServiceIndex {
    let mut services = ServiceIndex::new();
    services.apply_service(
        service(
            r#"
metadata: {name: db, namespace: prod}
spec: {clusterIP: 10.96.0.10, ports: [{name: sql, port: 5432}]}
"#,
        )
        .unwrap(),
    );
    services.apply_slice(slice(
        r#"
metadata: {name: db-1, namespace: prod, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 5432}]
endpoints: [{addresses: [10.0.0.2]}, {addresses: [10.0.0.7]}, {addresses: [10.0.0.8]}]
"#,
    ));
    services
}

const MORE_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db-2, namespace: prod, labels: {app: db}}
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: prod, labels: {app: cache}}
status: {podIP: 10.0.0.8}
"#;

fn route(idx: &PolicyIndex, to: &str) -> Route {
    idx.route(
        &db_service(),
        &key("prod/web"),
        to.parse().unwrap(),
        Protocol::Tcp,
        &node(),
    )
}

#[test]
fn a_cluster_ip_routes_to_the_endpoints_the_egress_side_allows() {
    let to_db = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
"#;
    let idx = index(&format!("{BASE}\n---\n{MORE_PODS}\n---\n{to_db}"));
    let r = route(&idx, "10.96.0.10:5432");
    assert_eq!(r.service, Some(key("prod/db")));
    assert_eq!(r.candidates, 3);
    let allowed: Vec<String> = r.allowed.iter().map(|(a, _)| a.to_string()).collect();
    assert_eq!(allowed, ["10.0.0.2:5432", "10.0.0.7:5432"], "not the cache");
    assert_eq!(
        r.denied.clone().unwrap().reason,
        Reason::Egress {
            ingress: None,
            egress: Side::Denied { policies: 1 },
            destination: Some(key("prod/cache"))
        }
    );
    // Round robin over the allowed ones.
    assert_eq!(r.pick(0).unwrap().0, r.allowed[0].0);
    assert_eq!(r.pick(3).unwrap().0, r.allowed[1].0);
    // The less loaded of the next two: ties go to the round robin's.
    let loaded = r.allowed[0].0;
    let load = |a: std::net::SocketAddr| usize::from(a == loaded) * 5;
    assert_eq!(r.pick_less_loaded(0, load).unwrap().0, r.allowed[1].0);
    assert_eq!(r.pick_less_loaded(1, load).unwrap().0, r.allowed[1].0);
    assert_eq!(r.pick_less_loaded(1, |_| 0).unwrap().0, r.allowed[1].0);
    assert_eq!(r.pick_less_loaded(2, |_| 0).unwrap().0, r.allowed[0].0);
    // The ClusterIP itself is no pod: dialled directly, it is an address.
    let direct = route(&idx, "10.0.0.9:5432");
    assert_eq!((direct.service, direct.allowed.len()), (None, 0));
}

#[test]
fn a_service_port_it_does_not_serve_or_a_deny_all_routes_nowhere() {
    let idx = index(&format!("{BASE}\n---\n{MORE_PODS}"));
    let r = route(&idx, "10.96.0.10:5432");
    assert_eq!(r.allowed.len(), 3, "not isolated: every endpoint");
    let none = route(&idx, "10.96.0.10:80");
    assert_eq!(
        (none.candidates, none.allowed.len(), none.denied.clone()),
        (0, 0, None)
    );
    assert!(none.pick(0).is_none());
    let deny = index(&format!(
        "{BASE}\n---\n{MORE_PODS}\n---\n{}",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: prod}\nspec: {podSelector: {}, policyTypes: [Egress]}\n"
    ));
    let r = route(&deny, "10.96.0.10:5432");
    assert!(r.allowed.is_empty() && r.denied.is_some());
}
