//! ctxgate as an Envoy dynamic module: the pipeline of `ctxgate-core`
//! (the same one `ctxgate.wasm` runs) on Envoy 1.40's dynamic-module ABI,
//! with no VM between Envoy and the filter.
//!
//! - [`abi`]: the ABI's declarations and the hooks Envoy calls; the only
//!   file with `unsafe`.
//! - [`engine`]: configurations, per-thread workers, background work.
//! - [`host`]: [`ctxgate_core::host::Host`] on the ABI.
//! - [`audit`]: the audit queue and where the shipper runs.
//! - [`calls`]: gRPC and HTTP calls on Envoy's clusters.
//! - [`store`]: the state workers share, in process memory.
//! - [`logger`]: the `log` crate on Envoy's logger.

mod abi;
mod audit;
mod calls;
mod engine;
mod host;
mod logger;
mod store;
