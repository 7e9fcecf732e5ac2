//! The cross-worker verified-token cache, in shared data.
//!
//! Each worker VM has its own [`super::cache::TokenCache`], so without this
//! a token would be verified once per worker. Here a successful
//! verification is published to a fixed table of `slots` shared-data keys
//! (`<namespace>.cache.<n>`), indexed by the token's SHA-256. A slot holds
//! one token: a newer token hashing to the same slot replaces it, which
//! only costs a re-verification. Memory is bounded by the slot count times
//! the largest payload, whatever the traffic; the namespace does not depend
//! on the configuration, so configuration pushes reuse the same keys.
//!
//! A slot stores the token's digest (a hit must match all 32 bytes), the
//! provider (its index and a tag of its name and issuer, so an entry from
//! another configuration is not taken for this one's), the time the entry
//! stops being valid (fixed when the token was verified: reading it never
//! extends it), the thumbprint of the verifying key, and the verified
//! payload. Shared data is not a trust root: the reader checks the payload
//! again against the provider's issuer, audiences and times, and the key
//! against its own key set, before it believes anything.
//!
//! Refusals are not shared: they are cheap to recompute relative to the
//! risk of one worker's transient view (keys not yet fetched) spreading to
//! others. Slots are written blindly (last writer wins): this is a cache of
//! independent entries, not a read-modify-write of a shared value.

use super::cache::Digest;
use crate::jwt::Thumbprint;
use crate::record::{self, Kind, RecordError};
use crate::shared::SharedStore;

const VERSION: u8 = 1;

/// A cached verification found in shared data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub provider: usize,
    /// Tag of the provider's name and issuer (see [`provider_tag`]).
    pub provider_tag: u64,
    /// Unix seconds after which the entry must not be used.
    pub valid_until: u64,
    /// Thumbprint of the verifying key.
    pub thumbprint: Thumbprint,
    pub payload: Vec<u8>,
}

/// A tag telling providers of different configurations apart.
pub fn provider_tag(name: &str, issuer: &str) -> u64 {
    let digest = hmac_sha256::Hash::hash(format!("{name}\n{issuer}").as_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    u64::from_le_bytes(tag)
}

pub struct SharedTokenCache {
    prefix: String,
    slots: u32,
}

impl SharedTokenCache {
    pub fn new(namespace: &str, slots: u32) -> SharedTokenCache {
        SharedTokenCache {
            prefix: format!("{namespace}.cache."),
            slots,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.slots > 0
    }

    fn key(&self, digest: &Digest) -> String {
        let mut index = [0u8; 4];
        index.copy_from_slice(digest.get(..4).unwrap_or(&[0; 4]));
        let slot = u32::from_le_bytes(index) % self.slots.max(1);
        format!("{}{slot}", self.prefix)
    }

    /// The entry for this token if one is stored and still valid at `now`.
    /// A slot that does not decode is reported (and will be overwritten by
    /// the next verification that lands there).
    pub fn get(
        &self,
        store: &dyn SharedStore,
        digest: &Digest,
        now: u64,
    ) -> Result<Option<SharedEntry>, RecordError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        let Some((value, _)) = store.get(&self.key(digest)) else {
            return Ok(None);
        };
        let mut r = record::reader(&value, Kind::TokenCacheSlot, VERSION)?;
        let stored: [u8; 32] = r.array()?;
        if stored != *digest {
            return Ok(None);
        }
        let provider = usize::from(r.u16()?);
        let provider_tag = r.u64()?;
        let valid_until = r.u64()?;
        let thumbprint: Thumbprint = r.array()?;
        let payload = r.rest().to_vec();
        Ok((now < valid_until).then_some(SharedEntry {
            provider,
            provider_tag,
            valid_until,
            thumbprint,
            payload,
        }))
    }

    pub fn put(&self, store: &dyn SharedStore, digest: &Digest, entry: &SharedEntry) {
        let Ok(provider) = u16::try_from(entry.provider) else {
            return;
        };
        if !self.is_enabled() {
            return;
        }
        let mut w = record::writer(Kind::TokenCacheSlot, VERSION, 90 + entry.payload.len());
        w.bytes(digest)
            .u16(provider)
            .u64(entry.provider_tag)
            .u64(entry.valid_until)
            .bytes(&entry.thumbprint)
            .bytes(&entry.payload);
        let _ = store.set(&self.key(digest), &w.finish(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cache::digest;
    use crate::shared::MemoryStore;

    fn entry(valid_until: u64) -> SharedEntry {
        SharedEntry {
            provider: 1,
            provider_tag: provider_tag("p", "iss"),
            valid_until,
            thumbprint: [9; 32],
            payload: b"{\"sub\":\"a\"}".to_vec(),
        }
    }

    #[test]
    fn entries_round_trip_and_expire() {
        let store = MemoryStore::default();
        let cache = SharedTokenCache::new("cfg", 8);
        cache.put(&store, &digest("token-a"), &entry(200));
        assert_eq!(
            cache.get(&store, &digest("token-a"), 100),
            Ok(Some(entry(200)))
        );
        assert_eq!(cache.get(&store, &digest("token-a"), 200), Ok(None));
        assert_eq!(cache.get(&store, &digest("token-b"), 100), Ok(None));
    }

    #[test]
    fn the_table_never_grows_past_its_slots() {
        let store = MemoryStore::default();
        let cache = SharedTokenCache::new("cfg", 16);
        for i in 0..10_000 {
            cache.put(&store, &digest(&format!("token-{i}")), &entry(200));
        }
        assert!(store.len() <= 16);
        assert!(
            cache
                .get(&store, &digest("token-9999"), 100)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_colliding_token_is_not_a_hit_and_garbage_is_reported() {
        let store = MemoryStore::default();
        let cache = SharedTokenCache::new("cfg", 1);
        cache.put(&store, &digest("a"), &entry(200));
        assert_eq!(cache.get(&store, &digest("b"), 100), Ok(None));
        store.set("cfg.cache.0", b"not a record", None).unwrap();
        assert_eq!(
            cache.get(&store, &digest("a"), 100),
            Err(RecordError::NotARecord)
        );
        let disabled = SharedTokenCache::new("cfg", 0);
        disabled.put(&store, &digest("c"), &entry(200));
        assert_eq!(disabled.get(&store, &digest("c"), 100), Ok(None));
    }
}
