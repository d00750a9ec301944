//! The figures: per-round propagation, pooled percentiles, memory and CPU;
//! printed as a table and written as JSON. Also reads the proxy's JSON log
//! for where the time of each round went.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cluster::ChurnOps;
use crate::setup::{MemorySample, SetupTimes};

/// One round: a policy create, and what the clients saw.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Milliseconds from the write to each affected connection's ECONNRESET.
    pub resets_ms: Vec<f64>,
    /// Affected connections in the round.
    pub affected: usize,
    /// Affected connections that ended otherwise: (EOF, data, error, timeout).
    pub closed: usize,
    /// ... data arrived.
    pub data: usize,
    /// ... another error.
    pub errors: usize,
    /// ... nothing before the deadline.
    pub timeouts: usize,
    /// Unaffected connections, and how many of them still echoed afterwards.
    pub unaffected: usize,
    /// Unaffected connections that no longer echoed.
    pub unaffected_failed: usize,
    /// The first failure of an unaffected connection.
    pub unaffected_error: Option<String>,
    /// How long the write itself took (the test API server's `apply`).
    pub write_ms: f64,
    /// Milliseconds the proxy's threads waited for a CPU during the round.
    pub proxy_wait_ms: f64,
    /// Milliseconds the test API server's thread waited for a CPU during the round.
    pub api_wait_ms: f64,
    /// The write's wall-clock time, to find the round in the proxy's log.
    pub wall: Option<SystemTime>,
    /// From the policy's deletion until a new group=a connection echoed.
    pub reopen_ms: f64,
    /// From the log: the write to the proxy's commit of the new snapshot.
    pub commit_ms: Option<f64>,
    /// From the log: the write to the end of the re-check of live connections.
    pub rechecked_ms: Option<f64>,
    /// From the log: how long the re-check took (as the proxy measured it).
    pub recheck_took_ms: Option<f64>,
    /// From the log: connections the re-check tore down.
    pub torn_down: Option<u64>,
    /// From the log, when the proxy logs at debug for `picket_proxy::net::conn`:
    /// (resets, first, last) ms from the write to a connection task starting its reset.
    pub proxy_resets: Option<(usize, f64, f64)>,
}

impl Round {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.resets_ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// Memory and CPU at one point of the run.
#[derive(Clone, Debug)]
pub struct Point {
    /// What was happening.
    pub label: String,
    /// The sample.
    pub sample: MemorySample,
}

/// The churn phase.
#[derive(Clone, Debug, Default)]
pub struct Churn {
    /// Planned seconds.
    pub seconds: f64,
    /// Planned writes per second.
    pub rate: f64,
    /// Writes made, by kind.
    pub ops: ChurnOps,
    /// Seconds it actually took.
    pub elapsed_s: f64,
    /// The proxy's CPU seconds over it.
    pub cpu_s: f64,
    /// Snapshots the proxy committed over it (`picket_state_updates_total`).
    pub state_updates: f64,
    /// Live connections torn down over it (should be none).
    pub teardowns: f64,
    /// Watch restarts over it.
    pub watch_restarts: f64,
    /// After the last write: until the proxy's counts matched the API's.
    pub converged_ms: f64,
    /// Lab connections that no longer echoed after the churn.
    pub lab_failed: usize,
    /// Samples every few seconds: (seconds into the churn, PSS KiB, RSS KiB, CPU s).
    pub series: Vec<(f64, u64, u64, f64)>,
}

/// Everything the run measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// Generated pods, namespaces, policies.
    pub size: (usize, usize, usize),
    /// What the proxy knew after the sync: pods, namespaces, policies.
    pub expected: (usize, usize, usize),
    /// Live connections held (half of them affected each round).
    pub connections: usize,
    /// Setup timings.
    pub setup: SetupTimes,
    /// The rounds.
    pub rounds: Vec<Round>,
    /// Memory and CPU at the milestones.
    pub points: Vec<Point>,
    /// The churn.
    pub churn: Churn,
    /// Resets the app (echo server) saw from the proxy.
    pub app_resets: usize,
    /// The load average before and after, and the run's length.
    pub load: (String, String),
    /// The whole run, seconds.
    pub elapsed_s: f64,
    /// The proxy binary measured.
    pub binary: String,
    /// The nice value of the bench and the proxy.
    pub nice: i32,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

impl Results {
    fn all_sorted(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .rounds
            .iter()
            .flat_map(|r| r.resets_ms.iter().copied())
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    /// The report printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let (pods, namespaces, policies) = self.expected;
        let half = self.connections / 2;
        let _ = writeln!(
            out,
            "\nPropagation: NetworkPolicy create -> ECONNRESET at the client\n\
             cluster: {pods} pods, {namespaces} namespaces, {policies} policies in the proxy \
             (generated pods {:.1} KB of JSON each); {} live connections, {half} affected per round\n",
            self.setup.pod_json_bytes as f64 / 1000.0,
            self.connections,
        );
        let _ = writeln!(
            out,
            "{:>5} {:>9} {:>9} {:>8} {:>8} {:>9} {:>10} {:>9} {:>10} {:>9} {:>11} {:>8} {:>8}",
            "round",
            "reset",
            "first ms",
            "p50 ms",
            "p99 ms",
            "last ms",
            "unaffected",
            "commit ms",
            "recheck ms",
            "took ms",
            "reopen ms",
            "wait px",
            "wait api"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let s = r.sorted();
            let _ = writeln!(
                out,
                "{:>5} {:>9} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>10} {:>9} {:>10} {:>9} {:>11.1} {:>8.1} {:>8.1}",
                i + 1,
                format!("{}/{}", s.len(), r.affected),
                s.first().copied().unwrap_or(f64::NAN),
                percentile(&s, 0.5),
                percentile(&s, 0.99),
                s.last().copied().unwrap_or(f64::NAN),
                format!("{}/{}", r.unaffected - r.unaffected_failed, r.unaffected),
                opt_ms(r.commit_ms),
                opt_ms(r.rechecked_ms),
                opt_ms(r.recheck_took_ms),
                r.reopen_ms,
                r.proxy_wait_ms,
                r.api_wait_ms,
            );
        }
        let all = self.all_sorted();
        let lasts: Vec<f64> = {
            let mut v: Vec<f64> = self
                .rounds
                .iter()
                .filter_map(|r| r.sorted().last().copied())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let _ = writeln!(
            out,
            "\nall rounds: {} resets of {}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             last reset per round: median {:.1} ms, max {:.1} ms",
            all.len(),
            self.rounds.iter().map(|r| r.affected).sum::<usize>(),
            percentile(&all, 0.5),
            percentile(&all, 0.9),
            percentile(&all, 0.99),
            all.last().copied().unwrap_or(f64::NAN),
            percentile(&lasts, 0.5),
            lasts.last().copied().unwrap_or(f64::NAN),
        );
        let traced: Vec<String> = self
            .rounds
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let (n, first, last) = r.proxy_resets?;
                Some(format!("{}: {n} in {first:.1}..{last:.1}", i + 1))
            })
            .collect();
        if !traced.is_empty() {
            let _ = writeln!(
                out,
                "proxy-side resets (its debug log, ms after the write), by round: {}",
                traced.join("; ")
            );
        }
        let odd: usize = self
            .rounds
            .iter()
            .map(|r| r.closed + r.data + r.errors + r.timeouts + r.unaffected_failed)
            .sum();
        if odd > 0 {
            let _ = writeln!(out, "PROBLEMS: {odd} connections ended unexpectedly:");
            for (i, r) in self.rounds.iter().enumerate() {
                if r.closed + r.data + r.errors + r.timeouts + r.unaffected_failed > 0 {
                    let _ = writeln!(
                        out,
                        "  round {}: affected: {} EOF, {} data, {} errors, {} timeouts; unaffected failed: {} ({})",
                        i + 1,
                        r.closed,
                        r.data,
                        r.errors,
                        r.timeouts,
                        r.unaffected_failed,
                        r.unaffected_error.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "columns: first/p50/p99/last: from the API write to each ECONNRESET; unaffected: group=b \
             connections still echoing after the round; commit, recheck: from the write to the proxy's \
             snapshot commit and to the end of its re-check (its log); took: the re-check itself; \
             reopen: from the delete until a new group=a connection echoed (10 ms polling); \
             wait px, wait api: ms the proxy's threads (summed) and the test API server's thread \
             waited for a CPU during the round (schedstat): CPU starvation."
        );

        let _ = writeln!(out, "\nProxy memory and CPU");
        let _ = writeln!(
            out,
            "{:<44} {:>10} {:>10} {:>10} {:>8}",
            "", "PSS MiB", "RSS MiB", "peak RSS", "CPU s"
        );
        for p in &self.points {
            let _ = writeln!(
                out,
                "{:<44} {:>10.1} {:>10.1} {:>10.1} {:>8.2}",
                p.label,
                mib(p.sample.pss_kib),
                mib(p.sample.rss_kib),
                mib(p.sample.hwm_kib),
                p.sample.cpu_s
            );
        }
        let s = &self.setup;
        let _ = writeln!(
            out,
            "\nsetup: API server loaded in {:.1} s; proxy ready {:.2} s and synced {:.2} s after start, \
             {:.2} CPU s",
            s.load_api.as_secs_f64(),
            s.ready.as_secs_f64(),
            s.synced.as_secs_f64(),
            s.sync_cpu_s
        );
        let c = &self.churn;
        if c.seconds > 0.0 {
            let writes = c.ops.total();
            let _ = writeln!(
                out,
                "churn: {writes} writes in {:.0} s ({:.1}/s; {} relabels, {} pod creates, {} pod deletes, \
                 {} policy modifications); the proxy committed {:.0} snapshots and used {:.2} CPU s \
                 ({:.1}% of a core, {:.2} ms per write); counts matched the API {:.0} ms after the last write; \
                 {:.0} teardowns, {:.0} watch restarts; lab connections failing after: {}",
                c.elapsed_s,
                writes as f64 / c.elapsed_s.max(1e-9),
                c.ops.relabelled,
                c.ops.created,
                c.ops.deleted,
                c.ops.policies_modified,
                c.state_updates,
                c.cpu_s,
                100.0 * c.cpu_s / c.elapsed_s.max(1e-9),
                1000.0 * c.cpu_s / (writes as f64).max(1.0),
                c.converged_ms,
                c.teardowns,
                c.watch_restarts,
                c.lab_failed,
            );
        }
        let _ = writeln!(
            out,
            "app saw {} resets from the proxy; bench and proxy at nice {}; load average {} before, {} after; {:.0} s in all",
            self.app_resets, self.nice, self.load.0, self.load.1, self.elapsed_s
        );
        out
    }

    /// Every figure, for `results.json`.
    pub fn json(&self) -> Value {
        let all = self.all_sorted();
        let rounds: Vec<Value> = self
            .rounds
            .iter()
            .map(|r| {
                let s = r.sorted();
                json!({
                    "affected": r.affected,
                    "reset": s.len(),
                    "eof": r.closed, "data": r.data, "errors": r.errors, "timeouts": r.timeouts,
                    "first_ms": s.first(), "p50_ms": percentile(&s, 0.5), "p99_ms": percentile(&s, 0.99),
                    "last_ms": s.last(),
                    "unaffected": r.unaffected, "unaffected_failed": r.unaffected_failed,
                    "unaffected_error": r.unaffected_error,
                    "write_ms": r.write_ms, "reopen_ms": r.reopen_ms,
                    "proxy_run_queue_wait_ms": r.proxy_wait_ms, "api_server_run_queue_wait_ms": r.api_wait_ms,
                    "commit_ms": r.commit_ms, "rechecked_ms": r.rechecked_ms,
                    "recheck_took_ms": r.recheck_took_ms, "torn_down": r.torn_down,
                    "proxy_resets": r.proxy_resets.map(|(n, first, last)| json!({"n": n, "first_ms": first, "last_ms": last})),
                    "resets_ms": s,
                })
            })
            .collect();
        let point = |p: &Point| {
            json!({
                "label": p.label, "pss_kib": p.sample.pss_kib, "rss_kib": p.sample.rss_kib,
                "peak_rss_kib": p.sample.hwm_kib, "cpu_s": p.sample.cpu_s,
            })
        };
        let c = &self.churn;
        json!({
            "binary": self.binary,
            "cluster": {
                "generated_pods": self.size.0, "generated_namespaces": self.size.1,
                "generated_policies": self.size.2,
                "proxy_pods": self.expected.0, "proxy_namespaces": self.expected.1,
                "proxy_policies": self.expected.2,
                "pod_json_bytes": self.setup.pod_json_bytes,
            },
            "connections": self.connections,
            "setup": {
                "load_api_s": self.setup.load_api.as_secs_f64(),
                "ready_s": self.setup.ready.as_secs_f64(),
                "synced_s": self.setup.synced.as_secs_f64(),
                "sync_cpu_s": self.setup.sync_cpu_s,
            },
            "propagation": {
                "samples": all.len(),
                "p50_ms": percentile(&all, 0.5), "p90_ms": percentile(&all, 0.9),
                "p99_ms": percentile(&all, 0.99), "max_ms": all.last(),
                "rounds": rounds,
            },
            "memory": self.points.iter().map(point).collect::<Vec<_>>(),
            "churn": {
                "seconds": c.seconds, "rate": c.rate, "elapsed_s": c.elapsed_s,
                "writes": c.ops.total(), "relabelled": c.ops.relabelled, "created": c.ops.created,
                "deleted": c.ops.deleted, "policies_modified": c.ops.policies_modified,
                "cpu_s": c.cpu_s, "state_updates": c.state_updates, "teardowns": c.teardowns,
                "watch_restarts": c.watch_restarts, "converged_ms": c.converged_ms,
                "lab_failed": c.lab_failed,
                "series": c.series.iter().map(|(t, pss, rss, cpu)| json!({"t_s": t, "pss_kib": pss, "rss_kib": rss, "cpu_s": cpu})).collect::<Vec<_>>(),
            },
            "app_resets": self.app_resets,
            "nice": self.nice,
            "load_before": self.load.0, "load_after": self.load.1,
            "elapsed_s": self.elapsed_s,
        })
    }

    /// Fills each round's commit and re-check times from the proxy's log.
    pub fn add_log_times(&mut self, log: &Path) {
        let Ok(text) = std::fs::read_to_string(log) else {
            return;
        };
        let events = log_events(&text);
        for round in &mut self.rounds {
            let Some(wall) = round.wall else { continue };
            let Ok(t0) = wall.duration_since(UNIX_EPOCH) else {
                continue;
            };
            let t0 = t0.as_micros() as i64;
            let commit = events
                .iter()
                .position(|e| e.micros >= t0 && e.kind == LogKind::Committed);
            let Some(commit_at) = commit else { continue };
            let commit = events[commit_at];
            round.commit_ms = Some((commit.micros - t0) as f64 / 1000.0);
            // The connection tasks' resets, up to the next commit (the delete's).
            let resets: Vec<i64> = events[commit_at + 1..]
                .iter()
                .take_while(|e| e.kind != LogKind::Committed)
                .filter(|e| e.kind == LogKind::Reset)
                .map(|e| e.micros - t0)
                .collect();
            if let (Some(first), Some(last)) = (resets.iter().min(), resets.iter().max()) {
                round.proxy_resets =
                    Some((resets.len(), *first as f64 / 1000.0, *last as f64 / 1000.0));
            }
            if let Some(applied) = events.iter().find(|e| {
                e.micros >= commit.micros
                    && matches!(e.kind, LogKind::Rechecked { torn_down, .. } if torn_down > 0)
            }) {
                round.rechecked_ms = Some((applied.micros - t0) as f64 / 1000.0);
                if let LogKind::Rechecked { took, torn_down } = applied.kind {
                    round.recheck_took_ms = took.map(|d| d.as_secs_f64() * 1000.0);
                    round.torn_down = Some(torn_down);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LogKind {
    Committed,
    Reset,
    Rechecked {
        took: Option<Duration>,
        torn_down: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct LogEvent {
    micros: i64,
    kind: LogKind,
}

/// What a connection task logs (at debug) as it resets a connection a re-check condemned.
const RESET_MESSAGE: &str = "Resetting a connection no longer allowed";

/// The proxy's commit, re-check and reset events, in log order.
fn log_events(text: &str) -> Vec<LogEvent> {
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.contains("Cluster state committed")
            && !line.contains("live connections re-checked")
            && !line.contains(RESET_MESSAGE)
        {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(micros) = v["timestamp"].as_str().and_then(parse_rfc3339_micros) else {
            continue;
        };
        let fields = &v["fields"];
        let kind = match fields["message"].as_str() {
            Some("Cluster state committed") => LogKind::Committed,
            Some(RESET_MESSAGE) => LogKind::Reset,
            Some(m) if m.contains("live connections re-checked") => LogKind::Rechecked {
                took: fields["took"].as_str().and_then(parse_debug_duration),
                torn_down: fields["torn_down"].as_u64().unwrap_or(0),
            },
            _ => continue,
        };
        out.push(LogEvent { micros, kind });
    }
    out
}

/// `2025-01-02T03:04:05.678901Z` as microseconds since the Unix epoch.
fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let frac_micros = format!("{frac:0<6}")[..6].parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + min * 60 + sec) * 1_000_000) + frac_micros)
}

/// A `Duration`'s `Debug` text (`1.234ms`, `56.7µs`, `2s`) back to a duration.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ns" => n * 1e-9,
        "µs" | "us" => n * 1e-6,
        "ms" => n * 1e-3,
        "s" => n,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}
