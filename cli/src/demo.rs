//! `picket demo`: the seed's bookstore example as real network-namespace pods
//! with sidecars, a truth table of real connection attempts, a policy
//! change that tears down a live connection, and an egress policy enforced
//! at the source (toward pods and toward the internet). Needs root,
//! iproute2, iptables.
//!
//! The sidecars are the real `picket-proxy` binary: the one beside this
//! binary (cargo builds both into the same directory), or `--proxy PATH`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use picket_lab::app::EchoServer;
use picket_lab::proxy::{connect_from, install_binary, run_init, share_dir, Sidecar};
use picket_lab::{self as lab, Lab, LabPod};
use picket_policy::{NodeAddrs, ObjectKey, Protocol};
use picket_state::files::parse_manifest;

const NAMESPACE: &str = "bookstore";
const PORT: u16 = 80;
const PODS_YAML: &str = include_str!("../../manifests/examples/bookstore/pods.yaml");
const POLICY_YAML: &str = include_str!("../../manifests/examples/bookstore/api-allow.yaml");
/// The change the demo applies: only inventory may reach the API any more.
const CHANGED_POLICY_YAML: &str = "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: api-allow
  namespace: bookstore
spec:
  podSelector:
    matchLabels: {app: bookstore, role: api}
  ingress:
  - from:
      - podSelector:
          matchLabels: {app: inventory}
";

/// The egress act: the frontend may reach the API and nothing else.
const FRONTEND_EGRESS_YAML: &str = "kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata:
  name: frontend-egress
  namespace: bookstore
spec:
  podSelector:
    matchLabels: {app: bookstore, role: frontend}
  policyTypes: [Egress]
  egress:
  - to:
      - podSelector:
          matchLabels: {app: bookstore, role: api}
";

struct DemoPod {
    lab: LabPod,
    labels: BTreeMap<String, String>,
    _app: EchoServer,
    _sidecar: Sidecar,
}

/// Runs the demo; returns what to print last (the cleanup line).
/// `proxy` is the `picket-proxy` binary to run; default: the one beside this binary.
pub fn run(out: &mut dyn Write, proxy: Option<&Path>) -> anyhow::Result<()> {
    let this = std::env::current_exe().context("cannot find this binary")?;
    if !lab::can_run() {
        bail!(
            "picket demo builds network namespaces and iptables rules, so it needs root: run it as root, for example `sudo {}`",
            [this.display().to_string(), "demo".into()].join(" ")
        );
    }
    let proxy = match proxy {
        Some(path) => path.to_path_buf(),
        None => this.with_file_name("picket-proxy"),
    };
    if !proxy.is_file() {
        bail!(
            "picket demo runs the real sidecar, and {} is not there: build it with `cargo build --release -p picket-proxy` (or pass --proxy PATH)",
            proxy.display()
        );
    }
    for tool in ["ip", "setpriv", "iptables-restore"] {
        if !on_path(tool) {
            bail!("picket demo needs `{tool}` (install iproute2, util-linux and iptables)");
        }
    }
    lab::on_interrupt(|| {
        lab::emergency_cleanup();
        eprintln!("\npicket demo: interrupted; namespaces and sidecars removed");
    })?;
    lab::proxy::set_quiet(true);

    let started = Instant::now();
    let binary = install_binary(&proxy)?;
    let example = parse_manifest(Path::new("pods.yaml"), PODS_YAML)?;
    let mut lab = Lab::new().context("cannot create the lab's node namespace")?;
    let cluster_dir = tempfile::Builder::new().prefix("picket-demo").tempdir()?;
    let state_dir = tempfile::Builder::new()
        .prefix("picket-demo-state")
        .tempdir()?;

    writeln!(
        out,
        "Picket demo: the seed's bookstore example, as real pods with real sidecars"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  node      bridge {} (the pods' gateway), hostIP {}",
        lab.gateway(),
        lab.host_ip()
    )?;
    let mut labs = Vec::new();
    for pod in &example.pods {
        let lab_pod = lab.add_pod(&pod.key.name)?;
        let labels: Vec<String> = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(
            out,
            "  pod       {:<22} {:<13} {}",
            pod.key.to_string(),
            lab_pod.ip.to_string(),
            labels.join(",")
        )?;
        labs.push((lab_pod, pod.labels.clone()));
    }
    writeln!(
        out,
        "  policy    bookstore/api-allow: app=bookstore or app=inventory may reach app=bookstore,role=api"
    )?;
    writeln!(out)?;

    write_cluster(cluster_dir.path(), &lab, &labs, POLICY_YAML)?;
    let mut pods = BTreeMap::new();
    for (lab_pod, labels) in labs {
        let node_file = state_dir.path().join(&lab_pod.name).join("node");
        let host_ip = lab.host_ip().to_string();
        let init = run_init(
            &binary,
            &lab_pod,
            &[
                "--node-file",
                &node_file.to_string_lossy(),
                "--host-ip",
                &host_ip,
                "--outbound-capture",
                "on",
            ],
        )?;
        if !init.status.success() {
            bail!(
                "picket-proxy init failed in {}: {}",
                lab_pod.name,
                String::from_utf8_lossy(&init.stderr).trim()
            );
        }
        share_dir(state_dir.path())?;
        share_dir(node_file.parent().unwrap_or(state_dir.path()))?;
        let app = EchoServer::start(&lab_pod.netns, SocketAddr::new(lab_pod.ip, PORT))?;
        let mut sidecar = Sidecar::start(
            &binary,
            &lab,
            &lab_pod,
            NAMESPACE,
            cluster_dir.path(),
            &node_file,
            &["--workers", "1", "--outbound-capture", "on"],
        )?;
        sidecar.wait_ready(Duration::from_secs(20))?;
        pods.insert(
            lab_pod.name.clone(),
            DemoPod {
                lab: lab_pod,
                labels,
                _app: app,
                _sidecar: sidecar,
            },
        );
    }
    writeln!(
        out,
        "{} pods up, each with `picket-proxy init` (iptables: inbound and outbound capture) and `picket-proxy run` (uid {}).",
        pods.len(),
        lab::proxy::PROXY_UID
    )?;
    writeln!(out)?;

    let table = probe_all(&pods)?;
    write!(
        out,
        "{}",
        render(&pods, &table, "Real connections to port 80")
    )?;
    check_against_engine(out, cluster_dir.path(), &table)?;

    // A live connection, then the policy change.
    let mut live = connect(&pods["frontend"], &pods["api"])?;
    if !echoes(&mut live) {
        bail!("the live connection frontend -> api does not echo");
    }
    writeln!(out)?;
    writeln!(
        out,
        "A live connection bookstore/frontend -> bookstore/api is open and echoing."
    )?;
    writeln!(
        out,
        "Applying a policy change: api-allow now admits only app=inventory ..."
    )?;
    let changed_at = Instant::now();
    write_cluster(
        cluster_dir.path(),
        &lab,
        &pods_labels(&pods),
        CHANGED_POLICY_YAML,
    )?;
    live.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 16];
    match live.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => writeln!(
            out,
            "  ✓ the live connection was torn down {} ms after the file changed (the client read ECONNRESET)",
            changed_at.elapsed().as_millis()
        )?,
        other => bail!("the live connection was not torn down: {other:?}"),
    }
    writeln!(out)?;
    let after = probe_all(&pods)?;
    write!(
        out,
        "{}",
        render(&pods, &after, "Real connections after the change")
    )?;
    check_against_engine(out, cluster_dir.path(), &after)?;

    // Egress, at the source: toward the other pods and toward the internet.
    let internet = lab.add_external(10)?;
    let outside = EchoServer::start(lab.node_netns(), SocketAddr::new(internet, PORT))?;
    writeln!(out)?;
    writeln!(
        out,
        "An address outside the cluster, {internet} (\"the internet\"), answers on port {PORT}."
    )?;
    writeln!(
        out,
        "Applying bookstore/frontend-egress (the frontend may reach the API and nothing else), with api-allow as it first was ..."
    )?;
    write_cluster_with(
        cluster_dir.path(),
        &lab,
        &pods_labels(&pods),
        &[POLICY_YAML, FRONTEND_EGRESS_YAML],
    )?;
    let frontend = &pods["frontend"];
    let to_internet = |pod: &DemoPod| {
        connect_from(&pod.lab.netns, None, SocketAddr::new(internet, PORT)).is_ok_and(|mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            echoes(&mut s)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while to_internet(frontend) {
        if Instant::now() > deadline {
            bail!("the frontend still reaches {internet} after its egress policy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let egress = probe_all(&pods)?;
    write!(
        out,
        "{}",
        render(&pods, &egress, "Real connections with the egress policy")
    )?;
    check_against_engine(out, cluster_dir.path(), &egress)?;
    let reached_before = outside.accepted();
    let from_frontend = to_internet(frontend);
    let others = ["coffeeshop", "inventory"].map(|name| to_internet(&pods[name]));
    writeln!(
        out,
        "  to {internet}: frontend {} (reset by its own sidecar: the egress is enforced at the source); coffeeshop {}, inventory {}",
        mark(from_frontend),
        mark(others[0]),
        mark(others[1]),
    )?;
    if from_frontend || others != [true, true] || outside.accepted() != reached_before + 2 {
        bail!("the other pods do not reach {internet} as they should");
    }

    drop(pods);
    drop(lab);
    writeln!(out)?;
    writeln!(
        out,
        "Cleaned up: namespaces, iptables rules and sidecars removed ({:.1} s in all).",
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

type Table = BTreeMap<(String, String), bool>;

fn pods_labels(pods: &BTreeMap<String, DemoPod>) -> Vec<(LabPod, BTreeMap<String, String>)> {
    pods.values()
        .map(|p| (p.lab.clone(), p.labels.clone()))
        .collect()
}

fn write_cluster(
    dir: &Path,
    lab: &Lab,
    pods: &[(LabPod, BTreeMap<String, String>)],
    policy: &str,
) -> anyhow::Result<()> {
    write_cluster_with(dir, lab, pods, &[policy])
}

/// The namespace, the pods and these policies, each file replaced atomically.
fn write_cluster_with(
    dir: &Path,
    lab: &Lab,
    pods: &[(LabPod, BTreeMap<String, String>)],
    policies: &[&str],
) -> anyhow::Result<()> {
    let mut docs = vec![format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
    )];
    for (pod, labels) in pods {
        docs.push(
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": NAMESPACE, "labels": labels},
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": PORT, "name": "http"}]}]},
                "status": {"phase": "Running", "podIP": pod.ip.to_string(), "hostIP": lab.host_ip().to_string()},
            })
            .to_string(),
        );
    }
    for (name, text) in [
        ("cluster.yaml", docs.join("\n---\n")),
        ("policies.yaml", policies.join("\n---\n")),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    share_dir(dir)?;
    Ok(())
}

fn connect(from: &DemoPod, to: &DemoPod) -> std::io::Result<TcpStream> {
    let stream = connect_from(&from.lab.netns, None, SocketAddr::new(to.lab.ip, PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn echoes(stream: &mut TcpStream) -> bool {
    let msg = b"GET /books";
    let mut back = [0u8; 10];
    stream.write_all(msg).is_ok() && stream.read_exact(&mut back).is_ok() && &back == msg
}

fn probe_all(pods: &BTreeMap<String, DemoPod>) -> anyhow::Result<Table> {
    let mut table = Table::new();
    for from in pods.values() {
        for to in pods.values() {
            let allowed = connect(from, to).is_ok_and(|mut s| echoes(&mut s));
            table.insert((from.lab.name.clone(), to.lab.name.clone()), allowed);
        }
    }
    Ok(table)
}

fn render(pods: &BTreeMap<String, DemoPod>, table: &Table, title: &str) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{title} (rows: from, columns: to; ✓ echoed, ✗ reset by the sidecar):"
    );
    let _ = write!(text, "  {:<12}", "");
    for to in pods.keys() {
        let _ = write!(text, "{to:>12}");
    }
    text.push('\n');
    for from in pods.keys() {
        let _ = write!(text, "  {from:<12}");
        for to in pods.keys() {
            let mark = mark(table[&(from.clone(), to.clone())]);
            let _ = write!(text, "{mark:>12}");
        }
        text.push('\n');
    }
    text
}

/// `✓` echoed, `✗` reset.
fn mark(reached: bool) -> &'static str {
    if reached {
        "✓"
    } else {
        "✗"
    }
}

/// Compares the real results with the engine's answer for the same manifests.
fn check_against_engine(out: &mut dyn Write, dir: &Path, table: &Table) -> anyhow::Result<()> {
    let index = picket_state::load_path(dir)?.index();
    let mut differ = Vec::new();
    for ((from, to), real) in table {
        let (src, dst) = (
            ObjectKey::new(NAMESPACE, from),
            ObjectKey::new(NAMESPACE, to),
        );
        let node = index
            .pod(&dst)
            .map(|p| NodeAddrs::from_ips(p.host_ips.iter().copied()))
            .unwrap_or_default();
        let predicted = index.decide_between_pods(&src, &dst, PORT, Protocol::Tcp, &node);
        if predicted.allowed != *real {
            differ.push(format!("{from} -> {to}: engine says {}", predicted.allowed));
        }
    }
    if differ.is_empty() {
        writeln!(
            out,
            "  all {} results match `picket reach` on the same manifests",
            table.len()
        )?;
        Ok(())
    } else {
        bail!(
            "real connections differ from `picket reach`: {}",
            differ.join("; ")
        )
    }
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir: std::path::PathBuf| dir.join(tool).is_file())
}
