//! The breaker stage: circuit breakers shared by every worker through
//! shared data, with degraded fallback routing.
//!
//! On the request the matching breaker admits it (closed, or as a
//! half-open probe), refuses it, or routes it to the fallback; on the
//! response the outcome is recorded.
//!
//! | metric (`<name>`: the breaker's name) | type | meaning |
//! |---|---|---|
//! | `ctxgate_breaker.<name>.state` | gauge | 0 closed, 1 open, 2 half-open |
//! | `ctxgate_breaker.<name>.opened` | counter | transitions to open |
//! | `ctxgate_breaker.<name>.half_opened` | counter | transitions to half-open |
//! | `ctxgate_breaker.<name>.closed` | counter | transitions back to closed |
//! | `ctxgate_breaker.<name>.rejected` | counter | requests refused while open |
//! | `ctxgate_breaker.<name>.fallback` | counter | requests sent to the fallback while open |
//! | `ctxgate_breaker.<name>.probes` | counter | half-open probe requests |
//! | `ctxgate_breaker.<name>.failures` | counter | upstream outcomes counted as failures |
//! | `ctxgate_breaker.<name>.shared_record_invalid` | counter | breaker records in shared data that did not decode (the breaker fails open and leaves them alone) |

use super::Step;
use super::request::Request;
use crate::breaker::{Admission, Breakers, Selection, State, Transition};
use crate::host::{Attribute, Host};
use crate::metrics::{Counter, Gauge, Metrics};

/// How often the state gauges are refreshed.
const GAUGE_TICK_MS: u64 = 1000;

struct Counters {
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

impl Counters {
    fn new(name: &str, metrics: &mut Metrics) -> Counters {
        let mut c = |m: &str| metrics.counter(&format!("ctxgate_breaker.{name}.{m}"));
        let (opened, half_opened, closed) = (c("opened"), c("half_opened"), c("closed"));
        let (rejected, fallback, probes) = (c("rejected"), c("fallback"), c("probes"));
        let (failures, invalid_records) = (c("failures"), c("shared_record_invalid"));
        Counters {
            state: metrics.gauge(&format!("ctxgate_breaker.{name}.state")),
            opened,
            half_opened,
            closed,
            rejected,
            fallback,
            probes,
            failures,
            invalid_records,
        }
    }

    fn transition(&self, name: &str, transition: Option<Transition>, metrics: &mut Metrics) {
        let (counter, state) = match transition {
            None => return,
            Some(Transition::Opened) => (self.opened, State::Open),
            Some(Transition::HalfOpened) => (self.half_opened, State::HalfOpen),
            Some(Transition::Closed) => (self.closed, State::Closed),
        };
        metrics.inc(counter);
        metrics.set(self.state, state.code());
        log::info!("breaker {name} is now {state}");
    }
}

/// What the stage keeps for one request.
#[derive(Default)]
pub struct BreakerStream {
    /// The breaker (index) and how the request passed it, while its
    /// outcome is pending.
    admitted: Option<(usize, Admission)>,
    /// Response header marking a degraded (fallback) response.
    degraded: Option<(String, String)>,
    /// The state of the breaker the request met, if one matched.
    met: Option<State>,
}

impl BreakerStream {
    /// The state of the breaker the request met (`open` when it was
    /// refused or sent to the fallback), if a breaker matched.
    pub fn met(&self) -> Option<State> {
        self.met
    }
}

pub struct BreakerStage {
    breakers: Breakers,
    owned_headers: Vec<String>,
    counters: Vec<Counters>,
    next_gauges_ms: u64,
}

impl BreakerStage {
    pub fn new(breakers: Breakers, host: &dyn Host, metrics: &mut Metrics) -> BreakerStage {
        for b in &breakers.breakers {
            b.init_shared(host.shared());
        }
        let counters = breakers
            .breakers
            .iter()
            .map(|b| Counters::new(b.name(), metrics))
            .collect();
        log::info!(
            "breaker: {}",
            breakers
                .breakers
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let owned_headers = breakers.owned_headers();
        BreakerStage {
            breakers,
            owned_headers,
            counters,
            next_gauges_ms: 0,
        }
    }

    pub fn tick_ms(&self) -> Option<u64> {
        Some(GAUGE_TICK_MS)
    }

    pub fn on_request(
        &self,
        host: &mut dyn Host,
        request: &mut Request,
        stream: &mut BreakerStream,
        metrics: &mut Metrics,
    ) -> Step {
        // A client must not pick the fallback route itself.
        for name in &self.owned_headers {
            request.remove(name);
        }
        let route = match self.breakers.needs_route {
            true => request.attribute(host, Attribute::RouteName),
            false => None,
        };
        let cluster = match self.breakers.needs_cluster {
            true => request.attribute(host, Attribute::ClusterName),
            false => None,
        };
        let selection = Selection {
            route: route.as_deref(),
            cluster: cluster.as_deref(),
            head: request.head(),
        };
        let Some(index) = self.breakers.select(&selection) else {
            return Step::Next;
        };
        let (Some(breaker), Some(counters)) =
            (self.breakers.breakers.get(index), self.counters.get(index))
        else {
            return Step::Next;
        };
        let (admission, transition) = breaker.admit(host.shared(), &request.head(), host.now_ms());
        counters.transition(breaker.name(), transition, metrics);
        stream.met = Some(match admission {
            Admission::Pass => State::Closed,
            Admission::Probe { .. } => State::HalfOpen,
            Admission::Reject(_) | Admission::Fallback { .. } => State::Open,
        });
        match admission {
            Admission::Reject(reply) => {
                metrics.inc(counters.rejected);
                Step::Reply(reply)
            }
            Admission::Fallback {
                request_header,
                response_header,
            } => {
                metrics.inc(counters.fallback);
                request.set(&request_header.0, &request_header.1);
                stream.degraded = Some(response_header);
                Step::Next
            }
            admission @ (Admission::Pass | Admission::Probe { .. }) => {
                if matches!(admission, Admission::Probe { .. }) {
                    metrics.inc(counters.probes);
                }
                if let Some(timeout) = breaker.config.request_timeout_ms {
                    request.set("x-envoy-upstream-rq-timeout-ms", &timeout.to_string());
                }
                stream.admitted = Some((index, admission));
                Step::Next
            }
        }
    }

    /// Records the upstream's answer; adds the degraded marker.
    pub fn on_response(
        &self,
        host: &mut dyn Host,
        status: Option<u16>,
        stream: &mut BreakerStream,
        headers: &mut Vec<(String, String)>,
        metrics: &mut Metrics,
    ) {
        if let Some(degraded) = &stream.degraded {
            headers.push(degraded.clone());
        }
        let Some((index, admission)) = stream.admitted.take() else {
            return;
        };
        let (Some(breaker), Some(counters)) =
            (self.breakers.breakers.get(index), self.counters.get(index))
        else {
            return;
        };
        let failed = status.is_none_or(|s| breaker.is_failure(s));
        if failed {
            metrics.inc(counters.failures);
        }
        let transition = breaker.record(host.shared(), &admission, Some(failed), host.now_ms());
        counters.transition(breaker.name(), transition, metrics);
    }

    /// Admitted but never answered (the client went away): release a probe.
    pub fn on_done(&self, host: &mut dyn Host, stream: &mut BreakerStream) {
        if let Some((index, admission)) = stream.admitted.take()
            && let Some(breaker) = self.breakers.breakers.get(index)
        {
            breaker.record(host.shared(), &admission, None, host.now_ms());
        }
    }

    pub fn on_tick(&mut self, host: &mut dyn Host, metrics: &mut Metrics) {
        let now = host.now_ms();
        if now < self.next_gauges_ms {
            return;
        }
        self.next_gauges_ms = now.saturating_add(GAUGE_TICK_MS);
        for (breaker, counters) in self.breakers.breakers.iter().zip(&self.counters) {
            metrics.set(counters.state, breaker.state(host.shared()).code());
            let invalid = breaker.invalid_records.take();
            if invalid > 0 {
                metrics.add(counters.invalid_records, invalid);
            }
        }
    }
}
