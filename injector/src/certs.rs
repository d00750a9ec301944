//! The webhook's certificate authority and serving certificate.
//!
//! Pure apart from key generation (randomness): [`generate`] makes a CA and a
//! serving certificate signed by it, as PEM. Called by `app.rs` in
//! self-signed mode and by `bootstrap.rs` when the shared Secret is absent.

#![warn(missing_docs)]

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

/// The Service the API server calls, in the namespace the manifests install.
pub const SERVICE_DNS_NAME: &str = "picket-injector.picket-system.svc";
/// How long the CA and the serving certificate are valid.
pub const VALIDITY_DAYS: i64 = 3650;

/// A CA and a serving certificate it signed, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertBundle {
    /// The CA certificate (the webhook configuration's `caBundle`).
    pub ca_cert_pem: String,
    /// The CA's private key (kept to sign new serving certificates).
    pub ca_key_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

/// A certificate that could not be made.
#[derive(Debug, Error)]
#[error("cannot generate certificate: {0}")]
pub struct CertError(#[from] rcgen::Error);

// === impl CertBundle ===

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys.
        f.debug_struct("CertBundle")
            .field("ca_cert_pem", &self.ca_cert_pem.len())
            .field("cert_pem", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// The DNS names of the injector's Service in `namespace`, plus `extra`
/// (names or IP addresses, for tests and custom Services).
pub fn service_names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ];
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Checks that `pem` is a CA bundle for sidecars: at least one certificate, each
/// well formed, and no other PEM section (it is copied into every injected pod
/// spec, where a private key must never go).
pub fn check_ca_pem(pem: &str) -> Result<(), String> {
    if let Some(other) = pem
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("-----BEGIN ") && *line != "-----BEGIN CERTIFICATE-----")
    {
        return Err(format!("holds {other:?}: only certificates may be given"));
    }
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}

/// Generates a new CA and a serving certificate for `names` (the first is the common name).
pub fn generate(names: &[String], now: SystemTime) -> Result<CertBundle, CertError> {
    let (from, to) = validity(now);
    let not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    let not_after = rcgen::date_time_ymd(to.0, to.1, to.2);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "picket-injector-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();

    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    Ok(CertBundle {
        ca_cert_pem,
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates the mesh's CA for picket-control (mTLS between sidecars): a
/// root, the trust anchor (`ca_cert_pem`, `ca_key_pem`), and an issuer
/// under it that signs workload certificates (`cert_pem`, `key_pem`). An
/// issuer can be replaced under the same root without sidecars noticing.
pub fn generate_mesh_ca(now: SystemTime) -> Result<CertBundle, CertError> {
    let (from, to) = validity(now);
    let not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    let not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let ca_params =
        |name: &str, constraint: BasicConstraints| -> Result<CertificateParams, CertError> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(constraint);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = not_before;
            params.not_after = not_after;
            Ok(params)
        };
    let root_params = ca_params("picket-mesh-root", BasicConstraints::Constrained(1))?;
    let root_key = KeyPair::generate()?;
    let root = root_params.self_signed(&root_key)?;
    let ca_cert_pem = root.pem();
    let ca_key_pem = root_key.serialize_pem();
    let issuer_key = KeyPair::generate()?;
    let issuer = ca_params("picket-mesh-issuer", BasicConstraints::Constrained(0))?
        .signed_by(&issuer_key, &Issuer::new(root_params, root_key))?;
    Ok(CertBundle {
        ca_cert_pem,
        ca_key_pem,
        cert_pem: issuer.pem(),
        key_pem: issuer_key.serialize_pem(),
    })
}

/// From a day ago (clock skew between nodes) to [`VALIDITY_DAYS`] from now.
fn validity(now: SystemTime) -> ((i32, u8, u8), (i32, u8, u8)) {
    let days = now
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    (date(days - 1), date(days + VALIDITY_DAYS))
}

fn date(days_since_epoch: i64) -> (i32, u8, u8) {
    let (y, m, d) = civil_from_days(days_since_epoch);
    // Month and day are 1..=12 and 1..=31; years fit i32 for any real clock.
    (y as i32, m as u8, d as u8)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn bundle_has_ca_and_serving_certificate() {
        let names = service_names("picket-injector", "picket-system", &["127.0.0.1".into()]);
        assert_eq!(names[0], SERVICE_DNS_NAME);
        let bundle = generate(&names, SystemTime::now()).unwrap();
        assert!(bundle
            .ca_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
        assert_ne!(bundle.ca_cert_pem, bundle.cert_pem);
        assert!(!format!("{bundle:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_ca_bundle_holds_certificates_and_nothing_else() {
        let one = generate(&["a.example".into()], SystemTime::now()).unwrap();
        let two = generate(&["b.example".into()], SystemTime::now()).unwrap();
        assert_eq!(check_ca_pem(&one.ca_cert_pem), Ok(()));
        let both = format!("{}{}", one.ca_cert_pem, two.ca_cert_pem);
        assert_eq!(check_ca_pem(&both), Ok(()));
        let with_key = format!("{}{}", one.ca_cert_pem, one.ca_key_pem);
        let err = check_ca_pem(&with_key).unwrap_err();
        assert!(err.contains("PRIVATE KEY"), "{err}");
        assert!(check_ca_pem("").unwrap_err().contains("no PEM certificate"));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(check_ca_pem(broken).unwrap_err().contains("invalid PEM"));
    }
}
