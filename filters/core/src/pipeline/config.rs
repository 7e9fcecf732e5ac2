//! The plugin configuration: one section per stage, and the worker's
//! own settings. A stage runs only if its section is present.

use serde::Deserialize;

use crate::audit::config::AuditConfig;
use crate::auth::config::AuthConfig;
use crate::breaker::config::BreakersConfig;
use crate::config::ConfigError;
use crate::duration;
use crate::mcp::config::McpConfig;
use crate::ratelimit::config::RateLimitConfig;
use crate::residency::config::ResidencyConfig;
use crate::signature::config::SignatureConfig;
use crate::tagging::config::TaggingConfig;

/// The configuration of the `ctxgate` plugin: one section per stage, run
/// in this order over one read of the request. A stage runs only if its
/// section is present; at least one must be.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[cfg_attr(feature = "schema", schemars(title = "ctxgate plugin configuration"))]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Multi-tenant JWT authentication and context-scope authorisation.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// HTTP message signatures (RFC 9421, `hmac-sha256`) and
    /// `Content-Digest` (RFC 9530) on the routes that require them.
    #[serde(default)]
    pub signature: Option<SignatureConfig>,
    /// MCP endpoints: tool calls, prompts and resources authorised by the
    /// context their JSON-RPC body names. Needs `auth`.
    #[serde(default)]
    pub mcp: Option<McpConfig>,
    /// Cost-weighted rate limits, local and global (RLS).
    #[serde(default)]
    pub ratelimit: Option<RateLimitConfig>,
    /// Trusted routing headers.
    #[serde(default)]
    pub tagging: Option<TaggingConfig>,
    /// Data residency: tenants pinned to a region reach only upstream
    /// pools of that region (runs after tagging, before the breaker).
    #[serde(default)]
    pub residency: Option<ResidencyConfig>,
    /// Circuit breakers shared by every worker.
    #[serde(default)]
    pub breaker: Option<BreakersConfig>,
    /// How the module's counters reach Envoy's stats.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// An audit event per stage decision, sent to the audit singleton.
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Writes each request's decision to Envoy filter state once it is
    /// decided, for the access log and the tracer's custom tags:
    /// `wasm.ctxgate.decision` (`allow`, `throttle`, `deny`),
    /// `wasm.ctxgate.cost` and `wasm.ctxgate.breaker` (see the README's
    /// access log and tracing section). One proxy call per value and
    /// request, so off unless set.
    #[serde(default)]
    pub filter_state: bool,
}

/// How metrics reach the proxy, and the per-request family
/// `ctxgate_requests` (see the README's metrics reference).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Counters are counted in the module and handed to the proxy this
    /// often (10 ms to 60 s). `/stats` lags by at most this much.
    #[serde(
        default = "default_flush_interval_ms",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub flush_interval_ms: u64,
    /// Counts every request once, when it is done, in
    /// `ctxgate_requests` by tier, operation, decision (`allow`,
    /// `throttle`, `deny`), status class and tenant, with the upstream
    /// latency histogram and the rate-limit use of labelled tenants.
    /// Default: on in a plugin that runs the auth stage, off otherwise,
    /// so that a chain of ctxgate plugins counts each request once (set
    /// it on exactly one plugin of a chain without auth).
    #[serde(default)]
    pub requests: Option<bool>,
    /// Tenants that always get a `tenant` label of their own.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Besides `tenants`, how many heavy hitters get a label of their own
    /// (0 to 1000): the first tenants seen to carry at least
    /// `top_tenant_share` of recent requests. A label, once given, stays
    /// until Envoy restarts (Envoy keeps every stat), so this bounds the
    /// labels over the proxy's life; every other tenant is `other`.
    #[serde(default = "default_top_tenants")]
    pub top_tenants: usize,
    /// Share of recent requests (0.001 to 1) a tenant must carry
    /// for sure, in a bounded summary of each worker's traffic, to be
    /// labelled as a heavy hitter (and at least 100 requests).
    #[serde(default = "default_top_tenant_share")]
    pub top_tenant_share: f64,
    /// The request header (as forwarded, after tagging) whose value is
    /// the `route` label of `ctxgate_upstream_latency_ms` (the first 16
    /// values a worker sees, then `other`; `none` without the header).
    #[serde(default = "default_route_header")]
    pub route_header: String,
    /// One request in this many (per worker) is timed: each stage's time,
    /// the decision time, the auth stage's token check by cache use, and
    /// the body sizes, in Envoy histograms (see the README's timing
    /// section). Each timed request makes about a dozen more host calls;
    /// 0 turns timing off.
    #[serde(default = "default_timing_every")]
    pub timing_every: u32,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            flush_interval_ms: default_flush_interval_ms(),
            requests: None,
            tenants: Vec::new(),
            top_tenants: default_top_tenants(),
            top_tenant_share: default_top_tenant_share(),
            route_header: default_route_header(),
            timing_every: default_timing_every(),
        }
    }
}

fn default_flush_interval_ms() -> u64 {
    1000
}

fn default_top_tenants() -> usize {
    10
}

fn default_top_tenant_share() -> f64 {
    0.01
}

fn default_timing_every() -> u32 {
    100
}

fn default_route_header() -> String {
    "x-context-priority".to_owned()
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.is_none()
            && self.signature.is_none()
            && self.ratelimit.is_none()
            && self.tagging.is_none()
            && self.breaker.is_none()
            && self.residency.is_none()
        {
            return Err(ConfigError::new(
                "",
                "no stage configured: add at least one of auth, signature, ratelimit, tagging, \
                 residency, breaker",
            ));
        }
        if self.mcp.is_some() && self.auth.is_none() {
            return Err(ConfigError::new(
                "mcp",
                "needs the auth section in the same plugin: MCP messages are authorised \
                 against the scopes of the token auth verified",
            ));
        }
        if let Some(audit) = &self.audit {
            audit
                .validate()
                .map_err(crate::config::in_section("audit"))?;
        }
        if !(10..=60_000).contains(&self.metrics.flush_interval_ms) {
            return Err(ConfigError::new(
                "metrics.flush_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if self.metrics.top_tenants > 1000 {
            return Err(ConfigError::new(
                "metrics.top_tenants",
                "must be between 0 and 1000",
            ));
        }
        if !(crate::telemetry::tenants::MIN_SHARE..=1.0).contains(&self.metrics.top_tenant_share) {
            return Err(ConfigError::new(
                "metrics.top_tenant_share",
                "must be between 0.001 and 1",
            ));
        }
        if self.metrics.tenants.len() > 1000 {
            return Err(ConfigError::new(
                "metrics.tenants",
                "names at most 1000 tenants",
            ));
        }
        Ok(())
    }
}
