//! The rate-limit stage: [`RateLimiter`] with its per-worker state, the
//! RLS question of a request (the driver pauses the request and enforces
//! the deadline), background reports to the RLS on the worker's tick, the
//! adaptive measurements, and its metrics.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_ratelimit.allowed.<by>` | counter | requests let through, by who decided: `local`, `rls`, `fallback_local`, `fallback_allow`, `contention` |
//! | `ctxgate_ratelimit.cost` | counter | read-equivalents admitted (including what streamed bodies were charged) |
//! | `ctxgate_ratelimit.refused.<reason>` | counter | refusals: `local_limit`, `global_limit`, `queue_full`, `contention`, `rls_unavailable` |
//! | `ctxgate_ratelimit.failure_mode.<mode>` | counter | RLS failures or timeouts handled by the failure mode in force: `local_fallback`, `allow`, `deny` |
//! | `ctxgate_ratelimit.rls.sent` / `.ok` / `.failed` / `.timeout` | counter | RLS calls deciding a request; `timeout` = deadline enforced by the pipeline |
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

use std::collections::HashMap;

use super::Step;
use super::request::Request;
use crate::host::{Attribute, CallId, CallResponse, GrpcCall, Host};
use crate::metrics::{Counter, Gauge, Metrics};
use crate::ratelimit::adaptive::Adaptive;
use crate::ratelimit::config::FailureMode;
use crate::ratelimit::report::{Dropped, REPORT_HEADER, Report};
use crate::ratelimit::rls::{self, decode_response};
use crate::ratelimit::{
    Admitted, DecidedBy, LimiterState, LocalDecision, RateLimiter, Refusal, Refused, RequestFacts,
    RlsCall,
};
use crate::reply::grpc;

/// How much later than the pipeline's deadline the proxy's own call
/// timeout fires (a backstop: the driver enforces the deadline).
const PROXY_TIMEOUT_SLACK_MS: u64 = 50;
/// Timer resolution while RLS calls may be pending (deadline enforcement).
const WATCHDOG_TICK_MS: u64 = 5;

struct Counters {
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
    rls_sent: Counter,
    rls_ok: Counter,
    rls_failed: Counter,
    rls_timeout: Counter,
    sync_sent: Counter,
    sync_ok: Counter,
    sync_failed: Counter,
    evictions: Counter,
    contended: Counter,
    dirty_overflow: Counter,
    invalid_records: Counter,
    lost_unreported: Counter,
    reports_pending: Gauge,
    reports_dropped: Counter,
    reports_dropped_hits: Counter,
    multiplier: Gauge,
    latency: Gauge,
    in_flight: Gauge,
}

impl Counters {
    fn new(metrics: &mut Metrics) -> Counters {
        let mut c = |name: &str| metrics.counter(&format!("ctxgate_ratelimit.{name}"));
        let refused = Refusal::ALL
            .iter()
            .map(|r| (*r, c(&format!("refused.{}", r.code()))))
            .collect();
        Counters {
            allowed_local: c("allowed.local"),
            allowed_rls: c("allowed.rls"),
            allowed_fallback_local: c("allowed.fallback_local"),
            allowed_fallback_allow: c("allowed.fallback_allow"),
            allowed_contention: c("allowed.contention"),
            cost: c("cost"),
            refused,
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
            reports_dropped: c("reports.dropped"),
            reports_dropped_hits: c("reports.dropped_hits"),
            reports_pending: metrics.gauge("ctxgate_ratelimit.reports.pending"),
            multiplier: metrics.gauge("ctxgate_ratelimit.adaptive.multiplier_permille"),
            latency: metrics.gauge("ctxgate_ratelimit.adaptive.latency_ewma_ms"),
            in_flight: metrics.gauge("ctxgate_ratelimit.adaptive.in_flight"),
        }
    }
}

/// What the stage keeps for one request.
#[derive(Default)]
pub struct RateLimitStream {
    /// What was admitted, for the response headers and the body charge.
    admitted: Option<Admitted>,
    /// When the request was let through (adaptive latency), if it was.
    started_ms: Option<u64>,
    /// The question the request waits on.
    call: Option<Box<RlsCall>>,
}

pub struct RateLimitStage {
    limiter: RateLimiter,
    state: LimiterState,
    counters: Counters,
    /// Reports in flight: call -> report.
    reports: HashMap<CallId, Report>,
    next_sync_ms: u64,
    next_publish_ms: u64,
    /// This worker's share of `reports.pending` as last added.
    pending_counted: u64,
    dropped_counted: Dropped,
}

impl RateLimitStream {
    /// The cost admitted (body charges included), if the request was.
    pub fn admitted_cost(&self) -> Option<u64> {
        self.admitted.as_ref().map(|a| a.cost)
    }

    /// How full the tightest bucket was when the request was admitted, in
    /// thousandths of its capacity (with `response_headers` on).
    pub fn burst_permille(&self) -> Option<u64> {
        let view = self.admitted.as_ref()?.view?;
        let used = view.limit.saturating_sub(view.remaining);
        used.saturating_mul(1000).checked_div(view.limit)
    }
}

impl RateLimitStage {
    /// `reporter`: a random id for this worker (report ids).
    pub fn new(
        limiter: RateLimiter,
        reporter: u64,
        host: &dyn Host,
        metrics: &mut Metrics,
    ) -> RateLimitStage {
        limiter.init_shared(host.shared());
        let adaptive = limiter
            .adaptive
            .clone()
            .map(|a| Adaptive::new(a, &limiter.namespace, host.shared()));
        log::info!(
            "ratelimit: {} + {} slots, global {}, adaptive {}",
            limiter.table.slot_count(),
            limiter.anonymous_table.slot_count(),
            limiter
                .global
                .as_ref()
                .map_or("off".to_owned(), |g| format!(
                    "{:?} via cluster {}",
                    g.mode, g.cluster
                )),
            if adaptive.is_some() { "on" } else { "off" },
        );
        let mut state = LimiterState::new(&limiter, reporter);
        state.adaptive = adaptive;
        RateLimitStage {
            limiter,
            state,
            counters: Counters::new(metrics),
            reports: HashMap::new(),
            next_sync_ms: 0,
            next_publish_ms: 0,
            pending_counted: 0,
            dropped_counted: Dropped::default(),
        }
    }

    /// How often the worker must tick for this stage.
    pub fn tick_ms(&self) -> Option<u64> {
        match (&self.limiter.global, &self.state.adaptive) {
            (Some(_), _) => Some(WATCHDOG_TICK_MS),
            (None, Some(a)) => Some(a.publish_interval_ms()),
            (None, None) => None,
        }
    }

    pub fn on_request(
        &mut self,
        host: &mut dyn Host,
        request: &mut Request,
        stream: &mut RateLimitStream,
        metrics: &mut Metrics,
    ) -> Step {
        if request.price == Some(0) {
            // Free (an MCP `initialize`, `ping`, listing or notification).
            return Step::Next;
        }
        let established = request.established(host).clone();
        let client_address = match established.identity {
            None => request.attribute(host, Attribute::ClientAddress),
            Some(_) => None,
        };
        let route = match self.limiter.keys_by_route() {
            true => request.attribute(host, Attribute::RouteName),
            false => None,
        };
        let now = host.now_ms();
        let facts = RequestFacts {
            head: request.head(),
            identity: established.identity,
            operation: established.operation,
            client_address,
            route,
            end_of_stream: request.end_of_stream,
            price: request.price,
        };
        let step = self
            .limiter
            .check(&mut self.state, host.shared(), &facts, now);
        self.count_state(metrics);
        match step {
            LocalDecision::Allow(admitted) => {
                self.settle(Ok(admitted), 0, stream, now, host, metrics)
            }
            LocalDecision::Deny(refused) => {
                self.settle(Err(refused), 0, stream, now, host, metrics)
            }
            LocalDecision::AskRls(call) => {
                let id = call.report.id.header_value();
                let metadata = [(REPORT_HEADER, id.as_bytes())];
                let grpc = GrpcCall {
                    cluster: &call.cluster,
                    service: rls::SERVICE,
                    method: rls::METHOD,
                    metadata: &metadata,
                    message: &call.report.message,
                    timeout_ms: call.timeout_ms.saturating_add(PROXY_TIMEOUT_SLACK_MS),
                };
                match host.grpc_call(Some(request.stream), &grpc) {
                    Ok(call_id) => {
                        metrics.inc(self.counters.rls_sent);
                        let deadline_ms = now.saturating_add(call.timeout_ms);
                        stream.call = Some(call);
                        Step::Wait {
                            call: call_id,
                            deadline_ms,
                        }
                    }
                    Err(e) => {
                        metrics.inc(self.counters.rls_failed);
                        log::warn!("cannot call the RLS cluster {}: {e}", call.cluster);
                        let outcome = self.limiter.on_rls_failure(&mut self.state, &call);
                        self.settle(outcome, 0, stream, now, host, metrics)
                    }
                }
            }
        }
    }

    /// The RLS answered the question `stream` waits on. `body_bytes`
    /// arrived while it waited (a body of unknown length).
    pub fn on_answer(
        &mut self,
        host: &mut dyn Host,
        stream: &mut RateLimitStream,
        response: &CallResponse,
        body_bytes: u64,
        metrics: &mut Metrics,
    ) -> Step {
        let Some(call) = stream.call.take() else {
            return Step::Next;
        };
        let now = host.now_ms();
        let outcome = match response {
            CallResponse::Grpc {
                status: grpc::OK,
                message,
            } => match decode_response(message, call.report.descriptors()) {
                Ok(answer) => {
                    metrics.inc(self.counters.rls_ok);
                    self.limiter
                        .on_rls_answer(&mut self.state, host.shared(), &call, &answer, now)
                }
                Err(e) => {
                    metrics.inc(self.counters.rls_failed);
                    log::debug!("RLS answer does not decode: {e:?}");
                    self.limiter.on_rls_failure(&mut self.state, &call)
                }
            },
            CallResponse::Grpc { status, .. } => {
                // DEADLINE_EXCEEDED: the proxy's timer beat the driver's.
                if *status == grpc::DEADLINE_EXCEEDED {
                    metrics.inc(self.counters.rls_timeout);
                } else {
                    metrics.inc(self.counters.rls_failed);
                }
                log::debug!("RLS call failed: grpc status {status}");
                self.limiter.on_rls_failure(&mut self.state, &call)
            }
            CallResponse::Http { .. } => {
                metrics.inc(self.counters.rls_failed);
                self.limiter.on_rls_failure(&mut self.state, &call)
            }
        };
        self.settle(outcome, body_bytes, stream, now, host, metrics)
    }

    /// The RLS did not answer by the deadline: the failure mode applies.
    pub fn on_deadline(
        &mut self,
        host: &mut dyn Host,
        stream: &mut RateLimitStream,
        body_bytes: u64,
        metrics: &mut Metrics,
    ) -> Step {
        metrics.inc(self.counters.rls_timeout);
        let Some(call) = stream.call.take() else {
            return Step::Next;
        };
        let outcome = self.limiter.on_rls_failure(&mut self.state, &call);
        let now = host.now_ms();
        self.settle(outcome, body_bytes, stream, now, host, metrics)
    }

    /// Lets the request through or refuses it, after charging the
    /// `body_bytes` that arrived while it waited.
    fn settle(
        &mut self,
        outcome: Result<Admitted, Refused>,
        body_bytes: u64,
        stream: &mut RateLimitStream,
        now: u64,
        host: &mut dyn Host,
        metrics: &mut Metrics,
    ) -> Step {
        let outcome = match outcome {
            Ok(mut admitted) if body_bytes > 0 => match admitted.meter.as_mut() {
                Some(meter) => {
                    let charged = self.limiter.on_body(
                        &mut self.state,
                        host.shared(),
                        meter,
                        body_bytes,
                        now,
                    );
                    charged.map(|charge| {
                        admitted.cost = admitted.cost.saturating_add(charge.extra);
                        admitted.view = charge.view.or(admitted.view);
                        admitted
                    })
                }
                None => Ok(admitted),
            },
            other => other,
        };
        self.count_state(metrics);
        match outcome {
            Ok(admitted) => {
                self.count_allowed(&admitted, metrics);
                stream.admitted = Some(admitted);
                stream.started_ms = Some(now);
                if let Some(a) = self.state.adaptive.as_mut() {
                    a.started();
                }
                Step::Next
            }
            Err(refused) => {
                self.count_refused(refused.refusal, metrics);
                Step::Reply(refused.reply)
            }
        }
    }

    /// Charges body bytes of a request admitted with a body of unknown
    /// length. `Err` carries the refusal when the bucket cannot pay.
    pub fn on_body(
        &mut self,
        host: &mut dyn Host,
        stream: &mut RateLimitStream,
        new_bytes: u64,
        metrics: &mut Metrics,
    ) -> Step {
        let Some(admitted) = stream.admitted.as_mut() else {
            return Step::Next;
        };
        let Some(meter) = admitted.meter.as_mut() else {
            return Step::Next;
        };
        let charged = self.limiter.on_body(
            &mut self.state,
            host.shared(),
            meter,
            new_bytes,
            host.now_ms(),
        );
        self.count_state(metrics);
        match charged {
            Ok(charge) => {
                metrics.add(self.counters.cost, charge.extra);
                admitted.view = charge.view.or(admitted.view);
                Step::Next
            }
            Err(refused) => {
                self.count_refused(refused.refusal, metrics);
                stream.admitted = None;
                if stream.started_ms.take().is_some()
                    && let Some(a) = self.state.adaptive.as_mut()
                {
                    a.finished(None);
                }
                Step::Reply(refused.reply)
            }
        }
    }

    /// Response headers to add (`x-ratelimit-*`), and the latency sample.
    pub fn on_response(
        &mut self,
        host: &mut dyn Host,
        stream: &mut RateLimitStream,
        headers: &mut Vec<(String, String)>,
    ) {
        if let Some(admitted) = &stream.admitted {
            headers.extend(admitted.response_headers());
        }
        if let Some(started) = stream.started_ms.take()
            && let Some(a) = self.state.adaptive.as_mut()
        {
            a.finished(Some(host.now_ms().saturating_sub(started)));
        }
    }

    /// The stream ended (possibly without a response: reset, timeout).
    /// The limits that apply to a caller.
    pub fn limits_of(
        &self,
        identity: Option<&crate::contract::Caller>,
    ) -> std::borrow::Cow<'_, [crate::ratelimit::config::LimitConfig]> {
        self.limiter.limit_configs(identity)
    }

    pub fn on_done(&mut self, stream: &mut RateLimitStream) {
        if stream.started_ms.take().is_some()
            && let Some(a) = self.state.adaptive.as_mut()
        {
            a.finished(None);
        }
    }

    /// Background reports and adaptive measurements.
    pub fn on_tick(&mut self, host: &mut dyn Host, metrics: &mut Metrics) {
        let now = host.now_ms();
        if let Some(global) = &self.limiter.global
            && now >= self.next_sync_ms
        {
            self.next_sync_ms = now.saturating_add(global.sync_interval_ms);
            let cluster = global.cluster.clone();
            let timeout_ms = global.timeout_ms.max(100);
            let reports = self
                .limiter
                .sync_reports(&mut self.state, host.shared(), now);
            for report in reports {
                let id = report.id.header_value();
                let metadata = [(REPORT_HEADER, id.as_bytes())];
                let call = GrpcCall {
                    cluster: &cluster,
                    service: rls::SERVICE,
                    method: rls::METHOD,
                    metadata: &metadata,
                    message: &report.message,
                    timeout_ms,
                };
                match host.grpc_call(None, &call) {
                    Ok(call_id) => {
                        metrics.inc(self.counters.sync_sent);
                        self.reports.insert(call_id, report);
                    }
                    Err(_) => {
                        metrics.inc(self.counters.sync_failed);
                        self.limiter.on_sync_failure(&mut self.state, report.id);
                    }
                }
            }
            self.count_state(metrics);
        }
        if let Some(adaptive) = self.state.adaptive.as_mut()
            && now >= self.next_publish_ms
        {
            self.next_publish_ms = now.saturating_add(adaptive.publish_interval_ms());
            adaptive.publish_and_combine(host.shared(), now);
            let combined = adaptive.combined();
            let c = &self.counters;
            metrics.set(c.multiplier, (combined.multiplier * 1000.0).round() as u64);
            metrics.set(c.latency, combined.ewma_ms.round() as u64);
            metrics.set(
                c.in_flight,
                combined.others_in_flight + adaptive.in_flight(),
            );
        }
    }

    /// Takes the answer to a background report; `false` if the call is
    /// not one.
    pub fn on_call_response(
        &mut self,
        host: &mut dyn Host,
        call: CallId,
        response: &CallResponse,
        metrics: &mut Metrics,
    ) -> bool {
        let Some(report) = self.reports.remove(&call) else {
            return false;
        };
        let answer = match response {
            CallResponse::Grpc {
                status: grpc::OK,
                message,
            } => decode_response(message, report.descriptors()).ok(),
            _ => None,
        };
        match answer {
            Some(answer) => {
                metrics.inc(self.counters.sync_ok);
                self.limiter.on_sync_answer(
                    &mut self.state,
                    host.shared(),
                    &report,
                    &answer,
                    host.now_ms(),
                );
            }
            None => {
                metrics.inc(self.counters.sync_failed);
                log::debug!("RLS report {} failed", report.id.header_value());
                self.limiter.on_sync_failure(&mut self.state, report.id);
            }
        }
        self.count_state(metrics);
        true
    }

    fn count_allowed(&self, admitted: &Admitted, metrics: &mut Metrics) {
        let c = &self.counters;
        metrics.add(c.cost, admitted.cost);
        match admitted.decided_by {
            DecidedBy::Local => metrics.inc(c.allowed_local),
            DecidedBy::Rls => metrics.inc(c.allowed_rls),
            DecidedBy::Contention => metrics.inc(c.allowed_contention),
            DecidedBy::Fallback(FailureMode::LocalFallback) => {
                metrics.inc(c.failure_local);
                metrics.inc(c.allowed_fallback_local);
            }
            DecidedBy::Fallback(_) => {
                metrics.inc(c.failure_allow);
                metrics.inc(c.allowed_fallback_allow);
            }
        }
    }

    fn count_refused(&self, refusal: Refusal, metrics: &mut Metrics) {
        let c = &self.counters;
        if let Some((_, counter)) = c.refused.iter().find(|(r, _)| *r == refusal) {
            metrics.inc(*counter);
        }
        if refusal == Refusal::RlsUnavailable {
            metrics.inc(c.failure_deny);
        }
    }

    /// Moves the state's event counts into metrics.
    fn count_state(&mut self, metrics: &mut Metrics) {
        let c = &self.counters;
        let counts = &mut self.state.counts;
        for (counter, value) in [
            (c.evictions, &mut counts.evictions),
            (c.contended, &mut counts.contended),
            (c.dirty_overflow, &mut counts.dirty_overflow),
            (c.invalid_records, &mut counts.invalid_records),
            (c.lost_unreported, &mut counts.lost_unreported),
        ] {
            if *value > 0 {
                metrics.add(counter, std::mem::take(value));
            }
        }
        if let Some(adaptive) = self.state.adaptive.as_mut()
            && adaptive.invalid_records > 0
        {
            metrics.add(
                c.invalid_records,
                std::mem::take(&mut adaptive.invalid_records),
            );
        }
        let dropped = self.state.outbox.dropped;
        let seen = self.dropped_counted;
        let new = (dropped.expired + dropped.overflow).saturating_sub(seen.expired + seen.overflow);
        if new > 0 {
            metrics.add(c.reports_dropped, new);
            metrics.add(
                c.reports_dropped_hits,
                dropped.hits.saturating_sub(seen.hits),
            );
            self.dropped_counted = dropped;
        }
        // Every worker adds its own change: the gauge is the sum over
        // workers, not whichever worker wrote last.
        let pending = u64::try_from(self.state.outbox.len()).unwrap_or(u64::MAX);
        let before = std::mem::replace(&mut self.pending_counted, pending);
        if pending != before {
            metrics.add_to_gauge(
                c.reports_pending,
                i64::try_from(pending).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0),
            );
        }
    }
}
