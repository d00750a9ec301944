//! End to end: network namespaces as pods, the real `picket-proxy init`
//! writing real iptables rules, the real `picket-proxy run` as its own UID,
//! and a real echo server as the app. Needs root (CI runs as root); the tests
//! run one at a time (see .config/nextest.toml).

#[macro_use]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::path::Path;
use std::time::Duration;

use picket_lab::proxy::{connect_from, http_get, run_init, share_dir};
use support::*;

fn allowed_peer_echoes_half_closes_and_moves_100_mib(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");

    let mut s = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut s));

    // Half-close: the app sees EOF while the reply still flows back.
    let mut s = c.connect("client", "api", APP_PORT);
    s.write_all(b"last words").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"last words");

    // 100 MiB each way, checksummed.
    let s = c.connect("client", "api", APP_PORT);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = s.try_clone().unwrap();
    const TOTAL: usize = 100 << 20;
    let sender = std::thread::spawn(move || {
        let mut sum = 0u64;
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        while sent < TOTAL {
            for (i, b) in block.iter_mut().enumerate() {
                *b = ((sent + i) * 31 % 251) as u8;
            }
            sum = block
                .iter()
                .fold(sum, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as u64));
            writer.write_all(&block).unwrap();
            sent += block.len();
        }
        writer.shutdown(Shutdown::Write).unwrap();
        sum
    });
    let mut reader = s;
    let mut sum = 0u64;
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum = buf[..n]
            .iter()
            .fold(sum, |acc, b| acc.wrapping_mul(31).wrapping_add(*b as u64));
        received += n;
    }
    assert_eq!(received, TOTAL);
    assert_eq!(sum, sender.join().unwrap(), "the bytes came back intact");
    assert_eq!(server.echo.accepted(), 3);
}

fn denied_peer_reads_econnreset_and_the_app_never_accepts(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");
    for _ in 0..3 {
        c.assert_reset("stranger", "api", APP_PORT);
    }
    assert_eq!(
        server.echo.accepted(),
        0,
        "no byte and no connection reached the app"
    );
}

fn bookstore_api_accepts_bookstore_and_inventory_and_resets_the_rest(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = Cluster::new_in(
        mode,
        &[
            ("bookstore", "api", &[("app", "bookstore"), ("role", "api")]),
            (
                "bookstore",
                "frontend",
                &[("app", "bookstore"), ("role", "frontend")],
            ),
            ("bookstore", "inventory", &[("app", "inventory")]),
            ("bookstore", "coffeeshop", &[("app", "coffeeshop")]),
        ],
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/examples/bookstore/api-allow.yaml");
    c.write("api-allow.yaml", &std::fs::read_to_string(example).unwrap());
    let server = c.start("api");
    assert!(allowed_now(&c, "frontend", "api"));
    assert!(allowed_now(&c, "inventory", "api"));
    c.assert_reset("coffeeshop", "api", APP_PORT);
    assert_eq!(server.echo.accepted(), 2);
}

fn a_policy_change_tears_down_live_connections_it_forbids_and_only_those(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));

    // A change that still allows it: add a policy letting the stranger in too.
    c.write(
        "more.yaml",
        &policy("shop", "allow-stranger", "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {role: stranger}}}]}]}"),
    );
    eventually("the stranger to be allowed", READY, || {
        allowed_now(&c, "stranger", "api")
    });
    assert!(
        echoes(&mut live),
        "a change that still allows it leaves it untouched"
    );

    // A change that forbids it: the client and the app both read ECONNRESET.
    let resets_before = server.echo.resets();
    c.write(
        "policy.yaml",
        &policy(
            "shop",
            "allow-client",
            "{podSelector: {matchLabels: {app: api}}, ingress: []}",
        ),
    );
    let mut buf = [0u8; 8];
    match live.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the live connection must be reset, got {other:?}"),
    }
    eventually("the app to see the reset", Duration::from_secs(5), || {
        server.echo.resets() > resets_before
    });
    c.assert_reset("client", "api", APP_PORT);
}

fn egress_policy_of_the_source_is_enforced_at_the_destination(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write(
        "egress.yaml",
        &policy("shop", "client-egress", "{podSelector: {matchLabels: {role: client}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}]}]}"),
    );
    let server = c.start("api");
    c.assert_reset("client", "api", APP_PORT);
    assert!(
        allowed_now(&c, "stranger", "api"),
        "a pod without egress policy is allowed"
    );
    assert_eq!(server.echo.accepted(), 1);
}

fn node_traffic_excluded_ports_and_the_proxys_own_port(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write(
        "deny.yaml",
        &policy("shop", "deny-all", "{podSelector: {}}"),
    );
    let server = c.start("api");
    let api = SocketAddr::new(server.pod.ip, APP_PORT);

    // From the node: its hostIP, and the gateway (the bridge).
    for source in [c.lab.host_ip(), c.lab.gateway()] {
        let mut s = connect_from(c.lab.node_netns(), Some(source), api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(echoes(&mut s), "node traffic from {source} is allowed");
    }
    // A pod is still denied.
    c.assert_reset("client", "api", APP_PORT);

    // The excluded port bypasses the proxy entirely.
    let mut s = c.connect("client", "api", EXCLUDED_PORT);
    assert!(echoes(&mut s));

    // The proxy's own inbound port: reset at once, no loop.
    let before = server.echo.accepted();
    c.assert_reset("client", "api", server.sidecar.inbound_port());
    let (status, body) = http_get(
        &server.pod.netns,
        SocketAddr::new(server.pod.ip, 15020),
        "/ready",
    )
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // The node connections close asynchronously (the relay sees the FIN
    // after the test dropped them); a looping one would stay for good.
    let local: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    eventually(
        "no connection to be left looping",
        Duration::from_secs(5),
        || {
            let (_, conns) = http_get(&server.pod.netns, local, "/connections").unwrap();
            conns.trim() == "[]"
        },
    );
    assert_eq!(
        server.echo.accepted(),
        before,
        "the own-port connection never reached the app"
    );
    assert_eq!(before, 2, "only the two node connections reached the app");
}

fn fail_closed_without_state_and_on_a_half_written_file(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    let later = c.state.path().join("cluster-later");
    let server = c.server("api", &later, false, &["--state-wait", "200ms"]);
    let (status, _) = http_get(
        &server.pod.netns,
        SocketAddr::new(server.pod.ip, 15020),
        "/ready",
    )
    .unwrap();
    assert_eq!(status, 503, "not ready before the state exists");
    c.assert_reset("client", "api", APP_PORT);
    assert_eq!(server.echo.accepted(), 0);

    // The state arrives: a deny-all and an allowance for the client.
    std::fs::create_dir(&later).unwrap();
    std::fs::copy(c.dir.path().join("pods.yaml"), later.join("pods.yaml")).unwrap();
    let deny = policy("shop", "deny-all", "{podSelector: {}}");
    std::fs::write(later.join("deny.yaml"), &deny).unwrap();
    std::fs::write(
        later.join("allow.yaml"),
        policy("shop", "allow-client", ALLOW_CLIENT),
    )
    .unwrap();
    share_dir(&later).unwrap();
    eventually("the client to be allowed", READY, || {
        allowed_now(&c, "client", "api")
    });
    c.assert_reset("stranger", "api", APP_PORT);

    // A half-written deny-all, then a marker change: the deny-all must hold.
    std::fs::write(later.join("deny.yaml"), &deny[..deny.len() / 2]).unwrap();
    std::fs::write(
        later.join("allow.yaml"),
        policy(
            "shop",
            "allow-client",
            "{podSelector: {matchLabels: {app: api}}, ingress: []}",
        ),
    )
    .unwrap();
    share_dir(&later).unwrap();
    eventually("the marker change to apply", READY, || {
        !allowed_now(&c, "client", "api")
    });
    c.assert_reset("stranger", "api", APP_PORT);
}

fn init_is_idempotent_and_names_what_is_missing(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    let pod = c.pod("api");
    let node_file = c.state.path().join("node");
    let mut args = vec!["--node-file", node_file.to_str().unwrap()];
    args.extend_from_slice(c.interception_args());
    for _ in 0..2 {
        let out = run_init(&c.binary, pod, &args).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let save = std::process::Command::new("ip")
        .args(["netns", "exec", &pod.netns, "iptables-save"])
        .output()
        .unwrap();
    let rules = String::from_utf8(save.stdout).unwrap();
    let (chain, target) = match mode {
        Interception::Redirect => ("PICKET_INBOUND", "REDIRECT"),
        Interception::Tproxy => ("PICKET_TPROXY", "TPROXY"),
    };
    assert_eq!(
        rules.matches(&format!("-j {chain}\n")).count(),
        1,
        "one jump:\n{rules}"
    );
    assert_eq!(
        rules.matches(&format!("-j {target} ")).count(),
        1,
        "one {target}:\n{rules}"
    );
    if mode == Interception::Tproxy {
        assert!(
            !rules.contains("PICKET_INBOUND"),
            "no nat redirect:\n{rules}"
        );
        assert_eq!(
            rules.matches("-j PICKET_TPROXY_REPLY\n").count(),
            1,
            "{rules}"
        );
        let routing = std::process::Command::new("ip")
            .args(["netns", "exec", &pod.netns, "ip", "-4", "rule", "show"])
            .output()
            .unwrap();
        let routing = String::from_utf8(routing.stdout).unwrap();
        assert_eq!(
            routing.matches("fwmark 0x539 lookup 133").count(),
            1,
            "one rule after two runs:\n{routing}"
        );
    }
    let recorded = std::fs::read_to_string(&node_file).unwrap();
    assert_eq!(recorded.trim(), c.lab.gateway().to_string());

    // Without CAP_NET_ADMIN: one clear line.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.netns,
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
        ])
        .arg(&c.binary)
        .args(["init", "--node-file", "/tmp/never"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing capability CAP_NET_ADMIN"), "{err}");

    // --dry-run prints the rules and changes nothing.
    let mut dry_run = vec!["--dry-run"];
    dry_run.extend_from_slice(c.interception_args());
    let out = run_init(&c.binary, pod, &dry_run).unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    match mode {
        Interception::Redirect => assert!(printed.contains("REDIRECT --to-ports 15006")),
        Interception::Tproxy => assert!(
            printed.contains("-j TPROXY --on-port 15006")
                && printed.contains("# ip -4 rule add fwmark 0x539 lookup 133"),
            "{printed}"
        ),
    }
    let _: IpAddr = c.lab.host_ip();
}

fn sigterm_keeps_serving_through_the_drain_period_then_exits(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let mut server = c.server("api", c.dir.path(), true, &["--drain", "1s"]);
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));
    let stopped_at = std::time::Instant::now();
    server.sidecar.terminate().unwrap();
    // During the drain: the live connection still relays, new ones are still served.
    assert!(echoes(&mut live));
    assert!(allowed_now(&c, "client", "api"));
    let status = server.sidecar.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "exits cleanly after the drain: {status:?}"
    );
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(900),
        "it drained for the period"
    );
}

/// Runs a command inside a namespace, which must succeed.
fn netns_exec(netns: &str, args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a connection from `from` to `to` reached the other end and moved
/// bytes: `false` when it cannot connect (the SYN is dropped) or is reset.
fn reaches(from: &str, to: SocketAddr) -> bool {
    let stream = picket_lab::in_netns(from, || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1))
    })
    .unwrap();
    let Ok(mut stream) = stream else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    echoes(&mut stream)
}

fn the_sidecar_dials_only_its_pods_own_addresses(mode: Interception) {
    if !lab_available() {
        return;
    }
    // No policy selects api: it is not isolated, the worst case for a relay.
    let c = two_pods_in(mode);
    let server = c.start("api");
    let api = c.pod("api").clone();
    let attacker = c.pod("client").netns.clone();
    let third = c.pod("stranger").clone();
    let third_app =
        picket_lab::app::EchoServer::start(&third.netns, SocketAddr::new(third.ip, APP_PORT))
            .unwrap();
    let localhost: SocketAddr = "127.0.0.1:6060".parse().unwrap();
    let local_only = picket_lab::app::EchoServer::start(&api.netns, localhost).unwrap();
    // Pods do not forward; the attacker sends the third pod's address and
    // 127.0.0.1 to the api pod, as a neighbour on the bridge can.
    netns_exec(&api.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let via = api.ip.to_string();
    netns_exec(
        &attacker,
        &[
            "ip",
            "route",
            "add",
            &format!("{}/32", third.ip),
            "via",
            &via,
        ],
    );
    netns_exec(
        &attacker,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
    );
    netns_exec(&attacker, &["ip", "addr", "flush", "dev", "lo"]);
    netns_exec(
        &attacker,
        &[
            "ip",
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            &via,
            "dev",
            "eth0",
        ],
    );
    let targets = [localhost, SocketAddr::new(third.ip, APP_PORT)];

    // The init rules redirect only the pod's own, non-loopback addresses:
    // the rest is not redirected, and the kernel drops it.
    for to in targets {
        assert!(!reaches(&attacker, to), "{to} reached through the api pod");
    }
    assert_eq!(third_app.accepted() + local_only.accepted(), 0);

    // Defence in depth: were the rules to redirect them anyway, the proxy
    // resets them without dialling, and counts them.
    let (table, chain, divert): (_, _, &[&str]) = match mode {
        Interception::Redirect => (
            "nat",
            "PICKET_INBOUND",
            &["REDIRECT", "--to-ports", "15006"],
        ),
        // Marked, so the policy routing delivers the foreign address locally.
        Interception::Tproxy => (
            "mangle",
            "PICKET_TPROXY",
            &[
                "TPROXY",
                "--on-port",
                "15006",
                "--tproxy-mark",
                "0x539/0xffffffff",
            ],
        ),
    };
    let backend = if std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &api.netns,
            "iptables-nft",
            "-t",
            table,
            "-S",
            chain,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "iptables-nft"
    } else {
        "iptables-legacy"
    };
    let mut insert = vec![
        backend, "-t", table, "-I", chain, "1", "-p", "tcp", "!", "-d", &via, "-j",
    ];
    insert.extend_from_slice(divert);
    netns_exec(&api.netns, &insert);
    for to in targets {
        assert!(!reaches(&attacker, to), "{to} relayed by the sidecar");
    }
    assert_eq!(
        third_app.accepted() + local_only.accepted(),
        0,
        "nothing reached any listener"
    );
    // REDIRECT rewrites 127.0.0.1 to the pod's address before routing sees
    // it; with TPROXY the kernel drops it as a martian before any socket.
    let reached_the_proxy = match mode {
        Interception::Redirect => 2,
        Interception::Tproxy => 1,
    };
    let (_, metrics) = http_get(&api.netns, SocketAddr::new(api.ip, 15020), "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "picket_inbound_refused_total{{reason=\"foreign-destination\"}} {reached_the_proxy}"
        )),
        "{metrics}"
    );
    drop(server);
}

fn a_saturated_admin_port_does_not_stop_inbound_connections(mode: Interception) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    // The sidecar starts with a small soft open-file limit, as container
    // runtimes often give (1024); the hard limit stays.
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let server = c.start("api");
    setrlimit(Resource::Nofile, limit).unwrap();

    // Idle connections to the admin port (reachable by any pod), never a request.
    let admin = SocketAddr::new(server.pod.ip, 15020);
    let idle: Vec<std::net::TcpStream> = picket_lab::in_netns(&c.pod("stranger").netns, || {
        (0..400)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()
            })
            .collect()
    })
    .unwrap();
    assert!(idle.len() > 300, "{} idle connections opened", idle.len());

    // Inbound connections are still decided and relayed.
    for _ in 0..3 {
        let mut s = c.connect("client", "api", APP_PORT);
        assert!(echoes(&mut s), "an allowed connection is relayed");
        c.assert_reset("stranger", "api", APP_PORT);
    }
    // The node (kubelet probes) is served even while pods hold every slot.
    let (status, _) = http_get(c.lab.node_netns(), admin, "/ready").unwrap();
    assert_eq!(status, 200, "a probe from the node is answered at once");
    // And pods are answered again once idle admin connections time out.
    eventually("/ready answers", Duration::from_secs(15), || {
        http_get(&server.pod.netns, admin, "/ready").is_ok_and(|(status, _)| status == 200)
    });
    drop(idle);
}

fn the_proxys_ports_are_reserved_so_the_pods_own_connections_cannot_take_them(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    let pod = c.pod("api").clone();
    // A pod may narrow its ephemeral range (a safe sysctl): here to 31 ports
    // around the proxy's own.
    netns_exec(
        &pod.netns,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=15000 15030"],
    );
    let node_file = c.state.path().join("api").join("node");
    let mut init = vec!["--node-file", node_file.to_str().unwrap()];
    init.extend_from_slice(c.interception_args());
    let init = run_init(&c.binary, &pod, &init).unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    share_dir(c.state.path()).unwrap();
    share_dir(node_file.parent().unwrap()).unwrap();
    let app =
        picket_lab::app::EchoServer::start(&pod.netns, SocketAddr::new(pod.ip, APP_PORT)).unwrap();
    // The pod's own connections to its app, made before the sidecar runs,
    // take most of the ephemeral range and stay open.
    let to_app = SocketAddr::new(pod.ip, APP_PORT);
    let held: Vec<std::net::TcpStream> = picket_lab::in_netns(&pod.netns, || {
        (0..25)
            .map(|_| std::net::TcpStream::connect(to_app).unwrap())
            .collect()
    })
    .unwrap();
    for s in &held {
        let port = s.local_addr().unwrap().port();
        assert!(
            ![15000, 15006, 15020].contains(&port),
            "took the proxy's port {port}"
        );
    }
    // The sidecar binds every port at once and becomes ready.
    let dir = c.dir.path().to_string_lossy().into_owned();
    let start = || {
        let mut args = vec!["--cluster-dir", &*dir];
        args.extend_from_slice(c.interception_args());
        let mut sidecar = picket_lab::proxy::Sidecar::start_with(
            c.sidecar_binary(),
            &c.lab,
            &pod,
            "shop",
            &node_file,
            &args,
        )
        .unwrap();
        sidecar
            .wait_ready(READY)
            .expect("the sidecar binds its ports and is ready");
        sidecar
    };
    let sidecar = start();
    // With the whole range covering the proxy's ports (1024-65000), a
    // thousand relayed connections (the proxy dials the app from ephemeral
    // ports too), then a restart of the sidecar: it binds again at once.
    netns_exec(
        &pod.netns,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"],
    );
    let api = SocketAddr::new(pod.ip, APP_PORT);
    let relayed = picket_lab::in_netns(&c.pod("client").netns, || {
        (0..1000)
            .filter(|_| std::net::TcpStream::connect(api).is_ok_and(|mut s| echoes(&mut s)))
            .count()
    })
    .unwrap();
    assert_eq!(relayed, 1000);
    drop(sidecar);
    let _restarted = start();
    let mut s = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut s));
    drop(held);
    drop(app);
}

fn ten_thousand_short_connections_leave_no_descriptor_behind(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");
    // (sockets, pipes) the sidecar holds open.
    let pid = server.sidecar.pid();
    let fds = || {
        let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|l| l.display().to_string())
            .collect();
        let count = |prefix: &str| links.iter().filter(|l| l.starts_with(prefix)).count();
        (count("socket:"), count("pipe:"))
    };
    // One of each first: the pools and lazily built state are in place.
    let mut s = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut s));
    drop(s);
    c.assert_reset("stranger", "api", APP_PORT);
    let baseline = fds();
    let api = SocketAddr::new(server.pod.ip, APP_PORT);
    for (from, allowed) in [("client", true), ("stranger", false)] {
        let netns = c.pod(from).netns.clone();
        let failures = picket_lab::in_netns(&netns, || {
            (0..5_000)
                .filter(|_| {
                    // A denied connection may fail at connect() itself, when
                    // the reset wins the race with the client's wake-up: that
                    // is a denial too. A failed allowed one is a failure.
                    let Ok(mut s) = std::net::TcpStream::connect(api) else {
                        return allowed;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    echoes(&mut s) != allowed
                })
                .count()
        })
        .unwrap();
        assert_eq!(failures, 0, "{from}: every connection decided as expected");
    }
    // Every socket is closed; the splice pipes are pooled, at most
    // `MAX_IDLE` (64) of them, two descriptors each, kept for reuse.
    eventually(
        "sockets back to the baseline",
        Duration::from_secs(10),
        || fds().0 <= baseline.0,
    );
    let (_, pipes) = fds();
    assert!(
        pipes <= baseline.1 + 2 * 64,
        "{pipes} pipe descriptors, {} before",
        baseline.1
    );
}

fn the_app_sees_the_clients_address_in_tproxy_mode_and_the_pods_own_in_redirect_mode(
    mode: Interception,
) {
    if !lab_available() {
        return;
    }
    // No policy: everyone may connect.
    let c = two_pods_in(mode);
    let server = c.start("api");
    for from in ["client", "stranger"] {
        let mut s = c.connect(from, "api", APP_PORT);
        assert!(echoes(&mut s), "{from} is relayed");
    }
    let api = SocketAddr::new(server.pod.ip, APP_PORT);
    let mut s = connect_from(c.lab.node_netns(), Some(c.lab.host_ip()), api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echoes(&mut s), "the node is relayed");
    let expected: Vec<IpAddr> = match mode {
        Interception::Tproxy => vec![c.pod("client").ip, c.pod("stranger").ip, c.lab.host_ip()],
        Interception::Redirect => vec![server.pod.ip; 3],
    };
    assert_eq!(
        server.echo.peers(),
        expected,
        "the client addresses the app saw"
    );

    // The sidecar holds exactly what its mode needs: NET_RAW in tproxy mode
    // (bit 13), nothing in redirect mode; as its own UID either way.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.sidecar.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let caps = match mode {
        Interception::Tproxy => format!("{:016x}", 1u64 << 13),
        Interception::Redirect => format!("{:016x}", 0),
    };
    assert_eq!(
        (field("CapEff:"), field("CapPrm:"), field("Uid:")),
        (caps.clone(), caps, "1337".to_string()),
        "{status}"
    );
}

fn ipv6_connections_are_decided_and_relayed_like_ipv4_ones(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    // Unique local addresses inside the pods' own namespaces (the bridge
    // carries them), without duplicate address detection's delay.
    let v6 = |pod: &str| -> IpAddr {
        let last = c
            .pod(pod)
            .ip
            .to_string()
            .rsplit('.')
            .next()
            .unwrap()
            .to_string();
        format!("fd00:5043::{last}").parse().unwrap()
    };
    for pod in ["api", "client", "stranger"] {
        let addr = format!("{}/64", v6(pod));
        netns_exec(
            &c.pod(pod).netns,
            &["ip", "-6", "addr", "add", &addr, "dev", "eth0", "nodad"],
        );
    }
    // The pods' manifests carry both addresses, as status.podIPs does.
    let docs: Vec<String> = ["api", "client", "stranger"]
        .iter()
        .map(|name| {
            let (pod, ns, labels) = &c.pods[*name];
            let labels: std::collections::BTreeMap<_, _> = labels.iter().cloned().collect();
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": ns, "labels": labels},
                "spec": {"containers": [{"name": "app"}]},
                "status": {"phase": "Running", "podIP": pod.ip.to_string(),
                    "podIPs": [{"ip": pod.ip.to_string()}, {"ip": v6(name).to_string()}],
                    "hostIP": c.lab.host_ip().to_string()},
            })
            .to_string()
        })
        .collect();
    c.write("pods.yaml", &docs.join("\n---\n"));
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    // Init sees the IPv6 address: its IPv6 rules are mandatory.
    let server = c.start("api");
    let api = SocketAddr::new(v6("api"), APP_PORT);
    let app = picket_lab::app::EchoServer::start(&server.pod.netns, api).unwrap();
    let mut s = c.dial("client", api).unwrap();
    assert!(echoes(&mut s), "the client is relayed over IPv6");
    c.assert_reset_at("stranger", api);
    let expected = match mode {
        Interception::Tproxy => v6("client"),
        Interception::Redirect => v6("api"),
    };
    assert_eq!(app.peers(), [expected], "the client address the app saw");
    assert_eq!(server.echo.accepted(), 0, "nothing came in over IPv4");
}

fn a_denied_client_reconnecting_from_the_same_port_is_reset_again(mode: Interception) {
    if !lab_available() {
        return;
    }
    let c = two_pods_in(mode);
    c.write("policy.yaml", &policy("shop", "allow-client", ALLOW_CLIENT));
    let server = c.start("api");
    let stranger = c.pod("stranger").clone();
    let api = SocketAddr::new(server.pod.ip, APP_PORT);
    // The same source port each time, as a client (or an attacker) may
    // choose: the proxy's reset leaves conntrack's entry for the tuple
    // behind, and the next SYN on it is no new connection to conntrack.
    for attempt in 0..5 {
        let stream = picket_lab::in_netns(&stranger.netns, || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::new(stranger.ip, 40_123).into())?;
            socket.connect(&api.into())?;
            Ok::<_, std::io::Error>(std::net::TcpStream::from(socket))
        })
        .unwrap();
        match stream {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                assert!(!echoes(&mut s), "attempt {attempt}: echoed");
            }
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::ConnectionReset,
                "attempt {attempt}: {e}"
            ),
        }
    }
    assert_eq!(server.echo.accepted(), 0, "nothing reached the app");
}

#[test]
fn a_tproxy_sidecar_without_net_raw_exits_with_one_line() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    // The plain binary: no file capability, so no NET_RAW for the proxy UID.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &c.pod("api").netns])
        .args(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
        .arg(&c.binary)
        .args([
            "run",
            "--interception",
            "tproxy",
            "--cluster-dir",
            "/nonexistent",
        ])
        .env("POD_NAME", "api")
        .env("POD_NAMESPACE", "shop")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("picket-proxy: --interception tproxy needs CAP_NET_RAW"),
        "{err}"
    );
}

/// The counter of `outcome` in a metrics exposition, summed over labels.
fn connections_counted(metrics: &str, outcome: &str) -> u64 {
    let outcome = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("picket_inbound_connections_total{") && l.contains(&outcome))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Audit mode end to end: a deny-all in audit mode of a pod no other
/// policy isolates appears while a connection is live and tears nothing
/// down; every connection still works and counts one would-deny; switched
/// to enforce, it resets the live connection and refuses new ones.
#[test]
fn an_audited_deny_all_breaks_nothing_counts_each_would_deny_and_enforced_resets() {
    if !lab_available() {
        return;
    }
    let c = two_pods();
    let server = c.start("api");
    let metrics = || {
        let admin = SocketAddr::new(server.pod.ip, 15020);
        http_get(&server.pod.netns, admin, "/metrics").unwrap().1
    };
    let mut live = c.connect("client", "api", APP_PORT);
    assert!(echoes(&mut live));
    let lockdown = policy(
        "shop",
        "lockdown",
        "{podSelector: {matchLabels: {app: api}}, ingress: []}",
    );
    c.write("lockdown.yaml", &audited(lockdown.clone()));
    eventually("the audited policy to count a would-deny", READY, || {
        assert!(allowed_now(&c, "client", "api"), "audit denies nothing");
        connections_counted(&metrics(), "would-deny") > 0
    });
    assert!(echoes(&mut live), "its appearance tears nothing down");
    let (before, allowed_before) = {
        let m = metrics();
        (
            connections_counted(&m, "would-deny"),
            connections_counted(&m, "allowed"),
        )
    };
    for _ in 0..4 {
        assert!(allowed_now(&c, "client", "api"));
    }
    assert!(allowed_now(&c, "stranger", "api"));
    let m = metrics();
    assert_eq!(connections_counted(&m, "allowed"), allowed_before + 5);
    assert_eq!(
        connections_counted(&m, "would-deny"),
        before + 5,
        "one would-deny per connection: {m}"
    );
    assert_eq!(connections_counted(&m, "denied"), 0);
    assert_eq!(connections_counted(&m, "would-allow"), 0);
    assert!(
        !m.lines()
            .any(|l| l.starts_with("picket_inbound_teardowns_total{") && !l.ends_with(" 0")),
        "nothing torn down: {m}"
    );
    assert!(echoes(&mut live));

    // Enforced: the live connection is reset, and new ones refused.
    c.write("lockdown.yaml", &lockdown);
    let mut buf = [0u8; 8];
    match live.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the live connection must be reset, got {other:?}"),
    }
    c.assert_reset("client", "api", APP_PORT);
}

in_both_modes!(
    a_denied_client_reconnecting_from_the_same_port_is_reset_again,
    ipv6_connections_are_decided_and_relayed_like_ipv4_ones,
    the_app_sees_the_clients_address_in_tproxy_mode_and_the_pods_own_in_redirect_mode,
    allowed_peer_echoes_half_closes_and_moves_100_mib,
    denied_peer_reads_econnreset_and_the_app_never_accepts,
    bookstore_api_accepts_bookstore_and_inventory_and_resets_the_rest,
    a_policy_change_tears_down_live_connections_it_forbids_and_only_those,
    egress_policy_of_the_source_is_enforced_at_the_destination,
    node_traffic_excluded_ports_and_the_proxys_own_port,
    fail_closed_without_state_and_on_a_half_written_file,
    init_is_idempotent_and_names_what_is_missing,
    sigterm_keeps_serving_through_the_drain_period_then_exits,
    the_sidecar_dials_only_its_pods_own_addresses,
    a_saturated_admin_port_does_not_stop_inbound_connections,
    the_proxys_ports_are_reserved_so_the_pods_own_connections_cannot_take_them,
    ten_thousand_short_connections_leave_no_descriptor_behind,
);
