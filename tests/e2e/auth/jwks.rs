//! Remote JWK Sets: fetched from an Envoy cluster (a scripted server here),
//! refreshed, rotated, kept through outages, fetched once for all workers;
//! a rotation revokes what the replaced keys verified; symmetric keys only
//! where the provider allows them.

use std::time::{Duration, Instant};

use ctxgate_demo::{MintAlg, MintOptions};
use ctxgate_e2e::{Client, Cluster, Request, ScriptedResponse, ScriptedServer, eventually};
use serde_json::{Value, json};

use crate::support::*;

const JWKS_PATH: &str = "/keys/jwks.json";
const PATH: &str = "/v1/contexts/projects/x";

/// The demo provider fetching its keys from cluster `jwks`, with short
/// intervals so tests see refreshes within seconds.
fn remote_config(refresh_interval_seconds: u64, min_refresh_interval_seconds: u64) -> Value {
    plugin_config(provider(json!({
        "remote": {
            "cluster": "jwks",
            "path": JWKS_PATH,
            "timeout_ms": 500,
            "refresh_interval_seconds": refresh_interval_seconds,
            "retry_interval_seconds": 1,
            "min_refresh_interval_seconds": min_refresh_interval_seconds,
        }
    })))
}

fn start(server: &ScriptedServer, config: Value, workers: u32) -> Gate {
    Gate::start_with(config, |envoy| {
        envoy
            .concurrency(workers)
            .cluster(Cluster::new("jwks", [server.addr()]))
    })
}

/// Waits (up to 8 s) until fresh tokens made by `token` pass on every
/// worker, and returns whether they do. The worker that fetches a key set
/// installs it at once, the others at their next tick (250 ms) or at the
/// first token the new keys would pass, so one success is not enough: a
/// run of ten fresh connections, which the kernel spreads over the
/// workers, must all pass.
fn every_worker_accepts(gate: &Gate, token: impl Fn() -> String) -> bool {
    eventually(Duration::from_secs(8), || {
        (0..10).all(|_| gate.get(PATH, &token()).status == 200)
    })
}

fn reader(keys: &TestKeys) -> String {
    keys.scoped(&["read:projects/x"])
}

#[test]
fn it_answers_503_until_the_first_jwks_fetch_succeeds() {
    let keys = TestKeys::generate();
    let server = ScriptedServer::start();
    server.set_response(500, &[], "down");
    let gate = start(&server, remote_config(1, 1), 2);

    assert!(eventually(Duration::from_secs(5), || gate
        .metric("jwks.demo.fetch_failure")
        >= 1));
    let response = gate.get(PATH, &reader(&keys));
    let refusal = denied(&response, 503, "keys_unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(refusal.body["error"], "temporarily_unavailable");
    // Refusals for lack of keys are not cached: the same token passes as
    // soon as the keys are there.
    let token = reader(&keys);
    denied(&gate.get(PATH, &token), 503, "keys_unavailable");

    server.set_json(200, &keys.demo_jwks());
    assert!(
        eventually(Duration::from_secs(5), || gate.get(PATH, &token).status
            == 200),
        "keys never arrived; fetches: {}",
        server.hits()
    );
    assert!(every_worker_accepts(&gate, || reader(&keys)));
    let fetch = server.last_request().unwrap();
    assert_eq!(
        (fetch.method.as_str(), fetch.path.as_str()),
        ("GET", JWKS_PATH)
    );
    assert_eq!(
        fetch.header("host"),
        Some("jwks"),
        "authority defaults to the cluster"
    );
    assert!(gate.metric("jwks.demo.fetch_success") >= 1);
    assert!(gate.metric("jwks.demo.installed") >= 2);
    assert!(gate.metric("denied.keys_unavailable") >= 2);
    // Envoy writes its log file from a flush thread: wait for the line.
    assert!(gate.envoy.wait_for_log(
        "JWKS fetch failed (HTTP status 500)",
        Duration::from_secs(5)
    ));
    gate.assert_vm_healthy();
}

#[test]
fn it_picks_up_rotated_keys_at_the_next_refresh_without_a_restart() {
    let old = TestKeys::generate();
    let new = TestKeys::generate();
    let server = ScriptedServer::start();
    server.set_json(200, &old.demo_jwks());
    let gate = start(&server, remote_config(1, 1), 2);
    assert!(every_worker_accepts(&gate, || reader(&old)));
    let vm_created = gate.envoy.counter("wasm.envoy.wasm.runtime.v8.created");

    // The issuer rotates every key, keeping the kids. A token signed with
    // a new key is refused (and that refusal cached) until the new keys
    // arrive; installing keys forgets cached refusals.
    let before = new.scoped(&["read:projects/x"]);
    invalid_token(&gate.get(PATH, &before), "bad_signature");
    invalid_token(&gate.get(PATH, &before), "bad_signature");
    server.set_json(200, &new.demo_jwks());
    assert!(
        eventually(Duration::from_secs(5), || gate.get(PATH, &before).status
            == 200),
        "the new keys were not picked up within 5 refresh intervals; fetches: {}",
        server.hits()
    );
    // Once one worker has the new keys in shared data, no worker refuses a
    // token they verify: a bad signature makes a worker install newer
    // shared keys and decide again, rather than wait for its tick. Fresh
    // tokens (a refusal already cached lasts until that worker's tick).
    for i in 0..20 {
        let response = gate.get(PATH, &reader(&new));
        assert_eq!(
            response.status, 200,
            "request {i} after the rotation was seen: {response:?}"
        );
    }
    for alg in ctxgate_demo::MintAlg::ALL
        .into_iter()
        .filter(|a| *a != ctxgate_demo::MintAlg::HS256)
    {
        let opts = MintOptions {
            alg,
            ..with_scopes(&["read:projects/x"])
        };
        forwarded(&gate.get(PATH, &new.token(&opts)));
        invalid_token(&gate.get(PATH, &old.token(&opts)), "bad_signature");
    }
    assert_eq!(
        gate.envoy.counter("wasm.envoy.wasm.runtime.v8.created"),
        vm_created
    );
    assert!(gate.metric("jwks.demo.fetch_success") >= 2);
    gate.assert_vm_healthy();
}

#[test]
fn it_refreshes_early_when_a_token_names_an_unknown_kid() {
    let keys = TestKeys::generate();
    let next = TestKeys::generate();
    let server = ScriptedServer::start();
    server.set_json(200, &keys.demo_jwks());
    // A long refresh interval: only an unknown kid brings a fetch forward.
    let gate = start(&server, remote_config(300, 1), 2);
    assert!(every_worker_accepts(&gate, || reader(&keys)));
    assert_eq!(server.hits(), 1);

    // The issuer publishes an additional key and starts using it.
    let mut jwks = keys.demo_jwks();
    let mut added = next.demo_jwks()["keys"][1].clone();
    assert_eq!(added["kty"], "EC");
    added["kid"] = json!("next-es256");
    jwks["keys"].as_array_mut().unwrap().push(added);
    server.set_json(200, &jwks);
    let token = || {
        next.token(&MintOptions {
            kid: Some("next-es256".into()),
            ..with_scopes(&["read:projects/x"])
        })
    };
    invalid_token(&gate.get(PATH, &token()), "unknown_kid");
    assert!(
        every_worker_accepts(&gate, token),
        "no early refresh; fetches: {}",
        server.hits()
    );
    assert_eq!(server.hits(), 2, "one early refresh");
    assert!(gate.metric("jwks.demo.early_refresh") >= 1);
    forwarded(&gate.get(PATH, &reader(&keys)));

    // Unknown kids cannot make the gateway hammer the JWKS server: at most
    // one fetch per min_refresh_interval_seconds (1 s here).
    let hits = server.hits();
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        let bogus = keys.token(&MintOptions {
            kid: Some("never-published".into()),
            ..with_scopes(&["read:projects/x"])
        });
        invalid_token(&gate.get(PATH, &bogus), "unknown_kid");
        refused += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let fetches = server.hits() - hits;
    assert!(refused >= 20, "{refused}");
    assert!(
        (1..=4).contains(&fetches),
        "{fetches} fetches for {refused} unknown kids"
    );
    gate.assert_vm_healthy();
}

#[test]
fn it_keeps_the_last_good_keys_when_the_jwks_server_fails() {
    let keys = TestKeys::generate();
    let server = ScriptedServer::start();
    server.set_json(200, &keys.demo_jwks());
    let gate = start(&server, remote_config(1, 1), 2);
    assert!(every_worker_accepts(&gate, || reader(&keys)));
    let unavailable = gate.metric("denied.keys_unavailable");

    // What the JWKS server answers, and after how long (the fetch times
    // out after 500 ms).
    let outages = [
        ("HTTP 500", ScriptedResponse::new(500).body("oops"), 0),
        (
            "not JSON",
            ScriptedResponse::new(200).body("<html>garbage</html>"),
            0,
        ),
        (
            "no usable key",
            ScriptedResponse::json(
                200,
                &json!({"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}),
            ),
            0,
        ),
        (
            "empty set",
            ScriptedResponse::json(200, &json!({"keys": []})),
            0,
        ),
        (
            "timeout",
            ScriptedResponse::json(200, &keys.demo_jwks()),
            1_500,
        ),
    ];
    // Fetch successes, counted from the first failure on.
    let mut successes = None;
    for (what, response, delay_ms) in outages {
        let failures = gate.metric("jwks.demo.fetch_failure");
        server.set_delay(Duration::from_millis(delay_ms));
        server.set_handler(move |_| response.clone());
        assert!(
            eventually(Duration::from_secs(6), || gate
                .metric("jwks.demo.fetch_failure")
                > failures),
            "{what}: no failed fetch"
        );
        // Tokens never seen before still verify with the last good keys.
        for _ in 0..4 {
            forwarded(&gate.get(PATH, &reader(&keys)));
        }
        let now = gate.metric("jwks.demo.fetch_success");
        assert_eq!(
            now,
            *successes.get_or_insert(now),
            "{what}: a fetch succeeded"
        );
    }
    let successes = successes.unwrap();
    server.set_delay(Duration::ZERO);
    assert!(eventually(Duration::from_secs(6), || gate
        .metric("jwks.demo.fetch_success")
        > successes));
    forwarded(&gate.get(PATH, &reader(&keys)));
    assert_eq!(gate.metric("denied.keys_unavailable"), unavailable);
    for reason in [
        "HTTP status 500",
        "not a JSON document",
        "no usable key",
        "the key set is empty",
        "HTTP status 504",
    ] {
        assert!(
            gate.envoy.wait_for_log(
                &format!("JWKS fetch failed ({reason}"),
                Duration::from_secs(5)
            ),
            "no log line for {reason}:\n{}",
            gate.envoy
                .log()
                .lines()
                .filter(|l| l.contains("JWKS"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    gate.assert_vm_healthy();
}

#[test]
fn it_fetches_the_jwks_once_for_all_workers() {
    let keys = TestKeys::generate();
    let server = ScriptedServer::start();
    server.set_json(200, &keys.demo_jwks());
    let gate = start(&server, remote_config(1, 1), 4);
    assert!(eventually(Duration::from_secs(5), || gate
        .metric("jwks.demo.fetch_success")
        >= 1));

    // Four workers, a 1 s refresh interval: one fetcher makes about one
    // fetch per second; four independent ones would make about four.
    let hits = server.hits();
    let window = Duration::from_secs(4);
    std::thread::sleep(window);
    let fetches = server.hits() - hits;
    assert!(
        (2..=5).contains(&fetches),
        "{fetches} fetches in {window:?} with 4 workers"
    );
    // Every hit was one fetch of this Envoy, counted once.
    assert!(eventually(Duration::from_secs(2), || gate
        .metric("jwks.demo.fetch_success")
        == server.hits()));
    // All four workers have the keys.
    for _ in 0..16 {
        forwarded(&gate.get(PATH, &reader(&keys)));
    }
    assert!(gate.metric("jwks.demo.installed") >= 4);
    gate.assert_vm_healthy();
}

/// Tries fresh tokens from `token` on `client` (one worker), ten a second
/// for up to 8 s, until one passes: that worker has installed the key set
/// they need. (Slowly: each refusal counts towards the per-client
/// verification throttle, 100 a minute by default.)
fn worker_accepts(client: &mut Client, token: impl Fn() -> String) -> bool {
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let request = Request::get(PATH).header("authorization", &bearer(&token()));
        if client.send(&request).status == 200 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn rotating_keys_revokes_the_cached_tokens_they_verified_with_or_without_a_kid() {
    let old = TestKeys::generate();
    let new = TestKeys::generate();
    let server = ScriptedServer::start();
    server.set_json(200, &old.demo_jwks());
    let gate = Gate::start_with(remote_config(1, 1), |envoy| {
        envoy
            .cluster(Cluster::new("jwks", [server.addr()]))
            .listener_field("connection_balance_config", json!({"exact_balance": {}}))
    });
    let [mut a, mut b] = gate.envoy.connect_to_each_worker();
    for client in [&mut a, &mut b] {
        assert!(worker_accepts(client, || reader(&old)));
    }

    // Three tokens of the old keys: ES256 naming its kid, RS256 naming
    // none, EdDSA naming its kid. Each is verified on worker A and found
    // in shared data by worker B, then served from both workers' caches.
    let token = |alg: MintAlg, kid: Option<&str>| {
        old.token(&MintOptions {
            alg,
            kid: kid.map(str::to_owned),
            ..with_scopes(&["read:projects/x"])
        })
    };
    let with_kid = token(MintAlg::ES256, None);
    let without_kid = token(MintAlg::RS256, Some(""));
    let kept = token(MintAlg::EdDSA, None);
    let send = |client: &mut Client, token: &str| {
        client.send(&Request::get(PATH).header("authorization", &bearer(token)))
    };
    let (hits, shared_hits) = (gate.metric("cache.hit"), gate.metric("cache.shared_hit"));
    for _ in 0..2 {
        for client in [&mut a, &mut b] {
            for token in [&with_kid, &without_kid, &kept] {
                forwarded(&send(client, token));
            }
        }
    }
    assert_eq!(
        (gate.metric("cache.hit"), gate.metric("cache.shared_hit")),
        (hits + 6, shared_hits + 3)
    );

    // The issuer replaces its ES256 and RS256 keys (new material under the
    // same kids) and keeps its EdDSA key.
    let mut rotated = new.demo_jwks();
    let eddsa = old.demo_jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == ctxgate_demo::keys::KID_EDDSA)
        .unwrap()
        .clone();
    let keys = rotated["keys"].as_array_mut().unwrap();
    keys.retain(|k| k["kid"] != ctxgate_demo::keys::KID_EDDSA);
    keys.push(eddsa);
    server.set_json(200, &rotated);
    for client in [&mut a, &mut b] {
        assert!(
            worker_accepts(client, || reader(&new)),
            "the rotated keys never arrived; fetches: {}",
            server.hits()
        );
    }

    // Once a worker has the new keys, the cached verifications made with a
    // key that is gone count for nothing, whether the token named the
    // key's kid (now another key's) or no kid at all. The token of the key
    // that stayed is still served from the cache.
    for client in [&mut a, &mut b] {
        invalid_token(&send(client, &with_kid), "bad_signature");
        invalid_token(&send(client, &without_kid), "bad_signature");
        let hits = gate.metric("cache.hit");
        forwarded(&send(client, &kept));
        assert_eq!(gate.metric("cache.hit"), hits + 1, "kept key: a cache hit");
    }
    gate.assert_vm_healthy();
}

#[test]
fn a_remote_key_set_installs_symmetric_keys_only_when_the_provider_allows_it() {
    let keys = TestKeys::generate();
    let server = ScriptedServer::start();
    // The demo key set with the demo HMAC secret published in it.
    let mut jwks = keys.demo_jwks();
    jwks["keys"].as_array_mut().unwrap().push(json!({
        "kty": "oct", "kid": ctxgate_demo::keys::KID_HS256, "alg": "HS256",
        "k": keys.demo.hs256_secret_b64(),
    }));
    server.set_json(200, &jwks);
    let hs256 = || {
        keys.token(&MintOptions {
            alg: MintAlg::HS256,
            ..with_scopes(&["read:projects/x"])
        })
    };

    // By default the secret is skipped (and the skip logged); the other
    // keys are installed. A token signed with it names a kid the
    // provider does not have.
    let gate = start(&server, remote_config(300, 1), 2);
    assert!(every_worker_accepts(&gate, || reader(&keys)));
    invalid_token(&gate.get(PATH, &hs256()), "unknown_kid");
    assert!(gate.envoy.wait_for_log(
        "JWKS key skipped: keys[3] (kid demo-hs256): symmetric (oct) keys are not accepted \
         from a remote key set",
        Duration::from_secs(5)
    ));
    gate.assert_vm_healthy();
    drop(gate);

    // A provider that opts in installs it.
    let mut config = remote_config(300, 1);
    config["providers"][0]["jwks"]["remote"]["allow_symmetric_keys"] = json!(true);
    let gate = start(&server, config, 2);
    assert!(every_worker_accepts(&gate, hs256));
    forwarded(&gate.get(PATH, &reader(&keys)));
    gate.assert_vm_healthy();
}
