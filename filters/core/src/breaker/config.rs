//! The breaker filter's plugin configuration (JSON).

use serde::Deserialize;

use crate::config::{ConfigError, check_header_name};
use crate::duration;
use crate::matcher::NamedMatcher;

/// Circuit breakers shared by every worker of one Envoy.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BreakersConfig {
    /// The breakers (at least one, unique names). A request is guarded by
    /// the first whose `select` matches it.
    pub breakers: Vec<BreakerConfig>,
    /// Compare-and-swap attempts per update of a breaker record.
    #[serde(default = "default_cas_attempts")]
    pub cas_attempts: u32,
}

fn default_cas_attempts() -> u32 {
    32
}

/// One circuit breaker, for one class of upstream.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Upstream class, e.g. `context_repository`; `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Which requests this breaker guards; every member given must match
    /// (default: all requests).
    #[serde(default)]
    pub select: Selector,
    /// Upstream request timeout (1 ms to 1 h), enforced by Envoy's router
    /// (the filter sets `x-envoy-upstream-rq-timeout-ms`, which overrides
    /// the route's timeout); a timeout counts as a failure. Default: the
    /// route's timeout.
    #[serde(default, deserialize_with = "duration::option_milliseconds")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<duration::Milliseconds>"))]
    pub request_timeout_ms: Option<u64>,
    /// Failure rate (percent of the requests in the window, 1-100) that
    /// opens the breaker.
    #[serde(default = "defaults::threshold")]
    pub error_threshold_percent: u64,
    /// Rolling window the failure rate is measured over (1 s to 1 h, ten
    /// buckets).
    #[serde(default = "defaults::window", deserialize_with = "duration::seconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub window_seconds: u64,
    /// Fewest requests in the window before the failure rate counts.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u64,
    /// How long the breaker stays open before probing (1 ms to 1 h).
    #[serde(
        default = "defaults::reset_timeout",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub reset_timeout_ms: u64,
    /// Probe requests let through while half-open (1-1000); all must
    /// succeed to close, one failure opens again.
    #[serde(default = "defaults::probes")]
    pub half_open_probes: u32,
    /// Statuses that count as failures (default: every 5xx, which includes
    /// Envoy's 503 for upstream resets and 504 for timeouts).
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
    /// What an open breaker does with requests: `{"action": "reject"}`
    /// (default) or `{"action": "fallback", ...}`.
    #[serde(default)]
    pub on_open: OpenAction,
}

/// Which requests a breaker guards; every member given must match.
///
/// Route and cluster names are those Envoy selected when the request
/// arrived (`xds.route_name`, `xds.cluster_name`). Behind a filter that
/// changes routing headers (tagging, or a breaker's fallback) the final
/// route may differ: select on the tag header there.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Envoy route names (exact).
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub routes: Option<Vec<String>>,
    /// Envoy cluster names (exact) of the selected route.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub clusters: Option<Vec<String>>,
    /// A request header test, e.g. a tag the tagging stage set:
    /// `{"name": "x-context-type", "values": ["large-context"]}` or, as
    /// Envoy writes it, `{"name": "x-context-type", "string_match":
    /// {"exact": "large-context"}}`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub header: Option<NamedMatcher>,
    /// Several header tests, any of which selects the request.
    #[serde(default)]
    #[cfg_attr(feature = "schema", serde(skip_serializing_if = "Option::is_none"))]
    pub any_header: Option<Vec<NamedMatcher>>,
}

/// What an open breaker does with requests, by `action`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "action")]
pub enum OpenAction {
    /// Answer 503 with `Retry-After` and a JSON body naming the breaker.
    #[default]
    Reject,
    /// Forward with `request_header: request_value` (the route table sends
    /// it to a fallback cluster) and mark the response with
    /// `response_header: response_value`.
    Fallback {
        /// Request header that steers the route table to the fallback
        /// (lower case; removed from client requests).
        #[serde(default = "defaults::degraded_header")]
        request_header: String,
        /// Its value.
        #[serde(default = "defaults::degraded_request_value")]
        request_value: String,
        /// Response header marking the answer as degraded (lower case).
        #[serde(default = "defaults::degraded_header")]
        response_header: String,
        /// Its value.
        #[serde(default = "defaults::degraded_response_value")]
        response_value: String,
    },
}

mod defaults {
    pub fn threshold() -> u64 {
        50
    }
    pub fn window() -> u64 {
        10
    }
    pub fn min_requests() -> u64 {
        20
    }
    pub fn reset_timeout() -> u64 {
        30_000
    }
    pub fn probes() -> u32 {
        3
    }
    pub fn degraded_header() -> String {
        "x-context-degraded".into()
    }
    pub fn degraded_request_value() -> String {
        "cache".into()
    }
    pub fn degraded_response_value() -> String {
        "true".into()
    }
}

impl BreakerConfig {
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{field}.{name}");
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(ConfigError::new(
                f("name"),
                "must be non-empty [A-Za-z0-9_-]",
            ));
        }
        if !(1..=100).contains(&self.error_threshold_percent) {
            return Err(ConfigError::new(
                f("error_threshold_percent"),
                "must be between 1 and 100",
            ));
        }
        if !(1..=3600).contains(&self.window_seconds) {
            return Err(ConfigError::new(
                f("window_seconds"),
                "must be between 1 and 3600",
            ));
        }
        if self.min_requests == 0 {
            return Err(ConfigError::new(f("min_requests"), "must be at least 1"));
        }
        if !(1..=3_600_000).contains(&self.reset_timeout_ms) {
            return Err(ConfigError::new(
                f("reset_timeout_ms"),
                "must be between 1 and 3600000",
            ));
        }
        if !(1..=1000).contains(&self.half_open_probes) {
            return Err(ConfigError::new(
                f("half_open_probes"),
                "must be between 1 and 1000",
            ));
        }
        if self
            .request_timeout_ms
            .is_some_and(|t| !(1..=3_600_000).contains(&t))
        {
            return Err(ConfigError::new(
                f("request_timeout_ms"),
                "must be between 1 and 3600000",
            ));
        }
        if let Some(statuses) = &self.failure_statuses
            && (statuses.is_empty() || statuses.iter().any(|s| !(100..=599).contains(s)))
        {
            return Err(ConfigError::new(
                f("failure_statuses"),
                "give HTTP statuses between 100 and 599",
            ));
        }
        if let OpenAction::Fallback {
            request_header,
            response_header,
            request_value,
            response_value,
        } = &self.on_open
        {
            check_header_name(&f("on_open.request_header"), request_header)?;
            check_header_name(&f("on_open.response_header"), response_header)?;
            for (name, value) in [
                ("request_value", request_value),
                ("response_value", response_value),
            ] {
                if !crate::auth::identity::is_valid_label(value) {
                    return Err(ConfigError::new(
                        f(&format!("on_open.{name}")),
                        "must be a printable header value",
                    ));
                }
            }
        }
        if let Some(any) = &self.select.any_header
            && (any.is_empty() || any.iter().any(NamedMatcher::is_empty_list))
        {
            return Err(ConfigError::new(
                f("select.any_header"),
                "give headers with at least one value each",
            ));
        }
        if let Some(h) = &self.select.header
            && h.is_empty_list()
        {
            return Err(ConfigError::new(
                f("select.header.values"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}
