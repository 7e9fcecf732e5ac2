//! The auth filter's decision: who is calling, and may they do this?
//!
//! For each request, in order:
//!
//! 1. Identity headers sent by the client are marked for removal, always,
//!    whatever the outcome: a client never chooses its own tenant, not even
//!    in the access log of a refused request.
//! 2. The target is read one way only ([`target`]): the canonical path
//!    (path parameters refused), the decoded query (a parameter the gateway
//!    reads must appear once), and no method override naming another
//!    method (400 otherwise).
//! 3. CORS preflights without a body and public paths (matched on the
//!    canonical path, per method) pass without a token.
//! 4. The request is looked up in the operation map (400 for a context
//!    that is missing, repeated or cannot be canonicalized).
//! 5. The token is taken from the configured sources (400 if two different
//!    tokens are sent, 401 if none).
//! 6. The token is verified, or found in the cache (401 for an invalid
//!    token, 403 for a token issued for another audience, 429 for a client
//!    whose tokens keep failing).
//! 7. The tenant is bound: a `{tenant}` path segment must be the verified
//!    tenant. Delegation rules (RFC 8693 `act`) apply to every request; the
//!    operation's action on its context must be granted by the token's
//!    scopes, and for delegated tokens by the subject's delegation rights
//!    too (403 otherwise).
//! 8. The upstream receives the canonical target the decision was made on
//!    and the verified identity as headers; later filters read it from
//!    Envoy filter state.

pub mod cache;
pub mod config;
pub mod denial;
pub mod identity;
pub mod jwks_sync;
pub mod public_path;
pub mod shared_cache;
pub mod sources;
pub mod target;
pub mod throttle;

use std::collections::HashSet;
use std::rc::Rc;

use jwt_simple::prelude::{Duration, UnixTimeStamp, VerificationOptions};

use crate::config::ConfigError;
use crate::contract::{self, Established, MatchedOperation};
use crate::http::RequestHead;
use crate::jwt::{Algorithm, KeyRef, KeySet, TokenClaims, TokenError, inspect};
use crate::operation::{Operation, OperationMap, OperationMatch};
use crate::path::{PathParameters, canonical_path};
use crate::scope::required_scope;
use crate::shared::{Secret, SharedStore};
use cache::{Digest, TokenCache};
use config::{AuthConfig, JwksConfig, RemoteJwksConfig, Unmatched};
use denial::{Denial, Reason};
use identity::{ClaimRules, Identity};
use public_path::PublicPath;
use shared_cache::{SharedEntry, SharedTokenCache, provider_tag};
use sources::TokenSource;
use target::Target;
use throttle::Throttle;

pub use config::IdentityHeaders;

/// One trusted issuer, compiled.
pub struct Provider {
    pub name: String,
    pub issuer: String,
    audiences: HashSet<String>,
    skew_seconds: u64,
    require_expiration: bool,
    max_lifetime_seconds: Option<u64>,
    algorithms: HashSet<Algorithm>,
    tenant_claim: String,
    fixed_tenant: Option<String>,
    allowed_tenants: Vec<String>,
    scopes_claim: String,
    options: VerificationOptions,
    /// Tells this provider's shared-cache entries from another
    /// configuration's.
    tag: u64,
    /// Keys written in the configuration.
    pub inline_keys: Option<Rc<KeySet>>,
    /// Where remote keys come from.
    pub remote: Option<RemoteJwksConfig>,
}

impl Provider {
    /// Checks claims read back from shared data as a verification would:
    /// issuer, audience and times (the signature was checked by whoever
    /// wrote the entry, and the key is checked by the caller).
    fn recheck(&self, claims: &TokenClaims, now: u64) -> bool {
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
    throttle: Option<Throttle>,
    /// Prefix of this plugin's shared-data keys: the plugin's name, stable
    /// across configuration pushes and unique per plugin.
    pub namespace: String,
    filter_state_claims: Vec<String>,
    all_algorithms: HashSet<Algorithm>,
    path_parameters: PathParameters,
    method_override_headers: Vec<String>,
    method_override_params: Vec<String>,
    /// Every query parameter the gateway decides on.
    read_params: Vec<String>,
}

/// Per-VM mutable state: the keys in force and the token cache.
pub struct AuthState {
    /// Current keys per provider (same order as `Auth::providers`); `None`
    /// until a remote key set has been fetched.
    keys: Vec<Option<Rc<KeySet>>>,
    pub cache: TokenCache,
    /// Version given to the next key set installed.
    next_version: u64,
    /// Shared-data records that did not decode.
    pub invalid_records: u64,
}

impl AuthState {
    /// Installs a provider's new key set. Cached verifications made with
    /// keys that are no longer in it stop counting.
    pub fn install(&mut self, provider: usize, keys: KeySet) {
        let keys = keys.with_version(self.next_version);
        self.next_version += 1;
        if let Some(slot) = self.keys.get_mut(provider) {
            *slot = Some(Rc::new(keys));
        }
        self.cache.forget_refusals();
    }

    /// Does the key that verified `identity` still vouch for it? A key
    /// rotated out (retired or compromised) stops vouching for the tokens it
    /// signed, even those verified and cached before.
    fn still_trusted(&self, identity: &Identity) -> bool {
        let Some(key) = &identity.key else {
            return false;
        };
        self.keys
            .get(identity.provider_index)
            .and_then(Option::as_ref)
            .is_some_and(|keys| keys.vouches_for(key))
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
    Allow(Box<Allowed>),
    Deny(Denial),
}

/// What to change on an allowed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allowed {
    /// Headers to remove (the consumed token).
    pub remove_headers: Vec<String>,
    /// Headers to set: trusted identity headers, and `:path` when the
    /// canonical target differs from what the client sent.
    pub set_headers: Vec<(String, String)>,
    /// The [`Established`] JSON for Envoy filter state (empty: nothing
    /// established, e.g. a public path).
    pub filter_state: Vec<u8>,
    /// Set when the request carried a verified token.
    pub tenant: Option<String>,
    /// What `filter_state` says, for the stages of the same pipeline.
    pub established: Established,
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

/// What the host knows about a request beyond its headers.
pub struct RequestEnv<'a> {
    /// The request headers ended the stream: no body follows.
    pub end_of_stream: bool,
    /// Envoy's downstream address (`ip:port`), looked up only when needed.
    pub client_address: &'a dyn Fn() -> Option<String>,
}

/// A failed uncached verification.
pub struct Unverified {
    pub denial: Denial,
    /// The provider whose keys were tried, if one was found.
    pub provider: Option<usize>,
    /// A signature check was done (the refusal was costly to find).
    pub signature_checked: bool,
}

/// A successful uncached verification.
pub struct Verified {
    pub identity: Rc<Identity>,
    pub provider: usize,
    pub payload: Vec<u8>,
}

impl Auth {
    /// Compiles a parsed configuration. `namespace` prefixes every
    /// shared-data key; `secret` keys the per-client throttle's hashing.
    pub fn new(config: AuthConfig, namespace: &str, secret: Secret) -> Result<Auth, ConfigError> {
        config.validate()?;
        let operations = crate::operation::OperationMap::compile(&config.operations)?;
        let sources = config.all_token_sources();
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
                    (Some(Rc::new(parsed.keys.with_version(1))), None)
                }
                JwksConfig::Remote(remote) => (None, Some(remote)),
            };
            let audiences: HashSet<String> = p.audiences.iter().cloned().collect();
            let options = VerificationOptions {
                allowed_issuers: Some([p.issuer.clone()].into()),
                allowed_audiences: (!audiences.is_empty()).then(|| audiences.clone()),
                time_tolerance: Some(Duration::from_secs(p.clock_skew_seconds)),
                max_token_length: Some(config.max_token_bytes),
                ..VerificationOptions::default()
            };
            providers.push(Provider {
                tag: provider_tag(&p.name, &p.issuer),
                name: p.name,
                issuer: p.issuer,
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
            });
        }
        let public_paths = config
            .public_paths
            .into_iter()
            .enumerate()
            .map(|(i, p)| PublicPath::compile(&format!("public_paths[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut read_params: Vec<String> = operations
            .parameters()
            .chain(sources::query_parameters(&sources))
            .map(str::to_owned)
            .chain(config.method_override_params.iter().cloned())
            .collect();
        read_params.sort_by_key(|p| p.to_ascii_lowercase());
        read_params.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        Ok(Auth {
            realm: config.realm,
            providers,
            sources,
            forward_token: config.forward,
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
            shared_cache: SharedTokenCache::new(namespace, config.cache.shared_slots),
            throttle: Throttle::new(&config.verification_throttle, namespace, secret),
            namespace: namespace.to_owned(),
            filter_state_claims: config.filter_state_claims,
            all_algorithms: Algorithm::ALL.into_iter().collect(),
            path_parameters: config.path_parameters,
            method_override_headers: config.method_override_headers,
            method_override_params: config.method_override_params,
            read_params,
        })
    }

    /// Parses and compiles the plugin configuration.
    pub fn from_json(json: &[u8], namespace: &str, secret: Secret) -> Result<Auth, ConfigError> {
        Auth::new(crate::config::parse_json(json)?, namespace, secret)
    }

    /// Creates the shared-data keys this configuration writes with CAS.
    /// Call from `on_configure`.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        if let Some(throttle) = &self.throttle {
            throttle.init_shared(store);
        }
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
            next_version: 2,
            invalid_records: 0,
        }
    }

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
        let found = sources::extract(&self.sources, request, &target.query)?;
        let token = &found.token;
        if token.len() > self.max_token_bytes {
            return Err(Denial::new(
                Reason::TokenTooLarge,
                format!("token exceeds {} bytes", self.max_token_bytes),
            ));
        }
        let identity = self.verify(state, store, token, request, env, now, decision)?;
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
            None if self.unmatched == Unmatched::Authenticate => {}
            None => {
                return Err(Denial::new(
                    Reason::UnknownOperation,
                    "no operation matches this request",
                ));
            }
        }
        if !self.forward_token {
            sources::strip(&found, request, &mut target.query, allowed);
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

    /// Verifies a token, through this worker's cache, then the shared one.
    #[allow(clippy::too_many_arguments)]
    fn verify(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        token: &str,
        request: &RequestHead<'_>,
        env: &RequestEnv<'_>,
        now: u64,
        decision: &mut Decision,
    ) -> Result<Rc<Identity>, Denial> {
        let digest = cache::digest(token);
        match state.cache.get(&digest, now) {
            Some(Ok(identity)) if !state.still_trusted(&identity) => state.cache.forget(&digest),
            Some(verdict) => {
                decision.cache = CacheUse::Hit;
                return verdict;
            }
            None => {}
        }
        if let Some((identity, valid_until)) = self.shared_lookup(state, store, &digest, now) {
            decision.cache = CacheUse::SharedHit;
            state
                .cache
                .insert(&digest, Ok(identity.clone()), valid_until, now);
            return Ok(identity);
        }
        decision.cache = CacheUse::Miss;
        // Throttled before any signature work: one shared-data read.
        let client = self.throttle.as_ref().map(|t| {
            let forwarded_for: Vec<&str> = request
                .header_values("x-forwarded-for")
                .filter_map(|v| std::str::from_utf8(v).ok())
                .collect();
            let forwarded_for = (!forwarded_for.is_empty()).then(|| forwarded_for.join(","));
            (
                t,
                t.client_key((env.client_address)().as_deref(), forwarded_for.as_deref()),
            )
        });
        let mut gate = || -> Result<(), Denial> {
            let Some((throttle, client)) = &client else {
                return Ok(());
            };
            match throttle.blocked_for(store, client, now.saturating_mul(1000)) {
                Ok(Some(seconds)) => {
                    let mut denial = Denial::new(
                        Reason::VerificationThrottled,
                        "too many failed token verifications from this client; retry later",
                    );
                    denial.retry_after = seconds;
                    Err(denial)
                }
                Ok(None) => Ok(()),
                Err(e) => {
                    log::warn!("verification throttle slot does not decode ({e})");
                    Ok(())
                }
            }
        };
        let verified = self.verify_uncached(state, token, now, &mut gate);
        match verified {
            Ok(Verified {
                identity,
                provider,
                payload,
            }) => {
                let valid_until = self.cache_expiry(&identity, now);
                if let (Some(p), Some(key)) = (self.providers.get(provider), identity.key) {
                    let entry = SharedEntry {
                        provider,
                        provider_tag: p.tag,
                        valid_until,
                        thumbprint: key.thumbprint,
                        payload,
                    };
                    self.shared_cache.put(store, &digest, &entry);
                }
                state
                    .cache
                    .insert(&digest, Ok(identity.clone()), valid_until, now);
                Ok(identity)
            }
            Err(Unverified {
                denial,
                provider,
                signature_checked,
            }) => {
                if signature_checked {
                    if let Some((throttle, client)) = &client
                        && let Err(e) = throttle.failed(store, client, now.saturating_mul(1000))
                    {
                        state.invalid_records += 1;
                        log::warn!("verification throttle slot does not decode ({e})");
                    }
                    // Costly refusals are remembered briefly; cheap ones are
                    // not (a flood of distinct garbage must not push good
                    // entries out of the cache).
                    if denial.reason.is_cacheable() {
                        let expires_at = now.saturating_add(self.failure_ttl_seconds);
                        state
                            .cache
                            .insert(&digest, Err(denial.clone()), expires_at, now);
                    }
                }
                if matches!(denial.reason, Reason::UnknownKid | Reason::KeysUnavailable) {
                    decision.stale_keys = provider
                        .filter(|i| self.providers.get(*i).is_some_and(|p| p.remote.is_some()))
                        .map(|provider| StaleKeys {
                            provider,
                            unknown_kid: denial.reason == Reason::UnknownKid,
                        });
                }
                Err(denial)
            }
        }
    }

    /// How long a verified identity may be served from a cache.
    fn cache_expiry(&self, identity: &Identity, now: u64) -> u64 {
        identity
            .valid_until
            .unwrap_or(u64::MAX)
            .min(now.saturating_add(self.max_ttl_seconds))
    }

    /// Rebuilds an identity another worker verified, and until when it may
    /// be used (as fixed at verification). Nothing in shared data is taken
    /// on trust: the entry must be this configuration's provider, the key
    /// must be in this worker's key set, and the claims must pass the
    /// provider's issuer, audience and time checks again.
    fn shared_lookup(
        &self,
        state: &mut AuthState,
        store: &dyn SharedStore,
        digest: &Digest,
        now: u64,
    ) -> Option<(Rc<Identity>, u64)> {
        let entry = match self.shared_cache.get(store, digest, now) {
            Ok(entry) => entry?,
            Err(e) => {
                state.invalid_records += 1;
                log::warn!("shared token cache slot does not decode ({e})");
                return None;
            }
        };
        let provider = self.providers.get(entry.provider)?;
        if entry.provider_tag != provider.tag {
            return None;
        }
        let keys = state.keys.get(entry.provider)?.as_ref()?;
        if !keys.holds(&entry.thumbprint) {
            return None;
        }
        let key = KeyRef {
            thumbprint: entry.thumbprint,
            version: keys.version(),
        };
        let claims: TokenClaims = serde_json::from_slice(&entry.payload).ok()?;
        if !provider.recheck(&claims, now) {
            return None;
        }
        let mut identity =
            Identity::from_claims(&claims, &self.claim_rules(entry.provider, provider, now))
                .ok()?;
        identity.key = Some(key);
        let valid_until = entry
            .valid_until
            .min(identity.valid_until.unwrap_or(u64::MAX));
        Some((Rc::new(identity), valid_until))
    }

    fn claim_rules<'a>(&'a self, index: usize, provider: &'a Provider, now: u64) -> ClaimRules<'a> {
        ClaimRules {
            provider: &provider.name,
            provider_index: index,
            tenant_claim: &provider.tenant_claim,
            fixed_tenant: provider.fixed_tenant.as_deref(),
            allowed_tenants: &provider.allowed_tenants,
            scopes_claim: &provider.scopes_claim,
            default_tier: &self.default_tier,
            require_expiration: provider.require_expiration,
            skew_seconds: provider.skew_seconds,
            forwarded_claims: &self.filter_state_claims,
            max_lifetime_seconds: provider.max_lifetime_seconds,
            now,
        }
    }

    /// Verifies a token without any cache. `gate` runs right before the
    /// signature check and may refuse it (the per-client throttle).
    pub fn verify_uncached(
        &self,
        state: &AuthState,
        token: &str,
        now: u64,
        gate: &mut dyn FnMut() -> Result<(), Denial>,
    ) -> Result<Verified, Unverified> {
        let cheap = |denial: Denial, provider: Option<usize>| Unverified {
            denial,
            provider,
            signature_checked: false,
        };
        let (header, issuer) = inspect(token, &self.all_algorithms)
            .map_err(|e| cheap(Denial::from_token_error(&e), None))?;
        let Some(index) = issuer
            .as_deref()
            .and_then(|iss| self.providers.iter().position(|p| p.issuer == iss))
        else {
            return Err(cheap(
                Denial::new(Reason::UnknownIssuer, "the token's issuer is not trusted"),
                None,
            ));
        };
        let (Some(provider), Some(keys)) = (self.providers.get(index), state.keys.get(index))
        else {
            return Err(cheap(
                Denial::new(Reason::UnknownIssuer, "the token's issuer is not trusted"),
                None,
            ));
        };
        if !provider.algorithms.contains(&header.alg) {
            return Err(cheap(
                Denial::from_token_error(&TokenError::UnsupportedAlgorithm(header.alg.to_string())),
                Some(index),
            ));
        }
        let Some(keys) = keys else {
            return Err(cheap(
                Denial::new(
                    Reason::KeysUnavailable,
                    "the issuer's signing keys are not available yet",
                ),
                Some(index),
            ));
        };
        gate().map_err(|denial| cheap(denial, Some(index)))?;
        let mut options = provider.options.clone();
        options.artificial_time = Some(UnixTimeStamp::from_secs(now));
        let (claims, key) = keys
            .verify(token, &header, &options)
            .map_err(|e| Unverified {
                denial: Denial::from_token_error(&e.error),
                provider: Some(index),
                signature_checked: e.signature_checked,
            })?;
        let mut identity = Identity::from_claims(&claims, &self.claim_rules(index, provider, now))
            .map_err(|e| Unverified {
                denial: Denial::from_token_error(&e),
                provider: Some(index),
                signature_checked: true,
            })?;
        identity.key = Some(key);
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        Ok(Verified {
            identity: Rc::new(identity),
            provider: index,
            payload,
        })
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

#[cfg(test)]
mod tests;
