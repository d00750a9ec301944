//! This sidecar's mesh credentials (its certificate and key, the trust
//! anchors, the trust domain) and the TLS configurations that use them.
//!
//! The configurations are built once; the certificate resolvers and the
//! verifiers read the current credentials on every handshake, so a
//! rotation reaches new handshakes and leaves established connections
//! alone (TLS 1.3 has no renegotiation).
//!
//! - inbound ([`Credentials::server_config`]): TLS 1.3, ALPN `picket/1`,
//!   a client certificate required, chained to the anchors, naming a pod
//!   of our trust domain;
//! - outbound ([`Credentials::client_config`]): the server's certificate
//!   must chain to the anchors and name the pod whose UID the server name
//!   carries (see [`super::identity::server_name_for`]); no SNI is sent.
//!
//! Sessions resume (TLS 1.3 tickets, one per full handshake), per
//! destination pod: a resumed session keeps the identities its full
//! handshake verified.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use super::identity::{expected_uid, IdentityError, MeshIdentity};
use super::ALPN;

/// What the credentials hold once certified.
struct Current {
    key: Arc<CertifiedKey>,
    anchors: Arc<RootCertStore>,
    /// The WebPKI client verifier over `anchors`.
    clients: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    not_after: i64,
}

/// The sidecar's certificate, key and anchors; none before the first
/// certificate.
pub struct Credentials {
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Arc<Current>>>,
}

/// Why a handshake's peer was refused, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// No client certificate.
    NoCertificate,
    /// It chains to no anchor (a rogue CA).
    UnknownIssuer,
    /// Expired or not yet valid.
    Expired,
    /// Another trust domain.
    WrongTrustDomain,
    /// It names another pod than expected (outbound).
    IdentityMismatch,
    /// No mesh identity in it.
    NoIdentity,
    /// This sidecar has no certificate yet.
    NotCertified,
    /// Anything else (protocol, timeout, I/O).
    Other,
}

/// The server's certificate names another pod than the one dialled.
#[derive(Debug, thiserror::Error)]
#[error("the certificate names pod UID {found:?}, the destination is {expected:?}")]
pub struct WrongPeer {
    found: String,
    expected: String,
}

// === impl Credentials ===

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// No credentials yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            provider: Arc::new(provider()),
            current: RwLock::new(None),
        })
    }

    /// Installs a certificate (the leaf, then its chain), its key (PKCS#8
    /// DER) and the anchors; new handshakes use them.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
        anchors: &[CertificateDer<'static>],
        trust_domain: &str,
        not_after: i64,
    ) -> Result<(), String> {
        if chain.is_empty() {
            return Err("no certificate in the chain".into());
        }
        let key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key_pkcs8.into()))
            .map_err(|e| format!("key: {e}"))?;
        let mut roots = RootCertStore::empty();
        for anchor in anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| format!("trust anchor: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no trust anchor".into());
        }
        let roots = Arc::new(roots);
        let clients =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| format!("client verifier: {e}"))?;
        let current = Current {
            key: Arc::new(CertifiedKey::new(chain, key)),
            anchors: roots,
            clients,
            trust_domain: trust_domain.to_string(),
            not_after,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(current));
        Ok(())
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a certificate is installed.
    pub fn is_certified(&self) -> bool {
        self.current().is_some()
    }

    /// The installed certificate's notAfter (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.current().map(|c| c.not_after)
    }

    /// The installed certificate (DER).
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        self.current().and_then(|c| c.key.cert.first().cloned())
    }

    /// The identity a verified peer certificate names (the trust domain
    /// was checked by the verifier).
    pub fn identity_of(&self, der: &[u8]) -> Result<MeshIdentity, IdentityError> {
        let trust_domain = self
            .current()
            .map(|c| c.trust_domain.clone())
            .unwrap_or_default();
        MeshIdentity::of_certificate(der, &trust_domain)
    }

    /// The inbound configuration (terminating `picket/1`).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .with_client_cert_verifier(Arc::new(PeerVerifier(self.clone())))
            .with_cert_resolver(Arc::new(OwnCertificate(self.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        // One resumption ticket per full handshake: the next connection
        // from the same client sidecar skips the certificates' signatures.
        // The ticket's key never leaves this process, and the ticket carries
        // the client's verified chain, so a resumed peer is the pod it
        // proved to be (the identity rule applies as to a full handshake).
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => {
                config.ticketer = ticketer;
                config.send_tls13_tickets = 1;
            }
            Err(error) => {
                tracing::warn!(%error, "No TLS ticketer: every mTLS connection makes a full handshake");
                config.send_tls13_tickets = 0;
            }
        }
        Arc::new(config)
    }

    /// The outbound configuration (originating `picket/1`).
    pub fn client_config(self: &Arc<Self>) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DestinationVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(OwnCertificate(self.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        // The server name carries the expected UID; it is not the peer's to see.
        config.enable_sni = false;
        // Tickets are kept per server name, that is per destination pod UID:
        // a session resumes only with the pod it was verified against.
        config.resumption = rustls::client::Resumption::in_memory_sessions(1024);
        Arc::new(config)
    }
}

/// ring's primitives, with the TLS 1.3 suites in the mesh's order:
/// AES-128-GCM with SHA-256 first. Both ends are sidecars, so the order
/// is what they agree on. Against ring's default (AES-256-GCM with
/// SHA-384 first) it is the cheaper of each pair on CPUs with AES and SHA
/// instructions: the key schedule and transcript hash of a resumed
/// handshake were a quarter of its CPU in SHA-512 blocks, and the 128-bit
/// key matches the P-256 certificates' strength (TLS 1.3's mandatory suite).
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite;
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// Presents the current certificate, inbound and outbound.
#[derive(Debug)]
struct OwnCertificate(Arc<Credentials>);

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.is_certified()
    }
}

/// Inbound: a client certificate chained to the current anchors, naming
/// a pod of our trust domain.
#[derive(Debug)]
struct PeerVerifier(Arc<Credentials>);

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let current = self.0.current().ok_or(rustls::Error::General(
            "this sidecar has no certificate yet".into(),
        ))?;
        current
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        MeshIdentity::of_certificate(end_entity, &current.trust_domain).map_err(other)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_only()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_schemes()
    }
}

/// Outbound: the server's certificate chains to the current anchors and
/// names the destination pod (its UID, in the server name).
#[derive(Debug)]
struct DestinationVerifier(Arc<Credentials>);

impl ServerCertVerifier for DestinationVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.0.current().ok_or(rustls::Error::General(
            "this sidecar has no certificate yet".into(),
        ))?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &current.anchors,
            intermediates,
            now,
            self.0.provider.signature_verification_algorithms.all,
        )?;
        let identity =
            MeshIdentity::of_certificate(end_entity, &current.trust_domain).map_err(other)?;
        let expected = expected_uid(server_name).unwrap_or_default();
        if identity.uid != expected {
            return Err(other(WrongPeer {
                found: identity.uid,
                expected: expected.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_only()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_schemes()
    }
}

// === impl Credentials: handshake signatures (both verifiers) ===

impl Credentials {
    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn signature_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The mesh speaks TLS 1.3 alone.
fn tls13_only() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

fn other(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

// === impl TlsFailure ===

impl TlsFailure {
    /// The reason a handshake failed with `error` (an I/O error from
    /// tokio-rustls, which wraps rustls's).
    pub fn of(error: &std::io::Error) -> Self {
        let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return TlsFailure::Other;
        };
        match tls {
            rustls::Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    TlsFailure::UnknownIssuer
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                CertificateError::Other(OtherError(inner)) => {
                    if let Some(identity) = inner.downcast_ref::<IdentityError>() {
                        match identity {
                            IdentityError::WrongTrustDomain { .. } => TlsFailure::WrongTrustDomain,
                            _ => TlsFailure::NoIdentity,
                        }
                    } else if inner.downcast_ref::<WrongPeer>().is_some() {
                        TlsFailure::IdentityMismatch
                    } else {
                        TlsFailure::Other
                    }
                }
                _ => TlsFailure::Other,
            },
            rustls::Error::General(message) if message.contains("no certificate yet") => {
                TlsFailure::NotCertified
            }
            _ => TlsFailure::Other,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NoCertificate => "no-client-certificate",
            TlsFailure::UnknownIssuer => "unknown-issuer",
            TlsFailure::Expired => "expired",
            TlsFailure::WrongTrustDomain => "wrong-trust-domain",
            TlsFailure::IdentityMismatch => "identity-mismatch",
            TlsFailure::NoIdentity => "no-identity",
            TlsFailure::NotCertified => "not-certified",
            TlsFailure::Other => "other",
        }
    }
}
