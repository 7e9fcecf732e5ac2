//! ctxgate breaker: the proxy-wasm glue around `ctxgate_core::breaker`.
//!
//! On request headers the matching breaker admits the request (closed or
//! as a half-open probe), refuses it, or routes it to the fallback; on
//! response headers the outcome is recorded. Breaker state lives in shared
//! data, so every worker trips and recovers together.

use std::rc::Rc;
use std::time::Duration;

use ctxgate_core::breaker::{Admission, Breakers, Selection, State, Transition};
use ctxgate_glue::{self as glue, Counter, Gauge, SharedData};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BreakerRoot::default()) });
}}

/// How often each worker refreshes the state gauges.
const GAUGE_TICK: Duration = Duration::from_secs(1);

/// Metrics of one breaker (`<name>` is the breaker's name):
///
/// | name | type | meaning |
/// |---|---|---|
/// | `ctxgate_breaker.<name>.state` | gauge | 0 closed, 1 open, 2 half-open |
/// | `ctxgate_breaker.<name>.opened` | counter | transitions to open |
/// | `ctxgate_breaker.<name>.half_opened` | counter | transitions to half-open |
/// | `ctxgate_breaker.<name>.closed` | counter | transitions back to closed |
/// | `ctxgate_breaker.<name>.rejected` | counter | requests refused while open |
/// | `ctxgate_breaker.<name>.fallback` | counter | requests sent to the fallback while open |
/// | `ctxgate_breaker.<name>.probes` | counter | half-open probe requests |
/// | `ctxgate_breaker.<name>.failures` | counter | upstream outcomes counted as failures |
/// | `ctxgate_breaker.<name>.shared_record_invalid` | counter | breaker records in shared data that did not decode (the breaker fails open and leaves them alone) |
struct BreakerMetrics {
    state: Gauge,
    opened: Counter,
    half_opened: Counter,
    closed: Counter,
    rejected: Counter,
    fallback: Counter,
    probes: Counter,
    failures: Counter,
    invalid_records: Counter,
}

impl BreakerMetrics {
    fn new(name: &str) -> BreakerMetrics {
        let c = |m: &str| Counter::new(&format!("ctxgate_breaker.{name}.{m}"));
        BreakerMetrics {
            state: Gauge::new(&format!("ctxgate_breaker.{name}.state")),
            opened: c("opened"),
            half_opened: c("half_opened"),
            closed: c("closed"),
            rejected: c("rejected"),
            fallback: c("fallback"),
            probes: c("probes"),
            failures: c("failures"),
            invalid_records: c("shared_record_invalid"),
        }
    }

    fn transition(&self, name: &str, transition: Option<Transition>) {
        let (counter, state) = match transition {
            None => return,
            Some(Transition::Opened) => (self.opened, State::Open),
            Some(Transition::HalfOpened) => (self.half_opened, State::HalfOpen),
            Some(Transition::Closed) => (self.closed, State::Closed),
        };
        counter.inc();
        self.state.set(state.code());
        log::info!("breaker {name} is now {state}");
    }
}

struct Shared {
    breakers: Breakers,
    owned_headers: Vec<String>,
    metrics: Vec<BreakerMetrics>,
}

#[derive(Default)]
struct BreakerRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for BreakerRoot {}

impl RootContext for BreakerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let breakers = match Breakers::from_json(&config, &glue::shared_namespace()) {
            Ok(b) => b,
            Err(e) => {
                log::error!("invalid configuration: {e}");
                return false;
            }
        };
        for b in &breakers.breakers {
            b.init_shared(&SharedData);
        }
        let metrics = breakers
            .breakers
            .iter()
            .map(|b| BreakerMetrics::new(b.name()))
            .collect();
        log::info!(
            "configured breakers: {}",
            breakers
                .breakers
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let owned_headers = breakers.owned_headers();
        self.shared = Some(Rc::new(Shared {
            breakers,
            owned_headers,
            metrics,
        }));
        glue::set_tick_period(GAUGE_TICK);
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = &self.shared else { return };
        for (breaker, metrics) in shared.breakers.breakers.iter().zip(&shared.metrics) {
            metrics.state.set(breaker.state(&SharedData).code());
            let invalid = breaker.invalid_records.take();
            if invalid > 0 {
                metrics.invalid_records.add(invalid);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BreakerRequest {
            shared: self.shared.clone()?,
            admitted: None,
            degraded: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BreakerRequest {
    shared: Rc<Shared>,
    /// The breaker (index) and how the request passed it, while its
    /// outcome is pending.
    admitted: Option<(usize, Admission)>,
    /// Response header marking a degraded (fallback) response.
    degraded: Option<(String, String)>,
}

impl Context for BreakerRequest {}

impl HttpContext for BreakerRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let mut snapshot = glue::RequestSnapshot::capture();
        // A client must not pick the fallback route itself.
        for name in &shared.owned_headers {
            snapshot.remove(name);
        }
        let head = snapshot.head();
        let route = if shared.breakers.needs_route {
            glue::property_string(&["xds", "route_name"])
        } else {
            None
        };
        let cluster = if shared.breakers.needs_cluster {
            glue::property_string(&["xds", "cluster_name"])
        } else {
            None
        };
        let selection = Selection {
            route: route.as_deref(),
            cluster: cluster.as_deref(),
            head,
        };
        let Some(index) = shared.breakers.select(&selection).and_then(|b| {
            shared
                .breakers
                .breakers
                .iter()
                .position(|x| std::ptr::eq(x, b))
        }) else {
            return Action::Continue;
        };
        let (Some(breaker), Some(metrics)) = (
            shared.breakers.breakers.get(index),
            shared.metrics.get(index),
        ) else {
            return Action::Continue;
        };
        let (admission, transition) = breaker.admit(&SharedData, &head, glue::now_ms());
        metrics.transition(breaker.name(), transition);
        match admission {
            Admission::Reject(reply) => {
                metrics.rejected.inc();
                glue::send_local_reply(&reply);
                Action::Pause
            }
            Admission::Fallback {
                request_header,
                response_header,
            } => {
                metrics.fallback.inc();
                glue::set_request_header(&request_header.0, &request_header.1);
                self.degraded = Some(response_header);
                Action::Continue
            }
            admission @ (Admission::Pass | Admission::Probe { .. }) => {
                if matches!(admission, Admission::Probe { .. }) {
                    metrics.probes.inc();
                }
                if let Some(timeout) = breaker.config.request_timeout_ms {
                    glue::set_request_header(
                        "x-envoy-upstream-rq-timeout-ms",
                        &timeout.to_string(),
                    );
                }
                self.admitted = Some((index, admission));
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some((name, value)) = &self.degraded {
            glue::set_response_header(name, value);
        }
        let Some((index, admission)) = self.admitted.take() else {
            return Action::Continue;
        };
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u16>().ok());
        let shared = Rc::clone(&self.shared);
        if let (Some(breaker), Some(metrics)) = (
            shared.breakers.breakers.get(index),
            shared.metrics.get(index),
        ) {
            let failed = status.is_none_or(|s| breaker.is_failure(s));
            if failed {
                metrics.failures.inc();
            }
            let transition = breaker.record(&SharedData, &admission, Some(failed), glue::now_ms());
            metrics.transition(breaker.name(), transition);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Admitted but never answered (client went away): release a probe.
        if let Some((index, admission)) = self.admitted.take()
            && let Some(breaker) = self.shared.breakers.breakers.get(index)
        {
            breaker.record(&SharedData, &admission, None, glue::now_ms());
        }
    }
}
