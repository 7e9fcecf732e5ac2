//! Failed token verifications, throttled per client.
//!
//! A signature check costs about 0.6 ms of wasm CPU, so a client sending a
//! stream of validly shaped tokens with bad signatures could keep a worker
//! busy at little cost to itself. Each failed verification that cost a
//! signature check adds one to the client's bucket (keyed by its address,
//! see [`crate::client`]); once the bucket is full, the client's tokens are
//! refused with 429 before any signature work, until it leaks. The check is
//! one shared-data read, and it only happens on a cache miss.

use super::config::VerificationThrottleConfig;
use crate::bucket::{BucketTable, GlobalAccounting, LimitSpec, MILLI, TakeOutcome, limit_id};
use crate::client::ClientConfig;
use crate::http::RequestHead;
use crate::record::RecordError;
use crate::shared::{Secret, SharedStore};

pub struct Throttle {
    table: BucketTable,
    spec: LimitSpec,
    client: ClientConfig,
}

impl Throttle {
    /// `None` when the throttle is disabled (`failures: 0`).
    pub fn new(
        config: &VerificationThrottleConfig,
        namespace: &str,
        secret: Secret,
    ) -> Option<Throttle> {
        (config.failures > 0).then(|| Throttle {
            table: BucketTable::new(
                &format!("{namespace}.verify_failures"),
                config.slots,
                4,
                16,
                secret,
            ),
            spec: LimitSpec {
                id: limit_id("verification_failures"),
                capacity: config.failures.saturating_mul(MILLI),
                refill: config.failures.saturating_mul(MILLI),
                period_ms: config.window_seconds.saturating_mul(1000),
                counts_cost: true,
            },
            client: config.client.clone(),
        })
    }

    pub fn init_shared(&self, store: &dyn SharedStore) {
        self.table.init_shared(store);
    }

    /// The client key of a request (see [`ClientConfig::key`]).
    /// `address` is called only if the key is Envoy's downstream address.
    pub fn client_key(
        &self,
        head: &RequestHead<'_>,
        address: &dyn Fn() -> Option<String>,
    ) -> String {
        let address = self.client.reads_address().then(address).flatten();
        self.client.key_of(head, address.as_deref())
    }

    /// Seconds until the client may try again, if it has used up its
    /// failures.
    pub fn blocked_for(
        &self,
        store: &dyn SharedStore,
        client: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, RecordError> {
        let hash = self.table.hash_key(client);
        let (fits, tightest) =
            self.table
                .probe(store, hash, std::slice::from_ref(&self.spec), 1, now_ms)?;
        Ok((!fits).then_some(tightest.reset_seconds.max(1)))
    }

    /// Counts one failed verification against the client.
    pub fn failed(
        &self,
        store: &dyn SharedStore,
        client: &str,
        now_ms: u64,
    ) -> Result<(), RecordError> {
        let hash = self.table.hash_key(client);
        match self.table.take(
            store,
            hash,
            std::slice::from_ref(&self.spec),
            1,
            GlobalAccounting::None,
            now_ms,
        ) {
            TakeOutcome::Invalid(e) => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    #[test]
    fn a_client_is_blocked_after_its_failures_and_recovers() {
        let config = VerificationThrottleConfig {
            failures: 3,
            window_seconds: 60,
            ..VerificationThrottleConfig::default()
        };
        let store = MemoryStore::default();
        let t = Throttle::new(&config, "ns", Secret::from_bytes([1; 16])).unwrap();
        t.init_shared(&store);
        for _ in 0..3 {
            assert_eq!(t.blocked_for(&store, "10.0.0.1", 0), Ok(None));
            t.failed(&store, "10.0.0.1", 0).unwrap();
        }
        assert_eq!(t.blocked_for(&store, "10.0.0.1", 0), Ok(Some(20)));
        assert_eq!(t.blocked_for(&store, "10.0.0.2", 0), Ok(None), "per client");
        assert_eq!(t.blocked_for(&store, "10.0.0.1", 20_000), Ok(None));
        let off = VerificationThrottleConfig {
            failures: 0,
            ..config
        };
        assert!(Throttle::new(&off, "ns", Secret::from_bytes([1; 16])).is_none());
    }
}
