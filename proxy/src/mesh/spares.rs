//! Spare mTLS connections, handshaken ahead, per destination pod and port.
//!
//! A destination dialled again within [`Spares::IDLE`] of its last dial
//! gets one spare: a connection whose handshake (and the verification of
//! the server's certificate) is done in the background, waiting for the
//! next client connection to that destination, which then skips the
//! handshake. The server side admits nothing until the client sends the
//! preface (see [`super::PREFACE`]), so a spare reaches no app and is no
//! connection of any policy until it is taken.
//!
//! A spare is kept at most [`Spares::IDLE`] (the server waits somewhat
//! longer for the preface, see [`super::SPARE_WAIT`]), only for the very
//! identity it was verified against (pod UID, namespace, service account,
//! address and port), and at most [`Spares::MAX`] at once. Pure (the
//! connection type is the caller's).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use picket_state::control::MeshedPod;

/// What a spare was made for: the address dialled and the pod verified there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpareKey {
    dial: SocketAddr,
    uid: String,
    namespace: String,
    service_account: String,
}

impl SpareKey {
    /// The key of a connection to `dial`, expected to reach `pod`.
    pub fn new(dial: SocketAddr, pod: &MeshedPod) -> Self {
        Self {
            dial,
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        }
    }
}

/// The spares, and the destinations dialled lately.
#[derive(Debug)]
pub struct Spares<T> {
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    /// Ready spares, with when they were put and their id.
    ready: HashMap<SpareKey, (u64, Instant, T)>,
    /// Destinations whose spare is being made.
    making: HashMap<SpareKey, Instant>,
    /// When each destination was last dialled.
    dialled: HashMap<SpareKey, Instant>,
    next_id: u64,
}

/// What a dial finds.
#[derive(Debug)]
pub struct Taken<T> {
    /// A ready spare, if one was kept.
    pub spare: Option<T>,
    /// Whether the caller should make a spare now (and then
    /// [`Spares::put`] or [`Spares::abandon`] it).
    pub make: bool,
}

// === impl Spares ===

impl<T> Default for Spares<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                ready: HashMap::new(),
                making: HashMap::new(),
                dialled: HashMap::new(),
                next_id: 0,
            }),
        }
    }
}

impl<T> Spares<T> {
    /// How long a spare is kept, and how close two dials must be for the
    /// second to make one.
    pub const IDLE: Duration = Duration::from_secs(10);
    /// The most spares ready or being made.
    pub const MAX: usize = 256;
    /// The most destinations remembered as dialled; beyond, all are forgotten.
    const MAX_DIALLED: usize = 4096;

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A dial to `key` at `now`: takes its spare if a fresh one is ready,
    /// and says whether to make the next one.
    pub fn take(&self, key: &SpareKey, now: Instant) -> Taken<T> {
        let mut inner = self.lock();
        let spare = match inner.ready.remove(key) {
            Some((_, put, spare)) if now.duration_since(put) < Self::IDLE => Some(spare),
            _ => None,
        };
        if inner.dialled.len() >= Self::MAX_DIALLED {
            inner.dialled.clear();
        }
        let before = inner.dialled.insert(key.clone(), now);
        let again = before.is_some_and(|at| now.duration_since(at) < Self::IDLE);
        // A making that never ended (its task lost) is forgotten after IDLE.
        let making = inner
            .making
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < Self::IDLE);
        let room = inner.ready.len() + inner.making.len() < Self::MAX;
        let make = (spare.is_some() || again) && !making && room;
        if make {
            inner.making.insert(key.clone(), now);
        }
        Taken { spare, make }
    }

    /// Keeps the spare made for `key`; its id, for [`Spares::expire`].
    pub fn put(&self, key: SpareKey, spare: T, now: Instant) -> u64 {
        let mut inner = self.lock();
        inner.making.remove(&key);
        inner.next_id += 1;
        let id = inner.next_id;
        inner.ready.insert(key, (id, now, spare));
        id
    }

    /// The spare for `key` could not be made.
    pub fn abandon(&self, key: &SpareKey) {
        self.lock().making.remove(key);
    }

    /// Removes the spare `id` for `key` if it is still kept (its time is up).
    pub fn expire(&self, key: &SpareKey, id: u64) -> Option<T> {
        let mut inner = self.lock();
        match inner.ready.get(key) {
            Some((kept, _, _)) if *kept == id => inner.ready.remove(key).map(|(_, _, s)| s),
            _ => None,
        }
    }

    /// How many spares are ready.
    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, uid: &str) -> SpareKey {
        SpareKey::new(
            SocketAddr::from(([10, 0, 0, 1], port)),
            &MeshedPod {
                namespace: "shop".into(),
                name: "api".into(),
                uid: uid.into(),
                service_account: "api".into(),
                originates_mtls: true,
            },
        )
    }

    #[test]
    fn a_destination_dialled_again_soon_gets_a_spare_the_next_dial_takes() {
        let spares = Spares::<&str>::default();
        let t0 = Instant::now();
        let api = key(80, "uid-1");
        let first = spares.take(&api, t0);
        assert!(
            first.spare.is_none() && !first.make,
            "one dial makes no spare"
        );
        let second = spares.take(&api, t0 + Duration::from_secs(1));
        assert!(
            second.spare.is_none() && second.make,
            "a second dial soon makes one"
        );
        assert!(
            !spares.take(&api, t0 + Duration::from_secs(2)).make,
            "one spare at a time per destination"
        );
        spares.put(api.clone(), "spare", t0 + Duration::from_secs(2));
        let third = spares.take(&api, t0 + Duration::from_secs(3));
        assert_eq!(third.spare, Some("spare"));
        assert!(third.make, "taking a spare makes the next");
        assert_eq!(spares.ready(), 0);
    }

    #[test]
    fn a_spare_serves_only_the_identity_it_was_verified_against_and_only_while_fresh() {
        let spares = Spares::<&str>::default();
        let t0 = Instant::now();
        let api = key(80, "uid-1");
        spares.take(&api, t0);
        assert!(spares.take(&api, t0).make);
        spares.put(api.clone(), "spare", t0);
        // The address now holds another pod (another UID), or another port.
        for other in [key(80, "uid-2"), key(81, "uid-1")] {
            assert_eq!(spares.take(&other, t0).spare, None);
        }
        // Too old: dropped, not served.
        assert_eq!(spares.take(&api, t0 + Spares::<&str>::IDLE).spare, None);
    }

    #[test]
    fn a_spare_expires_by_its_id_and_failures_free_the_destination() {
        let spares = Spares::<&str>::default();
        let t0 = Instant::now();
        let api = key(80, "uid-1");
        spares.take(&api, t0);
        assert!(spares.take(&api, t0).make);
        spares.abandon(&api);
        assert!(
            spares.take(&api, t0).make,
            "after a failure, another may be made"
        );
        let id = spares.put(api.clone(), "old", t0);
        assert_eq!(spares.expire(&api, id), Some("old"));
        assert_eq!(spares.expire(&api, id), None);
        let id2 = spares.put(api.clone(), "new", t0);
        assert_eq!(
            spares.expire(&api, id),
            None,
            "an old timer leaves the new spare"
        );
        assert_eq!(spares.expire(&api, id2), Some("new"));
    }

    #[test]
    fn spares_are_bounded() {
        let spares = Spares::<u16>::default();
        let t0 = Instant::now();
        let mut made = 0;
        for port in 0..(Spares::<u16>::MAX as u16 + 10) {
            let k = key(port, "uid");
            spares.take(&k, t0);
            if spares.take(&k, t0).make {
                spares.put(k, port, t0);
                made += 1;
            }
        }
        assert_eq!(made, Spares::<u16>::MAX);
    }
}
