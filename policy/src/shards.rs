//! A hash map split into shards that snapshots share.
//!
//! Publishing a snapshot clones the index; with one big map per field that
//! copies every pod (milliseconds for 10,000 pods, on every commit). Here a
//! clone copies 64 pointers, and a change copies only the shard it touches,
//! and only while an older snapshot still shares it (copy on write).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use rustc_hash::{FxBuildHasher, FxHashMap};

const SHARDS: usize = 64;

/// A map of `K` to `V` in 64 copy-on-write shards.
#[derive(Clone, Debug)]
pub struct Shards<K, V> {
    shards: Box<[Arc<FxHashMap<K, V>>]>,
    len: usize,
}

// === impl Shards ===

impl<K: Hash + Eq + Clone, V: Clone> Shards<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Arc::new(FxHashMap::default()))
                .collect(),
            len: 0,
        }
    }

    fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
        // A different mix from the maps' own use of the hash, so that each
        // shard's buckets stay evenly used.
        let h = FxBuildHasher
            .hash_one(key)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 58) as usize % SHARDS
    }

    /// The value for a key.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[Self::shard_of(key)].get(key)
    }

    /// Whether the key is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts, returning the old value; copies the shard if a snapshot shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(&key)]);
        let old = shard.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes, returning the old value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = Self::shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[i]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// A mutable reference to a value; copies the shard if shared.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = Self::shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        Arc::make_mut(&mut self.shards[i]).get_mut(key)
    }

    /// The value for a key, inserted with `make` when absent; copies the shard if shared.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(&key)]);
        if !shard.contains_key(&key) {
            self.len += 1;
        }
        shard.entry(key).or_insert_with(make)
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// Every value.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for Shards<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V: Clone + PartialEq> PartialEq for Shards<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self
                .shards
                .iter()
                .zip(other.shards.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_until_a_write_and_the_write_stays_private() {
        let mut a: Shards<u32, u32> = Shards::new();
        for i in 0..1000 {
            a.insert(i, i);
        }
        let snapshot = a.clone();
        a.insert(7, 70);
        assert_eq!(a.remove(&8), Some(8));
        *a.get_or_insert_with(5000, || 1) += 1;
        assert_eq!(snapshot.get(&7), Some(&7), "the snapshot keeps its value");
        assert_eq!(snapshot.get(&8), Some(&8));
        assert_eq!(a.get(&7), Some(&70));
        assert_eq!(a.get(&5000), Some(&2));
        assert_eq!((a.len(), snapshot.len()), (1000, 1000));
        let shared = a
            .shards
            .iter()
            .zip(snapshot.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(
            shared >= SHARDS - 3,
            "only the touched shards were copied ({shared} shared)"
        );
        assert_ne!(a, snapshot);
        let mut b = snapshot;
        b.insert(7, 70);
        b.remove(&8);
        b.insert(5000, 2);
        assert_eq!(a, b);
    }
}
