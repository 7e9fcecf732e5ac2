//! ctxgate's filter logic, in plain Rust.
//!
//! Nothing here knows about proxy-wasm: every function takes plain values
//! (headers, paths, the current time, a [`shared::SharedStore`]) and returns
//! a decision. The filter crates under `filters/` are thin glue that feed
//! Envoy's view of a request into these functions and apply the result.
//! That split keeps the logic testable natively and on wasm32-wasip1, and
//! keeps the glue readable.

pub mod audit;
pub mod auth;
pub mod breaker;
pub mod bucket;
pub mod client;
pub mod config;
pub mod contract;
pub mod duration;
pub mod ecdsa;
pub mod headers;
pub mod host;
pub mod http;
pub mod jwt;
pub mod matcher;
pub mod mcp;
pub mod metrics;
#[cfg(any(test, feature = "mock"))]
pub mod mock;
pub mod nonce;
pub mod operation;
pub mod path;
pub mod pipeline;
pub mod query;
pub mod ratelimit;
pub mod record;
pub mod reply;
pub mod residency;
#[cfg(feature = "schema")]
pub mod schema;
pub mod scope;
pub mod shared;
pub mod signature;
pub mod tagging;
pub mod telemetry;
#[cfg(test)]
mod test_keys;
