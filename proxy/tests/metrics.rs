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
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use picket_lab::proxy::http_get;
use support::*;

const PROMETHEUS_PORT: u16 = 19090;

/// A Prometheus of our own, in the node namespace, killed on drop.
struct Prometheus {
    child: Child,
    netns: String,
    _data: tempfile::TempDir,
}

impl Prometheus {
    fn start(netns: &str, target: SocketAddr) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: picket\n\
                 \x20 static_configs:\n\
                 \x20 - targets: ['{target}']\n\
                 \x20   labels: {{namespace: shop, pod: api}}\n"
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("run prometheus (apt-get install prometheus)");
        Self {
            child,
            netns: netns.to_string(),
            _data: data,
        }
    }

    /// Runs an instant query; returns the result vector.
    fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let addr: SocketAddr = format!("127.0.0.1:{PROMETHEUS_PORT}").parse().unwrap();
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = http_get(&self.netns, addr, &path).map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("{promql}: HTTP {status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value of a query, if it has one.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` in a dashboard, with Grafana's variables substituted.
fn dashboard_queries(file: &Path) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_string());
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&json, &mut out);
    out.into_iter()
        .map(|q| {
            q.replace("$namespace", "shop")
                .replace("$pod", "api")
                .replace("$__rate_interval", "20s")
                .replace("$__range", "5m")
        })
        .collect()
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
    let prometheus = Prometheus::start(c.lab.node_netns(), admin);

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
        for q in dashboard_queries(&dashboards.join(file)) {
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
