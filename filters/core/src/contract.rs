//! The request contract: what the auth stage establishes about a request
//! for the stages after it.
//!
//! In the pipeline the later stages get it in memory ([`Established`]).
//! The auth stage also writes it to Envoy filter state under
//! [`REQUEST_FILTER_STATE`] (`wasm.ctxgate.request` in Envoy), as JSON, for
//! stages running in another filter and for access logs. A client cannot
//! write filter state, so unlike a header this cannot be forged.
//!
//! The JSON is a wire format: e2e tests, access logs and older modules
//! read it. Its shape is
//! `{"identity": {...Caller...}, "operation": {"name", "action", "context"}}`
//! with `operation` absent when no operation matched.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::operation::Operation;
use crate::scope::ScopeSet;

/// Filter-state key (`wasm.ctxgate.request` in Envoy) holding what the auth
/// stage established about a request, as an [`Established`] in JSON.
/// Later ctxgate filters read it; a client cannot write filter state.
pub const REQUEST_FILTER_STATE: &str = "ctxgate.request";

/// What later stages learn from the auth stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Established {
    /// The verified caller; `None` for a request without a token (public
    /// path, CORS preflight) or when no auth stage ran.
    /// Shared, not copied, by the stages that read it.
    #[serde(default)]
    pub identity: Option<Arc<Caller>>,
    #[serde(default)]
    pub operation: Option<Arc<MatchedOperation>>,
    /// The caller's scopes, for stages that authorise by what the body
    /// says (MCP). Only in memory: in the same pipeline as auth.
    #[serde(skip)]
    pub scopes: Option<Arc<ScopeSet>>,
}

impl Established {
    /// Parses the filter-state value; anything unreadable is "nothing known".
    pub fn parse(bytes: Option<&[u8]>) -> Established {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }
}

/// The verified caller, as later stages see it: what the token says, once
/// its signature and claims were checked. Serialized once per token (see
/// [`crate::auth::identity::Identity::filter_state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub tenant: String,
    pub subject: String,
    pub tier: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitClaims>,
    /// String claims the auth stage is configured to pass on
    /// (`filter_state_claims`), e.g. a data-residency region for tagging.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// The calling service's principal name (its client certificate or
    /// service token), when a service called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The service called on behalf of the user named by `subject` (and
    /// `tenant`): the service is the first of `actors` too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_behalf_of: bool,
}

/// The `rate_limits` claim, passed on to the rate limiter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_operations_per_hour: Option<u64>,
}

/// The operation the request matched in the operation map, as later
/// stages see it (the map's own [`Operation`] borrows from the map).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchedOperation {
    pub name: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub context: String,
    /// What an MCP message acts on: the tool's or prompt's name, or the
    /// resource's URI (`tools/call`, `prompts/get`, `resources/read`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl From<&Operation<'_>> for MatchedOperation {
    fn from(op: &Operation<'_>) -> MatchedOperation {
        MatchedOperation {
            name: op.name.to_owned(),
            action: op.action.as_str().to_owned(),
            context: op.context.to_string(),
            target: None,
        }
    }
}

/// The [`Established`] JSON, from the caller's JSON (serialized once per
/// token) and the operation of this request.
pub fn encode(caller_json: &[u8], operation: Option<&MatchedOperation>) -> Vec<u8> {
    let operation = operation.and_then(|op| serde_json::to_vec(op).ok());
    let mut out =
        Vec::with_capacity(caller_json.len() + operation.as_ref().map_or(0, Vec::len) + 32);
    out.extend_from_slice(b"{\"identity\":");
    out.extend_from_slice(caller_json);
    if let Some(op) = operation {
        out.extend_from_slice(b",\"operation\":");
        out.extend_from_slice(&op);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_state_json_keeps_its_shape() {
        let caller = Caller {
            tenant: "acme".into(),
            subject: "alice".into(),
            tier: "standard".into(),
            issuer: "https://idp.test".into(),
            actors: vec!["agent".into()],
            rate_limits: Some(RateLimitClaims {
                tier: None,
                requests_per_minute: Some(600),
                context_operations_per_hour: None,
            }),
            claims: BTreeMap::from([("data_region".to_owned(), "eu".to_owned())]),
            service: Some("ingest".into()),
            on_behalf_of: true,
        };
        let operation = MatchedOperation {
            name: "read".into(),
            action: "read".into(),
            context: "projects/eng".into(),
            target: None,
        };
        let caller_json = serde_json::to_vec(&caller).unwrap();
        let bytes = encode(&caller_json, Some(&operation));
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"identity":{"tenant":"acme","subject":"alice","tier":"standard","issuer":"https://idp.test","actors":["agent"],"rate_limits":{"requests_per_minute":600},"claims":{"data_region":"eu"},"service":"ingest","on_behalf_of":true},"operation":{"name":"read","action":"read","context":"projects/eng"}}"#
        );
        assert_eq!(
            Established::parse(Some(&bytes)),
            Established {
                identity: Some(caller.into()),
                operation: Some(operation.into()),
                scopes: None,
            }
        );
        assert_eq!(
            String::from_utf8(encode(b"{}", None)).unwrap(),
            r#"{"identity":{}}"#
        );
        assert_eq!(
            Established::parse(Some(b"nonsense")),
            Established::default()
        );
    }
}
