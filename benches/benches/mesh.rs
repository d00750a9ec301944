//! The mTLS hop against the plaintext hop (issue 14), in one run: two pairs
//! of pods in one lab, each a capturing client sidecar and a server sidecar
//! (release `picket-proxy`, one worker each), fed by the real
//! `picket-control` (the mesh CA) behind the test API server. One pair runs
//! with mTLS off, the other permissive (mTLS between them). Round by round,
//! interleaved, from inside the client pods:
//!
//! - new connections: connect, one byte each way, close (the handshake's cost);
//! - 64-byte ping-pong on one established connection;
//! - one stream's bulk throughput into a sink;
//!
//! then each sidecar's RSS. Printed per round, with the mTLS figures against
//! the plaintext ones and the issue's targets.
//!
//! Run as root: `cargo bench -p picket-benches --bench mesh`
//! (`PICKET_MESH_ROUNDS`, default 5; `PICKET_MESH_SECONDS` of bulk, default 1).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use picket_benches::procfs;
use picket_lab::app::EchoServer;
use picket_lab::proxy::{install_binary, run_init, share_dir, Sidecar};
use picket_lab::{Lab, LabPod};
use picket_test_support::apiserver::ApiServer;

const SERVER_NAME: &str = "picket-control.picket-system.svc";
const APP_PORT: u16 = 8080;
const SINK_PORT: u16 = 8081;
const CONNECTIONS: usize = 300;
const PINGS: usize = 2000;

/// One pair's figures in one round.
#[derive(Clone, Debug, Default)]
struct Round {
    connect_p50_us: f64,
    connect_p99_us: f64,
    ping_p50_us: f64,
    ping_p99_us: f64,
    bulk_mb_s: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without `--bench`: skip.
    if !args.iter().any(|a| a == "--bench") {
        return Ok(());
    }
    if !picket_lab::can_run() {
        eprintln!("mesh bench: needs root (network namespaces)");
        return Ok(());
    }
    let rounds: usize = env("PICKET_MESH_ROUNDS", 5)?;
    let workers: String = env("PICKET_MESH_WORKERS", "1".to_string())?;
    let bulk = Duration::from_secs_f64(env("PICKET_MESH_SECONDS", 1.0)?);
    let target = picket_benches::target_dir()?;
    let proxy = picket_benches::release_binary(
        &target,
        "picket-proxy",
        "picket-proxy",
        "PICKET_PROXY_BIN",
    )?;
    let control = picket_benches::release_binary(
        &target,
        "picket-control",
        "picket-control",
        "PICKET_CONTROL_BIN",
    )?;
    picket_lab::proxy::set_quiet(true);
    let proxy = install_binary(&proxy)?;
    let dir = tempfile::tempdir()?;
    share_dir(dir.path())?;

    let mut lab = Lab::new()?;
    let pods: Vec<LabPod> = ["plain-client", "plain-server", "mtls-client", "mtls-server"]
        .iter()
        .map(|name| lab.add_pod(name))
        .collect::<std::io::Result<_>>()?;
    let gateway = lab.gateway();
    let node = lab.node_netns().to_string();
    let listener = picket_lab::in_netns(&node, || TcpListener::bind((gateway, 0)))??;
    let api = ApiServer::builder()
        .host(gateway.to_string())
        .start(listener)?;
    api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")?;
    for pod in &pods {
        let mtls = if pod.name.starts_with("mtls") {
            "permissive"
        } else {
            "off"
        };
        api.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: bench, labels: {{app: {}}}, annotations: {{picket.io/mtls: {mtls}}}}}\n\
             spec: {{containers: [{{name: app}}, {{name: picket-proxy}}]}}\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], hostIP: {host}}}\n",
            pod.name,
            pod.name,
            ip = pod.ip,
            host = lab.host_ip(),
        ))?;
    }
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig)?;
    let certs = picket_test_support::certs::serving_certificate(&[SERVER_NAME])?;
    let root = picket_test_support::certs::TestCa::root("bench-mesh-root")?;
    for (file, pem) in [
        ("ca.crt", &certs.ca_pem),
        ("tls.crt", &certs.cert_pem),
        ("tls.key", &certs.key_pem),
        ("mesh.crt", &root.cert_pem),
        ("mesh.key", &root.key_pem),
    ] {
        std::fs::write(dir.path().join(file), pem)?;
    }
    let mut plane = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(&control)
        .arg("--listen")
        .arg(format!("{gateway}:15010"))
        .arg("--admin")
        .arg(format!("{gateway}:15011"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("tls.key"))
        .arg("--identity-issuer-cert-file")
        .arg(dir.path().join("mesh.crt"))
        .arg("--identity-issuer-key-file")
        .arg(dir.path().join("mesh.key"))
        .env("PICKET_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start picket-control")?;

    let mut sidecars = Vec::new();
    let mut apps = Vec::new();
    for pod in &pods {
        let client = pod.name.ends_with("client");
        let mtls = pod.name.starts_with("mtls");
        let node_file = dir.path().join(format!("{}.node", pod.name));
        let mut init = vec!["--node-file", node_file.to_str().unwrap()];
        if client {
            init.extend(["--outbound-capture", "on"]);
        }
        let out = run_init(proxy.path(), pod, &init)?;
        ensure!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = dir.path().join(format!("{}.token", pod.name));
        std::fs::write(
            &token,
            api.issue_pod_token("bench", &pod.name, &["picket"], Duration::from_secs(3600))?,
        )?;
        share_dir(dir.path())?;
        let ca = dir.path().join("ca.crt");
        let addr = format!("{gateway}:15010");
        let mut args = vec![
            "--source",
            "control",
            "--control-addr",
            &addr,
            "--control-server-name",
            SERVER_NAME,
            "--control-ca-file",
            ca.to_str().unwrap(),
            "--control-token-file",
            token.to_str().unwrap(),
            "--workers",
            &workers,
        ];
        if client {
            args.extend(["--outbound-capture", "on"]);
        }
        if mtls {
            args.extend(["--mtls", "permissive"]);
        }
        let mut sidecar = Sidecar::start_with(proxy.path(), &lab, pod, "bench", &node_file, &args)?;
        sidecar.wait_ready(Duration::from_secs(30))?;
        if !client {
            apps.push(EchoServer::start(
                &pod.netns,
                SocketAddr::new(pod.ip, APP_PORT),
            )?);
            sink(&pod.netns, SocketAddr::new(pod.ip, SINK_PORT))?;
        }
        sidecars.push(sidecar);
    }

    let pair = |mode: &str| -> (&LabPod, IpAddr) {
        let client = pods
            .iter()
            .find(|p| p.name == format!("{mode}-client"))
            .unwrap();
        let server = pods
            .iter()
            .find(|p| p.name == format!("{mode}-server"))
            .unwrap();
        (client, server.ip)
    };
    let mut results: Vec<(Round, Round)> = Vec::new();
    // A warm-up round, not reported.
    for round in 0..=rounds {
        let mut measured = Vec::new();
        for mode in ["plain", "mtls"] {
            let (client, server) = pair(mode);
            let r = picket_lab::in_netns(&client.netns, || measure(server, bulk))??;
            measured.push(r);
        }
        if round > 0 {
            let (plain, mtls) = (measured[0].clone(), measured[1].clone());
            println!(
                "round {round}: connect p50 {:.0} → {:.0} µs (+{:.0}), p99 {:.0} → {:.0} µs (+{:.0}); \
                 ping-pong p50 {:.1} → {:.1} µs (+{:.1}); bulk {:.0} → {:.0} MB/s (×{:.2})",
                plain.connect_p50_us,
                mtls.connect_p50_us,
                mtls.connect_p50_us - plain.connect_p50_us,
                plain.connect_p99_us,
                mtls.connect_p99_us,
                mtls.connect_p99_us - plain.connect_p99_us,
                plain.ping_p50_us,
                mtls.ping_p50_us,
                mtls.ping_p50_us - plain.ping_p50_us,
                plain.bulk_mb_s,
                mtls.bulk_mb_s,
                mtls.bulk_mb_s / plain.bulk_mb_s,
            );
            results.push((plain, mtls));
        }
    }
    let median = |f: &dyn Fn(&(Round, Round)) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let handshake_p50 = median(&|(p, m)| m.connect_p50_us - p.connect_p50_us);
    let handshake_p99 = median(&|(p, m)| m.connect_p99_us - p.connect_p99_us);
    let ping_added = median(&|(p, m)| m.ping_p50_us - p.ping_p50_us);
    let ping_added_p99 = median(&|(p, m)| m.ping_p99_us - p.ping_p99_us);
    let bulk_ratio = median(&|(p, m)| m.bulk_mb_s / p.bulk_mb_s);
    println!(
        "\nmedian over {} rounds of the per-round figures (mTLS pair against the plaintext pair):",
        results.len()
    );
    println!("  new connection, added by the handshake: p50 {handshake_p50:.0} µs (target ≤ 500), p99 {handshake_p99:.0} µs (target ≤ 2000)");
    println!("  64-byte round trip, added: p50 {ping_added:.1} µs (target ≤ 15; ztunnel's HBONE ≈ 11), p99 {ping_added_p99:.1} µs");
    println!("  one stream: ×{bulk_ratio:.2} of plaintext (target ≥ 0.40; HBONE ≈ 0.35-0.40)");
    for (pod, sidecar) in pods.iter().zip(&sidecars) {
        let pid = sidecar.pid();
        println!(
            "  {} sidecar: RSS {} KiB, PSS {} KiB",
            pod.name,
            procfs::rss_kib(pid).unwrap_or(0),
            procfs::pss_kib(pid).unwrap_or(0)
        );
    }
    for pod in pods.iter().filter(|p| p.name.starts_with("mtls")) {
        let (_, text) =
            picket_lab::proxy::http_get(&pod.netns, SocketAddr::new(pod.ip, 15020), "/metrics")?;
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        println!(
            "  {} sidecar: {} mTLS connections, {} of them resumed; spares made {}, taken {}, expired {}, failed {}, dead {}",
            pod.name,
            sum("picket_mtls_connections_total"),
            sum("picket_mtls_resumed_total"),
            sum("picket_mtls_spares_total{event=\"made\""),
            sum("picket_mtls_spares_total{event=\"taken\""),
            sum("picket_mtls_spares_total{event=\"expired\""),
            sum("picket_mtls_spares_total{event=\"failed\""),
            sum("picket_mtls_spares_total{event=\"dead\""),
        );
    }
    let _ = plane.kill();
    let _ = plane.wait();
    drop(apps);
    Ok(())
}

/// The three phases against `server`, from the calling thread's namespace.
fn measure(server: IpAddr, bulk: Duration) -> Result<Round> {
    let app = SocketAddr::new(server, APP_PORT);
    let mut connects = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let start = Instant::now();
        let mut s = TcpStream::connect(app)?;
        s.set_nodelay(true)?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        connects.push(start.elapsed());
    }
    let mut s = TcpStream::connect(app)?;
    s.set_nodelay(true)?;
    let payload = [7u8; 64];
    let mut back = [0u8; 64];
    let mut pings = Vec::with_capacity(PINGS);
    for i in 0..PINGS + 100 {
        let start = Instant::now();
        s.write_all(&payload)?;
        s.read_exact(&mut back)?;
        if i >= 100 {
            pings.push(start.elapsed());
        }
    }
    drop(s);
    let mut s = TcpStream::connect(SocketAddr::new(server, SINK_PORT))?;
    let chunk = vec![1u8; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < bulk {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut done = [0u8; 8];
    // The sink says how much it got once the stream ends: the time counts
    // until the bytes arrived, not until they were buffered.
    s.read_exact(&mut done)?;
    let elapsed = start.elapsed().as_secs_f64();
    ensure!(
        u64::from_be_bytes(done) == sent,
        "the sink got {} of {sent}",
        u64::from_be_bytes(done)
    );
    Ok(Round {
        connect_p50_us: percentile(&mut connects, 0.50),
        connect_p99_us: percentile(&mut connects, 0.99),
        ping_p50_us: percentile(&mut pings, 0.50),
        ping_p99_us: percentile(&mut pings, 0.99),
        bulk_mb_s: sent as f64 / elapsed / 1e6,
    })
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

/// An app that reads a stream to its end, then says how many bytes it read.
fn sink(netns: &str, addr: SocketAddr) -> Result<()> {
    let listener = picket_lab::in_netns(netns, || TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = stream.write_all(&total.to_be_bytes());
            });
        }
    });
    Ok(())
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .with_context(|| format!("{name}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}
