//! Verified-token cache.
//!
//! Verifying an ES256 signature costs about 0.7 ms under V8; looking a token
//! up here costs a keyed 128-bit SipHash of the token ([`TokenKey`]), about
//! a tenth of a SHA-256. Entries are keyed by that digest, never by the
//! token: the cache holds no credential and its memory does not depend on
//! token sizes. The key is random per worker and never leaves it, so a
//! client cannot compute any token's digest: another token landing on a
//! cached one is a chance of one in 2^128 per entry, which is as good as
//! "the very same token". The cross-worker cache in shared data, whose
//! keys other plugins of the `vm_id` can read, is keyed by SHA-256
//! ([`digest`]), computed only when this cache misses. A verified token is
//! never served past its `exp` (plus skew) or the configured maximum TTL;
//! refusals that cost a signature check are remembered briefly so a client
//! replaying a bad token cannot make the gateway verify it over and over
//! (refusals found without signature work are not cached: a flood of
//! distinct garbage must not push good entries out).
//!
//! Memory is bounded by `max_entries` entries. When
//! the cache is full, expired entries go first, then an arbitrary eighth of
//! the rest (hash order, which the randomly keyed hasher makes
//! unpredictable to clients).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use siphasher::sip128::{Hasher128, SipHasher13};

use super::denial::Denial;
use super::identity::Identity;

pub type Verdict = Result<Arc<Identity>, Denial>;

/// SHA-256 of a token: the key of the shared (cross-worker) cache.
pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    hmac_sha256::Hash::hash(token.as_bytes())
}

/// A token's key in this worker's cache: SipHash-1-3-128 under the
/// worker's random key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey(u128);

struct Entry {
    verdict: Verdict,
    expires_at: u64,
}

pub struct TokenCache {
    entries: HashMap<TokenKey, Entry>,
    max_entries: usize,
    /// This worker's SipHash key.
    key: (u64, u64),
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        // Two outputs of a randomly keyed hasher (the host's randomness,
        // WASI `random_get` under Envoy): the key is never seen outside
        // this worker.
        let random = std::collections::hash_map::RandomState::new();
        let mut k0 = random.build_hasher();
        k0.write_u8(0);
        let mut k1 = random.build_hasher();
        k1.write_u8(1);
        TokenCache {
            entries: HashMap::new(),
            max_entries,
            key: (k0.finish(), k1.finish()),
        }
    }

    /// `token`'s key in this cache.
    pub fn key_of(&self, token: &str) -> TokenKey {
        let mut hasher = SipHasher13::new_with_keys(self.key.0, self.key.1);
        hasher.write(token.as_bytes());
        TokenKey(hasher.finish128().as_u128())
    }

    /// The cached verdict for `token`, if still valid at `now`.
    pub fn get(&mut self, token: &TokenKey, now: u64) -> Option<Verdict> {
        match self.entries.get(token) {
            Some(entry) if now < entry.expires_at => Some(entry.verdict.clone()),
            Some(_) => {
                self.entries.remove(token);
                None
            }
            None => None,
        }
    }

    /// Remembers a verdict until `expires_at` (unix seconds).
    pub fn insert(&mut self, token: &TokenKey, verdict: Verdict, expires_at: u64, now: u64) {
        if self.max_entries == 0 || expires_at <= now {
            return;
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(token) {
            self.make_room(now);
        }
        self.entries.insert(
            *token,
            Entry {
                verdict,
                expires_at,
            },
        );
    }

    pub fn forget(&mut self, token: &TokenKey) {
        self.entries.remove(token);
    }

    /// Forgets cached refusals, e.g. after new keys arrive: a token refused
    /// for an unknown key may verify now.
    pub fn forget_refusals(&mut self) {
        self.entries.retain(|_, e| e.verdict.is_ok());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn make_room(&mut self, now: u64) {
        self.entries.retain(|_, e| now < e.expires_at);
        let target = self.max_entries - self.max_entries.div_ceil(8);
        if self.entries.len() > target {
            let excess = self.entries.len() - target;
            let victims: Vec<TokenKey> = self.entries.keys().take(excess).copied().collect();
            for key in victims {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::denial::Reason;

    fn refusal() -> Verdict {
        Err(Denial::new(Reason::BadSignature, "x"))
    }

    fn d(token: &str) -> TokenKey {
        TOKENS.with(|c| c.key_of(token))
    }

    thread_local! {
        /// One key for every cache of a test, as one worker has.
        static TOKENS: TokenCache = TokenCache::new(0);
    }

    #[test]
    fn entries_expire() {
        let mut cache = TokenCache::new(10);
        cache.insert(&d("t"), refusal(), 110, 100);
        assert!(cache.get(&d("t"), 109).is_some());
        assert!(cache.get(&d("t"), 110).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn size_is_bounded() {
        let mut cache = TokenCache::new(16);
        for i in 0..1000 {
            cache.insert(&d(&format!("t{i}")), refusal(), 200, 100);
            assert!(cache.len() <= 16);
        }
        assert!(
            cache.get(&d("t999"), 100).is_some(),
            "the newest entry is kept"
        );
    }

    #[test]
    fn expired_entries_are_evicted_first() {
        let mut cache = TokenCache::new(4);
        cache.insert(&d("old1"), refusal(), 105, 100);
        cache.insert(&d("old2"), refusal(), 105, 100);
        cache.insert(&d("keep1"), refusal(), 500, 100);
        cache.insert(&d("keep2"), refusal(), 500, 100);
        cache.insert(&d("new"), refusal(), 500, 200);
        assert!(cache.get(&d("keep1"), 200).is_some());
        assert!(cache.get(&d("keep2"), 200).is_some());
        assert!(cache.get(&d("new"), 200).is_some());
    }

    #[test]
    fn keys_are_per_worker_and_128_bits() {
        let (a, b) = (TokenCache::new(1), TokenCache::new(1));
        assert_eq!(a.key_of("t"), a.key_of("t"));
        assert_ne!(a.key_of("t"), a.key_of("u"));
        assert_ne!(a.key_of("t"), b.key_of("t"), "another worker, another key");
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert(&d("t"), refusal(), 200, 100);
        assert!(cache.get(&d("t"), 100).is_none());
    }
}
