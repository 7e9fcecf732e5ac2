//! Verified-token cache.
//!
//! Verifying an ES256 signature costs about 0.7 ms under V8; looking a token
//! up here costs a hash of the token. Entries are keyed by the full token
//! (not a digest), so a hit is an exact match by construction. A verified
//! token is never served past its `exp` (plus skew) or the configured
//! maximum TTL; refusals are remembered briefly so a client replaying a bad
//! token cannot make the gateway verify it over and over.
//!
//! Memory is bounded by `max_entries` times the maximum token size. When
//! the cache is full, expired entries go first, then an arbitrary eighth of
//! the rest (hash order, which the randomly keyed hasher makes
//! unpredictable to clients).

use std::collections::HashMap;
use std::rc::Rc;

use super::denial::Denial;
use super::identity::Identity;

pub type Verdict = Result<Rc<Identity>, Denial>;

struct Entry {
    verdict: Verdict,
    expires_at: u64,
}

pub struct TokenCache {
    entries: HashMap<String, Entry>,
    max_entries: usize,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            entries: HashMap::new(),
            max_entries,
        }
    }

    /// The cached verdict for `token`, if still valid at `now`.
    pub fn get(&mut self, token: &str, now: u64) -> Option<Verdict> {
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
    pub fn insert(&mut self, token: &str, verdict: Verdict, expires_at: u64, now: u64) {
        if self.max_entries == 0 || expires_at <= now {
            return;
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(token) {
            self.make_room(now);
        }
        self.entries.insert(
            token.to_owned(),
            Entry {
                verdict,
                expires_at,
            },
        );
    }

    pub fn forget(&mut self, token: &str) {
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
            let victims: Vec<String> = self.entries.keys().take(excess).cloned().collect();
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

    #[test]
    fn entries_expire() {
        let mut cache = TokenCache::new(10);
        cache.insert("t", refusal(), 110, 100);
        assert!(cache.get("t", 109).is_some());
        assert!(cache.get("t", 110).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn size_is_bounded() {
        let mut cache = TokenCache::new(16);
        for i in 0..1000 {
            cache.insert(&format!("t{i}"), refusal(), 200, 100);
            assert!(cache.len() <= 16);
        }
        assert!(cache.get("t999", 100).is_some(), "the newest entry is kept");
    }

    #[test]
    fn expired_entries_are_evicted_first() {
        let mut cache = TokenCache::new(4);
        cache.insert("old1", refusal(), 105, 100);
        cache.insert("old2", refusal(), 105, 100);
        cache.insert("keep1", refusal(), 500, 100);
        cache.insert("keep2", refusal(), 500, 100);
        cache.insert("new", refusal(), 500, 200);
        assert!(cache.get("keep1", 200).is_some());
        assert!(cache.get("keep2", 200).is_some());
        assert!(cache.get("new", 200).is_some());
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert("t", refusal(), 200, 100);
        assert!(cache.get("t", 100).is_none());
    }
}
