//! The audit trail on the native engine.
//!
//! On proxy-wasm, workers hand their audit messages to a shared queue that
//! a singleton VM owns and drains (a bootstrap `envoy.bootstrap.wasm`
//! service). Here the workers are threads of one process, so:
//!
//! - the queue is a bounded in-process queue ([`Queues`]), keyed by the
//!   section's `singleton_vm_id` and `queue` as the wasm queue is;
//! - the shipper (the same [`ctxgate_core::audit::shipper::Shipper`] the
//!   wasm singleton runs) lives on Envoy's main thread, in the first
//!   filter configuration whose `audit` section names a `collector`. It
//!   claims the queue (one shipper per queue and process, as one singleton
//!   per vm), is woken through the configuration's scheduler when a
//!   message arrives, and delivers through the configuration's HTTP
//!   callouts on the collector's cluster. When that configuration is
//!   destroyed (a listener update), the next one with a collector claims
//!   the queue on its next tick and starts a new chain, as a restarted
//!   singleton does.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex, PoisonError, Weak};

use ctxgate_core::audit::config::SingletonConfig;
use ctxgate_core::host::QueueError;

/// What a queue's shipper is woken through.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// Most bytes one queue holds. The workers bound what they put in (each
/// its `queue_limit` of events, see `AuditConfig::queue_limit`); this
/// bounds the process whatever the configuration says. A message refused
/// here is counted as dropped and its loss written into the trail.
pub const MAX_QUEUE_BYTES: usize = 256 << 20;

/// The audit queues of the process.
pub static QUEUES: LazyLock<Queues> = LazyLock::new(Queues::default);

/// The key of a queue: `<singleton_vm_id>/<queue>`.
pub fn queue_key(vm_id: &str, queue: &str) -> String {
    format!("{vm_id}/{queue}")
}

/// The configuration's `audit` section, when it names a collector: this
/// configuration can run the shipper.
pub fn shipper_config(config: &[u8]) -> Result<Option<SingletonConfig>, String> {
    let Ok(serde_json::Value::Object(mut sections)) = serde_json::from_slice(config) else {
        // The pipeline's own parse reports what is wrong.
        return Ok(None);
    };
    let Some(audit) = sections.remove("audit") else {
        return Ok(None);
    };
    if audit.get("collector").is_none() {
        return Ok(None);
    }
    let section = serde_json::json!({ "audit": audit }).to_string();
    ctxgate_core::config::parse_json::<SingletonConfig>(section.as_bytes())
        .map(Some)
        .map_err(|e| e.to_string())
}

#[derive(Default)]
pub struct Queues {
    queues: Mutex<HashMap<String, Queue>>,
}

struct Queue {
    owner: u64,
    /// The owner's configuration, woken when a message arrives.
    notify: Weak<dyn Wake>,
    messages: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Queues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes configuration `owner` the queue's shipper, unless another
    /// live configuration is. Messages already queued stay.
    pub fn claim(&self, key: &str, owner: u64, notify: Weak<dyn Wake>) -> bool {
        let mut queues = self.lock();
        match queues.get_mut(key) {
            Some(queue) if queue.owner == owner => true,
            Some(queue) if queue.notify.strong_count() > 0 => false,
            Some(queue) => {
                queue.owner = owner;
                queue.notify = notify;
                true
            }
            None => {
                queues.insert(
                    key.to_owned(),
                    Queue {
                        owner,
                        notify,
                        messages: VecDeque::new(),
                        bytes: 0,
                    },
                );
                true
            }
        }
    }

    /// Configuration `owner` no longer ships the queue.
    pub fn release(&self, key: &str, owner: u64) {
        if let Some(queue) = self.lock().get_mut(key)
            && queue.owner == owner
        {
            queue.notify = Weak::<Nobody>::new();
        }
    }

    /// A worker's message. Refused when no shipper ever claimed the queue
    /// (as a wasm queue no singleton registered) or the queue is full.
    pub fn push(&self, key: &str, message: &[u8]) -> Result<(), QueueError> {
        let notify = {
            let mut queues = self.lock();
            let queue = queues.get_mut(key).ok_or(QueueError::Unavailable)?;
            let bytes = queue.bytes.saturating_add(message.len());
            if bytes > MAX_QUEUE_BYTES {
                return Err(QueueError::Unavailable);
            }
            queue.bytes = bytes;
            queue.messages.push_back(message.to_vec());
            queue.notify.upgrade()
        };
        if let Some(shipper) = notify {
            shipper.wake();
        }
        Ok(())
    }

    /// The oldest message.
    pub fn pop(&self, key: &str) -> Option<Vec<u8>> {
        let mut queues = self.lock();
        let queue = queues.get_mut(key)?;
        let message = queue.messages.pop_front()?;
        queue.bytes = queue.bytes.saturating_sub(message.len());
        Some(message)
    }
}

/// No shipper (a released queue).
struct Nobody;

impl Wake for Nobody {
    fn wake(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_no_shipper_claimed_refuses_messages() {
        let queues = Queues::default();
        assert_eq!(queues.push("vm/q", b"x"), Err(QueueError::Unavailable));
        assert_eq!(queues.pop("vm/q"), None);
    }

    #[test]
    fn messages_wait_in_order_for_the_live_shipper_only() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let queues = Queues::default();
        let first: Arc<dyn Wake> = Arc::new(Count(AtomicUsize::new(0)));
        let second: Arc<dyn Wake> = Arc::new(Count(AtomicUsize::new(0)));
        assert!(queues.claim("vm/q", 1, Arc::downgrade(&first)));
        assert!(!queues.claim("vm/q", 2, Arc::downgrade(&second)));
        queues.push("vm/q", b"a").unwrap();
        queues.push("vm/q", b"b").unwrap();
        drop(first);
        // The first owner is gone: the second takes over what waits.
        assert!(queues.claim("vm/q", 2, Arc::downgrade(&second)));
        assert_eq!(queues.pop("vm/q").as_deref(), Some(&b"a"[..]));
        queues.release("vm/q", 2);
        queues.push("vm/q", b"c").unwrap();
        assert_eq!(queues.pop("vm/q").as_deref(), Some(&b"b"[..]));
        assert_eq!(queues.pop("vm/q").as_deref(), Some(&b"c"[..]));
        assert_eq!(queues.pop("vm/q"), None);
    }

    #[test]
    fn the_section_without_a_collector_runs_no_shipper() {
        let none = br#"{"audit": {"singleton_vm_id": "vm"}}"#;
        assert!(shipper_config(none).unwrap().is_none());
        assert!(shipper_config(b"{}").unwrap().is_none());
        let bad = br#"{"audit": {"singleton_vm_id": "vm", "collector": {"cluster": 1}}}"#;
        assert!(
            shipper_config(bad)
                .unwrap_err()
                .contains("audit.collector.cluster")
        );
    }
}
