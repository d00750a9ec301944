//! End to end with the Kubernetes API: the sidecar watches the test API
//! server (tests/support), which listens inside the lab's node namespace, and
//! enforces what is written to it. Needs root.

#[macro_use]
mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use picket_lab::in_netns;
use picket_lab::proxy::{http_get, share_dir};
use picket_test_support::apiserver::{ApiServer, Kind};
use support::*;

/// A lab cluster whose state lives in a test API server.
struct KubeCluster {
    c: Cluster,
    api: ApiServer,
    kubeconfig: std::path::PathBuf,
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: shop}}\n";

impl KubeCluster {
    fn new(mode: Interception) -> Self {
        let c = Cluster::new_in(
            mode,
            &[
                ("shop", "api", &[("app", "api")]),
                ("shop", "client", &[("role", "client")]),
                ("shop", "stranger", &[("role", "stranger")]),
                ("shop", "newcomer", &[("role", "client")]),
            ],
        );
        let gateway = c.lab.gateway();
        let listener = in_netns(c.lab.node_netns(), || TcpListener::bind((gateway, 0)))
            .unwrap()
            .unwrap();
        let api = ApiServer::builder()
            .host(gateway.to_string())
            .bookmark_interval(Duration::from_secs(1))
            .start(listener)
            .unwrap();
        let kubeconfig = c.state.path().join("kubeconfig");
        api.kubeconfig(&kubeconfig).unwrap();
        share_dir(c.state.path()).unwrap();
        api.apply(NS).unwrap();
        let k = Self { c, api, kubeconfig };
        for name in ["api", "client", "stranger"] {
            k.apply_pod(name, None);
        }
        k
    }

    /// Writes a pod object (as the kubelet would, status included).
    fn apply_pod(&self, name: &str, labels: Option<&[(&str, &str)]>) {
        let (pod, ns, default_labels) = &self.c.pods[name];
        let labels: std::collections::BTreeMap<String, String> = match labels {
            Some(l) => l
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None => default_labels.iter().cloned().collect(),
        };
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": APP_PORT, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}],
                       "hostIP": self.c.lab.host_ip().to_string()},
        });
        self.api.apply(&doc.to_string()).unwrap();
    }

    fn apply_policy(&self, name: &str, spec: &str) {
        self.api.apply(&policy("shop", name, spec)).unwrap();
    }

    /// Init, app and a sidecar watching the API; waits for readiness when `ready`.
    fn server(&self, ready: bool) -> Server {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        self.c.server_with(
            "api",
            ready,
            &[
                "--source",
                "kube",
                "--kubeconfig",
                &kubeconfig,
                "--state-wait",
                "300ms",
            ],
        )
    }
}

const DENY_ALL: &str = "{podSelector: {}}";

fn creating_a_policy_resets_what_it_forbids_and_deleting_it_lets_connections_in(
    mode: Interception,
) {
    if !lab_available() {
        return;
    }
    let k = KubeCluster::new(mode);
    let _server = k.server(true);
    let mut live = k.c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live), "no policy yet: allowed");
    k.apply_policy("deny-all", DENY_ALL);
    assert!(
        read_reset(&mut live),
        "the live connection is reset by the new policy"
    );
    k.c.assert_reset("client", "api", APP_PORT);
    k.api
        .delete(Kind::NetworkPolicy, Some("shop"), "deny-all")
        .unwrap();
    eventually("the deletion to let connections in", READY, || {
        allowed_now(&k.c, "client", "api")
    });
}

fn relabelling_the_client_or_its_namespace_resets_its_live_connection(mode: Interception) {
    if !lab_available() {
        return;
    }
    let k = KubeCluster::new(mode);
    k.apply_policy("allow-client", ALLOW_CLIENT);
    k.apply_policy(
        "allow-team",
        "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}, podSelector: {matchLabels: {role: stranger}}}]}]}",
    );
    let _server = k.server(true);

    let mut live = k.c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));
    k.apply_pod("client", Some(&[("role", "former-client")]));
    assert!(
        read_reset(&mut live),
        "relabelled out of the selector: reset"
    );

    let mut live = k.c.connect("stranger", "api", APP_PORT);
    assert!(echoes(&mut live), "allowed through its namespace's label");
    k.api
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: other}}\n")
        .unwrap();
    assert!(
        read_reset(&mut live),
        "namespace relabelled out of the selector: reset"
    );
}

fn a_new_pod_is_recognised_on_its_first_connection_even_before_its_event(mode: Interception) {
    if !lab_available() {
        return;
    }
    let k = KubeCluster::new(mode);
    k.apply_policy("allow-client", ALLOW_CLIENT);
    let server = k.server(true);
    // The newcomer connects first; its Pod object appears a moment later,
    // within the unknown-IP wait: it is recognised, not reset.
    let c = &k.c;
    std::thread::scope(|scope| {
        let first = scope.spawn(|| allowed_now(c, "newcomer", "api"));
        std::thread::sleep(Duration::from_millis(100)); // let the connection arrive first
        k.apply_pod("newcomer", None);
        assert!(
            first.join().unwrap(),
            "the first connection is allowed once the pod is known"
        );
    });
    assert!(
        metric(
            &server.pod,
            "picket_unknown_ip_waits_total{result=\"resolved\"}"
        ) >= 1.0
    );
    assert!(allowed_now(&k.c, "newcomer", "api"));
}

fn enforcement_survives_the_api_going_away_and_resumes_after(mode: Interception) {
    if !lab_available() {
        return;
    }
    let k = KubeCluster::new(mode);
    k.apply_policy("allow-client", ALLOW_CLIENT);
    let server = k.server(true);
    assert!(allowed_now(&k.c, "client", "api"));
    k.c.assert_reset("stranger", "api", APP_PORT);

    k.api.refuse_connections(true);
    k.api.drop_connections();
    eventually("the watch to notice", READY, || {
        metric(&server.pod, "picket_watch_restarts_total") >= 1.0
    });
    for _ in 0..3 {
        assert!(
            allowed_now(&k.c, "client", "api"),
            "the last state still allows the client"
        );
        k.c.assert_reset("stranger", "api", APP_PORT);
    }
    let (status, _) = http_get(
        &server.pod.netns,
        SocketAddr::new(server.pod.ip, 15020),
        "/ready",
    )
    .unwrap();
    assert_eq!(status, 200, "an API blip does not make the pod unready");

    k.api.refuse_connections(false);
    k.apply_policy(
        "allow-stranger",
        "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: stranger}}}]}]}",
    );
    eventually(
        "the policy applied after the outage to take effect",
        Duration::from_secs(60),
        || allowed_now(&k.c, "stranger", "api"),
    );
}

fn a_policy_deleted_while_the_watch_was_down_stops_allowing_after_the_relist(mode: Interception) {
    if !lab_available() {
        return;
    }
    let k = KubeCluster::new(mode);
    k.apply_policy("deny-all", DENY_ALL);
    k.apply_policy("allow-client", ALLOW_CLIENT);
    let server = k.server(true);
    assert!(allowed_now(&k.c, "client", "api"));

    // The watch goes down; the allowing policy is deleted meanwhile, and the
    // history is compacted: the watch comes back to a 410 and must relist.
    k.api.refuse_connections(true);
    k.api.drop_connections();
    eventually("the watch to notice", READY, || {
        metric(&server.pod, "picket_watch_restarts_total") >= 1.0
    });
    k.api
        .delete(Kind::NetworkPolicy, Some("shop"), "allow-client")
        .unwrap();
    k.api.compact();
    k.api.refuse_connections(false);
    eventually(
        "the relist to drop the deleted policy",
        Duration::from_secs(60),
        || !allowed_now(&k.c, "client", "api"),
    );
    k.c.assert_reset("client", "api", APP_PORT);
    assert_eq!(
        metric(
            &server.pod,
            "picket_state_objects{kind=\"networkpolicies\"}"
        ),
        1.0
    );
}

fn not_ready_and_resetting_until_the_initial_lists_are_applied(mode: Interception) {
    if !lab_available() {
        return;
    }
    let k = KubeCluster::new(mode);
    k.api.refuse_connections(true);
    let server = k.server(false);
    let admin = SocketAddr::new(server.pod.ip, 15020);
    let (status, body) = http_get(&server.pod.netns, admin, "/ready").unwrap();
    assert_eq!(status, 503, "{body}");
    k.c.assert_reset("client", "api", APP_PORT);
    assert_eq!(server.echo.accepted(), 0);
    k.api.refuse_connections(false);
    eventually(
        "readiness after the initial lists",
        Duration::from_secs(60),
        || http_get(&server.pod.netns, admin, "/ready").is_ok_and(|(s, _)| s == 200),
    );
    assert!(allowed_now(&k.c, "client", "api"));
    assert!(
        k.api.requests().iter().any(|r| r
            .param("fieldSelector")
            .is_some_and(|f| f.contains("status.phase!=Succeeded"))),
        "pods are listed without finished ones"
    );
}

in_both_modes!(
    creating_a_policy_resets_what_it_forbids_and_deleting_it_lets_connections_in,
    relabelling_the_client_or_its_namespace_resets_its_live_connection,
    a_new_pod_is_recognised_on_its_first_connection_even_before_its_event,
    enforcement_survives_the_api_going_away_and_resumes_after,
    a_policy_deleted_while_the_watch_was_down_stops_allowing_after_the_relist,
    not_ready_and_resetting_until_the_initial_lists_are_applied,
);
