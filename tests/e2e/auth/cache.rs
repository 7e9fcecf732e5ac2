//! The verified-token cache: what stays in it, and for how long. Requests
//! are pinned to workers (`exact_balance` listeners and kept-alive
//! connections) and the `cache.hit` / `.shared_hit` / `.miss` counters say
//! which cache answered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ctxgate_e2e::{Client, Request};
use serde_json::{Value, json};

use crate::support::*;

const PATH: &str = "/v1/contexts/projects/x";

/// The demo configuration with these `cache` settings.
fn cached(keys: &TestKeys, cache: Value) -> Value {
    let mut config = inline_config(keys);
    config["cache"] = cache;
    config
}

/// A token that fails before any key is touched: its payload is not JSON.
fn malformed(i: usize) -> String {
    assemble(
        &json!({"alg": "ES256", "kid": ctxgate_demo::keys::KID_ES256}),
        &json!(format!("not a claims object {i}")),
        b"signature",
    )
}

fn read(token: &str) -> Request {
    Request::get(PATH).header("authorization", &bearer(token))
}

/// (hit, shared_hit, miss)
fn cache_counters(gate: &Gate) -> (u64, u64, u64) {
    (
        gate.metric("cache.hit"),
        gate.metric("cache.shared_hit"),
        gate.metric("cache.miss"),
    )
}

#[test]
fn a_flood_of_malformed_tokens_does_not_push_verified_tokens_out_of_the_cache() {
    let keys = TestKeys::generate();
    // Room for four verdicts per worker, and no shared cache to fall back
    // on: a verified token is either in this worker's cache or verified
    // again.
    let gate = Gate::start(cached(&keys, json!({"max_entries": 4, "shared_slots": 0})));
    let mut client = Client::connect(gate.addr());
    let verified: Vec<String> = (0..3).map(|_| keys.scoped(&["read:projects/x"])).collect();
    for token in verified.iter().chain(&verified) {
        forwarded(&client.send(&read(token)));
    }
    assert_eq!(
        cache_counters(&gate),
        (3, 0, 3),
        "three verified and cached"
    );

    // Refusals found without signature work are not cached, however many
    // distinct ones a client sends: they cannot evict anything.
    for i in 0..200 {
        invalid_token(&client.send(&read(&malformed(i))), "malformed_token");
    }
    for token in &verified {
        forwarded(&client.send(&read(token)));
    }
    assert_eq!(
        cache_counters(&gate),
        (6, 0, 203),
        "the verified tokens are still cached after the flood"
    );
    // Not even the same malformed token twice is remembered.
    for _ in 0..2 {
        invalid_token(&client.send(&read(&malformed(0))), "malformed_token");
    }
    assert_eq!(cache_counters(&gate), (6, 0, 205));
    assert_eq!(client.reconnects(), 0, "all on one connection, one worker");
    gate.assert_vm_healthy();
}

/// Sleeps until `ms` past the start of unix second `second`.
fn sleep_until(second: u64, ms: u64) {
    let target = Duration::from_secs(second) + Duration::from_millis(ms);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    if let Some(wait) = target.checked_sub(now) {
        std::thread::sleep(wait);
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_shared_cache_hit_keeps_the_expiry_of_the_first_verification() {
    let keys = TestKeys::generate();
    let gate = Gate::start_with(cached(&keys, json!({"max_ttl_seconds": 3})), |config| {
        config.listener_field("connection_balance_config", json!({"exact_balance": {}}))
    });
    let [mut a, mut b] = gate.envoy.connect_to_each_worker();

    // Worker A verifies a token at second s (the filter's clock is the
    // system clock, read in whole seconds): trusted until s + 3. The
    // scenario needs A's request to land in second s; on a machine too
    // loaded for that, it starts again with a fresh token.
    let (token, s) = (0..3)
        .find_map(|_| {
            let s = unix_seconds() + 1;
            sleep_until(s, 50);
            let token = keys.scoped(&["read:projects/x"]);
            forwarded(&a.send(&read(&token)));
            (unix_seconds() == s).then_some((token, s))
        })
        .expect("three tries to verify a token within one second");
    let after_a = cache_counters(&gate);

    // A second later worker B finds it in shared data...
    sleep_until(s + 1, 50);
    forwarded(&b.send(&read(&token)));
    assert_eq!(
        cache_counters(&gate),
        (after_a.0, after_a.1 + 1, after_a.2),
        "worker B: a shared-cache hit"
    );
    // ...and may serve it from its own cache only until s + 3, not for
    // another 3 seconds from when it found it: at s + 3 it verifies again.
    sleep_until(s + 3, 200);
    forwarded(&b.send(&read(&token)));
    assert_eq!(
        cache_counters(&gate),
        (after_a.0, after_a.1 + 1, after_a.2 + 1),
        "worker B at s + 3: verified again"
    );
    // That verification is published afresh: worker A, whose own entry
    // expired too, picks it up.
    forwarded(&a.send(&read(&token)));
    assert_eq!(
        cache_counters(&gate),
        (after_a.0, after_a.1 + 2, after_a.2 + 1),
        "worker A at s + 3: the new entry"
    );
    gate.assert_vm_healthy();
}
