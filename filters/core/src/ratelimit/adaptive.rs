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
//! (`<namespace>.adaptive.<n>`) every `publish_interval_ms`. On
//! the same tick it reads every worker's record and combines them: in-flight
//! counts add up, latencies average weighted by samples. The combined view
//! is at most one interval old.

use crate::record::{self, Kind, RecordError};
use crate::shared::{Change, SharedStore, Update, update};

const VERSION: u8 = 1;

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
        let mut w = record::writer(Kind::AdaptiveWorker, VERSION, 32);
        w.u64(self.ewma_ms.to_bits())
            .u64(self.samples)
            .u64(self.in_flight)
            .u64(self.updated_ms);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let mut r = record::reader(bytes, Kind::AdaptiveWorker, VERSION)?;
        let record = Record {
            ewma_ms: f64::from_bits(r.u64()?),
            samples: r.u64()?,
            in_flight: r.u64()?,
            updated_ms: r.u64()?,
        };
        r.end()?;
        if !record.ewma_ms.is_finite() || record.ewma_ms < 0.0 {
            return Err(RecordError::Malformed);
        }
        Ok(record)
    }
}

/// The registry record: how many workers registered so far.
fn encode_registry(count: u64) -> Vec<u8> {
    let mut w = record::writer(Kind::AdaptiveRegistry, VERSION, 8);
    w.u64(count);
    w.finish()
}

fn decode_registry(bytes: &[u8]) -> Result<u64, RecordError> {
    let mut r = record::reader(bytes, Kind::AdaptiveRegistry, VERSION)?;
    let count = r.u64()?;
    r.end()?;
    Ok(count)
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
    /// Shared-data records that did not decode (ignored, and counted).
    pub invalid_records: u64,
}

impl Adaptive {
    /// Registers this worker (a number from a shared counter) and returns
    /// its measurement state.
    pub fn new(config: AdaptiveConfig, namespace: &str, store: &dyn SharedStore) -> Adaptive {
        let prefix = format!("{namespace}.adaptive.");
        let counter = format!("{prefix}workers");
        store.ensure(&counter, &encode_registry(0));
        let mut invalid_records = 0;
        let worker = match update(store, &counter, 64, |value| match decode_registry(value) {
            Ok(n) => Change::Write(encode_registry(n.saturating_add(1)), Some(n)),
            Err(_) => Change::Keep(None),
        }) {
            Update::Written(Some(n)) => n % MAX_WORKERS,
            Update::Unchanged(None) => {
                invalid_records += 1;
                0
            }
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
            invalid_records,
        }
    }

    pub fn publish_interval_ms(&self) -> u64 {
        self.config.publish_interval_ms
    }

    /// Would one more request exceed the queue capacity?
    pub fn queue_full(&self) -> bool {
        self.config.max_in_flight > 0
            && self
                .combined
                .others_in_flight
                .saturating_add(self.in_flight)
                >= self.config.max_in_flight
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
        let mut others_in_flight: u64 = 0;
        let (mut weighted, mut weight) = (0.0, 0.0);
        let registered = match store
            .get(&format!("{}workers", self.prefix))
            .map(|(v, _)| decode_registry(&v))
        {
            Some(Ok(n)) => n.min(MAX_WORKERS),
            Some(Err(_)) => {
                self.invalid_records += 1;
                MAX_WORKERS
            }
            None => 0,
        };
        for worker in 0..registered {
            let record = match store
                .get(&format!("{}{worker}", self.prefix))
                .map(|(v, _)| Record::decode(&v))
            {
                Some(Ok(record)) => record,
                Some(Err(_)) => {
                    self.invalid_records += 1;
                    continue;
                }
                None => continue,
            };
            if record.updated_ms < stale_before {
                continue;
            }
            if worker != self.worker {
                others_in_flight = others_in_flight.saturating_add(record.in_flight);
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
