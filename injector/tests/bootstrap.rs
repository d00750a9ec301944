//! End to end: the shared-Secret TLS bootstrap and the caBundle patch, with two real
//! `picket-injector` processes in `--tls-mode secret` starting at once against the test API
//! server (`picket-test-support`), which holds the namespace and the MutatingWebhookConfiguration
//! of `manifests/install/resources`.
//!
//! A barrier on the API server holds both injectors' first read of the Secret until both have
//! made it, so both find it absent, both generate a certificate and both try to create the
//! Secret: one wins, the other gets 409 and must read the winner's. Then both must serve the
//! same certificate, the one in the Secret, issued by the CA that is now the caBundle of the
//! webhook configuration; the caBundle must have changed once, and neither a restart nor the
//! periodic resync (every 200 ms here) may write it again.
//!
//! Every wait polls with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use picket_test_support::announced::listening_addrs;
use picket_test_support::apiserver::{ApiServer, Kind, RecordedRequest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const NAMESPACE: &str = "picket-system";
const SECRET: &str = "picket-injector-tls";
const WEBHOOK_CONFIG: &str = "picket-injector";
const SERVICE_NAME: &str = "picket-injector.picket-system.svc";
const DEADLINE: Duration = Duration::from_secs(60);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A running injector in secret mode, killed on drop.
struct Injector {
    name: &'static str,
    child: Child,
    /// Its stderr, until the webhook's address has been read from it.
    log: Option<std::process::ChildStderr>,
    /// The webhook's address (port 0, read back from the log).
    webhook: Option<SocketAddr>,
}

impl Injector {
    /// Starts the binary; does not wait for it (see [`Injector::wait_serving`]).
    fn spawn(name: &'static str, kubeconfig: &Path, dir: &Path) -> Injector {
        // These tests are about the serving certificate's Secret alone.
        Self::spawn_with(name, kubeconfig, dir, &["--mesh-ca-secret", ""])
    }

    fn spawn_with(name: &'static str, kubeconfig: &Path, dir: &Path, extra: &[&str]) -> Injector {
        let ca_out = dir.join(format!("{name}-ca.crt"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_picket-injector"))
            .args(extra)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--shutdown-delay", "0s"])
            .args(["--namespace-lookup", "none"])
            .args(["--tls-mode", "secret"])
            .args(["--namespace", NAMESPACE])
            .args(["--tls-secret", SECRET])
            .args(["--webhook-config", WEBHOOK_CONFIG])
            .args(["--tls-resync", "200ms"])
            .arg("--ca-out")
            .arg(&ca_out)
            .env("KUBECONFIG", kubeconfig)
            .env("PICKET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start picket-injector");
        Injector {
            name,
            log: child.stderr.take(),
            child,
            webhook: None,
        }
    }

    /// Polls until the webhook completes a TLS handshake; returns the certificate it served.
    async fn wait_serving(&mut self) -> CertificateDer<'static> {
        let started = Instant::now();
        if let Some(log) = self.log.take() {
            let Some(addrs) = listening_addrs(log, &["Webhook listening"], DEADLINE) else {
                panic!(
                    "injector {} never listened: {:?}",
                    self.name,
                    self.child.try_wait()
                );
            };
            self.webhook = Some(addrs[0]);
        }
        let webhook = self.webhook.expect("read from the log");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("injector {} exited early: {status}", self.name);
            }
            if let Ok(cert) = served_certificate(webhook).await {
                return cert;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "injector {} not serving HTTPS in time",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts any server certificate (signatures are still checked), to see what is served.
#[derive(Debug)]
struct RecordAny(Arc<CryptoProvider>);

impl ServerCertVerifier for RecordAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The end-entity certificate the server at `addr` presents.
async fn served_certificate(addr: SocketAddr) -> Result<CertificateDer<'static>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordAny(provider)))
        .with_no_client_auth();
    handshake(addr, config).await
}

/// Completes a handshake verifying the server against `ca_pem` as the API server would
/// (the Service's DNS name); returns the end-entity certificate.
async fn verified_certificate(
    addr: SocketAddr,
    ca_pem: &[u8],
) -> Result<CertificateDer<'static>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    handshake(addr, config).await
}

async fn handshake(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<CertificateDer<'static>, Error> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVICE_NAME)?, tcp)
        .await?;
    let (_, session) = tls.get_ref();
    let chain = session.peer_certificates().ok_or("no peer certificate")?;
    Ok(chain.first().ok_or("empty chain")?.clone().into_owned())
}

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/install/resources")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `[]byte` field of a stored object, decoded.
fn bytes(object: &Value, pointer: &str) -> Vec<u8> {
    let text = object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {pointer} in {object}"));
    STANDARD.decode(text).expect("base64")
}

fn webhook_config(api: &ApiServer) -> Value {
    api.get(Kind::MutatingWebhookConfiguration, None, WEBHOOK_CONFIG)
        .expect("the webhook configuration exists")
}

fn secret_path() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
}

fn config_path() -> String {
    format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{WEBHOOK_CONFIG}")
}

/// The (method, status) of the requests since `from` for which `which` holds.
fn answers(
    api: &ApiServer,
    from: usize,
    which: impl Fn(&RecordedRequest) -> bool,
) -> Vec<(String, Option<u16>)> {
    api.requests()
        .iter()
        .skip(from)
        .filter(|r| which(r))
        .map(|r| (r.method.clone(), r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_injectors_starting_at_once_serve_the_same_certificate() {
    let api = ApiServer::bind("127.0.0.1:0").expect("test API server");
    api.apply(&manifest("00-namespace.yaml"))
        .expect("namespace applies");
    api.apply(&manifest("50-webhook.yaml"))
        .expect("webhook configuration applies");
    let initial = webhook_config(&api);
    assert!(
        initial
            .pointer("/webhooks/0/clientConfig/caBundle")
            .is_none(),
        "the manifest leaves caBundle to the injector"
    );
    assert_eq!(initial["metadata"]["generation"], 1);

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();

    // Both first reads of the Secret wait for each other: both see it absent.
    let secret = secret_path();
    api.barrier(2, DEADLINE, move |r| r.method == "GET" && r.path == secret);
    let mut a = Injector::spawn("a", &kubeconfig, dir.path());
    let mut b = Injector::spawn("b", &kubeconfig, dir.path());
    let cert_a = a.wait_serving().await;
    let cert_b = b.wait_serving().await;

    // They raced: both read nothing, both created, one got 409 and read the winner's.
    let secret_answers = answers(&api, 0, |r| r.path.contains("/secrets"));
    let mut first_reads = secret_answers.clone();
    first_reads.truncate(2);
    assert_eq!(
        first_reads,
        [("GET".into(), Some(404)), ("GET".into(), Some(404))],
        "{secret_answers:?}"
    );
    let mut creates: Vec<Option<u16>> = secret_answers
        .iter()
        .filter(|(method, _)| method == "POST")
        .map(|(_, status)| *status)
        .collect();
    creates.sort();
    assert_eq!(creates, [Some(201), Some(409)], "{secret_answers:?}");

    // One Secret, and both serve its certificate.
    let secrets = api.objects(Kind::Secret);
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    let stored = &secrets[0];
    assert_eq!(stored["metadata"]["namespace"], NAMESPACE);
    assert_eq!(stored["metadata"]["name"], SECRET);
    assert_eq!(stored["type"], "kubernetes.io/tls");
    assert!(
        cert_a == cert_b,
        "the injectors serve different certificates"
    );
    let stored_cert = CertificateDer::from_pem_slice(&bytes(stored, "/data/tls.crt"))
        .expect("tls.crt is a PEM certificate");
    assert!(
        cert_a == stored_cert,
        "the served certificate is not the Secret's"
    );

    // The caBundle of every webhook is the Secret's CA, and a client trusting only the
    // caBundle (the API server) accepts both injectors under the Service's name.
    let ca = bytes(stored, "/data/ca.crt");
    let config = webhook_config(&api);
    let webhooks = config["webhooks"].as_array().expect("webhooks");
    assert!(!webhooks.is_empty());
    for i in 0..webhooks.len() {
        let bundle = bytes(&config, &format!("/webhooks/{i}/clientConfig/caBundle"));
        assert!(bundle == ca, "webhook {i}: caBundle is not the Secret's CA");
    }
    let mut without_bundles = config["webhooks"].clone();
    for webhook in without_bundles.as_array_mut().expect("webhooks") {
        webhook["clientConfig"]
            .as_object_mut()
            .expect("clientConfig")
            .remove("caBundle");
    }
    assert_eq!(
        without_bundles, initial["webhooks"],
        "the patch changed more than caBundle"
    );
    for injector in [&a, &b] {
        let verified = verified_certificate(injector.webhook.expect("serving"), &ca)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "injector {}: not trusted by the caBundle: {e}",
                    injector.name
                )
            });
        assert!(verified == cert_a);
    }
    for name in ["a", "b"] {
        let written = std::fs::read(dir.path().join(format!("{name}-ca.crt"))).unwrap();
        assert!(
            written == ca,
            "injector {name} wrote another CA to --ca-out"
        );
    }

    // The caBundle changed once: one new generation. Both injectors may have read the empty
    // caBundle before either patched it, and then both send the same patch, the second a
    // no-op on the server; so one or two PATCHes, each a JSON patch that succeeded.
    assert_eq!(config["metadata"]["generation"], 2, "{config}");
    let writes = answers(&api, 0, |r| r.path == config_path() && r.method != "GET");
    assert!(
        matches!(writes.len(), 1 | 2) && writes.iter().all(|w| *w == ("PATCH".into(), Some(200))),
        "{writes:?}"
    );
    let settled_rv = config["metadata"]["resourceVersion"].clone();

    // A restarted injector reads the Secret, finds the caBundle current and writes nothing;
    // nor does the other one's resync. Wait for a few resyncs to have read the configuration.
    drop(a);
    let restart = api.requests().len();
    let mut a = Injector::spawn("a-restarted", &kubeconfig, dir.path());
    let cert_restarted = a.wait_serving().await;
    assert!(
        cert_restarted == cert_b,
        "the restarted injector serves another certificate"
    );
    let started = Instant::now();
    while answers(&api, restart, |r| r.path == config_path()).len() < 6 {
        assert!(
            started.elapsed() < DEADLINE,
            "no resyncs read the webhook configuration"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = answers(&api, restart, |r| {
        r.path == config_path() || r.path.contains("/secrets")
    });
    assert!(
        since
            .iter()
            .all(|(method, status)| method == "GET" && *status == Some(200)),
        "writes after the restart: {since:?}"
    );
    let config = webhook_config(&api);
    assert_eq!(config["metadata"]["resourceVersion"], settled_rv);
    assert_eq!(config["metadata"]["generation"], 2);
    assert_eq!(api.objects(Kind::Secret).len(), 1);
}

/// At install the injector creates the mesh CA's Secret for picket-control
/// (a root and an issuer under it), once: a restarted injector keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_ca_secret_is_created_once_and_kept() {
    let api = ApiServer::bind("127.0.0.1:0").expect("test API server");
    api.apply(&manifest("00-namespace.yaml"))
        .expect("namespace applies");
    api.apply(&manifest("50-webhook.yaml"))
        .expect("webhook configuration applies");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.kubeconfig(&kubeconfig).unwrap();
    let read = || api.get(Kind::Secret, Some(NAMESPACE), "picket-mesh-ca");
    let mut first = Injector::spawn_with("a", &kubeconfig, dir.path(), &[]);
    first.wait_serving().await;
    let deadline = Instant::now() + DEADLINE;
    while read().is_none() {
        assert!(Instant::now() < deadline, "the mesh CA Secret is created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = read().unwrap();
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(created["data"][key].is_string(), "{key} in {created}");
    }
    drop(first);
    let mut second = Injector::spawn_with("b", &kubeconfig, dir.path(), &[]);
    second.wait_serving().await;
    assert_eq!(
        read().unwrap()["data"],
        created["data"],
        "kept, not replaced"
    );
}
