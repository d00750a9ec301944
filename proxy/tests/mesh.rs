//! mTLS between sidecars, end to end: the test API server and
//! `picket-control` (the mesh CA) in the node's namespace, real sidecars in
//! their pods, the real init. What crosses the bridge, who the server
//! knows called, and what identity buys against a forged source address.
//! Needs root.

#[macro_use]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use picket_lab::proxy::{connect_from, http_get};
use picket_test_support::apiserver::ApiServer;
use support::control::*;
use support::*;

/// An AF_PACKET reader in the node's namespace: every frame on the bridge
/// and the pods' veths, until stopped.
struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::io::Result<Vec<u8>>>>,
}

impl Sniffer {
    fn start(node: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = picket_lab::spawn_in_netns(node, move || {
            // ETH_P_ALL, in network byte order.
            let socket = socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(0x0003u16.to_be() as i32)),
            )
            .expect("an AF_PACKET socket (root)");
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut seen = Vec::new();
            let mut frame = vec![0u8; 65_536];
            while !flag.load(Ordering::SeqCst) {
                if let Ok(n) = (&socket).read(&mut frame) {
                    seen.extend_from_slice(&frame[..n]);
                }
            }
            seen
        })
        .unwrap();
        ready_rx.recv_timeout(READY).unwrap();
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, and says whether any frame held `a`, and `b`.
    fn saw_both(mut self, a: &[u8], b: &[u8]) -> (bool, bool) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.take().unwrap().join().unwrap().unwrap();
        let holds = |needle: &[u8]| seen.windows(needle.len()).any(|w| w == needle);
        (holds(a), holds(b))
    }
}

const MARKER: &[u8] = b"picket-marker-7d1e-never-on-the-wire";
const PLAIN_MARKER: &[u8] = b"picket-marker-plain-seen-on-the-wire";

/// Writes `line` and reads it back from the echo app.
fn echo_line(stream: &mut std::net::TcpStream, line: &[u8]) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if stream.write_all(line).is_err() {
        return false;
    }
    let mut back = vec![0u8; line.len()];
    stream.read_exact(&mut back).is_ok() && back == line
}

/// `pod`'s sidecar flags for the control plane, mTLS in `mode`.
fn mesh_args(setup: &Setup, c: &Cluster, pod: &str, addr: SocketAddr, mode: &str) -> Vec<String> {
    let mut args = setup.sidecar_args(c, pod, addr);
    args.extend(["--mtls".to_string(), mode.to_string()]);
    args
}

/// The pod `client`'s sidecar, capturing its outbound connections, mTLS permissive.
fn capturing_client(setup: &Setup, c: &Cluster, addr: SocketAddr) -> Server {
    let mut args = mesh_args(setup, c, "client", addr, "permissive");
    args.extend(["--outbound-capture".to_string(), "on".to_string()]);
    c.server_with_init("client", true, &["--outbound-capture", "on"], &strs(&args))
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Meshed to meshed: the client's sidecar originates mTLS, the server's
/// terminates it and knows who called; the bridge never carries what the
/// client wrote. From a pod without a sidecar, the same bytes cross the
/// bridge in the clear (so the capture would have seen them).
#[test]
fn meshed_pods_talk_over_mtls_and_the_server_knows_its_caller() {
    if !lab_available() {
        return;
    }
    let c = Cluster::new(&[
        ("shop", "api", &[("app", "api")]),
        ("shop", "client", &[("role", "client")]),
        ("shop", "plain", &[("role", "plain")]),
    ]);
    let mut setup = Setup::new(&c);
    setup.with_mesh(c.state.path(), Duration::from_secs(3600));
    let api = &setup.api;
    let permissive = [("picket.io/mtls", "permissive")];
    apply_pod_annotated(&c, api, "api", true, &permissive);
    apply_pod_annotated(&c, api, "client", true, &permissive);
    apply_pod(&c, api, "plain", false);
    let (_plane, addr) = setup.start_plane(0);
    let _api = c.server_with(
        "api",
        true,
        &strs(&mesh_args(&setup, &c, "api", addr, "permissive")),
    );
    let _client = capturing_client(&setup, &c, addr);
    let to_api = SocketAddr::new(c.pod("api").ip, APP_PORT);

    let sniffer = Sniffer::start(&setup.node);
    let mut meshed = c.dial("client", to_api).unwrap();
    assert!(echo_line(&mut meshed, MARKER), "meshed to meshed works");
    // The server's sidecar names its caller.
    let (_, connections) = http_get(
        &c.pod("api").netns,
        SocketAddr::from(([127, 0, 0, 1], picket_common::LOCAL_ADMIN_PORT)),
        "/connections",
    )
    .unwrap();
    let client_uid = pod_uid(api, "client");
    assert!(
        connections.contains("spiffe://cluster.local/ns/shop/sa/default")
            && connections.contains(&client_uid),
        "the server reports the client's identity: {connections}"
    );
    let mut plain = c.connect("plain", "api", APP_PORT);
    assert!(
        echo_line(&mut plain, PLAIN_MARKER),
        "plaintext by policy in permissive mode"
    );
    // The next connection between the two sidecars resumes the session.
    let mut again = c.dial("client", to_api).unwrap();
    assert!(echo_line(&mut again, MARKER), "a second meshed connection");
    // Dialled twice: the client's sidecar handshakes a spare ahead. Until a
    // client connection takes it, the server admits nothing.
    eventually("a spare is made", Duration::from_secs(10), || {
        metric(c.pod("client"), "picket_mtls_spares_total{event=\"made\"}") >= 1.0
    });
    let admitted = || {
        metric(
            c.pod("api"),
            "picket_inbound_connections_total{outcome=\"allowed\"",
        )
    };
    assert_eq!(
        admitted(),
        3.0,
        "two meshed connections and the plaintext one"
    );
    let mut third = c.dial("client", to_api).unwrap();
    assert!(echo_line(&mut third, MARKER), "a connection on the spare");
    assert_eq!(
        metric(c.pod("client"), "picket_mtls_spares_total{event=\"taken\"}"),
        1.0
    );
    assert_eq!(admitted(), 4.0, "admitted when taken");
    drop((meshed, plain, again, third));
    let seen_marker = sniffer.saw_both(MARKER, PLAIN_MARKER);
    assert!(seen_marker.1, "the capture sees plaintext on the bridge");
    assert!(
        !seen_marker.0,
        "the capture never sees what the meshed client wrote"
    );
    assert_eq!(
        metric(
            c.pod("api"),
            "picket_mtls_connections_total{direction=\"inbound\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            c.pod("client"),
            "picket_mtls_connections_total{direction=\"outbound\"}"
        ),
        3.0
    );
    for (pod, direction) in [("api", "inbound"), ("client", "outbound")] {
        // The spare's handshake races the second connection's for the one
        // ticket the first left: one of them resumes, perhaps both.
        let resumed = metric(
            c.pod(pod),
            &format!("picket_mtls_resumed_total{{direction=\"{direction}\"}}"),
        );
        assert!(
            (1.0..3.0).contains(&resumed),
            "{pod}: the first handshake was full, a later one resumed: {resumed}"
        );
    }
}

/// The pod's UID, as the API server set it.
fn pod_uid(api: &ApiServer, name: &str) -> String {
    api.get(
        picket_test_support::apiserver::Kind::Pod,
        Some("shop"),
        name,
    )
    .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
    .unwrap()
}

/// A certificate for `pod` from the control plane at `addr`, as its sidecar
/// would get one: the chain's leaf (DER) and its key (PEM) in `dir`.
fn issue(setup: &Setup, c: &Cluster, addr: SocketAddr, pod: &str) -> (PathBuf, PathBuf) {
    let token = c.state.path().join(format!("{pod}.cert-token"));
    let issued = setup
        .api
        .issue_pod_token("shop", pod, &["picket"], Duration::from_secs(3600))
        .unwrap();
    std::fs::write(&token, issued).unwrap();
    let config = picket_state::control::ControlConfig {
        addr: addr.to_string(),
        server_name: SERVER_NAME.into(),
        ca_pem: std::fs::read(&setup.ca).unwrap(),
        token_file: token,
        max_backoff: Duration::from_millis(500),
        outbound: false,
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    // Until the control plane has synced with the cluster.
    let response = picket_lab::in_netns(&setup.node, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let deadline = tokio::time::Instant::now() + READY;
                loop {
                    match picket_state::control::certify(&config, csr.clone()).await {
                        Ok(response) => return response,
                        Err(error) if tokio::time::Instant::now() < deadline => {
                            eprintln!("certify: {error}; again");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(error) => panic!("certify {error}"),
                    }
                }
            })
    })
    .unwrap();
    let cert = c.state.path().join(format!("{pod}.der"));
    let key_file = c.state.path().join(format!("{pod}.key"));
    std::fs::write(&cert, &response.chain[0]).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert, key_file)
}

/// `openssl s_client` from `netns` to `to`, offering ALPN picket/1, with
/// the certificate and key (DER, PEM) if given, verifying the server
/// against `root`: whether a line written (after the protocol's preface,
/// if `preface`) comes back.
fn openssl_echoes(
    netns: &str,
    to: SocketAddr,
    root: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    preface: bool,
) -> bool {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        netns.into(),
        "openssl".into(),
        "s_client".into(),
        "-connect".into(),
        to.to_string(),
        "-alpn".into(),
        "picket/1".into(),
        "-tls1_3".into(),
        "-CAfile".into(),
        root.display().to_string(),
        "-verify_return_error".into(),
        "-quiet".into(),
    ];
    if let Some((cert, key)) = client {
        args.extend([
            "-cert".into(),
            cert.display().to_string(),
            "-certform".into(),
            "DER".into(),
            "-key".into(),
            key.display().to_string(),
        ]);
    }
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    if preface {
        let _ = stdin.write_all(picket_proxy::mesh::PREFACE);
    }
    let _ = stdin.write_all(b"hello-through-openssl\n");
    let _ = stdin.flush();
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    line.trim() == "hello-through-openssl"
}

/// The spoof matrix. Pod A is allowed into api by its labels; A's network
/// namespace is deleted while A stays in the API, and a new namespace C
/// takes A's address. With mTLS off, C's plaintext is taken for A's: the
/// spoof works. Permissive: C's plaintext is refused (A originates mTLS),
/// and so is C with its own certificate (it names C, the address is A's).
/// Strict: C's plaintext is refused. A real TLS client nobody here wrote,
/// `openssl s_client` with A's certificate, completes the handshake and is
/// let in; without a client certificate it is refused.
#[test]
fn a_forged_source_address_is_refused_once_identity_is_bound_to_the_pod() {
    if !lab_available() {
        return;
    }
    let mut c = Cluster::new(&[
        ("shop", "api", &[("app", "api")]),
        ("shop", "a", &[("app", "a")]),
    ]);
    let mut setup = Setup::new(&c);
    let root = setup.with_mesh(c.state.path(), Duration::from_secs(3600));
    let api = &setup.api;
    apply_pod_annotated(&c, api, "a", true, &[("picket.io/mtls", "permissive")]);
    // C is a pod of the cluster too (it may get a certificate of its own),
    // with no address yet.
    api.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: shop, labels: {app: c}, annotations: {picket.io/mtls: permissive}}\n\
         spec: {containers: [{name: app}, {name: picket-proxy}]}\nstatus: {phase: Pending}\n",
    )
    .unwrap();
    api.apply(&policy(
        "shop",
        "api-from-a",
        "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}",
    ))
    .unwrap();
    let (_plane, addr) = setup.start_plane(0);
    let a_cert = issue(&setup, &c, addr, "a");
    let c_cert = issue(&setup, &c, addr, "c");
    let to_api = SocketAddr::new(c.pod("api").ip, APP_PORT);
    let forger = c.lab.take_over("a", "c").unwrap();
    let plaintext_from_c = || {
        connect_from(&forger.netns, None, to_api)
            .map(|mut s| echo_line(&mut s, b"forged"))
            .unwrap_or(false)
    };

    // mTLS off: the forged address passes for A.
    apply_pod(&c, &setup.api, "api", true);
    let mut server = c.server_with("api", true, &strs(&setup.sidecar_args(&c, "api", addr)));
    assert!(plaintext_from_c(), "without identity, C passes for A");

    for mode in ["permissive", "strict"] {
        apply_pod_annotated(&c, &setup.api, "api", true, &[("picket.io/mtls", mode)]);
        c.restart_sidecar(
            &mut server,
            &strs(&mesh_args(&setup, &c, "api", addr, mode)),
        );
        assert!(!plaintext_from_c(), "{mode}: C's plaintext is refused");
        let refused = if mode == "permissive" {
            "plaintext-from-meshed"
        } else {
            "plaintext-in-strict"
        };
        assert_eq!(
            metric(
                c.pod("api"),
                &format!("picket_inbound_refused_total{{reason=\"{refused}\"}}")
            ),
            1.0,
            "{mode}"
        );
        if mode == "permissive" {
            assert!(
                !openssl_echoes(&forger.netns, to_api, &root, Some(&c_cert), true),
                "C's own certificate names C, the address is A's"
            );
            assert_eq!(
                metric(
                    c.pod("api"),
                    "picket_inbound_refused_total{reason=\"identity-mismatch\"}"
                ),
                1.0
            );
            assert!(
                openssl_echoes(&forger.netns, to_api, &root, Some(&a_cert), true),
                "openssl with A's certificate, from A's address, is A"
            );
            assert!(
                !openssl_echoes(&forger.netns, to_api, &root, Some(&a_cert), false),
                "the same without the picket/1 preface: refused"
            );
            assert_eq!(
                metric(
                    c.pod("api"),
                    "picket_tls_failures_total{direction=\"inbound\",reason=\"no-preface\"}"
                ),
                1.0
            );
            assert!(
                !openssl_echoes(&forger.netns, to_api, &root, None, true),
                "no client certificate: refused"
            );
            assert!(
                metric(
                    c.pod("api"),
                    "picket_tls_failures_total{direction=\"inbound\",reason=\"no-client-certificate\"}"
                ) >= 1.0
            );
            let verified = Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&root)
                .arg(der_to_pem(&a_cert.0))
                .output()
                .unwrap();
            assert!(
                verified.status.success(),
                "openssl verify accepts the chain"
            );
        }
    }
}

/// A DER certificate file converted to PEM beside it (by openssl).
fn der_to_pem(der: &Path) -> PathBuf {
    let pem = der.with_extension("pem");
    let out = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(der)
        .arg("-out")
        .arg(&pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    pem
}

/// The serial number of the certificate `to` presents, read by `openssl
/// s_client` from `netns` with the client certificate given.
fn server_serial(netns: &str, to: SocketAddr, root: &Path, client: &(PathBuf, PathBuf)) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "openssl", "s_client", "-connect"])
        .arg(to.to_string())
        .args(["-alpn", "picket/1", "-tls1_3", "-CAfile"])
        .arg(root)
        .args(["-cert"])
        .arg(&client.0)
        .args(["-certform", "DER", "-key"])
        .arg(&client.1)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a server certificate");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(text[start..end].as_bytes())
        .unwrap();
    let serial = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&serial.stdout).trim().to_string()
}

const BANNER_PORT: u16 = 9100;

/// A server-first app on `addr` in `netns`: says a banner on accept, then echoes.
fn banner_server(netns: &str, addr: SocketAddr) {
    let listener = picket_lab::in_netns(netns, || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.write_all(b"BANNER\n");
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn reads_banner(mut stream: std::net::TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut banner = [0u8; 7];
    stream.read_exact(&mut banner).is_ok() && &banner == b"BANNER\n"
}

/// Certificates valid for 60 seconds: both sidecars renew every half
/// minute or so while one mTLS connection lives on through three renewals,
/// and new handshakes show new serials. A server-first protocol on a port
/// excluded from detection works from a meshed and an unmeshed client. A
/// policy change still tears the mTLS connection down.
#[test]
fn certificates_rotate_under_a_live_connection_and_server_first_protocols_work() {
    if !lab_available() {
        return;
    }
    let c = Cluster::new(&[
        ("shop", "api", &[("app", "api")]),
        ("shop", "client", &[("role", "client")]),
        ("shop", "plain", &[("role", "plain")]),
    ]);
    let mut setup = Setup::new(&c);
    let root = setup.with_mesh(c.state.path(), Duration::from_secs(60));
    let api = &setup.api;
    let permissive = [("picket.io/mtls", "permissive")];
    apply_pod_annotated(&c, api, "api", true, &permissive);
    apply_pod_annotated(&c, api, "client", true, &permissive);
    // plain runs no sidecar here, but is injected in the API (so openssl
    // can act for it with a certificate of its own).
    apply_pod_annotated(&c, api, "plain", true, &[]);
    let (_plane, addr) = setup.start_plane(0);
    let mut api_args = mesh_args(&setup, &c, "api", addr, "permissive");
    api_args.extend(["--skip-detect-ports".to_string(), BANNER_PORT.to_string()]);
    let _api = c.server_with("api", true, &strs(&api_args));
    let _client = capturing_client(&setup, &c, addr);
    let api_ip = c.pod("api").ip;
    banner_server(&c.pod("api").netns, SocketAddr::new(api_ip, BANNER_PORT));
    let to_api = SocketAddr::new(api_ip, APP_PORT);
    let plain_cert = issue(&setup, &c, addr, "plain");

    let mut live = c.dial("client", to_api).unwrap();
    assert!(echo_line(&mut live, b"first"));
    let first_serial = server_serial(&c.pod("plain").netns, to_api, &root, &plain_cert);
    let renewals = |pod: &str| metric(c.pod(pod), "picket_identity_refresh_total{result=\"ok\"}");
    let mut rounds = 0;
    eventually(
        "three renewals on both sides",
        Duration::from_secs(150),
        || {
            rounds += 1;
            assert!(
                echo_line(&mut live, format!("round {rounds}\n").as_bytes()),
                "the live connection survives"
            );
            renewals("api") >= 4.0 && renewals("client") >= 4.0
        },
    );
    assert!(echo_line(&mut live, b"after the renewals"));
    let later_serial = server_serial(&c.pod("plain").netns, to_api, &root, &plain_cert);
    assert_ne!(
        first_serial, later_serial,
        "a new handshake shows a new certificate"
    );

    // Server-first, from a meshed and an unmeshed client.
    let inbound_mtls = || {
        metric(
            c.pod("api"),
            "picket_mtls_connections_total{direction=\"inbound\"}",
        )
    };
    let before = inbound_mtls();
    let to_banner = SocketAddr::new(api_ip, BANNER_PORT);
    assert!(
        reads_banner(c.dial("client", to_banner).unwrap()),
        "meshed client"
    );
    assert!(
        reads_banner(connect_from(&c.pod("plain").netns, None, to_banner).unwrap()),
        "unmeshed client"
    );
    assert_eq!(
        inbound_mtls(),
        before + 1.0,
        "the meshed client came over mTLS"
    );

    // A policy that forbids the client resets the live mTLS connection.
    api.apply(&policy("shop", "deny-all", "{podSelector: {}}"))
        .unwrap();
    assert!(read_reset(&mut live), "the mTLS connection is torn down");
}

/// How many trust anchors a sidecar holds (its `picket_trust_anchors` series).
fn anchors_held(pod: &picket_lab::LabPod) -> usize {
    let admin = SocketAddr::new(pod.ip, picket_common::ADMIN_PORT);
    http_get(&pod.netns, admin, "/metrics")
        .map(|(_, text)| {
            text.lines()
                .filter(|l| l.starts_with("picket_trust_anchors{"))
                .count()
        })
        .unwrap_or(0)
}

/// A root rotation through a two-root bundle: the anchors gain the new
/// root, every sidecar shows both, the issuer moves under the new root,
/// every sidecar renews, the old root is dropped. New meshed connections
/// are made all along, and none fails.
#[test]
fn a_root_rotation_through_a_two_root_bundle_fails_no_connection() {
    if !lab_available() {
        return;
    }
    let c = Cluster::new(&[
        ("shop", "api", &[("app", "api")]),
        ("shop", "client", &[("role", "client")]),
    ]);
    let mut setup = Setup::new(&c);
    let anchors = setup.with_mesh(c.state.path(), Duration::from_secs(4));
    let identity = setup.identity.clone().unwrap();
    let api = &setup.api;
    let permissive = [("picket.io/mtls", "permissive")];
    apply_pod_annotated(&c, api, "api", true, &permissive);
    apply_pod_annotated(&c, api, "client", true, &permissive);
    let (_plane, addr) = setup.start_plane(0);
    let _api = c.server_with(
        "api",
        true,
        &strs(&mesh_args(&setup, &c, "api", addr, "permissive")),
    );
    let _client = capturing_client(&setup, &c, addr);
    let to_api = SocketAddr::new(c.pod("api").ip, APP_PORT);

    // New meshed connections, one after another, for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let dialler = {
        let stop = stop.clone();
        let netns = c.pod("client").netns.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::SeqCst) {
                let echoed = connect_from(&netns, None, to_api)
                    .map(|mut s| echo_line(&mut s, b"rotating"))
                    .unwrap_or(false);
                if echoed {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };
    let renewals = |pod: &str| metric(c.pod(pod), "picket_identity_refresh_total{result=\"ok\"}");
    let renewed_twice = |what: &str| {
        let since = (renewals("api"), renewals("client"));
        eventually(what, Duration::from_secs(30), || {
            renewals("api") >= since.0 + 2.0 && renewals("client") >= since.1 + 2.0
        });
    };
    let old_root = std::fs::read_to_string(&anchors).unwrap();
    let new_root = picket_test_support::certs::TestCa::root("picket-mesh-root-2").unwrap();

    // 1. Both roots are anchors; every sidecar gets both.
    std::fs::write(&anchors, format!("{old_root}{}", new_root.cert_pem)).unwrap();
    eventually(
        "every sidecar holds both roots",
        Duration::from_secs(30),
        || anchors_held(c.pod("api")) == 2 && anchors_held(c.pod("client")) == 2,
    );
    // 2. The issuer moves under the new root (here: the new root itself).
    std::fs::write(&identity.issuer_key_file, &new_root.key_pem).unwrap();
    std::fs::write(&identity.issuer_cert_file, &new_root.cert_pem).unwrap();
    renewed_twice("every sidecar renews under the new root");
    // 3. The old root is dropped.
    std::fs::write(&anchors, &new_root.cert_pem).unwrap();
    eventually(
        "every sidecar holds the new root alone",
        Duration::from_secs(30),
        || anchors_held(c.pod("api")) == 1 && anchors_held(c.pod("client")) == 1,
    );
    renewed_twice("and renews again");

    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = dialler.join().unwrap();
    assert_eq!(
        failed,
        0,
        "{failed} of {} connections failed during the rotation",
        ok + failed
    );
    assert!(ok >= 20, "only {ok} connections were made");
    assert!(
        metric(
            c.pod("api"),
            "picket_mtls_connections_total{direction=\"inbound\"}"
        ) >= ok as f64,
        "they were mTLS"
    );
}
