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
fn a_service_keeps_its_cluster_ips_and_ports_and_headless_ones_have_none() {
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
    assert_eq!(s.cluster_ips, vec![ip("10.96.0.10"), ip("fd00:96::10")]);
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
        assert!(s.cluster_ips.is_empty(), "{spec}");
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
