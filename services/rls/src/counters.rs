//! Counting: fixed-window counters, in this process or in Redis, and the
//! report-id marks that make a retried report count once.
//!
//! # What one request does
//!
//! Every limited descriptor of a request is one [`Hit`]: a counter key, a
//! cost to add (0: only read) and the counter's lifetime. All the hits of a
//! request, and the mark of its report id when it has one, are applied in
//! one atomic step ([`Counters::apply`]): if the id was already marked,
//! nothing is added and the counters are only read; otherwise the id is
//! marked and every cost added. The step returns every counter's value
//! after it, which the service compares with the limits. So a report id is
//! never marked without its hits added, nor its hits added without the
//! mark.
//!
//! # Keys
//!
//! A counter is per (rule, descriptor values, window):
//! `<namespace>%%<descriptor>%%<window>`, e.g.
//! `ctxgate-rls/ctxgate/tenant=acme%%tenant=acme%%20453`, where the
//! namespace is the rule's ([`Rule::namespace`]), the descriptor is its
//! entries as `key=value/key=value`, both with `% / = { }` percent-escaped
//! inside names, and the window is the fixed window's number (Unix time
//! divided by the unit, so windows are aligned to the epoch). Escaped text
//! never holds `%%`, so the key is unambiguous. A counter lives two windows
//! from its first hit: past its own window nobody asks for it again, and
//! the second window is slack for replicas whose clocks disagree.
//!
//! Report marks: `ctxgate-rls:report:<reporter hex>:<seq / 4096>`, a 512-byte
//! bitmap in which the id's bit is `seq % 4096`, living for the dedupe
//! horizon after its last mark (see [`crate::report`]).
//!
//! # Stores
//!
//! * Memory: a table of at most `max_counters` counters and one of at most
//!   `Dedupe::max_chunks` chunks of marks, both forgetting the least
//!   recently used beyond that, under one lock. A forgotten counter starts
//!   again from zero; a forgotten chunk can only let a retry count twice
//!   (counted and logged).
//! * Redis (standalone or a primary; not Redis Cluster, since one script
//!   touches the keys of several descriptors): one Lua script per request
//!   (`src/counters/apply.lua`) marks the id with `SETBIT` (the old
//!   bit says whether it was seen) and `EXPIRE`, then `INCRBY`s each
//!   counter, with `EXPIRE` on its first hit, and returns the values. Every
//!   replica and gateway sharing the Redis shares one exact count. Each
//!   call is bounded by the timeout; redis-rs's `ConnectionManager`
//!   reconnects on the next call after Redis comes back, so an outage needs
//!   no restart.
//!
//! A call that times out may still run later: when Redis hangs, the script
//! waits in its socket and runs when it resumes. Without a report id such a
//! call counts then, whatever the client concluded; with one, the client's
//! retry and the late call count once between them.
//!
//! (limitador, which counted before, cannot do this: its storage has no
//! conditional increment and its key format is private.)

mod lru;
mod memory;
mod redis;

use std::fmt;
use std::time::Duration;

use crate::config::{Rule, escape_into};
use crate::report::{Dedupe, ReportId};
use memory::Memory;
use redis::Redis;

/// Where counters live.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// In this process. `max_counters` bounds memory: beyond it the least
    /// recently used counters are forgotten (and start again from zero).
    Memory { max_counters: u64 },
    /// In Redis, shared by every replica pointing at the same server.
    /// `timeout` bounds each request's script call (connecting included).
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
    /// A call did not finish within the timeout (it may still run later).
    Timeout(Duration),
    /// Redis reported an error, or answered something unexpected.
    Failed(String),
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
        }
    }
}

impl std::error::Error for StorageError {}

/// One counter a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// See [`counter_key`].
    pub key: String,
    /// What to add; 0 only reads.
    pub cost: u64,
    /// How long the counter lives after its first hit, in seconds.
    pub ttl: u64,
}

/// What [`Counters::apply`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    /// The report id had already been applied: nothing was added.
    pub duplicate: bool,
    /// Each hit's counter after the step, in the order of the hits.
    pub values: Vec<u64>,
}

enum Store {
    Memory(Memory),
    Redis(Redis),
}

/// The counters of every configured limit, and the report marks.
pub struct Counters {
    store: Store,
}

impl Counters {
    /// Opens the storage. With Redis, fails if Redis cannot be reached now.
    pub async fn open(storage: &StorageConfig, dedupe: Dedupe) -> Result<Counters, StorageError> {
        let store = match storage {
            StorageConfig::Memory { max_counters } => {
                Store::Memory(Memory::new(*max_counters, dedupe))
            }
            StorageConfig::Redis { url, timeout } => {
                Store::Redis(Redis::open(url, *timeout, dedupe).await?)
            }
        };
        Ok(Counters { store })
    }

    /// Applies a request's hits at `now` (Unix seconds) in one atomic step:
    /// with a `report` id already applied, only reads the counters. See the
    /// module docs.
    pub async fn apply(
        &self,
        report: Option<ReportId>,
        hits: &[Hit],
        now: u64,
    ) -> Result<Counted, StorageError> {
        match &self.store {
            Store::Memory(memory) => Ok(memory.apply(report, hits, now)),
            Store::Redis(redis) => redis.apply(report, hits).await,
        }
    }
}

/// The key of `rule`'s counter for these descriptor entries in fixed window
/// number `window`: `<namespace>%%<descriptor>%%<window>`.
pub fn counter_key(rule: &Rule, entries: &[(&str, &str)], window: u64) -> String {
    let mut out = String::with_capacity(rule.namespace.len() + 32);
    out.push_str(&rule.namespace);
    out.push_str("%%");
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        escape_into(&mut out, key);
        out.push('=');
        escape_into(&mut out, value);
    }
    out.push_str("%%");
    out.push_str(&window.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    fn rule(namespace: &str) -> Rule {
        Rule {
            full_key: String::new(),
            namespace: namespace.to_owned(),
            policy: Policy::Unlimited,
            line: 1,
        }
    }

    #[test]
    fn keys_counters_unambiguously() {
        let ns = rule("ctxgate-rls/d/tenant");
        assert_eq!(
            counter_key(&ns, &[("tenant", "acme")], 7),
            "ctxgate-rls/d/tenant%%tenant=acme%%7"
        );
        assert_eq!(
            counter_key(&ns, &[("a", "b"), ("c", "")], 7),
            "ctxgate-rls/d/tenant%%a=b/c=%%7"
        );
        assert_ne!(
            counter_key(&ns, &[("a", "b/c=d")], 7),
            counter_key(&ns, &[("a", "b"), ("c", "d")], 7)
        );
        assert_ne!(
            counter_key(&ns, &[("a", "b%%1")], 7),
            counter_key(&ns, &[("a", "b")], 1)
        );
        assert_ne!(
            counter_key(&ns, &[("t", "x")], 1),
            counter_key(&ns, &[("t", "x")], 2)
        );
    }

    #[test]
    fn keys_marks_per_reporter_and_chunk() {
        let id = |reporter, seq| ReportId { reporter, seq };
        assert_eq!(
            redis::mark_key(id(0xab, 4097)),
            "ctxgate-rls:report:00000000000000ab:1"
        );
        assert_eq!(
            redis::mark_key(id(0xab, 0)),
            redis::mark_key(id(0xab, 4095))
        );
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
