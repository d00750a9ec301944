//! Metrics checked by a real Prometheus: it scrapes a sidecar every second
//! from inside the lab's node namespace while the test drives allowed, denied
//! and torn-down connections; then every PromQL expression of the dashboards
//! must return data, and the raw counters must equal what the test did.
//! `promtool check metrics` must accept the exposition. Needs root and the
//! Debian `prometheus` package (CI installs it).

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use picket_lab::proxy::http_get;
use picket_test_support::prometheus::{dashboard_queries, reads_control_plane, Prometheus};
use support::*;

const PROMETHEUS_PORT: u16 = 19090;

/// A Prometheus of our own in the node namespace, scraping the sidecar at
/// `target` as the PodMonitor does (namespace and pod as target labels).
fn start_prometheus(netns: &str, target: SocketAddr) -> Prometheus {
    let listen: SocketAddr = format!("127.0.0.1:{PROMETHEUS_PORT}").parse().unwrap();
    let node = netns.to_string();
    Prometheus::start(
        &["ip", "netns", "exec", netns],
        listen,
        &format!(
            "- job_name: picket\n\
             \x20 static_configs:\n\
             \x20 - targets: ['{target}']\n\
             \x20   labels: {{namespace: shop, pod: api}}\n"
        ),
        Box::new(move |path| http_get(&node, listen, path)),
    )
    .unwrap()
}

#[test]
fn prometheus_scrapes_the_sidecar_and_every_dashboard_query_returns_data() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    // In audit mode, a deny-all of the client's egress: each of its
    // connections to api is a would-deny there (api decides its sources'
    // egress too), and nothing is denied or torn down for it.
    c.write(
        "audit.yaml",
        &audited(policy(
            "shop",
            "client-lockdown",
            "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress]}",
        )),
    );
    // api dials out too (captured): one outside address allowed, another not.
    let internet = c.lab.add_external(10).unwrap();
    let elsewhere = c.lab.add_external(11).unwrap();
    let node = c.lab.node_netns().to_string();
    let _outside =
        picket_lab::app::EchoServer::start(&node, SocketAddr::new(internet, APP_PORT)).unwrap();
    c.write(
        "egress.yaml",
        &policy(
            "shop",
            "api-out",
            &format!("{{podSelector: {{matchLabels: {{app: api}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {internet}/32}}}}]}}]}}"),
        ),
    );
    let server = c.start_capturing("api");
    let admin = SocketAddr::new(server.pod.ip, 15020);
    let prometheus = start_prometheus(c.lab.node_netns(), admin);

    // What the test does: 4 allowed (one stays open), 2 denied, 1 torn down.
    for _ in 0..3 {
        assert!(allowed_now(&c, "client", "api"));
    }
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));
    for _ in 0..2 {
        c.assert_reset("stranger", "api", APP_PORT);
    }
    let dial_out = |ip| {
        let s =
            picket_lab::proxy::connect_from(&server.pod.netns, None, SocketAddr::new(ip, APP_PORT));
        s.and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(s)
        })
    };
    for _ in 0..2 {
        assert!(
            echoes(&mut dial_out(internet).unwrap()),
            "allowed by its ipBlock"
        );
    }
    match dial_out(elsewhere) {
        Ok(mut s) => assert_reset(&mut s),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    eventually(
        "two scrapes with the open connection",
        Duration::from_secs(30),
        || {
            prometheus.value("count_over_time(picket_inbound_open_connections{pod=\"api\"}[1m])")
                >= Some(2.0)
                && prometheus.value("picket_inbound_open_connections{pod=\"api\"}") == Some(1.0)
        },
    );
    c.write(
        "policy.yaml",
        &policy(
            "shop",
            "allow-client",
            "{podSelector: {matchLabels: {app: api}}, ingress: []}",
        ),
    );
    let mut buf = [0u8; 4];
    assert!(
        live.read(&mut buf).is_err(),
        "the live connection is torn down"
    );

    let ns = "namespace=\"shop\", pod=\"api\"";
    eventually(
        "the counters to reach Prometheus",
        Duration::from_secs(30),
        || {
            prometheus.value(&format!("sum(picket_inbound_teardowns_total{{{ns}}})")) == Some(1.0)
                && prometheus.value(&format!("picket_inbound_open_connections{{{ns}}}"))
                    == Some(0.0)
        },
    );
    let count = |q: &str| prometheus.value(&format!("sum({q})")).unwrap_or(-1.0);
    assert_eq!(
        count(&format!(
            "picket_inbound_connections_total{{{ns}, outcome=\"allowed\"}}"
        )),
        4.0
    );
    assert_eq!(
        count(&format!(
            "picket_inbound_connections_total{{{ns}, outcome=\"denied\"}}"
        )),
        2.0
    );
    assert_eq!(
        count(&format!("picket_inbound_connections_total{{{ns}, outcome=\"allowed\", policy=\"shop/allow-client\", port=\"8080\"}}")),
        4.0,
        "allowed by the policy, on the declared port"
    );
    assert_eq!(
        count(&format!("picket_inbound_denied_peers_total{{{ns}, peer_namespace=\"shop\", peer_workload=\"stranger\"}}")),
        2.0
    );
    assert_eq!(
        count(&format!(
            "picket_inbound_teardowns_total{{{ns}, reason=\"policy-modified\"}}"
        )),
        1.0
    );
    assert_eq!(
        count(&format!("picket_inbound_connections_total{{{ns}, outcome=\"would-deny\", policy=\"shop/client-lockdown\", port=\"8080\"}}")),
        4.0,
        "each allowed connection, once, by the audited policy"
    );
    assert_eq!(
        count(&format!(
            "picket_inbound_connections_total{{{ns}, outcome=\"would-allow\"}}"
        )),
        -1.0,
        "no series: the audited deny-all allows nothing"
    );
    assert_eq!(count(&format!("picket_ready{{{ns}}}")), 1.0);
    assert_eq!(
        count(&format!("picket_outbound_connections_total{{{ns}, outcome=\"allowed\", destination=\"external\", policy=\"shop/api-out\"}}")),
        2.0
    );
    assert_eq!(
        count(&format!("picket_outbound_connections_total{{{ns}, outcome=\"denied\", destination=\"external\"}}")),
        1.0
    );
    assert!(
        count(&format!(
            "picket_inbound_bytes_total{{{ns}, direction=\"in\"}}"
        )) >= 4.0 * 13.0
    );

    // Every dashboard query returns data.
    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/dashboards");
    let mut checked = 0;
    for file in ["picket-pod.json", "picket-namespace.json"] {
        // The control plane's panels: control/tests/coverage.rs.
        let queries = dashboard_queries(&dashboards.join(file), "shop", "api");
        for q in queries.into_iter().filter(|q| !reads_control_plane(q)) {
            let result = prometheus
                .query(&q)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!result.is_empty(), "{file}: no data for {q}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} dashboard queries found");

    // promtool accepts the exposition.
    let (status, text) = http_get(&server.pod.netns, admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
