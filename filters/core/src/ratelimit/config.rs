//! The rate-limit filter's plugin configuration (JSON), and its validation.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use crate::client::ClientConfig;
use crate::config::{ConfigError, check_header_name};
use crate::duration;
use crate::operation::OperationRule;

/// Cost-weighted rate limits: leaky buckets per tenant (and tier) in
/// shared data, adaptive limits, and global limits through an Envoy Rate
/// Limit Service.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Operation map used when the auth stage did not run (otherwise the
    /// operation comes from it).
    #[serde(default)]
    pub operations: Vec<OperationRule>,
    /// Cost of each operation (by name), in read-equivalents (1-10000).
    #[serde(default = "defaults::costs")]
    pub costs: BTreeMap<String, u32>,
    /// Cost of requests whose operation is unknown or not priced (1-10000).
    #[serde(default = "defaults::one")]
    pub default_cost: u32,
    /// Cost multipliers by the request body's size: its `content-length`
    /// (which Envoy holds the body to), or for a body of unknown length
    /// (chunked, HTTP/2 without `content-length`) the bytes received so
    /// far, charged as they stream in.
    #[serde(default = "defaults::payload_bands")]
    pub payload_bands: Vec<Band>,
    /// Cost multipliers by the depth (segments) of the context path.
    #[serde(default)]
    pub depth_bands: Vec<Band>,
    /// Cost multipliers by a numeric request header (e.g. a declared
    /// fan-out). Only meaningful for headers the client cannot abuse to
    /// lower its cost: multipliers are at least 1.
    #[serde(default)]
    pub header_factor: Option<HeaderFactor>,
    /// What a bucket is keyed by, in order: `tenant`, `subject`,
    /// `operation`, `route`.
    #[serde(default = "defaults::key")]
    pub key: Vec<KeyPart>,
    /// How requests without a verified identity are keyed.
    #[serde(default)]
    pub anonymous: AnonymousConfig,
    /// Limits per tier (`tier -> limits`, 1-4 limits each); the
    /// `default_tier` and `anonymous.tier` must be here.
    #[serde(default = "defaults::tiers")]
    pub tiers: BTreeMap<String, Vec<LimitConfig>>,
    /// Per-tenant overrides (`tenant -> override`): a tier, or explicit
    /// limits.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Tier used when the identity names none, or one not configured.
    #[serde(default = "defaults::default_tier")]
    pub default_tier: String,
    /// Take limits from the token's `rate_limits` claim
    /// (`requests_per_minute`, `context_operations_per_hour`) when present.
    #[serde(default)]
    pub use_token_limits: bool,
    /// Upper bound on limits a token may claim (protects against an
    /// issuer handing out absurd limits).
    #[serde(default = "defaults::max_token_limit")]
    pub max_token_limit: u64,
    /// Shared-data slots holding the tenants' buckets (1-65536; memory
    /// bound: slots x ways entries, each a few dozen bytes).
    #[serde(default = "defaults::slots")]
    pub slots: u32,
    /// Buckets per slot (1-16); also the ways of the anonymous table.
    #[serde(default = "defaults::ways")]
    pub ways: u32,
    /// Compare-and-swap attempts before giving up on a bucket update
    /// (1-1000).
    #[serde(default = "defaults::cas_attempts")]
    pub cas_attempts: u32,
    /// What happens when every attempt lost the race: `allow` or `deny`.
    #[serde(default)]
    pub on_contention: Contention,
    /// Add `x-ratelimit-*` headers to responses that were let through.
    #[serde(default = "defaults::yes")]
    pub response_headers: bool,
    /// Shrink limits while the upstream is slow, and refuse beyond a number
    /// of requests in flight (default: off).
    #[serde(default)]
    pub adaptive: Option<AdaptiveConfig>,
    /// Global limits through an Envoy Rate Limit Service (default: local
    /// limits only).
    #[serde(default)]
    pub global: Option<GlobalConfig>,
}

/// A cost multiplier applying above a threshold; the highest matching
/// band wins.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// The band applies to values larger than this (bytes, segments, or
    /// the header's number).
    pub above: u64,
    /// What the cost is multiplied by (1-1000).
    pub multiplier: u32,
}

/// Cost multipliers by the number in a request header.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct HeaderFactor {
    /// The header (lower case) holding a number.
    pub header: String,
    /// Multipliers by the header's value; the highest matching band wins.
    pub bands: Vec<Band>,
}

/// A part of a bucket's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The verified tenant.
    Tenant,
    /// The token's subject.
    Subject,
    /// The operation's name.
    Operation,
    /// The Envoy route's name.
    Route,
}

/// Requests without a verified identity: keyed by client address, in a
/// table of their own.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct AnonymousConfig {
    /// How the client address is found and aggregated (see
    /// [`ClientConfig`]): Envoy's computed address by default.
    pub client: ClientConfig,
    /// The tier whose limits apply to anonymous clients.
    pub tier: String,
    /// Shared-data slots of the anonymous table (1-65536), kept apart from the
    /// tenants' table so a flood of client addresses can never push a
    /// tenant's bucket out.
    pub slots: u32,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        AnonymousConfig {
            client: ClientConfig::default(),
            tier: "anonymous".into(),
            slots: 1024,
        }
    }
}

/// One limit: `limit` units per `window_seconds`, as a token bucket of
/// capacity `burst` (default `limit`) refilled continuously.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The limit's name (unique among a tier's limits), reported in
    /// refusals; a bucket's level belongs to the key and this name.
    pub name: String,
    /// Units (cost or requests) per window (1-1000000000).
    pub limit: u64,
    /// The window the limit leaks over (1 s to 31 days).
    #[serde(deserialize_with = "duration::seconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub window_seconds: u64,
    /// Bucket capacity (default: `limit`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// `cost` (default): requests consume their cost; `requests`: each
    /// request consumes 1.
    #[serde(default)]
    pub counts: Counts,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    /// Requests consume their cost.
    #[default]
    Cost,
    /// Each request consumes 1.
    Requests,
}

/// A tenant's override: exactly one of `tier`, `limits`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// A configured tier whose limits apply to the tenant.
    #[serde(default)]
    pub tier: Option<String>,
    /// The tenant's own limits (1-4).
    #[serde(default)]
    pub limits: Option<Vec<LimitConfig>>,
}

/// What happens when a bucket update loses every compare-and-swap race.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Contention {
    /// Let the request through (and count it).
    #[default]
    Allow,
    /// Refuse it (429 `contention`).
    Deny,
}

/// Shrink limits when the upstream struggles, as seen from the gateway.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Upstream latency (EWMA) above which limits shrink (positive).
    #[serde(deserialize_with = "duration::milliseconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub latency_threshold_ms: u64,
    /// Factor applied to limits (capacity and refill) while latency is
    /// above the threshold, in (0, 1].
    #[serde(default = "defaults::latency_multiplier")]
    pub latency_multiplier: f64,
    /// Weight of a new latency sample in the EWMA (0-1].
    #[serde(default = "defaults::ewma_alpha")]
    pub ewma_alpha: f64,
    /// Requests in flight to the upstream (all workers) above which new
    /// requests are refused with 503. 0 disables.
    #[serde(default)]
    pub max_in_flight: u64,
    /// How often workers publish and combine their measurements (10 ms to
    /// 10 s).
    #[serde(
        default = "defaults::publish_interval_ms",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub publish_interval_ms: u64,
}

/// Global limits: the Envoy Rate Limit Service
/// (`envoy.service.ratelimit.v3.RateLimitService`) counts for every
/// gateway; usage reports carry an id so a retried report counts once.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    /// `hierarchical`: local buckets decide until a tenant nears its global
    /// limit, then the RLS decides; `always`: the RLS decides every request.
    #[serde(default)]
    pub mode: GlobalMode,
    /// Envoy cluster of the rate-limit service (gRPC, HTTP/2; not empty).
    pub cluster: String,
    /// RLS domain (not empty).
    #[serde(default = "defaults::domain")]
    pub domain: String,
    /// Deadline of an RLS call, enforced by the filter even if Envoy
    /// queues the call (1 ms to 10 s).
    #[serde(
        default = "defaults::rls_timeout_ms",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub timeout_ms: u64,
    /// Fraction of the global limit below which local buckets decide
    /// alone, in (0, 1].
    #[serde(default = "defaults::sync_threshold")]
    pub sync_threshold: f64,
    /// How many gateways (Envoy processes) share the global limit, at most.
    /// Between two RLS answers each admits locally at most
    /// `(1 - sync_threshold) / gateways` of the limit, so together they
    /// cannot pass it. Too high only costs RLS calls; too low risks
    /// over-admission near the limit.
    #[serde(default = "defaults::gateways")]
    pub gateways: u32,
    /// How often local consumption is reported to the RLS (10 ms to 60 s).
    #[serde(
        default = "defaults::sync_interval_ms",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub sync_interval_ms: u64,
    /// When the RLS fails or is late: `local_fallback`, `allow` or `deny`.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Status for `failure_mode: deny` (4xx or 5xx).
    #[serde(default = "defaults::deny_status")]
    pub deny_status: u16,
    /// How long a report the RLS did not acknowledge is retried (same
    /// report id, so the RLS counts it once) before it is dropped and
    /// counted (1 s to 1 h).
    #[serde(
        default = "defaults::report_retry_seconds",
        deserialize_with = "duration::seconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub report_retry_seconds: u64,
    /// Reports waiting for a retry, per worker, at most (1-1000000; the
    /// oldest are dropped beyond it, and counted).
    #[serde(default = "defaults::max_pending_reports")]
    pub max_pending_reports: usize,
    /// An MCP call with a price also counts against a global key of its
    /// own, the descriptor `[tenant, mcp_method, mcp_tool]` (`mcp_tool` for
    /// `tools/call` only), accounted like the bucket's (`mode`) and sent
    /// next to it, with its own hits, when it asks: per-method and per-tool
    /// limits in the RLS hold like a tenant's. `false`: MCP calls count in
    /// the bucket only.
    #[serde(default = "defaults::yes")]
    pub mcp_descriptor: bool,
}

/// Who decides requests in global mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum GlobalMode {
    /// Local buckets decide until a tenant nears its global limit
    /// (`sync_threshold`), then the RLS decides.
    #[default]
    Hierarchical,
    /// The RLS decides every request.
    Always,
}

/// What happens when the RLS fails, is late or unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The local bucket's decision.
    #[default]
    LocalFallback,
    /// Let the request through.
    Allow,
    /// Refuse it with `deny_status`.
    Deny,
}

mod defaults {
    use std::collections::BTreeMap;

    use super::{Band, Counts, LimitConfig};

    pub fn costs() -> BTreeMap<String, u32> {
        [
            ("read", 1),
            ("write", 2),
            ("delete", 2),
            ("complex_query", 5),
            ("graph_traversal", 10),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
    pub fn one() -> u32 {
        1
    }
    pub fn payload_bands() -> Vec<Band> {
        vec![
            Band {
                above: 100 * 1024,
                multiplier: 2,
            },
            Band {
                above: 1024 * 1024,
                multiplier: 4,
            },
        ]
    }
    pub fn key() -> Vec<super::KeyPart> {
        vec![super::KeyPart::Tenant]
    }
    fn per_minute(limit: u64) -> LimitConfig {
        LimitConfig {
            name: "per_minute".into(),
            limit,
            window_seconds: 60,
            burst: None,
            counts: Counts::Cost,
        }
    }
    pub fn tiers() -> BTreeMap<String, Vec<LimitConfig>> {
        [
            ("anonymous", 60),
            ("free", 300),
            ("standard", 1200),
            ("premium", 6000),
        ]
        .into_iter()
        .map(|(tier, limit)| (tier.to_owned(), vec![per_minute(limit)]))
        .collect()
    }
    pub fn default_tier() -> String {
        "standard".into()
    }
    pub fn max_token_limit() -> u64 {
        1_000_000
    }
    pub fn slots() -> u32 {
        4096
    }
    pub fn ways() -> u32 {
        4
    }
    pub fn cas_attempts() -> u32 {
        16
    }
    pub fn yes() -> bool {
        true
    }
    pub fn latency_multiplier() -> f64 {
        0.6
    }
    pub fn ewma_alpha() -> f64 {
        0.2
    }
    pub fn publish_interval_ms() -> u64 {
        100
    }
    pub fn domain() -> String {
        "ctxgate".into()
    }
    pub fn rls_timeout_ms() -> u64 {
        20
    }
    pub fn sync_threshold() -> f64 {
        0.8
    }
    pub fn gateways() -> u32 {
        4
    }
    pub fn sync_interval_ms() -> u64 {
        200
    }
    pub fn deny_status() -> u16 {
        500
    }
    pub fn report_retry_seconds() -> u64 {
        300
    }
    pub fn max_pending_reports() -> usize {
        10_000
    }
}

fn check_limits(field: &str, limits: &[LimitConfig]) -> Result<(), ConfigError> {
    if limits.is_empty() || limits.len() > 4 {
        return Err(ConfigError::new(field, "give between 1 and 4 limits"));
    }
    let mut names = HashSet::new();
    for (i, l) in limits.iter().enumerate() {
        let f = |name: &str| format!("{field}[{i}].{name}");
        if l.name.is_empty() || !names.insert(&l.name) {
            return Err(ConfigError::new(f("name"), "must be non-empty and unique"));
        }
        if l.limit == 0 || l.limit > 1_000_000_000 {
            return Err(ConfigError::new(
                f("limit"),
                "must be between 1 and 1000000000",
            ));
        }
        if l.window_seconds == 0 || l.window_seconds > 31 * 24 * 3600 {
            return Err(ConfigError::new(
                f("window_seconds"),
                "must be between 1 and 2678400",
            ));
        }
        if l.burst.is_some_and(|b| b == 0 || b > 1_000_000_000) {
            return Err(ConfigError::new(
                f("burst"),
                "must be between 1 and 1000000000",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_bands(field: &str, bands: &[Band]) -> Result<(), ConfigError> {
    for (i, b) in bands.iter().enumerate() {
        if !(1..=1000).contains(&b.multiplier) {
            return Err(ConfigError::new(
                format!("{field}[{i}].multiplier"),
                "must be between 1 and 1000",
            ));
        }
    }
    Ok(())
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, cost) in &self.costs {
            if !(1..=10_000).contains(cost) {
                return Err(ConfigError::new(
                    format!("costs.{name}"),
                    "must be between 1 and 10000",
                ));
            }
        }
        if !(1..=10_000).contains(&self.default_cost) {
            return Err(ConfigError::new(
                "default_cost",
                "must be between 1 and 10000",
            ));
        }
        check_bands("payload_bands", &self.payload_bands)?;
        check_bands("depth_bands", &self.depth_bands)?;
        if let Some(h) = &self.header_factor {
            check_header_name("header_factor.header", &h.header)?;
            check_bands("header_factor.bands", &h.bands)?;
        }
        if self.key.is_empty() {
            return Err(ConfigError::new("key", "name at least one part"));
        }
        self.anonymous.client.validate("anonymous.client")?;
        if !(1..=65_536).contains(&self.anonymous.slots) {
            return Err(ConfigError::new(
                "anonymous.slots",
                "must be between 1 and 65536",
            ));
        }
        if self.tiers.is_empty() {
            return Err(ConfigError::new("tiers", "configure at least one tier"));
        }
        for (tier, limits) in &self.tiers {
            check_limits(&format!("tiers.{tier}"), limits)?;
        }
        for required in [&self.default_tier, &self.anonymous.tier] {
            if !self.tiers.contains_key(required) {
                return Err(ConfigError::new(
                    "tiers",
                    format!("tier '{required}' is used but not configured"),
                ));
            }
        }
        for (tenant, t) in &self.tenants {
            let field = format!("tenants.{tenant}");
            match (&t.tier, &t.limits) {
                (Some(tier), None) if self.tiers.contains_key(tier) => {}
                (Some(tier), None) => {
                    return Err(ConfigError::new(
                        format!("{field}.tier"),
                        format!("tier '{tier}' is not configured"),
                    ));
                }
                (None, Some(limits)) => check_limits(&format!("{field}.limits"), limits)?,
                _ => return Err(ConfigError::new(field, "set exactly one of tier, limits")),
            }
        }
        if !(1..=65_536).contains(&self.slots) {
            return Err(ConfigError::new("slots", "must be between 1 and 65536"));
        }
        if !(1..=16).contains(&self.ways) {
            return Err(ConfigError::new("ways", "must be between 1 and 16"));
        }
        if !(1..=1000).contains(&self.cas_attempts) {
            return Err(ConfigError::new(
                "cas_attempts",
                "must be between 1 and 1000",
            ));
        }
        if let Some(a) = &self.adaptive {
            if !(a.latency_multiplier > 0.0 && a.latency_multiplier <= 1.0) {
                return Err(ConfigError::new(
                    "adaptive.latency_multiplier",
                    "must be in (0, 1]",
                ));
            }
            if !(a.ewma_alpha > 0.0 && a.ewma_alpha <= 1.0) {
                return Err(ConfigError::new("adaptive.ewma_alpha", "must be in (0, 1]"));
            }
            if a.latency_threshold_ms == 0 {
                return Err(ConfigError::new(
                    "adaptive.latency_threshold_ms",
                    "must be positive",
                ));
            }
            if !(10..=10_000).contains(&a.publish_interval_ms) {
                return Err(ConfigError::new(
                    "adaptive.publish_interval_ms",
                    "must be between 10 and 10000",
                ));
            }
        }
        if let Some(g) = &self.global {
            if g.cluster.is_empty() {
                return Err(ConfigError::new("global.cluster", "must not be empty"));
            }
            if g.domain.is_empty() {
                return Err(ConfigError::new("global.domain", "must not be empty"));
            }
            if !(1..=10_000).contains(&g.timeout_ms) {
                return Err(ConfigError::new(
                    "global.timeout_ms",
                    "must be between 1 and 10000",
                ));
            }
            if !(g.sync_threshold > 0.0 && g.sync_threshold <= 1.0) {
                return Err(ConfigError::new(
                    "global.sync_threshold",
                    "must be in (0, 1]",
                ));
            }
            if !(1..=1000).contains(&g.gateways) {
                return Err(ConfigError::new(
                    "global.gateways",
                    "must be between 1 and 1000",
                ));
            }
            if !(10..=60_000).contains(&g.sync_interval_ms) {
                return Err(ConfigError::new(
                    "global.sync_interval_ms",
                    "must be between 10 and 60000",
                ));
            }
            if !(1..=3600).contains(&g.report_retry_seconds) {
                return Err(ConfigError::new(
                    "global.report_retry_seconds",
                    "must be between 1 and 3600",
                ));
            }
            if !(1..=1_000_000).contains(&g.max_pending_reports) {
                return Err(ConfigError::new(
                    "global.max_pending_reports",
                    "must be between 1 and 1000000",
                ));
            }
            if !(400..=599).contains(&g.deny_status) {
                return Err(ConfigError::new(
                    "global.deny_status",
                    "must be a 4xx or 5xx status",
                ));
            }
        }
        Ok(())
    }
}
