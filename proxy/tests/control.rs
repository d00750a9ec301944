//! End to end with the control plane: the test API server and
//! `picket-control` run in the lab's node namespace, the sidecar runs in its
//! pod with `--source control` and only its pod's view (with outbound parts
//! when it captures outbound connections). Needs root.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use picket_lab::app::EchoServer;
use picket_test_support::apiserver::Kind;
use support::control::*;
use support::*;

fn the_sidecar_enforces_its_view_from_the_control_plane_and_keeps_it_through_an_outage(
    mode: Interception,
) {
    if !lab_available() {
        return;
    }
    let c = Cluster::new_in(
        mode,
        &[
            ("shop", "api", &[("app", "api")]),
            ("shop", "client", &[("role", "client")]),
            ("shop", "stranger", &[("role", "stranger")]),
        ],
    );
    let setup = Setup::new(&c);
    let api = &setup.api;
    apply_pod(&c, api, "api", true);
    apply_pod(&c, api, "client", false);
    apply_pod(&c, api, "stranger", false);
    api.apply(&policy("shop", "allow-client", ALLOW_CLIENT))
        .unwrap();
    let (plane, addr) = setup.start_plane(0);
    let args = setup.sidecar_args(&c, "api", addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = c.server_with("api", true, &args);
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live), "allowed by allow-client");
    c.assert_reset("stranger", "api", APP_PORT);
    // The stranger is outside api's view: the control plane says it is a pod,
    // so its connection was decided at once, not after the unknown-IP wait.
    let (api_pod, _, _) = &c.pods["api"];
    assert_eq!(
        metric(
            api_pod,
            "picket_unknown_ip_waits_total{result=\"outside-view\"}"
        ),
        1.0
    );

    // A policy through the API that forbids the client resets its live connection.
    api.apply(&policy(
        "shop",
        "allow-client",
        "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: nobody}}}]}]}",
    ))
    .unwrap();
    assert!(
        read_reset(&mut live),
        "the live connection is reset by the change"
    );
    api.apply(&policy("shop", "allow-client", ALLOW_CLIENT))
        .unwrap();
    eventually("allow-client again", READY, || {
        allowed_now(&c, "client", "api")
    });
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));

    // The control plane goes away for 30 s: no verdict changes, nothing is reset,
    // even though the cluster changes meanwhile.
    drop(plane);
    api.delete(Kind::NetworkPolicy, Some("shop"), "allow-client")
        .unwrap();
    api.apply(&policy("shop", "deny-all", "{podSelector: {}}"))
        .unwrap();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        assert!(echoes(&mut live), "the live connection survives the outage");
        assert!(allowed_now(&c, "client", "api"), "the client stays allowed");
        c.assert_reset("stranger", "api", APP_PORT);
        std::thread::sleep(Duration::from_secs(2));
    }

    // Back on the same address: the sidecar resyncs, and what changed takes effect.
    let (_plane, _) = setup.start_plane(addr.port());
    assert!(
        read_reset(&mut live),
        "the resync resets what deny-all forbids"
    );
    eventually("deny-all to take effect", READY, || {
        !allowed_now(&c, "client", "api")
    });
}

fn a_capturing_sidecar_enforces_egress_and_reaches_services_from_its_view(mode: Interception) {
    if !lab_available() {
        return;
    }
    // client captures its outbound connections; db and other have no
    // sidecar; there is no kube-proxy: only the sidecar's own resolution of
    // the ClusterIP can reach db through its Service.
    let c = Cluster::new_in(
        mode,
        &[
            ("shop", "client", &[("role", "client")]),
            ("shop", "db", &[("app", "db")]),
            ("shop", "other", &[("app", "other")]),
        ],
    );
    let setup = Setup::new(&c);
    let api = &setup.api;
    apply_pod(&c, api, "client", true);
    apply_pod(&c, api, "db", false);
    apply_pod(&c, api, "other", false);
    let db_ip = c.pod("db").ip;
    api.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec: {{clusterIP: 10.96.0.30, ports: [{{name: sql, port: 80, targetPort: http}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db-1, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}\n\
         addressType: IPv4\nports: [{{name: sql, port: {APP_PORT}}}]\nendpoints: [{{addresses: [{db_ip}]}}]\n"
    ))
    .unwrap();
    // Egress to db only, on its port named http (resolved on db).
    api.apply(&policy(
        "shop",
        "client-egress",
        "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: http}]}]}",
    ))
    .unwrap();
    let (_plane, addr) = setup.start_plane(0);
    let _db = EchoServer::start(&c.pod("db").netns, SocketAddr::new(db_ip, APP_PORT)).unwrap();
    let _db_admin = EchoServer::start(&c.pod("db").netns, SocketAddr::new(db_ip, 9090)).unwrap();
    let other_ip = c.pod("other").ip;
    let _other =
        EchoServer::start(&c.pod("other").netns, SocketAddr::new(other_ip, APP_PORT)).unwrap();
    let mut args = setup.sidecar_args(&c, "client", addr);
    args.extend(["--outbound-capture".to_string(), "on".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _client = c.server_with_init("client", true, &["--outbound-capture", "on"], &args);

    let to_db = SocketAddr::new(db_ip, APP_PORT);
    let service = SocketAddr::from(([10, 96, 0, 30], 80));
    eventually("db through the capture", READY, || {
        c.reaches("client", to_db)
    });
    assert!(c.reaches("client", service), "the ClusterIP resolves to db");
    c.assert_reset_at("client", SocketAddr::new(db_ip, 9090));
    c.assert_reset_at("client", SocketAddr::new(other_ip, APP_PORT));

    // db's own ingress policy now forbids the client: db has no sidecar,
    // the client's enforces it at the source (db's ingress side is in its
    // view), and cuts the live connection.
    let mut live = c.dial("client", to_db).unwrap();
    assert!(echoes(&mut live));
    api.apply(&policy(
        "shop",
        "db-ingress",
        "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {role: nobody}}}]}]}",
    ))
    .unwrap();
    assert!(read_reset(&mut live), "the live connection is reset");
    c.assert_reset_at("client", to_db);
    c.assert_reset_at("client", service);
}

/// ClusterNetworkPolicies through the control plane: an Admin Deny created
/// through the API turns the pod's view cluster-wide and resets the live
/// connection it forbids; the Baseline tier denies where no NetworkPolicy
/// isolates; deleting both brings the compact view back.
#[test]
fn a_cluster_policy_through_the_api_reaches_the_sidecar_and_resets_what_it_denies() {
    if !lab_available() {
        return;
    }
    let c = Cluster::new(&[
        ("shop", "api", &[("app", "api")]),
        ("shop", "client", &[("role", "client")]),
        ("shop", "stranger", &[("role", "stranger")]),
    ]);
    let setup = Setup::new(&c);
    let api = &setup.api;
    apply_pod(&c, api, "api", true);
    apply_pod(&c, api, "client", false);
    apply_pod(&c, api, "stranger", false);
    let (_plane, addr) = setup.start_plane(0);
    let args = setup.sidecar_args(&c, "api", addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = c.server_with("api", true, &args);
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live), "no policy: allowed");
    let cnp = |name: &str, tier: &str, rules: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
             metadata: {{name: {name}}}\n\
             spec: {{tier: {tier}, priority: 10, subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: api}}}}}}}}, {rules}}}\n"
        )
    };
    api.apply(&cnp(
        "no-clients",
        "Admin",
        "ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}}]}]",
    ))
    .unwrap();
    assert!(
        read_reset(&mut live),
        "the Admin Deny resets the live connection"
    );
    c.assert_reset("client", "api", APP_PORT);
    assert!(
        allowed_now(&c, "stranger", "api"),
        "the rule matches clients only"
    );
    api.apply(&cnp(
        "default-deny",
        "Baseline",
        "ingress: [{action: Deny, from: [{namespaces: {}}]}]",
    ))
    .unwrap();
    eventually("the Baseline to deny the stranger", READY, || {
        !allowed_now(&c, "stranger", "api")
    });
    api.delete(Kind::ClusterNetworkPolicy, None, "no-clients")
        .unwrap();
    api.delete(Kind::ClusterNetworkPolicy, None, "default-deny")
        .unwrap();
    eventually("the client to be allowed again", READY, || {
        allowed_now(&c, "client", "api")
    });
    assert!(allowed_now(&c, "stranger", "api"));
}

in_both_modes!(
    the_sidecar_enforces_its_view_from_the_control_plane_and_keeps_it_through_an_outage,
    a_capturing_sidecar_enforces_egress_and_reaches_services_from_its_view,
);
