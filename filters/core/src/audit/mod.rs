//! A tamper-evident audit trail of every access decision.
//!
//! Three places, one format:
//!
//! * the request path ([`recorder`]): the pipeline driver notes each
//!   deciding stage's [`event::Decision`] (so a new stage is audited
//!   without code of its own) and, when the request is done, hands all of
//!   its events to the singleton in one queue message;
//! * the singleton ([`shipper`]): drains the queue, cuts batches, chains
//!   them (sequence number and SHA-256 of the previous batch) and
//!   delivers them to an HTTP collector, with retries and a bounded
//!   backlog; every loss is counted and written into the chain;
//! * the verifier ([`batch::verify`], `ctxgate-audit verify`): checks a
//!   collector's file and names the first line where it breaks.
//!
//! No token and no secret is ever recorded: a bearer token appears only
//! as the first 16 hex digits of its SHA-256, subjects optionally as a
//! keyed hash.

pub mod batch;
pub mod config;
pub mod event;
mod json;
pub mod recorder;
pub mod shipper;
#[cfg(test)]
mod tests;

/// Root id of the singleton's root context: the engine runs a
/// [`shipper::Shipper`] instead of a pipeline worker under it.
pub const SINGLETON_ROOT_ID: &str = "ctxgate_audit";
