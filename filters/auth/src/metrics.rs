//! Every metric the auth filter exports, in one place.
//!
//! Envoy shows them in `/stats` with the `wasmcustom.` prefix and in
//! `/stats/prometheus` without it, e.g. `ctxgate_auth_denied_token_expired`.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `ctxgate_auth.allowed` | counter | requests with a verified token that were let through |
//! | `ctxgate_auth.passthrough` | counter | CORS preflights and public paths (no token needed) |
//! | `ctxgate_auth.denied.<reason>` | counter | refusals, one counter per reason code |
//! | `ctxgate_auth.cache.hit` / `.shared_hit` / `.miss` | counter | verified-token cache lookups: this worker's cache, the cross-worker cache, neither |
//! | `ctxgate_auth.jwks.<provider>.fetch_success` / `.fetch_failure` | counter | remote JWKS fetches by this Envoy |
//! | `ctxgate_auth.jwks.<provider>.installed` | counter | key sets installed by a worker (fetched or from shared data) |
//! | `ctxgate_auth.jwks.<provider>.early_refresh` | counter | refreshes brought forward by an unknown `kid` |
//! | `ctxgate_auth.shared_record_invalid` | counter | shared-data records (token cache, JWKS, throttle) that did not decode: counted, never trusted |

use std::collections::HashMap;

use ctxgate_core::auth::denial::Reason;
use ctxgate_core::auth::{Auth, CacheUse, Decision, Outcome};
use ctxgate_glue::Counter;

pub struct JwksMetrics {
    pub fetch_success: Counter,
    pub fetch_failure: Counter,
    pub installed: Counter,
    pub early_refresh: Counter,
}

pub struct Metrics {
    allowed: Counter,
    passthrough: Counter,
    denied: HashMap<Reason, Counter>,
    cache_hit: Counter,
    cache_shared_hit: Counter,
    cache_miss: Counter,
    jwks: Vec<JwksMetrics>,
    invalid_records: Counter,
    invalid_reported: std::cell::Cell<u64>,
}

impl Metrics {
    pub fn new(auth: &Auth) -> Metrics {
        let jwks_metrics = |provider: &str| JwksMetrics {
            fetch_success: Counter::new(&format!("ctxgate_auth.jwks.{provider}.fetch_success")),
            fetch_failure: Counter::new(&format!("ctxgate_auth.jwks.{provider}.fetch_failure")),
            installed: Counter::new(&format!("ctxgate_auth.jwks.{provider}.installed")),
            early_refresh: Counter::new(&format!("ctxgate_auth.jwks.{provider}.early_refresh")),
        };
        Metrics {
            allowed: Counter::new("ctxgate_auth.allowed"),
            passthrough: Counter::new("ctxgate_auth.passthrough"),
            denied: Reason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        Counter::new(&format!("ctxgate_auth.denied.{}", r.code())),
                    )
                })
                .collect(),
            cache_hit: Counter::new("ctxgate_auth.cache.hit"),
            cache_shared_hit: Counter::new("ctxgate_auth.cache.shared_hit"),
            cache_miss: Counter::new("ctxgate_auth.cache.miss"),
            invalid_records: Counter::new("ctxgate_auth.shared_record_invalid"),
            invalid_reported: std::cell::Cell::new(0),
            jwks: auth
                .providers
                .iter()
                .map(|p| jwks_metrics(&p.name))
                .collect(),
        }
    }

    /// Adds what this worker counted since the last call.
    pub fn invalid_records(&self, total: u64) {
        let new = total.saturating_sub(self.invalid_reported.get());
        if new > 0 {
            self.invalid_records.add(new);
            self.invalid_reported.set(total);
        }
    }

    pub fn record(&self, decision: &Decision) {
        match decision.cache {
            CacheUse::Hit => self.cache_hit.inc(),
            CacheUse::SharedHit => self.cache_shared_hit.inc(),
            CacheUse::Miss => self.cache_miss.inc(),
            CacheUse::NotNeeded => {}
        }
        match &decision.outcome {
            Outcome::Allow(a) if a.tenant.is_some() => self.allowed.inc(),
            Outcome::Allow(_) => self.passthrough.inc(),
            Outcome::Deny(d) => {
                if let Some(counter) = self.denied.get(&d.reason) {
                    counter.inc();
                }
            }
        }
    }

    /// Counts a JWKS event of `provider` (an index into the providers).
    pub fn jwks(&self, provider: usize, event: impl Fn(&JwksMetrics) -> Counter) {
        if let Some(metrics) = self.jwks.get(provider) {
            event(metrics).inc();
        }
    }
}
