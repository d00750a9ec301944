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
//! With tproxy interception, inbound connections are not rewritten: the
//! same checks in a mangle PREROUTING chain, which sees every packet and so
//! first returns the replies to the pod's own connections, end in TPROXY
//! to the proxy's inbound port, so the connection keeps the client's address and its
//! original destination. The proxy connects to the app from the client's
//! address with a firewall mark; a mangle OUTPUT chain copies that mark to
//! the connection and back onto the app's replies, which the policy routing
//! written beside these rules (`routing`) delivers locally, to the proxy,
//! instead of out of the pod. The nat inbound chain is then not written
//! (and flushed when an earlier run left it), and the other way round.
//!
//! Idempotent: declaring a chain in the document flushes and refills it; a
//! jump is written only when it is not already there. With outbound capture
//! off, an outbound chain left by an earlier run is flushed (its jump then
//! leads nowhere), so turning the capture off takes effect on a re-run.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

pub use crate::net::Interception;

/// Our chain in the nat table.
pub const CHAIN: &str = "PICKET_INBOUND";

/// The jump from PREROUTING into our chain, as `iptables-save` prints it.
pub const JUMP: &str = "-A PREROUTING ! -i lo -p tcp -j PICKET_INBOUND";

/// Our inbound chain in the mangle table (tproxy interception).
pub const TPROXY_CHAIN: &str = "PICKET_TPROXY";

/// The jump from mangle PREROUTING into the tproxy chain.
pub const TPROXY_JUMP: &str = "-A PREROUTING ! -i lo -p tcp -j PICKET_TPROXY";

/// Our chain in mangle OUTPUT that routes the app's replies back to the proxy.
pub const REPLY_CHAIN: &str = "PICKET_TPROXY_REPLY";

/// The jump from mangle OUTPUT into the reply chain.
pub const REPLY_JUMP: &str = "-A OUTPUT -p tcp -j PICKET_TPROXY_REPLY";

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
    /// How inbound connections are intercepted.
    pub interception: Interception,
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
    /// mangle PREROUTING jumps to the tproxy chain.
    pub tproxy: bool,
    /// mangle OUTPUT jumps to the reply chain.
    pub reply: bool,
}

// === impl Jumps ===

impl Jumps {
    /// The jumps an `iptables-save` listing (of every table) has; each
    /// jump names its own chain, so the table need not be told.
    pub fn in_listing(listing: &str) -> Self {
        let has = |jump: &str| listing.lines().any(|l| l.trim() == jump);
        Self {
            inbound: has(JUMP),
            outbound: has(OUTBOUND_JUMP),
            tproxy: has(TPROXY_JUMP),
            reply: has(REPLY_JUMP),
        }
    }

    /// Whether this is a re-run: the jump into the inbound chain of
    /// `interception` is there.
    pub fn rerun(self, interception: Interception) -> bool {
        match interception {
            Interception::Redirect => self.inbound,
            Interception::Tproxy { .. } => self.tproxy,
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

    /// The wildcard address TPROXY hands connections to.
    fn unspecified(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0",
            Family::V6 => "::",
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
    match plan.interception {
        Interception::Redirect => {
            let _ = writeln!(doc, ":{CHAIN} - [0:0]");
            inbound_checks(&mut doc, CHAIN, plan, family);
            let _ = writeln!(
                doc,
                "-A {CHAIN} -p tcp -j REDIRECT --to-ports {}",
                plan.inbound_port
            );
            if !present.inbound {
                let _ = writeln!(doc, "{JUMP}");
            }
        }
        // Flush what an earlier run in redirect mode left.
        Interception::Tproxy { .. } if present.inbound => {
            let _ = writeln!(doc, ":{CHAIN} - [0:0]");
        }
        Interception::Tproxy { .. } => {}
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
    match plan.interception {
        Interception::Tproxy { mark } => render_tproxy(&mut doc, plan, family, mark, present),
        // Flush what an earlier run in tproxy mode left.
        Interception::Redirect if present.tproxy || present.reply => {
            let _ = writeln!(doc, "*mangle");
            let _ = writeln!(doc, ":{TPROXY_CHAIN} - [0:0]");
            let _ = writeln!(doc, ":{REPLY_CHAIN} - [0:0]");
            let _ = writeln!(doc, "COMMIT");
        }
        Interception::Redirect => {}
    }
    doc
}

/// The returns every inbound chain starts with: loopback, destinations
/// that are not the pod's own addresses, the admin port, the excluded ports.
fn inbound_checks(doc: &mut String, chain: &str, plan: &Plan, family: Family) {
    let _ = writeln!(doc, "-A {chain} -d {} -j RETURN", family.loopback());
    let _ = writeln!(doc, "-A {chain} -m addrtype ! --dst-type LOCAL -j RETURN");
    let mut bypass = vec![plan.admin_port];
    for port in &plan.exclude_inbound_ports {
        if !bypass.contains(port) {
            bypass.push(*port);
        }
    }
    for port in bypass {
        let _ = writeln!(doc, "-A {chain} -p tcp --dport {port} -j RETURN");
    }
}

/// The mangle table of tproxy interception: the inbound chain ending in
/// TPROXY, and the reply chain that copies the proxy's mark to its
/// connections to the app and back onto the app's replies.
fn render_tproxy(doc: &mut String, plan: &Plan, family: Family, mark: u32, present: Jumps) {
    let _ = writeln!(doc, "*mangle");
    let _ = writeln!(doc, ":{TPROXY_CHAIN} - [0:0]");
    // Replies to the pod's own outbound connections (the proxy's to the API
    // server among them) are left alone: TPROXY drops a packet whose socket
    // is not transparent. Only the reply direction, never "established": a
    // client's SYN that reuses the tuple of a connection the proxy reset is
    // ESTABLISHED to conntrack, and would reach the app's listener around
    // the proxy. Every packet a client sends is diverted, and finds the
    // proxy's socket (TPROXY looks up established sockets first).
    let _ = writeln!(
        doc,
        "-A {TPROXY_CHAIN} -p tcp -m conntrack --ctdir REPLY -j RETURN"
    );
    inbound_checks(doc, TPROXY_CHAIN, plan, family);
    let _ = writeln!(
        doc,
        "-A {TPROXY_CHAIN} -p tcp -j TPROXY --on-port {} --on-ip {}",
        plan.inbound_port,
        family.unspecified()
    );
    if !present.tproxy {
        let _ = writeln!(doc, "{TPROXY_JUMP}");
    }
    let _ = writeln!(doc, ":{REPLY_CHAIN} - [0:0]");
    let _ = writeln!(
        doc,
        "-A {REPLY_CHAIN} -p tcp -m connmark --mark {mark:#x} -j CONNMARK --restore-mark"
    );
    let _ = writeln!(
        doc,
        "-A {REPLY_CHAIN} -p tcp -m mark --mark {mark:#x} -j CONNMARK --save-mark"
    );
    if !present.reply {
        let _ = writeln!(doc, "{REPLY_JUMP}");
    }
    let _ = writeln!(doc, "COMMIT");
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
            interception: Interception::Redirect,
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
        tproxy: false,
        reply: false,
    };
    const RERUN: Jumps = Jumps {
        inbound: true,
        outbound: true,
        tproxy: false,
        reply: false,
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
                ..FIRST_RUN
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
        let mangle = format!("*mangle\n{TPROXY_JUMP}\n{REPLY_JUMP}\nCOMMIT\n");
        let found = Jumps::in_listing(&mangle);
        assert!(found.tproxy && found.reply && !found.inbound && !found.outbound);
        assert!(!Jumps::in_listing(&format!("{JUMP}\n")).outbound);
    }

    #[test]
    fn a_rerun_refills_the_chain_without_a_second_jump() {
        let doc = render(
            &plan(),
            Family::V4,
            Jumps {
                inbound: true,
                ..FIRST_RUN
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
                interception: Interception::Redirect,
            },
            Family::V4,
            FIRST_RUN,
        );
        let admin = doc.find("--dport 2 -j RETURN").unwrap();
        let redirect = doc.find("REDIRECT --to-ports 1").unwrap();
        assert!(admin < redirect, "the RETURN must come before the REDIRECT");
    }

    fn tproxy() -> Plan {
        Plan {
            interception: Interception::Tproxy { mark: 0x539 },
            ..with_outbound()
        }
    }

    #[test]
    fn tproxy_interception_writes_the_mangle_chains_instead_of_the_nat_redirect() {
        let v4 = render(&tproxy(), Family::V4, FIRST_RUN);
        golden("tproxy.rules", &v4);
        golden("tproxy-v6.rules", &render(&tproxy(), Family::V6, FIRST_RUN));
        assert!(
            !v4.contains(":PICKET_INBOUND") && !v4.contains(JUMP),
            "{v4}"
        );
        assert_eq!(v4.matches("REDIRECT").count(), 1, "outbound only: {v4}");
        for family in [Family::V4, Family::V6] {
            let doc = render(&tproxy(), family, FIRST_RUN);
            let tproxy = doc.find("-j TPROXY --on-port 15006").expect("TPROXY");
            for rule in [
                "-A PICKET_TPROXY -p tcp -m conntrack --ctdir REPLY -j RETURN".to_string(),
                format!("-A PICKET_TPROXY -d {} -j RETURN", family.loopback()),
                "-A PICKET_TPROXY -m addrtype ! --dst-type LOCAL -j RETURN".into(),
                "-A PICKET_TPROXY -p tcp --dport 15020 -j RETURN".into(),
                "-A PICKET_TPROXY -p tcp --dport 9000 -j RETURN".into(),
            ] {
                let at = doc.find(&rule).unwrap_or_else(|| panic!("{rule}: {doc}"));
                assert!(at < tproxy, "{rule} after TPROXY: {doc}");
            }
            assert!(
                doc.contains(TPROXY_JUMP) && doc.contains(REPLY_JUMP),
                "{doc}"
            );
            assert!(
                doc.contains("-m connmark --mark 0x539 -j CONNMARK --restore-mark")
                    && doc.contains("-m mark --mark 0x539 -j CONNMARK --save-mark"),
                "{doc}"
            );
        }
    }

    #[test]
    fn a_rerun_in_tproxy_mode_adds_no_second_jump_and_a_mode_switch_flushes_the_other() {
        let rerun = Jumps {
            tproxy: true,
            reply: true,
            outbound: true,
            ..FIRST_RUN
        };
        assert!(rerun.rerun(tproxy().interception) && !rerun.rerun(Interception::Redirect));
        let doc = render(&tproxy(), Family::V4, rerun);
        assert!(
            !doc.contains("-A PREROUTING") && !doc.contains("-A OUTPUT"),
            "{doc}"
        );
        assert!(doc.contains(":PICKET_TPROXY - [0:0]"), "refilled: {doc}");
        // From redirect to tproxy: the nat inbound chain is flushed.
        let switched = render(&tproxy(), Family::V4, RERUN);
        assert!(switched.contains(":PICKET_INBOUND - [0:0]\n"), "{switched}");
        assert!(!switched.contains("-A PICKET_INBOUND"), "{switched}");
        // From tproxy back to redirect: both mangle chains are flushed.
        let back = render(&with_outbound(), Family::V4, rerun);
        golden("tproxy-off-rerun.rules", &back);
        assert!(!back.contains("-A PICKET_TPROXY"), "{back}");
        assert!(back.contains(":PICKET_TPROXY_REPLY - [0:0]"), "{back}");
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
