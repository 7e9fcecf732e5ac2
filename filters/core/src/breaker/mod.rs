//! Circuit breakers shared by every worker of one Envoy.
//!
//! One breaker per upstream class (`context_repository`,
//! `context_processor`, ...), selected by route, cluster or tag. A breaker
//! is closed until, over a rolling window of at least `min_requests`
//! requests, the failure rate reaches `error_threshold_percent`; it then
//! opens for `reset_timeout_ms`, during which requests are refused (503) or
//! sent to a fallback route (tagged with a header the route table matches).
//! After the timeout it is half-open: up to `half_open_probes` requests go
//! through as probes; if they all succeed it closes, if one fails it opens
//! again.
//!
//! The state and the window live in one shared-data key per breaker and
//! change only by compare-and-swap, so all workers trip and recover
//! together and no outcome is lost. The window is ten buckets of a tenth of
//! `window_seconds`, each stamped with its period so stale buckets are
//! ignored without a timer.

pub mod config;

use std::cell::Cell;
use std::fmt;

use serde_json::json;

use crate::config::{ConfigError, check_header_name, parse_json};
use crate::http::RequestHead;
use crate::record::{self, Kind, RecordError};
use crate::reply::{LocalReply, grpc};
use crate::shared::{Change, SharedStore, Update, update};
use config::{BreakerConfig, BreakersConfig, OpenAction};

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Bucket {
    period: u64,
    total: u32,
    failures: u32,
}

/// A breaker's shared record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    state: State,
    /// When the breaker last opened (also identifies a half-open round).
    opened_at_ms: u64,
    probes_in_flight: u32,
    probes_succeeded: u32,
    buckets: [Bucket; BUCKETS],
}

impl Default for Record {
    fn default() -> Self {
        Record {
            state: State::Closed,
            opened_at_ms: 0,
            probes_in_flight: 0,
            probes_succeeded: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }
}

const VERSION: u8 = 1;

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut w = record::writer(Kind::Breaker, VERSION, 1 + 8 + 8 + BUCKETS * 16);
        w.u8(u8::try_from(self.state.code()).unwrap_or(0))
            .u64(self.opened_at_ms)
            .u32(self.probes_in_flight)
            .u32(self.probes_succeeded);
        for b in &self.buckets {
            w.u64(b.period).u32(b.total).u32(b.failures);
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let mut r = record::reader(bytes, Kind::Breaker, VERSION)?;
        let state = match r.u8()? {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            _ => return Err(RecordError::Malformed),
        };
        let opened_at_ms = r.u64()?;
        let probes_in_flight = r.u32()?;
        let probes_succeeded = r.u32()?;
        let mut buckets = [Bucket::default(); BUCKETS];
        for bucket in &mut buckets {
            *bucket = Bucket {
                period: r.u64()?,
                total: r.u32()?,
                failures: r.u32()?,
            };
        }
        r.end()?;
        Ok(Record {
            state,
            opened_at_ms,
            probes_in_flight,
            probes_succeeded,
            buckets,
        })
    }

    /// Requests and failures in the window ending at `period`.
    fn window(&self, period: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.period.saturating_add(BUCKETS as u64) > period && b.period <= period)
            .fold((0, 0), |(t, f), b| {
                (t + u64::from(b.total), f + u64::from(b.failures))
            })
    }

    fn count(&mut self, period: u64, failed: bool) {
        let index = usize::try_from(period % BUCKETS as u64).unwrap_or(0);
        if let Some(bucket) = self.buckets.get_mut(index) {
            if bucket.period != period {
                *bucket = Bucket {
                    period,
                    total: 0,
                    failures: 0,
                };
            }
            bucket.total = bucket.total.saturating_add(1);
            bucket.failures = bucket.failures.saturating_add(u32::from(failed));
        }
    }
}

/// How a request passed the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Closed: a normal request.
    Pass,
    /// Half-open: a probe of the round that started at `round`.
    Probe { round: u64 },
    /// Open: refused with this reply.
    Reject(LocalReply),
    /// Open with a fallback: forward with this request header set, and mark
    /// the response with the other header.
    Fallback {
        request_header: (String, String),
        response_header: (String, String),
    },
}

/// A state change worth logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

/// One configured breaker.
pub struct Breaker {
    pub config: BreakerConfig,
    key: String,
    attempts: u32,
    /// Shared-data records that did not decode. The breaker then fails
    /// open (an unreadable breaker must not take the upstream down) and
    /// leaves the record alone.
    pub invalid_records: Cell<u64>,
}

impl Breaker {
    fn period(&self, now_ms: u64) -> u64 {
        let bucket_ms = (self.config.window_seconds.saturating_mul(1000) / BUCKETS as u64).max(1);
        now_ms / bucket_ms
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Creates the shared key. Call from `on_configure`.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        store.ensure(&self.key, &Record::default().encode());
    }

    /// The state right now (metrics, tests); closed when unreadable.
    pub fn state(&self, store: &dyn SharedStore) -> State {
        store
            .get(&self.key)
            .and_then(|(v, _)| Record::decode(&v).ok())
            .map_or(State::Closed, |r| r.state)
    }

    fn invalid(&self, error: RecordError) {
        self.invalid_records.set(self.invalid_records.get() + 1);
        log::warn!(
            "breaker {}: shared record does not decode ({error}); failing open",
            self.config.name
        );
    }

    /// Decides whether a request may go to the upstream class.
    pub fn admit(
        &self,
        store: &dyn SharedStore,
        request: &RequestHead<'_>,
        now_ms: u64,
    ) -> (Admission, Option<Transition>) {
        enum Gate {
            Pass,
            Wait(u64),
            Probe { round: u64, first: bool },
            Invalid(RecordError),
        }
        let reset_ms = self.config.reset_timeout_ms;
        let outcome = update(store, &self.key, self.attempts, |value| {
            let mut record = match Record::decode(value) {
                Ok(record) => record,
                Err(e) => return Change::Keep(Gate::Invalid(e)),
            };
            let reopens_at = record.opened_at_ms.saturating_add(reset_ms);
            match record.state {
                State::Closed => Change::Keep(Gate::Pass),
                State::Open if now_ms < reopens_at => Change::Keep(Gate::Wait(reopens_at - now_ms)),
                State::Open => {
                    record.state = State::HalfOpen;
                    record.probes_in_flight = 1;
                    record.probes_succeeded = 0;
                    Change::Write(
                        record.encode(),
                        Gate::Probe {
                            round: record.opened_at_ms,
                            first: true,
                        },
                    )
                }
                State::HalfOpen
                    if record
                        .probes_in_flight
                        .saturating_add(record.probes_succeeded)
                        < self.config.half_open_probes =>
                {
                    record.probes_in_flight = record.probes_in_flight.saturating_add(1);
                    Change::Write(
                        record.encode(),
                        Gate::Probe {
                            round: record.opened_at_ms,
                            first: false,
                        },
                    )
                }
                // Probe budget used: wait for the probes' verdict.
                State::HalfOpen => Change::Keep(Gate::Wait(reset_ms.min(1000))),
            }
        });
        match outcome {
            Update::Written(Gate::Probe { round, first }) => (
                Admission::Probe { round },
                first.then_some(Transition::HalfOpened),
            ),
            Update::Unchanged(Gate::Wait(wait_ms)) => (self.open_admission(request, wait_ms), None),
            Update::Unchanged(Gate::Invalid(e)) => {
                self.invalid(e);
                (Admission::Pass, None)
            }
            // Closed; or the record is missing or too contended to update:
            // fail open, as an unreachable breaker store should.
            _ => (Admission::Pass, None),
        }
    }

    fn open_admission(&self, request: &RequestHead<'_>, wait_ms: u64) -> Admission {
        match &self.config.on_open {
            OpenAction::Reject => {
                let retry = wait_ms.div_ceil(1000).max(1);
                let body = json!({
                    "error": "circuit_open",
                    "message": format!("{} is unavailable (circuit breaker open); retry in {retry} s", self.config.name),
                    "breaker": self.config.name,
                    "retry_after_seconds": retry,
                });
                let mut reply = LocalReply::json_error(
                    request,
                    503,
                    &body,
                    vec![("retry-after".into(), retry.to_string())],
                    format!("ctxgate_breaker_open{{{}}}", self.config.name),
                );
                reply.grpc_status = reply.grpc_status.map(|_| grpc::UNAVAILABLE);
                Admission::Reject(reply)
            }
            OpenAction::Fallback {
                request_header,
                request_value,
                response_header,
                response_value,
            } => Admission::Fallback {
                request_header: (request_header.clone(), request_value.clone()),
                response_header: (response_header.clone(), response_value.clone()),
            },
        }
    }

    /// Is this status a failure of the upstream class?
    pub fn is_failure(&self, status: u16) -> bool {
        match &self.config.failure_statuses {
            Some(statuses) => statuses.contains(&status),
            None => (500..=599).contains(&status),
        }
    }

    /// Records the outcome of a request admitted by [`Breaker::admit`].
    /// `failed: None` means the request ended without an upstream outcome
    /// (client went away): a probe slot is released, nothing is counted.
    pub fn record(
        &self,
        store: &dyn SharedStore,
        admission: &Admission,
        failed: Option<bool>,
        now_ms: u64,
    ) -> Option<Transition> {
        let period = self.period(now_ms);
        let c = &self.config;
        // A record that does not decode was counted when the request was
        // admitted (it failed open then); its outcome is not recorded.
        let outcome = update(store, &self.key, self.attempts, |value| {
            let Ok(mut record) = Record::decode(value) else {
                return Change::Keep(None);
            };
            let mut transition = None;
            match (admission, failed) {
                (Admission::Probe { round }, outcome) => {
                    if record.state != State::HalfOpen || record.opened_at_ms != *round {
                        // A probe of an earlier round: its answer is stale.
                        return Change::Keep(None);
                    }
                    record.probes_in_flight = record.probes_in_flight.saturating_sub(1);
                    match outcome {
                        Some(true) => {
                            record.state = State::Open;
                            record.opened_at_ms = now_ms;
                            record.probes_in_flight = 0;
                            record.probes_succeeded = 0;
                            transition = Some(Transition::Opened);
                        }
                        Some(false) => {
                            record.probes_succeeded = record.probes_succeeded.saturating_add(1);
                            if record.probes_succeeded >= c.half_open_probes {
                                record = Record::default();
                                transition = Some(Transition::Closed);
                            }
                        }
                        None => {}
                    }
                }
                (Admission::Pass, Some(failed)) => {
                    record.count(period, failed);
                    let (total, failures) = record.window(period);
                    if record.state == State::Closed
                        && total >= c.min_requests
                        && failures.saturating_mul(100)
                            >= total.saturating_mul(c.error_threshold_percent)
                    {
                        record.state = State::Open;
                        record.opened_at_ms = now_ms;
                        transition = Some(Transition::Opened);
                    }
                }
                _ => return Change::Keep(None),
            }
            Change::Write(record.encode(), transition)
        });
        match outcome {
            Update::Written(transition) => transition,
            _ => None,
        }
    }
}

/// Which breaker applies to a request, from what Envoy knows about it.
pub struct Selection<'a> {
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub head: RequestHead<'a>,
}

pub struct Breakers {
    pub breakers: Vec<Breaker>,
    /// Does any selector use the route or cluster name (so the glue must
    /// look them up)?
    pub needs_route: bool,
    pub needs_cluster: bool,
}

impl Breakers {
    /// Parses and compiles the plugin configuration. `namespace` prefixes
    /// the shared-data keys (the plugin's name: a breaker keeps its state
    /// across configuration pushes).
    pub fn from_json(json: &[u8], namespace: &str) -> Result<Breakers, ConfigError> {
        Breakers::new(parse_json(json)?, namespace)
    }

    pub fn new(config: BreakersConfig, namespace: &str) -> Result<Breakers, ConfigError> {
        if config.breakers.is_empty() {
            return Err(ConfigError::new(
                "breakers",
                "configure at least one breaker",
            ));
        }
        let mut breakers: Vec<Breaker> = Vec::new();
        for (i, b) in config.breakers.into_iter().enumerate() {
            b.validate(&format!("breakers[{i}]"))?;
            if breakers.iter().any(|other| other.config.name == b.name) {
                return Err(ConfigError::new(
                    format!("breakers[{i}].name"),
                    format!("'{}' is used twice", b.name),
                ));
            }
            if let Some(header) = &b.select.header {
                check_header_name(&format!("breakers[{i}].select.header.name"), &header.name)?;
            }
            for (j, header) in b.select.any_header.iter().flatten().enumerate() {
                check_header_name(
                    &format!("breakers[{i}].select.any_header[{j}].name"),
                    &header.name,
                )?;
            }
            let key = format!("{namespace}.breaker.{}", b.name);
            breakers.push(Breaker {
                config: b,
                key,
                attempts: config.cas_attempts.max(1),
                invalid_records: Cell::new(0),
            });
        }
        let needs_route = breakers.iter().any(|b| b.config.select.routes.is_some());
        let needs_cluster = breakers.iter().any(|b| b.config.select.clusters.is_some());
        Ok(Breakers {
            breakers,
            needs_route,
            needs_cluster,
        })
    }

    /// Fallback request headers: only a breaker may set them, so any copy a
    /// client sends is removed (else a client could pick the fallback
    /// route itself).
    pub fn owned_headers(&self) -> Vec<String> {
        let mut headers: Vec<String> = self
            .breakers
            .iter()
            .filter_map(|b| match &b.config.on_open {
                OpenAction::Fallback { request_header, .. } => Some(request_header.clone()),
                OpenAction::Reject => None,
            })
            .collect();
        headers.sort();
        headers.dedup();
        headers
    }

    /// The index (in [`Breakers::breakers`]) of the first breaker whose
    /// selector matches.
    pub fn select(&self, selection: &Selection<'_>) -> Option<usize> {
        self.breakers.iter().position(|b| {
            let s = &b.config.select;
            let named = |names: &Option<Vec<String>>, actual: Option<&str>| {
                names
                    .as_ref()
                    .is_none_or(|names| actual.is_some_and(|a| names.iter().any(|n| n == a)))
            };
            named(&s.routes, selection.route)
                && named(&s.clusters, selection.cluster)
                && s.header
                    .as_ref()
                    .is_none_or(|h| h.matches_header(&selection.head))
                && s.any_header
                    .as_ref()
                    .is_none_or(|any| any.iter().any(|h| h.matches_header(&selection.head)))
        })
    }
}

#[cfg(test)]
mod tests;
