//! Plan -> `iptables-restore` document. Pure: no I/O.
//!
//! Every inbound TCP connection arriving on the pod's interfaces (nat
//! PREROUTING, not loopback) goes to our chain, which returns the proxy's
//! admin port and the excluded ports untouched and redirects the rest to the
//! proxy's inbound port. Only connections to the pod's own, non-loopback
//! addresses are redirected: a neighbour that sends 127.0.0.1 or another
//! pod's address to this pod's MAC is not redirected, and the kernel drops it
//! (a martian, or not forwarded); otherwise the proxy would be an open relay
//! (`addrtype --dst-type LOCAL` alone would still let 127.0.0.1 through). The proxy's own connections to the app are locally
//! generated: they traverse OUTPUT, never PREROUTING, so they are not
//! redirected and need no owner match (which PREROUTING would refuse).
//!
//! With outbound capture, every TCP connection the pod's own processes open
//! (nat OUTPUT) goes to a second chain, which returns the proxy's own
//! connections (its UID), loopback, the node's addresses and the excluded
//! ports and CIDRs, and redirects the rest to the proxy's outbound port
//! (REDIRECT in OUTPUT rewrites the destination to loopback, where the
//! outbound listener is bound). The chains cannot meet: locally generated
//! connections never pass PREROUTING (the inbound jump also skips `lo`),
//! and the proxy's own connections, to its app or to a destination, return
//! from the outbound chain. So a pod dialling itself, or the proxy dialling
//! its app, takes one hop, never two.
//!
//! Idempotent: declaring a chain in the document flushes and refills it; a
//! jump is written only when it is not already there. With outbound capture
//! off, an outbound chain left by an earlier run is flushed (its jump then
//! leads nowhere), so turning the capture off takes effect on a re-run.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

/// Our chain in the nat table.
pub const CHAIN: &str = "PICKET_INBOUND";

/// The jump from PREROUTING into our chain, as `iptables-save` prints it.
pub const JUMP: &str = "-A PREROUTING ! -i lo -p tcp -j PICKET_INBOUND";

/// Our outbound chain in the nat table.
pub const OUTBOUND_CHAIN: &str = "PICKET_OUTBOUND";

/// The jump from OUTPUT into the outbound chain, as `iptables-save` prints it.
pub const OUTBOUND_JUMP: &str = "-A OUTPUT -p tcp -j PICKET_OUTBOUND";

/// What to intercept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Where redirected connections go: the proxy's inbound listener.
    pub inbound_port: u16,
    /// The proxy's admin port (probes, metrics): never redirected.
    pub admin_port: u16,
    /// Inbound ports that bypass the proxy.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound capture; `None`: off.
    pub outbound: Option<OutboundPlan>,
}

/// What outbound capture redirects, and what it leaves alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundPlan {
    /// Where captured connections go: the proxy's outbound listener.
    pub port: u16,
    /// The proxy's UID: its own connections are never captured.
    pub proxy_uid: u32,
    /// The node's addresses (kubelet, node-local services): never captured.
    pub node_addrs: Vec<IpAddr>,
    /// Destination ports that bypass the proxy.
    pub exclude_ports: Vec<u16>,
    /// Destination networks that bypass the proxy.
    pub exclude_cidrs: Vec<IpNet>,
}

/// Which of our jumps the nat table already has (a re-run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Jumps {
    /// PREROUTING jumps to the inbound chain.
    pub inbound: bool,
    /// OUTPUT jumps to the outbound chain.
    pub outbound: bool,
}

// === impl Jumps ===

impl Jumps {
    /// The jumps an `iptables-save -t nat` listing has.
    pub fn in_listing(listing: &str) -> Self {
        let has = |jump: &str| listing.lines().any(|l| l.trim() == jump);
        Self {
            inbound: has(JUMP),
            outbound: has(OUTBOUND_JUMP),
        }
    }
}

/// The address family a document is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

// === impl Family ===

impl Family {
    /// `ipv4` or `ipv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

// === impl Family (rules) ===

impl Family {
    /// The loopback network, never redirected.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// Whether an address is of this family.
    fn holds(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
}

/// Renders the `iptables-restore --noflush` document for a plan and a
/// family; `present` says which jumps are already there (a re-run), so no
/// jump is added twice.
pub fn render(plan: &Plan, family: Family, present: Jumps) -> String {
    let mut doc = String::new();
    let _ = writeln!(doc, "# Generated by picket-proxy init");
    let _ = writeln!(doc, "*nat");
    let _ = writeln!(doc, ":{CHAIN} - [0:0]");
    let _ = writeln!(doc, "-A {CHAIN} -d {} -j RETURN", family.loopback());
    let _ = writeln!(doc, "-A {CHAIN} -m addrtype ! --dst-type LOCAL -j RETURN");
    let mut bypass = vec![plan.admin_port];
    for port in &plan.exclude_inbound_ports {
        if !bypass.contains(port) {
            bypass.push(*port);
        }
    }
    for port in bypass {
        let _ = writeln!(doc, "-A {CHAIN} -p tcp --dport {port} -j RETURN");
    }
    let _ = writeln!(
        doc,
        "-A {CHAIN} -p tcp -j REDIRECT --to-ports {}",
        plan.inbound_port
    );
    if !present.inbound {
        let _ = writeln!(doc, "{JUMP}");
    }
    match &plan.outbound {
        Some(outbound) => render_outbound(&mut doc, outbound, family, present.outbound),
        // Flush what an earlier run with capture on left.
        None if present.outbound => {
            let _ = writeln!(doc, ":{OUTBOUND_CHAIN} - [0:0]");
        }
        None => {}
    }
    let _ = writeln!(doc, "COMMIT");
    doc
}

/// The outbound chain and, unless present, its jump.
fn render_outbound(doc: &mut String, plan: &OutboundPlan, family: Family, jump_present: bool) {
    let chain = OUTBOUND_CHAIN;
    let _ = writeln!(doc, ":{chain} - [0:0]");
    let _ = writeln!(
        doc,
        "-A {chain} -m owner --uid-owner {} -j RETURN",
        plan.proxy_uid
    );
    let _ = writeln!(doc, "-A {chain} -d {} -j RETURN", family.loopback());
    let host = if family == Family::V4 { 32 } else { 128 };
    let mut seen = Vec::new();
    for ip in plan.node_addrs.iter().filter(|ip| family.holds(**ip)) {
        if !seen.contains(ip) {
            seen.push(*ip);
            let _ = writeln!(doc, "-A {chain} -d {ip}/{host} -j RETURN");
        }
    }
    for net in plan.exclude_cidrs.iter().filter(|n| family.holds(n.addr())) {
        let _ = writeln!(doc, "-A {chain} -d {} -j RETURN", net.trunc());
    }
    let mut ports = Vec::new();
    for port in &plan.exclude_ports {
        if !ports.contains(port) {
            ports.push(*port);
            let _ = writeln!(doc, "-A {chain} -p tcp --dport {port} -j RETURN");
        }
    }
    let _ = writeln!(
        doc,
        "-A {chain} -p tcp -j REDIRECT --to-ports {}",
        plan.port
    );
    if !jump_present {
        let _ = writeln!(doc, "{OUTBOUND_JUMP}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("PICKET_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (PICKET_UPDATE_GOLDEN=1 writes it)", path.display())
        });
        assert_eq!(actual, expected, "{name} differs from its golden file");
    }

    fn plan() -> Plan {
        Plan {
            inbound_port: 15006,
            admin_port: 15020,
            exclude_inbound_ports: vec![9000, 9001, 15020],
            outbound: None,
        }
    }

    fn with_outbound() -> Plan {
        Plan {
            outbound: Some(OutboundPlan {
                port: 15001,
                proxy_uid: 1337,
                node_addrs: vec![
                    "10.0.0.1".parse().unwrap(),
                    "192.168.1.1".parse().unwrap(),
                    "10.0.0.1".parse().unwrap(),
                    "fd00::1".parse().unwrap(),
                ],
                exclude_ports: vec![3306, 3306, 5432],
                exclude_cidrs: vec![
                    "169.254.169.254/32".parse().unwrap(),
                    "10.96.0.7/16".parse().unwrap(),
                    "fd00:10::/64".parse().unwrap(),
                ],
            }),
            ..plan()
        }
    }

    const FIRST_RUN: Jumps = Jumps {
        inbound: false,
        outbound: false,
    };
    const RERUN: Jumps = Jumps {
        inbound: true,
        outbound: true,
    };

    #[test]
    fn first_run_adds_the_jump() {
        golden("inbound.rules", &render(&plan(), Family::V4, FIRST_RUN));
        golden("inbound-v6.rules", &render(&plan(), Family::V6, FIRST_RUN));
    }

    #[test]
    fn outbound_capture_adds_its_chain_and_jump_per_family() {
        let v4 = render(&with_outbound(), Family::V4, FIRST_RUN);
        golden("outbound.rules", &v4);
        let v6 = render(&with_outbound(), Family::V6, FIRST_RUN);
        golden("outbound-v6.rules", &v6);
        assert!(!v4.contains("fd00") && !v6.contains("10.0.0.1"), "{v4}{v6}");
        assert_eq!(v4.matches("-d 10.0.0.1/32").count(), 1, "once each");
        assert!(v4.contains("-d 10.96.0.0/16 -j RETURN"), "{v4}");
    }

    #[test]
    fn every_exception_returns_before_the_outbound_redirect() {
        for family in [Family::V4, Family::V6] {
            let doc = render(&with_outbound(), family, FIRST_RUN);
            let redirect = doc.find("REDIRECT --to-ports 15001").unwrap();
            for rule in [
                "-A PICKET_OUTBOUND -m owner --uid-owner 1337 -j RETURN".to_string(),
                format!("-A PICKET_OUTBOUND -d {} -j RETURN", family.loopback()),
                "-A PICKET_OUTBOUND -p tcp --dport 3306 -j RETURN".to_string(),
                "-A PICKET_OUTBOUND -p tcp --dport 5432 -j RETURN".to_string(),
            ] {
                let at = doc.find(&rule).unwrap_or_else(|| panic!("{rule}: {doc}"));
                assert!(at < redirect, "{rule} after the redirect: {doc}");
            }
            assert!(
                doc.ends_with(&format!("{OUTBOUND_JUMP}\nCOMMIT\n")),
                "{doc}"
            );
        }
    }

    #[test]
    fn a_rerun_with_outbound_capture_adds_no_second_jump() {
        let doc = render(&with_outbound(), Family::V4, RERUN);
        assert!(
            !doc.contains("-A OUTPUT") && !doc.contains("-A PREROUTING"),
            "{doc}"
        );
        assert!(doc.contains(":PICKET_OUTBOUND - [0:0]"), "refilled");
        let half = render(
            &with_outbound(),
            Family::V4,
            Jumps {
                inbound: true,
                outbound: false,
            },
        );
        assert!(half.contains(OUTBOUND_JUMP) && !half.contains("-A PREROUTING"));
    }

    #[test]
    fn turning_outbound_capture_off_on_a_rerun_flushes_its_chain() {
        let doc = render(&plan(), Family::V4, RERUN);
        golden("outbound-off-rerun.rules", &doc);
        assert!(doc.contains(":PICKET_OUTBOUND - [0:0]"), "{doc}");
        assert!(!doc.contains("-A PICKET_OUTBOUND"), "{doc}");
        let fresh = render(&plan(), Family::V4, FIRST_RUN);
        assert!(
            !fresh.contains("OUTBOUND"),
            "off from the start: nothing: {fresh}"
        );
    }

    #[test]
    fn the_jumps_are_read_from_a_listing() {
        let listing = format!("*nat\n:PICKET_INBOUND - [0:0]\n{JUMP}\n{OUTBOUND_JUMP}\nCOMMIT\n");
        assert_eq!(Jumps::in_listing(&listing), RERUN);
        assert!(!Jumps::in_listing(&format!("{JUMP}\n")).outbound);
    }

    #[test]
    fn a_rerun_refills_the_chain_without_a_second_jump() {
        let doc = render(
            &plan(),
            Family::V4,
            Jumps {
                inbound: true,
                outbound: false,
            },
        );
        golden("inbound-rerun.rules", &doc);
        assert!(!doc.contains("PREROUTING"));
        assert!(
            doc.contains(":PICKET_INBOUND - [0:0]"),
            "declaring the chain flushes it"
        );
    }

    #[test]
    fn the_admin_port_always_bypasses() {
        let doc = render(
            &Plan {
                inbound_port: 1,
                admin_port: 2,
                exclude_inbound_ports: vec![],
                outbound: None,
            },
            Family::V4,
            FIRST_RUN,
        );
        let admin = doc.find("--dport 2 -j RETURN").unwrap();
        let redirect = doc.find("REDIRECT --to-ports 1").unwrap();
        assert!(admin < redirect, "the RETURN must come before the REDIRECT");
    }

    #[test]
    fn only_the_pods_own_non_loopback_addresses_are_redirected() {
        for family in [Family::V4, Family::V6] {
            let doc = render(&plan(), family, FIRST_RUN);
            let redirect = doc.find("REDIRECT").unwrap();
            let loopback = doc
                .find(&format!(
                    "-A PICKET_INBOUND -d {} -j RETURN",
                    family.loopback()
                ))
                .expect("loopback returns");
            let foreign = doc
                .find("-A PICKET_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN")
                .expect("non-local destinations return");
            assert!(loopback < redirect && foreign < redirect, "{doc}");
        }
    }
}
