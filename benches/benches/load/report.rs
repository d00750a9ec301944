//! The figures: per mode and phase, the table on stdout, the targets of
//! issue 17 and the JSON file. Relay figures are set against direct from the
//! same run, and Picket's against the peers' from the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Outcome;
use crate::setup::{Bench, Mode, POD_CORE};
use crate::Config;

/// The measurements, each run once per mode per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// One download stream.
    Bulk1,
    /// Several download streams at once.
    Bulk8,
    /// Short connections, several closed loops: the rate.
    ConnRate,
    /// Short connections, one loop: the unloaded latency.
    ConnLatency,
    /// Request and reply on one open connection.
    PingPong,
    /// HTTP/1.1 requests on kept-alive connections, small responses.
    HttpKeepAlive,
}

impl Phase {
    /// Every phase, in the order a round runs them.
    pub const ALL: [Phase; 6] = [
        Phase::Bulk1,
        Phase::Bulk8,
        Phase::ConnRate,
        Phase::ConnLatency,
        Phase::PingPong,
        Phase::HttpKeepAlive,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Bulk1 => "bulk-1",
            Phase::Bulk8 => "bulk-8",
            Phase::ConnRate => "conn-rate",
            Phase::ConnLatency => "conn-latency",
            Phase::PingPong => "ping-pong",
            Phase::HttpKeepAlive => "http-keepalive",
        }
    }

    fn is_bulk(self) -> bool {
        matches!(self, Phase::Bulk1 | Phase::Bulk8)
    }
}

/// One phase of one mode, over all rounds.
#[derive(Debug, Default)]
pub struct PhaseStats {
    /// Gbit/s (bulk) or connections or exchanges per second, one per round.
    pub per_round: Vec<f64>,
    /// Every latency, in nanoseconds (sorted once the run ends).
    pub latencies_ns: Vec<u32>,
    /// Each round's latency p50 and p99, in microseconds.
    pub round_percentiles_us: Vec<[f64; 2]>,
    /// Bytes the client read (bulk), warm-up included.
    pub bytes: u64,
    /// Connections or exchanges completed.
    pub count: u64,
    /// Failures.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// The relay's CPU seconds over the phase, all rounds.
    pub relay_cpu: f64,
    /// The app's CPU seconds over the phase, all rounds.
    pub app_cpu: f64,
}

impl PhaseStats {
    /// Adds one round.
    pub fn add(&mut self, phase: Phase, outcome: Outcome, relay_cpu: f64, app_cpu: f64) {
        let secs = outcome.secs.max(f64::EPSILON);
        self.per_round.push(if phase.is_bulk() {
            outcome.bytes as f64 * 8.0 / secs / 1e9
        } else {
            outcome.count as f64 / secs
        });
        self.bytes += outcome.bytes_total;
        self.count += outcome.count;
        self.errors += outcome.errors;
        if self.first_error.is_none() {
            self.first_error = outcome.first_error;
        }
        let mut round = outcome.latencies_ns;
        round.sort_unstable();
        if !round.is_empty() {
            self.round_percentiles_us
                .push([percentile_us(&round, 0.5), percentile_us(&round, 0.99)]);
        }
        self.latencies_ns.extend(round);
        self.relay_cpu += relay_cpu;
        self.app_cpu += app_cpu;
    }

    /// The median over rounds of the per-round rate.
    pub fn rate(&self) -> f64 {
        median(&self.per_round)
    }

    /// The median over rounds of this rate over `base`'s in the same round.
    pub fn ratio_to(&self, base: &PhaseStats) -> f64 {
        let ratios: Vec<f64> = self
            .per_round
            .iter()
            .zip(&base.per_round)
            .map(|(v, b)| v / b)
            .collect();
        median(&ratios)
    }

    /// A latency percentile over all rounds' latencies pooled, in µs.
    pub fn pooled_us(&self, q: f64) -> f64 {
        percentile_us(&self.latencies_ns, q)
    }

    /// The median over rounds of a round's p50 (`P50`) or p99 (`P99`), in µs.
    pub fn latency_us(&self, which: usize) -> f64 {
        let values: Vec<f64> = self.round_percentiles_us.iter().map(|p| p[which]).collect();
        median(&values)
    }

    /// The median over rounds of the latency this adds to `base`'s in the
    /// same round, in µs.
    pub fn added_us(&self, base: &PhaseStats, which: usize) -> f64 {
        let added: Vec<f64> = self
            .round_percentiles_us
            .iter()
            .zip(&base.round_percentiles_us)
            .map(|(v, b)| v[which] - b[which])
            .collect();
        median(&added)
    }

    /// Relay CPU microseconds per connection (or exchange).
    pub fn relay_us_per_count(&self) -> f64 {
        self.relay_cpu * 1e6 / self.count as f64
    }

    /// App CPU microseconds per connection (or exchange).
    pub fn app_us_per_count(&self) -> f64 {
        self.app_cpu * 1e6 / self.count as f64
    }

    /// Relay CPU seconds per GB moved.
    pub fn relay_s_per_gb(&self) -> f64 {
        self.relay_cpu / (self.bytes as f64 / 1e9)
    }

    /// App CPU seconds per GB moved.
    pub fn app_s_per_gb(&self) -> f64 {
        self.app_cpu / (self.bytes as f64 / 1e9)
    }
}

/// The relay's memory, measured before the load.
#[derive(Debug, Default)]
pub struct Memory {
    /// PSS with no connection, in KiB.
    pub idle_pss_kib: u64,
    /// Of which anonymous (heap, stacks) and file-backed (binary, libraries).
    pub idle_pss_anon_file_kib: (u64, u64),
    /// Open files with no connection.
    pub idle_fds: usize,
    /// Threads with no connection.
    pub idle_threads: u64,
    /// Idle connections held open.
    pub held: usize,
    /// PSS while holding them, in KiB.
    pub held_pss_kib: u64,
    /// Open files while holding them.
    pub held_fds: usize,
    /// PSS once the whole run is over, idle again.
    pub after_run_pss_kib: Option<u64>,
}

impl Memory {
    /// Bytes of PSS per idle connection.
    pub fn bytes_per_connection(&self) -> f64 {
        (self.held_pss_kib as f64 - self.idle_pss_kib as f64) * 1024.0 / self.held as f64
    }

    /// Open files per idle connection.
    pub fn fds_per_connection(&self) -> f64 {
        (self.held_fds as f64 - self.idle_fds as f64) / self.held as f64
    }
}

/// Everything about one mode.
#[derive(Debug)]
pub struct ModeStats {
    /// The mode.
    pub mode: Mode,
    phases: BTreeMap<Phase, PhaseStats>,
    /// The relay's memory (none for direct).
    pub memory: Option<Memory>,
}

impl ModeStats {
    /// The stats of a phase, to add to.
    pub fn phase_mut(&mut self, phase: Phase) -> &mut PhaseStats {
        self.phases.entry(phase).or_default()
    }

    fn phase(&self, phase: Phase) -> &PhaseStats {
        static EMPTY: PhaseStats = PhaseStats {
            per_round: Vec::new(),
            latencies_ns: Vec::new(),
            round_percentiles_us: Vec::new(),
            bytes: 0,
            count: 0,
            errors: 0,
            first_error: None,
            relay_cpu: 0.0,
            app_cpu: 0.0,
        };
        self.phases.get(&phase).unwrap_or(&EMPTY)
    }
}

/// The run: its setting and every mode's figures.
#[derive(Debug)]
pub struct Results {
    /// One per mode, in [`Mode::ALL`] order.
    pub modes: Vec<ModeStats>,
    config: Config,
    binary: PathBuf,
    workers: Option<usize>,
    haproxy: String,
    peers: String,
    kernel: String,
    load_before: String,
    load_after: String,
    elapsed: Duration,
}

/// One target of issue 17, checked against Picket's figure.
#[derive(Debug)]
struct Target {
    name: String,
    picket: String,
    others: String,
    met: bool,
}

impl Results {
    /// Empty results for the bench's modes.
    pub fn new(config: &Config, bench: &Bench, binary: &Path, load_before: String) -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_default();
        Self {
            modes: bench
                .servers
                .iter()
                .map(|s| ModeStats {
                    mode: s.mode,
                    phases: BTreeMap::new(),
                    memory: None,
                })
                .collect(),
            config: config.clone(),
            binary: binary.to_path_buf(),
            workers: bench.workers,
            haproxy: bench.haproxy_version.clone(),
            peers: bench.peer_versions.clone(),
            kernel,
            load_before,
            load_after: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Sorts the latencies and records the end of the run.
    pub fn finish(&mut self, elapsed: Duration, load_after: String) {
        for mode in &mut self.modes {
            for stats in mode.phases.values_mut() {
                stats.latencies_ns.sort_unstable();
            }
        }
        self.elapsed = elapsed;
        self.load_after = load_after;
    }

    fn get(&self, mode: Mode) -> Option<&ModeStats> {
        self.modes.iter().find(|m| m.mode == mode)
    }

    fn direct(&self) -> Option<&ModeStats> {
        self.get(Mode::Direct)
    }

    fn workers_text(&self) -> String {
        match self.workers {
            Some(w) => format!("--workers {w}"),
            None => "default runtime (this build has no --workers flag)".into(),
        }
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "\nPicket load benchmark: {} interleaved rounds, {:.1} s bulk/rate phases, {:.1} s latency phases; {:.0} s in all",
            c.rounds,
            c.phase.as_secs_f64(),
            c.latency_phase().as_secs_f64(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "app and relay pinned to core {POD_CORE}, load generator to core {}; nice {}; idle spinners {}; load average {} before, {} after",
            crate::setup::CLIENT_CORE,
            c.nice,
            if c.spin { "on" } else { "off" },
            self.load_before,
            self.load_after
        );
        let _ = writeln!(
            out,
            "picket: {} ({}); kernel {}",
            self.binary.display(),
            self.workers_text(),
            self.kernel
        );
        let _ = writeln!(
            out,
            "haproxy: {} (nbthread 1); haproxy-splice: {}",
            self.haproxy,
            self.config.splice.options()
        );
        let _ = writeln!(
            out,
            "nginx, envoy: {} (one worker each; envoy as Istio's inbound passthrough)",
            self.peers
        );
        let _ = writeln!(
            out,
            "medians over rounds of each round's figure; (×) and (+): median over rounds of the ratio to, or the latency added to, direct in the same round\n"
        );
        const LABEL: usize = 40;
        const CELL: usize = 20;
        let _ = write!(out, "{:LABEL$}", "");
        for m in &self.modes {
            let _ = write!(out, "{:>CELL$}", m.mode.name());
        }
        out.push('\n');
        for row in ROWS {
            let _ = write!(out, "{:LABEL$}", row.label);
            for m in &self.modes {
                let _ = write!(out, "{:>CELL$}", self.cell(row, m));
            }
            out.push('\n');
        }
        let errors: Vec<String> = self
            .modes
            .iter()
            .flat_map(|m| {
                m.phases.iter().filter(|(_, s)| s.errors > 0).map(|(p, s)| {
                    format!(
                        "{} {}: {} ({})",
                        m.mode.name(),
                        p.name(),
                        s.errors,
                        s.first_error.as_deref().unwrap_or("?")
                    )
                })
            })
            .collect();
        let _ = writeln!(
            out,
            "\nfailed connections: {}",
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join("; ")
            }
        );
        let _ = writeln!(
            out,
            "\nTargets of issue 17 (Picket against the best peer of the same run):"
        );
        for t in self.targets() {
            let _ = writeln!(
                out,
                "  {:8} {}: picket {}; {}",
                if t.met { "[met]" } else { "[MISSED]" },
                t.name,
                t.picket,
                t.others
            );
        }
        out
    }

    fn cell(&self, row: &Row, m: &ModeStats) -> String {
        let direct = self.direct();
        match row.kind {
            RowKind::Rate(phase) => {
                let stats = m.phase(phase);
                match direct {
                    Some(d) if m.mode != Mode::Direct => format!(
                        "{} ({:.2}×)",
                        fmt_num(stats.rate()),
                        stats.ratio_to(d.phase(phase))
                    ),
                    _ => fmt_num(stats.rate()),
                }
            }
            RowKind::Latency(phase, which) => {
                let stats = m.phase(phase);
                let value = stats.latency_us(which);
                match direct {
                    Some(d) if m.mode != Mode::Direct => {
                        format!("{value:.1} ({:+.1})", stats.added_us(d.phase(phase), which))
                    }
                    _ => format!("{value:.1}"),
                }
            }
            RowKind::RelayPerConnection(phase) if m.mode != Mode::Direct => {
                format!("{:.1}", m.phase(phase).relay_us_per_count())
            }
            RowKind::RelayPerGb(phase) if m.mode != Mode::Direct => {
                format!("{:.3}", m.phase(phase).relay_s_per_gb())
            }
            RowKind::AppPerConnection(phase) => {
                format!("{:.1}", m.phase(phase).app_us_per_count())
            }
            RowKind::AppPerGb(phase) => format!("{:.3}", m.phase(phase).app_s_per_gb()),
            RowKind::Memory(f) => m.memory.as_ref().map_or("-".into(), f),
            _ => "-".into(),
        }
    }

    /// The targets of issue 17: Picket (redirect interception, one hop)
    /// against the best of the peers a user would pick instead, each figure
    /// the median over rounds of the per-round ratio to direct.
    fn targets(&self) -> Vec<Target> {
        let (Some(direct), Some(picket)) = (self.direct(), self.get(Mode::Picket)) else {
            return Vec::new();
        };
        let peers: Vec<&ModeStats> = self.modes.iter().filter(|m| m.mode.is_peer()).collect();
        let describe = |f: &dyn Fn(&ModeStats) -> String| {
            peers
                .iter()
                .map(|m| format!("{} {}", m.mode.name(), f(m)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // The best peer's figure: the highest, or the lowest.
        let best = |f: &dyn Fn(&ModeStats) -> f64, highest: bool| {
            let values = peers.iter().map(|m| f(m)).filter(|v| !v.is_nan());
            if highest {
                values.fold(f64::NEG_INFINITY, f64::max)
            } else {
                values.fold(f64::INFINITY, f64::min)
            }
        };
        let mut targets = Vec::new();

        for (phase, what) in [
            (Phase::HttpKeepAlive, "HTTP keep-alive requests/s"),
            (Phase::ConnRate, "connection rate (8 loops)"),
        ] {
            let ratio = |m: &ModeStats| m.phase(phase).ratio_to(direct.phase(phase));
            targets.push(Target {
                name: format!("{what} above the best peer's, × direct"),
                picket: format!("{:.2}×", ratio(picket)),
                others: describe(&|m| format!("{:.2}×", ratio(m))),
                met: ratio(picket) > best(&ratio, true),
            });
        }

        for (which, qname) in [(P50, "p50"), (P99, "p99")] {
            let added = |m: &ModeStats| {
                m.phase(Phase::PingPong)
                    .added_us(direct.phase(Phase::PingPong), which)
            };
            targets.push(Target {
                name: format!("ping-pong added latency below the best peer's, {qname}"),
                picket: format!("{:+.1} µs", added(picket)),
                others: describe(&|m| format!("{:+.1} µs", added(m))),
                met: added(picket) < best(&added, false),
            });
        }

        let per_conn = |m: &ModeStats| m.phase(Phase::ConnRate).relay_us_per_count();
        targets.push(Target {
            name: "relay CPU per short connection below the best peer's".into(),
            picket: format!("{:.1} µs", per_conn(picket)),
            others: describe(&|m| format!("{:.1} µs", per_conn(m))),
            met: per_conn(picket) < best(&per_conn, false),
        });

        let bulk = |m: &ModeStats| m.phase(Phase::Bulk1).ratio_to(direct.phase(Phase::Bulk1));
        targets.push(Target {
            name: format!("1-stream throughput not below issue 17's {BULK1_BEFORE:.2}× direct"),
            picket: format!("{:.2}×", bulk(picket)),
            others: describe(&|m| format!("{:.2}×", bulk(m))),
            met: bulk(picket) >= BULK1_BEFORE,
        });

        if let Some(memory) = &picket.memory {
            let idle = |m: &ModeStats| m.memory.as_ref().map_or(0, |mem| mem.idle_pss_kib);
            targets.push(Target {
                name: "idle PSS ≤ 4 MiB (4096 KiB)".into(),
                picket: format!("{} KiB", idle(picket)),
                others: describe(&|m| format!("{} KiB", idle(m))),
                met: memory.idle_pss_kib <= 4096,
            });
            let per = |m: &ModeStats| {
                m.memory
                    .as_ref()
                    .map_or(f64::NAN, Memory::bytes_per_connection)
            };
            let haproxy = self.get(Mode::Haproxy).map_or(f64::NAN, per);
            targets.push(Target {
                name: format!(
                    "PSS per idle connection below HAProxy's ({} held)",
                    memory.held
                ),
                picket: format!("{:.0} B", per(picket)),
                others: describe(&|m| format!("{:.0} B", per(m))),
                met: per(picket) < haproxy,
            });
        }
        targets
    }

    /// Every figure, for `target/picket-load/results.json`.
    pub fn json(&self) -> Value {
        let direct = self.direct();
        let mut modes = serde_json::Map::new();
        for m in &self.modes {
            let mut phases = serde_json::Map::new();
            for phase in Phase::ALL {
                let s = m.phase(phase);
                let base = direct.map(|d| d.phase(phase));
                let mut v = json!({
                    "per_round": s.per_round,
                    "median": s.rate(),
                    "unit": if phase.is_bulk() { "Gbit/s" } else { "per second" },
                    "count": s.count,
                    "bytes": s.bytes,
                    "errors": s.errors,
                    "first_error": s.first_error,
                    "relay_cpu_s": s.relay_cpu,
                    "app_cpu_s": s.app_cpu,
                    "app_us_per_count": s.app_us_per_count(),
                });
                if phase.is_bulk() {
                    v["app_s_per_gb"] = json!(s.app_s_per_gb());
                } else {
                    v["round_p50_p99_us"] = json!(s.round_percentiles_us);
                    v["p50_us"] = json!(s.latency_us(P50));
                    v["p99_us"] = json!(s.latency_us(P99));
                    if let (Some(b), true) = (base, m.mode != Mode::Direct) {
                        v["added_p50_us"] = json!(s.added_us(b, P50));
                        v["added_p99_us"] = json!(s.added_us(b, P99));
                    }
                    for (q, name) in [
                        (0.5, "pooled_p50_us"),
                        (0.9, "pooled_p90_us"),
                        (0.99, "pooled_p99_us"),
                        (0.999, "pooled_p999_us"),
                    ] {
                        v[name] = json!(s.pooled_us(q));
                    }
                }
                if m.mode != Mode::Direct {
                    v["relay_us_per_count"] = json!(s.relay_us_per_count());
                    v["relay_s_per_gb"] = json!(s.relay_s_per_gb());
                    if let Some(b) = base {
                        v["ratio_to_direct"] = json!(s.ratio_to(b));
                        v["ratio_of_medians"] = json!(s.rate() / b.rate());
                    }
                }
                phases.insert(phase.name().into(), v);
            }
            let mut mode = json!({ "phases": phases });
            if let Some(mem) = &m.memory {
                mode["memory"] = json!({
                    "idle_pss_kib": mem.idle_pss_kib,
                    "idle_pss_anon_kib": mem.idle_pss_anon_file_kib.0,
                    "idle_pss_file_kib": mem.idle_pss_anon_file_kib.1,
                    "idle_fds": mem.idle_fds,
                    "idle_threads": mem.idle_threads,
                    "held_connections": mem.held,
                    "held_pss_kib": mem.held_pss_kib,
                    "held_fds": mem.held_fds,
                    "pss_bytes_per_idle_connection": mem.bytes_per_connection(),
                    "fds_per_idle_connection": mem.fds_per_connection(),
                    "after_run_pss_kib": mem.after_run_pss_kib,
                });
            }
            modes.insert(m.mode.name().into(), mode);
        }
        let targets: Vec<Value> = self
            .targets()
            .into_iter()
            .map(
                |t| json!({"target": t.name, "picket": t.picket, "others": t.others, "met": t.met}),
            )
            .collect();
        let c = &self.config;
        json!({
            "config": {
                "rounds": c.rounds,
                "phase_s": c.phase.as_secs_f64(),
                "latency_phase_s": c.latency_phase().as_secs_f64(),
                "rate_concurrency": c.concurrency,
                "bulk_streams": c.streams,
                "haproxy_splice": c.splice.options(),
                "nice": c.nice,
                "idle_spinners": c.spin,
                "idle_connections": c.idle_connections,
            },
            "environment": {
                "picket_binary": self.binary,
                "picket_workers": self.workers,
                "haproxy": self.haproxy,
                "nginx_envoy": self.peers,
                "kernel": self.kernel,
                "pod_core": POD_CORE,
                "client_core": crate::setup::CLIENT_CORE,
                "loadavg_before": self.load_before,
                "loadavg_after": self.load_after,
                "elapsed_s": self.elapsed.as_secs_f64(),
            },
            "modes": modes,
            "targets": targets,
        })
    }
}

#[derive(Debug)]
enum RowKind {
    Rate(Phase),
    Latency(Phase, usize),
    RelayPerConnection(Phase),
    RelayPerGb(Phase),
    AppPerConnection(Phase),
    AppPerGb(Phase),
    Memory(fn(&Memory) -> String),
}

#[derive(Debug)]
struct Row {
    label: &'static str,
    kind: RowKind,
}

const ROWS: &[Row] = &[
    Row {
        label: "bulk, 1 stream (Gbit/s)",
        kind: RowKind::Rate(Phase::Bulk1),
    },
    Row {
        label: "bulk, 8 streams (Gbit/s)",
        kind: RowKind::Rate(Phase::Bulk8),
    },
    Row {
        label: "short connections/s, 8 loops",
        kind: RowKind::Rate(Phase::ConnRate),
    },
    Row {
        label: "  latency p50 (µs)",
        kind: RowKind::Latency(Phase::ConnRate, P50),
    },
    Row {
        label: "  latency p99 (µs)",
        kind: RowKind::Latency(Phase::ConnRate, P99),
    },
    Row {
        label: "short connections/s, 1 loop",
        kind: RowKind::Rate(Phase::ConnLatency),
    },
    Row {
        label: "  latency p50 (µs)",
        kind: RowKind::Latency(Phase::ConnLatency, P50),
    },
    Row {
        label: "  latency p99 (µs)",
        kind: RowKind::Latency(Phase::ConnLatency, P99),
    },
    Row {
        label: "ping-pong exchanges/s",
        kind: RowKind::Rate(Phase::PingPong),
    },
    Row {
        label: "  latency p50 (µs)",
        kind: RowKind::Latency(Phase::PingPong, P50),
    },
    Row {
        label: "  latency p99 (µs)",
        kind: RowKind::Latency(Phase::PingPong, P99),
    },
    Row {
        label: "HTTP keep-alive requests/s, 16 conns",
        kind: RowKind::Rate(Phase::HttpKeepAlive),
    },
    Row {
        label: "  latency p50 (µs)",
        kind: RowKind::Latency(Phase::HttpKeepAlive, P50),
    },
    Row {
        label: "  latency p99 (µs)",
        kind: RowKind::Latency(Phase::HttpKeepAlive, P99),
    },
    Row {
        label: "relay CPU per connection (µs), 8 loops",
        kind: RowKind::RelayPerConnection(Phase::ConnRate),
    },
    Row {
        label: "relay CPU per connection (µs), 1 loop",
        kind: RowKind::RelayPerConnection(Phase::ConnLatency),
    },
    Row {
        label: "relay CPU per exchange (µs), ping-pong",
        kind: RowKind::RelayPerConnection(Phase::PingPong),
    },
    Row {
        label: "relay CPU per request (µs), HTTP",
        kind: RowKind::RelayPerConnection(Phase::HttpKeepAlive),
    },
    Row {
        label: "relay CPU per GB (s), 1 stream",
        kind: RowKind::RelayPerGb(Phase::Bulk1),
    },
    Row {
        label: "relay CPU per GB (s), 8 streams",
        kind: RowKind::RelayPerGb(Phase::Bulk8),
    },
    Row {
        label: "app CPU per connection (µs), 8 loops",
        kind: RowKind::AppPerConnection(Phase::ConnRate),
    },
    Row {
        label: "app CPU per GB (s), 1 stream",
        kind: RowKind::AppPerGb(Phase::Bulk1),
    },
    Row {
        label: "relay idle PSS (KiB)",
        kind: RowKind::Memory(|m| m.idle_pss_kib.to_string()),
    },
    Row {
        label: "  of which anon / file (KiB)",
        kind: RowKind::Memory(|m| {
            format!(
                "{} / {}",
                m.idle_pss_anon_file_kib.0, m.idle_pss_anon_file_kib.1
            )
        }),
    },
    Row {
        label: "relay PSS per idle connection (B)",
        kind: RowKind::Memory(|m| format!("{:.0}", m.bytes_per_connection())),
    },
    Row {
        label: "relay fds per idle connection",
        kind: RowKind::Memory(|m| format!("{:.2}", m.fds_per_connection())),
    },
    Row {
        label: "relay threads (idle)",
        kind: RowKind::Memory(|m| m.idle_threads.to_string()),
    },
    Row {
        label: "relay PSS after the run (KiB)",
        kind: RowKind::Memory(|m| m.after_run_pss_kib.map_or("-".into(), |k| k.to_string())),
    },
];

/// Picket's 1-stream throughput when issue 17 was filed, × direct.
const BULK1_BEFORE: f64 = 0.76;

/// Index of the p50 in [`PhaseStats::round_percentiles_us`].
pub const P50: usize = 0;
/// Index of the p99 in [`PhaseStats::round_percentiles_us`].
pub const P99: usize = 1;

/// A percentile of sorted nanoseconds, in microseconds (nearest rank).
fn percentile_us(sorted_ns: &[u32], q: f64) -> f64 {
    let n = sorted_ns.len();
    if n == 0 {
        return f64::NAN;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    f64::from(sorted_ns[rank - 1]) / 1000.0
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
