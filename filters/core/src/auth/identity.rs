//! The verified identity a token establishes, and how claims become one.
//!
//! Everything that ends up in a header sent upstream is validated here:
//! claim values are attacker-influenced strings until a signature says
//! otherwise, and even then a control character in a header value would
//! break the request. Tenants are held to a strict alphabet because they
//! key rate limits, routing and shared-data slots.

use serde::Deserialize;
use serde_json::Value;

use crate::contract::{Caller, RateLimitClaims};
use crate::jwt::{KeyRef, TokenClaims, TokenError};
use crate::scope::ScopeSet;
use std::sync::Arc;

/// Tenant ids: 1-128 characters of `[A-Za-z0-9._:-]`, starting alphanumeric.
pub fn is_valid_tenant(tenant: &str) -> bool {
    let mut bytes = tenant.bytes();
    tenant.len() <= 128
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Short printable labels (subjects, tiers, actors): 1-256 bytes, no
/// control characters, no leading/trailing whitespace.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 256
        && !label.chars().any(char::is_control)
        && label.trim() == label
}

/// The `delegation_rights` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DelegationRights {
    #[serde(default)]
    pub can_delegate: bool,
    #[serde(default)]
    pub max_delegation_depth: u32,
    #[serde(default)]
    pub delegatable_scopes: Vec<String>,
}

/// A verified token, as cached and as used for every request carrying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    /// Index of the provider in the configuration.
    pub provider_index: usize,
    /// The key that verified the token: cached verdicts stop counting once
    /// that key is gone from (or replaced in) the provider's key set.
    pub key: Option<KeyRef>,
    pub issuer: String,
    pub subject: String,
    pub tenant: String,
    pub tier: String,
    pub scopes: Arc<ScopeSet>,
    /// Scopes as sent upstream: canonical, space-separated.
    pub scopes_header: String,
    /// RFC 8693 actor chain, current actor first.
    pub actors: Vec<String>,
    /// The actor chain as one header value: actors joined by `,`, each
    /// actor percent-encoding any `,` or `%` it contains.
    pub actor_chain_header: String,
    pub delegation: Option<DelegationRights>,
    pub delegatable: ScopeSet,
    /// Services the subject lets act on its behalf: the `sub` of each RFC
    /// 8693 `may_act` claim entry (an object, or an array of objects).
    pub may_act: Vec<String>,
    pub rate_limits: Option<RateLimitClaims>,
    /// Unix seconds after which this identity must not be used (the
    /// token's `exp` plus the provider's skew), if the token expires.
    pub valid_until: Option<u64>,
    /// The caller as other ctxgate filters read it from Envoy filter state
    /// (see [`crate::contract`]), serialized once per token.
    pub filter_state: Vec<u8>,
    /// The same, for the stages of the same pipeline (no JSON round trip).
    pub caller: Arc<Caller>,
    /// The calling service's principal name, when a service called (see
    /// [`Caller::service`]).
    pub service: Option<String>,
}

/// How claims map to an identity, per provider.
pub struct ClaimRules<'a> {
    pub provider: &'a str,
    pub provider_index: usize,
    pub tenant_claim: &'a str,
    pub fixed_tenant: Option<&'a str>,
    /// Tenants this provider may assert (empty: any).
    pub allowed_tenants: &'a [String],
    pub scopes_claim: &'a str,
    pub default_tier: &'a str,
    pub require_expiration: bool,
    pub skew_seconds: u64,
    /// Claims copied into [`Caller::claims`] when they are strings.
    pub forwarded_claims: &'a [String],
    /// Longest accepted time from now to `exp`.
    pub max_lifetime_seconds: Option<u64>,
    /// The provider issues service tokens: the subject is a calling
    /// service, named in [`Identity::service`].
    pub service: bool,
    /// Unix seconds, for the lifetime check.
    pub now: u64,
}

fn malformed(why: &str) -> TokenError {
    TokenError::Malformed(why.into())
}

impl Identity {
    pub fn from_claims(
        claims: &TokenClaims,
        rules: &ClaimRules<'_>,
    ) -> Result<Identity, TokenError> {
        let valid_until = match claims.expires_at {
            Some(exp)
                if rules
                    .max_lifetime_seconds
                    .is_some_and(|max| exp.as_secs() > rules.now.saturating_add(max)) =>
            {
                return Err(TokenError::LifetimeTooLong);
            }
            Some(exp) => Some(exp.as_secs().saturating_add(rules.skew_seconds)),
            None if rules.require_expiration => return Err(TokenError::MissingClaim("exp")),
            None => None,
        };
        let issuer = claims
            .issuer
            .clone()
            .ok_or(TokenError::MissingClaim("iss"))?;
        let subject = claims
            .subject
            .clone()
            .ok_or(TokenError::MissingClaim("sub"))?;
        if !is_valid_label(&subject) {
            return Err(malformed("sub is not a printable label"));
        }
        let extra = &claims.custom;
        let claimed_tenant = match extra.get(rules.tenant_claim) {
            None => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(malformed("the tenant claim is not a string")),
        };
        let tenant = match (rules.fixed_tenant, claimed_tenant) {
            (Some(fixed), None) => fixed,
            (Some(fixed), Some(claimed)) if claimed == fixed => fixed,
            (Some(_), Some(_)) => return Err(TokenError::TenantNotAllowed),
            (None, Some(claimed)) => claimed,
            (None, None) => return Err(TokenError::MissingClaim("tenant")),
        };
        if !is_valid_tenant(tenant) {
            return Err(malformed("the tenant is not a valid tenant id"));
        }
        if !rules.allowed_tenants.is_empty() && !rules.allowed_tenants.iter().any(|t| t == tenant) {
            return Err(TokenError::TenantNotAllowed);
        }
        let scope_texts: Vec<&str> = match extra.get(rules.scopes_claim) {
            None => Vec::new(),
            Some(Value::String(s)) => s.split_ascii_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(malformed(
                    "the scopes claim is neither a string nor an array",
                ));
            }
        };
        let scopes = ScopeSet::parse(scope_texts).map_err(|_| TokenError::InvalidScopes)?;
        let scopes_header = scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let rate_limits = match extra.get("rate_limits") {
            None | Some(Value::Null) => None,
            Some(v) if !v.is_object() => return Err(malformed("rate_limits is not an object")),
            Some(v) => Some(
                serde_json::from_value::<RateLimitClaims>(v.clone())
                    .map_err(|_| malformed("rate_limits is malformed"))?,
            ),
        };
        let tier = rate_limits
            .as_ref()
            .and_then(|r| r.tier.clone())
            .unwrap_or_else(|| rules.default_tier.to_owned());
        if !is_valid_label(&tier) {
            return Err(malformed("rate_limits.tier is not a printable label"));
        }
        let delegation = match extra.get("delegation_rights") {
            None | Some(Value::Null) => None,
            Some(v) if !v.is_object() => {
                return Err(malformed("delegation_rights is not an object"));
            }
            Some(v) => Some(
                serde_json::from_value::<DelegationRights>(v.clone())
                    .map_err(|_| malformed("delegation_rights is malformed"))?,
            ),
        };
        let delegatable = delegation
            .as_ref()
            .map(|d| ScopeSet::parse(d.delegatable_scopes.iter().map(String::as_str)))
            .transpose()
            .map_err(|_| TokenError::InvalidScopes)?
            .unwrap_or_default();
        let actors = actor_chain(extra.get("act"))?;
        let may_act = may_act(extra.get("may_act"))?;
        let caller = Caller {
            tenant: tenant.to_owned(),
            subject: subject.clone(),
            tier: tier.clone(),
            issuer: issuer.clone(),
            actors: actors.clone(),
            rate_limits: rate_limits.clone(),
            claims: rules
                .forwarded_claims
                .iter()
                .filter_map(|name| {
                    let value = extra
                        .get(name)
                        .and_then(Value::as_str)
                        .filter(|v| is_valid_label(v))?;
                    Some((name.clone(), value.to_owned()))
                })
                .collect(),
            service: rules.service.then(|| subject.clone()),
            on_behalf_of: false,
        };
        let filter_state =
            serde_json::to_vec(&caller).map_err(|e| TokenError::Malformed(e.to_string()))?;
        Ok(Identity {
            provider: rules.provider.to_owned(),
            provider_index: rules.provider_index,
            key: None,
            issuer,
            subject,
            tenant: tenant.to_owned(),
            tier,
            scopes: Arc::new(scopes),
            scopes_header,
            actor_chain_header: actor_chain_header(&actors),
            actors,
            delegation,
            delegatable,
            may_act,
            rate_limits,
            valid_until,
            filter_state,
            service: caller.service.clone(),
            caller: Arc::new(caller),
        })
    }
}

/// The actor chain as one header value.
pub(super) fn actor_chain_header(actors: &[String]) -> String {
    actors
        .iter()
        .map(|a| a.replace('%', "%25").replace(',', "%2C"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads RFC 8693 `may_act`: who may act for the subject. An object with
/// `sub`, or (for several services) an array of them.
fn may_act(claim: Option<&Value>) -> Result<Vec<String>, TokenError> {
    let entries = match claim {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
    };
    if entries.len() > MAX_ACTOR_CHAIN {
        return Err(malformed("may_act names too many actors"));
    }
    entries
        .into_iter()
        .map(|entry| {
            let sub = entry
                .get("sub")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("may_act has an entry without sub"))?;
            if !is_valid_label(sub) {
                return Err(malformed("may_act.sub is not a printable label"));
            }
            Ok(sub.to_owned())
        })
        .collect()
}

/// Longest actor chain read from a token; deeper chains are refused here,
/// before any configured limit is even considered.
const MAX_ACTOR_CHAIN: usize = 32;

/// Reads the nested RFC 8693 `act` claim into a list of actor subjects.
fn actor_chain(act: Option<&Value>) -> Result<Vec<String>, TokenError> {
    let mut actors = Vec::new();
    let mut current = act;
    while let Some(value) = current {
        if value.is_null() {
            break;
        }
        let Value::Object(actor) = value else {
            return Err(malformed("act is not an object"));
        };
        let sub = actor
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("act has no sub"))?;
        if !is_valid_label(sub) {
            return Err(malformed("act.sub is not a printable label"));
        }
        if actors.len() == MAX_ACTOR_CHAIN {
            return Err(malformed("the act chain is too deep"));
        }
        actors.push(sub.to_owned());
        current = actor.get("act");
    }
    Ok(actors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::ExtraClaims;
    use jwt_simple::prelude::*;
    use serde_json::json;

    fn rules() -> ClaimRules<'static> {
        ClaimRules {
            provider: "p",
            provider_index: 0,
            tenant_claim: "tenant_id",
            fixed_tenant: None,
            allowed_tenants: &[],
            scopes_claim: "context_scopes",
            default_tier: "standard",
            require_expiration: true,
            skew_seconds: 60,
            forwarded_claims: &[],
            max_lifetime_seconds: None,
            service: false,
            now: 0,
        }
    }

    fn claims(extra: serde_json::Value) -> crate::jwt::TokenClaims {
        let custom: ExtraClaims = serde_json::from_value(extra).unwrap();
        Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer("iss")
            .with_subject("alice")
    }

    #[test]
    fn claims_become_an_identity() {
        let c = claims(json!({
            "tenant_id": "acme",
            "context_scopes": ["read:projects/*", "bogus", "write:Projects/Eng"],
            "rate_limits": {"tier": "premium", "requests_per_minute": 600},
            "act": {"sub": "agent-7", "act": {"sub": "planner,v2"}},
        }));
        let id = Identity::from_claims(&c, &rules()).unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.tier, "premium");
        assert_eq!(id.scopes_header, "read:projects/* write:projects/eng");
        assert_eq!(id.scopes.rejected(), 1);
        assert_eq!(id.actors, vec!["agent-7", "planner,v2"]);
        assert_eq!(id.actor_chain_header, "agent-7,planner%2Cv2");
        let caller: Caller = serde_json::from_slice(&id.filter_state).unwrap();
        assert_eq!(caller.rate_limits.unwrap().requests_per_minute, Some(600));
    }

    #[test]
    fn scopes_may_be_a_space_separated_string() {
        let c = claims(json!({"tenant_id": "acme", "context_scopes": "read:a write:b"}));
        assert_eq!(
            Identity::from_claims(&c, &rules()).unwrap().scopes_header,
            "read:a write:b"
        );
    }

    #[test]
    fn tenants_are_validated_and_pinned() {
        let c = claims(json!({"tenant_id": "acme\r\nx-evil: 1"}));
        assert!(Identity::from_claims(&c, &rules()).is_err());
        let c = claims(json!({}));
        assert_eq!(
            Identity::from_claims(&c, &rules()).unwrap_err(),
            TokenError::MissingClaim("tenant")
        );
        let pinned = ClaimRules {
            fixed_tenant: Some("globex"),
            ..rules()
        };
        assert_eq!(Identity::from_claims(&c, &pinned).unwrap().tenant, "globex");
        let c = claims(json!({"tenant_id": "acme"}));
        assert_eq!(
            Identity::from_claims(&c, &pinned).unwrap_err(),
            TokenError::TenantNotAllowed
        );
        let listed = ["acme".to_owned(), "initech".to_owned()];
        let bound = ClaimRules {
            allowed_tenants: &listed,
            ..rules()
        };
        assert_eq!(Identity::from_claims(&c, &bound).unwrap().tenant, "acme");
        let c = claims(json!({"tenant_id": "globex"}));
        assert_eq!(
            Identity::from_claims(&c, &bound).unwrap_err(),
            TokenError::TenantNotAllowed
        );
    }

    #[test]
    fn ambiguous_scopes_invalidate_the_token() {
        for scopes in [
            json!(["read:projects/a b"]),
            json!(["read:projects%2Fsecret"]),
            json!("read:projects/a read:x;y"),
            json!(["read:projects/\u{0}"]),
        ] {
            let c = claims(json!({"tenant_id": "acme", "context_scopes": scopes}));
            assert_eq!(
                Identity::from_claims(&c, &rules()).unwrap_err(),
                TokenError::InvalidScopes,
                "{scopes}"
            );
        }
        let c = claims(
            json!({"tenant_id": "acme", "delegation_rights": {"can_delegate": true, "delegatable_scopes": ["read:a%2Fb"]}}),
        );
        assert_eq!(
            Identity::from_claims(&c, &rules()).unwrap_err(),
            TokenError::InvalidScopes
        );
    }

    #[test]
    fn expiration_is_required_by_default() {
        let mut c = claims(json!({"tenant_id": "acme"}));
        c.expires_at = None;
        assert_eq!(
            Identity::from_claims(&c, &rules()).unwrap_err(),
            TokenError::MissingClaim("exp")
        );
        let lenient = ClaimRules {
            require_expiration: false,
            ..rules()
        };
        assert_eq!(
            Identity::from_claims(&c, &lenient).unwrap().valid_until,
            None
        );
    }

    #[test]
    fn malformed_actor_chains_are_refused() {
        for act in [
            json!("agent"),
            json!({"act": {"sub": "x"}}),
            json!({"sub": 7}),
        ] {
            let c = claims(json!({"tenant_id": "acme", "act": act}));
            assert!(Identity::from_claims(&c, &rules()).is_err(), "{act}");
        }
        let mut deep = json!({"sub": "a0"});
        for i in 1..40 {
            deep = json!({"sub": format!("a{i}"), "act": deep});
        }
        let c = claims(json!({"tenant_id": "acme", "act": deep}));
        assert!(Identity::from_claims(&c, &rules()).is_err());
    }

    #[test]
    fn label_rules() {
        assert!(is_valid_tenant("acme-corp.eu:1"));
        assert!(!is_valid_tenant("-acme"));
        assert!(!is_valid_tenant(""));
        assert!(!is_valid_tenant("a b"));
        assert!(!is_valid_label(" padded"));
        assert!(!is_valid_label("tab\there"));
        assert!(is_valid_label("user@example.com"));
    }
}
