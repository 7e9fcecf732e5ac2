//! ctxgate ratelimit: the proxy-wasm glue around `ctxgate_core::ratelimit`.
//!
//! Each request's context reads the identity and operation the auth filter
//! left in filter state, asks [`RateLimiter::check`], and applies the step:
//! forward, refuse, or pause and ask the Rate Limit Service over gRPC. A
//! body of unknown length is charged as it streams.
//!
//! The root context (one per worker VM) runs a short timer that
//! * enforces the RLS deadline itself: a call that has not answered by its
//!   deadline is cancelled and the failure mode applies, even if Envoy
//!   queued the call somewhere;
//! * sends reports to the RLS every `sync_interval_ms`: local consumption
//!   (hierarchical mode) and every report an earlier call did not get
//!   acknowledged, with its original id (`x-ctxgate-report` metadata), so
//!   the RLS counts it once;
//! * publishes and combines the adaptive measurements.

mod metrics;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use ctxgate_core::ratelimit::adaptive::Adaptive;
use ctxgate_core::ratelimit::report::{REPORT_HEADER, Report};
use ctxgate_core::ratelimit::rls::{self, decode_response};
use ctxgate_core::ratelimit::{
    Admitted, LimiterState, RateLimiter, Refused, RequestFacts, RlsCall, Step,
};
use ctxgate_glue::{self as glue, SharedData};
use metrics::Metrics;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RateLimitRoot::default()) });
}}

/// Timer resolution when RLS calls may be pending (deadline enforcement).
const WATCHDOG_TICK: Duration = Duration::from_millis(5);
/// How much later than the filter's deadline Envoy's own call timeout fires.
const ENVOY_TIMEOUT_SLACK_MS: u64 = 50;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;

/// A paused request waiting for the RLS.
struct Pending {
    token: u32,
    deadline_ms: u64,
    call: Box<RlsCall>,
    /// Body bytes that arrived meanwhile (buffered by Envoy), to charge
    /// when the request is let through.
    body_bytes: u64,
}

/// What the watchdog decided for a request whose RLS call was late; the
/// request's context picks it up in its next callback.
struct Resolved {
    admitted: Option<Admitted>,
    resumed_ms: u64,
}

struct Shared {
    limiter: RateLimiter,
    state: RefCell<LimiterState>,
    pending: RefCell<HashMap<u32, Pending>>,
    resolved: RefCell<HashMap<u32, Resolved>>,
    metrics: Metrics,
}

#[derive(Default)]
struct RateLimitRoot {
    shared: Option<Rc<Shared>>,
    /// Reports in flight: call token -> report.
    reports: HashMap<u32, Report>,
    next_sync_ms: u64,
    next_publish_ms: u64,
}

/// The gRPC metadata naming a report.
fn report_metadata(report: &Report) -> String {
    report.id.header_value()
}

impl Context for RateLimitRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (Some(shared), Some(report)) = (&self.shared, self.reports.remove(&token_id)) else {
            return;
        };
        let body = self
            .get_grpc_call_response_body(0, response_size)
            .unwrap_or_default();
        let mut state = shared.state.borrow_mut();
        match (status_code, decode_response(&body)) {
            (0, Ok(answer)) => {
                shared.metrics.sync_ok.inc();
                shared.limiter.on_sync_answer(
                    &mut state,
                    &SharedData,
                    &report,
                    &answer,
                    glue::now_ms(),
                );
            }
            (status, result) => {
                shared.metrics.sync_failed.inc();
                log::debug!(
                    "RLS report {} failed: grpc status {status}, {:?}",
                    report.id.header_value(),
                    result.err()
                );
                shared.limiter.on_sync_failure(&mut state, report.id);
            }
        }
        shared.metrics.record_state(&mut state);
    }
}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let namespace = glue::shared_namespace();
        let (secret, reporter) = match (glue::secret(&namespace), glue::random_bytes::<8>()) {
            (Ok(secret), Some(reporter)) => (secret, u64::from_le_bytes(reporter)),
            (Err(e), _) => {
                log::error!("cannot start: {e}");
                return false;
            }
            (_, None) => {
                log::error!("cannot start: the host gave no random bytes");
                return false;
            }
        };
        let limiter = match RateLimiter::from_json(&config, &namespace, secret) {
            Ok(limiter) => limiter,
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        limiter.init_shared(&SharedData);
        let adaptive = limiter
            .adaptive
            .clone()
            .map(|a| Adaptive::new(a, &limiter.namespace, &SharedData));
        let tick = match (&limiter.global, &adaptive) {
            (Some(_), _) => Some(WATCHDOG_TICK),
            (None, Some(a)) => Some(Duration::from_millis(a.publish_interval_ms())),
            (None, None) => None,
        };
        if let Some(tick) = tick {
            glue::set_tick_period(tick);
        }
        log::info!(
            "configured: {} + {} slots, global {}, adaptive {}",
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
        let metrics = Metrics::new();
        self.shared = Some(Rc::new(Shared {
            limiter,
            state: RefCell::new(state),
            pending: RefCell::new(HashMap::new()),
            resolved: RefCell::new(HashMap::new()),
            metrics,
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = glue::now_ms();
        shared.enforce_deadlines(now);
        if let Some(global) = &shared.limiter.global
            && now >= self.next_sync_ms
        {
            self.next_sync_ms = now.saturating_add(global.sync_interval_ms);
            let reports =
                shared
                    .limiter
                    .sync_reports(&mut shared.state.borrow_mut(), &SharedData, now);
            for report in reports {
                let timeout = Duration::from_millis(global.timeout_ms.max(100));
                let id = report_metadata(&report);
                match self.dispatch_grpc_call(
                    &global.cluster,
                    rls::SERVICE,
                    rls::METHOD,
                    vec![(REPORT_HEADER, id.as_bytes())],
                    Some(&report.message),
                    timeout,
                ) {
                    Ok(token) => {
                        shared.metrics.sync_sent.inc();
                        self.reports.insert(token, report);
                    }
                    Err(_) => {
                        shared.metrics.sync_failed.inc();
                        shared
                            .limiter
                            .on_sync_failure(&mut shared.state.borrow_mut(), report.id);
                    }
                }
            }
            shared.metrics.record_state(&mut shared.state.borrow_mut());
        }
        let mut state = shared.state.borrow_mut();
        if let Some(adaptive) = state.adaptive.as_mut()
            && now >= self.next_publish_ms
        {
            self.next_publish_ms = now.saturating_add(adaptive.publish_interval_ms());
            adaptive.publish_and_combine(&SharedData, now);
            let combined = adaptive.combined();
            shared
                .metrics
                .record_adaptive(&combined, adaptive.in_flight());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(RateLimitRequest {
            shared,
            context_id,
            admitted: None,
            waiting: false,
            refused: false,
            started_ms: None,
            buffered: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Shared {
    /// Requests whose RLS call missed its deadline get the failure mode now.
    fn enforce_deadlines(&self, now: u64) {
        let late: Vec<(u32, Pending)> = {
            let mut pending = self.pending.borrow_mut();
            let ids: Vec<u32> = pending
                .iter()
                .filter(|(_, p)| now >= p.deadline_ms)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (context_id, pending) in late {
            self.metrics.rls_timeout.inc();
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            let _ = hostcalls::cancel_grpc_call(pending.token);
            let outcome = self
                .limiter
                .on_rls_failure(&mut self.state.borrow_mut(), &pending.call);
            let admitted = self.apply(outcome, pending.body_bytes);
            self.resolved.borrow_mut().insert(
                context_id,
                Resolved {
                    admitted,
                    resumed_ms: now,
                },
            );
        }
    }

    /// Sends the refusal, or resumes the paused request, after charging
    /// the `body_bytes` that arrived while it waited (a body of unknown
    /// length). Returns what was admitted, for the response headers.
    fn apply(&self, outcome: Result<Admitted, Refused>, body_bytes: u64) -> Option<Admitted> {
        let outcome = match outcome {
            Ok(mut admitted) if body_bytes > 0 => match admitted.meter.as_mut() {
                Some(meter) => {
                    let charged = self.limiter.on_body(
                        &mut self.state.borrow_mut(),
                        &SharedData,
                        meter,
                        body_bytes,
                        glue::now_ms(),
                    );
                    match charged {
                        Ok(charge) => {
                            admitted.cost = admitted.cost.saturating_add(charge.extra);
                            admitted.view = charge.view.or(admitted.view);
                            Ok(admitted)
                        }
                        Err(refused) => Err(refused),
                    }
                }
                None => Ok(admitted),
            },
            other => other,
        };
        match outcome {
            Ok(admitted) => {
                self.metrics.allowed(&admitted);
                self.state
                    .borrow_mut()
                    .adaptive
                    .as_mut()
                    .map(Adaptive::started);
                let _ = hostcalls::resume_http_request();
                Some(admitted)
            }
            Err(refused) => {
                self.metrics.refused(refused.refusal);
                glue::send_local_reply(&refused.reply);
                None
            }
        }
    }
}

struct RateLimitRequest {
    shared: Rc<Shared>,
    context_id: u32,
    admitted: Option<Admitted>,
    /// Paused, waiting for the RLS.
    waiting: bool,
    /// A refusal was sent.
    refused: bool,
    /// When the request was let through (adaptive latency), if it was.
    started_ms: Option<u64>,
    /// The body size Envoy reported at the last body callback, if that
    /// callback paused (Envoy then buffers, and the next callback reports
    /// everything buffered, not just the new bytes).
    buffered: Option<u64>,
}

impl RateLimitRequest {
    fn facts_and_check(&self, end_of_stream: bool) -> Step {
        let snapshot = glue::RequestSnapshot::capture();
        let ctxgate_core::auth::SharedRequest {
            identity,
            operation,
        } = glue::shared_request();
        let client_address = if identity.is_none() {
            glue::property_string(&["source", "address"])
        } else {
            None
        };
        let route = if self.shared.limiter.keys_by_route() {
            glue::property_string(&["xds", "route_name"])
        } else {
            None
        };
        let facts = RequestFacts {
            head: snapshot.head(),
            identity,
            operation,
            client_address,
            route,
            end_of_stream,
        };
        let mut state = self.shared.state.borrow_mut();
        let step = self
            .shared
            .limiter
            .check(&mut state, &SharedData, &facts, glue::now_ms());
        self.shared.metrics.record_state(&mut state);
        step
    }

    fn finish(&mut self) {
        if let Some(started) = self.started_ms.take() {
            let latency = glue::now_ms().saturating_sub(started);
            if let Some(a) = self.shared.state.borrow_mut().adaptive.as_mut() {
                a.finished(Some(latency));
            }
        }
    }

    /// Picks up what the watchdog decided while this request was paused.
    fn take_resolved(&mut self) {
        if let Some(resolved) = self.shared.resolved.borrow_mut().remove(&self.context_id) {
            self.waiting = false;
            if resolved.admitted.is_some() {
                // Resumed: Envoy passed the buffered body on, and counts
                // from zero again.
                self.buffered = None;
                self.started_ms = Some(resolved.resumed_ms);
            } else {
                self.refused = true;
            }
            self.admitted = resolved.admitted;
        }
    }

    /// Lets the request through or refuses it, here and now.
    fn settle(&mut self, outcome: Result<Admitted, Refused>) -> Action {
        let shared = Rc::clone(&self.shared);
        match outcome {
            Ok(admitted) => {
                shared.metrics.allowed(&admitted);
                self.admitted = Some(admitted);
                self.started_ms = Some(glue::now_ms());
                shared
                    .state
                    .borrow_mut()
                    .adaptive
                    .as_mut()
                    .map(Adaptive::started);
                Action::Continue
            }
            Err(refused) => {
                shared.metrics.refused(refused.refusal);
                glue::send_local_reply(&refused.reply);
                self.refused = true;
                Action::Pause
            }
        }
    }
}

impl Context for RateLimitRequest {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let Some(pending) = self.shared.pending.borrow_mut().remove(&self.context_id) else {
            // The watchdog already applied the failure mode.
            return;
        };
        self.waiting = false;
        let body = self
            .get_grpc_call_response_body(0, response_size)
            .unwrap_or_default();
        let shared = Rc::clone(&self.shared);
        let outcome = {
            let mut state = shared.state.borrow_mut();
            match (status_code, decode_response(&body)) {
                (0, Ok(answer)) => {
                    shared.metrics.rls_ok.inc();
                    shared.limiter.on_rls_answer(
                        &mut state,
                        &SharedData,
                        &pending.call,
                        &answer,
                        glue::now_ms(),
                    )
                }
                (status, result) => {
                    // gRPC DEADLINE_EXCEEDED: Envoy's own timer beat ours.
                    if status == GRPC_DEADLINE_EXCEEDED {
                        shared.metrics.rls_timeout.inc();
                    } else {
                        shared.metrics.rls_failed.inc();
                    }
                    log::debug!("RLS call failed: grpc status {status}, {:?}", result.err());
                    shared.limiter.on_rls_failure(&mut state, &pending.call)
                }
            }
        };
        self.admitted = shared.apply(outcome, pending.body_bytes);
        match self.admitted {
            Some(_) => {
                // Resumed: Envoy passed the buffered body on, and counts
                // from zero again.
                self.buffered = None;
                self.started_ms = Some(glue::now_ms());
            }
            None => self.refused = true,
        }
    }
}

impl HttpContext for RateLimitRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        match self.facts_and_check(end_of_stream) {
            Step::Allow(admitted) => self.settle(Ok(admitted)),
            Step::Deny(refused) => self.settle(Err(refused)),
            Step::AskRls(call) => {
                // Envoy's timer is a backstop a little after our own
                // deadline, which the watchdog enforces (and counts).
                let timeout = Duration::from_millis(call.timeout_ms + ENVOY_TIMEOUT_SLACK_MS);
                let id = report_metadata(&call.report);
                let dispatched = self.dispatch_grpc_call(
                    &call.cluster,
                    rls::SERVICE,
                    rls::METHOD,
                    vec![(REPORT_HEADER, id.as_bytes())],
                    Some(&call.report.message),
                    timeout,
                );
                match dispatched {
                    Ok(token) => {
                        shared.metrics.rls_sent.inc();
                        let deadline_ms = glue::now_ms().saturating_add(call.timeout_ms);
                        shared.pending.borrow_mut().insert(
                            self.context_id,
                            Pending {
                                token,
                                deadline_ms,
                                call,
                                body_bytes: 0,
                            },
                        );
                        self.waiting = true;
                        Action::Pause
                    }
                    Err(status) => {
                        shared.metrics.rls_failed.inc();
                        log::warn!("cannot call the RLS cluster {}: {status:?}", call.cluster);
                        let outcome = shared
                            .limiter
                            .on_rls_failure(&mut shared.state.borrow_mut(), &call);
                        self.settle(outcome)
                    }
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.take_resolved();
        let reported = u64::try_from(body_size).unwrap_or(u64::MAX);
        let new_bytes = reported.saturating_sub(self.buffered.take().unwrap_or(0));
        if self.refused {
            self.buffered = Some(reported);
            return Action::Pause;
        }
        if self.waiting {
            // The headers are paused for the RLS: Envoy must buffer the
            // body, not resume the request with it. What arrives is
            // charged once the RLS has answered.
            if let Some(pending) = self.shared.pending.borrow_mut().get_mut(&self.context_id) {
                pending.body_bytes = pending.body_bytes.saturating_add(new_bytes);
            }
            self.buffered = Some(reported);
            return Action::Pause;
        }
        let shared = Rc::clone(&self.shared);
        let Some(admitted) = self.admitted.as_mut() else {
            return Action::Continue;
        };
        let Some(meter) = admitted.meter.as_mut() else {
            return Action::Continue;
        };
        let charged = shared.limiter.on_body(
            &mut shared.state.borrow_mut(),
            &SharedData,
            meter,
            new_bytes,
            glue::now_ms(),
        );
        shared.metrics.record_state(&mut shared.state.borrow_mut());
        match charged {
            Ok(charge) => {
                shared.metrics.cost.add(charge.extra);
                admitted.view = charge.view.or(admitted.view);
                Action::Continue
            }
            Err(refused) => {
                shared.metrics.refused(refused.refusal);
                glue::send_local_reply(&refused.reply);
                self.refused = true;
                self.admitted = None;
                self.started_ms = None;
                if let Some(a) = shared.state.borrow_mut().adaptive.as_mut() {
                    a.finished(None);
                }
                self.buffered = Some(reported);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.take_resolved();
        if let Some(admitted) = &self.admitted {
            for (name, value) in admitted.response_headers() {
                glue::set_response_header(&name, &value);
            }
        }
        self.finish();
        Action::Continue
    }

    fn on_log(&mut self) {
        // A request that never got response headers (reset, timeout).
        if let Some(_started) = self.started_ms.take()
            && let Some(a) = self.shared.state.borrow_mut().adaptive.as_mut()
        {
            a.finished(None);
        }
        self.shared.pending.borrow_mut().remove(&self.context_id);
        self.shared.resolved.borrow_mut().remove(&self.context_id);
    }
}
