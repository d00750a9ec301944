//! End to end, outbound: a pod whose init captures its outbound
//! connections, the real sidecar deciding them by the pod's egress
//! policies at the source, toward pods without a sidecar and toward an
//! address outside the pod network. Needs root; one at a time.

#[macro_use]
mod support;

use std::net::SocketAddr;

use picket_lab::app::EchoServer;
use support::*;

const DENY_EGRESS: &str = "{podSelector: {}, policyTypes: [Egress]}";

/// client (captures its outbound connections), db (app=db, no sidecar).
fn cluster(mode: Interception) -> Cluster {
    Cluster::new_in(
        mode,
        &[
            ("shop", "client", &[("role", "client")]),
            ("shop", "db", &[("app", "db")]),
        ],
    )
}

/// Dials `to` from the client pod's namespace, as its app would.
fn dial(c: &Cluster, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    c.dial("client", to)
}

fn reaches(c: &Cluster, to: SocketAddr) -> bool {
    c.reaches("client", to)
}

fn assert_reset_at(c: &Cluster, to: SocketAddr) {
    c.assert_reset_at("client", to)
}

fn default_deny_egress_is_enforced_at_the_source_and_rules_open_exactly_what_they_name(
    mode: Interception,
) {
    if !lab_available() {
        return;
    }
    let c = cluster(mode);
    let internet = c.lab.add_external(10).unwrap();
    let elsewhere = c.lab.add_external(11).unwrap();
    let node = c.lab.node_netns().to_string();
    let outside = EchoServer::start(&node, SocketAddr::new(internet, APP_PORT)).unwrap();
    let outside_tls = EchoServer::start(&node, SocketAddr::new(internet, 8443)).unwrap();
    let other = EchoServer::start(&node, SocketAddr::new(elsewhere, APP_PORT)).unwrap();
    let db_ip = c.pod("db").ip;
    let db = EchoServer::start(&c.pod("db").netns, SocketAddr::new(db_ip, APP_PORT)).unwrap();
    let db_admin = EchoServer::start(&c.pod("db").netns, SocketAddr::new(db_ip, 9090)).unwrap();
    c.write("deny.yaml", &policy("shop", "deny-egress", DENY_EGRESS));
    let client = c.start_capturing("client");
    // A re-run (the pod restarted) refills the chain and adds no second jump.
    let node_file = c.state.path().join("client").join("node");
    let rerun = picket_lab::proxy::run_init(
        &c.binary,
        c.pod("client"),
        &[
            "--node-file",
            node_file.to_str().unwrap(),
            "--outbound-capture",
            "on",
        ],
    )
    .unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let saved = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.pod("client").netns,
            "iptables-save",
            "-t",
            "nat",
        ])
        .output()
        .unwrap();
    let saved = String::from_utf8_lossy(&saved.stdout);
    assert_eq!(
        saved
            .lines()
            .filter(|l| *l == picket_proxy::iptables::OUTBOUND_JUMP)
            .count(),
        1,
        "{saved}"
    );

    // Default deny: neither the internet nor a pod without a sidecar.
    assert_reset_at(&c, SocketAddr::new(internet, APP_PORT));
    assert_reset_at(&c, SocketAddr::new(db_ip, APP_PORT));
    assert_eq!(outside.accepted() + db.accepted(), 0, "nothing was dialled");

    // An ipBlock for one address and port opens exactly that.
    c.write(
        "internet.yaml",
        &policy(
            "shop",
            "to-internet",
            &format!("{{podSelector: {{matchLabels: {{role: client}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {internet}/32}}}}], ports: [{{port: {APP_PORT}}}]}}]}}"),
        ),
    );
    eventually("the ipBlock rule applies", READY, || {
        reaches(&c, SocketAddr::new(internet, APP_PORT))
    });
    assert_reset_at(&c, SocketAddr::new(internet, 8443));
    assert_reset_at(&c, SocketAddr::new(elsewhere, APP_PORT));
    assert_reset_at(&c, SocketAddr::new(db_ip, APP_PORT));
    assert_eq!(outside_tls.accepted() + other.accepted() + db.accepted(), 0);

    // A named port resolves on the destination pod: `http` is its 8080.
    c.write(
        "db.yaml",
        &policy(
            "shop",
            "to-db",
            "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: http}]}]}",
        ),
    );
    eventually("the named-port rule applies", READY, || {
        reaches(&c, SocketAddr::new(db_ip, APP_PORT))
    });
    assert_reset_at(&c, SocketAddr::new(db_ip, 9090));
    assert_eq!(db_admin.accepted(), 0);
    assert!(
        metric(
            &client.pod,
            "picket_outbound_connections_total{destination=\"external\",outcome=\"denied\""
        ) >= 3.0
    );
    assert!(
        metric(
            &client.pod,
            "picket_outbound_connections_total{destination=\"shop/db\",outcome=\"allowed\""
        ) >= 1.0
    );
}

fn a_live_outbound_connection_is_reset_at_both_ends_when_egress_forbids_it(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = cluster(mode);
    let internet = c.lab.add_external(10).unwrap();
    let outside =
        EchoServer::start(c.lab.node_netns(), SocketAddr::new(internet, APP_PORT)).unwrap();
    let client = c.start_capturing("client");
    let mut live = dial(&c, SocketAddr::new(internet, APP_PORT)).unwrap();
    assert!(echoes(&mut live), "not isolated: allowed");
    live.set_read_timeout(Some(READY)).unwrap();
    c.write("deny.yaml", &policy("shop", "deny-egress", DENY_EGRESS));
    assert!(read_reset(&mut live), "the app's connection is reset");
    eventually("the destination sees the reset", READY, || {
        outside.resets() == 1
    });
    assert_eq!(
        metric(
            &client.pod,
            "picket_outbound_teardowns_total{reason=\"policy-added\"}"
        ),
        1.0
    );
}

/// The sum of a metric's series, read from the sidecar's local admin port
/// (loopback: never captured, so reading counts no connection).
fn local_metric(pod: &picket_lab::LabPod, name: &str) -> f64 {
    let (_, text) = picket_lab::proxy::http_get(
        &pod.netns,
        SocketAddr::from(([127, 0, 0, 1], picket_common::LOCAL_ADMIN_PORT)),
        "/metrics",
    )
    .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn a_pod_dialling_itself_and_the_proxy_dialling_its_app_take_one_hop_each(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = cluster(mode);
    let client_only = "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress]}";
    c.write("deny.yaml", &policy("shop", "deny-egress", client_only));
    let client = c.start_capturing("client");
    let pod = &client.pod;
    let me = SocketAddr::new(pod.ip, APP_PORT);
    let (inbound, outbound) = (
        "picket_inbound_connections_total",
        "picket_outbound_connections_total",
    );
    // (Waiting for readiness dialled the pod's own admin port: counted.)
    let outbound_before = local_metric(pod, outbound);
    // The pod to itself: captured once (outbound), never redirected inbound.
    let mut s = dial(&c, me).unwrap();
    assert!(echoes(&mut s), "a pod may always reach itself");
    drop(s);
    assert_eq!(local_metric(pod, outbound) - outbound_before, 1.0);
    assert!(
        local_metric(
            pod,
            "picket_outbound_connections_total{destination=\"shop/client\",outcome=\"allowed\",policy=\"same-pod\"}"
        ) >= 1.0
    );
    assert_eq!(local_metric(pod, inbound), 0.0);
    // A peer to the pod: redirected inbound once; the proxy's own
    // connection to its app is not captured on the way out.
    let mut s = c.connect("db", "client", APP_PORT);
    assert!(echoes(&mut s), "the client pod admits every peer");
    drop(s);
    assert_eq!(local_metric(pod, inbound), 1.0);
    assert_eq!(local_metric(pod, outbound) - outbound_before, 1.0);
    assert_eq!(client.echo.accepted(), 2);
    // Hairpin: the pod to its own Service lands on itself, one hop again.
    c.write(
        "service.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: me, namespace: shop}}\nspec: {{clusterIP: 10.96.0.20, ports: [{{port: 80, targetPort: {APP_PORT}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: me-1, namespace: shop, labels: {{kubernetes.io/service-name: me}}}}\naddressType: IPv4\nports: [{{port: {APP_PORT}}}]\nendpoints: [{{addresses: [{}]}}]\n",
            pod.ip
        ),
    );
    let service = SocketAddr::from(([10, 96, 0, 20], 80));
    let to_me = "picket_outbound_connections_total{destination=\"shop/client\",outcome=\"allowed\"";
    let (allowed_before, accepted_before) = (local_metric(pod, to_me), client.echo.accepted());
    eventually("the Service is known", READY, || reaches(&c, service));
    let hops = local_metric(pod, to_me) - allowed_before;
    assert!(hops >= 1.0, "{hops}");
    assert_eq!(local_metric(pod, inbound), 1.0, "never redirected inbound");
    assert_eq!(
        (client.echo.accepted() - accepted_before) as f64,
        hops,
        "each allowed outbound hop reached the app once, directly"
    );
}

fn a_service_is_reached_only_at_the_endpoints_the_egress_policy_allows(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = Cluster::new_in(
        mode,
        &[
            ("shop", "client", &[("role", "client")]),
            ("shop", "db-1", &[("app", "db")]),
            ("shop", "db-2", &[("app", "db")]),
            ("shop", "cache", &[("app", "cache")]),
        ],
    );
    let echo = |name: &str| {
        let pod = c.pod(name);
        EchoServer::start(&pod.netns, SocketAddr::new(pod.ip, APP_PORT)).unwrap()
    };
    let (db1, db2, cache) = (echo("db-1"), echo("db-2"), echo("cache"));
    // A ClusterIP nothing in the lab routes: only the proxy's own
    // resolution can make a connection to it work.
    let cluster_ip = "10.96.0.10";
    let endpoints: Vec<String> = ["db-1", "db-2", "cache"]
        .iter()
        .map(|n| format!("{{addresses: [{}]}}", c.pod(n).ip))
        .collect();
    c.write(
        "service.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: shop}}\nspec: {{clusterIP: {cluster_ip}, ports: [{{name: http, port: 80, targetPort: http}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: backend-1, namespace: shop, labels: {{kubernetes.io/service-name: backend}}}}\naddressType: IPv4\nports: [{{name: http, port: {APP_PORT}}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        ),
    );
    c.write(
        "policy.yaml",
        &policy(
            "shop",
            "client-to-db",
            "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]}",
        ),
    );
    let client = c.start_capturing("client");
    let service = SocketAddr::new(cluster_ip.parse().unwrap(), 80);
    for _ in 0..10 {
        assert!(
            reaches(&c, service),
            "every connection lands on an allowed endpoint"
        );
    }
    assert_eq!(cache.accepted(), 0, "the policy forbids the cache");
    assert_eq!((db1.accepted(), db2.accepted()), (5, 5), "in turn");
    // No endpoint allowed any more: reset, with the Service named.
    c.write(
        "policy.yaml",
        &policy(
            "shop",
            "client-to-db",
            "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: nothing}}}]}]}",
        ),
    );
    eventually("no endpoint is allowed", READY, || {
        dial(&c, service).is_ok_and(|mut s| !echoes(&mut s))
    });
    assert_reset_at(&c, service);
    assert!(
        local_metric(
            &client.pod,
            "picket_outbound_connections_total{destination=\"shop/backend\",outcome=\"denied\""
        ) >= 1.0
    );
}

in_both_modes!(
    default_deny_egress_is_enforced_at_the_source_and_rules_open_exactly_what_they_name,
    a_live_outbound_connection_is_reset_at_both_ends_when_egress_forbids_it,
    a_pod_dialling_itself_and_the_proxy_dialling_its_app_take_one_hop_each,
    a_service_is_reached_only_at_the_endpoints_the_egress_policy_allows,
);
