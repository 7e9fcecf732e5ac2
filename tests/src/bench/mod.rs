//! `ctxgate-bench`: requests/s and latency of Envoy with ctxgate's filters
//! next to bare Envoy and Envoy's native filters.
//!
//! It is a benchmark, not a test: nothing here asserts a speed. One run
//! measures every [scenario](scenarios) on the same Envoy binary and worker
//! count. The machine it runs on is small and shared, so:
//!
//! - every scenario runs once per round, rounds run the scenarios in a
//!   rotated order (a disturbance hits different rows in different rounds),
//!   and the report gives medians over rounds plus the range;
//! - every run starts a fresh Envoy and discards a warm-up run first, so no
//!   state (caches, V8 tiering) carries over between rows or rounds;
//! - the CPU that other processes used during each measured window is
//!   recorded, so the report can say whether the run was noisy.
//!
//! The modules live here rather than in the harness library because only
//! this binary needs them; `src/bin/ctxgate-bench.rs` includes them by path.

pub mod cpu;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod targets;
pub mod tokens;
pub mod wrk;
