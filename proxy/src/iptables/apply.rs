//! Applying the rules: choose a backend, read what is there, restore.
//!
//! Does I/O through a `Runner`, so tests can record commands instead of
//! running them. The xtables lock is global to the machine: every call waits
//! for it (`-w`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::{self, Family, Interception, Jumps, Plan, CHAIN, TPROXY_CHAIN};

/// Which iptables implementation holds the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// iptables over nf_tables.
    Nft,
    /// The legacy xtables backend.
    Legacy,
}

/// How to choose the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Reuse the backend that holds our chain, else nft when it works, else legacy.
    Auto,
    /// Use this one.
    Force(Backend),
}

/// What `apply` did for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The family.
    pub family: Family,
    /// The backend used.
    pub backend: Backend,
    /// Whether the jump was already there (a re-run).
    pub rerun: bool,
}

/// Whether IPv6 rules must be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Rules {
    /// Not at all (`--ipv6 off`, or the kernel has no IPv6).
    Off,
    /// Where they can be: the pod has no IPv6 address but loopback, so a
    /// failure leaves nothing to bypass the proxy through.
    IfPossible,
    /// Mandatory: `--ipv6 on`, or the pod has this IPv6 address (global, or
    /// link-local, which a neighbour on the bridge reaches) and without rules
    /// its IPv6 inbound traffic would reach the app directly.
    Required(Option<std::net::Ipv6Addr>),
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No iptables tool for this family was found.
    #[error("no iptables binary found: need {0} (install the iptables package)")]
    NoBinary(String),
    /// The process lacks CAP_NET_ADMIN.
    #[error("missing capability CAP_NET_ADMIN (the init container needs NET_ADMIN and NET_RAW)")]
    NoNetAdmin,
    /// A tool ran and failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The kernel refused the tproxy rules (TPROXY or connmark missing).
    #[error("{command} refused the tproxy rules ({stderr}): --interception tproxy needs TPROXY in the kernel (xt_TPROXY, nf_tproxy), connmark and conntrack (xt_connmark, xt_conntrack); init stops here, it never falls back to redirect")]
    NoTproxy {
        /// The command line.
        command: String,
        /// The first line it printed on stderr.
        stderr: String,
    },
    /// The `ip` tool, needed for the policy routing of tproxy interception, is missing.
    #[error("no ip binary found: --interception tproxy writes its policy routing with ip (install the iproute2 package)")]
    NoIp,
    /// IPv6 rules are mandatory and could not be written.
    #[error("ipv6 rules are required ({why}), but cannot be written: {source}")]
    Ipv6Required {
        /// Why they are required.
        why: String,
        /// Why they could not be written.
        #[source]
        source: Box<ApplyError>,
    },
    /// A tool could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Output of one command.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs external commands; tests substitute a recording runner.
pub trait Runner {
    /// Whether a program can be found.
    fn exists(&self, program: &str) -> bool;
    /// Runs a program with arguments and optional stdin.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<RunOutput>;
}

/// Runs real commands, looking programs up in PATH and the sbin directories.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommandRunner;

// === impl Backend ===

impl Backend {
    /// The tool name for a family and action (`save` or `restore`), e.g. `ip6tables-nft-restore`.
    pub fn tool(self, family: Family, action: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let kind = match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        format!("{base}-{kind}-{action}")
    }

    /// `nft` or `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

// === impl CommandRunner ===

impl CommandRunner {
    fn find(program: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    }
}

impl Runner for CommandRunner {
    fn exists(&self, program: &str) -> bool {
        Self::find(program).is_some()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<RunOutput> {
        let path = Self::find(program).unwrap_or_else(|| Path::new(program).to_path_buf());
        let mut child = Command::new(path)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(RunOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Applies the IPv6 rules as `need` says: `Ok(None)` when skipped (off, or
/// not possible where not required), `Ok(Some(applied))` when written.
pub fn apply_ipv6(
    plan: &Plan,
    need: Ipv6Rules,
    choice: BackendChoice,
    runner: &dyn Runner,
) -> Result<Option<Applied>, ApplyError> {
    match need {
        Ipv6Rules::Off => Ok(None),
        Ipv6Rules::IfPossible => match apply(plan, Family::V6, choice, runner) {
            Ok(applied) => Ok(Some(applied)),
            Err(error) => {
                tracing::info!(%error, "IPv6 rules skipped: the pod has no IPv6 address");
                Ok(None)
            }
        },
        Ipv6Rules::Required(address) => {
            apply(plan, Family::V6, choice, runner)
                .map(Some)
                .map_err(|source| ApplyError::Ipv6Required {
                    why: match address {
                        Some(a) => format!("the pod has the IPv6 address {a}"),
                        None => "--ipv6 on".into(),
                    },
                    source: Box::new(source),
                })
        }
    }
}

/// Applies the plan for one family: picks the backend, checks for a previous
/// run, and restores the document with `--noflush` (other chains stay).
pub fn apply(
    plan: &Plan,
    family: Family,
    choice: BackendChoice,
    runner: &dyn Runner,
) -> Result<Applied, ApplyError> {
    let backend = choose_backend(family, choice, runner)?;
    let save = backend.tool(family, "save");
    let current = run_checked(runner, &save, &[], None)?;
    let present = Jumps::in_listing(&current.stdout);
    let rerun = present.rerun(plan.interception);
    let document = rules::render(plan, family, present);
    let restore = backend.tool(family, "restore");
    let restored = run_checked(runner, &restore, &["-w", "5", "--noflush"], Some(&document));
    match restored {
        Err(ApplyError::Failed { command, stderr })
            if matches!(plan.interception, Interception::Tproxy { .. }) =>
        {
            return Err(ApplyError::NoTproxy {
                command,
                stderr: stderr.lines().next().unwrap_or_default().to_string(),
            });
        }
        other => other?,
    };
    Ok(Applied {
        family,
        backend,
        rerun,
    })
}

/// The backend for a family: a forced one, else the one holding our inbound chain (either mode's),
/// else nft when nf_tables answers, else legacy.
pub fn choose_backend(
    family: Family,
    choice: BackendChoice,
    runner: &dyn Runner,
) -> Result<Backend, ApplyError> {
    let available: Vec<Backend> = [Backend::Nft, Backend::Legacy]
        .into_iter()
        .filter(|b| {
            runner.exists(&b.tool(family, "restore")) && runner.exists(&b.tool(family, "save"))
        })
        .collect();
    if let BackendChoice::Force(backend) = choice {
        if !available.contains(&backend) {
            return Err(ApplyError::NoBinary(backend.tool(family, "restore")));
        }
        return Ok(backend);
    }
    if available.is_empty() {
        return Err(ApplyError::NoBinary(format!(
            "{} or {}",
            Backend::Nft.tool(family, "restore"),
            Backend::Legacy.tool(family, "restore")
        )));
    }
    let mut working = Vec::new();
    for backend in &available {
        let Ok(out) = runner.run(&backend.tool(family, "save"), &[], None) else {
            continue;
        };
        let ours = [CHAIN, TPROXY_CHAIN].map(|chain| format!(":{chain} "));
        if out.success && ours.iter().any(|chain| out.stdout.contains(chain)) {
            return Ok(*backend);
        }
        if out.success {
            working.push(*backend);
        }
    }
    Ok(working.first().copied().unwrap_or(available[0]))
}

fn run_checked(
    runner: &dyn Runner,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<RunOutput, ApplyError> {
    let command = format!("{program} {}", args.join(" "));
    let out = runner
        .run(program, args, stdin)
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.success {
        if out.stderr.contains("Permission denied") || out.stderr.contains("must be root") {
            return Err(ApplyError::NoNetAdmin);
        }
        return Err(ApplyError::Failed {
            command,
            stderr: out.stderr,
        });
    }
    Ok(out)
}

/// Whether this process has CAP_NET_ADMIN in its effective set.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Records commands and answers `save` with a fixed nat table.
    struct Recorder {
        tools: Vec<&'static str>,
        nft_save: &'static str,
        legacy_save: &'static str,
        calls: RefCell<Vec<(String, Option<String>)>>,
    }

    impl Runner for Recorder {
        fn exists(&self, program: &str) -> bool {
            self.tools.contains(&program)
        }
        fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<RunOutput> {
            self.calls.borrow_mut().push((
                format!("{program} {}", args.join(" ")),
                stdin.map(str::to_string),
            ));
            let stdout = if program.contains("nft-save") {
                self.nft_save
            } else if program.contains("legacy-save") {
                self.legacy_save
            } else {
                ""
            };
            Ok(RunOutput {
                success: true,
                stdout: stdout.to_string(),
                stderr: String::new(),
            })
        }
    }

    const ALL: [&str; 4] = [
        "iptables-nft-save",
        "iptables-nft-restore",
        "iptables-legacy-save",
        "iptables-legacy-restore",
    ];

    fn plan() -> Plan {
        Plan {
            inbound_port: 15006,
            admin_port: 15020,
            outbound: None,
            exclude_inbound_ports: vec![],
            interception: Interception::Redirect,
        }
    }

    #[test]
    fn ipv6_rules_are_mandatory_on_a_pod_with_an_ipv6_address() {
        // Only the IPv4 tools: the IPv6 rules cannot be written.
        let r = Recorder {
            tools: vec!["iptables-nft-restore", "iptables-nft-save"],
            nft_save: "*nat\nCOMMIT\n",
            legacy_save: "",
            calls: RefCell::default(),
        };
        let choice = BackendChoice::Auto;
        assert_eq!(
            apply_ipv6(&plan(), Ipv6Rules::Off, choice, &r).unwrap(),
            None
        );
        assert_eq!(
            apply_ipv6(&plan(), Ipv6Rules::IfPossible, choice, &r).unwrap(),
            None
        );
        let address = "fd00::2".parse().unwrap();
        let error = apply_ipv6(&plan(), Ipv6Rules::Required(Some(address)), choice, &r)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("ipv6 rules are required (the pod has the IPv6 address fd00::2), but cannot be written: no iptables binary found"),
            "{error}"
        );
        assert_eq!(error.lines().count(), 1, "one clear line");
    }

    #[test]
    fn a_fresh_pod_uses_nft_and_adds_the_jump() {
        let r = Recorder {
            tools: ALL.to_vec(),
            nft_save: "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
            legacy_save: "",
            calls: RefCell::default(),
        };
        let applied = apply(&plan(), Family::V4, BackendChoice::Auto, &r).unwrap();
        assert_eq!(applied.backend, Backend::Nft);
        assert!(!applied.rerun);
        let calls = r.calls.borrow();
        let (cmd, stdin) = calls.last().unwrap();
        assert_eq!(cmd, "iptables-nft-restore -w 5 --noflush");
        assert!(stdin.as_deref().unwrap().contains(rules::JUMP));
    }

    #[test]
    fn a_rerun_reuses_the_backend_holding_our_chain_and_skips_the_jump() {
        let r = Recorder {
            tools: ALL.to_vec(),
            nft_save: "*nat\nCOMMIT\n",
            legacy_save: "*nat\n:PICKET_INBOUND - [0:0]\n-A PREROUTING ! -i lo -p tcp -j PICKET_INBOUND\nCOMMIT\n",
            calls: RefCell::default(),
        };
        let applied = apply(&plan(), Family::V4, BackendChoice::Auto, &r).unwrap();
        assert_eq!(applied.backend, Backend::Legacy);
        assert!(applied.rerun);
        let calls = r.calls.borrow();
        let (cmd, stdin) = calls.last().unwrap();
        assert_eq!(cmd, "iptables-legacy-restore -w 5 --noflush");
        assert!(!stdin.as_deref().unwrap().contains("PREROUTING"));
    }

    #[test]
    fn a_kernel_refusing_tproxy_fails_init_with_one_line_and_no_fallback() {
        /// Refuses every restore, as iptables does without xt_TPROXY.
        struct NoTproxy;
        impl Runner for NoTproxy {
            fn exists(&self, program: &str) -> bool {
                ALL.contains(&program)
            }
            fn run(&self, program: &str, _: &[&str], _: Option<&str>) -> io::Result<RunOutput> {
                let restore = program.ends_with("-restore");
                Ok(RunOutput {
                    success: !restore,
                    stdout: "*nat\nCOMMIT\n".into(),
                    stderr: if restore {
                        "Warning: Extension TPROXY revision 0 not supported, missing kernel module?\niptables-nft-restore: line 14 failed".into()
                    } else {
                        String::new()
                    },
                })
            }
        }
        let tproxy = Plan {
            interception: Interception::Tproxy { mark: 0x539 },
            ..plan()
        };
        let error = apply(&tproxy, Family::V4, BackendChoice::Auto, &NoTproxy)
            .unwrap_err()
            .to_string();
        assert_eq!(error.lines().count(), 1, "{error}");
        assert!(
            error.starts_with("iptables-nft-restore -w 5 --noflush refused the tproxy rules (Warning: Extension TPROXY revision 0 not supported"),
            "{error}"
        );
        assert!(error.contains("never falls back"), "{error}");
        // In redirect mode the same failure is reported as it is.
        let error = apply(&plan(), Family::V4, BackendChoice::Auto, &NoTproxy).unwrap_err();
        assert!(matches!(error, ApplyError::Failed { .. }), "{error}");
    }

    #[test]
    fn a_forced_backend_must_exist() {
        let r = Recorder {
            tools: vec!["iptables-nft-save", "iptables-nft-restore"],
            nft_save: "",
            legacy_save: "",
            calls: RefCell::default(),
        };
        let err = apply(
            &plan(),
            Family::V4,
            BackendChoice::Force(Backend::Legacy),
            &r,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no iptables binary found: need iptables-legacy-restore (install the iptables package)"
        );
    }

    #[test]
    fn no_binary_at_all_is_one_clear_error() {
        let r = Recorder {
            tools: vec![],
            nft_save: "",
            legacy_save: "",
            calls: RefCell::default(),
        };
        let err = apply(&plan(), Family::V6, BackendChoice::Auto, &r).unwrap_err();
        assert!(err
            .to_string()
            .contains("ip6tables-nft-restore or ip6tables-legacy-restore"));
    }
}
