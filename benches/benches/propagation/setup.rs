//! The bench's lab: a node namespace holding the test API server, a server
//! pod (echo app, `picket-proxy init` rules, the real sidecar watching the
//! API as UID 1337) and two client pods. The proxy dies with the bench (kill
//! on drop and the parent-death signal); namespaces are deleted on drop, on
//! Ctrl-C, or by the next lab's sweep; the API server stops on drop.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use picket_lab::app::EchoServer;
use picket_lab::proxy::{http_get, run_init, share_dir, PROXY_UID};
use picket_lab::{in_netns, Lab, LabPod};
use picket_test_support::apiserver::ApiServer;
use serde_json::json;

use crate::cluster::{self, Generated, Size, APP_PORT, LAB_NAMESPACE};
use picket_benches::procfs;

/// The proxy's admin port (metrics, readiness), on the pod IP.
const ADMIN_PORT: u16 = picket_common::ADMIN_PORT;
/// The proxy's default log filter: info, plus the state commits and re-checks.
pub const PROXY_LOG: &str = "info,picket_proxy::enforce=debug,picket_state=debug";

/// The proxy's pid, for the signal handler.
static PROXY_PID: AtomicU32 = AtomicU32::new(0);
/// The scratch directory, for the signal handler.
static WORK_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its pid (the wrappers exec, so this is the proxy's own).
    pub pid: u32,
}

impl Proc {
    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("picket-proxy exited: {status}");
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        PROXY_PID.store(0, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory (binary, kubeconfig, node file), removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// How the proxy is run, beyond what the sidecar always gets.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Its `PICKET_LOG` filter.
    pub log_filter: String,
    /// More environment variables (e.g. `MALLOC_ARENA_MAX=1`).
    pub env: Vec<(String, String)>,
    /// `picket-control`: the sidecar then streams its view from it (run in
    /// the node namespace) instead of watching the API itself.
    pub control: Option<PathBuf>,
}

/// The control plane's name in its certificate.
const CONTROL_NAME: &str = "picket-control.picket-system.svc";

/// `picket-control` in the node namespace; killed on drop.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    /// Its pid.
    pub pid: u32,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long setting up took.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetupTimes {
    /// Writing every object into the test API server.
    pub load_api: Duration,
    /// From starting the proxy to `/ready`.
    pub ready: Duration,
    /// From starting the proxy to the full object counts in its metrics.
    pub synced: Duration,
    /// The proxy's CPU seconds up to then.
    pub sync_cpu_s: f64,
    /// Average JSON size of a generated pod, in bytes.
    pub pod_json_bytes: usize,
}

/// The whole setup. Field order is drop order: the proxy, the app, the API
/// server, then the namespaces and the scratch directory.
#[derive(Debug)]
pub struct Bench {
    /// The sidecar.
    pub proxy: Proc,
    /// The control plane, when the sidecar streams from it.
    pub control: Option<ControlPlane>,
    /// The app in the server pod.
    pub echo: EchoServer,
    /// The test API server, in the node namespace.
    pub api: ApiServer,
    /// The server pod (app=server).
    pub server: LabPod,
    /// The client pod labelled group=a (forbidden by each round's policy).
    pub client_a: LabPod,
    /// The client pod labelled group=b (still allowed).
    pub client_b: LabPod,
    /// The generated cluster, for the churn.
    pub generated: Generated,
    /// The proxy's log (JSON lines).
    pub log_path: PathBuf,
    /// Setup timings.
    pub times: SetupTimes,
    /// Expected object counts in the proxy: pods, namespaces, policies.
    pub expected: (usize, usize, usize),
    _work: WorkDir,
    _lab: Lab,
}

impl Bench {
    /// Builds the lab, loads the cluster into the API server, starts the
    /// sidecar and waits until it has synced every object.
    pub fn start(
        binary: &Path,
        out_dir: &Path,
        size: Size,
        options: &ProxyOptions,
    ) -> Result<Self> {
        fs::create_dir_all(out_dir)?;
        let work = make_work_dir()?;
        let proxy_bin = work.0.join("bin").join("picket-proxy");
        fs::copy(binary, &proxy_bin)
            .with_context(|| format!("cannot copy {}", binary.display()))?;
        fs::set_permissions(&proxy_bin, fs::Permissions::from_mode(0o755))?;
        let state = work.0.join("state");

        let mut lab = Lab::new().context("cannot create the lab (root and iproute2 needed)")?;
        let server = lab.add_pod("server")?;
        let client_a = lab.add_pod("client-a")?;
        let client_b = lab.add_pod("client-b")?;

        // The API server listens in the node namespace, on the bridge: the
        // pods reach it through their default gateway.
        let gateway = lab.gateway();
        let listener = in_netns(lab.node_netns(), || TcpListener::bind((gateway, 0)))??;
        let api = ApiServer::builder()
            .host(gateway.to_string())
            .start(listener)
            .context("cannot start the test API server")?;
        let kubeconfig = state.join("kubeconfig");
        api.kubeconfig(&kubeconfig)?;

        eprintln!(
            "propagation: writing {} pods, {} namespaces and {} policies to the test API server",
            size.pods, size.namespaces, size.policies
        );
        let started = Instant::now();
        let generated = Generated::new(size);
        let host_ip = lab.host_ip();
        let mut docs = cluster::lab_objects();
        for (pod, labels) in [
            (&server, json!({"app": "server"})),
            (&client_a, json!({"app": "client", "group": "a"})),
            (&client_b, json!({"app": "client", "group": "b"})),
        ] {
            docs.push(cluster::lab_pod(&pod.name, pod.ip, host_ip, labels));
        }
        if options.control.is_some() {
            // The control plane serves only pods that run the sidecar.
            if let Some(containers) = docs
                .iter_mut()
                .find(|d| d["metadata"]["name"] == server.name.as_str())
                .and_then(|d| d["spec"]["containers"].as_array_mut())
            {
                containers.push(json!({"name": "picket-proxy"}));
            }
        }
        let generated_docs = generated.initial_objects();
        let pod_docs: Vec<_> = generated_docs
            .iter()
            .filter(|d| d["kind"] == "Pod")
            .collect();
        let pod_json_bytes =
            pod_docs.iter().map(|d| d.to_string().len()).sum::<usize>() / pod_docs.len().max(1);
        docs.extend(generated_docs);
        cluster::apply_all(&api, &docs)?;
        let load_api = started.elapsed();
        let count = |kind| docs.iter().filter(|d| d["kind"] == kind).count();
        // The API server adds the four namespaces every cluster has.
        let expected = (count("Pod"), count("Namespace") + 4, count("NetworkPolicy"));

        let node_file = state.join("node");
        let out = run_init(
            &proxy_bin,
            &server,
            &["--node-file", node_file.to_str().context("non-UTF-8 path")?],
        )?;
        ensure!(
            out.status.success(),
            "picket-proxy init: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        share_dir(&state)?;
        let echo = EchoServer::start(&server.netns, SocketAddr::new(server.ip, APP_PORT))?;

        let (control, source_args) = match &options.control {
            Some(binary) => {
                let (control, args) =
                    start_control(binary, &lab, &api, &state, &kubeconfig, &server.name)?;
                (Some(control), args)
            }
            None => (
                None,
                vec![
                    "--source".into(),
                    "kube".into(),
                    "--kubeconfig".into(),
                    kubeconfig.into(),
                ],
            ),
        };
        share_dir(&state)?;
        let log_path = out_dir.join("proxy.log");
        eprintln!(
            "propagation: starting the sidecar (log: {})",
            log_path.display()
        );
        let started = Instant::now();
        let proxy = start_proxy(
            &proxy_bin,
            &lab,
            &server,
            node_file.as_path(),
            &source_args,
            &log_path,
            options,
        )?;
        let mut bench = Self {
            proxy,
            control,
            echo,
            api,
            server,
            client_a,
            client_b,
            generated,
            log_path,
            times: SetupTimes {
                load_api,
                pod_json_bytes,
                ..SetupTimes::default()
            },
            expected,
            _work: work,
            _lab: lab,
        };
        bench.wait_synced(started)?;
        Ok(bench)
    }

    /// Waits for `/ready`, then for the proxy's object counts to reach the
    /// cluster's.
    fn wait_synced(&mut self, started: Instant) -> Result<()> {
        let deadline = started + Duration::from_secs(300);
        let admin = SocketAddr::new(self.server.ip, ADMIN_PORT);
        loop {
            self.proxy
                .check_alive()
                .with_context(|| format!("see the proxy's log: {}", self.log_path.display()))?;
            if matches!(http_get(&self.server.netns, admin, "/ready"), Ok((200, _))) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the proxy was not ready in 300 s; see {}",
                self.log_path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.times.ready = started.elapsed();
        if self.control.is_some() {
            // The view is this pod's part of the cluster: what it holds once ready.
            let m = self.metrics()?;
            self.expected = (m.pods as usize, m.namespaces as usize, m.policies as usize);
            self.times.synced = self.times.ready;
            self.times.sync_cpu_s = procfs::cpu_seconds(self.proxy.pid)?;
            return Ok(());
        }
        let (pods, namespaces, policies) = self.expected;
        loop {
            let m = self.metrics()?;
            if m.pods == pods as f64
                && m.namespaces == namespaces as f64
                && m.policies == policies as f64
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the proxy knows {} pods, {} namespaces, {} policies; expected {pods}, {namespaces}, {policies}",
                m.pods,
                m.namespaces,
                m.policies
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.times.synced = started.elapsed();
        self.times.sync_cpu_s = procfs::cpu_seconds(self.proxy.pid)?;
        Ok(())
    }

    /// The proxy's metrics that the bench reads.
    pub fn metrics(&self) -> Result<Metrics> {
        let admin = SocketAddr::new(self.server.ip, ADMIN_PORT);
        let (status, text) = http_get(&self.server.netns, admin, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        let sum = |prefix: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(Metrics {
            pods: sum("picket_state_objects{kind=\"pods\"}"),
            namespaces: sum("picket_state_objects{kind=\"namespaces\"}"),
            policies: sum("picket_state_objects{kind=\"networkpolicies\"}"),
            state_updates: sum("picket_state_updates_total"),
            teardowns: sum("picket_inbound_teardowns_total"),
            watch_restarts: sum("picket_watch_restarts_total"),
            open: sum("picket_inbound_open_connections"),
            commit_age_s: text
                .lines()
                .find(|l| l.starts_with("picket_control_last_commit_timestamp_seconds "))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .filter(|t| *t > 0.0)
                .map(|t| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64();
                    now - t
                }),
        })
    }

    /// The proxy's memory now.
    pub fn memory(&self) -> Result<MemorySample> {
        Ok(MemorySample {
            pss_kib: procfs::pss_kib(self.proxy.pid)?,
            rss_kib: procfs::rss_kib(self.proxy.pid)?,
            hwm_kib: procfs::hwm_kib(self.proxy.pid)?,
            cpu_s: procfs::cpu_seconds(self.proxy.pid)?,
        })
    }

    /// Where clients connect: the app's address, as any client would.
    pub fn app_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.ip, APP_PORT)
    }
}

/// Figures from the proxy's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    /// `picket_state_objects{kind="pods"}`.
    pub pods: f64,
    /// `picket_state_objects{kind="namespaces"}`.
    pub namespaces: f64,
    /// `picket_state_objects{kind="networkpolicies"}`.
    pub policies: f64,
    /// `picket_state_updates_total`.
    pub state_updates: f64,
    /// `picket_inbound_teardowns_total`, all reasons.
    pub teardowns: f64,
    /// `picket_watch_restarts_total`, all kinds.
    pub watch_restarts: f64,
    /// `picket_inbound_open_connections`.
    pub open: f64,
    /// Seconds since the last commit from the control plane (control mode).
    pub commit_age_s: Option<f64>,
}

/// The proxy's memory and CPU at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemorySample {
    /// Proportional set size, KiB.
    pub pss_kib: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far, KiB.
    pub hwm_kib: u64,
    /// CPU seconds so far (user + system).
    pub cpu_s: f64,
}

fn make_work_dir() -> Result<WorkDir> {
    let dir = std::env::temp_dir().join(format!("picket-propagation-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["bin", "state"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    for sub in ["", "bin", "state"] {
        fs::set_permissions(dir.join(sub), fs::Permissions::from_mode(0o755))?;
    }
    *WORK_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
    Ok(WorkDir(dir))
}

/// `ip netns exec NETNS setpriv --reuid 1337 ... --pdeathsig KILL picket-proxy
/// run --source kube ...`, as the injected sidecar runs; every wrapper execs,
/// so the child's pid is the proxy's. Its log (JSON lines) goes to `log`.
fn start_proxy(
    binary: &Path,
    lab: &Lab,
    pod: &LabPod,
    node_file: &Path,
    source_args: &[std::ffi::OsString],
    log: &Path,
    options: &ProxyOptions,
) -> Result<Proc> {
    let log = File::create(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(["setpriv", "--clear-groups", "--pdeathsig", "KILL"])
        .arg(format!("--reuid={PROXY_UID}"))
        .arg(format!("--regid={PROXY_UID}"))
        .arg(binary)
        .arg("run")
        .arg("--node-file")
        .arg(node_file)
        .args(source_args)
        .args(["--log-format", "json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PICKET_LOG", &options.log_filter)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", LAB_NAMESPACE)
        .env("POD_IP", pod.ip.to_string())
        .env("HOST_IP", lab.host_ip().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start picket-proxy (ip netns exec, setpriv)")?;
    let pid = child.id();
    PROXY_PID.store(pid, Ordering::SeqCst);
    let mut proc = Proc { child, pid };
    // Give the wrappers time to exec, then check that this is the proxy.
    for _ in 0..100 {
        proc.check_alive()?;
        if procfs::comm(pid).is_ok_and(|c| c == "picket-proxy") {
            return Ok(proc);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("pid {pid} never became picket-proxy")
}

/// Builds `picket-proxy` in release mode (a no-op when it is up to date) and
/// returns its path; `PICKET_PROXY_BIN` names another binary instead.
pub fn proxy_binary(target: &Path) -> Result<PathBuf> {
    picket_benches::release_binary(target, "picket-proxy", "picket-proxy", "PICKET_PROXY_BIN")
}

/// Starts `picket-control` in the node namespace, listening on the
/// bridge, serving a certificate made here; writes the CA and the server
/// pod's bound token into `state`. Returns it and the sidecar's flags.
fn start_control(
    binary: &Path,
    lab: &Lab,
    api: &ApiServer,
    state: &Path,
    kubeconfig: &Path,
    pod: &str,
) -> Result<(ControlPlane, Vec<std::ffi::OsString>)> {
    let certs = picket_test_support::certs::serving_certificate(&[CONTROL_NAME])?;
    let (ca_file, cert_file, key_file, token_file) = (
        state.join("ca.crt"),
        state.join("tls.crt"),
        state.join("tls.key"),
        state.join("token"),
    );
    fs::write(&ca_file, certs.ca_pem)?;
    fs::write(&cert_file, certs.cert_pem)?;
    fs::write(&key_file, certs.key_pem)?;
    fs::write(
        &token_file,
        api.issue_pod_token(
            LAB_NAMESPACE,
            pod,
            &["picket"],
            Duration::from_secs(24 * 3600),
        )?,
    )?;
    let gateway = lab.gateway();
    let mut child = Command::new("ip")
        .args(["netns", "exec", lab.node_netns()])
        .arg(binary)
        .arg("--listen")
        .arg(format!("{gateway}:0"))
        .arg("--admin")
        .arg(format!("{gateway}:0"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--tls-cert-file")
        .arg(&cert_file)
        .arg("--tls-key-file")
        .arg(&key_file)
        .env("PICKET_LOG", "warn,picket_control::app=info")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start picket-control (ip netns exec)")?;
    let log = child.stderr.take().context("no stderr")?;
    let pid = child.id();
    let control = ControlPlane { child, pid };
    let addrs = picket_test_support::announced::listening_addrs(
        log,
        &["Control plane listening"],
        Duration::from_secs(60),
    )
    .context("picket-control did not say where it listens")?;
    let args = [
        "--source".into(),
        "control".into(),
        "--control-addr".into(),
        addrs[0].to_string().into(),
        "--control-server-name".into(),
        CONTROL_NAME.into(),
        "--control-ca-file".into(),
        ca_file.into(),
        "--control-token-file".into(),
        token_file.into(),
        "--control-max-backoff".into(),
        "1s".into(),
    ];
    Ok((control, args.to_vec()))
}

/// Checks what the bench needs, with a clear message for what is missing.
pub fn preflight() -> Result<()> {
    ensure!(
        picket_lab::can_run(),
        "the propagation benchmark makes network namespaces: run it as root"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        ensure!(found, "{tool} is missing: apt-get install {package}");
    }
    Ok(())
}

/// On SIGINT or SIGTERM: kill the proxy, delete this process's namespaces
/// and the scratch directory, and exit.
pub fn cleanup_on_signal() -> Result<()> {
    picket_lab::on_interrupt(|| {
        eprintln!("propagation: interrupted; cleaning up");
        let pid = PROXY_PID.load(Ordering::SeqCst);
        if pid != 0 {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        picket_lab::emergency_cleanup();
        if let Some(dir) = WORK_DIR.lock().ok().and_then(|d| d.clone()) {
            let _ = fs::remove_dir_all(dir);
        }
    })?;
    Ok(())
}
