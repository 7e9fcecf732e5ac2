//! What the gateway decided about a request, handed to the proxy for its
//! access log and trace spans (`filter_state` on).
//!
//! Once the pipeline has decided (the request is forwarded with its body
//! decided, or refused), the worker writes these filter-state values. In
//! Envoy a Proxy-Wasm module's filter state is named `wasm.<key>`, so an
//! access log reads `%FILTER_STATE(wasm.ctxgate.decision:PLAIN)%` and a
//! tracer's custom tag takes the same string as its `value`.
//!
//! | filter state | value |
//! |---|---|
//! | `wasm.ctxgate.decision` | `allow`, `throttle` (the rate limiter refused) or `deny` (any other stage refused) |
//! | `wasm.ctxgate.cost` | the cost the rate limiter charged, in read-equivalents (admitted requests) |
//! | `wasm.ctxgate.breaker` | the state of the breaker the request met: `closed`, `half_open` or `open` (refused, or sent to the fallback) |
//!
//! The rest of the decision is on the request already, for free: the
//! reason is Envoy's `%RESPONSE_CODE_DETAILS%` (a refusal's details, such
//! as `ctxgate_auth_denied{token_expired}`, or `via_upstream`); tenant,
//! tier and operation are the identity headers the auth stage sets, and
//! the routing tags the headers the tagging stage sets (`%REQ(...)%`).
//! A refused request carries the header changes made before the refusal,
//! never a client's own identity headers.
//!
//! In a chain of ctxgate plugins every plugin writes its own decision: a
//! refusal stops the chain, so the last value written is the refusing
//! plugin's or, when every plugin let the request through, `allow`.

use crate::host::{Host, StreamId};
use crate::telemetry::requests::Decision;

/// Filter-state key of the decision (`wasm.ctxgate.decision` in Envoy).
pub const DECISION_KEY: &str = "ctxgate.decision";
/// Filter-state key of the cost charged (`wasm.ctxgate.cost`).
pub const COST_KEY: &str = "ctxgate.cost";
/// Filter-state key of the breaker state met (`wasm.ctxgate.breaker`).
pub const BREAKER_KEY: &str = "ctxgate.breaker";

/// The decision, from the status of the gateway's own reply (`None`:
/// forwarded). A reply under 400 (the MCP resource metadata the gateway
/// serves itself) is an `allow`.
pub fn decision(replied: Option<u16>) -> Decision {
    match replied {
        Some(429) => Decision::Throttle,
        Some(status) if status >= 400 => Decision::Deny,
        _ => Decision::Allow,
    }
}

/// One request's decision, as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    pub cost: Option<u64>,
    pub breaker: Option<crate::breaker::State>,
}

impl Outcome {
    /// Writes the outcome to `stream`'s filter state: one proxy call per
    /// value present.
    pub fn export(&self, host: &mut dyn Host, stream: StreamId) {
        host.set_filter_state(stream, DECISION_KEY, self.decision.name().as_bytes());
        if let Some(cost) = self.cost {
            host.set_filter_state(stream, COST_KEY, cost.to_string().as_bytes());
        }
        if let Some(state) = self.breaker {
            host.set_filter_state(stream, BREAKER_KEY, state.to_string().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_decides_by_its_status() {
        assert_eq!(decision(None), Decision::Allow);
        assert_eq!(decision(Some(200)), Decision::Allow);
        assert_eq!(decision(Some(429)), Decision::Throttle);
        assert_eq!(decision(Some(401)), Decision::Deny);
        assert_eq!(decision(Some(403)), Decision::Deny);
        assert_eq!(decision(Some(503)), Decision::Deny);
    }
}
