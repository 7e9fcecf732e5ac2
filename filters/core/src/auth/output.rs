//! What an allowed request carries on: the identity headers the upstream
//! reads, and the request contract ([`crate::contract`]) later stages read,
//! in memory and from Envoy filter state.

use super::compile::Auth;
use super::flow::Allowed;
use super::identity::Identity;
use crate::contract::{self, Established, MatchedOperation};
use crate::operation::Operation;

impl Auth {
    /// Sets the verified identity's headers and the request contract on
    /// an allowed request.
    pub(super) fn describe(
        &self,
        identity: &Identity,
        operation: Option<&Operation<'_>>,
        allowed: &mut Allowed,
    ) {
        let h = &self.headers;
        allowed
            .set_headers
            .push((h.tenant.clone(), identity.tenant.clone()));
        allowed
            .set_headers
            .push((h.subject.clone(), identity.subject.clone()));
        allowed
            .set_headers
            .push((h.tier.clone(), identity.tier.clone()));
        allowed
            .set_headers
            .push((h.scopes.clone(), identity.scopes_header.clone()));
        allowed
            .set_headers
            .push((h.issuer.clone(), identity.issuer.clone()));
        if !identity.actors.is_empty() {
            allowed
                .set_headers
                .push((h.actor_chain.clone(), identity.actor_chain_header()));
        }
        let matched = operation.map(MatchedOperation::from);
        if let Some(op) = &matched {
            allowed
                .set_headers
                .push((h.operation.clone(), op.name.clone()));
            allowed
                .set_headers
                .push((h.context_path.clone(), op.context.clone()));
        }
        allowed.filter_state = contract::encode(&identity.filter_state, matched.as_ref());
        allowed.established = Established {
            identity: Some(identity.caller.clone()),
            operation: matched,
        };
        allowed.tenant = Some(identity.tenant.clone());
    }
}
