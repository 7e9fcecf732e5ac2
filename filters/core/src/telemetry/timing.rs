//! Where a request's time goes, measured on one request in
//! `metrics.timing_every` per worker: reading the clock and recording a
//! histogram sample are a host call each, so timing every request would
//! cost more than most stages do.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_stage_us.stage.<stage>` | histogram | microseconds a stage worked on a request (waiting for a call excluded) |
//! | `ctxgate_decision_us` | histogram | microseconds from the request headers to the decision (forwarded or refused), waits for the RLS or the body included |
//! | `ctxgate_auth_check_us.cache.<use>` | histogram | microseconds the auth stage took to check a token: `hit` (this worker's cache), `shared_hit` (the cross-worker cache), `miss` (signature verified) |
//! | `ctxgate_context_bytes.operation.<operation>.direction.<direction>` | histogram | body sizes from `content-length`: `request` as sent, `response` as the upstream answered (chunked bodies have none) |

use std::collections::HashMap;

use super::requests::{label_value, operation_label};
use crate::contract::Established;
use crate::host::Host;
use crate::metrics::{Histogram, Metrics};

/// The most operations with a size histogram of their own, per worker;
/// later ones are counted as `other` (the operation map bounds them in
/// practice).
const MAX_OPERATIONS: usize = 64;

pub struct Timing {
    every: u32,
    /// Requests since the last timed one.
    since: u32,
    stages: Vec<(&'static str, Histogram)>,
    decision: Histogram,
    sizes: HashMap<(String, &'static str), Histogram>,
}

/// Whether a body size is the request's or the response's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// Microseconds between two clock readings in nanoseconds.
pub fn micros(from_ns: u64, to_ns: u64) -> u64 {
    to_ns.saturating_sub(from_ns) / 1000
}

impl Timing {
    /// `every`: one request in this many is timed (0: none). `stages`:
    /// the names of the stages this pipeline runs.
    pub fn new(every: u32, stages: &[&'static str], metrics: &mut Metrics) -> Timing {
        Timing {
            every,
            since: 0,
            stages: stages
                .iter()
                .map(|s| {
                    (
                        *s,
                        metrics.histogram(&format!("ctxgate_stage_us.stage.{s}")),
                    )
                })
                .collect(),
            decision: metrics.histogram("ctxgate_decision_us"),
            sizes: HashMap::new(),
        }
    }

    /// Whether to time the request that just arrived.
    pub fn sample(&mut self) -> bool {
        if self.every == 0 {
            return false;
        }
        self.since += 1;
        if self.since >= self.every {
            self.since = 0;
            return true;
        }
        false
    }

    pub fn stage(&self, host: &mut dyn Host, stage: &str, us: u64, metrics: &mut Metrics) {
        if let Some((_, h)) = self.stages.iter().find(|(s, _)| *s == stage) {
            metrics.record(host, *h, us);
        }
    }

    pub fn decision(&self, host: &mut dyn Host, us: u64, metrics: &mut Metrics) {
        metrics.record(host, self.decision, us);
    }

    /// A body size of the request `established` describes, labelled with
    /// its operation.
    pub fn size(
        &mut self,
        host: &mut dyn Host,
        established: Option<&Established>,
        direction: Direction,
        bytes: u64,
        metrics: &mut Metrics,
    ) {
        let mut operation = label_value(operation_label(established)).into_owned();
        if self.sizes.len() >= MAX_OPERATIONS
            && !self
                .sizes
                .contains_key(&(operation.clone(), direction.name()))
        {
            operation = super::tenants::OTHER.to_owned();
        }
        let histogram = *self
            .sizes
            .entry((operation, direction.name()))
            .or_insert_with_key(|(operation, direction)| {
                metrics.histogram(&format!(
                    "ctxgate_context_bytes.operation.{operation}.direction.{direction}"
                ))
            });
        metrics.record(host, histogram, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_in_every_is_timed_and_zero_times_none() {
        let mut metrics = Metrics::default();
        let mut timing = Timing::new(4, &["auth"], &mut metrics);
        let timed: Vec<bool> = (0..8).map(|_| timing.sample()).collect();
        assert_eq!(
            timed,
            [false, false, false, true, false, false, false, true]
        );
        let mut off = Timing::new(0, &["auth"], &mut metrics);
        assert!((0..100).all(|_| !off.sample()));
        let mut all = Timing::new(1, &["auth"], &mut metrics);
        assert!((0..10).all(|_| all.sample()));
    }

    #[test]
    fn microseconds_never_go_negative() {
        assert_eq!(micros(1_000, 26_999), 25);
        assert_eq!(micros(5_000, 1_000), 0);
    }
}
