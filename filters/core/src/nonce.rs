//! The nonce store over shared data: what the proxy-wasm engine (and the
//! mock host) answer [`Host::nonces`](crate::host::Host::nonces) with.
//!
//! A space is a fixed number of buckets, one shared-data key each
//! (`<space>.nonces.<i>`), created when a worker is configured. A nonce
//! (a 64-bit keyed hash) lives in bucket `hash % buckets`, as a (hash,
//! expiry) entry; a claim reads the bucket, drops expired entries, refuses
//! a live equal hash (a replay) and writes the bucket back with
//! compare-and-swap, so two workers claiming the same nonce at once
//! cannot both win. A bucket holds at most `per_bucket` entries: when all
//! are live the claim fails ([`NonceRefusal::Full`]) rather than forget
//! one, because a forgotten nonce is a replay let through.
//!
//! Record (kind [`Kind::NonceBucket`], version 1): `u8` count, then per
//! entry `u64` hash and `u64` expiry (Unix milliseconds).

use crate::host::{NonceRefusal, NonceSpace, NonceStore};
use crate::record::{self, Kind};
use crate::shared::{Change, SharedStore, Update, update};

const VERSION: u8 = 1;
/// Compare-and-swap attempts per claim.
const ATTEMPTS: u32 = 16;

/// Nonces in a [`SharedStore`].
#[derive(Default)]
pub struct SharedNonces<S>(pub S);

/// The shared-data key of bucket `index` of `space`.
fn bucket_key(space: &NonceSpace, index: u64) -> String {
    format!("{}.nonces.{index}", space.name)
}

/// The bucket `nonce` lives in.
fn bucket_of(space: &NonceSpace, nonce: u64) -> String {
    bucket_key(space, nonce % u64::from(space.buckets.max(1)))
}

fn encode(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut w = record::writer(Kind::NonceBucket, VERSION, 1 + 16 * entries.len());
    w.u8(u8::try_from(entries.len()).unwrap_or(u8::MAX));
    for (hash, expires) in entries.iter().take(usize::from(u8::MAX)) {
        w.u64(*hash).u64(*expires);
    }
    w.finish()
}

fn decode(bytes: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut r = record::reader(bytes, Kind::NonceBucket, VERSION).ok()?;
    let count = r.u8().ok()?;
    let mut entries = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        entries.push((r.u64().ok()?, r.u64().ok()?));
    }
    r.end().ok()?;
    Some(entries)
}

impl<S: SharedStore> NonceStore for SharedNonces<S> {
    fn prepare(&self, space: &NonceSpace) {
        let empty = encode(&[]);
        for index in 0..space.buckets {
            self.0.ensure(&bucket_key(space, u64::from(index)), &empty);
        }
    }

    fn claim(
        &self,
        space: &NonceSpace,
        nonce: u64,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<(), NonceRefusal> {
        let key = bucket_of(space, nonce);
        let result = update(&self.0, &key, ATTEMPTS, |value| {
            let Some(mut entries) = decode(value) else {
                return Change::Keep(Err(NonceRefusal::Unavailable));
            };
            entries.retain(|(_, expires)| *expires > now_ms);
            if entries.iter().any(|(hash, _)| *hash == nonce) {
                return Change::Keep(Err(NonceRefusal::Replayed));
            }
            if entries.len() >= usize::from(space.per_bucket) {
                return Change::Keep(Err(NonceRefusal::Full));
            }
            entries.push((nonce, expires_ms));
            Change::Write(encode(&entries), Ok(()))
        });
        match result {
            Update::Written(answer) | Update::Unchanged(answer) => answer,
            Update::Contended | Update::Failed => Err(NonceRefusal::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn space(buckets: u32, per_bucket: u8) -> NonceSpace {
        NonceSpace {
            name: "ctxgate/t.signature".into(),
            buckets,
            per_bucket,
        }
    }

    #[test]
    fn a_live_nonce_is_claimed_once() {
        let store = SharedNonces(MemoryStore::default());
        let space = space(8, 4);
        store.prepare(&space);
        assert_eq!(store.0.len(), 8);
        assert_eq!(store.claim(&space, 42, 1_000, 5_000), Ok(()));
        assert_eq!(
            store.claim(&space, 42, 4_999, 9_000),
            Err(NonceRefusal::Replayed)
        );
        assert_eq!(store.claim(&space, 43, 1_000, 5_000), Ok(()));
        // Expired: it may be claimed again.
        assert_eq!(store.claim(&space, 42, 5_000, 9_000), Ok(()));
    }

    #[test]
    fn a_full_bucket_refuses_rather_than_forgets() {
        let store = SharedNonces(MemoryStore::default());
        let space = space(1, 2);
        store.prepare(&space);
        assert_eq!(store.claim(&space, 1, 0, 100), Ok(()));
        assert_eq!(store.claim(&space, 2, 0, 200), Ok(()));
        assert_eq!(store.claim(&space, 3, 50, 300), Err(NonceRefusal::Full));
        assert_eq!(store.claim(&space, 1, 50, 300), Err(NonceRefusal::Replayed));
        // The first entry expired: its room is reused.
        assert_eq!(store.claim(&space, 3, 100, 300), Ok(()));
        assert_eq!(store.claim(&space, 4, 150, 300), Err(NonceRefusal::Full));
    }

    #[test]
    fn an_unreadable_or_missing_bucket_fails_closed() {
        let store = SharedNonces(MemoryStore::default());
        let space = space(1, 2);
        assert_eq!(
            store.claim(&space, 1, 0, 100),
            Err(NonceRefusal::Unavailable),
            "not prepared"
        );
        store
            .0
            .set("ctxgate/t.signature.nonces.0", b"junk", None)
            .unwrap();
        assert_eq!(
            store.claim(&space, 1, 0, 100),
            Err(NonceRefusal::Unavailable)
        );
        assert_eq!(
            decode(&encode(&[(1, 2), (3, 4)])),
            Some(vec![(1, 2), (3, 4)])
        );
    }

    #[test]
    fn two_workers_sharing_the_store_see_each_others_nonces() {
        // Two stores over one map stand for two workers' views of Envoy's
        // shared data.
        let shared = MemoryStore::default();
        let space = space(4, 4);
        let a = SharedNonces(&shared);
        let b = SharedNonces(&shared);
        a.prepare(&space);
        b.prepare(&space);
        assert_eq!(a.claim(&space, 7, 0, 1_000), Ok(()));
        assert_eq!(b.claim(&space, 7, 10, 1_000), Err(NonceRefusal::Replayed));
    }
}
