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
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let client = picket_state::kube::client(Some(&kubeconfig)).await.unwrap();
    let restarts = prometheus::IntCounterVec::new(
        prometheus::Opts::new("watch_restarts_total", "restarts"),
        &["kind"],
    )
    .unwrap();
    let (writer, rx) = StateWriter::new();
    tokio::spawn(KubeSource::new(client, restarts).run(writer));
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
