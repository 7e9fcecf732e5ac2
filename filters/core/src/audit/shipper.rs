//! The singleton's side: drain the queue, cut batches, chain them, and
//! deliver them to the collector, one at a time and in order.
//!
//! Events arrive as records, one per request, holding its decisions.
//! A batch (of whole records) is cut when `batch.max_events` are waiting, when the oldest has
//! waited `batch.max_delay_ms`, or when a loss must be recorded. Once cut
//! it keeps its bytes (and its `seq`) until the collector answers 2xx:
//! a retry sends the very same batch, and the collector ignores a
//! `(chain, seq)` it already wrote, so a retry after a lost answer does
//! not duplicate. Retries back off exponentially. While the collector is
//! away events wait in the backlog, bounded by `backlog.max_events`;
//! beyond it they are dropped, counted, and the next batch says how many.

use std::collections::{HashMap, VecDeque};

use super::batch::{self, GENESIS};
use super::config::{AuditConfig, CollectorConfig};
use super::event::parse_message;
use super::recorder::drained_key;
use crate::config::ConfigError;
use crate::host::{CallId, CallResponse, Host, HttpCall};
use crate::metrics::{Counter, Gauge, Metrics};

/// A batch cut and not yet delivered.
struct Pending {
    seq: u64,
    bytes: Vec<u8>,
    hash: String,
    events: usize,
}

pub struct Shipper {
    queue: String,
    collector: CollectorConfig,
    max_events: usize,
    max_delay_ms: u64,
    backlog_limit: usize,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    chain: String,
    /// The last delivered batch.
    seq: u64,
    prev: String,
    /// Records waiting.
    backlog: Backlog,
    /// Lost since the last batch cut (queue or backlog full).
    unreported: u64,
    pending: Option<Pending>,
    in_flight: Option<CallId>,
    retry_at_ms: u64,
    backoff_ms: u64,
    /// Events taken per worker, and whether that changed since published.
    drained: HashMap<u64, (u64, bool)>,
    metrics: Metrics,
    m: ShipperMetrics,
}

struct ShipperMetrics {
    received: Counter,
    dropped: Counter,
    backlog_full: Counter,
    delivered: Counter,
    batches: Counter,
    failures: Counter,
    malformed: Counter,
    backlog: Gauge,
}

impl Shipper {
    /// `chain`: this start's chain id (random).
    pub fn new(
        config: AuditConfig,
        chain: String,
        host: &mut dyn Host,
    ) -> Result<Shipper, ConfigError> {
        config.validate()?;
        let collector = config.collector.ok_or_else(|| {
            ConfigError::new("collector", "the audit singleton needs a collector")
        })?;
        let mut metrics = Metrics::default();
        let m = ShipperMetrics {
            received: metrics.counter("ctxgate_audit.received"),
            dropped: metrics.counter("ctxgate_audit.dropped"),
            backlog_full: metrics.counter("ctxgate_audit.dropped_backlog_full"),
            delivered: metrics.counter("ctxgate_audit.delivered"),
            batches: metrics.counter("ctxgate_audit.batches_delivered"),
            failures: metrics.counter("ctxgate_audit.delivery_failures"),
            malformed: metrics.counter("ctxgate_audit.malformed"),
            backlog: metrics.gauge("ctxgate_audit.backlog"),
        };
        let mut shipper = Shipper {
            queue: config.queue,
            collector,
            max_events: config.batch.max_events,
            max_delay_ms: config.batch.max_delay_ms,
            backlog_limit: config.backlog.max_events,
            initial_backoff_ms: config.retry.initial_backoff_ms,
            max_backoff_ms: config.retry.max_backoff_ms,
            chain,
            seq: 0,
            prev: GENESIS.to_owned(),
            backlog: Backlog::default(),
            unreported: 0,
            pending: None,
            in_flight: None,
            retry_at_ms: 0,
            backoff_ms: config.retry.initial_backoff_ms,
            drained: HashMap::new(),
            metrics,
            m,
        };
        shipper.metrics.flush(host);
        Ok(shipper)
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// How often the engine must call [`Shipper::on_tick`].
    pub fn tick_ms(&self) -> u64 {
        (self.max_delay_ms / 2).clamp(10, 100)
    }

    /// Events held: waiting and in the batch being delivered.
    fn held(&self) -> usize {
        self.backlog.events + self.pending.as_ref().map_or(0, |p| p.events)
    }

    /// The queue has messages: takes them all.
    pub fn on_queue_ready(&mut self, host: &mut dyn Host) {
        let now = host.now_ms();
        while let Ok(Some(bytes)) = host.audit_dequeue() {
            let Some(message) = parse_message(&bytes) else {
                self.metrics.inc(self.m.malformed);
                continue;
            };
            let total = message.events();
            let entry = self.drained.entry(message.reporter).or_insert((0, false));
            *entry = (entry.0.saturating_add(total), true);
            self.metrics.add(self.m.received, total);
            self.unreported = self.unreported.saturating_add(message.dropped);
            for (n, record) in message.records {
                let events = usize::try_from(n).unwrap_or(usize::MAX);
                if n == 0 {
                    continue;
                }
                if self.held().saturating_add(events) > self.backlog_limit {
                    self.unreported = self.unreported.saturating_add(n);
                    self.metrics.add(self.m.dropped, n);
                    self.metrics.add(self.m.backlog_full, n);
                } else {
                    self.backlog.push(now, events, record);
                }
            }
        }
        if self.backlog.events >= self.max_events {
            self.ship(host);
        }
    }

    /// Publishes what was taken, delivers what is due, flushes metrics.
    pub fn on_tick(&mut self, host: &mut dyn Host) {
        for (reporter, (count, dirty)) in &mut self.drained {
            if *dirty {
                let key = drained_key(&self.queue, *reporter);
                if host.shared().set(&key, &count.to_le_bytes(), None).is_ok() {
                    *dirty = false;
                }
            }
        }
        self.ship(host);
        let held = self.held() as u64;
        self.metrics.set(self.m.backlog, held);
        self.metrics.flush(host);
    }

    /// Sends the pending batch, or cuts one if one is due.
    fn ship(&mut self, host: &mut dyn Host) {
        let now = host.now_ms();
        if self.in_flight.is_some() || now < self.retry_at_ms {
            return;
        }
        if self.pending.is_none() {
            let due = self.backlog.events >= self.max_events
                || self.unreported > 0
                || self
                    .backlog
                    .oldest_ms()
                    .is_some_and(|t| now.saturating_sub(t) >= self.max_delay_ms);
            if !due {
                return;
            }
            let (events, records) = self.backlog.cut(self.max_events);
            let seq = self.seq.saturating_add(1);
            let batch = batch::encode(
                &self.chain,
                seq,
                &self.prev,
                now,
                self.unreported,
                events,
                records,
            );
            self.unreported = 0;
            self.pending = Some(Pending {
                seq,
                bytes: batch.bytes,
                hash: batch.hash,
                events,
            });
        }
        let Some(pending) = &self.pending else {
            return;
        };
        let authority = self
            .collector
            .authority
            .as_deref()
            .unwrap_or(&self.collector.cluster);
        let seq = pending.seq.to_string();
        let headers = [
            (":method", "POST"),
            (":path", self.collector.path.as_str()),
            (":authority", authority),
            ("content-type", "application/json"),
            ("x-ctxgate-audit-chain", self.chain.as_str()),
            ("x-ctxgate-audit-seq", seq.as_str()),
        ];
        let call = HttpCall {
            cluster: &self.collector.cluster,
            headers: &headers,
            body: Some(&pending.bytes),
            timeout_ms: self.collector.timeout_ms,
        };
        match host.http_call(&call) {
            Ok(id) => self.in_flight = Some(id),
            Err(e) => {
                log::warn!("ctxgate audit: cannot call the collector: {e}");
                self.failed(now);
            }
        }
    }

    fn failed(&mut self, now: u64) {
        self.metrics.inc(self.m.failures);
        self.retry_at_ms = now.saturating_add(self.backoff_ms);
        self.backoff_ms = self.backoff_ms.saturating_mul(2).min(self.max_backoff_ms);
    }

    /// The collector's answer. Returns whether `call` was the singleton's.
    pub fn on_call_response(
        &mut self,
        host: &mut dyn Host,
        call: CallId,
        response: &CallResponse,
    ) -> bool {
        if self.in_flight != Some(call) {
            return false;
        }
        self.in_flight = None;
        let now = host.now_ms();
        match response {
            CallResponse::Http {
                status: Some(200..=299),
                ..
            } => {
                if let Some(p) = self.pending.take() {
                    self.seq = p.seq;
                    self.prev = p.hash;
                    self.metrics.add(self.m.delivered, p.events as u64);
                    self.metrics.inc(self.m.batches);
                }
                self.backoff_ms = self.initial_backoff_ms;
                self.retry_at_ms = 0;
                if self.backlog.events >= self.max_events {
                    self.ship(host);
                }
            }
            _ => self.failed(now),
        }
        true
    }
}

/// Records waiting for a batch, in arrival order, in one buffer: each
/// record is stored with a leading comma, so a batch's records are one
/// contiguous slice (no allocation or copy per record).
#[derive(Default)]
struct Backlog {
    /// Per record: arrival ms, events in it, bytes (comma included).
    records: VecDeque<(u64, usize, usize)>,
    /// `,<record>,<record>...`; bytes before `start` are cut already.
    bytes: Vec<u8>,
    start: usize,
    /// Events in `records`.
    events: usize,
}

/// Cut bytes at the front of the buffer are moved out once they are at
/// least this many and at least half the buffer.
const BACKLOG_SLACK: usize = 64 * 1024;
/// An emptied buffer keeps at most this much memory (a backlog that grew
/// while the collector was away gives its memory back once delivered).
const BACKLOG_KEPT: usize = 4 * 1024 * 1024;

impl Backlog {
    fn push(&mut self, now_ms: u64, events: usize, json: &[u8]) {
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.bytes.shrink_to(BACKLOG_KEPT);
            self.start = 0;
        } else if self.start >= BACKLOG_SLACK && self.start * 2 >= self.bytes.len() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.push(b',');
        self.bytes.extend_from_slice(json);
        self.records.push_back((now_ms, events, json.len() + 1));
        self.events = self.events.saturating_add(events);
    }

    fn oldest_ms(&self) -> Option<u64> {
        self.records.front().map(|(t, _, _)| *t)
    }

    /// Takes whole records from the front, up to `max_events` events (at
    /// least one record): their events, and their JSON joined by commas.
    fn cut(&mut self, max_events: usize) -> (usize, &[u8]) {
        let (mut events, mut len, mut taken) = (0usize, 0usize, 0usize);
        while let Some((_, n, bytes)) = self.records.front() {
            if taken > 0 && events.saturating_add(*n) > max_events {
                break;
            }
            events = events.saturating_add(*n);
            len += bytes;
            taken += 1;
            self.records.pop_front();
        }
        self.events = self.events.saturating_sub(events);
        let from = self.start;
        self.start += len;
        // Without the first record's leading comma.
        let joined = self.bytes.get(from + 1..from + len).unwrap_or_default();
        (events, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole records, in order, with their events, through a backlog
    /// that is cut while records still wait (so the buffer is moved down
    /// with live records in it) and emptied.
    #[test]
    fn the_backlog_cuts_whole_records_in_order_across_compactions() {
        let mut backlog = Backlog::default();
        let record = |i: usize| format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(100 + i % 200));
        let events_of = |i: usize| 1 + i % 3;
        let (mut pushed, mut cut, mut moved) = (0usize, 0usize, 0);
        let take = |backlog: &mut Backlog, max: usize, cut: &mut usize| {
            let (events, joined) = backlog.cut(max);
            let records: Vec<serde_json::Value> =
                serde_json::from_slice(&[b"[", joined, b"]"].concat()).unwrap();
            let got: Vec<usize> = records
                .iter()
                .map(|r| r["i"].as_u64().unwrap() as usize)
                .collect();
            assert_eq!(got, (*cut..*cut + got.len()).collect::<Vec<_>>());
            assert_eq!(events, got.iter().map(|i| events_of(*i)).sum::<usize>());
            assert!(
                events <= max || got.len() == 1,
                "whole records, at most max"
            );
            *cut += got.len();
        };
        // A standing backlog of 500 records, then one in, one batch of at
        // most 3 events out, 3000 times.
        for _ in 0..500 {
            backlog.push(0, events_of(pushed), record(pushed).as_bytes());
            pushed += 1;
        }
        for round in 0..3000 {
            take(&mut backlog, 3, &mut cut);
            let before = backlog.start;
            backlog.push(round, events_of(pushed), record(pushed).as_bytes());
            pushed += 1;
            assert!(
                backlog.start < BACKLOG_SLACK || backlog.start * 2 < backlog.bytes.len(),
                "{} of {}",
                backlog.start,
                backlog.bytes.len()
            );
            if backlog.start < before && backlog.records.len() > 1 {
                moved += 1;
            }
        }
        assert!(moved > 0, "records still waiting were moved down");
        while backlog.events > 0 {
            take(&mut backlog, usize::MAX, &mut cut);
        }
        assert_eq!(cut, pushed);
        assert_eq!(backlog.cut(4), (0, &b""[..]));
    }
}
