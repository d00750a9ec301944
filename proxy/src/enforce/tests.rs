//! The enforcer without sockets: a state writer, addresses, registrations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use picket_policy::convert::namespace_with_labels;
use picket_policy::{Direction, Labels, NodeAddrs, PodKey};
use picket_state::files::parse_manifest;
use picket_state::{Kind, Object, StateWriter};

use super::mesh::Transport;
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
pub(crate) fn enforcer(unknown_ip: Duration) -> (Arc<Enforcer>, StateWriter) {
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
        own_node: NodeAddrs::default(),
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
        next_endpoint: Default::default(),
        outbound: true,
        tap: crate::tap::Tap::new(),
        mtls: picket_policy::MtlsMode::Off,
        answers: Default::default(),
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
        async move {
            enforcer
                .admit(Direction::Ingress, client, dst, Transport::Plaintext)
                .await
        }
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
        tokio::time::timeout(
            Duration::from_millis(200),
            registration.registration.killed()
        )
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
        let refused = enforcer
            .admit(
                Direction::Ingress,
                web,
                OrigDstAddr(addr(foreign)),
                Transport::Plaintext,
            )
            .await;
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

/// An address entry: one pod, isolated by one policy that allows nothing.
fn isolated_allowing_nothing() -> std::sync::Arc<[std::sync::Arc<picket_policy::CompiledSide>]> {
    std::sync::Arc::from([std::sync::Arc::new(picket_policy::CompiledSide {
        policies: 1,
        rules: Vec::new(),
        audited: 0,
        audited_rules: Vec::new(),
    })])
}

#[tokio::test]
async fn an_address_the_view_holds_by_entry_is_decided_without_the_unknown_ip_wait() {
    // In control mode a pod the view does not hold, but whose own egress
    // decides, arrives as an address entry: it is a known pod, so its
    // connection is decided at once, not held for the unknown-IP wait.
    let (enforcer, mut writer) = enforcer(Duration::from_secs(3600));
    writer.set_address_side(
        picket_policy::Direction::Egress,
        "10.0.7.7".parse().unwrap(),
        isolated_allowing_nothing(),
    );
    writer.commit();
    let client = ClientAddr(addr("10.0.7.7:40000"));
    let dst = OrigDstAddr(addr("10.0.0.1:8080"));
    // A deadline far below the wait: a connection held for the wait fails it.
    let decided = tokio::time::timeout(
        Duration::from_secs(60),
        enforcer.admit(Direction::Ingress, client, dst, Transport::Plaintext),
    )
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

/// shop/api may dial only pods labelled app=web, on 8080.
const API_EGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 8080}]}]
"#;

fn apply(writer: &mut StateWriter, yaml: &str) {
    for object in objects(yaml) {
        writer.apply(object);
    }
    writer.commit();
}

#[tokio::test]
async fn outbound_connections_are_decided_by_this_pods_egress_side() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(&mut writer, WEB);
    apply(&mut writer, API_EGRESS);
    let me = ClientAddr(addr("10.0.0.1:40000"));
    let web = OrigDstAddr(addr("10.0.5.5:8080"));
    enforcer
        .admit(Direction::Egress, me, web, Transport::Plaintext)
        .await
        .expect("app=web on 8080 is allowed");
    for denied in ["10.0.5.5:9090", "198.51.100.7:443"] {
        let refused = enforcer
            .admit(
                Direction::Egress,
                me,
                OrigDstAddr(addr(denied)),
                Transport::Plaintext,
            )
            .await;
        assert_eq!(refused.err(), Some(Refusal::Denied), "{denied}");
    }
    // The receiver's view of the same pair stays the ingress one: api
    // admits only app=web, and a denial there says nothing of egress.
    let text = enforcer.metrics.encode(true);
    for line in [
        r#"picket_outbound_connections_total{destination="shop/web",outcome="allowed",policy="shop/api-out"} 1"#,
        r#"picket_outbound_connections_total{destination="shop/web",outcome="denied",policy="isolated"} 1"#,
        r#"picket_outbound_connections_total{destination="external",outcome="denied",policy="isolated"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[tokio::test]
async fn an_outbound_connection_to_loopback_is_never_dialled() {
    let (enforcer, _writer) = enforcer(Duration::ZERO);
    let me = ClientAddr(addr("127.0.0.1:40000"));
    for local in ["127.0.0.1:15001", "[::1]:80", "0.0.0.0:80"] {
        let refused = enforcer
            .admit(
                Direction::Egress,
                me,
                OrigDstAddr(addr(local)),
                Transport::Plaintext,
            )
            .await;
        assert_eq!(refused.err(), Some(Refusal::Loop), "{local}");
    }
    let text = enforcer.metrics.encode(true);
    assert!(
        text.contains("picket_outbound_refused_total{reason=\"loop\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn an_outbound_connection_to_a_new_pod_waits_for_its_pod() {
    let (enforcer, mut writer) = enforcer(Duration::from_secs(30));
    apply(&mut writer, API_EGRESS);
    let me = ClientAddr(addr("10.0.0.1:40000"));
    let web = OrigDstAddr(addr("10.0.5.5:8080"));
    let admission = tokio::spawn({
        let enforcer = enforcer.clone();
        async move {
            enforcer
                .admit(Direction::Egress, me, web, Transport::Plaintext)
                .await
        }
    });
    churn(&mut writer, 0..3).await;
    apply(&mut writer, WEB);
    let decided = tokio::time::timeout(Duration::from_secs(20), admission)
        .await
        .expect("decided once the Pod arrives, not at the end of the wait")
        .unwrap();
    decided.expect("allowed once its labels are known");
}

#[tokio::test]
async fn an_outbound_connection_waiting_for_its_destination_ends_when_an_entry_for_it_arrives() {
    // In control mode a destination outside the view arrives as its
    // ingress side, by address, never as a Pod: that ends the wait too.
    let (enforcer, mut writer) = enforcer(Duration::from_secs(3600));
    apply(&mut writer, API_EGRESS);
    let me = ClientAddr(addr("10.0.0.1:40000"));
    let dst = OrigDstAddr(addr("10.0.7.8:8080"));
    let admission = tokio::spawn({
        let enforcer = enforcer.clone();
        async move {
            enforcer
                .admit(Direction::Egress, me, dst, Transport::Plaintext)
                .await
        }
    });
    churn(&mut writer, 0..3).await;
    writer.set_address_side(
        picket_policy::Direction::Ingress,
        "10.0.7.8".parse().unwrap(),
        isolated_allowing_nothing(),
    );
    writer.commit();
    let decided = tokio::time::timeout(Duration::from_secs(60), admission)
        .await
        .expect("decided once the entry arrives, not at the end of the wait")
        .unwrap();
    assert_eq!(
        decided.err(),
        Some(Refusal::Denied),
        "its ingress lets nothing in"
    );
    let text = enforcer.metrics.encode(true);
    assert!(
        text.contains(r#"picket_unknown_ip_waits_total{result="resolved"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_egress_policy_tears_down_the_outbound_connections_it_forbids_only() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(&mut writer, WEB);
    tokio::spawn(enforcer.clone().recheck_on_change(Readiness::new()));
    let me = ClientAddr(addr("10.0.0.1:40000"));
    let to_web = enforcer
        .admit(
            Direction::Egress,
            me,
            OrigDstAddr(addr("10.0.5.5:8080")),
            Transport::Plaintext,
        )
        .await
        .expect("not isolated yet");
    let outside = enforcer
        .admit(
            Direction::Egress,
            me,
            OrigDstAddr(addr("198.51.100.7:443")),
            Transport::Plaintext,
        )
        .await
        .expect("not isolated yet");
    let from_web = enforcer
        .admit(
            Direction::Ingress,
            ClientAddr(addr("10.0.5.5:50000")),
            OrigDstAddr(addr("10.0.0.1:8080")),
            Transport::Plaintext,
        )
        .await
        .expect("ingress allows app=web");
    apply(&mut writer, API_EGRESS);
    tokio::time::timeout(Duration::from_secs(20), outside.registration.killed())
        .await
        .expect("the egress policy forbids the outside address: torn down");
    for (what, kept) in [("to web", &to_web), ("from web", &from_web)] {
        assert!(
            tokio::time::timeout(Duration::from_millis(200), kept.registration.killed())
                .await
                .is_err(),
            "{what} is still allowed"
        );
    }
    let text = enforcer.metrics.encode(true);
    assert!(
        text.contains("picket_outbound_teardowns_total{reason=\"policy-added\"} 1"),
        "{text}"
    );
}

/// shop/db (10.96.0.10:5432) has three endpoints: db-1 and db-2 (app=db),
/// cache (app=cache); shop/api may dial app=db only.
const DB_SERVICE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db-2, namespace: shop, labels: {app: db}}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: cache, namespace: shop, labels: {app: cache}}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: sql, port: 5432, targetPort: 15432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-x, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints: [{addresses: [10.0.1.1]}, {addresses: [10.0.1.2]}, {addresses: [10.0.1.3]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]
"#;

#[tokio::test]
async fn a_service_is_dialled_at_an_endpoint_its_egress_allows_in_turn() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(&mut writer, DB_SERVICE);
    tokio::spawn(enforcer.clone().recheck_on_change(Readiness::new()));
    let me = ClientAddr(addr("10.0.0.1:40000"));
    let service = OrigDstAddr(addr("10.96.0.10:5432"));
    let mut dialled = Vec::new();
    let mut live = Vec::new();
    for _ in 0..4 {
        let admitted = enforcer
            .admit(Direction::Egress, me, service, Transport::Plaintext)
            .await
            .expect("two endpoints are allowed");
        dialled.push(admitted.dial.0.to_string());
        live.push(admitted);
    }
    assert_eq!(
        dialled,
        [
            "10.0.1.1:15432",
            "10.0.1.2:15432",
            "10.0.1.1:15432",
            "10.0.1.2:15432"
        ],
        "round robin over the allowed endpoints, at their target port; never the cache"
    );
    let table: Vec<String> = enforcer
        .registry
        .list()
        .into_iter()
        .map(|c| c.destination)
        .collect();
    assert!(table.iter().all(|d| d.starts_with("10.0.1.")), "{table:?}");

    // db-2 leaves the Service: its live connections stay (as with kube-proxy).
    apply(
        &mut writer,
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-x, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: sql, port: 15432}]
endpoints: [{addresses: [10.0.1.1]}, {addresses: [10.0.1.3]}]
"#,
    );
    let next = enforcer
        .admit(Direction::Egress, me, service, Transport::Plaintext)
        .await
        .unwrap();
    assert_eq!(next.dial.0.to_string(), "10.0.1.1:15432");
    // db-2 is relabelled: the policy forbids it now, and its connections go.
    apply(
        &mut writer,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: db-2, namespace: shop, labels: {app: retired}}
status: {podIP: 10.0.1.2}
"#,
    );
    for (i, admitted) in live.iter().enumerate() {
        let killed = tokio::time::timeout(
            Duration::from_millis(if i % 2 == 1 { 20_000 } else { 200 }),
            admitted.registration.killed(),
        )
        .await
        .is_ok();
        assert_eq!(killed, i % 2 == 1, "connection {i} to {}", dialled[i]);
    }
}

#[tokio::test]
async fn a_service_without_an_allowed_endpoint_is_denied_naming_it() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(&mut writer, DB_SERVICE);
    // Both db pods relabelled: only the cache is an endpoint, and it is denied.
    apply(
        &mut writer,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: db-1, namespace: shop, labels: {app: x}}\nstatus: {podIP: 10.0.1.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-2, namespace: shop, labels: {app: x}}\nstatus: {podIP: 10.0.1.2}\n",
    );
    let me = ClientAddr(addr("10.0.0.1:40000"));
    // 5432: no endpoint allowed; 80: a port the Service does not serve.
    for port in [5432, 80] {
        let refused = enforcer
            .admit(
                Direction::Egress,
                me,
                OrigDstAddr(addr(&format!("10.96.0.10:{port}"))),
                Transport::Plaintext,
            )
            .await;
        assert_eq!(refused.err(), Some(Refusal::Denied), "{port}");
    }
    let text = enforcer.metrics.encode(true);
    assert!(
        text.contains(r#"picket_outbound_connections_total{destination="shop/db",outcome="denied",policy="isolated"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn of_the_next_two_endpoints_the_less_loaded_is_dialled() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(&mut writer, DB_SERVICE);
    let me = ClientAddr(addr("10.0.0.1:40000"));
    let service = OrigDstAddr(addr("10.96.0.10:5432"));
    let mut live = Vec::new();
    for _ in 0..4 {
        live.push(
            enforcer
                .admit(Direction::Egress, me, service, Transport::Plaintext)
                .await
                .unwrap(),
        );
    }
    // db-2's two connections close: db-1 holds two, db-2 none.
    live.retain(|a| a.dial.0.to_string() == "10.0.1.1:15432");
    assert_eq!(live.len(), 2);
    assert_eq!(enforcer.registry.dialled(addr("10.0.1.2:15432")), 0);
    assert_eq!(enforcer.registry.dialled(addr("10.0.1.1:15432")), 2);
    let mut next = Vec::new();
    for _ in 0..2 {
        let admitted = enforcer
            .admit(Direction::Egress, me, service, Transport::Plaintext)
            .await
            .unwrap();
        next.push(admitted.dial.0.to_string());
        live.push(admitted);
    }
    assert_eq!(
        next,
        ["10.0.1.2:15432", "10.0.1.2:15432"],
        "round robin alone would have sent one to the loaded db-1"
    );
    drop(live);
    assert_eq!(
        enforcer.registry.dialled(addr("10.0.1.1:15432")),
        0,
        "counts go with the connections"
    );
}

#[tokio::test]
async fn a_sidecar_run_without_outbound_capture_resets_what_arrives_outbound() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(&mut writer, WEB);
    let mut off = Arc::into_inner(enforcer).expect("the only handle");
    off.outbound = false;
    let refused = off
        .admit(
            Direction::Egress,
            ClientAddr(addr("10.0.0.1:40000")),
            OrigDstAddr(addr("10.0.5.5:8080")),
            Transport::Plaintext,
        )
        .await;
    assert_eq!(
        refused.err(),
        Some(Refusal::OutboundOff),
        "not isolated, still reset"
    );
    assert!(off
        .metrics
        .encode(true)
        .contains("picket_outbound_refused_total{reason=\"capture-off\"} 1"));
}

#[tokio::test]
async fn a_service_address_without_endpoints_is_denied_even_where_an_ip_block_allows_it() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(
        &mut writer,
        r#"
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-anywhere, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
"#,
    );
    let snapshot = enforcer.snapshots.borrow().clone().unwrap();
    let me = ClientAddr(addr("10.0.0.1:40000"));
    // What a re-check decides for a connection still at the Service's address.
    let d = enforcer.decide(
        &snapshot,
        Direction::Egress,
        me,
        OrigDstAddr(addr("10.96.0.20:80")),
    );
    assert!(!d.allowed, "{d}");
    assert_eq!(d.reason_label(), "no-endpoint");
    // The ipBlock itself still opens plain addresses.
    let d = enforcer.decide(
        &snapshot,
        Direction::Egress,
        me,
        OrigDstAddr(addr("198.51.100.7:80")),
    );
    assert!(d.allowed, "{d}");
}

#[tokio::test]
async fn node_cidrs_count_as_node_traffic_inbound_only() {
    let (enforcer, mut writer) = enforcer(Duration::ZERO);
    apply(
        &mut writer,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-closed, namespace: shop}
spec: {podSelector: {matchLabels: {app: api}}, policyTypes: [Ingress, Egress]}
"#,
    );
    let mut enforcer = Arc::into_inner(enforcer).expect("the only handle");
    enforcer.node = NodeAddrs::new(["10.9.0.0/16".parse().unwrap()]);
    let snapshot = enforcer.snapshots.borrow().clone().unwrap();
    let other_node = addr("10.9.1.1:31234");
    let inbound = enforcer.decide(
        &snapshot,
        Direction::Ingress,
        ClientAddr(other_node),
        OrigDstAddr(addr("10.0.0.1:8080")),
    );
    assert!(
        inbound.allowed,
        "kubelet probes from the node networks: {inbound}"
    );
    let outbound = enforcer.decide(
        &snapshot,
        Direction::Egress,
        ClientAddr(addr("10.0.0.1:40000")),
        OrigDstAddr(other_node),
    );
    assert!(
        !outbound.allowed,
        "another node's NodePort is a destination: {outbound}"
    );
}
