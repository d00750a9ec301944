//! A throwaway CA and a serving certificate it signed, for servers under
//! test (the control plane) and the clients that verify them.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// PEM-encoded: the CA's certificate, the serving certificate, its key.
#[derive(Clone, Debug)]
pub struct TestCerts {
    /// The CA certificate clients trust.
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A new CA and a certificate it signed for `names` (DNS names).
pub fn serving_certificate(names: &[&str]) -> Result<TestCerts, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
    Ok(TestCerts {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A CA for the mesh's identities under test: a root, or an issuer under one.
#[derive(Clone, Debug)]
pub struct TestCa {
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed root named `name`, valid from a day ago for ten years.
    pub fn root(name: &str) -> Result<Self, rcgen::Error> {
        Self::root_valid(name, -86_400, 10 * 365 * 86_400)
    }

    /// A new self-signed root valid from `from` to `to` seconds from now.
    pub fn root_valid(name: &str, from: i64, to: i64) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = ca_params(name, from, to)?.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A new intermediate CA named `name` signed by this one, valid from a
    /// day ago for a year.
    pub fn issuer(&self, name: &str) -> Result<Self, rcgen::Error> {
        let own = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, own)?;
        let key = KeyPair::generate()?;
        let cert = ca_params(name, -86_400, 365 * 86_400)?.signed_by(&key, &issuer)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_params(name: &str, from: i64, to: i64) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    params.not_before = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::Duration::from_secs((now + from).max(0) as u64);
    params.not_after =
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs((now + to).max(0) as u64);
    Ok(params)
}
