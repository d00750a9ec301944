//! The enforcer without sockets: a state writer, addresses, registrations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use picket_policy::convert::namespace_with_labels;
use picket_policy::{Labels, NodeAddrs, PodKey};
use picket_state::files::parse_manifest;
use picket_state::{Kind, Object, StateWriter};

use super::registry::Registry;
use super::{Enforcer, Refusal, Waits};
use crate::admin::Readiness;
use crate::metrics::ProxyMetrics;
use crate::net::{ClientAddr, OrigDstAddr};

const API: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
status: {podIP: 10.0.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
"#;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.5.5}
"#;

fn objects(yaml: &str) -> Vec<Object> {
    let parsed = parse_manifest(std::path::Path::new("t.yaml"), yaml).unwrap();
    Kind::ALL
        .into_iter()
        .flat_map(|kind| parsed.objects(kind))
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An enforcer for shop/api over a writer holding `API`, committed.
fn enforcer(unknown_ip: Duration) -> (Arc<Enforcer>, StateWriter) {
    let (mut writer, snapshots) = StateWriter::new();
    let all = objects(API);
    for kind in Kind::ALL {
        writer.replace_all(
            kind,
            all.iter().filter(|o| o.kind() == kind).cloned().collect(),
        );
    }
    assert!(writer.commit_if_complete());
    let enforcer = Arc::new(Enforcer {
        pod: PodKey::new("shop", "api"),
        node: NodeAddrs::default(),
        registry: Registry::new(),
        snapshots,
        resolver: None,
        waits: Waits {
            state: Duration::from_secs(1),
            unknown_ip,
        },
        pod_ips: vec![],
        pod_cidrs: vec![],
        metrics: Arc::new(ProxyMetrics::new(10)),
    });
    (enforcer, writer)
}

/// Unrelated state changes, one every 10 ms: each commit re-checks every
/// live connection.
async fn churn(writer: &mut StateWriter, rounds: std::ops::Range<u32>) {
    for round in rounds {
        let mut labels = Labels::new();
        labels.insert("round".into(), round.to_string());
        writer.apply(Object::Namespace(namespace_with_labels(
            "elsewhere",
            labels,
        )));
        writer.commit();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_new_pods_first_connection_survives_unrelated_churn() {
    let (enforcer, mut writer) = enforcer(Duration::from_secs(5));
    tokio::spawn(enforcer.clone().recheck_on_change(Readiness::new()));
    let client = ClientAddr(addr("10.0.5.5:40000"));
    let dst = OrigDstAddr(addr("10.0.0.1:8080"));
    let admission = tokio::spawn({
        let enforcer = enforcer.clone();
        async move { enforcer.admit(client, dst).await }
    });
    // Unrelated changes every 10 ms while the connection waits for its pod:
    // each re-check sees it registered and (the pod unknown) denied.
    churn(&mut writer, 0..10).await;
    for object in objects(WEB) {
        writer.apply(object);
    }
    writer.commit();
    let registration = admission
        .await
        .unwrap()
        .expect("the new pod's connection is allowed once its Pod arrives");
    // More unrelated churn: the connection is allowed by every newer state.
    churn(&mut writer, 10..15).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), registration.killed())
            .await
            .is_err(),
        "a teardown decided on an older state must not reset a connection allowed by a newer one"
    );
}

#[tokio::test]
async fn a_connection_to_an_address_not_the_pods_own_is_refused() {
    let (enforcer, _writer) = enforcer(Duration::ZERO);
    let web = ClientAddr(addr("10.0.0.9:40000"));
    // Loopback, another pod's address: never dialled, whatever the policies say.
    for foreign in ["127.0.0.1:6060", "10.0.0.7:8080", "[::1]:6060"] {
        let refused = enforcer.admit(web, OrigDstAddr(addr(foreign))).await;
        assert_eq!(
            refused.err(),
            Some(Refusal::ForeignDestination),
            "{foreign}"
        );
    }
    let text = enforcer.metrics.encode(true);
    assert!(
        text.contains("picket_inbound_refused_total{reason=\"foreign-destination\"} 3"),
        "{text}"
    );
}

#[test]
fn ports_format_without_allocating() {
    let mut buf = [0u8; 5];
    assert_eq!(super::format_port(0, &mut buf), "0");
    assert_eq!(super::format_port(80, &mut buf), "80");
    assert_eq!(super::format_port(65535, &mut buf), "65535");
}

#[tokio::test]
async fn an_address_the_view_holds_by_entry_is_decided_without_the_unknown_ip_wait() {
    // In control mode a pod the view does not hold, but whose own egress
    // decides, arrives as an address entry: it is a known pod, so its
    // connection is decided at once, not held for the unknown-IP wait.
    let (enforcer, mut writer) = enforcer(Duration::from_secs(3600));
    writer.set_address_egress(
        "10.0.7.7".parse().unwrap(),
        std::sync::Arc::from([std::sync::Arc::new(picket_policy::EgressToward {
            policies: 1,
            rules: Vec::new(),
        })]),
    );
    writer.commit();
    let client = ClientAddr(addr("10.0.7.7:40000"));
    let dst = OrigDstAddr(addr("10.0.0.1:8080"));
    // A deadline far below the wait: a connection held for the wait fails it.
    let decided = tokio::time::timeout(Duration::from_secs(60), enforcer.admit(client, dst))
        .await
        .expect("decided without waiting out the unknown-IP wait");
    assert_eq!(decided.err(), Some(Refusal::Denied));
    let text = enforcer.metrics.encode(true);
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("picket_unknown_ip_waits_total{") && !l.ends_with(" 0")),
        "{text}"
    );
}
