//! ctxgate-rls: a rate limit service for Envoy.
//!
//! It implements `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
//! the API of Envoy's `envoy.filters.http.ratelimit` filter and of ctxgate's
//! wasm rate-limit filter, and reads the limits in envoyproxy/ratelimit's
//! YAML format. Either side can be swapped: Envoy can point at
//! envoyproxy/ratelimit or Limitador instead, and the same YAML file works
//! in envoyproxy/ratelimit.
//!
//! # Design
//!
//! * [`config`] loads and validates the YAML (one file per domain, or a
//!   directory of them) and finds the limit for a request descriptor exactly
//!   as envoyproxy/ratelimit does. Bad files are refused at start with file,
//!   line and reason.
//! * [`counters`] does no counting of its own: each configured limit is a
//!   [limitador](https://docs.rs/limitador) limit, stored in memory or in
//!   Redis (limitador's `AsyncRedisStorage`: every hit goes to Redis, so any
//!   number of RLS replicas and gateways share one exact count).
//! * [`service`] turns a `RateLimitRequest` into a `RateLimitResponse`.
//! * [`server`] serves it with tonic, beside `grpc.health.v1.Health`.
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
//!   outcome: `hits_addend` of the request, where 0 (unset) means 1; a
//!   descriptor's own `hits_addend`, when set, wins and may be 0 to only
//!   check. The descriptor is OVER_LIMIT when its counter, after the
//!   addition, exceeds `requests_per_unit`. Traffic that keeps coming while
//!   over the limit keeps counting, so a client hammering a limit stays
//!   limited for the whole window.
//! * Counters are per distinct descriptor values (`[tenant=a]` and
//!   `[tenant=b]` count separately under the one `tenant` limit) and per
//!   fixed window aligned to the unit on the Unix epoch (a minute window
//!   runs from :00 to :59, a day from 00:00 UTC).
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
//!   carrying a `limit` override.

pub mod config;
pub mod counters;
pub mod server;
pub mod service;

pub use config::{ConfigError, Limits};
pub use counters::StorageConfig;
pub use server::{RlsHandle, rate_limiter, serve, spawn_in_thread};
pub use service::RateLimiter;
