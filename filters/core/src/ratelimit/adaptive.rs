//! Adaptive limits: shrink when the upstream struggles.
//!
//! Two signals, both measured inside the gateway: an EWMA of upstream
//! latency (request admitted to response headers) compared with a
//! threshold, and the number of requests in flight compared with a queue
//! capacity. Above the latency threshold every limit is multiplied by the
//! configured factor (0.6 by default); above the queue capacity new
//! requests are refused.
//!
//! Measuring on every request must not add shared-data traffic to the hot
//! path, so each worker VM measures alone and publishes a small record
//! (`ctxgate_rl.<config>.adaptive.<n>`) every `publish_interval_ms`. On
//! the same tick it reads every worker's record and combines them: in-flight
//! counts add up, latencies average weighted by samples. The combined view
//! is at most one interval old.

use crate::shared::{Change, SharedStore, Update, update};

use super::config::AdaptiveConfig;

/// Records older than this many intervals are ignored (a stopped VM).
const STALE_INTERVALS: u64 = 5;
/// Worker records kept in shared data; worker numbers wrap around.
pub const MAX_WORKERS: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Record {
    ewma_ms: f64,
    samples: u64,
    in_flight: u64,
    updated_ms: u64,
}

impl Record {
    fn encode(self) -> Vec<u8> {
        format!(
            "{} {} {} {}",
            self.ewma_ms, self.samples, self.in_flight, self.updated_ms
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        Some(Record {
            ewma_ms: fields.next()?.parse().ok()?,
            samples: fields.next()?.parse().ok()?,
            in_flight: fields.next()?.parse().ok()?,
            updated_ms: fields.next()?.parse().ok()?,
        })
    }
}

/// The combined, Envoy-wide view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combined {
    pub ewma_ms: f64,
    /// In flight on the other workers (this worker's own count is live).
    pub others_in_flight: u64,
    pub multiplier: f64,
}

pub struct Adaptive {
    config: AdaptiveConfig,
    prefix: String,
    worker: u64,
    ewma_ms: Option<f64>,
    samples: u64,
    in_flight: u64,
    combined: Combined,
}

impl Adaptive {
    /// Registers this worker (a number from a shared counter) and returns
    /// its measurement state.
    pub fn new(config: AdaptiveConfig, namespace: &str, store: &dyn SharedStore) -> Adaptive {
        let prefix = format!("ctxgate_rl.{namespace}.adaptive.");
        let counter = format!("{prefix}workers");
        store.ensure(&counter, b"0");
        let worker = match update(store, &counter, 64, |value| {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            Change::Write((n + 1).to_string().into_bytes(), n)
        }) {
            Update::Written(n) => n % MAX_WORKERS,
            _ => 0,
        };
        Adaptive {
            config,
            prefix,
            worker,
            ewma_ms: None,
            samples: 0,
            in_flight: 0,
            combined: Combined {
                ewma_ms: 0.0,
                others_in_flight: 0,
                multiplier: 1.0,
            },
        }
    }

    pub fn publish_interval_ms(&self) -> u64 {
        self.config.publish_interval_ms
    }

    /// Would one more request exceed the queue capacity?
    pub fn queue_full(&self) -> bool {
        self.config.max_in_flight > 0
            && self.combined.others_in_flight + self.in_flight >= self.config.max_in_flight
    }

    /// Requests in flight on this worker.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    pub fn started(&mut self) {
        self.in_flight += 1;
    }

    /// A request admitted earlier finished; `latency_ms` is `None` when it
    /// never got a response (reset, local reply).
    pub fn finished(&mut self, latency_ms: Option<u64>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(sample) = latency_ms {
            let sample = sample as f64;
            let alpha = self.config.ewma_alpha;
            self.ewma_ms = Some(match self.ewma_ms {
                None => sample,
                Some(ewma) => alpha * sample + (1.0 - alpha) * ewma,
            });
            self.samples += 1;
        }
    }

    /// The multiplier in force for limits.
    pub fn multiplier(&self) -> f64 {
        self.combined.multiplier
    }

    pub fn combined(&self) -> Combined {
        self.combined
    }

    /// Publishes this worker's record and recombines everyone's.
    pub fn publish_and_combine(&mut self, store: &dyn SharedStore, now_ms: u64) {
        let mine = Record {
            ewma_ms: self.ewma_ms.unwrap_or(0.0),
            samples: self.samples,
            in_flight: self.in_flight,
            updated_ms: now_ms,
        };
        let _ = store.set(
            &format!("{}{}", self.prefix, self.worker),
            &mine.encode(),
            None,
        );
        let stale_before = now_ms.saturating_sub(
            self.config
                .publish_interval_ms
                .saturating_mul(STALE_INTERVALS),
        );
        let mut others_in_flight = 0;
        let (mut weighted, mut weight) = (0.0, 0.0);
        let registered = store
            .get(&format!("{}workers", self.prefix))
            .and_then(|(v, _)| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            })
            .unwrap_or(0)
            .min(MAX_WORKERS);
        for worker in 0..registered {
            let Some(record) = store
                .get(&format!("{}{worker}", self.prefix))
                .and_then(|(v, _)| Record::decode(&v))
            else {
                continue;
            };
            if record.updated_ms < stale_before {
                continue;
            }
            if worker != self.worker {
                others_in_flight += record.in_flight;
            }
            if record.samples > 0 {
                let w = (record.samples as f64).min(1000.0);
                weighted += record.ewma_ms * w;
                weight += w;
            }
        }
        let ewma_ms = if weight > 0.0 { weighted / weight } else { 0.0 };
        let multiplier = if ewma_ms > self.config.latency_threshold_ms as f64 {
            self.config.latency_multiplier
        } else {
            1.0
        };
        self.combined = Combined {
            ewma_ms,
            others_in_flight,
            multiplier,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn config() -> AdaptiveConfig {
        AdaptiveConfig {
            latency_threshold_ms: 100,
            latency_multiplier: 0.6,
            ewma_alpha: 0.5,
            max_in_flight: 3,
            publish_interval_ms: 100,
        }
    }

    #[test]
    fn slow_upstreams_shrink_limits_and_recovery_restores_them() {
        let store = MemoryStore::default();
        let mut a = Adaptive::new(config(), "t", &store);
        for _ in 0..5 {
            a.started();
            a.finished(Some(400));
        }
        a.publish_and_combine(&store, 1_000);
        assert_eq!(a.multiplier(), 0.6);
        for _ in 0..10 {
            a.started();
            a.finished(Some(10));
        }
        a.publish_and_combine(&store, 1_100);
        assert_eq!(a.multiplier(), 1.0);
    }

    #[test]
    fn in_flight_adds_up_across_workers() {
        let store = MemoryStore::default();
        let mut a = Adaptive::new(config(), "t", &store);
        let mut b = Adaptive::new(config(), "t", &store);
        a.started();
        a.started();
        a.publish_and_combine(&store, 1_000);
        b.publish_and_combine(&store, 1_000);
        assert!(!b.queue_full());
        b.started();
        assert!(b.queue_full(), "2 on a + 1 on b reaches 3");
        a.finished(None);
        a.publish_and_combine(&store, 1_100);
        b.publish_and_combine(&store, 1_100);
        assert!(!b.queue_full());
    }

    #[test]
    fn stale_workers_are_ignored() {
        let store = MemoryStore::default();
        let mut a = Adaptive::new(config(), "t", &store);
        let mut b = Adaptive::new(config(), "t", &store);
        a.started();
        a.started();
        a.started();
        a.publish_and_combine(&store, 1_000);
        b.publish_and_combine(&store, 1_000);
        assert!(b.queue_full());
        b.publish_and_combine(&store, 2_000);
        assert!(!b.queue_full(), "a stopped publishing 1 s ago");
    }
}
