//! The auth stage: [`Auth`] with its per-worker state, the JWKS sync on
//! the worker's tick, and its metrics.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_auth.allowed` | counter | requests with a verified token that were let through |
//! | `ctxgate_auth.passthrough` | counter | CORS preflights and public paths (no token needed) |
//! | `ctxgate_auth.denied.<reason>` | counter | refusals, one counter per reason code |
//! | `ctxgate_auth.cache.hit` / `.shared_hit` / `.miss` | counter | verified-token cache lookups: this worker's cache, the cross-worker cache, neither |
//! | `ctxgate_auth.jwks.<provider>.fetch_success` / `.fetch_failure` | counter | remote JWKS fetches by this Envoy |
//! | `ctxgate_auth.jwks.<provider>.installed` | counter | key sets installed by a worker (fetched or from shared data) |
//! | `ctxgate_auth.jwks.<provider>.early_refresh` | counter | refreshes brought forward by an unknown `kid` |
//! | `ctxgate_auth.shared_record_invalid` | counter | shared-data records (token cache, JWKS, throttle) that did not decode: counted, never trusted |
//! | `ctxgate_auth_check_us.cache.<use>` | histogram | microseconds to check a timed request's token (see [`crate::telemetry::timing`]): `hit`, `shared_hit`, `miss` (signature verified) |

use std::collections::HashMap;

use super::Step;
use super::request::Request;
use crate::auth::denial::Reason;
use crate::auth::jwks_sync::{FetchOutcome, JwksSync};
use crate::auth::{Auth, AuthState, CacheUse, Decision, Outcome, RequestEnv};
use crate::contract::REQUEST_FILTER_STATE;
use crate::host::{Attribute, CallId, CallResponse, Host, HttpCall};
use crate::jwt::KeySet;
use crate::metrics::{Counter, Histogram, Metrics};
use crate::telemetry::timing::micros;

/// How often each worker checks for new shared keys and due fetches.
const JWKS_TICK_MS: u64 = 250;

struct JwksCounters {
    fetch_success: Counter,
    fetch_failure: Counter,
    installed: Counter,
    early_refresh: Counter,
}

struct Counters {
    allowed: Counter,
    passthrough: Counter,
    denied: Vec<(Reason, Counter)>,
    cache_hit: Counter,
    cache_shared_hit: Counter,
    cache_miss: Counter,
    jwks: Vec<JwksCounters>,
    invalid_records: Counter,
    /// Token check time of timed requests, by cache use: hit, shared
    /// hit, miss.
    check_us: [Histogram; 3],
}

pub struct AuthStage {
    auth: Auth,
    state: AuthState,
    sync: JwksSync,
    counters: Counters,
    /// Shared-data records found invalid, as last counted.
    invalid_counted: u64,
    /// JWKS fetches in flight: call -> sync slot.
    fetches: HashMap<CallId, usize>,
    next_tick_ms: u64,
}

impl AuthStage {
    /// Creates what this stage keeps in shared data (call at configure
    /// time, before serving).
    pub fn new(auth: Auth, host: &dyn Host, metrics: &mut Metrics) -> AuthStage {
        auth.init_shared(host.shared());
        let sync = JwksSync::new(&auth);
        sync.init_shared(host.shared());
        let check_us = ["hit", "shared_hit", "miss"]
            .map(|u| metrics.histogram(&format!("ctxgate_auth_check_us.cache.{u}")));
        let mut counter = |name: &str| metrics.counter(&format!("ctxgate_auth.{name}"));
        let counters = Counters {
            allowed: counter("allowed"),
            passthrough: counter("passthrough"),
            denied: Reason::ALL
                .iter()
                .map(|r| (*r, counter(&format!("denied.{}", r.code()))))
                .collect(),
            cache_hit: counter("cache.hit"),
            cache_shared_hit: counter("cache.shared_hit"),
            cache_miss: counter("cache.miss"),
            invalid_records: counter("shared_record_invalid"),
            check_us,
            jwks: auth
                .providers
                .iter()
                .map(|p| JwksCounters {
                    fetch_success: counter(&format!("jwks.{}.fetch_success", p.name)),
                    fetch_failure: counter(&format!("jwks.{}.fetch_failure", p.name)),
                    installed: counter(&format!("jwks.{}.installed", p.name)),
                    early_refresh: counter(&format!("jwks.{}.early_refresh", p.name)),
                })
                .collect(),
        };
        log::info!(
            "auth: {} provider(s): {}",
            auth.providers.len(),
            auth.providers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let state = auth.new_state();
        AuthStage {
            auth,
            state,
            sync,
            counters,
            invalid_counted: 0,
            fetches: HashMap::new(),
            next_tick_ms: 0,
        }
    }

    /// How often the worker must tick for this stage (remote key sets).
    /// Removes the client-sent identity headers `request` carries: done
    /// by [`AuthStage::on_request`] whatever it decides, and by the driver
    /// for a refusal before auth ran.
    pub fn strip_identity(&self, request: &mut Request) {
        for name in self.auth.headers.all() {
            request.remove(name);
        }
    }

    pub fn tick_ms(&self) -> Option<u64> {
        (!self.sync.is_empty()).then_some(JWKS_TICK_MS)
    }

    pub fn on_request(
        &mut self,
        host: &mut dyn Host,
        request: &mut Request,
        metrics: &mut Metrics,
    ) -> Step {
        let now_secs = host.now_ms() / 1000;
        let started = request.timed.then(|| host.clock_ns());
        let mut decision = self.check(&*host, request, now_secs);
        if let Some(started) = started {
            let us = micros(started, host.clock_ns());
            let [hit, shared_hit, miss] = self.counters.check_us;
            let histogram = match decision.cache {
                CacheUse::Hit => Some(hit),
                CacheUse::SharedHit => Some(shared_hit),
                CacheUse::Miss => Some(miss),
                CacheUse::NotNeeded => None,
            };
            if let Some(histogram) = histogram {
                metrics.record(host, histogram, us);
            }
        }
        if let Some(stale) = decision.stale_keys {
            // Another worker may have fetched newer keys since our last
            // tick: install them and decide again rather than refuse.
            if let Some(keys) = self.sync.newer_shared_keys(stale.provider, host.shared()) {
                self.install(stale.provider, keys, "shared data", metrics);
                decision = self.check(&*host, request, now_secs);
            }
        }
        self.count(&decision, metrics);
        if let Some(stale) = decision.stale_keys.filter(|s| s.unknown_kid)
            && self
                .sync
                .request_early_refresh(stale.provider, host.shared(), host.now_ms())
            && let Some(c) = self.counters.jwks.get(stale.provider)
        {
            metrics.inc(c.early_refresh);
        }
        // Client-sent identity headers go whatever the outcome, before a
        // refusal is sent: the access log of a refused request must not
        // show a forged tenant either.
        for name in &decision.strip {
            request.remove(name);
        }
        match decision.outcome {
            Outcome::Allow(allowed) => {
                for name in &allowed.remove_headers {
                    request.remove(name);
                }
                for (name, value) in allowed.headers(&self.auth.headers) {
                    request.set(name, value);
                }
                if !allowed.filter_state.is_empty() {
                    host.set_filter_state(
                        request.stream,
                        REQUEST_FILTER_STATE,
                        &allowed.filter_state,
                    );
                }
                request.set_established(allowed.established);
                Step::Next
            }
            Outcome::Deny(denial) => Step::Reply(denial.reply(&self.auth.realm, &request.head())),
        }
    }

    fn check(&mut self, host: &dyn Host, request: &Request, now_secs: u64) -> Decision {
        let stream = request.stream;
        let client_address = || host.attribute(stream, Attribute::ClientAddress);
        let peer = |attribute| host.attribute(stream, attribute);
        let env = RequestEnv {
            end_of_stream: request.end_of_stream,
            client_address: &client_address,
            authorised_later: request.authorised_later,
            peer: &peer,
        };
        self.auth.check(
            &mut self.state,
            host.shared(),
            &request.head(),
            &env,
            now_secs,
        )
    }

    fn count(&mut self, decision: &Decision, metrics: &mut Metrics) {
        let c = &self.counters;
        match decision.cache {
            CacheUse::Hit => metrics.inc(c.cache_hit),
            CacheUse::SharedHit => metrics.inc(c.cache_shared_hit),
            CacheUse::Miss => metrics.inc(c.cache_miss),
            CacheUse::NotNeeded => {}
        }
        match &decision.outcome {
            Outcome::Allow(a) if a.identity.is_some() => metrics.inc(c.allowed),
            Outcome::Allow(_) => metrics.inc(c.passthrough),
            Outcome::Deny(d) => {
                if let Some((_, counter)) = c.denied.iter().find(|(r, _)| *r == d.reason) {
                    metrics.inc(*counter);
                }
            }
        }
        self.count_invalid_records(metrics);
    }

    fn count_invalid_records(&mut self, metrics: &mut Metrics) {
        let total = self.state.invalid_records + self.sync.invalid_records;
        let new = total.saturating_sub(self.invalid_counted);
        if new > 0 {
            metrics.add(self.counters.invalid_records, new);
            self.invalid_counted = total;
        }
    }

    fn install(&mut self, provider: usize, keys: KeySet, source: &str, metrics: &mut Metrics) {
        let name = self
            .auth
            .providers
            .get(provider)
            .map_or("?", |p| p.name.as_str());
        log::info!(
            "provider {name}: installed {} key(s) from {source}",
            keys.len()
        );
        self.state.install(provider, keys);
        if let Some(c) = self.counters.jwks.get(provider) {
            metrics.inc(c.installed);
        }
    }

    /// Installs key sets other workers fetched and starts the fetches that
    /// are due.
    pub fn on_tick(&mut self, host: &mut dyn Host, metrics: &mut Metrics) {
        let now = host.now_ms();
        if self.sync.is_empty() || now < self.next_tick_ms {
            return;
        }
        self.next_tick_ms = now.saturating_add(JWKS_TICK_MS);
        let tick = self.sync.tick(host.shared(), now);
        for (provider, keys) in tick.install {
            self.install(provider, keys, "shared data", metrics);
        }
        for fetch in tick.fetch {
            let headers = [
                (":method", "GET"),
                (":path", fetch.path.as_str()),
                (":authority", fetch.authority.as_str()),
            ];
            let call = HttpCall {
                cluster: &fetch.cluster,
                headers: &headers,
                body: None,
                timeout_ms: fetch.timeout_ms,
            };
            match host.http_call(&call) {
                Ok(id) => {
                    self.fetches.insert(id, fetch.slot);
                }
                Err(e) => {
                    let reason = format!("cannot call cluster {}: {e}", fetch.cluster);
                    self.fetch_completed(host, fetch.slot, Err(reason), metrics);
                }
            }
        }
        self.count_invalid_records(metrics);
    }

    /// Takes the answer to a JWKS fetch; `false` if the call is not ours.
    pub fn on_call_response(
        &mut self,
        host: &mut dyn Host,
        call: CallId,
        response: &CallResponse,
        metrics: &mut Metrics,
    ) -> bool {
        let Some(slot) = self.fetches.remove(&call) else {
            return false;
        };
        let result = match response {
            CallResponse::Http {
                status: Some(status),
                body,
            } => Ok((*status, body.clone())),
            // No status: the call failed (reset, timeout, no healthy host).
            _ => Err("no response (connection failure or timeout)".to_owned()),
        };
        self.fetch_completed(host, slot, result, metrics);
        true
    }

    fn fetch_completed(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        result: Result<(u16, Vec<u8>), String>,
        metrics: &mut Metrics,
    ) {
        let outcome = self
            .sync
            .fetch_completed(slot, host.shared(), host.now_ms(), result);
        match outcome {
            Some(FetchOutcome::Installed {
                provider,
                keys,
                skipped,
            }) => {
                if let Some(c) = self.counters.jwks.get(provider) {
                    metrics.inc(c.fetch_success);
                }
                for problem in skipped {
                    log::warn!("JWKS key skipped: {problem}");
                }
                self.install(provider, keys, "a fetch", metrics);
            }
            Some(FetchOutcome::Failed {
                provider,
                reason,
                retry_in_ms,
            }) => {
                if let Some(c) = self.counters.jwks.get(provider) {
                    metrics.inc(c.fetch_failure);
                }
                let name = self
                    .auth
                    .providers
                    .get(provider)
                    .map_or("?", |p| p.name.as_str());
                log::warn!(
                    "provider {name}: JWKS fetch failed ({reason}); keeping the last good keys, retry in {retry_in_ms} ms"
                );
            }
            None => {}
        }
    }
}
