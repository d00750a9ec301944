//! Shared support of the end-to-end tests: a lab cluster of network-namespace
//! pods whose manifests live in a watched directory, with the real
//! `picket-proxy` as sidecar. Needs root.
#![allow(dead_code)]

pub mod control;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use picket_lab::app::EchoServer;
use picket_lab::proxy::{
    connect_from, install_binary, install_binary_with_capability, run_init, share_dir,
    InstalledBinary, Sidecar,
};
use picket_lab::{self as lab, Lab, LabPod};

/// Every case, a function taking the [`Interception`], runs as two tests:
/// `redirect::CASE` and `tproxy::CASE`.
#[allow(unused_macros)]
macro_rules! in_both_modes {
    ($($case:ident),* $(,)?) => {
        mod redirect {
            $(#[test] fn $case() { super::$case(super::Interception::Redirect) })*
        }
        mod tproxy {
            $(#[test] fn $case() { super::$case(super::Interception::Tproxy) })*
        }
    };
}

pub const APP_PORT: u16 = 8080;
pub const EXCLUDED_PORT: u16 = 9000;
pub const READY: Duration = Duration::from_secs(20);

pub static SERIAL: Mutex<()> = Mutex::new(());

/// A lab pod with its namespace and labels.
pub type PodEntry = (LabPod, String, Vec<(String, String)>);
/// A pod to create: (namespace, name, labels).
pub type PodSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// How the lab's pods intercept inbound connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interception {
    /// nat REDIRECT, the default: the app sees the pod's own address.
    Redirect,
    /// mangle TPROXY: the app sees the client's address; the sidecar runs
    /// a copy of the binary carrying `cap_net_raw+p`, as the image's does.
    Tproxy,
}

impl Interception {
    /// The flags both init and run take for it.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Interception::Redirect => &[],
            Interception::Tproxy => &["--interception", "tproxy"],
        }
    }

    /// The sidecar's own copy of `binary` in tproxy mode, carrying the
    /// image's file capability; none in redirect mode.
    pub fn sidecar_copy(self, binary: &Path) -> Option<InstalledBinary> {
        (self == Interception::Tproxy).then(|| {
            install_binary_with_capability(binary, "cap_net_raw+p")
                .expect("a copy of picket-proxy with cap_net_raw+p")
        })
    }
}

/// A lab cluster: pods on a node, their manifests in a watched directory.
pub struct Cluster {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub binary: InstalledBinary,
    pub pods: BTreeMap<String, PodEntry>,
    /// How servers started by [`Cluster::server_with_init`] intercept.
    pub interception: Interception,
    /// The sidecar's binary in tproxy mode (with its file capability).
    tproxy_binary: Option<InstalledBinary>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// An app pod with its sidecar.
pub struct Server {
    pub echo: EchoServer,
    pub _excluded: EchoServer,
    pub sidecar: Sidecar,
    pub pod: LabPod,
}

pub fn lab_available() -> bool {
    if lab::can_run() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "network-namespace tests are mandatory in CI and need root"
    );
    eprintln!("skipping: network-namespace tests need root");
    false
}

impl Cluster {
    /// Pods as (namespace, name, labels), intercepting with REDIRECT.
    pub fn new(pods: &[PodSpec<'_>]) -> Self {
        Self::new_in(Interception::Redirect, pods)
    }

    /// Pods as (namespace, name, labels), intercepting as `interception` says.
    pub fn new_in(interception: Interception, pods: &[PodSpec<'_>]) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut lab = Lab::new().expect("create the lab node namespace");
        let mut map = BTreeMap::new();
        for (ns, name, labels) in pods {
            let pod = lab.add_pod(name).expect("create a lab pod");
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            map.insert(name.to_string(), (pod, ns.to_string(), labels));
        }
        let binary = Path::new(env!("CARGO_BIN_EXE_picket-proxy"));
        let tproxy_binary = interception.sidecar_copy(binary);
        let cluster = Self {
            lab,
            dir: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            binary: install_binary(binary).unwrap(),
            pods: map,
            interception,
            tproxy_binary,
            _serial: serial,
        };
        cluster.write_pods();
        cluster
    }

    pub fn write_pods(&self) {
        let mut docs = Vec::new();
        for (pod, ns, labels) in self.pods.values() {
            let labels: BTreeMap<_, _> = labels.iter().cloned().collect();
            docs.push(
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod.name, "namespace": ns, "labels": labels},
                    "spec": {"containers": [{"name": "app", "ports": [{"containerPort": APP_PORT, "name": "http"}]}]},
                    "status": {"phase": "Running", "podIP": pod.ip.to_string(), "hostIP": self.lab.host_ip().to_string()},
                })
                .to_string(),
            );
        }
        self.write("pods.yaml", &docs.join("\n---\n"));
    }

    /// Writes a manifest atomically (as editors do: write, then rename).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
        share_dir(self.dir.path()).unwrap();
    }

    pub fn pod(&self, name: &str) -> &LabPod {
        &self.pods[name].0
    }

    /// Runs init in the pod, starts the echo app (and one on the excluded
    /// port), and the sidecar; waits for readiness when `ready`.
    pub fn server(&self, name: &str, cluster_dir: &Path, ready: bool, extra: &[&str]) -> Server {
        let dir = cluster_dir.to_string_lossy();
        let mut args = vec!["--cluster-dir", &*dir];
        args.extend_from_slice(extra);
        self.server_with(name, ready, &args)
    }

    /// The same, with the sidecar's flags (its state source among them) given whole.
    pub fn server_with(&self, name: &str, ready: bool, args: &[&str]) -> Server {
        self.server_with_init(name, ready, &[], args)
    }

    /// A pod whose init also captures its outbound connections, reading
    /// the cluster from the watched directory.
    pub fn start_capturing(&self, name: &str) -> Server {
        let dir = self.dir.path().to_string_lossy();
        self.server_with_init(
            name,
            true,
            &["--outbound-capture", "on"],
            &["--cluster-dir", &dir, "--outbound-capture", "on"],
        )
    }

    /// The same, with more flags for init.
    pub fn server_with_init(
        &self,
        name: &str,
        ready: bool,
        init_args: &[&str],
        args: &[&str],
    ) -> Server {
        let (pod, ns, _) = &self.pods[name];
        let node_file = self.state.path().join(name).join("node");
        let excluded = EXCLUDED_PORT.to_string();
        let host_ip = self.lab.host_ip().to_string();
        let mut init = vec![
            "--node-file",
            node_file.to_str().unwrap(),
            "--exclude-inbound-ports",
            &excluded,
            "--host-ip",
            &host_ip,
        ];
        init.extend_from_slice(init_args);
        init.extend_from_slice(self.interception_args());
        let mut args = args.to_vec();
        args.extend_from_slice(self.interception_args());
        let binary = self.sidecar_binary();
        let out = run_init(&self.binary, pod, &init).unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        share_dir(self.state.path()).unwrap();
        share_dir(node_file.parent().unwrap()).unwrap();
        let echo = EchoServer::start(&pod.netns, SocketAddr::new(pod.ip, APP_PORT)).unwrap();
        let excluded =
            EchoServer::start(&pod.netns, SocketAddr::new(pod.ip, EXCLUDED_PORT)).unwrap();
        let mut sidecar =
            Sidecar::start_with(binary, &self.lab, pod, ns, &node_file, &args).unwrap();
        if ready {
            sidecar.wait_ready(READY).unwrap();
        } else {
            sidecar.wait_listening(READY).unwrap();
        }
        Server {
            echo,
            _excluded: excluded,
            sidecar,
            pod: pod.clone(),
        }
    }

    /// Replaces a server's sidecar with one run with `args` (init's rules
    /// and the app stay); waits until it is ready.
    pub fn restart_sidecar(&self, server: &mut Server, args: &[&str]) {
        let name = server.pod.name.clone();
        let (pod, ns, _) = &self.pods[&name];
        let node_file = self.state.path().join(&name).join("node");
        let mut args = args.to_vec();
        args.extend_from_slice(self.interception_args());
        server.sidecar.terminate().unwrap();
        let _ = server.sidecar.wait_exit(READY);
        server.sidecar =
            Sidecar::start_with(self.sidecar_binary(), &self.lab, pod, ns, &node_file, &args)
                .unwrap();
        server.sidecar.wait_ready(READY).unwrap();
    }

    /// The flags both init and run take for this cluster's interception.
    pub fn interception_args(&self) -> &'static [&'static str] {
        self.interception.args()
    }

    /// The binary sidecars run (in tproxy mode, the copy with its file capability).
    pub fn sidecar_binary(&self) -> &InstalledBinary {
        self.tproxy_binary.as_ref().unwrap_or(&self.binary)
    }

    pub fn start(&self, name: &str) -> Server {
        self.server(name, self.dir.path(), true, &[])
    }

    pub fn connect(&self, from: &str, to: &str, port: u16) -> TcpStream {
        self.try_connect(from, to, port)
            .expect("connect() succeeds: the kernel completes the handshake")
    }

    pub fn try_connect(&self, from: &str, to: &str, port: u16) -> std::io::Result<TcpStream> {
        self.dial(from, SocketAddr::new(self.pod(to).ip, port))
    }

    /// Dials `to` from pod `from`'s namespace, as its app would.
    pub fn dial(&self, from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = connect_from(&self.pod(from).netns, None, to)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    }

    /// Whether a connection from pod `from` to `to` echoes.
    pub fn reaches(&self, from: &str, to: SocketAddr) -> bool {
        self.dial(from, to).is_ok_and(|mut s| echoes(&mut s))
    }

    /// A connection from pod `from` to `to` is reset.
    pub fn assert_reset_at(&self, from: &str, to: SocketAddr) {
        match self.dial(from, to) {
            Ok(mut s) => assert_reset(&mut s),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{from} -> {to}: expected a reset, got {e}"),
        }
    }

    /// Connects and expects a reset: on the first read, or, when the RST wins
    /// the race with the connecting thread's wake-up, already on connect().
    pub fn assert_reset(&self, from: &str, to: &str, port: u16) {
        match self.try_connect(from, to, port) {
            Ok(mut s) => assert_reset(&mut s),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected a reset, got {e}"),
        }
    }
}

pub fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

/// A policy's manifest (see [`policy`]) in audit mode.
pub fn audited(manifest: String) -> String {
    let audited = manifest.replacen(
        "metadata: {",
        "metadata: {annotations: {picket.io/mode: audit}, ",
        1,
    );
    assert_ne!(audited, manifest, "a manifest from `policy`");
    audited
}

/// Sends a line and reads it back.
pub fn echoes(stream: &mut TcpStream) -> bool {
    let msg = b"hello picket\n";
    if stream.write_all(msg).is_err() {
        return false;
    }
    let mut back = [0u8; 13];
    stream.read_exact(&mut back).is_ok() && &back == msg
}

/// The connection must be reset: the first read fails with ECONNRESET (or the
/// write before it, when the RST arrived first and the write consumed the
/// error). A FIN (read returning Ok(0) after a successful write) fails the test.
pub fn assert_reset(stream: &mut TcpStream) {
    if let Err(e) = stream.write_all(b"x") {
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "expected a reset, got {e}"
        );
        return;
    }
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected ECONNRESET, got {other:?}"),
    }
}

/// The sum of a metric's series (those whose line starts with `name`) on a
/// pod's sidecar.
pub fn metric(pod: &LabPod, name: &str) -> f64 {
    let (_, text) =
        picket_lab::proxy::http_get(&pod.netns, SocketAddr::new(pod.ip, 15020), "/metrics")
            .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (blocking, without writing) for the connection to be reset.
pub fn read_reset(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    matches!(stream.read(&mut buf), Err(e) if e.kind() == ErrorKind::ConnectionReset)
}

/// Polls until `f` holds or the deadline passes.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn allowed_now(c: &Cluster, from: &str, to: &str) -> bool {
    c.try_connect(from, to, APP_PORT)
        .is_ok_and(|mut s| echoes(&mut s))
}

pub const ALLOW_CLIENT: &str = "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]}";

pub fn two_pods() -> Cluster {
    two_pods_in(Interception::Redirect)
}

/// The api pod, a client it lets in, and a stranger, intercepting as `interception` says.
pub fn two_pods_in(interception: Interception) -> Cluster {
    Cluster::new_in(
        interception,
        &[
            ("shop", "api", &[("app", "api")]),
            ("shop", "client", &[("role", "client")]),
            ("shop", "stranger", &[("role", "stranger")]),
        ],
    )
}
