//! Who else is calling: the service behind the request (its client
//! certificate, its service token, or both), and the one principal a
//! service acting for a user makes.
//!
//! * A certificate mapped to a principal ([`super::principal`])
//!   authenticates the request as that service, with the principal's
//!   tenant and scopes. Where the principal sets `require_token`, a service
//!   token must come along; a service token that comes along must name the
//!   certificate identity as its `sub`, required or not.
//! * A service token without a certificate authenticates the request as
//!   the token's subject, with the token's tenant and scopes.
//! * A service with a user's token is one principal on behalf of the user
//!   ([`on_behalf_of`]): the user's subject and tenant, the service first
//!   in the actor chain, the scopes both grant.

use std::sync::Arc;

use super::compile::Auth;
use super::config::TokenRole;
use super::denial::{Denial, Reason};
use super::flow::{Decision, RequestEnv};
use super::identity::{Identity, actor_chain_header};
use super::principal::{Peer, identify};
use super::sources::FoundTokens;
use super::verify::AuthState;
use crate::contract::Caller;
use crate::http::RequestHead;
use crate::shared::SharedStore;

impl Auth {
    /// The calling service, if the request has one. `requires_service`:
    /// the operation needs a mapped client certificate.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn calling_service(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        found: &FoundTokens,
        requires_service: bool,
        request: &RequestHead<'_>,
        env: &RequestEnv<'_>,
        now: u64,
        decision: &mut Decision,
    ) -> Result<Option<Arc<Identity>>, Denial> {
        let peer = if self.services.is_empty() {
            Peer::NoCertificate
        } else {
            identify(&self.services, env.peer)
        };
        let principal = match peer {
            Peer::Service(service) => Some(service),
            Peer::Unknown(seen) if requires_service => {
                return Err(Denial::new(
                    Reason::UnknownServiceCertificate,
                    format!("the client certificate ({seen}) is not a known service"),
                ));
            }
            Peer::NoCertificate if requires_service => {
                return Err(Denial::new(
                    Reason::MissingClientCertificate,
                    "this operation requires a service's client certificate",
                ));
            }
            Peer::Unknown(_) | Peer::NoCertificate => None,
        };
        let token = match &found.service {
            Some(token) => Some(self.verify_role(
                state,
                store,
                &token.token,
                TokenRole::Service,
                request,
                env,
                now,
                decision,
            )?),
            None => None,
        };
        match (principal, token) {
            (Some(service), None) if service.require_token => Err(Denial::new(
                Reason::MissingServiceToken,
                format!("service {} must present a service token", service.name),
            )),
            (Some(service), Some(token)) if token.subject != service.peer.value() => {
                Err(Denial::new(
                    Reason::ServiceTokenMismatch,
                    format!(
                        "the service token's subject is not the certificate of service {}",
                        service.name
                    ),
                ))
            }
            (Some(service), _) => Ok(Some(Arc::clone(&service.identity))),
            (None, token) => Ok(token),
        }
    }

    /// Verifies a token that came from a source of `role`: only a provider
    /// of that role vouches for it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn verify_role(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        token: &str,
        role: TokenRole,
        request: &RequestHead<'_>,
        env: &RequestEnv<'_>,
        now: u64,
        decision: &mut Decision,
    ) -> Result<Arc<Identity>, Denial> {
        let identity = self.verify(state, store, token, request, env, now, decision)?;
        let issued_for = self.providers.get(identity.provider_index).map(|p| p.role);
        if issued_for != Some(role) {
            return Err(Denial::new(
                Reason::TokenRoleMismatch,
                match role {
                    TokenRole::User => "a service token was sent as a user's token",
                    TokenRole::Service => "a user's token was sent as a service token",
                },
            ));
        }
        Ok(identity)
    }
}

/// One principal for a service calling on behalf of a user: the user's
/// subject, tenant, tier and claims; the service first in the actor chain
/// (so the user's delegation rules, depth and delegable scopes, apply to
/// it as to any RFC 8693 actor); the scopes both the user and the service
/// grant. The user's token must name the service in `may_act` (RFC 8693
/// §4.4): 403 `on_behalf_of_not_allowed` otherwise.
pub(super) fn on_behalf_of(user: &Identity, service: &Identity) -> Result<Identity, Denial> {
    let name = service
        .service
        .clone()
        .unwrap_or_else(|| service.subject.clone());
    if !user.may_act.contains(&service.subject) {
        return Err(Denial::new(
            Reason::OnBehalfOfNotAllowed,
            format!("the user does not let service {name} act on its behalf"),
        ));
    }
    let actors: Vec<String> = std::iter::once(service.subject.clone())
        .chain(user.actors.iter().cloned())
        .collect();
    let scopes = user.scopes.intersect(&service.scopes);
    let caller = Caller {
        actors: actors.clone(),
        service: Some(name.clone()),
        on_behalf_of: true,
        ..(*user.caller).clone()
    };
    Ok(Identity {
        scopes_header: scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        scopes: Arc::new(scopes),
        actor_chain_header: actor_chain_header(&actors),
        actors,
        filter_state: serde_json::to_vec(&caller).unwrap_or_default(),
        caller: Arc::new(caller),
        service: Some(name),
        // Not a cached token's identity: nothing vouches for it later.
        key: None,
        ..user.clone()
    })
}
