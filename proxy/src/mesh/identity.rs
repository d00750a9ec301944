//! Who a mesh certificate names: the SPIFFE ID's trust domain, namespace
//! and service account (its one URI SAN), and the pod's UID (its subject's
//! common name, which the control plane's CA takes from the token).
//!
//! Pure: parsing and the server names that carry an expected identity.

use std::fmt;

use rustls::pki_types::{DnsName, ServerName};
use x509_parser::extensions::GeneralName;

/// The suffix of the server names an outbound handshake expects: the UID
/// of the destination pod, then this (never sent: SNI is off).
const SERVER_NAME_SUFFIX: &str = ".picket.invalid";

/// The pod a mesh certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeshIdentity {
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// The pod's namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its UID.
    pub uid: String,
}

/// Why a certificate names no mesh identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not DER X.509.
    #[error("not an X.509 certificate")]
    Unparsable,
    /// Not exactly one URI SAN of the form `spiffe://td/ns/NS/sa/SA`.
    #[error("no SPIFFE ID of the form spiffe://<trust-domain>/ns/<ns>/sa/<sa>: {0}")]
    NoSpiffeId(String),
    /// Another trust domain's identity.
    #[error("trust domain {found:?}, not {expected:?}")]
    WrongTrustDomain {
        /// The certificate's.
        found: String,
        /// Ours.
        expected: String,
    },
    /// No pod UID in the subject's common name.
    #[error("no pod UID in the subject's common name")]
    NoUid,
}

// === impl MeshIdentity ===

impl MeshIdentity {
    /// Reads the identity of a certificate (DER) of trust domain `trust_domain`.
    pub fn of_certificate(der: &[u8], trust_domain: &str) -> Result<Self, IdentityError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparsable)?;
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::Unparsable)?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [uri] = uris.as_slice() else {
            return Err(IdentityError::NoSpiffeId(format!(
                "{} URI SANs",
                uris.len()
            )));
        };
        let (found_domain, namespace, service_account) =
            parse_spiffe_id(uri).ok_or_else(|| IdentityError::NoSpiffeId((*uri).to_string()))?;
        if found_domain != trust_domain {
            return Err(IdentityError::WrongTrustDomain {
                found: found_domain.to_string(),
                expected: trust_domain.to_string(),
            });
        }
        let uid = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|uid| !uid.is_empty())
            .ok_or(IdentityError::NoUid)?;
        Ok(Self {
            trust_domain: found_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            uid: uid.to_string(),
        })
    }
}

impl fmt::Display for MeshIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{} (pod UID {})",
            self.trust_domain, self.namespace, self.service_account, self.uid
        )
    }
}

/// `spiffe://td/ns/NS/sa/SA` → (td, NS, SA).
fn parse_spiffe_id(uri: &str) -> Option<(&str, &str, &str)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    let (td, ns_key, ns, sa_key, sa) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let fine = |s: &str| !s.is_empty();
    (parts.next().is_none() && ns_key == "ns" && sa_key == "sa" && fine(td) && fine(ns) && fine(sa))
        .then_some((td, ns, sa))
}

/// The server name an outbound handshake to the pod of UID `uid` verifies
/// against: the certificate must name that UID. `None`: the UID is no DNS
/// label (Kubernetes UIDs are UUIDs, which are).
pub fn server_name_for(uid: &str) -> Option<ServerName<'static>> {
    let label_ok = !uid.is_empty()
        && uid.len() <= 63
        && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !uid.starts_with('-')
        && !uid.ends_with('-');
    if !label_ok {
        return None;
    }
    let name =
        DnsName::try_from(format!("{}{SERVER_NAME_SUFFIX}", uid.to_ascii_lowercase())).ok()?;
    Some(ServerName::DnsName(name))
}

/// The UID an outbound handshake's server name expects (see [`server_name_for`]).
pub fn expected_uid<'a>(name: &'a ServerName<'_>) -> Option<&'a str> {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().strip_suffix(SERVER_NAME_SUFFIX),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_has_exactly_its_five_parts() {
        assert_eq!(
            parse_spiffe_id("spiffe://cluster.local/ns/shop/sa/api"),
            Some(("cluster.local", "shop", "api"))
        );
        for bad in [
            "spiffe://cluster.local/ns/shop/sa/api/extra",
            "spiffe://cluster.local/sa/api/ns/shop",
            "spiffe://cluster.local/ns//sa/api",
            "https://cluster.local/ns/shop/sa/api",
            "spiffe://cluster.local/ns/shop",
        ] {
            assert_eq!(parse_spiffe_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_server_name_carries_the_expected_uid() {
        let uid = "0c5e7c8a-1111-4222-8333-944455556666";
        let name = server_name_for(uid).unwrap();
        assert_eq!(expected_uid(&name), Some(uid));
        assert!(server_name_for("not a label").is_none());
        assert!(server_name_for("").is_none());
        let other = ServerName::try_from("example.com").unwrap();
        assert_eq!(expected_uid(&other), None);
    }
}
