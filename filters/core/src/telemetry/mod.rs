//! What the gateway tells operators beyond each stage's own counters:
//! every request counted by tier, operation, decision, status class and
//! tenant ([`requests`]), with tenant labels bounded ([`tenants`]).

pub mod requests;
pub mod tenants;
