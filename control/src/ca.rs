//! The mesh's certificate authority: signs a sidecar's key into a
//! short-lived certificate naming its pod.
//!
//! The identity is the caller's, never the CSR's: the CSR gives only its
//! public key (its self-signature proves the caller holds the private key),
//! and every other field is built here, as Istio's CA does:
//!
//! - one URI SAN, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` (the SPIFFE
//!   X.509-SVID form), which SPIFFE verifiers read;
//! - subject `O=<trust-domain>, CN=<pod UID>`, which Picket reads to bind
//!   a connection to one pod;
//! - clientAuth and serverAuth, digitalSignature, not a CA;
//! - valid from a minute ago (clock skew) for the configured lifetime,
//!   never past the issuer's own notAfter.
//!
//! Pure but for randomness (serial numbers): the caller authenticates, this
//! signs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::auth::PodIdentity;

/// How far back a certificate's validity starts (clock skew between nodes).
const BACKDATE: Duration = Duration::from_secs(60);

/// The trust domain when none is configured (Istio's and SPIFFE's usual one).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The CA: the issuer's key and chain, and the anchors sidecars trust.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The issuer's certificate and any intermediates above it (DER), sent
    /// after every leaf; trust anchors are not repeated.
    chain: Vec<CertificateDer<'static>>,
    /// The roots peers' certificates must chain to.
    anchors: Vec<CertificateDer<'static>>,
    /// The issuer certificate's notAfter: no leaf outlives it.
    issuer_not_after: i64,
    lifetime: Duration,
}

/// A certificate issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf, then the issuer's chain (DER).
    pub chain: Vec<CertificateDer<'static>>,
    /// Its validity, Unix seconds.
    pub not_before: i64,
    /// Its end, Unix seconds.
    pub not_after: i64,
}

/// Why the CA cannot be loaded, or a CSR signed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The issuer or anchor files are unusable.
    #[error("{what}: {reason}")]
    Config {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The CSR does not parse, or its signature does not verify.
    #[error("invalid CSR: {0}")]
    Csr(String),
    /// The caller's identity does not fit a SPIFFE ID.
    #[error("identity {0:?} cannot be named in a SPIFFE ID")]
    Identity(String),
    /// The issuer has expired.
    #[error("the issuer certificate has expired (notAfter {0}): rotate it")]
    IssuerExpired(i64),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

// === impl Ca ===

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("chain", &self.chain.len())
            .field("anchors", &self.anchors.len())
            .field("issuer_not_after", &self.issuer_not_after)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A CA from PEM: the issuer's certificate (first) and any intermediates
    /// above it, its key, and the trust anchors (one root, or two during a
    /// rotation; the issuer itself when it is a self-signed root).
    pub fn from_pem(
        issuer_pem: &[u8],
        key_pem: &[u8],
        anchors_pem: &[u8],
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<Self, CaError> {
        let config = |what, reason: String| CaError::Config { what, reason };
        check_trust_domain(trust_domain).map_err(|r| config("trust domain", r))?;
        let issuer_certs = certificates(issuer_pem).map_err(|r| config("issuer certificate", r))?;
        let anchors = certificates(anchors_pem).map_err(|r| config("trust anchors", r))?;
        let key_pem = std::str::from_utf8(key_pem)
            .map_err(|_| config("issuer key", "not UTF-8 PEM".into()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| config("issuer key", e.to_string()))?;
        let issuer_der = issuer_certs[0].clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&issuer_der)
            .map_err(|e| config("issuer certificate", e.to_string()))?;
        if *parsed.public_key().subject_public_key.data != *key.public_key_raw() {
            return Err(config(
                "issuer key",
                "does not match the issuer certificate's public key".into(),
            ));
        }
        if !parsed.is_ca() {
            return Err(config(
                "issuer certificate",
                "is not a CA (basicConstraints cA is not set)".into(),
            ));
        }
        let issuer_not_after = parsed.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key)
            .map_err(|e| config("issuer certificate", e.to_string()))?;
        let chain = issuer_certs
            .into_iter()
            .filter(|c| !anchors.contains(c))
            .collect();
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            issuer,
            chain,
            anchors,
            issuer_not_after,
            lifetime,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// How long the certificates it issues are valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The trust anchors (DER).
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// Signs the key of `csr` (DER) into a certificate for `caller`, at `now`.
    pub fn issue(
        &self,
        csr: &[u8],
        caller: &PodIdentity,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr.to_vec()),
        )
        .map_err(|e| CaError::Csr(e.to_string()))?;
        let now = unix(now);
        if now >= self.issuer_not_after {
            return Err(CaError::IssuerExpired(self.issuer_not_after));
        }
        let not_before = now - BACKDATE.as_secs() as i64;
        let not_after = (now + self.lifetime.as_secs() as i64).min(self.issuer_not_after);

        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id(&self.trust_domain, caller)
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Identity(e.to_string()))?,
        )];
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, self.trust_domain.as_str());
        name.push(DnType::CommonName, caller.uid.as_str());
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = time(not_before)?;
        params.not_after = time(not_after)?;
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(Issued {
            chain,
            not_before,
            not_after,
        })
    }
}

/// The SPIFFE ID of a pod's service account.
pub fn spiffe_id(trust_domain: &str, caller: &PodIdentity) -> String {
    format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        caller.namespace, caller.service_account
    )
}

/// A trust domain is a DNS-like name: lowercase letters, digits, `.`, `-`, `_`.
fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty()
        || !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(format!(
            "{td:?} is not a trust domain (lowercase letters, digits, '.', '-', '_')"
        ));
    }
    Ok(())
}

/// Every certificate in a PEM input; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// A random, positive 128-bit serial number.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn unix(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn time(unix: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| CaError::Sign(format!("time {unix}: {e}")))
}

#[cfg(test)]
mod tests;
