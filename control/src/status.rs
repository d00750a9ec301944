//! What `/status` says: this replica, its serving certificate, and each
//! sidecar connected to it with its view lag.
//!
//! A sidecar's view lag is how long the oldest change of its view not yet
//! acknowledged has waited for the sidecar to apply it: from the moment the
//! replica began to send it (a sidecar that stops reading lags from then,
//! not from when its send completes). Each acknowledgement retires the
//! changes up to its generation, so steady churn with prompt acks shows a
//! small lag, not one growing since the last full catch-up. Zero when it
//! has applied everything.
//!
//! `/status` names pods: it is answered only over loopback, which is where a
//! port-forward arrives (`picket status` reads it that way, with the
//! caller's `pods/portforward` permission); the pod network gets a refusal.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The sidecars connected to this replica.
#[derive(Debug, Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    by_id: BTreeMap<u64, Connection>,
}

#[derive(Debug)]
struct Connection {
    pod: String,
    uid: String,
    since: Instant,
    sent: u64,
    acked: u64,
    /// The generations sent and not yet acknowledged, oldest first, with
    /// when each began to be sent (the replica does not wait for an ack
    /// before the next send, so several may wait).
    pending: VecDeque<(u64, Instant)>,
}

/// The most unacknowledged sends remembered per sidecar; beyond, the
/// oldest stays and lag is counted from it (never less than the truth).
const MAX_PENDING: usize = 256;

/// One connection's place in [`Connections`]; removed on drop.
#[derive(Debug)]
pub struct Registration {
    connections: Arc<Connections>,
    id: u64,
}

/// `/status`: this replica and its sidecars.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The replica's pod name.
    pub instance: String,
    /// Whether it has synced with the cluster.
    pub synced: bool,
    /// The cluster state's generation it serves.
    pub generation: u64,
    /// The certificate sidecars verify when they connect.
    pub serving_certificate: Option<CertificateStatus>,
    /// The connected sidecars, by pod.
    pub sidecars: Vec<SidecarStatus>,
}

/// A certificate's validity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertificateStatus {
    /// Its notAfter, in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// Seconds left until then (negative: expired).
    pub expires_in_seconds: i64,
}

/// One connected sidecar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SidecarStatus {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// How long the stream has been open.
    pub connected_seconds: f64,
    /// The generation of the last view change sent.
    pub sent_generation: u64,
    /// The newest generation the sidecar acknowledged.
    pub acked_generation: u64,
    /// How long a sent change has waited for its acknowledgement (0: none waits).
    pub lag_seconds: f64,
}

// === impl Connections ===

impl Connections {
    /// Registers a sidecar's stream.
    pub fn register(self: &Arc<Self>, pod: String, uid: String) -> Registration {
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.by_id.insert(
            id,
            Connection {
                pod,
                uid,
                since: Instant::now(),
                sent: 0,
                acked: 0,
                pending: VecDeque::new(),
            },
        );
        Registration {
            connections: self.clone(),
            id,
        }
    }

    /// Each connected sidecar as of `now`, by pod.
    pub fn sidecars(&self, now: Instant) -> Vec<SidecarStatus> {
        let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
        let mut out: Vec<SidecarStatus> = self
            .lock()
            .by_id
            .values()
            .map(|c| SidecarStatus {
                pod: c.pod.clone(),
                uid: c.uid.clone(),
                connected_seconds: secs(now.saturating_duration_since(c.since)),
                sent_generation: c.sent,
                acked_generation: c.acked,
                lag_seconds: c
                    .pending
                    .front()
                    .map_or(0.0, |(_, t)| secs(now.saturating_duration_since(*t))),
            })
            .collect();
        out.sort_by(|a, b| a.pod.cmp(&b.pod).then(a.uid.cmp(&b.uid)));
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with(&self, id: u64, f: impl FnOnce(&mut Connection)) {
        if let Some(c) = self.lock().by_id.get_mut(&id) {
            f(c);
        }
    }
}

// === impl Registration ===

impl Registration {
    /// A change of generation `generation` begins to be sent.
    pub fn sending(&self, generation: u64) {
        self.connections.with(self.id, |c| {
            let newer = c.pending.back().is_none_or(|(g, _)| *g < generation);
            if newer && c.pending.len() < MAX_PENDING {
                c.pending.push_back((generation, Instant::now()));
            }
            c.sent = c.sent.max(generation);
        });
    }

    /// The sidecar applied everything up to `generation`.
    pub fn acked(&self, generation: u64) {
        self.connections.with(self.id, |c| {
            c.acked = c.acked.max(generation);
            while c.pending.front().is_some_and(|(g, _)| *g <= c.acked) {
                c.pending.pop_front();
            }
            if c.acked >= c.sent {
                c.pending.clear();
            }
        });
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.lock().by_id.remove(&self.id);
    }
}

// === impl CertificateStatus ===

impl CertificateStatus {
    /// The validity of the first certificate of a PEM chain, as of `now`.
    pub fn of_pem(pem: &[u8], now: SystemTime) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or("no certificate in the PEM")?
            .map_err(|e| e.to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
        let not_after = cert.validity().not_after.timestamp();
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Ok(Self {
            not_after_unix: not_after,
            expires_in_seconds: not_after.saturating_sub(now),
        })
    }
}

/// Whether a peer may read `/status`: only over loopback (a port-forward).
pub fn may_read_status(peer: SocketAddr) -> bool {
    peer.ip().is_loopback()
        || match peer.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            std::net::IpAddr::V4(_) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_first_unacknowledged_send_until_it_is_acknowledged() {
        let connections = Arc::new(Connections::default());
        let api = connections.register("shop/api".into(), "u1".into());
        let start = Instant::now();
        assert_eq!(connections.sidecars(start)[0].lag_seconds, 0.0);
        api.sending(5);
        api.sending(7);
        let later = Instant::now() + Duration::from_secs(3);
        let lagging = &connections.sidecars(later)[0];
        assert_eq!(lagging.sent_generation, 7);
        assert!(lagging.lag_seconds >= 3.0, "{lagging:?}");
        api.acked(5);
        assert!(
            connections.sidecars(later)[0].lag_seconds >= 3.0,
            "7 still waits"
        );
        api.acked(7);
        let applied = &connections.sidecars(later)[0];
        assert_eq!((applied.acked_generation, applied.lag_seconds), (7, 0.0));
        drop(api);
        assert!(connections.sidecars(later).is_empty(), "gone on drop");
    }

    #[test]
    fn under_steady_churn_lag_is_the_oldest_unacknowledged_change_s_age() {
        let connections = Arc::new(Connections::default());
        let api = connections.register("shop/api".into(), "u1".into());
        // Every ack arrives after the next send: something always waits.
        api.sending(1);
        std::thread::sleep(Duration::from_millis(30));
        api.sending(2);
        let at_second_send = Instant::now();
        api.acked(1);
        api.sending(3);
        api.acked(2);
        let lag = connections.sidecars(Instant::now())[0].lag_seconds;
        let since_third = Instant::now().saturating_duration_since(at_second_send);
        assert!(
            lag <= since_third.as_secs_f64() + 0.001,
            "lag {lag} counts from generation 3's send, not from 1's"
        );
        api.acked(3);
        assert_eq!(connections.sidecars(Instant::now())[0].lag_seconds, 0.0);
    }

    #[test]
    fn sidecars_are_listed_by_pod() {
        let connections = Arc::new(Connections::default());
        let _b = connections.register("shop/web".into(), "u2".into());
        let _a = connections.register("shop/api".into(), "u1".into());
        let pods: Vec<String> = connections
            .sidecars(Instant::now())
            .into_iter()
            .map(|s| s.pod)
            .collect();
        assert_eq!(pods, ["shop/api", "shop/web"]);
    }

    #[test]
    fn the_certificate_s_not_after_is_read_from_its_pem() {
        let certs = picket_test_support::certs::serving_certificate(&["picket-control"]).unwrap();
        // rcgen's default notAfter: 4096-01-01T00:00:00Z.
        let now = UNIX_EPOCH + Duration::from_secs(67_090_118_400 - 3600);
        let status = CertificateStatus::of_pem(certs.cert_pem.as_bytes(), now).unwrap();
        assert_eq!(
            status,
            CertificateStatus {
                not_after_unix: 67_090_118_400,
                expires_in_seconds: 3600,
            }
        );
        assert!(CertificateStatus::of_pem(b"not a certificate", now).is_err());
    }

    #[test]
    fn status_is_for_loopback_only() {
        assert!(may_read_status("127.0.0.1:1".parse().unwrap()));
        assert!(may_read_status("[::1]:1".parse().unwrap()));
        assert!(may_read_status("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!may_read_status("10.0.0.5:1".parse().unwrap()));
        assert!(!may_read_status("[fd00::5]:1".parse().unwrap()));
    }
}
