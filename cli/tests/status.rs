//! `picket status`, and `reach`/`explain` on the live cluster: the real
//! binary against the test API server.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use picket_state::control::{ControlConfig, ControlMetrics as SidecarMetrics, ControlSource};
use picket_state::{Source as _, StateWriter};
use picket_test_support::apiserver::{ApiServer, Kubelet};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: picket-system}
---
apiVersion: v1
kind: Pod
metadata: {name: picket-control-0, namespace: picket-system, labels: {app.kubernetes.io/name: picket-control}}
spec: {containers: [{name: control}]}
status:
  podIP: 10.0.9.1
  conditions: [{type: Ready, status: "True"}]
  containerStatuses: [{name: control, ready: true, image: c, imageID: c, restartCount: 2}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-lockdown, namespace: shop}
spec: {podSelector: {matchLabels: {app: db}}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app}]}
status: {podIP: 10.0.0.21}
"#;

/// The db pod, which a policy selects: with the sidecar, ready or not.
fn db(ready: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: db, namespace: shop, labels: {{app: db}}}}\n\
         spec: {{containers: [{{name: app}}, {{name: picket-proxy}}]}}\n\
         status: {{podIP: 10.0.0.20, containerStatuses: [\
         {{name: picket-proxy, ready: {ready}, image: p, imageID: p, restartCount: 0}}]}}\n"
    )
}

fn status(kubeconfig: &std::path::Path, format: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_picket"))
        .args(["status", "--format", format, "--kubeconfig"])
        .arg(kubeconfig)
        .output()
        .expect("run picket")
}

#[test]
fn status_names_the_unenforced_pods_and_fails_until_their_sidecar_is_ready() {
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    api.apply(CLUSTER).unwrap();
    api.apply(&db(false)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();

    let out = status(&kubeconfig, "table");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("control plane (picket-system): 1 replicas, 1 ready"),
        "{text}"
    );
    assert!(
        text.contains("picket-control-0  ready  restarts 2"),
        "{text}"
    );
    assert!(text.contains("sidecars: 1 pods run one, 0 ready"), "{text}");
    assert!(text.contains("UNENFORCED: 1 pods"), "{text}");
    assert!(text.contains("shop: 1 of 1: shop/db"), "{text}");

    let out = status(&kubeconfig, "json");
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["unenforced"], 1, "{json}");
    assert_eq!(json["namespaces"][0]["unenforced"][0], "shop/db", "{json}");
    assert_eq!(
        json["control_plane"]["replicas"][0]["ready"], true,
        "{json}"
    );

    api.apply(&db(true)).unwrap();
    let out = status(&kubeconfig, "table");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("enforced: every pod NetworkPolicy concerns has a ready sidecar"),
        "{text}"
    );
    // Every pod is enforced, but this replica is a Pod object with no
    // control plane behind it: what cannot be checked does not pass (the
    // test below passes with a real one).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("CONTROL PLANE UNCHECKED"), "{text}");
}

/// The real control plane, in-process, against `api`; its admin address.
fn start_control_plane(
    runtime: &tokio::runtime::Runtime,
    kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    certs: &picket_test_support::certs::TestCerts,
) -> (SocketAddr, SocketAddr) {
    use picket_control::app::{run_on, Config, CoverageConfig};
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        kubeconfig: Some(kubeconfig.to_path_buf()),
        tls_cert_file: file("tls.crt", &certs.cert_pem),
        tls_key_file: file("tls.key", &certs.key_pem),
        stream: picket_control::service::StreamConfig {
            batch: Duration::from_millis(10),
            stall: Duration::from_secs(60),
            lifetime: Duration::from_secs(3600),
        },
        review_rate: 100.0,
        review_burst: 100.0,
        identity: None,
        coverage: CoverageConfig {
            interval: Duration::from_secs(30),
            repeat: Duration::from_secs(600),
        },
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        tokio::spawn(run_on(config, listener, admin));
        addrs
    })
}

#[test]
fn status_reads_each_replica_through_a_port_forward_connected_sidecars_and_certificate() {
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    api.apply(CLUSTER).unwrap();
    api.apply(&db(true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let certs = picket_test_support::certs::serving_certificate(&["picket-control"]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (listen, admin) = start_control_plane(&runtime, &kubeconfig, dir.path(), &certs);
    // The kubelet's part: the replica's admin port (9991 when its spec
    // names none) on its loopback.
    api.set_kubelet(Kubelet::new(move |ns, pod, port| {
        if (ns, pod, port) != ("picket-system", "picket-control-0", 9991) {
            return Err(std::io::Error::other(format!(
                "no port {port} on {ns}/{pod}"
            )));
        }
        TcpStream::connect(admin)
    }));
    // db's sidecar, connected with its projected token.
    let token_file = dir.path().join("db.token");
    std::fs::write(
        &token_file,
        api.issue_pod_token("shop", "db", &["picket"], Duration::from_secs(3600))
            .unwrap(),
    )
    .unwrap();
    let sidecar = ControlConfig {
        addr: listen.to_string(),
        server_name: "picket-control".into(),
        ca_pem: certs.ca_pem.into_bytes(),
        token_file,
        max_backoff: Duration::from_millis(200),
        outbound: false,
    };
    runtime.block_on(async {
        let (writer, mut view) = StateWriter::new();
        let metrics = SidecarMetrics::new(&prometheus::Registry::new());
        tokio::spawn(ControlSource::new(sidecar, metrics).0.run(writer));
        tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| v.is_some()))
            .await
            .expect("db's first view")
            .unwrap();
    });

    // Acknowledged views leave no lag; poll until the ack is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let out = status(&kubeconfig, "table");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("1 sidecars connected, view lag at most 0.0s") {
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        text.contains("serving certificate expires 4096-01-01"),
        "rcgen's default notAfter: {text}"
    );
    assert!(
        text.contains("sidecars: 1 pods run one, 1 ready, 1 connected to the control plane"),
        "{text}"
    );
    let out = status(&kubeconfig, "json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let replica = &json["control_plane"]["replicas"][0];
    assert_eq!(replica["status"]["sidecars"][0]["pod"], "shop/db", "{json}");
    assert_eq!(
        replica["status"]["serving_certificate"]["not_after_unix"], 67_090_118_400_i64,
        "{json}"
    );

    // A replica that cannot be reached is reported, with the reason.
    api.set_kubelet(Kubelet::new(|_, _, _| {
        Err(std::io::Error::other("connection refused by the test"))
    }));
    let out = status(&kubeconfig, "table");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("    status unknown: ") && text.contains("connection refused by the test"),
        "{text}"
    );
    assert!(
        !text.contains("connected to the control plane"),
        "no replica answered: {text}"
    );
    drop(runtime);
}

#[test]
fn status_without_a_cluster_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = status(&missing, "table");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("picket: "), "{err}");
    assert!(err.contains("nope"), "names the kubeconfig: {err}");
}

#[test]
fn reach_and_explain_on_the_live_cluster_say_what_they_say_on_its_manifests() {
    let bookstore =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/bookstore");
    let api = ApiServer::bind("127.0.0.1:0").unwrap();
    for file in ["namespace.yaml", "pods.yaml", "api-allow.yaml"] {
        api.apply(&std::fs::read_to_string(bookstore.join(file)).unwrap())
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let picket = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_picket"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let kc = kubeconfig.to_str().unwrap();
    let files = bookstore.to_str().unwrap();
    let live = picket(&["reach", "--kubeconfig", kc, "--format", "json"]);
    let manifests = picket(&["reach", "--cluster", files, "--format", "json"]);
    assert_eq!(live, manifests);
    let explain = [
        "explain",
        "--from",
        "bookstore/coffeeshop",
        "--to",
        "bookstore/api",
        "--port",
        "80",
    ];
    let live = picket(&[&explain[..], &["--kubeconfig", kc]].concat());
    let manifests = picket(&[&explain[..], &["--cluster", files]].concat());
    assert_eq!(live, manifests);
    assert!(live.contains("DENIED"), "{live}");
}

#[test]
fn reach_takes_exactly_one_cluster_source() {
    for args in [&["reach"][..], &["reach", "--cluster", "x", "--live"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_picket"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--cluster") && err.contains("--kubeconfig"),
            "{err}"
        );
    }
}
