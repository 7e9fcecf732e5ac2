//! End-to-end tests of the rate-limit filter through a real Envoy (1.40,
//! V8): auth -> ratelimit -> router, so buckets are keyed by the tenant the
//! auth filter verified (Envoy filter state `ctxgate.request`), in front of
//! the demo echo upstream, a scripted upstream or a direct response.
//!
//! Global limiting runs the real `ctxgate-rls` release binary (in memory or
//! on a throwaway `redis-server`) as a process; outages stop it, or replace
//! it on its port with an RLS that answers too late.
//!
//! Tokens are HS256, signed with the demo HMAC secret and trusted inline:
//! the cheapest to mint and verify. Limits that must not refill during a
//! test use a 31-day window with a large burst (`monthly`), so the counts
//! asserted are exact.
//!
//! Assertions are about outcomes a client or an operator sees (statuses,
//! headers, counts, Redis's count), never about which worker, timer or
//! channel happened to do the work: the suite runs on a busy 2-core
//! machine. Run with `--nocapture` to see the measured figures (global
//! accuracy, failure-mode latencies, memory). The RLS fault measurement
//! across three gateways is its own binary, `rls_faults`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "ratelimit/support.rs"]
mod support;

#[path = "ratelimit/costs.rs"]
mod costs;

#[path = "ratelimit/buckets.rs"]
mod buckets;

#[path = "ratelimit/anonymous.rs"]
mod anonymous;

#[path = "ratelimit/refusals.rs"]
mod refusals;

#[path = "ratelimit/global.rs"]
mod global;

#[path = "ratelimit/outages.rs"]
mod outages;

#[path = "ratelimit/adaptive.rs"]
mod adaptive;

#[path = "ratelimit/memory.rs"]
mod memory;
