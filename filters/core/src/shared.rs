//! Proxy-wasm shared data, abstracted so the logic on top of it can be
//! tested natively.
//!
//! Shared data is a key-value map shared by every VM with the same `vm_id`
//! in one Envoy (one VM per worker thread). It has no eviction, no delete
//! under CAS and one host lock, so ctxgate only ever creates a bounded set
//! of keys and updates them with compare-and-swap.
//!
//! One subtlety shapes the API: a write with `cas` to a key that does not
//! exist yet always succeeds (there is no atomic create). Two VMs creating
//! the same key could both "win". [`SharedStore::ensure`] is therefore only
//! called while a VM configures itself, before it serves traffic, and only
//! ever writes an initial value that carries no update.
//!
//! Envoy configures a plugin on its main thread first (a "canary" VM whose
//! configuration must succeed before any worker VM is created), so a value
//! created in `on_configure` is created by that one VM, before any worker
//! reads it. [`load_secret`] relies on this, and re-reads what it wrote.
//!
//! Everything read from shared data is untrusted input: a record is
//! decoded with bounds checks and a version (see [`crate::record`]), and
//! what a record asserts is checked again where it matters.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use crate::record::{self, Kind, RecordError};

/// A CAS token: the version of a value as last read.
pub type Cas = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Someone wrote the key since it was read.
    CasMismatch,
    /// The host refused the write for another reason.
    Host,
}

pub trait SharedStore {
    /// The value and its CAS, or `None` if the key does not exist.
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)>;
    /// Writes `value` if the key is still at version `cas` (or
    /// unconditionally when `cas` is `None`).
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError>;

    /// Creates `key` with `initial` if it does not exist. See the module
    /// documentation for when this may be called.
    fn ensure(&self, key: &str, initial: &[u8]) {
        if self.get(key).is_none() {
            let _ = self.set(key, initial, None);
        }
    }
}

/// A borrowed store is a store (two views of one store stand for two
/// workers in tests).
impl<S: SharedStore + ?Sized> SharedStore for &S {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        (**self).set(key, value, cas)
    }
}

/// Outcome of a bounded compare-and-swap update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    /// The new value was written; carries what `change` returned.
    Written(T),
    /// `change` decided not to write; carries its answer.
    Unchanged(T),
    /// Every attempt lost the race. Nothing was written.
    Contended,
    /// The key does not exist (it should have been created at configure
    /// time) or the host refused the write.
    Failed,
}

/// What an update function wants done with the value it was shown.
pub enum Change<T> {
    Write(Vec<u8>, T),
    Keep(T),
}

/// Read-modify-write with CAS, retried up to `attempts` times. `change` sees
/// the current value and may be called once per attempt, so it must be
/// free of side effects.
pub fn update<S: SharedStore + ?Sized, T>(
    store: &S,
    key: &str,
    attempts: u32,
    mut change: impl FnMut(&[u8]) -> Change<T>,
) -> Update<T> {
    for _ in 0..attempts {
        let Some((value, cas)) = store.get(key) else {
            return Update::Failed;
        };
        match change(&value) {
            Change::Keep(answer) => return Update::Unchanged(answer),
            Change::Write(new_value, answer) => match store.set(key, &new_value, Some(cas)) {
                Ok(()) => return Update::Written(answer),
                Err(SetError::CasMismatch) => continue,
                Err(SetError::Host) => return Update::Failed,
            },
        }
    }
    Update::Contended
}

/// A per-deployment random key for hashing keys into slots, so that
/// clients cannot choose keys that land in a given slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub const fn from_bytes(bytes: [u8; 16]) -> Secret {
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
        ] = bytes;
        Secret {
            k0: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            k1: u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        }
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        let (k0, k1) = out.split_at_mut(8);
        k0.copy_from_slice(&self.k0.to_le_bytes());
        k1.copy_from_slice(&self.k1.to_le_bytes());
        out
    }

    /// SipHash-1-3 of `bytes` under this key.
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(bytes);
        hasher.finish()
    }
}

const SECRET_VERSION: u8 = 1;

/// The secret stored under `key`, created from `fresh` (random bytes from
/// the host) if there is none yet. Call from `on_configure` (see the module
/// documentation). A value that is not a secret record is an error: the
/// caller refuses to start rather than hash with a secret other workers do
/// not share.
pub fn load_secret(
    store: &dyn SharedStore,
    key: &str,
    fresh: [u8; 16],
) -> Result<Secret, RecordError> {
    if store.get(key).is_none() {
        let mut w = record::writer(Kind::Secret, SECRET_VERSION, 16);
        w.bytes(&Secret::from_bytes(fresh).to_bytes());
        let _ = store.set(key, &w.finish(), None);
    }
    let (value, _) = store.get(key).ok_or(RecordError::NotARecord)?;
    let mut r = record::reader(&value, Kind::Secret, SECRET_VERSION)?;
    let secret = Secret::from_bytes(r.array()?);
    r.end()?;
    Ok(secret)
}

/// An in-process store with Envoy's semantics, for tests.
#[derive(Default)]
pub struct MemoryStore {
    map: RefCell<HashMap<String, (Vec<u8>, Cas)>>,
    next_cas: RefCell<Cas>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.map.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        let mut map = self.map.borrow_mut();
        let mut next = self.next_cas.borrow_mut();
        *next = next.wrapping_add(1).max(1);
        match map.get_mut(key) {
            Some(entry) => {
                if cas.is_some_and(|c| c != entry.1) {
                    return Err(SetError::CasMismatch);
                }
                *entry = (value.to_vec(), *next);
            }
            None => {
                map.insert(key.to_owned(), (value.to_vec(), *next));
            }
        }
        Ok(())
    }
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }

    /// Every key and value, for tests that inspect what was written.
    pub fn entries(&self) -> Vec<(String, Vec<u8>)> {
        let map = self.map.borrow();
        map.iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rejects_stale_writes() {
        let store = MemoryStore::default();
        store.ensure("k", b"0");
        let (_, cas) = store.get("k").unwrap();
        store.set("k", b"1", Some(cas)).unwrap();
        assert_eq!(store.set("k", b"2", Some(cas)), Err(SetError::CasMismatch));
        assert_eq!(store.get("k").unwrap().0, b"1");
    }

    #[test]
    fn ensure_never_overwrites() {
        let store = MemoryStore::default();
        store.ensure("k", b"0");
        store.set("k", b"5", None).unwrap();
        store.ensure("k", b"0");
        assert_eq!(store.get("k").unwrap().0, b"5");
    }

    #[test]
    fn the_secret_is_created_once_and_shared() {
        let store = MemoryStore::default();
        let first = load_secret(&store, "s", [1; 16]).unwrap();
        let second = load_secret(&store, "s", [2; 16]).unwrap();
        assert_eq!(first, second, "the second VM adopts the stored secret");
        assert_ne!(
            first.hash(b"acme"),
            Secret::from_bytes([2; 16]).hash(b"acme")
        );
        store.set("s", b"0123456789abcdef", None).unwrap();
        assert_eq!(
            load_secret(&store, "s", [3; 16]),
            Err(RecordError::NotARecord)
        );
    }

    #[test]
    fn update_retries_then_gives_up() {
        let store = MemoryStore::default();
        store.ensure("k", b"0");
        // A competing writer bumps the version on every attempt.
        let result: Update<()> = update(&store, "k", 3, |_| {
            store.set("k", b"x", None).unwrap();
            Change::Write(b"mine".to_vec(), ())
        });
        assert_eq!(result, Update::Contended);
        assert_eq!(store.get("k").unwrap().0, b"x");
        assert_eq!(
            update(&store, "missing", 3, |_| Change::Keep(())),
            Update::Failed
        );
        assert_eq!(
            update(&store, "k", 3, |v| Change::Write([v, b"!"].concat(), 1)),
            Update::Written(1)
        );
        assert_eq!(store.get("k").unwrap().0, b"x!");
    }
}
