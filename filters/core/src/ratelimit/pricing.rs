//! What a request costs, in read-equivalents: the operation's price times
//! the context-depth, header and payload bands (the payload band from
//! `content-length`; a body of unknown size is charged as it streams, see
//! [`super::BodyMeter`]).

use super::config::Band;
use super::decision::RequestFacts;
use super::limiter::RateLimiter;
use crate::contract::MatchedOperation;
use crate::http::BodySize;
use crate::operation::OperationMatch;
use std::sync::Arc;

impl RateLimiter {
    /// The cost of a request with a payload multiplier of 1, and the
    /// payload multiplier known from the headers.
    pub(super) fn costs(
        &self,
        facts: &RequestFacts<'_>,
        operation: Option<&MatchedOperation>,
    ) -> (u64, u64) {
        let base = operation
            .and_then(|op| self.costs.get(&op.name))
            .copied()
            .unwrap_or(self.default_cost);
        let depth = operation
            .filter(|op| !op.context.is_empty())
            .map(|op| op.context.split('/').count() as u64);
        let header = self.header_factor.as_ref().and_then(|h| {
            facts
                .head
                .header(&h.header)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|v| band(&h.bands, v))
        });
        let unit = base
            .saturating_mul(depth.map_or(1, |d| band(&self.depth_bands, d)))
            .saturating_mul(header.unwrap_or(1))
            .max(1);
        let payload = match BodySize::of(&facts.head, facts.end_of_stream) {
            BodySize::Known(length) => band(&self.payload_bands, length),
            BodySize::Empty | BodySize::Unknown => 1,
        };
        (unit, payload)
    }

    /// The cost of a request, in read-equivalents (>= 1), as far as the
    /// headers tell.
    pub fn cost(&self, facts: &RequestFacts<'_>, operation: Option<&MatchedOperation>) -> u64 {
        let (unit, payload) = self.costs(facts, operation);
        unit.saturating_mul(payload)
    }

    pub(super) fn operation(&self, facts: &RequestFacts<'_>) -> Option<Arc<MatchedOperation>> {
        if let Some(op) = &facts.operation {
            return Some(Arc::clone(op));
        }
        match self
            .operations
            .as_ref()?
            .lookup_raw(facts.head.method, facts.head.path)
        {
            OperationMatch::Matched(op) => Some(Arc::new(MatchedOperation::from(&op))),
            _ => None,
        }
    }
}

/// The highest multiplier of the bands whose threshold `value` exceeds.
pub(crate) fn band(bands: &[Band], value: u64) -> u64 {
    bands
        .iter()
        .filter(|b| value > b.above)
        .map(|b| u64::from(b.multiplier))
        .max()
        .unwrap_or(1)
}
