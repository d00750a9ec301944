//! End to end: network namespaces as pods, the real `picket-proxy init`
//! writing real iptables rules, the real `picket-proxy run` as its own UID,
//! and a real echo server as the app. Needs root (CI runs as root); the tests
//! run one at a time (see .config/nextest.toml).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use picket::lab::app::EchoServer;
use picket::lab::proxy::{connect_from, http_get, install_binary, run_init, share_dir, Sidecar};
use picket::lab::{self, Lab, LabPod};

const APP_PORT: u16 = 8080;
const EXCLUDED_PORT: u16 = 9000;
const READY: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

/// A lab pod with its namespace and labels.
type PodEntry = (LabPod, String, Vec<(String, String)>);
/// A pod to create: (namespace, name, labels).
type PodSpec<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// A lab cluster: pods on a node, their manifests in a watched directory.
struct Cluster {
    lab: Lab,
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    binary: PathBuf,
    pods: BTreeMap<String, PodEntry>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// An app pod with its sidecar.
struct Server {
    echo: EchoServer,
    _excluded: EchoServer,
    sidecar: Sidecar,
    pod: LabPod,
}

fn lab_available() -> bool {
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
    /// Pods as (namespace, name, labels).
    fn new(pods: &[PodSpec<'_>]) -> Self {
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
        let cluster = Self {
            lab,
            dir: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            binary: install_binary(Path::new(env!("CARGO_BIN_EXE_picket-proxy"))).unwrap(),
            pods: map,
            _serial: serial,
        };
        cluster.write_pods();
        cluster
    }

    fn write_pods(&self) {
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
    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
        share_dir(self.dir.path()).unwrap();
    }

    fn pod(&self, name: &str) -> &LabPod {
        &self.pods[name].0
    }

    /// Runs init in the pod, starts the echo app (and one on the excluded
    /// port), and the sidecar; waits for readiness when `ready`.
    fn server(&self, name: &str, cluster_dir: &Path, ready: bool, extra: &[&str]) -> Server {
        let (pod, ns, _) = &self.pods[name];
        let node_file = self.state.path().join(name).join("node");
        let excluded = EXCLUDED_PORT.to_string();
        let out = run_init(
            &self.binary,
            pod,
            &[
                "--node-file",
                node_file.to_str().unwrap(),
                "--exclude-inbound-ports",
                &excluded,
            ],
        )
        .unwrap();
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
        let mut sidecar = Sidecar::start(
            &self.binary,
            &self.lab,
            pod,
            ns,
            cluster_dir,
            &node_file,
            extra,
        )
        .unwrap();
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

    fn start(&self, name: &str) -> Server {
        self.server(name, self.dir.path(), true, &[])
    }

    fn connect(&self, from: &str, to: &str, port: u16) -> TcpStream {
        self.try_connect(from, to, port)
            .expect("connect() succeeds: the kernel completes the handshake")
    }

    fn try_connect(&self, from: &str, to: &str, port: u16) -> std::io::Result<TcpStream> {
        let stream = connect_from(
            &self.pod(from).netns,
            None,
            SocketAddr::new(self.pod(to).ip, port),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(stream)
    }

    /// Connects and expects a reset: on the first read, or, when the RST wins
    /// the race with the connecting thread's wake-up, already on connect().
    fn assert_reset(&self, from: &str, to: &str, port: u16) {
        match self.try_connect(from, to, port) {
            Ok(mut s) => assert_reset(&mut s),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected a reset, got {e}"),
        }
    }
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

/// Sends a line and reads it back.
fn echoes(stream: &mut TcpStream) -> bool {
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
fn assert_reset(stream: &mut TcpStream) {
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

/// Polls until `f` holds or the deadline passes.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn allowed_now(c: &Cluster, from: &str, to: &str) -> bool {
    c.try_connect(from, to, APP_PORT)
        .is_ok_and(|mut s| echoes(&mut s))
}

const ALLOW_CLIENT: &str = "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]}";

fn two_pods() -> Cluster {
    Cluster::new(&[
        ("shop", "api", &[("app", "api")]),
        ("shop", "client", &[("role", "client")]),
        ("shop", "stranger", &[("role", "stranger")]),
    ])
}

#[test]
fn allowed_peer_echoes_half_closes_and_moves_100_mib() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");

    let mut s = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut s));

    // Half-close: the app sees EOF while the reply still flows back.
    let mut s = c.connect("client", "api", APP_PORT);
    s.write_all(b"last words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"last words");

    // 100 MiB each way, checksummed.
    let s = c.connect("client", "api", APP_PORT);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = s.try_clone().unwrap();
    const TOTAL: usize = 100 << 20;
    let sender = std::thread::spawn(move || {
        let mut sum = 0u64;
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        while sent < TOTAL {
            for (i, b) in block.iter_mut().enumerate() {
                *b = ((sent + i) * 31 % 251) as u8;
            }
            sum = block
                .iter()
                .fold(sum, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as u64));
            writer.write_all(&block).unwrap();
            sent += block.len();
        }
        writer.shutdown(Shutdown::Write).unwrap();
        sum
    });
    let mut reader = s;
    let mut sum = 0u64;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum = buf[..n]
            .iter()
            .fold(sum, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as u64));
        received += n;
    }
    assert_eq!(received, TOTAL);
    assert_eq!(sum, sender.join().unwrap(), "the bytes came back intact");
    assert_eq!(server.echo.accepted(), 3);
}

#[test]
fn denied_peer_reads_econnreset_and_the_app_never_accepts() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");
    for _ in 0..3 {
        c.assert_reset("stranger", "api", APP_PORT);
    }
    assert_eq!(
        server.echo.accepted(),
        0,
        "no byte and no connection reached the app"
    );
}

#[test]
fn bookstore_api_accepts_bookstore_and_inventory_and_resets_the_rest() {
    if !lab_available() {
        return;
    }
    let c = Cluster::new(&[
        ("bookstore", "api", &[("app", "bookstore"), ("role", "api")]),
        (
            "bookstore",
            "frontend",
            &[("app", "bookstore"), ("role", "frontend")],
        ),
        ("bookstore", "inventory", &[("app", "inventory")]),
        ("bookstore", "coffeeshop", &[("app", "coffeeshop")]),
    ]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples/bookstore/api-allow.yaml");
    c.write("api-allow.yaml", &std::fs::read_to_string(example).unwrap());
    let server = c.start("api");
    assert!(allowed_now(&c, "frontend", "api"));
    assert!(allowed_now(&c, "inventory", "api"));
    c.assert_reset("coffeeshop", "api", APP_PORT);
    assert_eq!(server.echo.accepted(), 2);
}

#[test]
fn a_policy_change_tears_down_live_connections_it_forbids_and_only_those() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));

    // A change that still allows it: add a policy letting the stranger in too.
    c.write(
        "more.yaml",
        &policy("shop", "allow-stranger", "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: stranger}}}]}]}"),
    );
    eventually("the stranger to be allowed", READY, || {
        allowed_now(&c, "stranger", "api")
    });
    assert!(
        echoes(&mut live),
        "a change that still allows it leaves it untouched"
    );

    // A change that forbids it: the client and the app both read ECONNRESET.
    let resets_before = server.echo.resets();
    c.write(
        "policy.yaml",
        &policy(
            "shop",
            "allow-client",
            "{podSelector: {matchLabels: {app: api}}, ingress: []}",
        ),
    );
    let mut buf = [0u8; 8];
    match live.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the live connection must be reset, got {other:?}"),
    }
    eventually("the app to see the reset", Duration::from_secs(5), || {
        server.echo.resets() > resets_before
    });
    c.assert_reset("client", "api", APP_PORT);
}

#[test]
fn egress_policy_of_the_source_is_enforced_at_the_destination() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    c.write(
        "egress.yaml",
        &policy("shop", "client-egress", "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]}"),
    );
    let server = c.start("api");
    c.assert_reset("client", "api", APP_PORT);
    assert!(
        allowed_now(&c, "stranger", "api"),
        "a pod without egress policy is allowed"
    );
    assert_eq!(server.echo.accepted(), 1);
}

#[test]
fn node_traffic_excluded_ports_and_the_proxys_own_port() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    c.write(
        "deny.yaml",
        &policy("shop", "deny-all", "{podSelector: {}}"),
    );
    let server = c.start("api");
    let api = SocketAddr::new(server.pod.ip, APP_PORT);

    // From the node: its hostIP, and the gateway (the bridge).
    for source in [c.lab.host_ip(), c.lab.gateway()] {
        let mut s = connect_from(c.lab.node_netns(), Some(source), api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(echoes(&mut s), "node traffic from {source} is allowed");
    }
    // A pod is still denied.
    c.assert_reset("client", "api", APP_PORT);

    // The excluded port bypasses the proxy entirely.
    let mut s = c.connect("client", "api", EXCLUDED_PORT);
    assert!(echoes(&mut s));

    // The proxy's own inbound port: reset at once, no loop.
    let before = server.echo.accepted();
    c.assert_reset("client", "api", server.sidecar.inbound_port());
    let (status, body) = http_get(
        &server.pod.netns,
        SocketAddr::new(server.pod.ip, 15020),
        "/ready",
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let local: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    let (_, conns) = http_get(&server.pod.netns, local, "/connections").unwrap();
    assert_eq!(conns.trim(), "[]", "no connection is left looping");
    assert_eq!(
        server.echo.accepted(),
        before,
        "the own-port connection never reached the app"
    );
    assert_eq!(before, 2, "only the two node connections reached the app");
}

#[test]
fn fail_closed_without_state_and_on_a_half_written_file() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    let later = c.state.path().join("cluster-later");
    let server = c.server("api", &later, false, &["--state-wait", "200ms"]);
    let (status, _) = http_get(
        &server.pod.netns,
        SocketAddr::new(server.pod.ip, 15020),
        "/ready",
    )
    .unwrap();
    assert_eq!(status, 503, "not ready before the state exists");
    c.assert_reset("client", "api", APP_PORT);
    assert_eq!(server.echo.accepted(), 0);

    // The state arrives: a deny-all and an allowance for the client.
    std::fs::create_dir(&later).unwrap();
    std::fs::copy(c.dir.path().join("pods.yaml"), later.join("pods.yaml")).unwrap();
    let deny = policy("shop", "deny-all", "{podSelector: {}}");
    std::fs::write(later.join("deny.yaml"), &deny).unwrap();
    std::fs::write(
        later.join("allow.yaml"),
        policy("shop", "allow-client", ALLOW_CLIENT),
    )
    .unwrap();
    share_dir(&later).unwrap();
    eventually("the client to be allowed", READY, || {
        allowed_now(&c, "client", "api")
    });
    c.assert_reset("stranger", "api", APP_PORT);

    // A half-written deny-all, then a marker change: the deny-all must hold.
    std::fs::write(later.join("deny.yaml"), &deny[..deny.len() / 2]).unwrap();
    std::fs::write(
        later.join("allow.yaml"),
        policy(
            "shop",
            "allow-client",
            "{podSelector: {matchLabels: {app: api}}, ingress: []}",
        ),
    )
    .unwrap();
    share_dir(&later).unwrap();
    eventually("the marker change to apply", READY, || {
        !allowed_now(&c, "client", "api")
    });
    c.assert_reset("stranger", "api", APP_PORT);
}

#[test]
fn init_is_idempotent_and_names_what_is_missing() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    let pod = c.pod("api");
    let node_file = c.state.path().join("node");
    for _ in 0..2 {
        let out = run_init(
            &c.binary,
            pod,
            &["--node-file", node_file.to_str().unwrap()],
        )
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let save = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns, "iptables-save", "-t", "nat"])
        .output()
        .unwrap();
    let rules = String::from_utf8(save.stdout).unwrap();
    assert_eq!(
        rules.matches("-j PICKET_INBOUND").count(),
        1,
        "one jump:\n{rules}"
    );
    assert_eq!(
        rules.matches("REDIRECT").count(),
        1,
        "one redirect:\n{rules}"
    );
    let recorded = std::fs::read_to_string(&node_file).unwrap();
    assert_eq!(recorded.trim(), c.lab.gateway().to_string());

    // Without CAP_NET_ADMIN: one clear line.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.netns,
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
        ])
        .arg(&c.binary)
        .args(["init", "--node-file", "/tmp/never"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing capability CAP_NET_ADMIN"), "{err}");

    // --dry-run prints the rules and changes nothing.
    let out = run_init(&c.binary, pod, &["--dry-run"]).unwrap();
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("REDIRECT --to-ports 15006"));
    let _: IpAddr = c.lab.host_ip();
}
