//! The control plane in the lab: the test API server and `picket-control`
//! in the node's namespace, and the flags that point a sidecar at them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use picket_control::app::{run_on, Config, CoverageConfig, IdentityConfig};
use picket_control::service::StreamConfig;
use picket_lab::proxy::share_dir;
use picket_test_support::apiserver::ApiServer;

use super::*;

pub const SERVER_NAME: &str = "picket-control.picket-system.svc";
pub const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

/// `picket-control` on a thread inside the node's namespace; stopped on drop.
pub struct ControlPlane {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ControlPlane {
    /// Starts it on `addr` (port 0: any), serving with the files in `tls`.
    fn start(
        netns: &str,
        addr: SocketAddr,
        kubeconfig: PathBuf,
        tls: (PathBuf, PathBuf),
        identity: Option<IdentityConfig>,
    ) -> (Self, SocketAddr) {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = picket_lab::spawn_in_netns(netns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                let admin = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                    .await
                    .unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                let config = Config {
                    listen: addr,
                    admin: addr,
                    kubeconfig: Some(kubeconfig),
                    tls_cert_file: tls.0,
                    tls_key_file: tls.1,
                    stream: StreamConfig {
                        batch: Duration::from_millis(10),
                        stall: Duration::from_secs(60),
                        lifetime: Duration::from_secs(3600),
                    },
                    review_rate: 100.0,
                    review_burst: 200.0,
                    identity,
                    coverage: CoverageConfig {
                        interval: Duration::from_secs(30),
                        repeat: Duration::from_secs(600),
                    },
                };
                tokio::select! {
                    ended = run_on(config, listener, admin) => ended.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime closes every socket of the control plane.
        })
        .unwrap();
        let bound = bound_rx
            .recv_timeout(READY)
            .expect("the control plane binds");
        (
            Self {
                stop: Some(stop),
                thread: Some(thread),
            },
            bound,
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A CA and a serving certificate for [`SERVER_NAME`], as PEM files in `dir`.
fn certificates(dir: &std::path::Path) -> (PathBuf, (PathBuf, PathBuf)) {
    let certs = picket_test_support::certs::serving_certificate(&[SERVER_NAME]).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        write("ca.crt", certs.ca_pem),
        (
            write("tls.crt", certs.cert_pem),
            write("tls.key", certs.key_pem),
        ),
    )
}

/// The test API server in the node's namespace, the control plane's files,
/// and the flags that point a sidecar at it.
pub struct Setup {
    pub api: ApiServer,
    pub node: String,
    pub gateway: std::net::IpAddr,
    pub kubeconfig: PathBuf,
    pub ca: PathBuf,
    pub tls: (PathBuf, PathBuf),
    /// The mesh CA the control plane signs with (see [`Setup::with_mesh`]).
    pub identity: Option<IdentityConfig>,
}

impl Setup {
    /// The API server, with the namespace `shop`.
    pub fn new(c: &Cluster) -> Self {
        let gateway = c.lab.gateway();
        let node = c.lab.node_netns().to_string();
        let listener = picket_lab::in_netns(&node, || std::net::TcpListener::bind((gateway, 0)))
            .unwrap()
            .unwrap();
        let api = ApiServer::builder()
            .host(gateway.to_string())
            .start(listener)
            .unwrap();
        let dir = c.state.path();
        let kubeconfig = dir.join("kubeconfig");
        api.kubeconfig(&kubeconfig).unwrap();
        api.apply(NS).unwrap();
        let (ca, tls) = certificates(dir);
        Self {
            api,
            node,
            gateway,
            kubeconfig,
            ca,
            tls,
            identity: None,
        }
    }

    /// The control plane is the mesh's CA: a new root (its own issuer),
    /// issuing certificates valid for `lifetime`, its files read again every
    /// half second. The anchors' PEM file (the root, to begin with).
    pub fn with_mesh(&mut self, dir: &std::path::Path, lifetime: Duration) -> PathBuf {
        let root = picket_test_support::certs::TestCa::root("picket-mesh-root").unwrap();
        let cert = dir.join("mesh-issuer.crt");
        let key = dir.join("mesh-issuer.key");
        let anchors = dir.join("mesh-anchors.pem");
        std::fs::write(&cert, &root.cert_pem).unwrap();
        std::fs::write(&key, &root.key_pem).unwrap();
        std::fs::write(&anchors, &root.cert_pem).unwrap();
        self.identity = Some(IdentityConfig {
            issuer_cert_file: cert,
            issuer_key_file: key,
            trust_anchors_file: anchors.clone(),
            trust_domain: "cluster.local".into(),
            lifetime,
            reload: Duration::from_millis(500),
        });
        anchors
    }

    /// Starts `picket-control` on `addr` (port 0: any).
    pub fn start_plane(&self, port: u16) -> (ControlPlane, SocketAddr) {
        ControlPlane::start(
            &self.node,
            SocketAddr::new(self.gateway, port),
            self.kubeconfig.clone(),
            self.tls.clone(),
            self.identity.clone(),
        )
    }

    /// The flags of `pod`'s sidecar for the control plane at `addr`, with
    /// a token bound to the pod.
    pub fn sidecar_args(&self, c: &Cluster, pod: &str, addr: SocketAddr) -> Vec<String> {
        let dir = c.state.path();
        let token = dir.join(format!("{pod}.token"));
        let issued = self
            .api
            .issue_pod_token("shop", pod, &["picket"], Duration::from_secs(3600))
            .unwrap();
        std::fs::write(&token, issued).unwrap();
        share_dir(dir).unwrap();
        [
            "--source",
            "control",
            "--control-addr",
            &addr.to_string(),
            "--control-server-name",
            SERVER_NAME,
            "--control-ca-file",
            &self.ca.to_string_lossy(),
            "--control-token-file",
            &token.to_string_lossy(),
            "--control-max-backoff",
            "500ms",
            "--state-wait",
            "300ms",
        ]
        .map(String::from)
        .to_vec()
    }
}

pub fn apply_pod(c: &Cluster, api: &ApiServer, name: &str, sidecar: bool) {
    apply_pod_annotated(c, api, name, sidecar, &[]);
}

/// The lab pod `name` as a Pod through the API, with these annotations;
/// its sidecar container when `sidecar`.
pub fn apply_pod_annotated(
    c: &Cluster,
    api: &ApiServer,
    name: &str,
    sidecar: bool,
    annotations: &[(&str, &str)],
) {
    let (pod, ns, labels) = &c.pods[name];
    let labels: std::collections::BTreeMap<_, _> = labels.iter().cloned().collect();
    let annotations: std::collections::BTreeMap<_, _> = annotations.iter().copied().collect();
    let mut containers = vec![
        serde_json::json!({"name": "app", "ports": [{"containerPort": APP_PORT, "name": "http"}]}),
    ];
    if sidecar {
        containers.push(serde_json::json!({"name": "picket-proxy"}));
    }
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"containers": containers},
        "status": {"phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{"ip": pod.ip.to_string()}],
                   "hostIP": c.lab.host_ip().to_string()},
    });
    api.apply(&doc.to_string()).unwrap();
}
