//! Trusted issuers, compiled from the configuration: the algorithms,
//! audiences and key material (inline, or where remote keys come from)
//! of each, and the claim rules that turn its tokens into identities.

use std::collections::HashSet;
use std::sync::Arc;

use jwt_simple::prelude::{Duration, VerificationOptions};

use super::config::{JwksConfig, ProviderConfig, RemoteJwksConfig, TokenRole};
use super::shared_cache::provider_tag;
use crate::config::ConfigError;
use crate::jwt::{Algorithm, KeySet, TokenClaims};

/// One trusted issuer, compiled.
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Whose tokens it issues: only tokens from sources of this role.
    pub role: TokenRole,
    pub(super) audiences: HashSet<String>,
    pub(super) skew_seconds: u64,
    pub(super) require_expiration: bool,
    pub(super) max_lifetime_seconds: Option<u64>,
    pub(super) algorithms: HashSet<Algorithm>,
    pub(super) tenant_claim: String,
    pub(super) fixed_tenant: Option<String>,
    pub(super) allowed_tenants: Vec<String>,
    pub(super) scopes_claim: String,
    pub(super) options: VerificationOptions,
    /// Tells this provider's shared-cache entries from another
    /// configuration's.
    pub(super) tag: u64,
    /// Keys written in the configuration.
    pub inline_keys: Option<Arc<KeySet>>,
    /// Where remote keys come from.
    pub remote: Option<RemoteJwksConfig>,
}

impl Provider {
    /// Compiles `providers[i]` of the configuration; `max_token_bytes`
    /// bounds the tokens it verifies.
    pub(super) fn compile(
        i: usize,
        p: ProviderConfig,
        max_token_bytes: usize,
    ) -> Result<Provider, ConfigError> {
        let algorithms = match &p.algorithms {
            None => Algorithm::ALL.into_iter().collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Algorithm::from_name(n).ok_or_else(|| {
                        ConfigError::new(
                            format!("providers[{i}].algorithms"),
                            format!("unsupported algorithm '{n}'"),
                        )
                    })
                })
                .collect::<Result<HashSet<_>, _>>()?,
        };
        let (inline_keys, remote) = match p.jwks {
            JwksConfig::Inline(jwks) => {
                let parsed = KeySet::parse(&jwks.to_string()).map_err(|e| {
                    ConfigError::new(format!("providers[{i}].jwks.inline"), e.to_string())
                })?;
                if let Some(problem) = parsed.skipped.first() {
                    return Err(ConfigError::new(
                        format!("providers[{i}].jwks.inline"),
                        problem.clone(),
                    ));
                }
                (Some(Arc::new(parsed.keys.with_version(1))), None)
            }
            JwksConfig::Remote(remote) => (None, Some(remote)),
        };
        let audiences: HashSet<String> = p.audiences.iter().cloned().collect();
        let options = VerificationOptions {
            allowed_issuers: Some([p.issuer.clone()].into()),
            allowed_audiences: (!audiences.is_empty()).then(|| audiences.clone()),
            time_tolerance: Some(Duration::from_secs(p.clock_skew_seconds)),
            max_token_length: Some(max_token_bytes),
            ..VerificationOptions::default()
        };
        Ok(Provider {
            tag: provider_tag(&p.name, &p.issuer),
            name: p.name,
            issuer: p.issuer,
            role: p.role,
            audiences,
            skew_seconds: p.clock_skew_seconds,
            require_expiration: p.require_expiration,
            max_lifetime_seconds: p.max_lifetime_seconds,
            algorithms,
            tenant_claim: p.tenant_claim,
            fixed_tenant: p.tenant,
            allowed_tenants: p.tenants,
            scopes_claim: p.scopes_claim,
            options,
            inline_keys,
            remote,
        })
    }

    /// Checks claims read back from shared data as a verification would:
    /// issuer, audience and times (the signature was checked by whoever
    /// wrote the entry, and the key is checked by the caller).
    pub(super) fn recheck(&self, claims: &TokenClaims, now: u64) -> bool {
        let skew = self.skew_seconds;
        claims.issuer.as_deref() == Some(self.issuer.as_str())
            && (self.audiences.is_empty()
                || claims
                    .audiences
                    .as_ref()
                    .is_some_and(|a| a.contains(&self.audiences)))
            && claims
                .expires_at
                .is_none_or(|exp| exp.as_secs().saturating_add(skew) >= now)
            && claims
                .invalid_before
                .is_none_or(|nbf| nbf.as_secs() <= now.saturating_add(skew))
    }
}
