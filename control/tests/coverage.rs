//! Coverage through the real control plane (`app::run_on`) against the
//! test API server: a pod a policy selects whose sidecar is not ready shows
//! in `picket_unenforced_pods` on the admin port, and leaves it when its
//! sidecar reports ready. A real Prometheus scrapes the replica as the
//! PodMonitor does (`honorLabels`), and the dashboards' control-plane
//! panels read the same counts (needs the Debian `prometheus` package).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use picket_control::app::{run_on, Config, CoverageConfig};
use picket_control::service::StreamConfig;
use picket_test_support::apiserver::{ApiServer, Kind};
use picket_test_support::prometheus::{
    dashboard_queries, free_loopback_port, http_get, reads_control_plane, Prometheus,
};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-nobody, namespace: shop}
spec: {podSelector: {matchLabels: {app: db}}}
"#;

/// The db pod: it runs the sidecar container; `ready` says whether the
/// container reports ready.
fn db(ready: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: db, namespace: shop, labels: {{app: db}}}}\n\
         spec: {{containers: [{{name: app}}, {{name: picket-proxy}}]}}\n\
         status: {{podIP: 10.0.0.20, podIPs: [{{ip: 10.0.0.20}}], containerStatuses: [\
         {{name: app, ready: true, image: a, imageID: a, restartCount: 0}}, \
         {{name: picket-proxy, ready: {ready}, image: p, imageID: p, restartCount: 0}}]}}\n"
    )
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Polls the admin port's metrics until `line` is in them.
fn wait_for_line(admin: SocketAddr, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = get(admin, "/metrics");
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(api: &ApiServer) -> Vec<serde_json::Value> {
    api.objects(Kind::Event)
}

/// Polls until an Event with `reason` is recorded in shop; returns it.
fn wait_for_event(api: &ApiServer, reason: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = events(api).into_iter().find(|e| e["reason"] == reason) {
            assert_eq!(e["metadata"]["namespace"], "shop");
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event: {:?}",
            events(api)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Prometheus scraping the replica's admin port as
/// `manifests/install/monitoring/control-podmonitor.yaml` does: the
/// replica's own namespace and pod as target labels, `honorLabels` so the
/// metric's `namespace` wins.
fn scrape(admin: SocketAddr) -> Prometheus {
    let listen = free_loopback_port().unwrap();
    Prometheus::start(
        &[],
        listen,
        &format!(
            "- job_name: picket-control\n\
             \x20 honor_labels: true\n\
             \x20 static_configs:\n\
             \x20 - targets: ['{admin}']\n\
             \x20   labels: {{namespace: picket-system, pod: picket-control-0}}\n"
        ),
        Box::new(move |path| http_get(listen, path)),
    )
    .unwrap()
}

/// The dashboards' queries that read the control plane's metrics, for shop.
fn control_plane_panels() -> Vec<String> {
    let dashboards =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/dashboards");
    let panels: Vec<String> = ["picket-pod.json", "picket-namespace.json"]
        .iter()
        .flat_map(|f| dashboard_queries(&dashboards.join(f), "shop", "db"))
        .filter(|q| reads_control_plane(q))
        .collect();
    assert!(
        !panels.is_empty(),
        "no dashboard panel reads the control plane"
    );
    panels
}

/// Polls until every panel's query has the one value `value`.
fn wait_for_panels(prometheus: &Prometheus, panels: &[String], value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for q in panels {
        loop {
            let got = prometheus.query(q);
            let one = got.as_ref().ok().and_then(|r| match r.as_slice() {
                [only] => only["value"][1].as_str()?.parse::<f64>().ok(),
                _ => None,
            });
            if one == Some(value) {
                break;
            }
            assert!(Instant::now() < deadline, "{q}: want {value}, got {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_selected_pod_is_unenforced_until_its_sidecar_is_ready() {
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    api.apply(CLUSTER).unwrap();
    api.apply(&db(false)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let certs = picket_test_support::certs::serving_certificate(&["picket-control"]).unwrap();
    let file = |name: &str, text: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: Some(kubeconfig),
        tls_cert_file: file("tls.crt", &certs.cert_pem),
        tls_key_file: file("tls.key", &certs.key_pem),
        stream: StreamConfig {
            batch: Duration::from_millis(10),
            stall: Duration::from_secs(60),
            lifetime: Duration::from_secs(3600),
        },
        review_rate: 100.0,
        review_burst: 100.0,
        identity: None,
        coverage: CoverageConfig {
            interval: Duration::from_millis(50),
            repeat: Duration::from_secs(600),
        },
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = admin.local_addr().unwrap();
        tokio::spawn(run_on(config, listener, admin));
        addr
    });
    let prometheus = scrape(admin);
    wait_for_line(admin, r#"picket_unenforced_pods{namespace="shop"} 1"#);
    // The namespace dashboard's panel says so too.
    let panels = control_plane_panels();
    wait_for_panels(&prometheus, &panels, 1.0);
    let warning = wait_for_event(&api, "Unenforced");
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["involvedObject"]["kind"], "NetworkPolicy");
    assert_eq!(warning["involvedObject"]["name"], "db-from-nobody");
    assert_eq!(
        warning["message"],
        "selects 1 pod without a ready Picket sidecar: not enforced there (db)"
    );
    api.apply(&db(true)).unwrap();
    wait_for_line(admin, r#"picket_unenforced_pods{namespace="shop"} 0"#);
    wait_for_panels(&prometheus, &panels, 0.0);
    let cleared = wait_for_event(&api, "Enforced");
    assert_eq!(cleared["type"], "Normal");
    // Unchanged, the warning is not repeated within the bound.
    let warnings = events(&api)
        .iter()
        .filter(|e| e["reason"] == "Unenforced")
        .count();
    assert_eq!(warnings, 1);
    drop(runtime);
}
