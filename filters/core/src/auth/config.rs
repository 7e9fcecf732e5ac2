//! The auth filter's plugin configuration (JSON), and its validation.
//!
//! Parsing is strict: unknown fields are errors, and every error names the
//! field it is about (`providers[1].jwks.inline: ...`), because the only
//! place an operator sees it is one line in Envoy's log.

use std::collections::HashSet;

use serde::Deserialize;

use super::principal::ServiceConfig;
use super::public_path::{PublicPath, PublicPathConfig};
use super::sources::{RoleSource, TokenSource};
use crate::client::ClientConfig;
use crate::config::{ConfigError, check_header_name};
use crate::duration;
use crate::operation::OperationRule;
use crate::path::PathParameters;

/// Multi-tenant JWT authentication and context-scope authorisation.
///
/// Where a field means what it means in Envoy's `jwt_authn` filter it has
/// that filter's name (`issuer`, `audiences`, `clock_skew_seconds`,
/// `require_expiration`, `from_headers`, `from_params`, `from_cookies`,
/// `forward`); ctxgate's older names stay valid.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(
    feature = "schema",
    schemars(transform = crate::schema::Alias::new("forward", "forward_token"))
)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `realm` of the `WWW-Authenticate` challenge on 401 and 403 answers.
    #[serde(default = "defaults::realm")]
    pub realm: String,
    /// Token issuers. A token is verified by the provider whose `issuer`
    /// equals its `iss` claim. At least one.
    pub providers: Vec<ProviderConfig>,
    /// Where tokens are looked for, in ctxgate's older spelling: entries
    /// setting exactly one of `header` (with an optional `prefix`), `query`
    /// or `cookie`. Read together with `from_headers`, `from_params` and
    /// `from_cookies`. When none of the four is set, tokens are read from
    /// `Authorization: Bearer <token>` only.
    #[serde(default)]
    pub token_sources: Option<Vec<TokenSourceConfig>>,
    /// Headers a token is read from, as in jwt_authn:
    /// `{"name": "authorization", "value_prefix": "Bearer "}`. Unlike
    /// jwt_authn's (per provider), the sources apply to every provider, and
    /// without any source configured only `Authorization: Bearer` is read
    /// (jwt_authn would also read an `access_token` query parameter).
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters a token is read from (jwt_authn's `from_params`).
    /// The parameter is removed from the forwarded request unless `forward`.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies a token is read from (jwt_authn's `from_cookies`). The
    /// cookie is removed from the forwarded request unless `forward`.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token (its header, parameter or cookie) on the request to
    /// the upstream, as jwt_authn's `forward`. Off by default, like
    /// jwt_authn: upstreams get identity headers, not the credential.
    /// Older spelling: `forward_token`.
    #[serde(default, alias = "forward_token")]
    pub forward: bool,
    /// Tokens longer than this many bytes are refused unread (256-65536).
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// The operation map: method and path template to operation, scope
    /// action and context. The first matching entry wins.
    #[serde(default)]
    pub operations: Vec<OperationRule>,
    /// Paths served without a token, per method. `exact` and `prefix`
    /// compare whole segments of the canonical path (`prefix` is Envoy's
    /// `path_separated_prefix`: `/health` covers `/health/live`, never
    /// `/healthz`).
    #[serde(default)]
    pub public_paths: Vec<PublicPathConfig>,
    /// Requests that match no operation and no public path: `deny` (403
    /// `unknown_operation`, after authentication) or `authenticate` (any
    /// valid token passes).
    #[serde(default)]
    pub unmatched_requests: Unmatched,
    /// Let CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) through without a token.
    #[serde(default = "defaults::yes")]
    pub allow_cors_preflight: bool,
    /// Names of the trusted identity headers sent to the upstream (lower
    /// case, all distinct). Every one of them is removed from every
    /// incoming request.
    #[serde(default)]
    pub identity_headers: IdentityHeaders,
    /// Tier reported when a token carries no `rate_limits.tier` claim.
    #[serde(default = "defaults::tier")]
    pub default_tier: String,
    /// Hard cap on delegation (actor) chains, whatever a token allows
    /// itself (0-32).
    #[serde(default = "defaults::max_delegation_depth")]
    pub max_delegation_depth: u32,
    /// The verified-token caches: per worker, and shared by the workers.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Token claims (string values) passed on to later stages in filter
    /// state, e.g. `["data_region"]` for the tagging stage's `from_claims`.
    #[serde(default)]
    pub filter_state_claims: Vec<String>,
    /// `;` inside a path segment: `reject` (400 `path_parameter`) or
    /// `allow` (an ordinary character, forwarded as `%3B`).
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Headers that ask an upstream framework to treat the request as
    /// another method (lower case). A request whose override differs from
    /// `:method` is refused (400): the gateway would authorize one method
    /// and the upstream act on another.
    #[serde(default = "defaults::method_override_headers")]
    pub method_override_headers: Vec<String>,
    /// Query parameters that do the same (`_method`), refused likewise.
    #[serde(default = "defaults::method_override_params")]
    pub method_override_params: Vec<String>,
    /// Failed token verifications per client (see
    /// [`VerificationThrottleConfig`]).
    #[serde(default)]
    pub verification_throttle: VerificationThrottleConfig,
    /// Service principals: a verified client certificate (mTLS) whose
    /// identity matches an entry authenticates the request as that service,
    /// with the entry's tenant and scopes. The first matching entry wins.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// Whose token a source carries, and which providers may verify it: a
/// user's (the default) or a calling service's (short-lived tokens of an
/// internal issuer). A request may carry one token of each role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    #[default]
    User,
    Service,
}

/// A client whose tokens keep failing verification is refused (429)
/// before any further signature work: a flood of bad signatures costs the
/// gateway a shared-data read per request, not a signature check.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct VerificationThrottleConfig {
    /// Failed verifications (that cost a signature check) a client may
    /// cause per window before it gets 429 `verification_throttled`; 0
    /// disables the throttle.
    pub failures: u64,
    /// The window (1 s to 24 h): a client's bucket leaks `failures` per
    /// window.
    #[serde(deserialize_with = "duration::seconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub window_seconds: u64,
    /// How the client is identified (its address, see [`ClientConfig`]).
    pub client: ClientConfig,
    /// Shared-data slots of the per-client table (1-65536, 4 clients each).
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

/// A token issuer, as jwt_authn's `JwtProvider` where the names agree.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(
    feature = "schema",
    schemars(transform = crate::schema::Alias::new("max_lifetime_seconds", "max_lifetime"))
)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Short name used in logs, metrics and shared-data keys
    /// (`[A-Za-z0-9_-]+`, unique).
    pub name: String,
    /// The exact `iss` this provider verifies (unique), as in jwt_authn.
    pub issuer: String,
    /// Accepted `aud` values, as in jwt_authn: a token must carry one of
    /// them. Empty: the audience is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (at most one hour),
    /// as jwt_authn's `clock_skew_seconds`.
    #[serde(
        default = "defaults::clock_skew_seconds",
        deserialize_with = "duration::seconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub clock_skew_seconds: u64,
    /// Refuse tokens without `exp`, as jwt_authn's `require_expiration`.
    #[serde(default = "defaults::yes")]
    pub require_expiration: bool,
    /// Refuse tokens whose `exp` is further than this from now (default:
    /// no limit). jwt_authn's `max_lifetime` means the same and is accepted
    /// as its spelling.
    #[serde(
        default,
        alias = "max_lifetime",
        deserialize_with = "duration::option_seconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "Option<duration::Seconds>"))]
    pub max_lifetime_seconds: Option<u64>,
    /// Accepted `alg` values (default: every algorithm the keys support).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Claim holding the tenant.
    #[serde(default = "defaults::tenant_claim")]
    pub tenant_claim: String,
    /// For single-tenant issuers: the tenant every token of this issuer
    /// belongs to. A token claiming another tenant is refused
    /// (`tenant_not_allowed`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The tenants this issuer may assert; a token claiming another is
    /// refused (`tenant_not_allowed`). Empty: any, allowed only with a
    /// single provider: with more than one, every provider must set
    /// `tenants` or `tenant`, otherwise one issuer could mint tokens for
    /// another's tenants.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Claim holding the context scopes (an array of strings, or one
    /// space-separated string).
    #[serde(default = "defaults::scopes_claim")]
    pub scopes_claim: String,
    /// Whose tokens this provider issues: `user` (the default) or
    /// `service` (an internal issuer of service tokens). A token is
    /// accepted only from a source of the provider's role: a user token
    /// sent as a service token is refused (`token_role_mismatch`), and so
    /// is the reverse.
    #[serde(default)]
    pub role: TokenRole,
    /// The provider's keys: `inline` or `remote`. Not jwt_authn's
    /// `local_jwks`/`remote_jwks`: an inline key set is a JSON object, not
    /// a string, and a remote one is fetched from an Envoy cluster and
    /// kept when a refresh fails (see [`RemoteJwksConfig`]).
    pub jwks: JwksConfig,
}

/// Where a provider's JWK Set comes from: exactly one of `inline`,
/// `remote`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum JwksConfig {
    /// A JWK Set written into the configuration (`{"keys": [...]}`); every
    /// key must be usable.
    Inline(serde_json::Value),
    /// A JWK Set fetched from an Envoy cluster and refreshed.
    Remote(RemoteJwksConfig),
}

/// A JWK Set fetched with `dispatch_http_call`. One worker fetches at a
/// time; the others install the result from shared data.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// Envoy cluster serving the JWK Set.
    pub cluster: String,
    /// Request path of the fetch (starts with `/`).
    #[serde(default = "defaults::jwks_path")]
    pub path: String,
    /// `:authority` of the fetch (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// Fetch timeout (1 ms to 60 s).
    #[serde(
        default = "defaults::jwks_timeout_ms",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub timeout_ms: u64,
    /// How often a good key set is refreshed. Not jwt_authn's
    /// `cache_duration`: keys do not expire, the last good set is kept
    /// while fetches fail.
    #[serde(
        default = "defaults::jwks_refresh_interval_seconds",
        deserialize_with = "duration::seconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub refresh_interval_seconds: u64,
    /// First retry delay after a failed fetch; doubles up to
    /// `refresh_interval_seconds` (every 0.5 s while the provider has never
    /// had keys).
    #[serde(
        default = "defaults::jwks_retry_interval_seconds",
        deserialize_with = "duration::seconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub retry_interval_seconds: u64,
    /// A token with an unknown `kid` triggers an early refresh, at most
    /// this often after a successful fetch (key rotation without waiting
    /// for the refresh interval).
    #[serde(
        default = "defaults::jwks_min_refresh_interval_seconds",
        deserialize_with = "duration::seconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub min_refresh_interval_seconds: u64,
    /// Install symmetric (`oct`) keys from this key set. Off: an HMAC
    /// secret published by an HTTP endpoint is not a secret.
    #[serde(default)]
    pub allow_symmetric_keys: bool,
}

/// One place a token may be carried (the older spelling of
/// `from_headers`, `from_params` and `from_cookies`). Exactly one of
/// `header`, `query`, `cookie` is set.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// A request header (lower case) carrying the token.
    #[serde(default)]
    pub header: Option<String>,
    /// For headers: the scheme in front of the token (`Bearer `), matched
    /// case-insensitively; jwt_authn's `value_prefix`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// A query parameter carrying the token.
    #[serde(default)]
    pub query: Option<String>,
    /// A cookie carrying the token.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Whose token this source carries (`user` or `service`).
    #[serde(default)]
    pub role: TokenRole,
}

/// A header a token is read from: jwt_authn's `JwtHeader`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// The header name (lower case).
    pub name: String,
    /// What stands in front of the token in the header's value
    /// (`Bearer `, with the space), matched case-insensitively at the
    /// start of each comma-separated value. Default: none, the whole value
    /// is the token.
    #[serde(default)]
    pub value_prefix: Option<String>,
    /// Whose token this header carries (`user` or `service`).
    #[serde(default)]
    pub role: TokenRole,
}

/// What to do with requests that match no operation and no public path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// 403 `unknown_operation`, after authentication.
    #[default]
    Deny,
    /// Any valid token passes.
    Authenticate,
}

/// Names of the trusted identity headers sent to the upstream.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    /// The verified tenant.
    pub tenant: String,
    /// The token's subject (`sub`).
    pub subject: String,
    /// The tier (`rate_limits.tier` claim, or `default_tier`).
    pub tier: String,
    /// The granted scopes, canonical, space-separated; not sent when the
    /// token grants none (no header is ever sent empty).
    pub scopes: String,
    /// The token's issuer.
    pub issuer: String,
    /// The delegation chain (RFC 8693 `act`), outermost actor first.
    pub actor_chain: String,
    /// The matched operation's name.
    pub operation: String,
    /// The operation's canonical context path.
    pub context_path: String,
    /// The calling service's principal name (mTLS certificate or service
    /// token); with a user's token, the service acting on the user's behalf.
    pub service: String,
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
            service: "x-context-service".into(),
        }
    }
}

impl IdentityHeaders {
    pub fn all(&self) -> [&str; 9] {
        [
            &self.tenant,
            &self.subject,
            &self.tier,
            &self.scopes,
            &self.issuer,
            &self.actor_chain,
            &self.operation,
            &self.context_path,
            &self.service,
        ]
    }
}

/// The verified-token caches. Entries are keyed by the token's SHA-256,
/// never the token itself, and never outlive `exp` plus the clock skew.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Verified tokens kept per worker VM (0 disables the cache, at most
    /// 1000000).
    pub max_entries: usize,
    /// How long a refused token (a refusal that cost a signature check)
    /// stays refused without re-verification.
    #[serde(deserialize_with = "duration::seconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub failure_ttl_seconds: u64,
    /// Upper bound on how long a verified token is trusted from cache
    /// (never beyond its `exp`).
    #[serde(deserialize_with = "duration::seconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub max_ttl_seconds: u64,
    /// Slots of the cross-worker cache in shared data (0 disables it, at
    /// most 65536).
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
    pub fn realm() -> String {
        "ctxgate".into()
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
        self.validate_token_sources()?;
        super::principal::validate(&self.services)?;
        if !(256..=65536).contains(&self.max_token_bytes) {
            return Err(ConfigError::new(
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }
        for (i, p) in self.public_paths.iter().enumerate() {
            PublicPath::compile(&format!("public_paths[{i}]"), p.clone())?;
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

    /// Every token source, in order: `token_sources`, `from_headers`,
    /// `from_params`, `from_cookies`; `Authorization: Bearer` when none of
    /// them is set.
    pub fn all_token_sources(&self) -> Vec<TokenSource> {
        self.role_sources().into_iter().map(|s| s.source).collect()
    }

    /// Every token source with its role, in order: `token_sources`,
    /// `from_headers`, `from_params`, `from_cookies` (parameters and
    /// cookies carry user tokens). `Authorization: Bearer` for users when
    /// `token_sources` is not set and no other source is for users; header `x-service-token` (the raw token, no
    /// scheme) for services when a provider has the service role and no
    /// source does.
    pub fn role_sources(&self) -> Vec<RoleSource> {
        let user = |source| RoleSource {
            role: TokenRole::User,
            source,
        };
        let headers = self.from_headers.iter().map(|h| RoleSource {
            role: h.role,
            source: TokenSource::Header {
                name: h.name.clone(),
                prefix: h.value_prefix.clone(),
            },
        });
        let params = self
            .from_params
            .iter()
            .map(|p| user(TokenSource::Query(p.clone())));
        let cookies = self
            .from_cookies
            .iter()
            .map(|c| user(TokenSource::Cookie(c.clone())));
        let listed = self.token_sources.iter().flatten().filter_map(|s| {
            let source = match (&s.header, &s.query, &s.cookie) {
                (Some(name), _, _) => TokenSource::Header {
                    name: name.clone(),
                    prefix: s.prefix.clone(),
                },
                (_, Some(name), _) => TokenSource::Query(name.clone()),
                (_, _, Some(name)) => TokenSource::Cookie(name.clone()),
                _ => return None,
            };
            Some(RoleSource {
                role: s.role,
                source,
            })
        });
        let mut sources: Vec<RoleSource> =
            listed.chain(headers).chain(params).chain(cookies).collect();
        if self.token_sources.is_none() && !sources.iter().any(|s| s.role == TokenRole::User) {
            sources.push(user(TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into()),
            }));
        }
        if self.providers.iter().any(|p| p.role == TokenRole::Service)
            && !sources.iter().any(|s| s.role == TokenRole::Service)
        {
            sources.push(RoleSource {
                role: TokenRole::Service,
                source: TokenSource::Header {
                    name: "x-service-token".into(),
                    prefix: None,
                },
            });
        }
        sources
    }

    fn validate_token_sources(&self) -> Result<(), ConfigError> {
        if self.token_sources.as_ref().is_some_and(Vec::is_empty)
            && self.from_headers.is_empty()
            && self.from_params.is_empty()
            && self.from_cookies.is_empty()
        {
            return Err(ConfigError::new(
                "token_sources",
                "at least one source is required",
            ));
        }
        for (i, s) in self.token_sources.iter().flatten().enumerate() {
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
        for (i, h) in self.from_headers.iter().enumerate() {
            check_header_name(&format!("from_headers[{i}].name"), &h.name)?;
        }
        for (field, names) in [
            ("from_params", &self.from_params),
            ("from_cookies", &self.from_cookies),
        ] {
            if let Some(i) = names.iter().position(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{field}[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}
