//! The rate-limit filter's decision: what a request costs, whose bucket
//! pays, and whether the local bucket or the global Rate Limit Service
//! decides.
//!
//! * Cost: the operation's price (read 1, write 2, complex query 5, graph
//!   traversal 10 by default), times payload-size, context-depth and
//!   header bands; an integer >= 1. The payload band comes from the body's
//!   `content-length`; a body of unknown length (chunked, HTTP/2 without
//!   `content-length`) is charged as it streams ([`BodyMeter`]).
//! * Key: the tenant (and optionally subject, operation, route) of the
//!   identity the auth filter put in Envoy filter state; never a header a
//!   client could set. No identity: the client address ([`crate::client`]),
//!   in a table of its own.
//! * Limits: from the token's `rate_limits` claim when allowed, else the
//!   tenant's override, else its tier; several limits may apply and every
//!   one must have room. Each keeps its own level ([`crate::bucket`]).
//! * Global: in `hierarchical` mode the local bucket decides alone while
//!   the tenant's known global usage is below `sync_threshold` of the RLS
//!   limit; from there on the RLS decides, and local admissions are
//!   reported to it in the background. In `always` mode the RLS decides
//!   every request. When the RLS fails or is late, `failure_mode` applies,
//!   and the usage the call carried is reported again later under the same
//!   report id ([`report`]), so the RLS counts it exactly once.
//! * Responses carry `x-ratelimit-*` for the one limit with the fewest
//!   units left among the local limits and the known global limit.
//!
//! One concern per file:
//!
//! * `decision`: the local decision ([`RateLimiter::check`]), from
//!   `pricing` (what a request costs), `keys` (whose bucket pays) and
//!   `limits` (which limits apply);
//! * `global`: the question for the RLS and its answer, or the failure
//!   mode; `sync`: background reports of local usage;
//! * `body`: bodies of unknown size, charged as they stream;
//! * `view`: what `x-ratelimit-*` says; `refusal`: why a request was
//!   refused, and the reply;
//! * `limiter`: the compiled [`RateLimiter`] and a worker's
//!   [`LimiterState`];
//! * [`config`], [`rls`] (the RLS protocol), [`report`] (reports counted
//!   exactly once) and [`adaptive`] (limits that follow upstream latency).

pub mod adaptive;
pub mod config;
pub mod report;
pub mod rls;

mod body;
mod decision;
mod global;
mod keys;
mod limiter;
mod limits;
mod pricing;
mod refusal;
mod sync;
mod view;

pub use body::{BodyCharge, BodyMeter};
pub use decision::{Admitted, DecidedBy, LocalDecision, RequestFacts};
pub use global::RlsCall;
pub use limiter::{Dirty, Events, LimiterState, RateLimiter};
pub(crate) use pricing::band;
pub use refusal::{Refusal, Refused};
pub use view::LimitView;

#[cfg(test)]
mod tests;
