//! The auth filter's decision: who is calling, and may they do this?
//!
//! For each request, in order:
//!
//! 1. Identity headers sent by the client are marked for removal, always,
//!    whatever the outcome: a client never chooses its own tenant, not even
//!    in the access log of a refused request.
//! 2. The target is read one way only ([`target`]): the canonical path
//!    (path parameters refused), the decoded query (a parameter the gateway
//!    reads must appear once), and no method override naming another
//!    method (400 otherwise).
//! 3. CORS preflights without a body and public paths (matched on the
//!    canonical path, per method) pass without a token.
//! 4. The request is looked up in the operation map (400 for a context
//!    that is missing, repeated or cannot be canonicalized).
//! 5. The calling service is identified ([`service`]): the client
//!    certificate mapped to a principal ([`principal`]; 403 where the
//!    operation requires a service and there is none, or an unknown one),
//!    and its service token. The tokens are taken from the configured
//!    sources, one per role at most (400 if two different tokens of one
//!    role are sent, 401 if none at all and no service called).
//! 6. Each token is verified, or found in the cache, by a provider of its
//!    source's role (401 for an invalid token, 403 for a token issued for
//!    another audience, 429 for a client whose tokens keep failing). A
//!    service with a user's token becomes one principal on behalf of the
//!    user (403 unless the user's `may_act` names the service).
//! 7. The tenant is bound: a `{tenant}` path segment must be the verified
//!    tenant. Delegation rules (RFC 8693 `act`) apply to every request; the
//!    operation's action on its context must be granted by the token's
//!    scopes, and for delegated tokens by the subject's delegation rights
//!    too (403 otherwise).
//! 8. The upstream receives the canonical target the decision was made on
//!    and the verified identity as headers; later filters read it from
//!    Envoy filter state.
//!
//! One concern per file:
//!
//! * `flow`: the steps above, and the [`Decision`] they produce;
//! * `verify`: step 6, through this worker's cache, the cross-worker
//!   cache ([`shared_cache`]) and the per-client [`throttle`], with the
//!   per-worker [`AuthState`] (keys in force, token cache);
//! * `output`: step 8, the identity headers and the request contract
//!   ([`crate::contract`]);
//! * `provider`: trusted issuers, compiled; `compile`: the whole
//!   configuration compiled into an [`Auth`];
//! * `service`: step 5's calling service and step 6's on-behalf-of
//!   principal; [`principal`]: service principals and client certificates;
//! * [`config`], [`target`], [`sources`], [`public_path`], [`identity`],
//!   [`denial`], [`cache`], [`jwks_sync`]: configuration, request target,
//!   token sources, public paths, claims to identity, refusals, the
//!   worker's token cache and remote key sets.

pub mod cache;
pub mod config;
pub mod denial;
pub mod identity;
pub mod jwks_sync;
pub mod principal;
pub mod public_path;
pub mod shared_cache;
pub mod sources;
pub mod target;
pub mod throttle;

mod compile;
mod flow;
mod output;
mod provider;
mod service;
mod verify;

pub use compile::Auth;
pub use config::IdentityHeaders;
pub use flow::{Allowed, CacheUse, Decision, Outcome, RequestEnv, StaleKeys};
pub use provider::Provider;
pub use verify::{AuthState, Unverified, Verified};

#[cfg(test)]
mod tests;
