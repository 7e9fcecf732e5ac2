//! The auth filter's plugin configuration (JSON), and its validation.
//!
//! Parsing is strict: unknown fields are errors, and every error names the
//! field it is about (`providers[1].jwks.inline: ...`), because the only
//! place an operator sees it is one line in Envoy's log.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::client::ClientConfig;
use crate::operation::OperationRule;
use crate::path::PathParameters;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `realm` in `WWW-Authenticate` challenges.
    #[serde(default = "defaults::realm")]
    pub realm: String,
    /// Token issuers. A token is verified by the provider whose `issuer`
    /// equals its `iss` claim.
    pub providers: Vec<ProviderConfig>,
    /// Where tokens are looked for. Default: `Authorization: Bearer`.
    #[serde(default = "defaults::token_sources")]
    pub token_sources: Vec<TokenSourceConfig>,
    /// Keep the token's header in the request to the upstream. Off by
    /// default, like Envoy's jwt_authn: upstreams get identity headers.
    #[serde(default)]
    pub forward_token: bool,
    /// Tokens longer than this are refused unread.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// The operation map (method + path -> operation, action, context).
    #[serde(default)]
    pub operations: Vec<OperationRule>,
    /// Paths served without a token.
    #[serde(default)]
    pub public_paths: Vec<PublicPathConfig>,
    /// What to do with requests that match no operation and no public
    /// path: `deny` (403) or `authenticate` (any valid token passes).
    #[serde(default)]
    pub unmatched_requests: Unmatched,
    /// Let CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) through without a token.
    #[serde(default = "defaults::yes")]
    pub allow_cors_preflight: bool,
    /// Names of the trusted identity headers sent to the upstream.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
    /// Tier reported when a token carries no `rate_limits.tier`.
    #[serde(default = "defaults::tier")]
    pub default_tier: String,
    /// Hard cap on delegation chains, whatever a token allows itself.
    #[serde(default = "defaults::max_delegation_depth")]
    pub max_delegation_depth: u32,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Token claims (string values) passed on to later filters in filter
    /// state, e.g. `["data_region"]` for region tagging.
    #[serde(default)]
    pub filter_state_claims: Vec<String>,
    /// `;` inside a path segment: `reject` (400, the default) or `allow`
    /// (an ordinary character, forwarded as `%3B`).
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Headers that ask an upstream framework to treat the request as
    /// another method. A request whose override differs from `:method` is
    /// refused (400): the gateway would authorize one method and the
    /// upstream act on another.
    #[serde(default = "defaults::method_override_headers")]
    pub method_override_headers: Vec<String>,
    /// Query parameters that do the same (`_method`).
    #[serde(default = "defaults::method_override_params")]
    pub method_override_params: Vec<String>,
    /// Failed token verifications per client (see
    /// [`VerificationThrottleConfig`]).
    #[serde(default)]
    pub verification_throttle: VerificationThrottleConfig,
}

/// A client whose tokens keep failing verification is refused (429)
/// before any further signature work: a flood of bad signatures costs the
/// gateway a shared-data read per request, not a signature check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerificationThrottleConfig {
    /// Failed verifications (that cost a signature check) a client may
    /// cause per window; 0 disables the throttle.
    pub failures: u64,
    pub window_seconds: u64,
    /// How the client is identified (its address, see [`ClientConfig`]).
    pub client: ClientConfig,
    /// Shared-data slots of the per-client table.
    pub slots: u32,
}

impl Default for VerificationThrottleConfig {
    fn default() -> Self {
        VerificationThrottleConfig {
            failures: 100,
            window_seconds: 60,
            client: ClientConfig::default(),
            slots: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name used in logs, metrics and shared-data keys.
    pub name: String,
    /// The exact `iss` this provider verifies.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them. Empty means
    /// the audience is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "defaults::clock_skew_seconds")]
    pub clock_skew_seconds: u64,
    /// Refuse tokens without `exp`.
    #[serde(default = "defaults::yes")]
    pub require_expiration: bool,
    /// Refuse tokens whose `exp` is further than this from now.
    #[serde(default)]
    pub max_lifetime_seconds: Option<u64>,
    /// Accepted algorithms (default: all that the keys support).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Claim holding the tenant.
    #[serde(default = "defaults::tenant_claim")]
    pub tenant_claim: String,
    /// For single-tenant issuers: the tenant every token of this issuer
    /// belongs to. A token claiming another tenant is refused.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The tenants this issuer may assert; a token claiming another is
    /// refused (`tenant_not_allowed`). With more than one provider, every
    /// provider must set `tenants` or `tenant`: otherwise one issuer could
    /// mint tokens for another's tenants.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Claim holding the context scopes (array of strings, or one
    /// space-separated string).
    #[serde(default = "defaults::scopes_claim")]
    pub scopes_claim: String,
    pub jwks: JwksConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum JwksConfig {
    /// A JWK Set written into the configuration.
    Inline(serde_json::Value),
    /// A JWK Set fetched from an Envoy cluster and refreshed.
    Remote(RemoteJwksConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// Envoy cluster serving the JWK Set.
    pub cluster: String,
    #[serde(default = "defaults::jwks_path")]
    pub path: String,
    /// `:authority` of the fetch (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "defaults::jwks_timeout_ms")]
    pub timeout_ms: u64,
    /// How often a good key set is refreshed.
    #[serde(default = "defaults::jwks_refresh_interval_seconds")]
    pub refresh_interval_seconds: u64,
    /// First retry delay after a failed fetch; doubles up to
    /// `refresh_interval_seconds`.
    #[serde(default = "defaults::jwks_retry_interval_seconds")]
    pub retry_interval_seconds: u64,
    /// A token with an unknown `kid` triggers an early refresh, at most
    /// this often (key rotation without waiting for the refresh interval).
    #[serde(default = "defaults::jwks_min_refresh_interval_seconds")]
    pub min_refresh_interval_seconds: u64,
    /// Install symmetric (`oct`) keys from this key set. Off: an HMAC
    /// secret published by an HTTP endpoint is not a secret.
    #[serde(default)]
    pub allow_symmetric_keys: bool,
}

/// One place a token may be carried. Exactly one of `header`, `query`,
/// `cookie` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    #[serde(default)]
    pub header: Option<String>,
    /// For headers: the scheme in front of the token, matched case
    /// insensitively (`Bearer `).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicPathConfig {
    #[serde(default)]
    pub exact: Option<String>,
    /// Matches the path and everything below it, per segment.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Methods this applies to (default: all).
    #[serde(default)]
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    #[default]
    Deny,
    Authenticate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    pub tenant: String,
    pub subject: String,
    pub tier: String,
    pub scopes: String,
    pub issuer: String,
    pub actor_chain: String,
    pub operation: String,
    pub context_path: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            tenant: "x-context-tenant".into(),
            subject: "x-context-subject".into(),
            tier: "x-context-tier".into(),
            scopes: "x-context-scopes".into(),
            issuer: "x-context-issuer".into(),
            actor_chain: "x-context-actor-chain".into(),
            operation: "x-context-operation".into(),
            context_path: "x-context-path".into(),
        }
    }
}

impl IdentityHeaders {
    pub fn all(&self) -> [&str; 8] {
        [
            &self.tenant,
            &self.subject,
            &self.tier,
            &self.scopes,
            &self.issuer,
            &self.actor_chain,
            &self.operation,
            &self.context_path,
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Verified tokens kept per worker VM (0 disables the cache).
    pub max_entries: usize,
    /// How long a refused token stays refused without re-verification.
    pub failure_ttl_seconds: u64,
    /// Upper bound on how long a verified token is trusted from cache
    /// (never beyond its `exp`).
    pub max_ttl_seconds: u64,
    /// Slots of the cross-worker cache in shared data (0 disables it).
    pub shared_slots: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 8192,
            failure_ttl_seconds: 10,
            max_ttl_seconds: 3600,
            shared_slots: 1024,
        }
    }
}

mod defaults {
    use super::TokenSourceConfig;

    pub fn realm() -> String {
        "ctxgate".into()
    }
    pub fn token_sources() -> Vec<TokenSourceConfig> {
        vec![TokenSourceConfig {
            header: Some("authorization".into()),
            prefix: Some("Bearer ".into()),
            query: None,
            cookie: None,
        }]
    }
    pub fn max_token_bytes() -> usize {
        8192
    }
    pub fn yes() -> bool {
        true
    }
    pub fn tier() -> String {
        "standard".into()
    }
    pub fn max_delegation_depth() -> u32 {
        5
    }
    pub fn clock_skew_seconds() -> u64 {
        60
    }
    pub fn tenant_claim() -> String {
        "tenant_id".into()
    }
    pub fn scopes_claim() -> String {
        "context_scopes".into()
    }
    pub fn jwks_path() -> String {
        "/.well-known/jwks.json".into()
    }
    pub fn jwks_timeout_ms() -> u64 {
        5000
    }
    pub fn jwks_refresh_interval_seconds() -> u64 {
        300
    }
    pub fn jwks_retry_interval_seconds() -> u64 {
        2
    }
    pub fn jwks_min_refresh_interval_seconds() -> u64 {
        30
    }
    pub fn method_override_headers() -> Vec<String> {
        [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn method_override_params() -> Vec<String> {
        vec!["_method".into()]
    }
}

/// A configuration error: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<crate::operation::OperationConfigError> for ConfigError {
    fn from(e: crate::operation::OperationConfigError) -> ConfigError {
        ConfigError::new(format!("operations[{}]", e.index), e.message)
    }
}

/// Parses JSON into `T`, reporting the path of the offending field.
pub fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::new(field, message)
    })
}

/// Lower-case HTTP token characters only: what Envoy stores header names as.
pub fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("'{name}' is not a lower-case header name"),
        ))
    }
}

impl AuthConfig {
    /// Checks what serde cannot: non-empty and unique names, sane bounds.
    /// Key material and the operation map are checked when compiled.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError::new(
                "providers",
                "at least one provider is required",
            ));
        }
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let field = |f: &str| format!("providers[{i}].{f}");
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(ConfigError::new(
                    field("name"),
                    "must be non-empty [A-Za-z0-9_-]",
                ));
            }
            if !names.insert(&p.name) {
                return Err(ConfigError::new(
                    field("name"),
                    format!("'{}' is used twice", p.name),
                ));
            }
            if p.issuer.is_empty() {
                return Err(ConfigError::new(field("issuer"), "must not be empty"));
            }
            if !issuers.insert(&p.issuer) {
                return Err(ConfigError::new(
                    field("issuer"),
                    format!("'{}' is used by two providers", p.issuer),
                ));
            }
            if p.clock_skew_seconds > 3600 {
                return Err(ConfigError::new(
                    field("clock_skew_seconds"),
                    "must be at most 3600",
                ));
            }
            if p.tenant_claim.is_empty() {
                return Err(ConfigError::new(field("tenant_claim"), "must not be empty"));
            }
            if p.scopes_claim.is_empty() {
                return Err(ConfigError::new(field("scopes_claim"), "must not be empty"));
            }
            if let Some(tenant) = &p.tenant
                && !super::identity::is_valid_tenant(tenant)
            {
                return Err(ConfigError::new(
                    field("tenant"),
                    format!("'{tenant}' is not a valid tenant id"),
                ));
            }
            for (j, tenant) in p.tenants.iter().enumerate() {
                if !super::identity::is_valid_tenant(tenant) {
                    return Err(ConfigError::new(
                        field(&format!("tenants[{j}]")),
                        format!("'{tenant}' is not a valid tenant id"),
                    ));
                }
            }
            if p.tenant.is_some() && !p.tenants.is_empty() {
                return Err(ConfigError::new(
                    field("tenants"),
                    "set tenant (one pinned tenant) or tenants (a list), not both",
                ));
            }
            if self.providers.len() > 1 && p.tenant.is_none() && p.tenants.is_empty() {
                return Err(ConfigError::new(
                    field("tenants"),
                    "with more than one provider, each must list the tenants it may assert \
                     (tenants) or pin one (tenant)",
                ));
            }
            if let JwksConfig::Remote(r) = &p.jwks {
                let field = |f: &str| format!("providers[{i}].jwks.remote.{f}");
                if r.cluster.is_empty() {
                    return Err(ConfigError::new(field("cluster"), "must not be empty"));
                }
                if !r.path.starts_with('/') {
                    return Err(ConfigError::new(field("path"), "must start with '/'"));
                }
                if !(1..=60_000).contains(&r.timeout_ms) {
                    return Err(ConfigError::new(
                        field("timeout_ms"),
                        "must be between 1 and 60000",
                    ));
                }
                if r.refresh_interval_seconds == 0 || r.retry_interval_seconds == 0 {
                    return Err(ConfigError::new(
                        field("refresh_interval_seconds"),
                        "intervals must be positive",
                    ));
                }
            }
        }
        if self.token_sources.is_empty() {
            return Err(ConfigError::new(
                "token_sources",
                "at least one source is required",
            ));
        }
        for (i, s) in self.token_sources.iter().enumerate() {
            let field = format!("token_sources[{i}]");
            let set = [s.header.is_some(), s.query.is_some(), s.cookie.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if set != 1 {
                return Err(ConfigError::new(
                    field,
                    "set exactly one of header, query, cookie",
                ));
            }
            if let Some(h) = &s.header {
                check_header_name(&format!("{field}.header"), h)?;
            } else if s.prefix.is_some() {
                return Err(ConfigError::new(
                    format!("{field}.prefix"),
                    "only applies to header sources",
                ));
            }
            if s.query
                .as_deref()
                .or(s.cookie.as_deref())
                .is_some_and(str::is_empty)
            {
                return Err(ConfigError::new(
                    field,
                    "the parameter or cookie name must not be empty",
                ));
            }
        }
        if !(256..=65536).contains(&self.max_token_bytes) {
            return Err(ConfigError::new(
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        for (i, p) in self.public_paths.iter().enumerate() {
            let field = format!("public_paths[{i}]");
            match (&p.exact, &p.prefix) {
                (Some(path), None) | (None, Some(path)) if path.starts_with('/') => {}
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "set exactly one of exact, prefix, starting with '/'",
                    ));
                }
            }
        }
        let names = self.identity_headers.all();
        for (i, name) in names.iter().enumerate() {
            check_header_name("identity_headers", name)?;
            if names.iter().skip(i + 1).any(|other| other == name) {
                return Err(ConfigError::new(
                    "identity_headers",
                    format!("'{name}' is used twice"),
                ));
            }
        }
        if !super::identity::is_valid_label(&self.default_tier) {
            return Err(ConfigError::new(
                "default_tier",
                "must be a short printable label",
            ));
        }
        if self.max_delegation_depth > 32 {
            return Err(ConfigError::new(
                "max_delegation_depth",
                "must be at most 32",
            ));
        }
        if self.cache.max_entries > 1_000_000 {
            return Err(ConfigError::new(
                "cache.max_entries",
                "must be at most 1000000",
            ));
        }
        if self.cache.shared_slots > 65536 {
            return Err(ConfigError::new(
                "cache.shared_slots",
                "must be at most 65536",
            ));
        }
        for (i, name) in self.method_override_headers.iter().enumerate() {
            check_header_name(&format!("method_override_headers[{i}]"), name)?;
        }
        for (i, name) in self.method_override_params.iter().enumerate() {
            if name.is_empty() {
                return Err(ConfigError::new(
                    format!("method_override_params[{i}]"),
                    "must not be empty",
                ));
            }
        }
        let t = &self.verification_throttle;
        if t.failures > 0 {
            if !(1..=86_400).contains(&t.window_seconds) {
                return Err(ConfigError::new(
                    "verification_throttle.window_seconds",
                    "must be between 1 and 86400",
                ));
            }
            if !(1..=65_536).contains(&t.slots) {
                return Err(ConfigError::new(
                    "verification_throttle.slots",
                    "must be between 1 and 65536",
                ));
            }
            t.client.validate("verification_throttle.client")?;
        }
        Ok(())
    }
}
