//! The Kubernetes source against the test API server (real protocol, real
//! kube-rs client): what a relist may and may not do to the state.

use std::time::{Duration, Instant};

use picket_policy::ObjectKey;
use picket_state::kube::KubeSource;
use picket_state::{SnapshotRx, Source, StateWriter};
use picket_test_support::apiserver::ApiServer;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {containers: [{name: app, image: app}]}
status: {podIP: 10.0.0.1}
"#;

const DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {}}
"#;

fn has_policy(rx: &SnapshotRx, key: &ObjectKey) -> bool {
    rx.borrow()
        .as_ref()
        .is_some_and(|s| s.index.policy(key).is_some())
}

/// A kube source over a client of the test API server (the kubeconfig
/// lives in the returned directory).
async fn source(api: &ApiServer) -> (KubeSource, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let client = picket_state::kube::client(Some(&kubeconfig)).await.unwrap();
    let restarts = prometheus::IntCounterVec::new(
        prometheus::Opts::new("watch_restarts_total", "restarts"),
        &["kind"],
    )
    .unwrap();
    (KubeSource::new(client, restarts), dir)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_from_a_lagging_watch_cache_does_not_roll_the_state_back() {
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    api.apply(CLUSTER).unwrap();
    let (source, _dir) = source(&api).await;
    let (writer, rx) = StateWriter::new();
    tokio::spawn(source.run(writer));
    eventually("the first state", || rx.borrow().is_some()).await;

    // A replica's watch cache stops here; then a deny-all is applied.
    api.lag_cache();
    api.apply(DENY).unwrap();
    let deny = ObjectKey::new("shop", "deny");
    eventually("the deny-all", || has_policy(&rx, &deny)).await;

    // The watches break and their history is gone: every kind relists.
    api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n")
        .unwrap();
    api.compact();
    api.clear_requests();
    api.drop_watches();
    let is_policies = |path: &str| path.ends_with("/networkpolicies");
    api.wait_for_request(Duration::from_secs(10), |r| {
        is_policies(&r.path) && r.param("watch").is_none()
    })
    .expect("the policies are relisted");
    api.wait_for_request(Duration::from_secs(10), |r| {
        is_policies(&r.path) && r.param("watch").as_deref() == Some("true") && r.status == Some(200)
    })
    .expect("the policies are watched again after the relist");
    // Whatever the cache serves, the state never goes back to before the deny-all.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert!(
            has_policy(&rx, &deny),
            "a lagging relist dropped the deny-all: the pods opened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_services_the_state_resolves_addresses_and_follows_their_endpoints() {
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    api.apply(CLUSTER).unwrap();
    api.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
"#,
    )
    .unwrap();
    let (source, _dir) = source(&api).await;
    let (writer, rx) = StateWriter::new();
    tokio::spawn(source.with_services().run(writer));
    let endpoints = |rx: &SnapshotRx| -> Option<Vec<String>> {
        let snapshot = rx.borrow().clone()?;
        let resolved = snapshot.services.resolve(
            "10.96.0.10".parse().unwrap(),
            80,
            picket_policy::Protocol::Tcp,
        )?;
        Some(resolved.endpoints.iter().map(ToString::to_string).collect())
    };
    eventually("the first state", || rx.borrow().is_some()).await;
    // Published only with the Services listed: the first state resolves.
    assert_eq!(endpoints(&rx), Some(vec!["10.0.0.1:8080".to_string()]));
    api.apply(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
"#,
    )
    .unwrap();
    eventually("the new endpoint", || {
        endpoints(&rx).is_some_and(|e| e.len() == 2)
    })
    .await;
    let watched: std::collections::BTreeSet<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.param("watch").as_deref() == Some("true"))
        .filter_map(|r| r.path.rsplit('/').next().map(str::to_string))
        .collect();
    assert!(
        watched.contains("services") && watched.contains("endpointslices"),
        "{watched:?}"
    );
}
