//! End-to-end tests of the auth filter through a real Envoy (1.40, V8, two
//! workers unless a test needs more) in front of the demo echo upstream.
//!
//! Each test function starts one Envoy and makes many related assertions
//! against it; the functions run in parallel test threads. Every test
//! generates its own keys into a temp dir. Tokens carry a unique `jti`, so
//! no test is accidentally answered from the filter's token cache unless it
//! means to be.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "auth/support.rs"]
mod support;

#[path = "auth/tokens.rs"]
mod tokens;

#[path = "auth/scopes.rs"]
mod scopes;

#[path = "auth/replies.rs"]
mod replies;

#[path = "auth/hardening.rs"]
mod hardening;

#[path = "auth/jwks.rs"]
mod jwks;

#[path = "auth/config.rs"]
mod config;

#[path = "auth/cache.rs"]
mod cache;

#[path = "auth/tenants.rs"]
mod tenants;

#[path = "auth/unmatched.rs"]
mod unmatched;

#[path = "auth/claims.rs"]
mod claims;

#[path = "auth/throttle.rs"]
mod throttle;
