//! Certificates for the test API server: a fresh CA per server and a serving certificate
//! signed by it, with the IP addresses and host names the server is reached at.
//!
//! No I/O beyond key generation. Called once by [`super::ApiServerBuilder::start`].

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Names every real API server certificate carries, so in-cluster style clients verify too.
const SERVICE_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Why certificates or the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the parameters (for example an invalid DNS name).
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("building the TLS server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A CA and the server certificate it signed.
#[derive(Debug)]
pub(crate) struct Certs {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl Certs {
    /// Generates a CA and a serving certificate for `ips` and `hosts` (plus `localhost`,
    /// `127.0.0.1` and the `kubernetes.default.svc` names).
    pub(crate) fn generate(ips: &[IpAddr], hosts: &[String]) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = name("picket-test-apiserver-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut sans: Vec<SanType> = Vec::new();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        for ip in ips.iter().chain([&loopback]) {
            if !ip.is_unspecified() && !sans.contains(&SanType::IpAddress(*ip)) {
                sans.push(SanType::IpAddress(*ip));
            }
        }
        for host in hosts.iter().map(String::as_str).chain(SERVICE_NAMES) {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.to_string().try_into()?),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let server_key = KeyPair::generate()?;
        let mut server_params = CertificateParams::new(Vec::<String>::new())?;
        server_params.subject_alt_names = sans;
        server_params.distinguished_name = name("kube-apiserver");
        server_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> =
            vec![server_cert.der().clone(), ca_cert.der().clone()];
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // kube speaks HTTP/1.1 to the API server; offering only it keeps ALPN honest.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_config: Arc::new(config),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}
