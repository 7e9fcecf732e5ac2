//! The compiled rate limiter ([`RateLimiter`]) and a worker's mutable
//! state ([`LimiterState`]): keys with unreported usage, event counts for
//! metrics, the report outbox and the adaptive measurements.

use std::collections::{BTreeMap, HashMap};

use super::adaptive;
use super::config::{
    self, AdaptiveConfig, Band, Contention, GlobalConfig, KeyPart, LimitConfig, RateLimitConfig,
};
use super::keys::Table;
use super::report::Outbox;
use crate::bucket::BucketTable;
use crate::config::{ConfigError, parse_json};
use crate::operation::OperationMap;
use crate::record::RecordError;
use crate::shared::{Secret, SharedStore};

/// The compiled configuration: prices, bucket keys, limits, the bucket
/// tables and the global (RLS) settings.
pub struct RateLimiter {
    pub(super) operations: Option<OperationMap>,
    pub(super) costs: BTreeMap<String, u64>,
    pub(super) default_cost: u64,
    pub(super) payload_bands: Vec<Band>,
    pub(super) depth_bands: Vec<Band>,
    pub(super) header_factor: Option<config::HeaderFactor>,
    pub(super) key: Vec<KeyPart>,
    pub(super) anonymous: config::AnonymousConfig,
    pub(super) tiers: BTreeMap<String, Vec<LimitConfig>>,
    pub(super) tenants: BTreeMap<String, config::TenantConfig>,
    pub(super) default_tier: String,
    pub(super) use_token_limits: bool,
    pub(super) max_token_limit: u64,
    pub(super) on_contention: Contention,
    pub(super) response_headers: bool,
    /// Buckets of verified identities.
    pub table: BucketTable,
    /// Buckets of anonymous clients.
    pub anonymous_table: BucketTable,
    pub adaptive: Option<AdaptiveConfig>,
    pub global: Option<GlobalConfig>,
    /// Prefix of this plugin's shared-data keys.
    pub namespace: String,
}

impl RateLimiter {
    /// Parses and compiles the plugin configuration. `namespace` prefixes
    /// every shared-data key (the plugin's name: stable across
    /// configuration pushes, unique per plugin); `secret` keys the slot
    /// hashing.
    pub fn from_json(
        json: &[u8],
        namespace: &str,
        secret: Secret,
    ) -> Result<RateLimiter, ConfigError> {
        RateLimiter::new(parse_json(json)?, namespace, secret)
    }

    pub fn new(
        config: RateLimitConfig,
        namespace: &str,
        secret: Secret,
    ) -> Result<RateLimiter, ConfigError> {
        config.validate()?;
        // Only needed when the auth filter did not classify the request.
        let operations = (!config.operations.is_empty())
            .then(|| OperationMap::compile(&config.operations))
            .transpose()?;
        let table = |name: &str, slots: u32| {
            BucketTable::new(
                &format!("{namespace}.{name}"),
                slots,
                config.ways,
                config.cas_attempts,
                secret,
            )
        };
        Ok(RateLimiter {
            operations,
            costs: config
                .costs
                .into_iter()
                .map(|(k, v)| (k, u64::from(v)))
                .collect(),
            default_cost: u64::from(config.default_cost),
            payload_bands: config.payload_bands,
            depth_bands: config.depth_bands,
            header_factor: config.header_factor,
            key: config.key,
            table: table("tenants", config.slots),
            anonymous_table: table("anonymous", config.anonymous.slots),
            anonymous: config.anonymous,
            tiers: config.tiers,
            tenants: config.tenants,
            default_tier: config.default_tier,
            use_token_limits: config.use_token_limits,
            max_token_limit: config.max_token_limit,
            on_contention: config.on_contention,
            response_headers: config.response_headers,
            adaptive: config.adaptive,
            global: config.global,
            namespace: namespace.to_owned(),
        })
    }

    /// Creates the shared-data keys. Call from `on_configure`.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        self.table.init_shared(store);
        self.anonymous_table.init_shared(store);
    }

    pub(super) fn table(&self, table: Table) -> &BucketTable {
        match table {
            Table::Tenants => &self.table,
            Table::Anonymous => &self.anonymous_table,
        }
    }

    pub(super) fn table_of(&self, anonymous: bool) -> &BucketTable {
        if anonymous {
            &self.anonymous_table
        } else {
            &self.table
        }
    }

    /// Does the bucket key include the route (so the glue must look it up)?
    pub fn keys_by_route(&self) -> bool {
        self.key.contains(&KeyPart::Route)
    }
}

/// Per-worker mutable state.
pub struct LimiterState {
    /// Keys with consumption not yet reported to the RLS.
    pub dirty: HashMap<u64, Dirty>,
    pub adaptive: Option<adaptive::Adaptive>,
    pub counts: Events,
    /// Reports the RLS has not acknowledged.
    pub outbox: Outbox,
}

impl LimiterState {
    /// `reporter`: a random id for this worker VM (see [`super::report`]).
    pub fn new(limiter: &RateLimiter, reporter: u64) -> LimiterState {
        let (max_pending, max_age_ms) = limiter.global.as_ref().map_or((1, 1), |g| {
            (
                g.max_pending_reports,
                g.report_retry_seconds.saturating_mul(1000),
            )
        });
        LimiterState {
            dirty: HashMap::new(),
            adaptive: None,
            counts: Events::default(),
            outbox: Outbox::new(reporter, max_pending, max_age_ms),
        }
    }

    pub(super) fn mark_dirty(
        &mut self,
        hash: u64,
        anonymous: bool,
        descriptor: &[(String, String)],
    ) {
        if self.dirty.len() < MAX_DIRTY || self.dirty.contains_key(&hash) {
            self.dirty.entry(hash).or_insert_with(|| Dirty {
                anonymous,
                descriptor: descriptor.to_vec(),
            });
        } else {
            self.counts.dirty_overflow += 1;
        }
    }

    pub(super) fn record_invalid(&mut self, error: RecordError) {
        self.counts.invalid_records += 1;
        log::warn!("rate-limit slot in shared data does not decode ({error}); left untouched");
    }
}

/// Events metrics count, per worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Dirty keys dropped because the set was full.
    pub dirty_overflow: u64,
    /// Entries replaced to make room for another key.
    pub evictions: u64,
    /// Bucket updates that ran out of CAS attempts.
    pub contended: u64,
    /// Shared-data records that did not decode.
    pub invalid_records: u64,
    /// Unreported usage lost with a replaced entry.
    pub lost_unreported: u64,
}

/// A key with consumption not yet reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirty {
    pub(super) anonymous: bool,
    pub(super) descriptor: Vec<(String, String)>,
}

/// Most keys a worker remembers as having unreported consumption.
const MAX_DIRTY: usize = 10_000;
