//! Every metric the rate-limit filter exports, in one place.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `ctxgate_ratelimit.allowed.<by>` | counter | requests let through, by who decided: `local`, `rls`, `fallback_local`, `fallback_allow`, `contention` |
//! | `ctxgate_ratelimit.cost` | counter | read-equivalents admitted (including what streamed bodies were charged) |
//! | `ctxgate_ratelimit.refused.<reason>` | counter | refusals: `local_limit`, `global_limit`, `queue_full`, `contention`, `rls_unavailable` |
//! | `ctxgate_ratelimit.failure_mode.<mode>` | counter | RLS failures or timeouts handled by the failure mode in force: `local_fallback`, `allow`, `deny` |
//! | `ctxgate_ratelimit.rls.sent` / `.ok` / `.failed` / `.timeout` | counter | RLS calls deciding a request; `timeout` = deadline enforced by the filter |
//! | `ctxgate_ratelimit.sync.sent` / `.ok` / `.failed` | counter | background reports to the RLS: local consumption, and retries of reports an RLS call did not acknowledge |
//! | `ctxgate_ratelimit.reports.pending` | gauge | reports waiting for the RLS to acknowledge them (retried with the same id), all workers |
//! | `ctxgate_ratelimit.reports.dropped` | counter | reports given up: retried for longer than `report_retry_seconds`, or pushed out of a full outbox |
//! | `ctxgate_ratelimit.reports.dropped_hits` | counter | units those reports carried |
//! | `ctxgate_ratelimit.bucket.lost_unreported` | counter | unreported units lost with a bucket replaced in a full slot |
//! | `ctxgate_ratelimit.shared_record_invalid` | counter | shared-data records that did not decode: the request is handled by `on_contention`, the record is left alone |
//! | `ctxgate_ratelimit.bucket.evictions` | counter | buckets replaced in a full slot |
//! | `ctxgate_ratelimit.bucket.contended` | counter | bucket updates that ran out of CAS attempts |
//! | `ctxgate_ratelimit.sync.dirty_overflow` | counter | keys not tracked for reporting because a worker's set was full |
//! | `ctxgate_ratelimit.adaptive.multiplier_permille` | gauge | limit multiplier in force, x1000 (1000 = no reduction) |
//! | `ctxgate_ratelimit.adaptive.latency_ewma_ms` | gauge | upstream latency EWMA, all workers |
//! | `ctxgate_ratelimit.adaptive.in_flight` | gauge | requests in flight to the upstream, all workers |

use ctxgate_core::ratelimit::adaptive::Combined;
use ctxgate_core::ratelimit::config::FailureMode;
use ctxgate_core::ratelimit::report::Dropped;
use ctxgate_core::ratelimit::{Admitted, DecidedBy, LimiterState, Refusal};
use ctxgate_glue::{Counter, Gauge};

pub struct Metrics {
    allowed_local: Counter,
    allowed_rls: Counter,
    allowed_fallback_local: Counter,
    allowed_fallback_allow: Counter,
    allowed_contention: Counter,
    pub cost: Counter,
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
    invalid_records: Counter,
    lost_unreported: Counter,
    reports_pending: Gauge,
    /// This worker's share of `reports_pending` as last added.
    pending_reported: std::cell::Cell<u64>,
    reports_dropped: Counter,
    reports_dropped_hits: Counter,
    dropped_seen: std::cell::Cell<Dropped>,
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
            invalid_records: c("shared_record_invalid"),
            lost_unreported: c("bucket.lost_unreported"),
            reports_pending: g("reports.pending"),
            pending_reported: std::cell::Cell::new(0),
            reports_dropped: c("reports.dropped"),
            reports_dropped_hits: c("reports.dropped_hits"),
            dropped_seen: std::cell::Cell::new(Dropped::default()),
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
        let counts = &mut state.counts;
        for (counter, value) in [
            (self.evictions, &mut counts.evictions),
            (self.contended, &mut counts.contended),
            (self.dirty_overflow, &mut counts.dirty_overflow),
            (self.invalid_records, &mut counts.invalid_records),
            (self.lost_unreported, &mut counts.lost_unreported),
        ] {
            if *value > 0 {
                counter.add(std::mem::take(value));
            }
        }
        if let Some(adaptive) = state.adaptive.as_mut()
            && adaptive.invalid_records > 0
        {
            self.invalid_records
                .add(std::mem::take(&mut adaptive.invalid_records));
        }
        let dropped = state.outbox.dropped;
        let seen = self.dropped_seen.get();
        let new = (dropped.expired + dropped.overflow).saturating_sub(seen.expired + seen.overflow);
        if new > 0 {
            self.reports_dropped.add(new);
            self.reports_dropped_hits
                .add(dropped.hits.saturating_sub(seen.hits));
            self.dropped_seen.set(dropped);
        }
        // Every worker adds its own change: the gauge is the sum over
        // workers, not whichever worker wrote last.
        let pending = u64::try_from(state.outbox.len()).unwrap_or(u64::MAX);
        let before = self.pending_reported.replace(pending);
        if pending != before {
            self.reports_pending.add(
                i64::try_from(pending).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0),
            );
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
