//! Every metric the rate-limit filter exports, in one place.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `ctxgate_ratelimit.allowed.<by>` | counter | requests let through, by who decided: `local`, `rls`, `fallback_local`, `fallback_allow`, `contention` |
//! | `ctxgate_ratelimit.cost` | counter | read-equivalents admitted |
//! | `ctxgate_ratelimit.refused.<reason>` | counter | refusals: `local_limit`, `global_limit`, `queue_full`, `contention`, `rls_unavailable` |
//! | `ctxgate_ratelimit.failure_mode.<mode>` | counter | RLS failures or timeouts handled by the failure mode in force: `local_fallback`, `allow`, `deny` |
//! | `ctxgate_ratelimit.rls.sent` / `.ok` / `.failed` / `.timeout` | counter | RLS calls deciding a request; `timeout` = deadline enforced by the filter |
//! | `ctxgate_ratelimit.sync.sent` / `.ok` / `.failed` | counter | background reports of local consumption to the RLS |
//! | `ctxgate_ratelimit.bucket.evictions` | counter | buckets replaced in a full slot |
//! | `ctxgate_ratelimit.bucket.contended` | counter | bucket updates that ran out of CAS attempts |
//! | `ctxgate_ratelimit.sync.dirty_overflow` | counter | keys not tracked for reporting because a worker's set was full |
//! | `ctxgate_ratelimit.adaptive.multiplier_permille` | gauge | limit multiplier in force, x1000 (1000 = no reduction) |
//! | `ctxgate_ratelimit.adaptive.latency_ewma_ms` | gauge | upstream latency EWMA, all workers |
//! | `ctxgate_ratelimit.adaptive.in_flight` | gauge | requests in flight to the upstream, all workers |

use ctxgate_core::ratelimit::adaptive::Combined;
use ctxgate_core::ratelimit::config::FailureMode;
use ctxgate_core::ratelimit::{Admitted, DecidedBy, LimiterState, Refusal};
use ctxgate_glue::{Counter, Gauge};

pub struct Metrics {
    allowed_local: Counter,
    allowed_rls: Counter,
    allowed_fallback_local: Counter,
    allowed_fallback_allow: Counter,
    allowed_contention: Counter,
    cost: Counter,
    refused: Vec<(Refusal, Counter)>,
    failure_local: Counter,
    failure_allow: Counter,
    failure_deny: Counter,
    pub rls_sent: Counter,
    pub rls_ok: Counter,
    pub rls_failed: Counter,
    pub rls_timeout: Counter,
    pub sync_sent: Counter,
    pub sync_ok: Counter,
    pub sync_failed: Counter,
    evictions: Counter,
    contended: Counter,
    dirty_overflow: Counter,
    multiplier: Gauge,
    latency: Gauge,
    in_flight: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let c = |name: &str| Counter::new(&format!("ctxgate_ratelimit.{name}"));
        let g = |name: &str| Gauge::new(&format!("ctxgate_ratelimit.{name}"));
        Metrics {
            allowed_local: c("allowed.local"),
            allowed_rls: c("allowed.rls"),
            allowed_fallback_local: c("allowed.fallback_local"),
            allowed_fallback_allow: c("allowed.fallback_allow"),
            allowed_contention: c("allowed.contention"),
            cost: c("cost"),
            refused: Refusal::ALL
                .iter()
                .map(|r| (*r, c(&format!("refused.{}", r.code()))))
                .collect(),
            failure_local: c("failure_mode.local_fallback"),
            failure_allow: c("failure_mode.allow"),
            failure_deny: c("failure_mode.deny"),
            rls_sent: c("rls.sent"),
            rls_ok: c("rls.ok"),
            rls_failed: c("rls.failed"),
            rls_timeout: c("rls.timeout"),
            sync_sent: c("sync.sent"),
            sync_ok: c("sync.ok"),
            sync_failed: c("sync.failed"),
            evictions: c("bucket.evictions"),
            contended: c("bucket.contended"),
            dirty_overflow: c("sync.dirty_overflow"),
            multiplier: g("adaptive.multiplier_permille"),
            latency: g("adaptive.latency_ewma_ms"),
            in_flight: g("adaptive.in_flight"),
        }
    }

    pub fn allowed(&self, admitted: &Admitted) {
        self.cost.add(admitted.cost);
        match admitted.decided_by {
            DecidedBy::Local => self.allowed_local.inc(),
            DecidedBy::Rls => self.allowed_rls.inc(),
            DecidedBy::Contention => self.allowed_contention.inc(),
            DecidedBy::Fallback(FailureMode::LocalFallback) => {
                self.failure_local.inc();
                self.allowed_fallback_local.inc();
            }
            DecidedBy::Fallback(_) => {
                self.failure_allow.inc();
                self.allowed_fallback_allow.inc();
            }
        }
    }

    pub fn refused(&self, refusal: Refusal) {
        if let Some((_, counter)) = self.refused.iter().find(|(r, _)| *r == refusal) {
            counter.inc();
        }
        if refusal == Refusal::RlsUnavailable {
            self.failure_deny.inc();
        }
    }

    /// Moves the state's event counts into metrics.
    pub fn record_state(&self, state: &mut LimiterState) {
        for (counter, value) in [
            (self.evictions, &mut state.evictions),
            (self.contended, &mut state.contended),
            (self.dirty_overflow, &mut state.dirty_overflow),
        ] {
            if *value > 0 {
                counter.add(std::mem::take(value));
            }
        }
    }

    pub fn record_adaptive(&self, combined: &Combined, own_in_flight: u64) {
        self.multiplier
            .set((combined.multiplier * 1000.0).round() as u64);
        self.latency.set(combined.ewma_ms.round() as u64);
        self.in_flight
            .set(combined.others_in_flight + own_in_flight);
    }
}
