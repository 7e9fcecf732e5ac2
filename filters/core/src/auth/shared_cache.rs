//! The cross-worker verified-token cache, in shared data.
//!
//! Each worker VM has its own [`super::cache::TokenCache`], so without this
//! a token would be verified once per worker. Here a successful
//! verification is published to a fixed table of `slots` shared-data keys
//! (`ctxgate_auth.<config>.cache.<n>`), indexed by the token's SHA-256. A
//! slot holds one token: a newer token hashing to the same slot replaces
//! it, which only costs a re-verification. Memory is bounded by the slot
//! count times the largest payload, whatever the traffic.
//!
//! A slot stores the token's digest (a hit must match all 32 bytes), the
//! provider, the time the identity stops being valid, the verifying key's
//! `kid`, and the verified payload, from which the identity is rebuilt without touching the
//! signature again. Refusals are not shared: they are cheap to recompute
//! relative to the risk of one worker's transient view (keys not yet
//! fetched) spreading to others.
//!
//! Slots are written blindly (last writer wins): this is a cache of
//! independent entries, not a read-modify-write of a shared value.

use crate::shared::SharedStore;

const HEADER_LEN: usize = 32 + 2 + 8;

/// A cached verification found in shared data.
pub struct SharedEntry {
    pub provider: usize,
    pub valid_until: u64,
    /// `kid` of the verifying key.
    pub kid: Option<String>,
    pub payload: Vec<u8>,
}

pub struct SharedTokenCache {
    prefix: String,
    slots: u32,
}

impl SharedTokenCache {
    /// `namespace` separates configurations that share a VM (and so shared
    /// data) but must not share verifications.
    pub fn new(namespace: &str, slots: u32) -> SharedTokenCache {
        SharedTokenCache {
            prefix: format!("ctxgate_auth.{namespace}.cache."),
            slots,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.slots > 0
    }

    fn locate(&self, token: &str) -> ([u8; 32], String) {
        let digest = hmac_sha256::Hash::hash(token.as_bytes());
        let mut index = [0u8; 4];
        index.copy_from_slice(digest.get(..4).unwrap_or(&[0; 4]));
        let slot = u32::from_le_bytes(index) % self.slots.max(1);
        (digest, format!("{}{slot}", self.prefix))
    }

    pub fn get(&self, store: &dyn SharedStore, token: &str, now: u64) -> Option<SharedEntry> {
        if !self.is_enabled() {
            return None;
        }
        let (digest, key) = self.locate(token);
        let (value, _) = store.get(&key)?;
        let (header, rest) = value.split_at_checked(HEADER_LEN)?;
        let (stored_digest, fixed) = header.split_at_checked(32)?;
        if stored_digest != digest {
            return None;
        }
        let (provider, valid_until) = fixed.split_at_checked(2)?;
        let provider = u16::from_le_bytes(provider.try_into().ok()?);
        let valid_until = u64::from_le_bytes(valid_until.try_into().ok()?);
        let (&kid_len, rest) = rest.split_first()?;
        let (kid, payload) = rest.split_at_checked(usize::from(kid_len))?;
        let kid = if kid.is_empty() {
            None
        } else {
            Some(String::from_utf8(kid.to_vec()).ok()?)
        };
        (now < valid_until).then(|| SharedEntry {
            provider: usize::from(provider),
            valid_until,
            kid,
            payload: payload.to_vec(),
        })
    }

    pub fn put(&self, store: &dyn SharedStore, token: &str, entry: &SharedEntry) {
        let Ok(provider) = u16::try_from(entry.provider) else {
            return;
        };
        if !self.is_enabled() {
            return;
        }
        let (digest, key) = self.locate(token);
        let mut value = Vec::with_capacity(HEADER_LEN + entry.payload.len());
        value.extend_from_slice(&digest);
        value.extend_from_slice(&provider.to_le_bytes());
        value.extend_from_slice(&entry.valid_until.to_le_bytes());
        // A kid longer than 255 bytes is not cached across workers.
        let kid = entry.kid.as_deref().unwrap_or("").as_bytes();
        let Ok(kid_len) = u8::try_from(kid.len()) else {
            return;
        };
        value.push(kid_len);
        value.extend_from_slice(kid);
        value.extend_from_slice(&entry.payload);
        let _ = store.set(&key, &value, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    #[test]
    fn entries_round_trip_and_expire() {
        let store = MemoryStore::default();
        let cache = SharedTokenCache::new("cfg", 8);
        let entry = SharedEntry {
            provider: 1,
            valid_until: 200,
            kid: Some("k".into()),
            payload: b"{\"sub\":\"a\"}".to_vec(),
        };
        cache.put(&store, "token-a", &entry);
        let hit = cache.get(&store, "token-a", 100).unwrap();
        assert_eq!(
            (hit.provider, hit.valid_until, hit.payload),
            (1, 200, entry.payload.clone())
        );
        assert!(cache.get(&store, "token-a", 200).is_none());
        assert!(cache.get(&store, "token-b", 100).is_none());
    }

    #[test]
    fn the_table_never_grows_past_its_slots() {
        let store = MemoryStore::default();
        let cache = SharedTokenCache::new("cfg", 16);
        for i in 0..10_000 {
            let entry = SharedEntry {
                provider: 0,
                valid_until: 200,
                kid: Some("k".into()),
                payload: vec![1],
            };
            cache.put(&store, &format!("token-{i}"), &entry);
        }
        assert!(store.len() <= 16);
        // The most recent token is always found; an older one only if its
        // slot was not reused.
        assert!(cache.get(&store, "token-9999", 100).is_some());
    }

    #[test]
    fn a_colliding_token_is_not_a_hit() {
        let store = MemoryStore::default();
        let cache = SharedTokenCache::new("cfg", 1);
        cache.put(
            &store,
            "a",
            &SharedEntry {
                provider: 0,
                valid_until: 200,
                kid: Some("k".into()),
                payload: vec![],
            },
        );
        assert!(cache.get(&store, "b", 100).is_none());
        let disabled = SharedTokenCache::new("cfg", 0);
        disabled.put(
            &store,
            "c",
            &SharedEntry {
                provider: 0,
                valid_until: 200,
                kid: Some("k".into()),
                payload: vec![],
            },
        );
        assert!(disabled.get(&store, "c", 100).is_none());
    }
}
