//! The cluster-state benchmark: how fast a NetworkPolicy written to the API
//! reaches live connections, and what a big cluster costs the proxy.
//!
//! The real sidecar watches a test API server holding 10,000 generated pods
//! and 1,000 policies besides the lab's three pods. 1,000 connections are
//! live through it, 500 from a client pod labelled group=a and 500 from one
//! labelled group=b. Each round creates a policy that admits only group=b
//! and times, for each group=a connection, the API write to the client's
//! ECONNRESET; the group=b connections must still echo. Then the proxy's PSS
//! after the initial sync, with the connections, and after minutes of churn
//! (pods relabelled, created and deleted, policies modified, at a steady rate).
//!
//! Run as root: `cargo bench -p picket-benches --bench propagation`
//! (`-- --churn-seconds 600` for ten minutes of churn). See `benches/README.md`.

#[path = "propagation/cluster.rs"]
mod cluster;
#[path = "propagation/conns.rs"]
mod conns;
#[path = "propagation/report.rs"]
mod report;
#[path = "propagation/setup.rs"]
mod setup;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use picket_benches::procfs;
use picket_test_support::apiserver::Kind;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::cluster::{Size, LAB_NAMESPACE, ROUND_POLICY};
use crate::conns::Ending;
use crate::report::{Churn, Point, Results, Round};
use crate::setup::{Bench, ProxyOptions};

/// How long a round waits for the resets.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long deleting the round's policy may take to let group=a in again.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the churn samples the proxy's memory.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The bench's knobs, from its command line.
#[derive(Clone, Debug)]
struct Config {
    rounds: usize,
    connections: usize,
    churn_seconds: f64,
    churn_rate: f64,
    size: Size,
    proxy: ProxyOptions,
    nice: i32,
    /// The sidecar streams from picket-control (`--source control`).
    control: bool,
}

const USAGE: &str = "usage: propagation [--rounds N] [--connections N] [--churn-seconds S] \
                     [--churn-rate W] [--pods N] [--namespaces N] [--policies N] \
                     [--proxy-log FILTER] [--proxy-env NAME=VALUE]... [--nice N] \
                     [--source kube|control]";

impl Config {
    fn from_args(args: &[String]) -> Result<Self> {
        let mut config = Self {
            rounds: 20,
            connections: 1000,
            churn_seconds: 60.0,
            churn_rate: 50.0,
            size: Size {
                pods: 10_000,
                namespaces: 100,
                policies: 1000,
            },
            proxy: ProxyOptions {
                log_filter: setup::PROXY_LOG.to_string(),
                env: Vec::new(),
                control: None,
            },
            nice: -10,
            control: false,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--bench" {
                continue;
            }
            let mut value = || -> Result<&String> {
                it.next()
                    .with_context(|| format!("{arg} needs a value; {USAGE}"))
            };
            let num = |v: &String| -> Result<f64> {
                v.parse::<f64>()
                    .ok()
                    .filter(|n| *n >= 0.0)
                    .with_context(|| format!("{arg} {v:?}: not a number; {USAGE}"))
            };
            match arg.as_str() {
                "--rounds" => config.rounds = num(value()?)? as usize,
                "--connections" => config.connections = num(value()?)? as usize,
                "--churn-seconds" => config.churn_seconds = num(value()?)?,
                "--churn-rate" => config.churn_rate = num(value()?)?,
                "--pods" => config.size.pods = num(value()?)? as usize,
                "--namespaces" => config.size.namespaces = num(value()?)? as usize,
                "--policies" => config.size.policies = num(value()?)? as usize,
                "--nice" => {
                    let v = value()?;
                    config.nice = v
                        .parse()
                        .with_context(|| format!("--nice {v:?}: not an integer"))?;
                }
                "--proxy-log" => config.proxy.log_filter = value()?.clone(),
                "--source" => {
                    config.control = match value()?.as_str() {
                        "kube" => false,
                        "control" => true,
                        other => bail!("--source {other:?}: kube or control"),
                    };
                }
                "--proxy-env" => {
                    let v = value()?;
                    let (name, val) = v
                        .split_once('=')
                        .with_context(|| format!("--proxy-env {v:?}: not NAME=VALUE"))?;
                    config.proxy.env.push((name.to_string(), val.to_string()));
                }
                _ => bail!("unknown argument {arg:?}; {USAGE}"),
            }
        }
        ensure!(
            config.connections >= 2 && config.connections % 2 == 0,
            "--connections must be even and at least 2"
        );
        ensure!(
            config.size.namespaces > 0 && config.size.pods > 0,
            "--pods and --namespaces must be positive"
        );
        ensure!(
            config.size.pods <= 60_000,
            "at most 60,000 pods fit in 10.200.0.0/16"
        );
        ensure!(config.churn_rate > 0.0, "--churn-rate must be positive");
        Ok(config)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without `--bench`: skip.
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "propagation: skipped; run it with `cargo bench -p picket-benches --bench propagation`"
        );
        return ExitCode::SUCCESS;
    }
    match Config::from_args(&args).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("propagation benchmark: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<()> {
    setup::preflight()?;
    // Before any thread starts: every thread and child (the proxy, the API
    // server, the app) inherits it, ahead of other work on a shared machine.
    rustix::process::setpriority_process(None, config.nice).context("cannot set the nice value")?;
    let target = picket_benches::target_dir()?;
    let binary = setup::proxy_binary(&target)?;
    let mut config = config;
    if config.control {
        config.proxy.control = Some(picket_benches::release_binary(
            &target,
            "picket-control",
            "picket-control",
            "PICKET_CONTROL_BIN",
        )?);
    }
    // The bench holds both ends of every connection; the proxy two per connection.
    picket_benches::raise_nofile(4 * config.connections as u64 + 1024)?;
    setup::cleanup_on_signal()?;
    let started = Instant::now();
    let load_before = procfs::loadavg();
    let out_dir = target.join(if config.control {
        "picket-propagation-control"
    } else {
        "picket-propagation"
    });

    let mut bench = Bench::start(&binary, &out_dir, config.size, &config.proxy)?;
    let mut results = Results {
        size: (
            config.size.pods,
            config.size.namespaces,
            config.size.policies,
        ),
        expected: bench.expected,
        connections: config.connections,
        setup: bench.times,
        binary: binary.display().to_string(),
        nice: config.nice,
        ..Results::default()
    };
    eprintln!(
        "propagation: synced {} pods in {:.1} s",
        bench.expected.0,
        bench.times.synced.as_secs_f64()
    );
    // Let the initial lists' buffers go before measuring.
    std::thread::sleep(Duration::from_secs(2));
    results
        .points
        .push(point("after the initial sync, idle", &bench)?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let half = config.connections / 2;
    let addr = bench.app_addr();
    eprintln!("propagation: opening {} connections", config.connections);
    let a = open_checked(&rt, &bench.client_a.netns, addr, half)?;
    let mut b = open_checked(&rt, &bench.client_b.netns, addr, half)?;
    std::thread::sleep(Duration::from_secs(1));
    let open = bench.metrics()?.open;
    ensure!(
        open as usize == config.connections,
        "the proxy relays {open} connections, expected {}",
        config.connections
    );
    results.points.push(point(
        &format!("with {} live connections", config.connections),
        &bench,
    )?);

    let mut a = Some(a);
    for round in 0..config.rounds {
        eprintln!("propagation: round {}/{}", round + 1, config.rounds);
        let (r, a_next, b_next) = run_round(&rt, &bench, a.take().unwrap_or_default(), b)?;
        results.rounds.push(r);
        a = Some(a_next);
        b = b_next;
    }
    results
        .points
        .push(point(&format!("after {} rounds", config.rounds), &bench)?);

    let mut lab_conns = a.take().unwrap_or_default();
    lab_conns.extend(b);
    if config.churn_seconds > 0.0 {
        let (churn, survivors) = run_churn(&rt, &mut bench, &config, lab_conns)?;
        results.churn = churn;
        lab_conns = survivors;
        results.points.push(point(
            &format!("after {:.0} s of churn", config.churn_seconds),
            &bench,
        )?);
    }
    drop(lab_conns);

    results.app_resets = bench.echo.resets();
    results.add_log_times(&bench.log_path);
    results.load = (load_before, procfs::loadavg());
    results.elapsed_s = started.elapsed().as_secs_f64();
    print!("{}", results.table());
    if let Some(control) = &bench.control {
        println!(
            "\npicket-control: RSS {:.1} MiB, CPU {:.2} s in all",
            procfs::rss_kib(control.pid)? as f64 / 1024.0,
            procfs::cpu_seconds(control.pid)?
        );
    }
    std::fs::create_dir_all(&out_dir)?;
    let json = out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results.json())?)?;
    println!(
        "\nAll figures: {}; the proxy's log: {}",
        json.display(),
        bench.log_path.display()
    );
    Ok(())
}

fn point(label: &str, bench: &Bench) -> Result<Point> {
    Ok(Point {
        label: label.to_string(),
        sample: bench.memory()?,
    })
}

/// Opens `n` connections and checks that every one echoes.
fn open_checked(
    rt: &Runtime,
    netns: &str,
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<Vec<TcpStream>> {
    let streams = conns::open(rt, netns, addr, n)?;
    let (alive, failed, first) = conns::echo_all(rt, streams);
    ensure!(
        failed == 0,
        "{failed} of {n} new connections from {netns} did not echo: {}",
        first.unwrap_or_default()
    );
    Ok(alive)
}

/// One round: arm the group=a connections, create the policy, time every
/// reset; check group=b; delete the policy and reconnect group=a.
fn run_round(
    rt: &Runtime,
    bench: &Bench,
    a: Vec<TcpStream>,
    b: Vec<TcpStream>,
) -> Result<(Round, Vec<TcpStream>, Vec<TcpStream>)> {
    let affected = a.len();
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let tasks = conns::await_endings(rt, a, deadline)?;
    // Let every task settle into its read before the clock starts.
    std::thread::sleep(Duration::from_millis(100));

    // CPU starvation shows as run-queue waiting: the proxy's threads, and
    // the test API server's thread (in this process).
    let waits = || -> Result<(u64, u64)> {
        Ok((
            procfs::run_queue_wait_ns(bench.proxy.pid, "")?,
            procfs::run_queue_wait_ns(std::process::id(), "test-apiserver")?,
        ))
    };
    let waits0 = waits()?;
    let policy = cluster::round_policy();
    let wall = SystemTime::now();
    let t0 = Instant::now();
    cluster::apply(&bench.api, &policy)?;
    let write_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let endings = conns::collect(rt, tasks)?;
    let waits1 = waits()?;

    let mut round = Round {
        affected,
        write_ms,
        wall: Some(wall),
        proxy_wait_ms: (waits1.0 - waits0.0) as f64 / 1e6,
        api_wait_ms: (waits1.1 - waits0.1) as f64 / 1e6,
        ..Round::default()
    };
    for ending in endings {
        match ending {
            Ending::Reset(at) => round
                .resets_ms
                .push(at.duration_since(t0).as_secs_f64() * 1000.0),
            Ending::Closed(_) => round.closed += 1,
            Ending::Data => round.data += 1,
            Ending::Error(_) => round.errors += 1,
            Ending::Timeout => round.timeouts += 1,
        }
    }
    round.unaffected = b.len();
    let (b, failed, first) = conns::echo_all(rt, b);
    round.unaffected_failed = failed;
    round.unaffected_error = first;

    bench
        .api
        .delete(Kind::NetworkPolicy, Some(LAB_NAMESPACE), ROUND_POLICY)
        .context("deleting the round's policy")?;
    round.reopen_ms = conns::wait_allowed(&bench.client_a.netns, bench.app_addr(), REOPEN_TIMEOUT)?
        .as_secs_f64()
        * 1000.0;
    let addr = bench.app_addr();
    let a = open_checked(rt, &bench.client_a.netns, addr, affected)?;
    // Keep group=b at full strength if one was lost (reported above).
    let mut b = b;
    if round.unaffected > b.len() {
        b.extend(open_checked(
            rt,
            &bench.client_b.netns,
            addr,
            round.unaffected - b.len(),
        )?);
    }
    Ok((round, a, b))
}

/// Writes to the API at a steady rate for the configured time, sampling the
/// proxy's memory; then waits for the proxy to match the API and checks that
/// the lab's connections survived.
fn run_churn(
    rt: &Runtime,
    bench: &mut Bench,
    config: &Config,
    lab_conns: Vec<TcpStream>,
) -> Result<(Churn, Vec<TcpStream>)> {
    eprintln!(
        "propagation: churn for {:.0} s at {} writes/s",
        config.churn_seconds, config.churn_rate
    );
    let pid = bench.proxy.pid;
    let before = bench.metrics()?;
    let cpu0 = procfs::cpu_seconds(pid)?;
    let duration = Duration::from_secs_f64(config.churn_seconds);
    let interval = Duration::from_secs_f64(1.0 / config.churn_rate);
    let started = Instant::now();
    let mut series = Vec::new();
    let api = &bench.api;
    let generated = &mut bench.generated;
    let churned: Result<()> = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> Result<()> {
            let mut i: u32 = 0;
            loop {
                let due = started + interval * i;
                if due >= started + duration {
                    return Ok(());
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                generated.churn_step(api)?;
                i += 1;
            }
        });
        let mut next = started + SAMPLE_EVERY;
        while !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            if Instant::now() >= next {
                next += SAMPLE_EVERY;
                let t = started.elapsed().as_secs_f64();
                series.push((
                    t,
                    procfs::pss_kib(pid)?,
                    procfs::rss_kib(pid)?,
                    procfs::cpu_seconds(pid)? - cpu0,
                ));
                let elapsed = started.elapsed().as_secs();
                if elapsed % 60 < SAMPLE_EVERY.as_secs() {
                    eprintln!("propagation: churn {elapsed} s");
                }
            }
        }
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("the churn thread panicked"))?
    });
    churned?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let last_write = Instant::now();

    // The proxy has caught up when its counts match the API's (the lab's
    // three pods besides the generated ones; policies are only modified).
    // With the control plane it holds only its view: caught up once its
    // last commit is a second old (the control plane sends within 10 ms).
    let pods = (bench.generated.pod_count() + 3) as f64;
    let policies = bench.expected.2 as f64;
    loop {
        let m = bench.metrics()?;
        if bench.control.is_some() {
            if m.commit_age_s.is_some_and(|age| age >= 1.0) {
                break;
            }
        } else if m.pods == pods && m.policies == policies {
            break;
        }
        ensure!(
            last_write.elapsed() < Duration::from_secs(60),
            "after the churn the proxy knows {} pods and {} policies; the API has {pods} and {policies}",
            m.pods,
            m.policies
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let converged_ms = last_write.elapsed().as_secs_f64() * 1000.0;
    let cpu_s = procfs::cpu_seconds(pid)? - cpu0;
    std::thread::sleep(Duration::from_secs(1));
    let after = bench.metrics()?;
    let n = lab_conns.len();
    let (survivors, lab_failed, first) = conns::echo_all(rt, lab_conns);
    if lab_failed > 0 {
        eprintln!(
            "propagation: {lab_failed} of {n} lab connections failed after the churn: {}",
            first.unwrap_or_default()
        );
    }
    Ok((
        Churn {
            seconds: config.churn_seconds,
            rate: config.churn_rate,
            ops: bench.generated.ops,
            elapsed_s,
            cpu_s,
            state_updates: after.state_updates - before.state_updates,
            teardowns: after.teardowns - before.teardowns,
            watch_restarts: after.watch_restarts - before.watch_restarts,
            converged_ms,
            lab_failed,
            series,
        },
        survivors,
    ))
}
