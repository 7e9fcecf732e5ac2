//! The compiled, immutable configuration ([`Auth`]): built once per
//! configuration push, shared by every request of a worker.

use std::collections::HashSet;

use super::config::{AuthConfig, IdentityHeaders, TokenRole, Unmatched};
use super::principal::Service;
use super::provider::Provider;
use super::public_path::PublicPath;
use super::shared_cache::SharedTokenCache;
use super::sources::{self, RoleSource};
use super::throttle::Throttle;
use crate::config::ConfigError;
use crate::jwt::Algorithm;
use crate::operation::OperationMap;
use crate::path::PathParameters;
use crate::shared::{Secret, SharedStore};

/// The compiled, immutable configuration.
pub struct Auth {
    pub realm: String,
    pub providers: Vec<Provider>,
    pub(super) sources: Vec<RoleSource>,
    pub(super) forward_token: bool,
    pub(super) max_token_bytes: usize,
    pub(super) operations: OperationMap,
    pub(super) public_paths: Vec<PublicPath>,
    pub(super) unmatched: Unmatched,
    pub(super) allow_cors_preflight: bool,
    pub headers: IdentityHeaders,
    pub(super) default_tier: String,
    pub(super) max_delegation_depth: u32,
    pub cache_max_entries: usize,
    pub(super) failure_ttl_seconds: u64,
    pub(super) max_ttl_seconds: u64,
    pub(super) shared_cache: SharedTokenCache,
    pub(super) throttle: Option<Throttle>,
    /// Prefix of this plugin's shared-data keys: the plugin's name, stable
    /// across configuration pushes and unique per plugin.
    pub namespace: String,
    pub(super) filter_state_claims: Vec<String>,
    pub(super) all_algorithms: HashSet<Algorithm>,
    pub(super) path_parameters: PathParameters,
    pub(super) method_override_headers: Vec<String>,
    pub(super) method_override_params: Vec<String>,
    /// Every query parameter the gateway decides on.
    pub(super) read_params: Vec<String>,
    /// Service principals, by client certificate.
    pub(super) services: Vec<Service>,
}

impl Auth {
    /// Compiles a parsed configuration. `namespace` prefixes every
    /// shared-data key; `secret` keys the per-client throttle's hashing.
    pub fn new(config: AuthConfig, namespace: &str, secret: Secret) -> Result<Auth, ConfigError> {
        config.validate()?;
        let operations = OperationMap::compile(&config.operations)?;
        let sources = config.role_sources();
        if let Some(i) = config
            .services
            .iter()
            .position(|s| s.require_token)
            .filter(|_| {
                !config
                    .providers
                    .iter()
                    .any(|p| p.role == TokenRole::Service)
            })
        {
            return Err(ConfigError::new(
                format!("services[{i}].require_token"),
                "needs a provider with role service to verify service tokens",
            ));
        }
        if config.operations.iter().any(|o| o.require_service) && config.services.is_empty() {
            return Err(ConfigError::new(
                "services",
                "an operation sets require_service, but no service is configured",
            ));
        }
        let services = config
            .services
            .into_iter()
            .enumerate()
            .map(|(i, s)| Service::compile(i, s, &config.default_tier))
            .collect::<Result<Vec<_>, _>>()?;
        let providers = config
            .providers
            .into_iter()
            .enumerate()
            .map(|(i, p)| Provider::compile(i, p, config.max_token_bytes))
            .collect::<Result<Vec<_>, _>>()?;
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
            services,
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
}
