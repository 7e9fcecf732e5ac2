//! Bucket state a client cannot reset: keys are verified identities, each
//! limit of a key keeps its own level whatever set of limits applies, slots
//! are picked with a per-deployment secret, a drained key that keeps
//! knocking stays the most recently used, and anonymous clients live in a
//! table of their own.
//!
//! The eviction tests shrink the tenants' table (`slots`, `ways`) so that a
//! few keys fill a slot: what they prove about one slot holds for every
//! slot of a full-size table.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use ctxgate_e2e::{Envoy, Request, Response};
use serde_json::json;

use crate::support::*;

#[test]
fn a_client_naming_another_tenant_in_x_context_tenant_is_charged_to_its_own() {
    let (upstream, _upstream) = echo_upstream();
    let envoy = Envoy::start(&gateway(json!({"tiers": tiers(monthly(1000))}), upstream));
    let addr = envoy.listener_addr();
    let acme = token("acme", json!({}));
    let globex = token("globex", json!({}));

    for expected in [990, 980, 970] {
        let response = ok(graph(&acme).header("x-context-tenant", "globex").send(addr));
        assert_eq!(remaining(&response), expected, "acme's bucket pays");
        assert_eq!(
            response.json()["headers"]["x-context-tenant"],
            "acme",
            "the upstream sees the verified tenant"
        );
    }
    let response = ok(read(&globex).send(addr));
    assert_eq!(remaining(&response), 999, "globex's bucket was untouched");
    assert_eq!(remaining(&ok(read(&acme).send(addr))), 969);
    assert_eq!(metric(&envoy, "cost"), 32);
}

/// Statuses of one request each, in order.
fn statuses(requests: impl IntoIterator<Item = Response>) -> Vec<u16> {
    requests.into_iter().map(|r| r.status).collect()
}

#[test]
fn another_token_or_tier_of_a_tenant_never_refills_its_bucket() {
    let (upstream, _upstream) = echo_upstream();
    let monthly_5 = monthly(5)[0].clone();
    let envoy = Envoy::start(&gateway(
        json!({
            "use_token_limits": true,
            "tiers": {
                "standard": [monthly_5],
                // Another limit beside the same one.
                "gold": [monthly_5, {"name": "daily", "limit": 1000, "window_seconds": 86_400}],
                // The same limit, bigger: an upgrade.
                "big": monthly(8),
                "anonymous": per("per_minute", 60, 60),
            },
        }),
        upstream,
    ));
    let addr = envoy.listener_addr();
    let plain = token("acme", json!({}));
    let gold = token("acme", json!({"rate_limits": {"tier": "gold"}}));
    let per_minute = token("acme", json!({"rate_limits": {"requests_per_minute": 50}}));
    // (Per hour: it leaks one unit every 72 s, so its counts stay exact.)
    let claimed = token(
        "acme",
        json!({"rate_limits": {"context_operations_per_hour": 50}}),
    );
    let big = token("acme", json!({"rate_limits": {"tier": "big"}}));

    let drained: Vec<u64> = (0..5)
        .map(|_| remaining(&ok(read(&plain).send(addr))))
        .collect();
    assert_eq!(drained, [4, 3, 2, 1, 0]);
    assert_eq!(read(&plain).send(addr).status, 429);

    // A token naming another tier brings the monthly limit along with a
    // daily one: the monthly level is the tenant's, and it is full.
    let refused = read(&gold).send(addr);
    assert_eq!(
        refused.status, 429,
        "a gold token refilled the drained bucket: {:?}",
        refused.headers
    );
    assert_eq!(refused.json()["limit"]["name"], "monthly");
    // A token claiming its own limit is held to that limit alone, which
    // has a level of its own.
    let own = ok(read(&per_minute).send(addr));
    assert_eq!(own.header("x-ratelimit-limit"), Some("50, 50;w=60"));
    assert_eq!(remaining(&own), 49);
    let own = ok(read(&claimed).send(addr));
    assert_eq!(own.header("x-ratelimit-limit"), Some("50, 50;w=3600"));
    assert_eq!(remaining(&own), 49);
    // None of this gave the plain token anything back.
    assert_eq!(read(&plain).send(addr).status, 429);
    // An upgrade to 8 adds 3 units of room, not 8.
    let upgraded: Vec<u64> = (0..3)
        .map(|_| remaining(&ok(read(&big).send(addr))))
        .collect();
    assert_eq!(upgraded, [2, 1, 0]);
    assert_eq!(read(&big).send(addr).status, 429);
    assert_eq!(
        statuses([read(&plain).send(addr), read(&gold).send(addr)]),
        [429, 429],
        "back on the smaller tiers, the level (8) is over their capacity (5)"
    );
    // The claimed limit kept its own level all along.
    assert_eq!(remaining(&ok(read(&claimed).send(addr))), 48);
}

/// The slot the previous filter picked for a key: std's `DefaultHasher`
/// (SipHash with a fixed, public key) over the `str` key, modulo the slots.
/// Anyone could compute it, and so aim keys at a tenant's slot.
fn public_slot(key: &str, slots: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() % slots
}

#[test]
fn tenants_aimed_at_a_drained_tenant_s_slot_cannot_evict_its_bucket() {
    const SLOTS: u64 = 1024;
    let (upstream, _upstream) = echo_upstream();
    let envoy = Envoy::start(&gateway(
        json!({"slots": SLOTS, "ways": 2, "tiers": tiers(monthly(3))}),
        upstream,
    ));
    let addr = envoy.listener_addr();
    // Three tenants whose keys share acme's slot under the public hash:
    // two fill it (two ways), the third replaces the least recently used.
    let target = public_slot("tenant=acme|", SLOTS);
    let intruders: Vec<String> = (0..)
        .map(|i| format!("intruder-{i}"))
        .filter(|t| public_slot(&format!("tenant={t}|"), SLOTS) == target)
        .take(3)
        .collect();
    let acme = token("acme", json!({}));
    for _ in 0..3 {
        ok(read(&acme).send(addr));
    }
    assert_eq!(read(&acme).send(addr).status, 429);
    for intruder in &intruders {
        ok(read(&token(intruder, json!({}))).send(addr));
    }
    let after = read(&acme).send(addr);
    println!(
        "intruders {intruders:?} (public slot {target}): acme {}, {:?}",
        after.status,
        metrics(&envoy)
    );
    assert_eq!(
        after.status, 429,
        "acme's drained bucket was evicted and refilled by tenants aimed at its slot"
    );
}

#[test]
fn a_drained_tenant_that_keeps_knocking_is_not_the_bucket_evicted() {
    let (upstream, _upstream) = echo_upstream();
    // One slot of two ways: a third tenant replaces one of the first two.
    let envoy = Envoy::start(&gateway(
        json!({"slots": 1, "ways": 2, "tiers": tiers(monthly(3))}),
        upstream,
    ));
    let addr = envoy.listener_addr();
    let acme = token("acme", json!({}));
    for _ in 0..3 {
        ok(read(&acme).send(addr));
    }
    ok(read(&token("early", json!({}))).send(addr));
    // acme keeps knocking, refused, after `early` came. (A refusal counts
    // as use at most once a second: it costs a shared-data write.)
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(read(&acme).send(addr).status, 429);
    // A third tenant needs room: the least recently used is `early`, not
    // acme, whose last admission was longer ago but who knocked since.
    ok(read(&token("late", json!({}))).send(addr));
    assert_eq!(
        metric(&envoy, "bucket.evictions"),
        1,
        "{:?}",
        metrics(&envoy)
    );
    let after = read(&acme).send(addr);
    assert_eq!(
        after.status, 429,
        "acme, refused but knocking, was evicted and refilled: {:?}",
        after.headers
    );
}

#[test]
fn a_flood_of_anonymous_clients_cannot_evict_a_drained_tenant() {
    const CLIENTS: u64 = 200;
    let (upstream, _upstream) = echo_upstream();
    // Envoy computes the client address from X-Forwarded-For (one trusted
    // proxy), so every request of the flood is another anonymous client,
    // keyed by that address. The tenants' table is one slot of two ways.
    let envoy = Envoy::start(
        &gateway(
            json!({"slots": 1, "ways": 2, "tiers": tiers(monthly(3))}),
            upstream,
        )
        .hcm_field("use_remote_address", json!(true))
        .hcm_field("xff_num_trusted_hops", json!(1)),
    );
    let addr = envoy.listener_addr();
    let acme = token("acme", json!({}));
    for _ in 0..3 {
        ok(read(&acme).send(addr));
    }
    assert_eq!(read(&acme).send(addr).status, 429);
    let mut client = ctxgate_e2e::Client::connect(addr);
    for id in 0..CLIENTS {
        let r = client.send(&Request::get(PUBLIC).header("x-forwarded-for", &client_ip(id)));
        assert_eq!(r.status, 200, "client {id}: {}", r.text());
    }
    let after = read(&acme).send(addr);
    println!(
        "after {CLIENTS} anonymous clients: acme {}, {:?}",
        after.status,
        metrics(&envoy)
    );
    assert_eq!(after.status, 429, "the flood evicted acme's drained bucket");
}
