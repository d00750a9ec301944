//! The mesh's handshakes over loopback, with certificates from the
//! control plane's own CA code: who is accepted, and why others are not.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use picket_control::auth::PodIdentity;
use picket_control::ca::Ca;
use picket_test_support::certs::TestCa;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::identity::server_name_for;
use super::*;

fn pod(name: &str) -> PodIdentity {
    PodIdentity {
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("0000000{}-1111-4222-8333-944455556666", name.len()),
        service_account: name.into(),
    }
}

fn ca(root: &TestCa, trust_domain: &str) -> Ca {
    Ca::from_pem(
        root.cert_pem.as_bytes(),
        root.key_pem.as_bytes(),
        root.cert_pem.as_bytes(),
        trust_domain,
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// Credentials for `who`, issued by `ca` at `at`, trusting `ca`'s anchors.
fn credentials(ca: &Ca, who: &PodIdentity, at: SystemTime) -> Arc<Credentials> {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let issued = ca.issue(csr.der(), who, at).unwrap();
    let credentials = Credentials::new();
    credentials
        .set(
            issued.chain,
            key.serialize_der(),
            ca.anchors(),
            ca.trust_domain(),
            issued.not_after,
        )
        .unwrap();
    credentials
}

/// One handshake: `client` dials `server` expecting the pod of UID
/// `expect`. The server's outcome (the peer it verified, or why not) and
/// the client's.
async fn handshake(
    server: &Arc<Credentials>,
    client: Arc<rustls::ClientConfig>,
    expect: &str,
) -> (Result<MeshIdentity, &'static str>, Result<(), &'static str>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let credentials = server.clone();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                let mut byte = [0u8; 1];
                let _ = tls.read_exact(&mut byte).await;
                let _ = tls.write_all(&byte).await;
                Ok(credentials.identity_of(&leaf).unwrap())
            }
            Err(error) => Err(TlsFailure::of(&error).label()),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client);
    let dialled = match connector
        .connect(server_name_for(expect).unwrap(), tcp)
        .await
    {
        Ok(mut tls) => {
            // TLS 1.3: the server's verdict on our certificate comes with its first bytes.
            let _ = tls.write_all(b"x").await;
            let mut byte = [0u8; 1];
            match tls.read_exact(&mut byte).await {
                Ok(_) => Ok(()),
                Err(_) => Err("refused by the server"),
            }
        }
        Err(error) => Err(TlsFailure::of(&error).label()),
    };
    (served.await.unwrap(), dialled)
}

#[tokio::test]
async fn two_pods_of_one_ca_each_verify_the_other() {
    let root = TestCa::root("mesh").unwrap();
    let ca = ca(&root, "cluster.local");
    let api = credentials(&ca, &pod("api"), SystemTime::now());
    let web = credentials(&ca, &pod("web"), SystemTime::now());
    let (served, dialled) = handshake(&api, web.client_config(), &pod("api").uid).await;
    assert_eq!(dialled, Ok(()));
    let peer = served.unwrap();
    assert_eq!(
        (
            peer.namespace.as_str(),
            peer.service_account.as_str(),
            peer.uid.as_str()
        ),
        ("shop", "web", pod("web").uid.as_str())
    );
}

#[tokio::test]
async fn a_server_that_is_not_the_pod_dialled_is_refused() {
    let root = TestCa::root("mesh").unwrap();
    let ca = ca(&root, "cluster.local");
    let api = credentials(&ca, &pod("api"), SystemTime::now());
    let web = credentials(&ca, &pod("web"), SystemTime::now());
    // web dials the address it believes is db's; api answers.
    let (_, dialled) = handshake(&api, web.client_config(), &pod("db").uid).await;
    assert_eq!(dialled, Err("identity-mismatch"));
}

#[tokio::test]
async fn a_rogue_ca_an_expired_certificate_and_another_trust_domain_are_refused_with_their_reason()
{
    let root = TestCa::root("mesh").unwrap();
    let ca = ca(&root, "cluster.local");
    let api = credentials(&ca, &pod("api"), SystemTime::now());
    let expect = pod("api").uid;

    // A client whose certificate a rogue CA signed (it trusts ours, to get as far as it can).
    let rogue = credentials(
        &self::ca(&TestCa::root("rogue").unwrap(), "cluster.local"),
        &pod("web"),
        SystemTime::now(),
    );
    let ours = credentials(&ca, &pod("x"), SystemTime::now());
    let rogue_config = mixed_client(&ours, &rogue);
    let (served, _) = handshake(&api, rogue_config, &expect).await;
    assert_eq!(served.unwrap_err(), "unknown-issuer");

    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    let expired = credentials(&ca, &pod("web"), two_days_ago);
    let (served, _) = handshake(&api, expired.client_config(), &expect).await;
    assert_eq!(served.unwrap_err(), "expired");

    let elsewhere = credentials(
        &self::ca(&root, "elsewhere.example"),
        &pod("web"),
        SystemTime::now(),
    );
    let elsewhere_config = mixed_client(&ours, &elsewhere);
    let (served, _) = handshake(&api, elsewhere_config, &expect).await;
    assert_eq!(served.unwrap_err(), "wrong-trust-domain");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let root = TestCa::root("mesh").unwrap();
    let ca = ca(&root, "cluster.local");
    let api = credentials(&ca, &pod("api"), SystemTime::now());
    let mut roots = rustls::RootCertStore::empty();
    for anchor in ca.anchors() {
        roots.add(anchor.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let (served, dialled) = handshake(&api, Arc::new(config), &pod("api").uid).await;
    assert_eq!(served.unwrap_err(), "no-client-certificate");
    assert!(dialled.is_err());
}

/// A client presenting `presenter`'s certificate and key, verifying the
/// server with `verifier`'s anchors (ours).
fn mixed_client(
    verifier: &Arc<Credentials>,
    presenter: &Arc<Credentials>,
) -> Arc<rustls::ClientConfig> {
    let presenting = presenter.client_config();
    let verifying = verifier.client_config();
    let mut config = (*verifying).clone();
    config.client_auth_cert_resolver = presenting.client_auth_cert_resolver.clone();
    Arc::new(config)
}

/// Accepts any server (the test is about the server's verdict).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A second connection between the same two sidecars resumes (no
/// certificate signatures), and the server still knows who called: the
/// ticket carries the chain the full handshake verified.
#[tokio::test]
async fn a_resumed_session_keeps_the_verified_identities() {
    let root = TestCa::root("mesh").unwrap();
    let ca = ca(&root, "cluster.local");
    let api = credentials(&ca, &pod("api"), SystemTime::now());
    let web = credentials(&ca, &pod("web"), SystemTime::now());
    let server = api.server_config();
    let client = web.client_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let served = tokio::spawn(async move {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            kinds.push((tls.get_ref().1.handshake_kind(), leaf, suite));
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.unwrap();
            tls.write_all(&byte).await.unwrap();
            tls.shutdown().await.unwrap();
        }
        kinds
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = server_name_for(&pod("api").uid).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.unwrap();
        // Read to the end: the ticket arrives after the handshake.
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
    }
    let kinds = served.await.unwrap();
    assert_eq!(kinds[0].0, Some(rustls::HandshakeKind::Full));
    assert_eq!(kinds[1].0, Some(rustls::HandshakeKind::Resumed));
    assert_eq!(
        kinds[0].2,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        "two sidecars agree on the mesh's first suite"
    );
    assert_eq!(
        api.identity_of(&kinds[1].1).unwrap().uid,
        pod("web").uid,
        "the resumed peer is the pod the full handshake verified"
    );
}
