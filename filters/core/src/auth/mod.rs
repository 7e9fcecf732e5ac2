//! The auth filter's decision: who is calling, and may they do this?
//!
//! For each request, in order:
//!
//! 1. Identity headers sent by the client are marked for removal, always:
//!    a client never chooses its own tenant.
//! 2. CORS preflights and public paths pass without a token.
//! 3. The request is looked up in the operation map (400 for a path or
//!    context that cannot be canonicalized).
//! 4. The token is taken from the configured sources (400 if two different
//!    tokens are sent, 401 if none).
//! 5. The token is verified, or found in the cache (401 for an invalid
//!    token, 403 for a token issued for another audience).
//! 6. The operation's action on its context must be granted by the token's
//!    scopes, and for delegated tokens (RFC 8693 `act`) by the subject's
//!    delegation rights too (403 otherwise).
//! 7. The upstream receives the verified identity as headers; later
//!    filters read it from Envoy filter state.

pub mod cache;
pub mod config;
pub mod denial;
pub mod identity;
pub mod jwks_sync;
pub mod shared_cache;

use std::collections::HashSet;
use std::rc::Rc;

use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};
use serde::Serialize;

use crate::http::RequestHead;
use crate::jwt::{Algorithm, KeySet, TokenError, inspect};
use crate::operation::{Operation, OperationMap, OperationMatch};
use crate::path::{canonical_segments, percent_decode, query_values, split_path_query};
use crate::scope::required_scope;
use crate::shared::SharedStore;
use cache::TokenCache;
use config::{AuthConfig, ConfigError, JwksConfig, RemoteJwksConfig, Unmatched};
use denial::{Denial, Reason};
use identity::{ClaimRules, Identity};
use shared_cache::{SharedEntry, SharedTokenCache};

pub use config::IdentityHeaders;

/// Filter-state key (`wasm.ctxgate.request` in Envoy) holding what the auth
/// filter established about a request, as a [`SharedRequest`] in JSON.
/// Later ctxgate filters read it; a client cannot write filter state.
pub const REQUEST_FILTER_STATE: &str = "ctxgate.request";

/// What later filters learn from the auth filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct SharedRequest {
    #[serde(default)]
    pub identity: Option<identity::SharedIdentity>,
    #[serde(default)]
    pub operation: Option<SharedOperation>,
}

impl SharedRequest {
    /// Parses the filter-state value; anything unreadable is "nothing known".
    pub fn parse(bytes: Option<&[u8]>) -> SharedRequest {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }
}

/// Builds the [`SharedRequest`] JSON from the identity's JSON (serialized
/// once per token) and the operation of this request.
fn encode_shared_request(identity_json: &[u8], operation: Option<&SharedOperation>) -> Vec<u8> {
    let operation = operation.and_then(|op| serde_json::to_vec(op).ok());
    let mut out =
        Vec::with_capacity(identity_json.len() + operation.as_ref().map_or(0, Vec::len) + 32);
    out.extend_from_slice(b"{\"identity\":");
    out.extend_from_slice(identity_json);
    if let Some(op) = operation {
        out.extend_from_slice(b",\"operation\":");
        out.extend_from_slice(&op);
    }
    out.push(b'}');
    out
}

/// One trusted issuer, compiled.
pub struct Provider {
    pub name: String,
    pub issuer: String,
    skew_seconds: u64,
    require_expiration: bool,
    max_lifetime_seconds: Option<u64>,
    algorithms: HashSet<Algorithm>,
    tenant_claim: String,
    fixed_tenant: Option<String>,
    scopes_claim: String,
    options: VerificationOptions,
    /// Keys written in the configuration.
    pub inline_keys: Option<Rc<KeySet>>,
    /// Where remote keys come from.
    pub remote: Option<RemoteJwksConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenSource {
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query(String),
    Cookie(String),
}

/// The request's token and the sources it was found in.
struct FoundToken {
    token: String,
    sources: Vec<TokenSource>,
}

impl FoundToken {
    fn add_source(&mut self, source: &TokenSource) {
        if !self.sources.contains(source) {
            self.sources.push(source.clone());
        }
    }
}

/// `name=value` pairs of a `cookie` header.
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        pair.trim()
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
    })
}

struct PublicPath {
    segments: Vec<String>,
    prefix: bool,
    methods: Vec<String>,
}

/// The compiled, immutable configuration.
pub struct Auth {
    pub realm: String,
    pub providers: Vec<Provider>,
    sources: Vec<TokenSource>,
    forward_token: bool,
    max_token_bytes: usize,
    operations: OperationMap,
    public_paths: Vec<PublicPath>,
    unmatched: Unmatched,
    allow_cors_preflight: bool,
    pub headers: IdentityHeaders,
    default_tier: String,
    max_delegation_depth: u32,
    pub cache_max_entries: usize,
    failure_ttl_seconds: u64,
    max_ttl_seconds: u64,
    shared_cache: SharedTokenCache,
    /// Short digest of the configuration; namespaces shared-data keys so
    /// different configurations in one VM never share state.
    pub fingerprint: String,
    filter_state_claims: Vec<String>,
    all_algorithms: HashSet<Algorithm>,
}

/// Per-VM mutable state: the keys in force and the token cache.
pub struct AuthState {
    /// Current keys per provider (same order as `Auth::providers`); `None`
    /// until a remote key set has been fetched.
    pub keys: Vec<Option<Rc<KeySet>>>,
    pub cache: TokenCache,
}

impl AuthState {
    /// Is the key that verified `identity` still in its provider's key set?
    /// A key rotated out (retired or compromised) stops vouching for the
    /// tokens it signed, even those verified and cached before.
    fn still_trusted(&self, identity: &Identity) -> bool {
        self.keys
            .get(identity.provider_index)
            .and_then(Option::as_ref)
            .is_some_and(|keys| keys.has_kid(identity.kid.as_deref()))
    }
}

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
    Allow(Allowed),
    Deny(Denial),
}

/// What to change on an allowed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowed {
    /// Headers to remove (spoofed identity headers, the consumed token).
    pub remove_headers: Vec<String>,
    /// Trusted headers to set.
    pub set_headers: Vec<(String, String)>,
    /// The [`SharedRequest`] for Envoy filter state (empty: nothing to
    /// share, e.g. a public path).
    pub filter_state: Vec<u8>,
    /// Set when the request carried a verified token.
    pub tenant: Option<String>,
}

/// The decision for one request, with what metrics need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub cache: CacheUse,
    /// A remote provider whose keys this worker lacks (none yet, or not
    /// the token's `kid`): another worker may already have fetched newer
    /// ones, and if not an early refresh is worth it (key rotation).
    pub stale_keys: Option<StaleKeys>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleKeys {
    pub provider: usize,
    /// The token named a `kid` the keys do not have.
    pub unknown_kid: bool,
}

/// The matched operation, as later filters read it from filter state
/// (`ctxgate.operation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SharedOperation {
    pub name: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub context: String,
}

impl Auth {
    /// Compiles a parsed configuration.
    pub fn new(config: AuthConfig, fingerprint: String) -> Result<Auth, ConfigError> {
        config.validate()?;
        let operations = crate::operation::OperationMap::compile(&config.operations)?;
        let mut providers = Vec::with_capacity(config.providers.len());
        for (i, p) in config.providers.into_iter().enumerate() {
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
                    (Some(Rc::new(parsed.keys)), None)
                }
                JwksConfig::Remote(remote) => (None, Some(remote)),
            };
            let options = VerificationOptions {
                allowed_issuers: Some([p.issuer.clone()].into()),
                allowed_audiences: (!p.audiences.is_empty())
                    .then(|| p.audiences.iter().cloned().collect()),
                time_tolerance: Some(Duration::from_secs(p.clock_skew_seconds)),
                max_token_length: Some(config.max_token_bytes),
                ..VerificationOptions::default()
            };
            providers.push(Provider {
                name: p.name,
                issuer: p.issuer,
                skew_seconds: p.clock_skew_seconds,
                require_expiration: p.require_expiration,
                max_lifetime_seconds: p.max_lifetime_seconds,
                algorithms,
                tenant_claim: p.tenant_claim,
                fixed_tenant: p.tenant,
                scopes_claim: p.scopes_claim,
                options,
                inline_keys,
                remote,
            });
        }
        let sources = config
            .token_sources
            .into_iter()
            .filter_map(|s| match (s.header, s.query, s.cookie) {
                (Some(name), _, _) => Some(TokenSource::Header {
                    name,
                    prefix: s.prefix,
                }),
                (_, Some(name), _) => Some(TokenSource::Query(name)),
                (_, _, Some(name)) => Some(TokenSource::Cookie(name)),
                _ => None,
            })
            .collect();
        let mut public_paths = Vec::new();
        for (i, p) in config.public_paths.into_iter().enumerate() {
            let (raw, prefix) = match (p.exact, p.prefix) {
                (Some(exact), _) => (exact, false),
                (_, Some(prefix)) => (prefix, true),
                _ => continue,
            };
            let segments = canonical_segments(&raw)
                .map_err(|e| ConfigError::new(format!("public_paths[{i}]"), e.to_string()))?;
            public_paths.push(PublicPath {
                segments,
                prefix,
                methods: p.methods,
            });
        }
        Ok(Auth {
            realm: config.realm,
            providers,
            sources,
            forward_token: config.forward_token,
            max_token_bytes: config.max_token_bytes,
            operations,
            public_paths,
            unmatched: config.unmatched_requests,
            allow_cors_preflight: config.allow_cors_preflight,
            headers: config.identity_headers,
            default_tier: config.default_tier,
            max_delegation_depth: config.max_delegation_depth,
            cache_max_entries: config.cache.max_entries,
            failure_ttl_seconds: config.cache.failure_ttl_seconds,
            max_ttl_seconds: config.cache.max_ttl_seconds,
            shared_cache: SharedTokenCache::new(&fingerprint, config.cache.shared_slots),
            fingerprint,
            filter_state_claims: config.filter_state_claims,
            all_algorithms: Algorithm::ALL.into_iter().collect(),
        })
    }

    /// Parses and compiles the plugin configuration.
    pub fn from_json(json: &[u8]) -> Result<Auth, ConfigError> {
        let digest = hmac_sha256::Hash::hash(json);
        let fingerprint = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Auth::new(config::parse_json(json)?, fingerprint)
    }

    /// Fresh per-VM state: inline keys installed, remote keys pending.
    pub fn new_state(&self) -> AuthState {
        AuthState {
            keys: self
                .providers
                .iter()
                .map(|p| p.inline_keys.clone())
                .collect(),
            cache: TokenCache::new(self.cache_max_entries),
        }
    }

    /// Decides on one request. `now` is unix seconds.
    pub fn check(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        request: &RequestHead<'_>,
        now: u64,
    ) -> Decision {
        let mut allowed = Allowed {
            remove_headers: self
                .headers
                .all()
                .iter()
                .filter(|name| request.has_header(name))
                .map(|name| (*name).to_owned())
                .collect(),
            ..Allowed::default()
        };
        let mut decision = Decision {
            outcome: Outcome::Deny(Denial::new(Reason::MissingToken, "")),
            cache: CacheUse::NotNeeded,
            stale_keys: None,
        };
        match self.authorize(state, store, request, now, &mut allowed, &mut decision) {
            Ok(()) => decision.outcome = Outcome::Allow(allowed),
            Err(denial) => decision.outcome = Outcome::Deny(denial),
        }
        decision
    }

    fn authorize(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        request: &RequestHead<'_>,
        now: u64,
        allowed: &mut Allowed,
        decision: &mut Decision,
    ) -> Result<(), Denial> {
        if self.allow_cors_preflight
            && request.method == "OPTIONS"
            && request.has_header("origin")
            && request.has_header("access-control-request-method")
        {
            return Ok(());
        }
        let (path, query) = split_path_query(request.path);
        let segments = canonical_segments(path)
            .map_err(|e| Denial::new(Reason::InvalidPath, e.to_string()))?;
        if self.is_public(request.method, &segments) {
            return Ok(());
        }
        let operation = match self.operations.lookup(request.method, &segments, query) {
            OperationMatch::Matched(op) => Some(op),
            OperationMatch::NoMatch => None,
            OperationMatch::InvalidPath(e) => {
                return Err(Denial::new(Reason::InvalidPath, e.to_string()));
            }
            OperationMatch::InvalidContext { operation, problem } => {
                return Err(Denial::new(
                    Reason::InvalidContext,
                    format!("{operation}: {problem}"),
                ));
            }
        };
        let found = self.extract_token(request, query)?;
        let token = &found.token;
        if token.len() > self.max_token_bytes {
            return Err(Denial::new(
                Reason::TokenTooLarge,
                format!("token exceeds {} bytes", self.max_token_bytes),
            ));
        }
        let identity = self.verify(state, store, token, now, decision)?;
        match &operation {
            Some(op) => self.check_scopes(&identity, op)?,
            None if self.unmatched == Unmatched::Authenticate => {}
            None => {
                return Err(Denial::new(
                    Reason::UnknownOperation,
                    "no operation matches this request",
                ));
            }
        }
        if !self.forward_token {
            self.strip_token(&found, request, allowed);
        }
        self.describe(&identity, operation.as_ref(), allowed);
        Ok(())
    }

    fn is_public(&self, method: &str, segments: &[String]) -> bool {
        self.public_paths.iter().any(|p| {
            (p.methods.is_empty() || p.methods.iter().any(|m| m == method))
                && if p.prefix {
                    segments.starts_with(&p.segments)
                } else {
                    segments == p.segments.as_slice()
                }
        })
    }

    /// Finds the request's token, and every place it was found.
    fn extract_token(&self, request: &RequestHead<'_>, query: &str) -> Result<FoundToken, Denial> {
        let mut found: Option<FoundToken> = None;
        let mut offer = |token: &str, source: &TokenSource| -> Result<(), Denial> {
            if token.is_empty() {
                return Err(Denial::new(Reason::MalformedToken, "the token is empty"));
            }
            match &mut found {
                Some(existing) if existing.token != token => Err(Denial::new(
                    Reason::MultipleTokens,
                    "the request carries more than one token",
                )),
                Some(existing) => {
                    existing.add_source(source);
                    Ok(())
                }
                None => {
                    found = Some(FoundToken {
                        token: token.to_owned(),
                        sources: vec![source.clone()],
                    });
                    Ok(())
                }
            }
        };
        for source in &self.sources {
            match source {
                TokenSource::Header { name, prefix } => {
                    for value in request.header_values(name) {
                        let Ok(value) = std::str::from_utf8(value) else {
                            return Err(Denial::new(
                                Reason::MalformedToken,
                                "the token header is not valid UTF-8",
                            ));
                        };
                        // Envoy joins repeated headers with commas; a JWT
                        // never contains one, so each part is a candidate.
                        for part in value.split(',') {
                            let token = match prefix {
                                None => Some(part.trim()),
                                Some(prefix) => strip_prefix_ignore_case(part.trim_start(), prefix)
                                    .map(str::trim),
                            };
                            if let Some(token) = token {
                                offer(token, source)?;
                            }
                        }
                    }
                }
                TokenSource::Query(name) => {
                    for value in query_values(query, name) {
                        let decoded = percent_decode(value)
                            .ok()
                            .and_then(|v| String::from_utf8(v).ok())
                            .ok_or_else(|| {
                                Denial::new(
                                    Reason::MalformedToken,
                                    "the token parameter is malformed",
                                )
                            })?;
                        offer(&decoded, source)?;
                    }
                }
                TokenSource::Cookie(name) => {
                    for header in request.header_values("cookie") {
                        let Ok(header) = std::str::from_utf8(header) else {
                            continue;
                        };
                        for (k, v) in cookie_pairs(header) {
                            if k == name {
                                offer(v.trim_matches('"'), source)?;
                            }
                        }
                    }
                }
            }
        }
        found.ok_or_else(|| Denial::new(Reason::MissingToken, "a bearer token is required"))
    }

    /// Header changes that take the token out of the request: the upstream
    /// gets identity headers, not the credential.
    fn strip_token(&self, found: &FoundToken, request: &RequestHead<'_>, allowed: &mut Allowed) {
        for source in &found.sources {
            match source {
                TokenSource::Header { name, .. } => allowed.remove_headers.push(name.clone()),
                TokenSource::Query(name) => {
                    let (path, query) = split_path_query(request.path);
                    let kept: Vec<&str> = query
                        .split('&')
                        .filter(|pair| {
                            !pair.is_empty() && pair.split('=').next() != Some(name.as_str())
                        })
                        .collect();
                    let new_path = if kept.is_empty() {
                        path.to_owned()
                    } else {
                        format!("{path}?{}", kept.join("&"))
                    };
                    allowed.set_headers.push((":path".to_owned(), new_path));
                }
                TokenSource::Cookie(name) => {
                    let kept: Vec<String> = request
                        .header_values("cookie")
                        .filter_map(|v| std::str::from_utf8(v).ok())
                        .flat_map(cookie_pairs)
                        .filter(|(k, _)| k != name)
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    if kept.is_empty() {
                        allowed.remove_headers.push("cookie".to_owned());
                    } else {
                        allowed
                            .set_headers
                            .push(("cookie".to_owned(), kept.join("; ")));
                    }
                }
            }
        }
    }

    /// Verifies a token, through this worker's cache, then the shared one.
    fn verify(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        token: &str,
        now: u64,
        decision: &mut Decision,
    ) -> Result<Rc<Identity>, Denial> {
        match state.cache.get(token, now) {
            Some(Ok(identity)) if !state.still_trusted(&identity) => state.cache.forget(token),
            Some(verdict) => {
                decision.cache = CacheUse::Hit;
                return verdict;
            }
            None => {}
        }
        if let Some(identity) = self
            .shared_lookup(store, token, now)
            .filter(|i| state.still_trusted(i))
        {
            decision.cache = CacheUse::SharedHit;
            let expires_at = self.cache_expiry(&identity, now);
            state
                .cache
                .insert(token, Ok(identity.clone()), expires_at, now);
            return Ok(identity);
        }
        decision.cache = CacheUse::Miss;
        let verified = self.verify_uncached(state, token, now);
        let (verdict, expires_at) = match verified {
            Ok((identity, provider, payload)) => {
                let valid_until = self.cache_expiry(&identity, now);
                let entry = SharedEntry {
                    provider,
                    valid_until,
                    kid: identity.kid.clone(),
                    payload,
                };
                self.shared_cache.put(store, token, &entry);
                (Ok(identity), valid_until)
            }
            Err((denial, provider)) => {
                let expires_at = if denial.reason.is_cacheable() {
                    now.saturating_add(self.failure_ttl_seconds)
                } else {
                    now
                };
                if matches!(denial.reason, Reason::UnknownKid | Reason::KeysUnavailable) {
                    decision.stale_keys = provider
                        .filter(|i| self.providers.get(*i).is_some_and(|p| p.remote.is_some()))
                        .map(|provider| StaleKeys {
                            provider,
                            unknown_kid: denial.reason == Reason::UnknownKid,
                        });
                }
                (Err(denial), expires_at)
            }
        };
        state.cache.insert(token, verdict.clone(), expires_at, now);
        verdict
    }

    /// How long a verified identity may be served from a cache.
    fn cache_expiry(&self, identity: &Identity, now: u64) -> u64 {
        identity
            .valid_until
            .unwrap_or(u64::MAX)
            .min(now.saturating_add(self.max_ttl_seconds))
    }

    /// Rebuilds an identity another worker verified. The payload was
    /// written by a ctxgate VM after checking the signature, so only the
    /// claim rules run again.
    fn shared_lookup(
        &self,
        store: &dyn SharedStore,
        token: &str,
        now: u64,
    ) -> Option<Rc<Identity>> {
        let entry = self.shared_cache.get(store, token, now)?;
        let provider = self.providers.get(entry.provider)?;
        let claims: crate::jwt::TokenClaims = serde_json::from_slice(&entry.payload).ok()?;
        let mut identity =
            Identity::from_claims(&claims, &self.claim_rules(entry.provider, provider, now))
                .ok()?;
        identity.kid = entry.kid;
        Some(Rc::new(identity))
    }

    fn claim_rules<'a>(&'a self, index: usize, provider: &'a Provider, now: u64) -> ClaimRules<'a> {
        ClaimRules {
            provider: &provider.name,
            provider_index: index,
            tenant_claim: &provider.tenant_claim,
            fixed_tenant: provider.fixed_tenant.as_deref(),
            scopes_claim: &provider.scopes_claim,
            default_tier: &self.default_tier,
            require_expiration: provider.require_expiration,
            skew_seconds: provider.skew_seconds,
            forwarded_claims: &self.filter_state_claims,
            max_lifetime_seconds: provider.max_lifetime_seconds,
            now,
        }
    }

    /// Verifies a token without any cache: the identity, its provider and
    /// the verified payload, or the refusal and the provider tried.
    #[allow(clippy::type_complexity)]
    pub fn verify_uncached(
        &self,
        state: &AuthState,
        token: &str,
        now: u64,
    ) -> Result<(Rc<Identity>, usize, Vec<u8>), (Denial, Option<usize>)> {
        let (header, issuer) = inspect(token, &self.all_algorithms)
            .map_err(|e| (Denial::from_token_error(&e), None))?;
        let Some(index) = issuer
            .as_deref()
            .and_then(|iss| self.providers.iter().position(|p| p.issuer == iss))
        else {
            return Err((
                Denial::new(Reason::UnknownIssuer, "the token's issuer is not trusted"),
                None,
            ));
        };
        let fail = |denial: Denial| (denial, Some(index));
        let (Some(provider), Some(keys)) = (self.providers.get(index), state.keys.get(index))
        else {
            return Err(fail(Denial::new(
                Reason::UnknownIssuer,
                "the token's issuer is not trusted",
            )));
        };
        if !provider.algorithms.contains(&header.alg) {
            return Err(fail(Denial::from_token_error(
                &TokenError::UnsupportedAlgorithm(header.alg.to_string()),
            )));
        }
        let Some(keys) = keys else {
            return Err(fail(Denial::new(
                Reason::KeysUnavailable,
                "the issuer's signing keys are not available yet",
            )));
        };
        let mut options = provider.options.clone();
        options.artificial_time = Some(UnixTimeStamp::from_secs(now));
        let claims = keys
            .verify(token, &header, &options)
            .map_err(|e| fail(Denial::from_token_error(&e)))?;
        let mut identity = Identity::from_claims(&claims, &self.claim_rules(index, provider, now))
            .map_err(|e| fail(Denial::from_token_error(&e)))?;
        identity.kid = header.kid.clone();
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        Ok((Rc::new(identity), index, payload))
    }

    /// Scope and delegation checks for a matched operation.
    fn check_scopes(&self, identity: &Identity, op: &Operation<'_>) -> Result<(), Denial> {
        let needed = required_scope(op.action, &op.context);
        if !identity.scopes.grants(op.action, &op.context) {
            return Err(Denial::scope(
                Reason::InsufficientScope,
                format!("the token does not grant {needed}"),
                needed,
            ));
        }
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
        if !identity.delegatable.grants(op.action, &op.context) {
            return Err(Denial::scope(
                Reason::DelegationScopeNotDelegable,
                format!("{needed} may not be delegated"),
                needed,
            ));
        }
        Ok(())
    }

    fn describe(
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
        let mut shared_operation = None;
        if let Some(op) = operation {
            let context = op.context.to_string();
            allowed
                .set_headers
                .push((h.operation.clone(), op.name.to_owned()));
            allowed
                .set_headers
                .push((h.context_path.clone(), context.clone()));
            let shared = SharedOperation {
                name: op.name.to_owned(),
                action: op.action.as_str().to_owned(),
                context,
            };
            shared_operation = Some(shared);
        }
        allowed.filter_state =
            encode_shared_request(&identity.filter_state, shared_operation.as_ref());
        allowed.tenant = Some(identity.tenant.clone());
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value.get(prefix.len()..))
        .flatten()
}

#[cfg(test)]
mod tests;
