//! What an allowed request carries on: the identity headers the upstream
//! reads, and the request contract ([`crate::contract`]) later stages read,
//! in memory and from Envoy filter state.

use super::compile::Auth;
use super::flow::Allowed;
use super::identity::Identity;
use crate::contract::{self, Established, MatchedOperation};
use crate::operation::Operation;
use std::sync::Arc;

impl Auth {
    /// Records the verified identity and the request contract on an
    /// allowed request (its headers: [`Allowed::headers`]).
    pub(super) fn describe(
        &self,
        identity: &Arc<Identity>,
        operation: Option<&Operation<'_>>,
        allowed: &mut Allowed,
    ) {
        let matched = operation.map(|op| Arc::new(MatchedOperation::from(op)));
        allowed.filter_state = contract::encode(&identity.filter_state, matched.as_deref());
        allowed.established = Established {
            identity: Some(Arc::clone(&identity.caller)),
            operation: matched,
            scopes: Some(Arc::clone(&identity.scopes)),
        };
        allowed.identity = Some(Arc::clone(identity));
    }
}
