//! `picket status`, and `reach`/`explain` on the live cluster: the real
//! binary against the test API server.

use std::process::{Command, Output};

use picket_test_support::apiserver::ApiServer;

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
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("enforced: every pod NetworkPolicy concerns has a ready sidecar"),
        "{text}"
    );
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
