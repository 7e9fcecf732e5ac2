//! The state every worker shares, in process memory.
//!
//! The pipeline keeps its shared state (buckets, breakers, the token cache,
//! key sets, nonces) behind [`SharedStore`]: versioned records updated with
//! compare-and-swap. On proxy-wasm that is Envoy's shared data, one host
//! lock per call. Here the workers are threads of one process, so the store
//! is a table in memory: keys hashed over shards, each behind its own lock,
//! and a version per key from one atomic counter. A compare-and-swap holds
//! one shard's lock for one comparison and one copy, so workers contend
//! only when they touch keys of the same shard at the same instant, and no
//! update is ever lost: a write at a stale version fails and the caller
//! reads again (see [`ctxgate_core::shared::update`]).
//!
//! The table is bounded twice: the pipeline only ever creates a bounded set
//! of keys (every table it keeps has a fixed number of slots), and the store
//! refuses to create more than [`MAX_KEYS`] keys or values larger than
//! [`MAX_VALUE`] bytes, so no input can make it grow without end.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use ctxgate_core::shared::{Cas, SetError, SharedStore};

/// Shards of the table: enough that workers (a handful of threads) rarely
/// meet on one lock.
const SHARDS: usize = 64;

/// Most keys the store holds. The pipeline's tables are fixed at configure
/// time (a few thousand keys for a large configuration); this bounds what a
/// misconfiguration, or many configurations loaded in turn, could create.
pub const MAX_KEYS: usize = 1 << 20;

/// Largest value the store keeps (the largest record the pipeline writes is
/// a key set, a few kilobytes).
pub const MAX_VALUE: usize = 1 << 20;

/// Keys are the pipeline's own (`<table>.slot.<n>` and the like, the slot
/// picked by a keyed hash), never a string a caller chose, so a fast hash
/// serves: std's SipHash, run twice per access (shard, then map), cost more
/// than the rest of the lookup.
type Shard = HashMap<String, (Vec<u8>, Cas), RandomState>;

pub struct ProcessStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    keys: AtomicUsize,
    next_cas: AtomicU32,
}

impl Default for ProcessStore {
    fn default() -> Self {
        ProcessStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(RandomState::default())))
                .collect(),
            hasher: RandomState::default(),
            keys: AtomicUsize::new(0),
            next_cas: AtomicU32::new(0),
        }
    }
}

impl ProcessStore {
    fn shard(&self, key: &str) -> Option<MutexGuard<'_, Shard>> {
        // The high bits: the shard's map uses the low ones.
        let index = usize::try_from(self.hasher.hash_one(key) >> 32).unwrap_or(0) % SHARDS;
        // A panic while a shard was locked leaves whole records behind
        // (a write replaces a value in one assignment), so a poisoned lock
        // is still safe to use.
        let shard = self.shards.get(index)?;
        Some(shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A fresh version: never 0, so that no reader holds it before a write.
    fn version(&self) -> Cas {
        loop {
            let cas = self
                .next_cas
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if cas != 0 {
                return cas;
            }
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for ProcessStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.shard(key)?.get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        if value.len() > MAX_VALUE {
            return Err(SetError::Host);
        }
        let mut shard = self.shard(key).ok_or(SetError::Host)?;
        match shard.get_mut(key) {
            Some(entry) => {
                if cas.is_some_and(|c| c != entry.1) {
                    return Err(SetError::CasMismatch);
                }
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = self.version();
            }
            None => {
                // Proxy-wasm's semantics: a write to a key that does not
                // exist creates it, whatever the version (see
                // `ctxgate_core::shared`).
                if self.keys.fetch_add(1, Ordering::Relaxed) >= MAX_KEYS {
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                    return Err(SetError::Host);
                }
                shard.insert(key.to_owned(), (value.to_vec(), self.version()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxgate_core::shared::{Change, Update, update};
    use std::sync::Arc;

    #[test]
    fn cas_rejects_stale_writes() {
        let store = ProcessStore::default();
        store.ensure("k", b"0");
        let (_, cas) = store.get("k").unwrap();
        store.set("k", b"1", Some(cas)).unwrap();
        assert_eq!(store.set("k", b"2", Some(cas)), Err(SetError::CasMismatch));
        assert_eq!(store.get("k").unwrap().0, b"1");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn no_update_is_lost_across_threads() {
        let store = Arc::new(ProcessStore::default());
        store.ensure("counter", &0u64.to_le_bytes());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        loop {
                            let result = update(&*store, "counter", 8, |v| {
                                let n = u64::from_le_bytes(v.try_into().unwrap());
                                Change::Write((n + 1).to_le_bytes().to_vec(), ())
                            });
                            if result == Update::Written(()) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (value, _) = store.get("counter").unwrap();
        assert_eq!(u64::from_le_bytes(value.try_into().unwrap()), 40_000);
    }

    #[test]
    fn it_refuses_oversized_values() {
        let store = ProcessStore::default();
        assert_eq!(
            store.set("k", &vec![0; MAX_VALUE + 1], None),
            Err(SetError::Host)
        );
        assert!(store.is_empty());
    }
}
