//! What mTLS changes in a decision: who the peer is may now be proved.
//!
//! - **Identity-bound peer**: a connection that presented a mesh
//!   certificate comes from the pod the certificate names, and that pod
//!   must own the source address: the pod the decision took as the source
//!   must have the certificate's UID, namespace and service account. A
//!   source address the state holds no pod for is decided as an address
//!   (only ipBlock rules can allow it), as any non-member peer is.
//! - **Plaintext from a pod that originates mTLS** (permissive and strict):
//!   its sidecar would have used mTLS, so the address is forged (or the
//!   pod misconfigured): refused.
//! - **Strict**: plaintext only from the node (probes), loopback, and
//!   addresses outside the pod network (which only ipBlock rules allow).
//!
//! Identity never adds an allowance: these checks run on an allowed
//! decision and can only refuse it. Pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picket_policy::{Decision, MtlsMode, PolicyIndex, Reason};
use picket_state::control::MeshedPod;

use crate::mesh::MeshIdentity;

/// How an inbound connection's peer authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Plaintext (or the app's own TLS): the peer is its source address.
    #[default]
    Plaintext,
    /// A sidecar's mTLS: the peer is the pod its certificate names.
    Mtls(Arc<MeshIdentity>),
}

/// Why mTLS refuses a connection its policies allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshRefusal {
    /// The certificate names another pod than the source address's owner.
    IdentityMismatch {
        /// The pod the state says owns the source address.
        ip_owner: String,
        /// What about it differs.
        why: &'static str,
    },
    /// Plaintext from the address of a pod that originates mTLS.
    PlaintextFromMeshed(String),
    /// Plaintext from the pod network to a strict pod.
    PlaintextInStrict,
}

// === impl MeshRefusal ===

impl MeshRefusal {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            MeshRefusal::IdentityMismatch { .. } => "identity-mismatch",
            MeshRefusal::PlaintextFromMeshed(_) => "plaintext-from-meshed",
            MeshRefusal::PlaintextInStrict => "plaintext-in-strict",
        }
    }
}

/// The control plane's answers about addresses the view does not hold
/// (is the pod there meshed, and who is it), kept for [`Answers::TTL`]: a
/// new connection to such a pod does not wait for the control plane each
/// time. A stale answer fails safe: mTLS to a pod that no longer
/// terminates it fails, and plaintext to one that now does is refused by it.
#[derive(Debug, Default)]
pub struct Answers {
    answers: Mutex<HashMap<IpAddr, (Option<MeshedPod>, Instant)>>,
}

// === impl Answers ===

impl Answers {
    /// How long an answer is kept.
    pub const TTL: Duration = Duration::from_secs(30);
    /// The most answers kept; beyond, all are dropped.
    const MAX: usize = 4096;

    /// The answer about `ip`, if a fresh one is kept.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Option<Option<MeshedPod>> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .get(&ip)
            .filter(|(_, at)| now.duration_since(*at) < Self::TTL)
            .map(|(answer, _)| answer.clone())
    }

    /// Keeps the answer about `ip`.
    pub fn put(&self, ip: IpAddr, answer: Option<MeshedPod>, now: Instant) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= Self::MAX {
            answers.clear();
        }
        answers.insert(ip, (answer, now));
    }
}

/// Checks an allowed inbound decision against how its peer came: `mode` is
/// this pod's, `in_pod_network` whether the source address is in the pod
/// network.
pub fn check_inbound(
    index: &PolicyIndex,
    mode: MtlsMode,
    transport: &Transport,
    decision: &Decision,
    in_pod_network: bool,
) -> Result<(), MeshRefusal> {
    let source = decision.source.as_ref().and_then(|key| index.pod(key));
    match transport {
        Transport::Mtls(identity) => {
            let Some(owner) = source else {
                return Ok(());
            };
            let why = if *owner.uid != *identity.uid {
                Some("pod UID")
            } else if *owner.key.namespace != *identity.namespace {
                Some("namespace")
            } else if *owner.service_account != *identity.service_account {
                Some("service account")
            } else {
                None
            };
            match why {
                None => Ok(()),
                Some(why) => Err(MeshRefusal::IdentityMismatch {
                    ip_owner: owner.key.to_string(),
                    why,
                }),
            }
        }
        Transport::Plaintext => match mode {
            MtlsMode::Off => Ok(()),
            _ if matches!(decision.reason, Reason::Node | Reason::SamePod) => Ok(()),
            MtlsMode::Strict if source.is_some() || in_pod_network => {
                Err(MeshRefusal::PlaintextInStrict)
            }
            _ => match source {
                Some(pod) if pod.originates_mtls() => {
                    Err(MeshRefusal::PlaintextFromMeshed(pod.key.to_string()))
                }
                _ => Ok(()),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use picket_policy::{NodeAddrs, ObjectKey, Protocol};
    use picket_state::{Kind, StateWriter};

    use super::*;

    /// api (10.0.0.1, strict) and client (10.0.0.2, meshed or not), no policy.
    fn cluster(client_meshed: bool) -> PolicyIndex {
        let client_mtls = if client_meshed { "permissive" } else { "off" };
        let yaml = format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: api, namespace: shop, uid: uid-api, labels: {{app: api}}, annotations: {{picket.io/mtls: strict}}}}
spec: {{containers: [{{name: app}}, {{name: picket-proxy}}]}}
status: {{podIP: 10.0.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: shop, uid: uid-client, labels: {{app: client}}, annotations: {{picket.io/mtls: {client_mtls}}}}}
spec: {{serviceAccountName: client, containers: [{{name: app}}, {{name: picket-proxy}}]}}
status: {{podIP: 10.0.0.2}}
"#
        );
        let parsed =
            picket_state::files::parse_manifest(std::path::Path::new("t.yaml"), &yaml).unwrap();
        let (mut writer, snapshots) = StateWriter::new();
        for kind in Kind::ALL {
            writer.replace_all(kind, parsed.objects(kind));
        }
        assert!(writer.commit_if_complete());
        let snapshot = snapshots.borrow().clone().unwrap();
        snapshot.index.clone()
    }

    fn decide(index: &PolicyIndex, from: &str) -> Decision {
        let from: IpAddr = from.parse().unwrap();
        index.decide_from_ip(
            from,
            &ObjectKey::new("shop", "api"),
            "10.0.0.1".parse().unwrap(),
            80,
            Protocol::Tcp,
            &NodeAddrs::default(),
        )
    }

    fn identity(uid: &str, ns: &str, sa: &str) -> Transport {
        Transport::Mtls(Arc::new(MeshIdentity {
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: sa.into(),
            uid: uid.into(),
        }))
    }

    #[test]
    fn a_certificate_must_name_the_pod_that_owns_the_source_address() {
        let index = cluster(true);
        let decision = decide(&index, "10.0.0.2");
        let check = |t: &Transport| check_inbound(&index, MtlsMode::Strict, t, &decision, true);
        assert_eq!(check(&identity("uid-client", "shop", "client")), Ok(()));
        for (t, why) in [
            (identity("uid-other", "shop", "client"), "pod UID"),
            (identity("uid-client", "prod", "client"), "namespace"),
            (identity("uid-client", "shop", "admin"), "service account"),
        ] {
            assert_eq!(
                check(&t),
                Err(MeshRefusal::IdentityMismatch {
                    ip_owner: "shop/client".into(),
                    why
                })
            );
        }
        // From an address no pod holds: decided as an address.
        let decision = decide(&index, "10.0.9.9");
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Strict,
                &identity("uid-x", "shop", "x"),
                &decision,
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn plaintext_from_a_pod_that_originates_mtls_is_a_forgery() {
        let index = cluster(true);
        let decision = decide(&index, "10.0.0.2");
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Permissive,
                &Transport::Plaintext,
                &decision,
                true
            ),
            Err(MeshRefusal::PlaintextFromMeshed("shop/client".into()))
        );
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Off,
                &Transport::Plaintext,
                &decision,
                true
            ),
            Ok(()),
            "mTLS off: the same plaintext is allowed"
        );
        // A pod without a sidecar may speak plaintext to a permissive pod.
        let index = cluster(false);
        let decision = decide(&index, "10.0.0.2");
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Permissive,
                &Transport::Plaintext,
                &decision,
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn answers_are_kept_for_their_ttl_and_bounded() {
        let answers = Answers::default();
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(answers.get(ip, now), None);
        answers.put(ip, None, now);
        assert_eq!(
            answers.get(ip, now),
            Some(None),
            "a negative answer is kept too"
        );
        assert_eq!(answers.get(ip, now + Answers::TTL), None, "expired");
        for i in 0..Answers::MAX as u32 + 1 {
            answers.put(IpAddr::from(i.to_be_bytes()), None, now);
        }
        assert!(answers.answers.lock().unwrap().len() <= Answers::MAX);
    }

    #[test]
    fn strict_takes_plaintext_only_from_outside_the_pod_network() {
        let index = cluster(false);
        let from_pod = decide(&index, "10.0.0.2");
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Strict,
                &Transport::Plaintext,
                &from_pod,
                true
            ),
            Err(MeshRefusal::PlaintextInStrict)
        );
        let unknown_in_network = decide(&index, "10.0.9.9");
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Strict,
                &Transport::Plaintext,
                &unknown_in_network,
                true
            ),
            Err(MeshRefusal::PlaintextInStrict)
        );
        let external = decide(&index, "192.0.2.7");
        assert_eq!(
            check_inbound(
                &index,
                MtlsMode::Strict,
                &Transport::Plaintext,
                &external,
                false
            ),
            Ok(())
        );
    }
}
