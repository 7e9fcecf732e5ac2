//! Counting, delegated to limitador.
//!
//! Each configured node with a `rate_limit` becomes one limitador [`Limit`]
//! in a namespace of its own ([`Rule::namespace`]), with no conditions, a
//! window as long as the unit, and two variables:
//!
//! * `descriptor`: the request descriptor's entries, so every distinct set of
//!   values has its own counter;
//! * `window`: the parity (0 or 1) of the current fixed window, numbered from
//!   the Unix epoch.
//!
//! limitador starts a counter's expiry at its first hit and expires it one
//! unit later. A counter first hit in window N therefore dies before window
//! N + 2 begins, which is the next window with the same parity; and window
//! N + 1 uses the other counter. So every aligned window starts from zero,
//! like envoyproxy/ratelimit's (whose keys carry the window start), while
//! the store holds at most two counters per descriptor value instead of one
//! per window forever. (Only within a Redis round trip of a window's start
//! can a hit land on the counter of two windows before.)
//!
//! A hit is two limitador calls: `update_counters` adds the cost
//! unconditionally (an atomic `INCRBY` in Redis), then `is_rate_limited` with
//! a delta of 0 reads the counter back; the descriptor is over the limit when
//! that value exceeds the limit. So every hit is counted exactly once, and
//! the number of hits admitted in a window never exceeds the limit across
//! any number of replicas; under a concurrent burst right at the limit, a
//! request may see a neighbour's increment and be refused one hit early.
//!
//! Storage is limitador's in-memory store, or its `AsyncRedisStorage`
//! (every call goes to Redis; not the caching/batching `CachedRedisStorage`,
//! which would let replicas overshoot). Redis calls are bounded by a timeout;
//! redis-rs's `ConnectionManager` reconnects on the next call after Redis
//! comes back, so an outage needs no restart.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use limitador::limit::{Context, Expression, Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::{AsyncRateLimiter, CheckResult, RateLimiter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{Action, Limits, Rule, escape_into};

/// Where counters live.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// In this process. `max_counters` bounds memory: beyond it the least
    /// recently used counters are forgotten (and start again from zero).
    Memory { max_counters: u64 },
    /// In Redis, shared by every replica pointing at the same server.
    /// `timeout` bounds each hit (connecting included).
    Redis { url: String, timeout: Duration },
}

impl fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Memory { max_counters } => {
                write!(f, "memory (at most {max_counters} counters)")
            }
            StorageConfig::Redis { url, timeout } => write!(
                f,
                "redis {} (timeout {} ms)",
                redact(url),
                timeout.as_millis()
            ),
        }
    }
}

/// `redis://user:password@host` → `redis://***@host`, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!(
                "{}***{}",
                url.get(..scheme + 3).unwrap_or(""),
                url.get(at..).unwrap_or("")
            )
        }
        _ => url.to_owned(),
    }
}

/// A counter store failure. Surfaced to the client as UNAVAILABLE so that it
/// applies its own failure mode (Envoy: `failure_mode_deny`).
#[derive(Debug)]
pub enum StorageError {
    /// Could not connect at start.
    Connect { url: String, reason: String },
    /// A call did not finish within the timeout.
    Timeout(Duration),
    /// limitador or Redis reported an error.
    Failed(String),
    /// The limit was not registered: a bug in ctxgate-rls.
    Unregistered(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Connect { url, reason } => {
                write!(f, "cannot connect to Redis at {}: {reason}", redact(url))
            }
            StorageError::Timeout(t) => {
                write!(f, "Redis did not answer within {} ms", t.as_millis())
            }
            StorageError::Failed(reason) => write!(f, "counter storage failed: {reason}"),
            StorageError::Unregistered(ns) => write!(
                f,
                "no limitador limit is registered for {ns} (bug in ctxgate-rls)"
            ),
        }
    }
}

impl std::error::Error for StorageError {}

/// What one hit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The counter, with this hit added, exceeds the limit.
    pub over: bool,
    /// Hits left in this window (0 when over).
    pub remaining: u64,
}

enum Limiter {
    Memory(RateLimiter),
    Redis(AsyncRateLimiter, Duration),
}

/// The counters of every configured limit.
pub struct Counters {
    limiter: Limiter,
}

impl Counters {
    /// Opens the storage and registers one limitador limit per configured
    /// `rate_limit`. With Redis, fails if Redis cannot be reached now.
    pub async fn open(storage: &StorageConfig, limits: &Limits) -> Result<Counters, StorageError> {
        let limiter = match storage {
            StorageConfig::Memory { max_counters } => {
                Limiter::Memory(RateLimiter::new(*max_counters))
            }
            StorageConfig::Redis { url, timeout } => {
                let connect_error = |reason: String| StorageError::Connect {
                    url: url.clone(),
                    reason,
                };
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| connect_error(e.to_string()))?;
                // No retries inside redis-rs: a failed call fails fast, and the
                // next call triggers a fresh reconnect. Bounded by `timeout`.
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(*timeout)
                    .set_response_timeout(*timeout)
                    .set_number_of_retries(0);
                let connect = async {
                    let manager = ConnectionManager::new_with_config(client, manager_config)
                        .await
                        .map_err(|e| connect_error(e.to_string()))?;
                    AsyncRedisStorage::new_with_conn_manager(manager)
                        .await
                        .map_err(|e| connect_error(e.to_string()))
                };
                // Connecting plus loading limitador's scripts: a few round trips.
                let bound = timeout.saturating_mul(3);
                let storage = tokio::time::timeout(bound, connect).await.map_err(|_| {
                    connect_error(format!("no answer within {} ms", bound.as_millis()))
                })??;
                Limiter::Redis(
                    AsyncRateLimiter::new_with_storage(Box::new(storage)),
                    *timeout,
                )
            }
        };
        let counters = Counters { limiter };
        for rule in limits.rules() {
            if let Some(limit) = limitador_limit(rule)? {
                match &counters.limiter {
                    Limiter::Memory(l) => l.add_limit(limit),
                    Limiter::Redis(l, _) => l.add_limit(limit),
                };
            }
        }
        Ok(counters)
    }

    /// Adds `cost` to the counter of `rule` for these descriptor entries in
    /// fixed window number `window` (Unix time divided by the unit), and
    /// reports whether it is now over the limit. `cost` 0 only reads.
    pub async fn hit(
        &self,
        rule: &Rule,
        entries: &[(&str, &str)],
        window: u64,
        cost: u64,
    ) -> Result<Hit, StorageError> {
        let namespace = Namespace::from(rule.namespace.as_str());
        let mut values = HashMap::with_capacity(2);
        values.insert(DESCRIPTOR.to_owned(), encode(entries));
        values.insert(WINDOW.to_owned(), (window % 2).to_string());
        let ctx = Context::from(values);
        let failed = |e: limitador::errors::LimitadorError| StorageError::Failed(e.to_string());
        let checked = match &self.limiter {
            Limiter::Memory(limiter) => {
                if cost > 0 {
                    limiter
                        .update_counters(&namespace, &ctx, cost)
                        .map_err(failed)?;
                }
                limiter
                    .is_rate_limited(&namespace, &ctx, 0)
                    .map_err(failed)?
            }
            Limiter::Redis(limiter, timeout) => {
                let call = async {
                    if cost > 0 {
                        limiter.update_counters(&namespace, &ctx, cost).await?;
                    }
                    limiter.is_rate_limited(&namespace, &ctx, 0).await
                };
                tokio::time::timeout(*timeout, call)
                    .await
                    .map_err(|_| StorageError::Timeout(*timeout))?
                    .map_err(failed)?
            }
        };
        hit_from(checked, rule)
    }
}

const DESCRIPTOR: &str = "descriptor";
const WINDOW: &str = "window";

fn limitador_limit(rule: &Rule) -> Result<Option<Limit>, StorageError> {
    let Action::Limit(limit) = &rule.action else {
        return Ok(None);
    };
    let variable = |name: &str| {
        Expression::parse(name).map_err(|e| {
            StorageError::Failed(format!("limitador refused the variable {name}: {e}"))
        })
    };
    let mut out = Limit::new(
        rule.namespace.as_str(),
        u64::from(limit.requests_per_unit),
        limit.unit.seconds(),
        [],
        [variable(DESCRIPTOR)?, variable(WINDOW)?],
    );
    out.set_name(rule.full_key.clone());
    Ok(Some(out))
}

/// The descriptor's entries as one unambiguous string: `k=v/k=v`.
fn encode(entries: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        escape_into(&mut out, key);
        out.push('=');
        escape_into(&mut out, value);
    }
    out
}

fn hit_from(checked: CheckResult, rule: &Rule) -> Result<Hit, StorageError> {
    let Some(counter) = checked.counters.first() else {
        return Err(StorageError::Unregistered(rule.namespace.clone()));
    };
    let remaining = if checked.limited {
        0
    } else {
        counter.remaining().unwrap_or_else(|| counter.max_value())
    };
    Ok(Hit {
        over: checked.limited,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_entries_unambiguously() {
        assert_eq!(encode(&[("a", "b"), ("c", "")]), "a=b/c=");
        assert_ne!(encode(&[("a", "b/c=d")]), encode(&[("a", "b"), ("c", "d")]));
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("redis://u:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
