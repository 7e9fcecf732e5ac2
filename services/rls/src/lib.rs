//! ctxgate-rls: a rate limit service for Envoy.
//!
//! It implements `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
//! the API of Envoy's `envoy.filters.http.ratelimit` filter and of ctxgate's
//! wasm rate-limit filter, and reads the limits in envoyproxy/ratelimit's
//! YAML format. Either side can be swapped: Envoy can point at
//! envoyproxy/ratelimit or Limitador instead, and the same YAML file works
//! in envoyproxy/ratelimit. (Only ctxgate-rls deduplicates report ids,
//! below; the others count a retried report again.)
//!
//! # Design
//!
//! * [`config`] loads and validates the YAML (one file per domain, or a
//!   directory of them) and finds the limit for a request descriptor exactly
//!   as envoyproxy/ratelimit does. Bad files are refused at start with file,
//!   line and reason.
//! * [`counters`] keeps fixed-window counters in memory or in Redis (every
//!   request is one Lua script there, so any number of RLS replicas and
//!   gateways share one exact count), together with the marks of applied
//!   report ids.
//! * [`report`] is the report-id protocol (below).
//! * [`service`] turns a `RateLimitRequest` into a `RateLimitResponse`.
//! * [`server`] serves it with tonic, beside `grpc.health.v1.Health`, and
//!   serves [`metrics`], the service's own counters, for Prometheus.
//!
//! The `ctxgate-rls` binary is a thin command line over [`server::serve`];
//! tests start the same server in-process with [`server::spawn_in_thread`].
//!
//! # Semantics
//!
//! Those of envoyproxy/ratelimit:
//!
//! * Each request descriptor is decided on its own. A descriptor matches at
//!   most one configured limit (see [`config`] for the matching rules).
//! * Every request adds its cost to each matching counter, whatever the
//!   outcome (unless it repeats a report id: see below): `hits_addend` of the request, where 0 (unset) means 1; a
//!   descriptor's own `hits_addend`, when set, wins and may be 0 to only
//!   check. The descriptor is OVER_LIMIT when its counter, after the
//!   addition, exceeds `requests_per_unit`. Traffic that keeps coming while
//!   over the limit keeps counting, so a client hammering a limit stays
//!   limited for the whole window.
//! * Counters are per distinct descriptor values (`[tenant=a]` and
//!   `[tenant=b]` count separately under the one `tenant` limit) and per
//!   fixed window aligned to the unit on the Unix epoch (a minute window
//!   runs from :00 to :59, a day from 00:00 UTC). In memory, at most
//!   `--max-counters` are kept: beyond it the least recently used are
//!   forgotten (and start again from zero).
//! * The response has `overall_code` OVER_LIMIT if any descriptor is, and one
//!   `DescriptorStatus` per request descriptor, in order: `code`,
//!   `current_limit {requests_per_unit, unit, name}`, `limit_remaining`
//!   (0 when over) and `duration_until_reset` (whole seconds to the end of
//!   the window).
//! * A descriptor with no matching limit is OK with no `current_limit`; one
//!   matching `unlimited: true` is OK with `limit_remaining` 4294967295 and
//!   no `current_limit`. An unknown domain makes every descriptor OK.
//! * `shadow_mode: true` limits count and report as usual but answer OK;
//!   going over is logged at debug level.
//! * If the counter storage fails (Redis down or slower than the timeout),
//!   the call fails with gRPC UNAVAILABLE, so the client applies its own
//!   failure mode (Envoy: `failure_mode_deny`). The failure is logged once
//!   when it starts and once when storage answers again; the Redis
//!   connection is re-established on the next call, with no restart.
//! * Not supported, and refused with INVALID_ARGUMENT rather than silently
//!   mis-counted: descriptors with `is_negative_hits` and descriptors
//!   carrying a `limit` override. A refused request counts nothing (every
//!   descriptor is checked before anything is counted).
//!
//! # Report ids: retries that count once
//!
//! A client that adds hits may send gRPC metadata (an HTTP/2 header)
//! `x-ctxgate-report: <reporter>-<seq>`: `<reporter>` is exactly 16
//! lowercase hex digits (a random 64-bit id per reporting process; ctxgate's
//! filter draws one per gateway worker VM) and `<seq>` a decimal u64 it
//! never reuses (1, 2, 3, ...). Reports may arrive out of order, and may be
//! retried any number of times with the same id, hits and descriptors.
//!
//! * Without the header, a request is counted every time, as above:
//!   standard Envoy clients never send it.
//! * With a well-formed header, a request whose id was already applied
//!   within the dedupe horizon adds nothing, and is answered from the
//!   counters as they are (a cost-0 read: OVER_LIMIT iff a counter exceeds
//!   its limit, `limit_remaining` the limit minus the counter, at least 0).
//!   Otherwise its hits are added as above. Checking and marking the id and
//!   adding the hits of all its descriptors are one atomic step (one Lua
//!   script in Redis, one lock in memory): there is never a marked id whose
//!   hits were not added.
//! * A malformed header is refused with INVALID_ARGUMENT, counting nothing.
//! * The horizon (`--dedupe-seconds`, default 3600) must exceed how long
//!   clients retry a report (ctxgate's filter gives up after 300 s): a
//!   retry that comes after its id was forgotten counts again. See
//!   [`report::Dedupe`] for the memory store's bound.
//!
//! Why ids, and not deadlines: a call that times out has not necessarily
//! failed. When Redis hangs, the scripts of calls that the gateway (and this
//! service) gave up on wait in Redis's socket and run when it resumes; if
//! the gateway then retries the same usage, it is counted twice, and an
//! outage inflates the count by every retry (measured: 31 727 units counted
//! for 1 480 admitted, over a 10 s hang). A shorter deadline only changes
//! how soon the caller stops waiting, never whether the work was done, so
//! no deadline can tell the gateway whether to retry. An idempotent retry
//! makes the question moot: the late call and every retry of it count once
//! between them, whichever runs first, so "give up and retry" is exact.
//!
//! Deadlines still save work: tonic drops a handler when the caller's
//! `grpc-timeout` elapses, and a call whose deadline has already passed when
//! its handler starts is answered DEADLINE_EXCEEDED without touching the
//! storage (see [`service::stamp_deadline`]), so a backlog after a hang does
//! not turn into a burst of Redis calls nobody waits for. redis-rs also
//! skips sending a command whose caller has gone.

pub mod config;
pub mod counters;
pub mod metrics;
pub mod report;
pub mod server;
pub mod service;

pub use config::{Limits, LimitsError};
pub use counters::StorageConfig;
pub use metrics::Metrics;
pub use report::{Dedupe, ReportId};
pub use server::{
    RlsHandle, rate_limiter, serve, serve_metrics, spawn_in_thread, spawn_in_thread_with,
};
pub use service::RlsService;
