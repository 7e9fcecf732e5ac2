//! The breaker filter's plugin configuration (JSON).

use serde::Deserialize;

use crate::auth::config::{ConfigError, check_header_name};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakersConfig {
    pub breakers: Vec<BreakerConfig>,
    /// Compare-and-swap attempts per update of a breaker record.
    #[serde(default = "default_cas_attempts")]
    pub cas_attempts: u32,
}

fn default_cas_attempts() -> u32 {
    32
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Upstream class, e.g. `context_repository`; `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Which requests this breaker guards; every field given must match.
    #[serde(default)]
    pub select: Selector,
    /// Upstream request timeout, enforced by Envoy's router (the filter
    /// sets `x-envoy-upstream-rq-timeout-ms`); a timeout counts as a failure.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Failure rate (percent of requests in the window) that opens the breaker.
    #[serde(default = "defaults::threshold")]
    pub error_threshold_percent: u64,
    /// Rolling window the failure rate is measured over.
    #[serde(default = "defaults::window")]
    pub window_seconds: u64,
    /// Fewest requests in the window before the rate counts.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u64,
    /// How long the breaker stays open before probing.
    #[serde(default = "defaults::reset_timeout")]
    pub reset_timeout_ms: u64,
    /// Probe requests let through while half-open; all must succeed to close.
    #[serde(default = "defaults::probes")]
    pub half_open_probes: u32,
    /// Statuses that count as failures (default: every 5xx, which includes
    /// Envoy's 503 for upstream resets and 504 for timeouts).
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
    /// What an open breaker does with requests.
    #[serde(default)]
    pub on_open: OpenAction,
}

/// Route and cluster names are those Envoy selected when the request
/// arrived (`xds.route_name`, `xds.cluster_name`). Behind a filter that
/// changes routing headers (tagging, or a breaker's fallback) the final
/// route may differ: select on the tag header there.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Envoy route names.
    #[serde(default)]
    pub routes: Option<Vec<String>>,
    /// Envoy cluster names (of the selected route).
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
    /// A request header (e.g. a tag set by the tagging filter) and values.
    #[serde(default)]
    pub header: Option<HeaderSelector>,
    /// Several header tests, any of which selects the request.
    #[serde(default)]
    pub any_header: Option<Vec<HeaderSelector>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSelector {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "action")]
pub enum OpenAction {
    /// Answer 503 with `Retry-After` and a JSON body naming the breaker.
    #[default]
    Reject,
    /// Forward with `request_header: request_value` (the route table sends
    /// it to a fallback cluster) and mark the response with
    /// `response_header: response_value`.
    Fallback {
        #[serde(default = "defaults::degraded_header")]
        request_header: String,
        #[serde(default = "defaults::degraded_request_value")]
        request_value: String,
        #[serde(default = "defaults::degraded_header")]
        response_header: String,
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
            && (any.is_empty() || any.iter().any(|h| h.values.is_empty()))
        {
            return Err(ConfigError::new(
                f("select.any_header"),
                "give headers with at least one value each",
            ));
        }
        if let Some(h) = &self.select.header
            && h.values.is_empty()
        {
            return Err(ConfigError::new(
                f("select.header.values"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}
