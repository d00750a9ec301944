//! The control plane's fan-out benchmark: the real `picket-control` against
//! the test API server holding 10,000 generated pods and 1,000 policies, with
//! 1,000 simulated sidecars (the sidecar's real stream client, each with its
//! own TLS connection and bound token) on one replica, under 20 writes/s of
//! churn.
//!
//! Each round writes a policy selecting every pod of one namespace and times,
//! for each sidecar of that namespace, the API write to the moment its
//! applied view holds the policy. Reported: propagation p50/p99, the control
//! plane's RSS after the sidecars connect and after the churn, messages and
//! bytes sent per API write, how long connecting every sidecar took, and the
//! watches the API server holds.
//!
//! `cargo bench -p picket-benches --bench fanout [-- --sidecars N --rounds N
//! --churn-rate W --outbound 1]`; with `--outbound 1` every sidecar captures
//! outbound connections and asks for views with outbound parts. Needs no
//! root.

#[path = "propagation/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use picket_benches::procfs;
use picket_policy::ObjectKey;
use picket_state::control::{ControlConfig, ControlMetrics, ControlSource};
use picket_state::{SnapshotRx, Source as _, StateWriter};
use picket_test_support::announced::listening_addrs;
use picket_test_support::apiserver::{ApiServer, Kind};
use serde_json::json;

use crate::cluster::{Generated, Size};

const SERVER_NAME: &str = "picket-control.picket-system.svc";
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

struct Config {
    sidecars: usize,
    rounds: usize,
    churn_rate: f64,
    size: Size,
    outbound: bool,
}

fn config(args: &[String]) -> Result<Config> {
    let mut config = Config {
        sidecars: 1000,
        rounds: 20,
        churn_rate: 20.0,
        size: Size {
            pods: 10_000,
            namespaces: 100,
            policies: 1000,
        },
        outbound: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--bench" {
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{arg} needs a value"))?
            .parse::<f64>()
            .with_context(|| format!("{arg}: not a number"))?;
        match arg.as_str() {
            "--sidecars" => config.sidecars = value as usize,
            "--rounds" => config.rounds = value as usize,
            "--churn-rate" => config.churn_rate = value,
            "--pods" => config.size.pods = value as usize,
            "--policies" => config.size.policies = value as usize,
            "--outbound" => config.outbound = value != 0.0,
            other => bail!("unknown argument {other:?}: --sidecars N --rounds N --churn-rate W --pods N --policies N --outbound 0|1"),
        }
    }
    ensure!(
        config.sidecars <= config.size.pods,
        "more sidecars than pods"
    );
    Ok(config)
}

/// The control plane, as a child process; killed on drop.
struct ControlPlane {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_control(binary: &Path, dir: &Path, kubeconfig: &Path) -> Result<ControlPlane> {
    let certs = picket_test_support::certs::serving_certificate(&[SERVER_NAME])?;
    std::fs::write(dir.join("ca.crt"), certs.ca_pem)?;
    std::fs::write(dir.join("tls.crt"), certs.cert_pem)?;
    std::fs::write(dir.join("tls.key"), certs.key_pem)?;
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("tls.key"))
        .env("PICKET_LOG", "warn,picket_control::app=info")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let log = child.stderr.take().context("no stderr")?;
    let addrs = listening_addrs(
        log,
        &["Control plane listening", "Admin server listening"],
        Duration::from_secs(30),
    )
    .context("picket-control did not say where it listens")?;
    Ok(ControlPlane {
        child,
        grpc: addrs[0],
        admin: addrs[1],
    })
}

/// `GET path` on the control plane's admin port: (status, body).
fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let (_, body) = admin_get(addr, "/metrics")?;
    Ok(body
        .lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The view updates counted so far, by how they were computed.
fn updates_by_how(addr: SocketAddr) -> Result<serde_json::Map<String, serde_json::Value>> {
    let (_, body) = admin_get(addr, "/metrics")?;
    let mut out = serde_json::Map::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("picket_control_view_updates_total{how=\"") else {
            continue;
        };
        let Some((how, value)) = rest.split_once("\"} ") else {
            continue;
        };
        out.insert(
            how.to_string(),
            json!(value.trim().parse::<f64>().unwrap_or(0.0)),
        );
    }
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without `--bench`: skip.
    if !args.iter().any(|a| a == "--bench") {
        return Ok(());
    }
    let config = config(&args)?;
    picket_benches::raise_nofile(4 * config.sidecars as u64 + 1024)?;
    let target = picket_benches::target_dir()?;
    let binary = picket_benches::release_binary(
        &target,
        "picket-control",
        "picket-control",
        "PICKET_CONTROL_BIN",
    )?;
    let dir = tempfile::tempdir()?;

    let api = ApiServer::bind("127.0.0.1:0")?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig)?;
    let mut generated = Generated::new(config.size);
    let mut docs = generated.initial_objects();
    // The first pods of each namespace, in turn, run the sidecar.
    let mut sidecars: Vec<ObjectKey> = Vec::new();
    for doc in docs.iter_mut().filter(|d| d["kind"] == "Pod") {
        if sidecars.len() == config.sidecars {
            break;
        }
        doc["spec"]["containers"]
            .as_array_mut()
            .context("a pod without containers")?
            .push(json!({"name": "picket-proxy"}));
        sidecars.push(ObjectKey::new(
            doc["metadata"]["namespace"].as_str().unwrap_or_default(),
            doc["metadata"]["name"].as_str().unwrap_or_default(),
        ));
    }
    eprintln!(
        "fanout: writing {} pods and {} policies",
        config.size.pods, config.size.policies
    );
    cluster::apply_all(&api, &docs)?;

    let control = start_control(&binary, dir.path(), &kubeconfig)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !admin_get(control.admin, "/ready").is_ok_and(|(s, _)| s == 200) {
        ensure!(
            Instant::now() < deadline,
            "picket-control never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_synced = procfs::rss_kib(control.child.id())?;

    let runtime = tokio::runtime::Runtime::new()?;
    let ca = std::fs::read(dir.path().join("ca.crt"))?;
    let started = Instant::now();
    let mut views: Vec<(ObjectKey, SnapshotRx)> = Vec::new();
    for (i, pod) in sidecars.iter().enumerate() {
        let token = api.issue_pod_token(
            &pod.namespace,
            &pod.name,
            &["picket"],
            Duration::from_secs(3600),
        )?;
        let token_file = dir.path().join(format!("token-{i}"));
        std::fs::write(&token_file, token)?;
        let source = ControlSource::new(
            ControlConfig {
                addr: control.grpc.to_string(),
                server_name: SERVER_NAME.into(),
                ca_pem: ca.clone(),
                token_file,
                max_backoff: Duration::from_secs(1),
                outbound: config.outbound,
            },
            ControlMetrics::new(&prometheus::Registry::new()),
        )
        .0;
        let (writer, rx) = StateWriter::new();
        runtime.spawn(source.run(writer));
        views.push((pod.clone(), rx));
    }
    runtime.block_on(async {
        for (pod, rx) in &mut views {
            let mut rx = rx.clone();
            tokio::time::timeout(Duration::from_secs(300), rx.wait_for(Option::is_some))
                .await
                .with_context(|| format!("{pod} never got a view"))?
                .ok();
        }
        anyhow::Ok(())
    })?;
    let connect_all = started.elapsed();
    let rss_connected = procfs::rss_kib(control.child.id())?;
    let mut view_pods: Vec<usize> = views
        .iter()
        .filter_map(|(_, rx)| rx.borrow().as_ref().map(|s| s.index.counts().pods))
        .collect();
    // Outbound parts: destinations' ingress entries (by pod and address).
    let mut view_ingress: Vec<usize> = views
        .iter()
        .filter_map(|(_, rx)| {
            let snapshot = rx.borrow().clone()?;
            let (pods, addresses) = snapshot.index.ingress_toward_me()?.len();
            Some(pods + addresses)
        })
        .collect();
    view_ingress.sort_unstable();
    let watches = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy].map(|k| api.open_watches_of(k));

    // Churn in the background, at the configured rate.
    let stop = Arc::new(AtomicBool::new(false));
    let api = Arc::new(api);
    let churn = {
        let (stop, api) = (stop.clone(), api.clone());
        let rate = config.churn_rate;
        std::thread::spawn(move || -> Result<u64> {
            let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                generated.churn_step(&api)?;
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(generated.ops.total())
        })
    };
    let messages_before = metric(control.admin, "picket_control_messages_sent_total")?;
    let bytes_before = metric(control.admin, "picket_control_bytes_sent_total")?;
    let cpu_before = procfs::cpu_seconds(control.child.id())?;
    let updates_before = updates_by_how(control.admin)?;
    let churn_started = Instant::now();

    let mut latencies = Vec::new();
    let mut timeouts = 0usize;
    for round in 0..config.rounds {
        let ns = format!("team-{:02}", round % config.size.namespaces);
        let name = format!("fanout-round-{round}");
        let key = ObjectKey::new(&ns, &name);
        // The churn deletes pods, some with sidecars: those streams end, and
        // their sidecars keep a stale view. Only live pods' sidecars count.
        let affected: Vec<SnapshotRx> = views
            .iter()
            .filter(|(pod, _)| *pod.namespace == *ns)
            .filter(|(pod, _)| {
                api.get(Kind::Pod, Some(&pod.namespace), &pod.name)
                    .is_some()
            })
            .map(|(_, rx)| rx.clone())
            .collect();
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {}, "ingress": [{}]},
        });
        let written = Instant::now();
        cluster::apply(&api, &policy)?;
        let (times, missed) = runtime.block_on(async {
            let mut times = Vec::new();
            let mut missed = 0;
            for mut rx in affected {
                let key = key.clone();
                let got = tokio::time::timeout_at(
                    (written + ROUND_TIMEOUT).into(),
                    rx.wait_for(|s| s.as_ref().is_some_and(|s| s.index.policy(&key).is_some())),
                )
                .await;
                match got {
                    Ok(Ok(_)) => times.push(written.elapsed()),
                    _ => missed += 1,
                }
            }
            (times, missed)
        });
        timeouts += missed;
        latencies.extend(times);
        api.delete(Kind::NetworkPolicy, Some(&ns), &name)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let writes = churn
        .join()
        .map_err(|_| anyhow::anyhow!("churn panicked"))??;
    let churn_seconds = churn_started.elapsed().as_secs_f64();
    let messages = metric(control.admin, "picket_control_messages_sent_total")? - messages_before;
    let bytes = metric(control.admin, "picket_control_bytes_sent_total")? - bytes_before;
    let cpu = procfs::cpu_seconds(control.child.id())? - cpu_before;
    let mut updates = updates_by_how(control.admin)?;
    for (how, value) in updates.iter_mut() {
        let before = updates_before
            .get(how)
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        *value = json!(value.as_f64().unwrap_or(0.0) - before);
    }
    let rss_churned = procfs::rss_kib(control.child.id())?;
    // Every API write of the window: the churn and each round's create and delete.
    let api_writes = writes as f64 + 2.0 * config.rounds as f64;

    latencies.sort();
    view_pods.sort_unstable();
    let result = json!({
        "sidecars": config.sidecars,
        "outbound": config.outbound,
        "pods": config.size.pods,
        "policies": config.size.policies,
        "churn_writes_per_second": writes as f64 / churn_seconds,
        "propagation_ms": {
            "samples": latencies.len(),
            "timeouts": timeouts,
            "p50": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            "p99": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            "max": latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        },
        "control_rss_mib": {
            "synced_no_sidecars": rss_synced as f64 / 1024.0,
            "sidecars_connected": rss_connected as f64 / 1024.0,
            "after_churn": rss_churned as f64 / 1024.0,
        },
        "control_cpu_ms_per_api_write": cpu * 1e3 / api_writes,
        "per_api_write": {"messages": messages / api_writes, "bytes": bytes / api_writes},
        "view_updates_during_churn": updates,
        "connect_all_sidecars_s": connect_all.as_secs_f64(),
        "view_pods": {"p50": view_pods.get(view_pods.len() / 2), "max": view_pods.last()},
        "view_ingress_entries": {"p50": view_ingress.get(view_ingress.len() / 2), "max": view_ingress.last()},
        "api_watches": {"pods": watches[0], "namespaces": watches[1], "networkpolicies": watches[2]},
    });
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    let out = target.join("picket-fanout");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), &text)?;
    drop(control);
    Ok(())
}
