//! The worker's side: records gathered per worker and handed to the
//! singleton in few, large queue messages, bounded without a shared-data
//! round trip per request.
//!
//! Every enqueue wakes Envoy's main thread for the singleton's
//! `on_queue_ready`, so a message per request would cost a cross-thread
//! wake-up per request. A worker holds its records until the oldest has
//! waited a quarter of `batch.max_delay_ms` (50 ms by default; the worker
//! ticks at least that often) or the message holds [`MESSAGE_RECORDS`] records
//! or [`MESSAGE_BYTES`], so the main thread wakes a few dozen times a
//! second, not once per request. The worker's buffer is reused from
//! message to message.
//!
//! The proxy's queue has no bound, so the worker keeps one: it counts the
//! events it enqueued, and the singleton publishes in shared data how
//! many events of each worker it has taken ([`drained_key`]). The worker
//! reads that once per tick; in between it knows only what it added, so
//! its view of the queue is never smaller than the truth. Events beyond
//! `queue_limit` are dropped, counted, and reported in the worker's next
//! message, so the trail records the loss.

use std::sync::Arc;

use super::config::AuditConfig;
use super::event::{Decision, Message, Pseudonymizer, RequestFacts, token_digest};
use crate::client::ClientConfig;
use crate::host::Host;
use crate::metrics::{Counter, Metrics};

/// Shared-data key of the number of `reporter`'s events the singleton
/// took from `queue` (u64, little endian). Shared data is per `vm_id`:
/// the filter and the singleton share one.
pub fn drained_key(queue: &str, reporter: u64) -> String {
    format!("ctxgate_audit/{queue}/drained/{reporter:016x}")
}

/// A message is sent once it holds this many records (or this many
/// bytes, [`MESSAGE_BYTES`]), or its oldest record is old enough.
pub const MESSAGE_RECORDS: usize = 1024;
pub const MESSAGE_BYTES: usize = 512 * 1024;

pub struct Recorder {
    /// Records not yet sent.
    message: Message,
    /// When the message's first record was decided.
    oldest_ms: u64,
    /// How long a record may wait in the worker.
    hold_ms: u64,
    /// The singleton's vm_id and the queue's name.
    queue: (String, String),
    pseudonymizer: Option<Pseudonymizer>,
    client: ClientConfig,
    /// The last bearer token seen and its digest.
    last_token: (Vec<u8>, Arc<str>),
    limit: u64,
    drained_key: String,
    /// Events enqueued by this worker since it started.
    enqueued: u64,
    /// Of those, taken by the singleton (as last read).
    drained: u64,
    /// Dropped since the last message that went through.
    unreported: u64,
    events: Counter,
    dropped: Counter,
    queue_full: Counter,
    unavailable: Counter,
}

impl Recorder {
    pub fn new(config: &AuditConfig, reporter: u64, metrics: &mut Metrics) -> Recorder {
        let pseudonymizer = match (&config.pseudonym_key, config.pseudonymize_subjects) {
            (Some(key), true) => Some(Pseudonymizer::new(key.as_bytes())),
            _ => None,
        };
        Recorder {
            message: Message::new(reporter),
            oldest_ms: 0,
            hold_ms: (config.batch.max_delay_ms / 4).max(1),
            queue: (config.singleton_vm_id.clone(), config.queue.clone()),
            pseudonymizer,
            client: config.client.clone(),
            last_token: (Vec::new(), Arc::from("")),
            limit: config.queue_limit,
            drained_key: drained_key(&config.queue, reporter),
            enqueued: 0,
            drained: 0,
            unreported: 0,
            events: metrics.counter("ctxgate_audit.events"),
            dropped: metrics.counter("ctxgate_audit.dropped"),
            queue_full: metrics.counter("ctxgate_audit.dropped_queue_full"),
            unavailable: metrics.counter("ctxgate_audit.dropped_queue_unavailable"),
        }
    }

    /// [`token_digest`] of a bearer token, remembered for the last token
    /// (a client sends the same token again and again).
    pub fn token_digest(&mut self, token: &[u8]) -> Arc<str> {
        if !same_bytes(&self.last_token.0, token) {
            self.last_token = (token.to_vec(), Arc::from(token_digest(token)));
        }
        Arc::clone(&self.last_token.1)
    }

    /// How long a record may wait in the worker: the worker must tick at
    /// least this often.
    pub fn hold_ms(&self) -> u64 {
        self.hold_ms
    }

    /// How the recorded client address is found.
    pub fn client(&self) -> &ClientConfig {
        &self.client
    }

    /// The singleton's vm_id and the queue's name.
    pub fn queue(&self) -> (&str, &str) {
        (&self.queue.0, &self.queue.1)
    }

    /// Events of this worker in the queue, as far as it knows.
    pub fn in_flight(&self) -> u64 {
        self.enqueued.saturating_sub(self.drained)
    }

    /// Adds one request's events to the next message.
    pub fn record(
        &mut self,
        host: &mut dyn Host,
        decisions: &[Decision],
        facts: &RequestFacts<'_>,
        metrics: &mut Metrics,
    ) {
        if decisions.is_empty() {
            return;
        }
        let n = decisions.len() as u64;
        if self.in_flight().saturating_add(n) > self.limit {
            self.drop_events(n, self.queue_full, metrics);
            return;
        }
        if self.message.is_empty() {
            self.oldest_ms = decisions.first().map_or(0, |d| d.time_ms);
        }
        self.message
            .add(decisions, facts, self.pseudonymizer.as_mut());
        self.enqueued = self.enqueued.saturating_add(n);
        if self.message.records() >= MESSAGE_RECORDS || self.message.len() >= MESSAGE_BYTES {
            self.send(host, metrics);
        }
    }

    /// Sends the records gathered so far (one host call).
    pub fn send(&mut self, host: &mut dyn Host, metrics: &mut Metrics) {
        if self.message.is_empty() {
            return;
        }
        let events = self.message.events();
        self.message.set_dropped(self.unreported);
        let sent = host.audit_enqueue(self.message.bytes());
        self.message.clear();
        match sent {
            Ok(()) => {
                self.unreported = 0;
                metrics.add(self.events, events);
            }
            Err(_) => {
                self.enqueued = self.enqueued.saturating_sub(events);
                self.drop_events(events, self.unavailable, metrics);
            }
        }
    }

    fn drop_events(&mut self, n: u64, why: Counter, metrics: &mut Metrics) {
        self.unreported = self.unreported.saturating_add(n);
        metrics.add(self.dropped, n);
        metrics.add(why, n);
    }

    /// Sends what was gathered once its oldest record has waited long
    /// enough, and learns how much of its share the singleton has taken.
    pub fn on_tick(&mut self, host: &mut dyn Host, now_ms: u64, metrics: &mut Metrics) {
        if now_ms.saturating_sub(self.oldest_ms) >= self.hold_ms {
            self.send(host, metrics);
        }
        if let Some((value, _)) = host.shared().get(&self.drained_key)
            && let Some(bytes) = value.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok())
        {
            self.drained = u64::from_le_bytes(bytes).min(self.enqueued);
        }
    }
}

/// `a == b`, eight bytes at a time: a token is a few hundred bytes, and
/// the `memcmp` of wasm32 compares one byte at a time.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let word = |w: &[u8]| <[u8; 8]>::try_from(w).map(u64::from_ne_bytes).ok();
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    a.len() == b.len()
        && wa.remainder() == wb.remainder()
        && wa.zip(wb).all(|(x, y)| word(x) == word(y))
}

#[cfg(test)]
mod tests {
    use super::same_bytes;

    #[test]
    fn same_bytes_compares_every_byte() {
        let a: Vec<u8> = (0..=255).collect();
        for len in 0..40 {
            let x = &a[..len];
            assert!(same_bytes(x, x));
            for i in 0..len {
                let mut y = x.to_vec();
                y[i] ^= 1;
                assert!(!same_bytes(x, &y), "len {len}, byte {i}");
            }
            assert!(!same_bytes(x, &a[..len + 1]));
        }
    }
}
