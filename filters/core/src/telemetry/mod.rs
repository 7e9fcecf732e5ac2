//! What the gateway tells operators beyond each stage's own counters:
//! every request counted by tier, operation, decision, status class and
//! tenant ([`requests`]), with tenant labels bounded ([`tenants`]), and
//! the rate-limit use of each labelled tenant ([`utilisation`]), and where
//! a sample of requests spends its time ([`timing`]).

pub mod requests;
pub mod tenants;
pub mod timing;
pub mod utilisation;
