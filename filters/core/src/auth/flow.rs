//! The decision flow of one request, in the order of the module overview
//! ([`super`]): identity headers stripped, the target read, preflights and
//! public paths, the operation, the token, its verification, the tenant,
//! delegation and scopes.

use super::compile::Auth;
use super::config::{IdentityHeaders, TokenRole, Unmatched};
use super::denial::{Denial, Reason};
use super::identity::Identity;
use super::service::on_behalf_of;
use super::sources;
use super::target::{self, Target};
use super::verify::AuthState;
use crate::contract::Established;
use crate::host::Attribute;
use crate::http::RequestHead;
use crate::operation::{Operation, OperationMatch};
use crate::path::canonical_path;
use crate::scope::required_scope;
use crate::shared::SharedStore;
use std::sync::Arc;

/// How the token cache served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    NotNeeded,
    /// Found in this worker's cache.
    Hit,
    /// Found in the cross-worker cache in shared data.
    SharedHit,
    Miss,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward the request.
    Allow(Box<Allowed>),
    Deny(Denial),
}

/// What to change on an allowed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Headers to remove (the consumed token).
    pub remove_headers: Vec<String>,
    /// Headers to set for this request: `:path` when the canonical target
    /// differs from what the client sent, `cookie` without the token. The
    /// identity and operation headers come on top: [`Allowed::headers`].
    pub set_headers: Vec<(String, String)>,
    /// The [`Established`] JSON for Envoy filter state (empty: nothing
    /// established, e.g. a public path).
    pub filter_state: Vec<u8>,
    /// Set when the request carried a verified token (shared with the
    /// token cache, not copied).
    pub identity: Option<Arc<Identity>>,
    /// What `filter_state` says, for the stages of the same pipeline.
    pub established: Established,
}

impl Allowed {
    /// Every header to set on the request: [`Allowed::set_headers`], then
    /// the identity headers and the operation headers under `names`.
    pub fn headers<'a>(
        &'a self,
        names: &'a IdentityHeaders,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let own = self
            .set_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()));
        let identity = self.identity.iter().flat_map(move |id| {
            [
                (names.tenant.as_str(), id.tenant.as_str()),
                (&names.subject, &id.subject),
                (&names.tier, &id.tier),
                (&names.scopes, &id.scopes_header),
                (&names.issuer, &id.issuer),
            ]
            .into_iter()
            .chain(
                (!id.actors.is_empty())
                    .then_some((names.actor_chain.as_str(), id.actor_chain_header.as_str())),
            )
            .chain(
                id.service
                    .as_deref()
                    .map(|service| (names.service.as_str(), service)),
            )
        });
        let operation = self.established.operation.iter().flat_map(move |op| {
            [
                (names.operation.as_str(), op.name.as_str()),
                (&names.context_path, &op.context),
            ]
        });
        own.chain(identity).chain(operation)
    }
}

/// The decision for one request, with what metrics need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// Identity headers the client sent: removed from the request whatever
    /// the outcome (before a refusal is sent, so the access log of a
    /// refused request cannot show a forged tenant either).
    pub strip: Vec<String>,
    pub cache: CacheUse,
    /// A remote provider whose keys this worker lacks (none yet, or not
    /// the token's `kid`), or whose keys failed a signature: another
    /// worker may already have fetched newer ones, and if not an early
    /// refresh is worth it for an unknown `kid` (key rotation). A refusal
    /// this worker cached is not looked at again: it lasts until the
    /// worker's next tick, which forgets refusals when it installs keys.
    pub stale_keys: Option<StaleKeys>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleKeys {
    pub provider: usize,
    /// The token named a `kid` the keys do not have.
    pub unknown_kid: bool,
}

/// What the host knows about a request beyond its headers.
pub struct RequestEnv<'a> {
    /// The request headers ended the stream: no body follows.
    pub end_of_stream: bool,
    /// Envoy's downstream address (`ip:port`), looked up only when needed.
    pub client_address: &'a dyn Fn() -> Option<String>,
    /// A later stage authorises this request from its body (an MCP
    /// endpoint): a request no operation matches needs only a valid token.
    pub authorised_later: bool,
    /// The connection's client certificate ([`Attribute::PeerMtls`] and
    /// the `Peer*` attributes), looked up only when services are
    /// configured.
    pub peer: &'a dyn Fn(Attribute) -> Option<String>,
}

impl Auth {
    /// Decides on one request. `now` is unix seconds.
    pub fn check(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        request: &RequestHead<'_>,
        env: &RequestEnv<'_>,
        now: u64,
    ) -> Decision {
        let mut allowed = Allowed::default();
        let mut decision = Decision {
            outcome: Outcome::Deny(Denial::new(Reason::MissingToken, "")),
            strip: self
                .headers
                .all()
                .iter()
                .filter(|name| request.has_header(name))
                .map(|name| (*name).to_owned())
                .collect(),
            cache: CacheUse::NotNeeded,
            stale_keys: None,
        };
        match self.authorize(state, store, request, env, now, &mut allowed, &mut decision) {
            Ok(()) => decision.outcome = Outcome::Allow(Box::new(allowed)),
            Err(denial) => decision.outcome = Outcome::Deny(denial),
        }
        decision
    }

    #[allow(clippy::too_many_arguments)]
    fn authorize(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        request: &RequestHead<'_>,
        env: &RequestEnv<'_>,
        now: u64,
        allowed: &mut Allowed,
        decision: &mut Decision,
    ) -> Result<(), Denial> {
        let mut target = Target::read(
            request,
            self.path_parameters,
            self.read_params.iter().map(String::as_str),
        )?;
        target::check_method_override(
            request,
            &target.query,
            &self.method_override_headers,
            &self.method_override_params,
        )?;
        if self.allow_cors_preflight && target::is_preflight(request) {
            if target::has_body(request, env.end_of_stream) {
                return Err(Denial::new(
                    Reason::PreflightBody,
                    "a CORS preflight carries no body",
                ));
            }
            target.forward(request, &canonical_path(&target.segments), allowed)?;
            return Ok(());
        }
        if self.is_public(request.method, &target.segments) {
            target.forward(request, &canonical_path(&target.segments), allowed)?;
            return Ok(());
        }
        let operation =
            match self
                .operations
                .lookup(request.method, &target.segments, &target.query)
            {
                OperationMatch::Matched(op) => Some(op),
                OperationMatch::NoMatch => None,
                OperationMatch::InvalidPath(e) => {
                    return Err(Denial::new(Reason::InvalidPath, e.to_string()));
                }
                OperationMatch::InvalidQuery(e) => return Err(target::query_denial(e)),
                OperationMatch::InvalidContext { operation, problem } => {
                    return Err(Denial::new(
                        Reason::InvalidContext,
                        format!("{operation}: {problem}"),
                    ));
                }
            };
        let requires_service = operation.as_ref().is_some_and(|op| op.require_service);
        let found = sources::extract(&self.sources, request, &target.query)?;
        for token in [&found.user, &found.service].into_iter().flatten() {
            if token.token.len() > self.max_token_bytes {
                return Err(Denial::new(
                    Reason::TokenTooLarge,
                    format!("token exceeds {} bytes", self.max_token_bytes),
                ));
            }
        }
        let service = self.calling_service(
            state,
            store,
            &found,
            requires_service,
            request,
            env,
            now,
            decision,
        )?;
        let user = match &found.user {
            Some(token) => Some(self.verify_role(
                state,
                store,
                &token.token,
                TokenRole::User,
                request,
                env,
                now,
                decision,
            )?),
            None => None,
        };
        let identity = match (user, service) {
            (None, None) => {
                return Err(Denial::new(
                    Reason::MissingToken,
                    "a bearer token is required",
                ));
            }
            (Some(user), None) => user,
            (None, Some(service)) => service,
            (Some(user), Some(service)) => Arc::new(on_behalf_of(&user, &service)?),
        };
        if let Some(tenant) = operation.as_ref().and_then(|op| op.tenant.as_ref())
            && *tenant != identity.tenant
        {
            return Err(Denial::new(
                Reason::TenantMismatch,
                "the path names another tenant than the token's",
            ));
        }
        self.check_delegation(&identity, operation.as_ref())?;
        match &operation {
            Some(op) => self.check_scopes(&identity, op)?,
            None if self.unmatched == Unmatched::Authenticate || env.authorised_later => {}
            None => {
                return Err(Denial::new(
                    Reason::UnknownOperation,
                    "no operation matches this request",
                ));
            }
        }
        if !self.forward_token {
            for token in [&found.user, &found.service].into_iter().flatten() {
                sources::strip(token, request, &mut target.query, allowed);
            }
        }
        let path = match &operation {
            Some(op) => {
                if let Some(param) = op.context_param {
                    target.query.set(param, op.context.to_string().as_bytes());
                }
                op.path.clone()
            }
            None => canonical_path(&target.segments),
        };
        target.forward(request, &path, allowed)?;
        self.describe(&identity, operation.as_ref(), allowed);
        Ok(())
    }

    fn is_public(&self, method: &str, segments: &[String]) -> bool {
        self.public_paths
            .iter()
            .any(|p| p.matches(method, segments))
    }

    /// Delegation rules, on every request a delegated token makes: the
    /// subject must be allowed to delegate, the chain must be short enough,
    /// and a matched operation must be within the delegable scopes.
    fn check_delegation(
        &self,
        identity: &Identity,
        op: Option<&Operation<'_>>,
    ) -> Result<(), Denial> {
        if identity.actors.is_empty() {
            return Ok(());
        }
        let depth = identity.actors.len();
        let Some(rights) = identity.delegation.as_ref().filter(|d| d.can_delegate) else {
            return Err(Denial::new(
                Reason::DelegationNotAllowed,
                "the subject may not delegate",
            ));
        };
        let limit = rights.max_delegation_depth.min(self.max_delegation_depth);
        if depth > limit as usize {
            return Err(Denial::new(
                Reason::DelegationTooDeep,
                format!("the delegation chain has {depth} actors, at most {limit} allowed"),
            ));
        }
        if let Some(op) = op
            && !identity.delegatable.grants(op.action, &op.context)
        {
            let needed = required_scope(op.action, &op.context);
            return Err(Denial::scope(
                Reason::DelegationScopeNotDelegable,
                format!("{needed} may not be delegated"),
                needed,
            ));
        }
        Ok(())
    }

    /// The token's scopes must grant the operation's action on its context.
    fn check_scopes(&self, identity: &Identity, op: &Operation<'_>) -> Result<(), Denial> {
        if identity.scopes.grants(op.action, &op.context) {
            return Ok(());
        }
        let needed = required_scope(op.action, &op.context);
        Err(Denial::scope(
            Reason::InsufficientScope,
            format!("the token does not grant {needed}"),
            needed,
        ))
    }
}
