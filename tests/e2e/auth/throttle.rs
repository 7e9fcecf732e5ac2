//! Failed verifications are throttled per client, before any signature
//! work: a flood of forged tokens costs the gateway a shared-data read per
//! request, not a signature check.

use ctxgate_demo::MintAlg;
use ctxgate_demo::MintOptions;
use ctxgate_e2e::{Request, Response};
use serde_json::json;

use crate::support::*;

const PATH: &str = "/v1/contexts/projects/x";
const FAILURES: u64 = 5;

fn from(client: &str, token: &str) -> Request {
    Request::get(PATH)
        .header("authorization", &bearer(token))
        .header("x-forwarded-for", client)
}

/// 429 `verification_throttled` with a `Retry-After`, no challenge: the
/// token was not looked at, so nothing can be said about it.
#[track_caller]
fn throttled(response: &Response) {
    assert_eq!(response.status, 429, "{}", response.text());
    let body = response.json();
    assert_eq!(body["reason"], "verification_throttled", "{body}");
    assert!(response.header("www-authenticate").is_none());
    let retry: u64 = response
        .header("retry-after")
        .expect("a Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
}

#[test]
fn a_client_whose_tokens_keep_failing_verification_is_refused_before_any_signature_work() {
    let keys = TestKeys::generate();
    let mut config = inline_config(&keys);
    // The client is the X-Forwarded-For element one trusted proxy appended
    // (the last one): the test plays several clients from one address.
    config["verification_throttle"] = json!({
        "failures": FAILURES,
        "window_seconds": 60,
        "client": {"source": "forwarded_for", "trusted_hops": 1}
    });
    let gate = Gate::start(config);
    let (mallory, alice) = ("203.0.113.7", "198.51.100.20");
    let stranger = TestKeys::generate();
    let forged = || {
        stranger.token(&MintOptions {
            alg: MintAlg::ES256,
            ..with_scopes(&["read:projects/x"])
        })
    };

    // Verified before the flood: answered from the cache afterwards.
    let earlier = keys.scoped(&["read:projects/x"]);
    forwarded(&gate.send(from(mallory, &earlier)));

    // Distinct forged tokens, so none is answered from the failure cache:
    // each costs a signature check and counts, on whichever worker.
    for _ in 0..FAILURES {
        invalid_token(&gate.send(from(mallory, &forged())), "bad_signature");
    }
    let misses = gate.metric("cache.miss");
    for _ in 0..20 {
        throttled(&gate.send(from(mallory, &forged())));
    }
    // A good token the gateway has not verified yet waits too: telling it
    // apart would take the signature check the throttle saves.
    throttled(&gate.send(from(mallory, &keys.scoped(&["read:projects/x"]))));
    assert_eq!(gate.wait_metric("denied.verification_throttled", 21), 21);
    assert_eq!(gate.metric("denied.bad_signature"), FAILURES);
    assert_eq!(
        gate.metric("cache.miss"),
        misses + 21,
        "throttled tokens are not cached either"
    );

    // A token verified earlier needs no signature work and still passes.
    forwarded(&gate.send(from(mallory, &earlier)));
    // Other clients are not affected: the bucket is the client's.
    forwarded(&gate.send(from(alice, &keys.scoped(&["read:projects/x"]))));
    invalid_token(&gate.send(from(alice, &forged())), "bad_signature");
    // The client is the element the trusted proxy appended: a forged
    // prefix does not make mallory someone else.
    throttled(&gate.send(from(&format!("192.0.2.1, {mallory}"), &forged())));
    gate.assert_vm_healthy();
}
