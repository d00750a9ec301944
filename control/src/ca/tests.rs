use std::time::{Duration, SystemTime};

use picket_test_support::certs::TestCa;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn caller() -> PodIdentity {
    PodIdentity {
        namespace: "shop".into(),
        name: "api-0".into(),
        uid: "0c5e7c8a-1111-4222-8333-944455556666".into(),
        service_account: "api".into(),
    }
}

fn ca_of(root: &TestCa) -> Ca {
    Ca::from_pem(
        root.cert_pem.as_bytes(),
        root.key_pem.as_bytes(),
        root.cert_pem.as_bytes(),
        "cluster.local",
        DAY,
    )
    .unwrap()
}

/// A CSR from a new key, asking for `san` and common name `cn`.
fn csr(san: &str, cn: &str) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    params.distinguished_name = name;
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

/// The URI SANs and the subject's CN of a certificate.
fn names(der: &[u8]) -> (Vec<String>, String) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let uris = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    (uris, cn)
}

#[test]
fn the_certificate_names_the_caller_whatever_the_csr_asks() {
    let root = TestCa::root("picket-mesh-root").unwrap();
    let ca = ca_of(&root);
    let (key, request) = csr(
        "spiffe://cluster.local/ns/kube-system/sa/admin",
        "another-pods-uid",
    );
    let issued = ca.issue(&request, &caller(), SystemTime::now()).unwrap();
    let (uris, cn) = names(&issued.chain[0]);
    assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/api"]);
    assert_eq!(cn, caller().uid);
    // The key certified is the CSR's.
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    assert_eq!(
        *cert.public_key().subject_public_key.data,
        *key.public_key_raw()
    );
    assert!(!cert.is_ca());
    assert_eq!(
        issued.not_after - issued.not_before,
        DAY.as_secs() as i64 + 60
    );
}

#[test]
fn the_chain_verifies_against_the_anchors_for_clients_and_servers() {
    let root = TestCa::root("picket-mesh-root").unwrap();
    let issuer = root.issuer("picket-mesh-issuer").unwrap();
    let ca = Ca::from_pem(
        issuer.cert_pem.as_bytes(),
        issuer.key_pem.as_bytes(),
        root.cert_pem.as_bytes(),
        "cluster.local",
        DAY,
    )
    .unwrap();
    let (_, request) = csr("spiffe://x/ns/a/sa/b", "x");
    let issued = ca.issue(&request, &caller(), SystemTime::now()).unwrap();
    assert_eq!(
        issued.chain.len(),
        2,
        "the leaf and the issuer, not the root"
    );
    let mut roots = rustls::RootCertStore::empty();
    for anchor in ca.anchors() {
        roots.add(anchor.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    verifier
        .verify_client_cert(&issued.chain[0], &issued.chain[1..], UnixTime::now())
        .expect("a client certificate chained to the anchors");
    // Another root does not trust it.
    let rogue = TestCa::root("rogue").unwrap();
    let mut other = rustls::RootCertStore::empty();
    other
        .add(CertificateDer::from_pem_slice(rogue.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(other),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    assert!(verifier
        .verify_client_cert(&issued.chain[0], &issued.chain[1..], UnixTime::now())
        .is_err());
}

use std::sync::Arc;

#[test]
fn a_csr_whose_signature_does_not_verify_is_refused() {
    let ca = ca_of(&TestCa::root("root").unwrap());
    let (_, mut request) = csr("spiffe://cluster.local/ns/shop/sa/api", "x");
    // The signature is the last field: flip a bit in it.
    let last = request.len() - 1;
    request[last] ^= 0x01;
    let error = ca
        .issue(&request, &caller(), SystemTime::now())
        .unwrap_err();
    assert!(matches!(error, CaError::Csr(_)), "{error}");
    let error = ca
        .issue(b"not a csr", &caller(), SystemTime::now())
        .unwrap_err();
    assert!(matches!(error, CaError::Csr(_)), "{error}");
}

#[test]
fn no_certificate_outlives_its_issuer() {
    let root = TestCa::root_valid("short", -3600, 3600).unwrap();
    let ca = ca_of(&root);
    let (_, request) = csr("spiffe://x/ns/a/sa/b", "x");
    let now = SystemTime::now();
    let issued = ca.issue(&request, &caller(), now).unwrap();
    let issuer_end = unix(now) + 3600;
    assert!((issued.not_after - issuer_end).abs() <= 2, "{issued:?}");
    let error = ca
        .issue(&request, &caller(), now + Duration::from_secs(7200))
        .unwrap_err();
    assert!(matches!(error, CaError::IssuerExpired(_)), "{error}");
}

#[test]
fn a_ca_that_cannot_sign_is_refused_at_load() {
    let root = TestCa::root("root").unwrap();
    let other = TestCa::root("other").unwrap();
    let load = |cert: &str, key: &str, td: &str| {
        Ca::from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            root.cert_pem.as_bytes(),
            td,
            DAY,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    assert!(
        load(&root.cert_pem, &other.key_pem, "cluster.local").contains("does not match"),
        "a key that is not the issuer's"
    );
    assert!(load(&root.cert_pem, &root.key_pem, "Cluster Local").contains("trust domain"));
    assert!(load("", &root.key_pem, "cluster.local").contains("issuer certificate"));
    // A leaf is no issuer.
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&leaf_key)
        .unwrap();
    assert!(load(&leaf.pem(), &leaf_key.serialize_pem(), "cluster.local").contains("not a CA"));
}

#[test]
fn the_mesh_ca_the_injector_bootstraps_issues_certificates_that_verify() {
    let bundle = picket_injector::certs::generate_mesh_ca(SystemTime::now()).unwrap();
    let ca = Ca::from_pem(
        bundle.cert_pem.as_bytes(),
        bundle.key_pem.as_bytes(),
        bundle.ca_cert_pem.as_bytes(),
        DEFAULT_TRUST_DOMAIN,
        DAY,
    )
    .unwrap();
    let (_, request) = csr("spiffe://x/ns/a/sa/b", "x");
    let issued = ca.issue(&request, &caller(), SystemTime::now()).unwrap();
    assert_eq!(issued.chain.len(), 2, "the leaf and the issuer");
    let mut roots = rustls::RootCertStore::empty();
    for anchor in ca.anchors() {
        roots.add(anchor.clone()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(&issued.chain[0], &issued.chain[1..], UnixTime::now())
        .expect("the leaf chains through the issuer to the root");
}
