//! The policy routing of tproxy interception: a packet carrying the
//! proxy's mark (the app's reply to a client whose address is not the
//! pod's) is delivered locally, to the proxy's socket bound to that
//! address, instead of leaving the pod. One rule and one route per family,
//! written with `ip` through a `Runner`; the argument lists are pure.

use super::apply::{ApplyError, RunOutput, Runner};
use super::rules::Family;

/// The mark the routing looks for and the table it sends it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    /// The proxy's firewall mark on its connections to the app.
    pub mark: u32,
    /// The routing table where every address is local.
    pub table: u32,
}

// === impl Routing ===

impl Routing {
    /// Whether an `ip rule show` listing holds the rule already (a re-run).
    pub fn rule_present(&self, listing: &str) -> bool {
        let wanted = format!("fwmark {:#x} lookup {}", self.mark, self.table);
        listing.lines().any(|l| l.trim_end().ends_with(&wanted))
    }

    /// `ip` arguments adding the rule: the mark looks up our table.
    pub fn rule_args(&self, family: Family) -> Vec<String> {
        let mut args = vec![family_flag(family).to_string()];
        args.extend(
            ["rule", "add", "fwmark", &format!("{:#x}", self.mark)]
                .into_iter()
                .map(String::from),
        );
        args.extend(["lookup".to_string(), self.table.to_string()]);
        args
    }

    /// `ip` arguments filling the table: every address is local, on loopback.
    /// `replace` makes a re-run a no-op.
    pub fn route_args(&self, family: Family) -> Vec<String> {
        let mut args: Vec<String> = [family_flag(family), "route", "replace", "local"]
            .into_iter()
            .map(String::from)
            .collect();
        args.push(
            match family {
                Family::V4 => "0.0.0.0/0",
                Family::V6 => "::/0",
            }
            .to_string(),
        );
        args.extend(["dev", "lo", "table"].map(String::from));
        args.push(self.table.to_string());
        args
    }
}

fn family_flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// Writes the rule (unless there) and the route for one family.
pub fn apply(routing: &Routing, family: Family, runner: &dyn Runner) -> Result<(), ApplyError> {
    if !runner.exists("ip") {
        return Err(ApplyError::NoIp);
    }
    let listing = ip(runner, &[family_flag(family), "rule", "show"])?;
    if !routing.rule_present(&listing.stdout) {
        let args = routing.rule_args(family);
        ip(runner, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    let args = routing.route_args(family);
    ip(runner, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    Ok(())
}

fn ip(runner: &dyn Runner, args: &[&str]) -> Result<RunOutput, ApplyError> {
    let command = format!("ip {}", args.join(" "));
    let out = runner
        .run("ip", args, None)
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.success {
        return Err(ApplyError::Failed {
            command,
            stderr: out.stderr,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io;

    use super::*;

    const ROUTING: Routing = Routing {
        mark: 0x539,
        table: 133,
    };

    #[test]
    fn the_rule_and_route_per_family() {
        assert_eq!(
            ROUTING.rule_args(Family::V4).join(" "),
            "-4 rule add fwmark 0x539 lookup 133"
        );
        assert_eq!(
            ROUTING.route_args(Family::V4).join(" "),
            "-4 route replace local 0.0.0.0/0 dev lo table 133"
        );
        assert_eq!(
            ROUTING.route_args(Family::V6).join(" "),
            "-6 route replace local ::/0 dev lo table 133"
        );
    }

    /// Answers `ip rule show` with a listing; records every call.
    struct Ip {
        rules: &'static str,
        calls: RefCell<Vec<String>>,
    }

    impl Runner for Ip {
        fn exists(&self, program: &str) -> bool {
            program == "ip"
        }
        fn run(&self, _: &str, args: &[&str], _: Option<&str>) -> io::Result<RunOutput> {
            self.calls.borrow_mut().push(args.join(" "));
            Ok(RunOutput {
                success: true,
                stdout: if args.ends_with(&["show"]) {
                    self.rules.into()
                } else {
                    String::new()
                },
                stderr: String::new(),
            })
        }
    }

    #[test]
    fn a_rerun_adds_no_second_rule() {
        let fresh = Ip {
            rules: "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n",
            calls: RefCell::default(),
        };
        apply(&ROUTING, Family::V4, &fresh).unwrap();
        assert_eq!(
            *fresh.calls.borrow(),
            [
                "-4 rule show",
                "-4 rule add fwmark 0x539 lookup 133",
                "-4 route replace local 0.0.0.0/0 dev lo table 133"
            ]
        );
        let rerun = Ip {
            rules: "0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x539 lookup 133\n",
            calls: RefCell::default(),
        };
        apply(&ROUTING, Family::V4, &rerun).unwrap();
        assert!(
            !rerun.calls.borrow().iter().any(|c| c.contains("rule add")),
            "{:?}",
            rerun.calls
        );
        // Another table for the same mark is not ours.
        assert!(!ROUTING.rule_present("32765:\tfrom all fwmark 0x539 lookup 1330\n"));
    }

    #[test]
    fn without_ip_init_says_what_to_install() {
        struct Nothing;
        impl Runner for Nothing {
            fn exists(&self, _: &str) -> bool {
                false
            }
            fn run(&self, _: &str, _: &[&str], _: Option<&str>) -> io::Result<RunOutput> {
                unreachable!()
            }
        }
        let error = apply(&ROUTING, Family::V4, &Nothing)
            .unwrap_err()
            .to_string();
        assert!(error.contains("iproute2"), "{error}");
    }
}
