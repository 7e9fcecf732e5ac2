//! End-to-end tests of the hardening principle "what the gateway decided on
//! is what the upstream receives", through a real Envoy (1.40, V8, two
//! workers) in front of the demo echo upstream, which reports the exact
//! `:path`, method and headers it received.
//!
//! * [`canonical`]: path parameters are refused, the upstream receives the
//!   canonical path (query kept), public paths are matched on it per method;
//! * [`property`]: thousands of generated hostile paths, each either refused
//!   (4xx) or forwarded as a canonical path that every upstream reading
//!   implemented here ([`readers`]) takes for an authorised resource;
//! * [`queries`]: query keys compared decoded, a parameter the gateway reads
//!   given once, the query re-serialised when it had to be normalised;
//! * [`methods`] and [`preflight`]: method overrides and CORS preflights;
//! * [`identity`]: forged identity headers gone on every outcome, also from
//!   the access log, and the demo listener's header and address settings;
//! * [`demo`]: what the demo configuration (`envoy/demo.yaml`) must keep.
//!
//! The auth suite's helpers (`Gate`, `forwarded`, `invalid_request`, ...)
//! are shared by including its `support.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "auth/support.rs"]
mod support;

use ctxgate_e2e::yaml;

#[path = "paths/setup.rs"]
mod setup;

#[path = "paths/demo.rs"]
mod demo;

#[path = "paths/canonical.rs"]
mod canonical;

#[path = "paths/hostile.rs"]
mod hostile;

#[path = "paths/readers.rs"]
mod readers;

#[path = "paths/property.rs"]
mod property;

#[path = "paths/queries.rs"]
mod queries;

#[path = "paths/methods.rs"]
mod methods;

#[path = "paths/preflight.rs"]
mod preflight;

#[path = "paths/identity.rs"]
mod identity;
