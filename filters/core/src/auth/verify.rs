//! Token verification: this worker's cache, then the cross-worker cache in
//! shared data (whose entries are checked again, never believed), then a
//! signature check, throttled per client; and the per-worker state it
//! needs, the keys in force and the token cache.

use std::sync::Arc;

use jwt_simple::prelude::UnixTimeStamp;

use super::cache::{self, Digest, TokenCache};
use super::compile::Auth;
use super::denial::{Denial, Reason};
use super::flow::{CacheUse, Decision, RequestEnv, StaleKeys};
use super::identity::{ClaimRules, Identity};
use super::provider::Provider;
use super::shared_cache::SharedEntry;
use crate::http::RequestHead;
use crate::jwt::{KeyRef, KeySet, TokenClaims, TokenError, inspect};
use crate::shared::SharedStore;

/// Per-VM mutable state: the keys in force and the token cache.
pub struct AuthState {
    /// Current keys per provider (same order as `Auth::providers`); `None`
    /// until a remote key set has been fetched.
    keys: Vec<Option<Arc<KeySet>>>,
    pub cache: TokenCache,
    /// Version given to the next key set installed.
    next_version: u64,
    /// Shared-data records that did not decode.
    pub invalid_records: u64,
}

impl AuthState {
    /// Installs a provider's new key set. Cached verifications made with
    /// keys that are no longer in it stop counting.
    pub fn install(&mut self, provider: usize, keys: KeySet) {
        let keys = keys.with_version(self.next_version);
        self.next_version += 1;
        if let Some(slot) = self.keys.get_mut(provider) {
            *slot = Some(Arc::new(keys));
        }
        self.cache.forget_refusals();
    }

    /// Does the key that verified `identity` still vouch for it? A key
    /// rotated out (retired or compromised) stops vouching for the tokens it
    /// signed, even those verified and cached before.
    fn still_trusted(&self, identity: &Identity) -> bool {
        let Some(key) = &identity.key else {
            return false;
        };
        self.keys
            .get(identity.provider_index)
            .and_then(Option::as_ref)
            .is_some_and(|keys| keys.vouches_for(key))
    }
}

/// A failed uncached verification.
pub struct Unverified {
    pub denial: Denial,
    /// The provider whose keys were tried, if one was found.
    pub provider: Option<usize>,
    /// A signature check was done (the refusal was costly to find).
    pub signature_checked: bool,
}

/// A successful uncached verification.
pub struct Verified {
    pub identity: Arc<Identity>,
    pub provider: usize,
    pub payload: Vec<u8>,
}

impl Auth {
    /// Fresh per-VM state: inline keys installed, remote keys pending.
    pub fn new_state(&self) -> AuthState {
        AuthState {
            keys: self
                .providers
                .iter()
                .map(|p| p.inline_keys.clone())
                .collect(),
            cache: TokenCache::new(self.cache_max_entries),
            next_version: 2,
            invalid_records: 0,
        }
    }

    /// Verifies a token, through this worker's cache, then the shared one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn verify(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        token: &str,
        request: &RequestHead<'_>,
        env: &RequestEnv<'_>,
        now: u64,
        decision: &mut Decision,
    ) -> Result<Arc<Identity>, Denial> {
        let key = state.cache.key_of(token);
        match state.cache.get(&key, now) {
            Some(Ok(identity)) if !state.still_trusted(&identity) => state.cache.forget(&key),
            Some(verdict) => {
                decision.cache = CacheUse::Hit;
                return verdict;
            }
            None => {}
        }
        // Missed this worker's cache: the shared one is keyed by SHA-256.
        let digest = cache::digest(token);
        if let Some((identity, valid_until)) = self.shared_lookup(state, store, &digest, now) {
            decision.cache = CacheUse::SharedHit;
            state
                .cache
                .insert(&key, Ok(identity.clone()), valid_until, now);
            return Ok(identity);
        }
        decision.cache = CacheUse::Miss;
        // Throttled before any signature work: one shared-data read.
        let client = self
            .throttle
            .as_ref()
            .map(|t| (t, t.client_key(request, env.client_address)));
        let mut gate = || -> Result<(), Denial> {
            let Some((throttle, client)) = &client else {
                return Ok(());
            };
            match throttle.blocked_for(store, client, now.saturating_mul(1000)) {
                Ok(Some(seconds)) => {
                    let mut denial = Denial::new(
                        Reason::VerificationThrottled,
                        "too many failed token verifications from this client; retry later",
                    );
                    denial.retry_after = seconds;
                    Err(denial)
                }
                Ok(None) => Ok(()),
                Err(e) => {
                    log::warn!("verification throttle slot does not decode ({e})");
                    Ok(())
                }
            }
        };
        let verified = self.verify_uncached(state, token, now, &mut gate);
        match verified {
            Ok(Verified {
                identity,
                provider,
                payload,
            }) => {
                let valid_until = self.cache_expiry(&identity, now);
                if let (Some(p), Some(key)) = (self.providers.get(provider), identity.key) {
                    let entry = SharedEntry {
                        provider,
                        provider_tag: p.tag,
                        valid_until,
                        thumbprint: key.thumbprint,
                        payload,
                    };
                    self.shared_cache.put(store, &digest, &entry);
                }
                state
                    .cache
                    .insert(&key, Ok(identity.clone()), valid_until, now);
                Ok(identity)
            }
            Err(Unverified {
                denial,
                provider,
                signature_checked,
            }) => {
                if signature_checked {
                    if let Some((throttle, client)) = &client
                        && let Err(e) = throttle.failed(store, client, now.saturating_mul(1000))
                    {
                        state.invalid_records += 1;
                        log::warn!("verification throttle slot does not decode ({e})");
                    }
                    // Costly refusals are remembered briefly; cheap ones are
                    // not (a flood of distinct garbage must not push good
                    // entries out of the cache).
                    if denial.reason.is_cacheable() {
                        let expires_at = now.saturating_add(self.failure_ttl_seconds);
                        state
                            .cache
                            .insert(&key, Err(denial.clone()), expires_at, now);
                    }
                }
                // Keys this worker lacks (none yet, not the token's kid),
                // or a bad signature against keys another worker may have
                // replaced already (a rotation that kept the kids).
                if matches!(
                    denial.reason,
                    Reason::UnknownKid | Reason::KeysUnavailable | Reason::BadSignature
                ) {
                    decision.stale_keys = provider
                        .filter(|i| self.providers.get(*i).is_some_and(|p| p.remote.is_some()))
                        .map(|provider| StaleKeys {
                            provider,
                            unknown_kid: denial.reason == Reason::UnknownKid,
                        });
                }
                Err(denial)
            }
        }
    }

    /// How long a verified identity may be served from a cache.
    fn cache_expiry(&self, identity: &Identity, now: u64) -> u64 {
        identity
            .valid_until
            .unwrap_or(u64::MAX)
            .min(now.saturating_add(self.max_ttl_seconds))
    }

    /// Rebuilds an identity another worker verified, and until when it may
    /// be used (as fixed at verification). Nothing in shared data is taken
    /// on trust: the entry must be this configuration's provider, the key
    /// must be in this worker's key set, and the claims must pass the
    /// provider's issuer, audience and time checks again.
    fn shared_lookup(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        digest: &Digest,
        now: u64,
    ) -> Option<(Arc<Identity>, u64)> {
        let entry = match self.shared_cache.get(store, digest, now) {
            Ok(entry) => entry?,
            Err(e) => {
                state.invalid_records += 1;
                log::warn!("shared token cache slot does not decode ({e})");
                return None;
            }
        };
        let provider = self.providers.get(entry.provider)?;
        if entry.provider_tag != provider.tag {
            return None;
        }
        let keys = state.keys.get(entry.provider)?.as_ref()?;
        if !keys.holds(&entry.thumbprint) {
            return None;
        }
        let key = KeyRef {
            thumbprint: entry.thumbprint,
            version: keys.version(),
        };
        let claims: TokenClaims = serde_json::from_slice(&entry.payload).ok()?;
        if !provider.recheck(&claims, now) {
            return None;
        }
        let mut identity =
            Identity::from_claims(&claims, &self.claim_rules(entry.provider, provider, now))
                .ok()?;
        identity.key = Some(key);
        let valid_until = entry
            .valid_until
            .min(identity.valid_until.unwrap_or(u64::MAX));
        Some((Arc::new(identity), valid_until))
    }

    fn claim_rules<'a>(&'a self, index: usize, provider: &'a Provider, now: u64) -> ClaimRules<'a> {
        ClaimRules {
            provider: &provider.name,
            provider_index: index,
            tenant_claim: &provider.tenant_claim,
            fixed_tenant: provider.fixed_tenant.as_deref(),
            allowed_tenants: &provider.allowed_tenants,
            scopes_claim: &provider.scopes_claim,
            default_tier: &self.default_tier,
            require_expiration: provider.require_expiration,
            skew_seconds: provider.skew_seconds,
            forwarded_claims: &self.filter_state_claims,
            max_lifetime_seconds: provider.max_lifetime_seconds,
            service: provider.role == super::config::TokenRole::Service,
            now,
        }
    }

    /// Verifies a token without any cache. `gate` runs right before the
    /// signature check and may refuse it (the per-client throttle).
    pub fn verify_uncached(
        &self,
        state: &AuthState,
        token: &str,
        now: u64,
        gate: &mut dyn FnMut() -> Result<(), Denial>,
    ) -> Result<Verified, Unverified> {
        let cheap = |denial: Denial, provider: Option<usize>| Unverified {
            denial,
            provider,
            signature_checked: false,
        };
        let (header, issuer) = inspect(token, &self.all_algorithms)
            .map_err(|e| cheap(Denial::from_token_error(&e), None))?;
        let Some(index) = issuer
            .as_deref()
            .and_then(|iss| self.providers.iter().position(|p| p.issuer == iss))
        else {
            return Err(cheap(
                Denial::new(Reason::UnknownIssuer, "the token's issuer is not trusted"),
                None,
            ));
        };
        let (Some(provider), Some(keys)) = (self.providers.get(index), state.keys.get(index))
        else {
            return Err(cheap(
                Denial::new(Reason::UnknownIssuer, "the token's issuer is not trusted"),
                None,
            ));
        };
        if !provider.algorithms.contains(&header.alg) {
            return Err(cheap(
                Denial::from_token_error(&TokenError::UnsupportedAlgorithm(header.alg.to_string())),
                Some(index),
            ));
        }
        let Some(keys) = keys else {
            return Err(cheap(
                Denial::new(
                    Reason::KeysUnavailable,
                    "the issuer's signing keys are not available yet",
                ),
                Some(index),
            ));
        };
        gate().map_err(|denial| cheap(denial, Some(index)))?;
        let mut options = provider.options.clone();
        options.artificial_time = Some(UnixTimeStamp::from_secs(now));
        let (claims, key) = keys
            .verify(token, &header, &options)
            .map_err(|e| Unverified {
                denial: Denial::from_token_error(&e.error),
                provider: Some(index),
                signature_checked: e.signature_checked,
            })?;
        let mut identity = Identity::from_claims(&claims, &self.claim_rules(index, provider, now))
            .map_err(|e| Unverified {
                denial: Denial::from_token_error(&e),
                provider: Some(index),
                signature_checked: true,
            })?;
        identity.key = Some(key);
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        Ok(Verified {
            identity: Arc::new(identity),
            provider: index,
            payload,
        })
    }
}
