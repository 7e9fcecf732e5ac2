//! The `audit` section: one section for both sides of the trail. The
//! filter reads what the request path needs (the queue, the
//! pseudonymisation, the queue bound); the singleton reads the rest
//! (collector, batches, backlog, retries). An operator writes the same
//! section into both configurations.

use serde::Deserialize;

use crate::client::ClientConfig;
use crate::config::ConfigError;
use crate::duration;

/// A tamper-evident audit trail of every access decision.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `vm_id` of the audit singleton (the bootstrap `envoy.bootstrap.wasm`
    /// service running this module with root id `ctxgate_audit`): the
    /// queue belongs to it. The filter's own `vm_id` in the demo and the
    /// benchmark: the singleton then shares the filter's shared data, where
    /// it publishes how much of each worker's queue share it took.
    pub singleton_vm_id: String,
    /// Name of the queue the singleton registers.
    #[serde(default = "defaults::queue")]
    pub queue: String,
    /// Records subjects as a keyed hash (HMAC-SHA256 under
    /// `pseudonym_key`, its first 128 bits in hex) instead of in clear.
    #[serde(default)]
    pub pseudonymize_subjects: bool,
    /// The pseudonymisation key (at least 16 bytes). Needed with
    /// `pseudonymize_subjects`; the same key gives the same pseudonym, so
    /// one subject's events can be followed without naming the subject.
    #[serde(default)]
    pub pseudonym_key: Option<String>,
    /// Where the recorded client address comes from, as for the rate
    /// limiter's `client`: by default the downstream address Envoy computed
    /// (a proxy property read per audited request), kept whole
    /// (`ipv6_prefix` 128). A gateway with `use_remote_address` appends
    /// that same address to `X-Forwarded-For`, so `source: forwarded_for`
    /// with `trusted_hops: 1` records the same client from the request's
    /// headers, without the property read (the first of a stream costs a
    /// few microseconds of Envoy CPU); behind N trusted proxies, N + 1.
    #[serde(default = "defaults::client")]
    pub client: ClientConfig,
    /// Events one worker may have in the queue, not yet taken by the
    /// singleton (1 to 10 000 000). Beyond it events are dropped and
    /// counted (`ctxgate_audit.dropped`), and the loss is written into the
    /// trail.
    #[serde(default = "defaults::queue_limit")]
    pub queue_limit: u64,
    /// Where the singleton delivers batches. Needed by the singleton.
    #[serde(default)]
    pub collector: Option<CollectorConfig>,
    /// When the singleton cuts a batch.
    #[serde(default)]
    pub batch: BatchConfig,
    /// What the singleton holds while the collector is away.
    #[serde(default)]
    pub backlog: BacklogConfig,
    /// How the singleton retries a failed delivery.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// The HTTP collector batches are POSTed to (one JSON line per batch).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Envoy cluster of the collector.
    pub cluster: String,
    /// The `:path` of the POST.
    #[serde(default = "defaults::path")]
    pub path: String,
    /// `:authority` of the POST (default: the cluster name).
    #[serde(default)]
    pub authority: Option<String>,
    /// How long one delivery may take (1 ms to 60 s).
    #[serde(
        default = "defaults::timeout",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub timeout_ms: u64,
}

/// When a batch is cut.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one batch (1 to 100 000). Fewer, larger batches
    /// cost the singleton less per event (one POST each).
    #[serde(default = "defaults::max_events")]
    pub max_events: usize,
    /// Longest an event waits in the singleton for its batch (10 ms to
    /// 60 s). A worker holds its records for up to a quarter of this
    /// (and at most 1024 of them) before it hands them to the singleton
    /// in one queue message, so an event is delivered within about 1.25
    /// times this, plus the delivery itself.
    #[serde(
        default = "defaults::max_delay",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub max_delay_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_events: defaults::max_events(),
            max_delay_ms: defaults::max_delay(),
        }
    }
}

/// What the singleton holds while the collector does not take it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct BacklogConfig {
    /// Most events held, the batch being delivered included (1 to
    /// 10 000 000). Beyond it new events are dropped, counted, and the
    /// next batch records how many.
    #[serde(default = "defaults::backlog")]
    pub max_events: usize,
}

impl Default for BacklogConfig {
    fn default() -> BacklogConfig {
        BacklogConfig {
            max_events: defaults::backlog(),
        }
    }
}

/// Retries of a failed delivery: the same batch again, after a backoff
/// that doubles from `initial_backoff_ms` up to `max_backoff_ms`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first wait (1 ms to 10 min).
    #[serde(
        default = "defaults::initial_backoff",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub initial_backoff_ms: u64,
    /// The longest wait, at least `initial_backoff_ms`.
    #[serde(
        default = "defaults::max_backoff",
        deserialize_with = "duration::milliseconds"
    )]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Milliseconds"))]
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            initial_backoff_ms: defaults::initial_backoff(),
            max_backoff_ms: defaults::max_backoff(),
        }
    }
}

mod defaults {
    use crate::client::ClientConfig;

    pub fn client() -> ClientConfig {
        ClientConfig {
            ipv6_prefix: 128,
            ..ClientConfig::default()
        }
    }
    pub fn queue() -> String {
        "ctxgate_audit".to_owned()
    }
    pub fn queue_limit() -> u64 {
        100_000
    }
    pub fn path() -> String {
        "/audit".to_owned()
    }
    pub fn timeout() -> u64 {
        2_000
    }
    pub fn max_events() -> usize {
        4_000
    }
    pub fn max_delay() -> u64 {
        200
    }
    pub fn backlog() -> usize {
        200_000
    }
    pub fn initial_backoff() -> u64 {
        100
    }
    pub fn max_backoff() -> u64 {
        2_000
    }
}

/// The singleton's whole configuration: `{"audit": {...}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingletonConfig {
    pub audit: AuditConfig,
}

impl AuditConfig {
    /// Field paths are relative to the section (`in_section("audit")`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.singleton_vm_id.is_empty() {
            return Err(ConfigError::new("singleton_vm_id", "must not be empty"));
        }
        if self.queue.is_empty() {
            return Err(ConfigError::new("queue", "must not be empty"));
        }
        if self.pseudonymize_subjects && self.pseudonym_key.as_ref().is_none_or(|k| k.len() < 16) {
            return Err(ConfigError::new(
                "pseudonym_key",
                "needed with pseudonymize_subjects: at least 16 bytes",
            ));
        }
        self.client.validate("client")?;
        if !(1..=10_000_000).contains(&self.queue_limit) {
            return Err(ConfigError::new(
                "queue_limit",
                "must be between 1 and 10000000",
            ));
        }
        if let Some(c) = &self.collector {
            if c.cluster.is_empty() {
                return Err(ConfigError::new("collector.cluster", "must not be empty"));
            }
            if !c.path.starts_with('/') {
                return Err(ConfigError::new("collector.path", "must start with /"));
            }
            if !(1..=60_000).contains(&c.timeout_ms) {
                return Err(ConfigError::new(
                    "collector.timeout_ms",
                    "must be between 1 ms and 60 s",
                ));
            }
        }
        if !(1..=100_000).contains(&self.batch.max_events) {
            return Err(ConfigError::new(
                "batch.max_events",
                "must be between 1 and 100000",
            ));
        }
        if !(10..=60_000).contains(&self.batch.max_delay_ms) {
            return Err(ConfigError::new(
                "batch.max_delay_ms",
                "must be between 10 ms and 60 s",
            ));
        }
        if !(1..=10_000_000).contains(&self.backlog.max_events) {
            return Err(ConfigError::new(
                "backlog.max_events",
                "must be between 1 and 10000000",
            ));
        }
        if self.retry.initial_backoff_ms == 0
            || self.retry.max_backoff_ms < self.retry.initial_backoff_ms
            || self.retry.max_backoff_ms > 600_000
        {
            return Err(ConfigError::new(
                "retry",
                "needs 0 < initial_backoff_ms <= max_backoff_ms <= 10 min",
            ));
        }
        Ok(())
    }
}
