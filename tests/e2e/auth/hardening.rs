//! Hostile input never costs availability, and what the filter exports to
//! operators: cache and refusal counters.

use ctxgate_demo::{MintAlg, MintOptions};
use ctxgate_e2e::{Client, Envoy, FilterEngine, Request, prometheus_prefix, send_raw};
use serde_json::{Value, json};

use crate::support::*;

/// Stats that change when Envoy has to create or reload a wasm VM (after
/// a crash, a VM is recreated on the next request).
const VM_STATS: [&str; 3] = [
    "wasm.envoy.wasm.runtime.v8.created",
    "wasm.ctxgate_auth.vm_reload",
    "wasm.ctxgate_auth.vm_reload_failure",
];

/// [`VM_STATS`] on the wasm engine. The native engine has no VM to lose:
/// a panic is caught in the hook, logged ("panicked") and fails that
/// request, which [`Gate::assert_vm_healthy`] looks for.
fn vm_stats(envoy: &Envoy) -> Option<Vec<u64>> {
    (FilterEngine::current() == FilterEngine::Wasm)
        .then(|| VM_STATS.iter().map(|s| envoy.counter(s)).collect())
}

#[test]
fn it_survives_hostile_requests_without_a_server_error_or_a_vm_restart() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let valid = keys.scoped(&["read:projects/x"]);
    forwarded(&gate.get(path, &valid));
    let vm_stats_before = vm_stats(&gate.envoy);
    if let Some(stats) = &vm_stats_before {
        assert!(stats[0] > 0, "no V8 VM stats: {stats:?}");
    }

    // Header values that are not UTF-8, in every header the filter reads.
    let mut requests = vec![
        Request::get(path).header_bytes("authorization", b"Bearer \xff\xfe\xfd"),
        Request::get(path).header_bytes("authorization", b"\xc3\x28 Bearer"),
        Request::get(path).header_bytes("cookie", b"session=\xff\xfe"),
        Request::post(path)
            .header_bytes("content-type", b"application/grpc\xff")
            .body("x"),
        Request::get("/health/context").header_bytes("x-context-subject", b"\x80\x81"),
        Request::new("OPTIONS", path)
            .header_bytes("origin", b"\xff")
            .header_bytes("access-control-request-method", b"\xfe"),
    ];
    // Huge headers: just under and over what Envoy accepts (60 KiB).
    requests.push(Request::get(path).header("authorization", &bearer(&"a".repeat(58_000))));
    requests.push(Request::get(path).header("authorization", &bearer(&"a".repeat(70_000))));
    requests.push(Request::get(path).header("x-context-tenant", &"e".repeat(50_000)));
    // Paths: long, deep, odd methods, odd queries.
    requests.push(
        Request::get(format!("/v1/contexts/{}", "a".repeat(7_000)))
            .header("authorization", &bearer(&valid)),
    );
    requests.push(
        Request::get(format!("/v1/contexts/{}", "a/".repeat(200)))
            .header("authorization", &bearer(&valid)),
    );
    requests.push(Request::get(format!(
        "/v1/contexts/{}",
        "%2e%2e/".repeat(100)
    )));
    requests.push(Request::new("FOO", path).header("authorization", &bearer(&valid)));
    requests.push(
        Request::post(format!("/v1/query?{}", "context=a&".repeat(2_000)))
            .header("authorization", &bearer(&valid)),
    );
    requests.push(
        Request::post(format!("/v1/query?context={}", "a/".repeat(3_000)))
            .header("authorization", &bearer(&valid)),
    );
    requests.push(Request::post("/v1/query?context=%").header("authorization", &bearer(&valid)));
    requests.push(Request::get(format!("{path}?access_token=%ff%fe")));
    // Garbage and hostile tokens, validly signed where it matters.
    for token in hostile_tokens(&keys) {
        requests.push(Request::get(path).header("authorization", &bearer(&token)));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for request in &requests {
        let response = gate.send(request.clone());
        *statuses.entry(response.status).or_insert(0) += 1;
    }
    // Requests so broken that Envoy's codec refuses them.
    for raw in [
        &b"GET /v1/contexts/\xff\xfe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
        b"GET /v1/contexts/a b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /v1/contexts/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer a\x00b\r\nconnection: close\r\n\r\n",
        b"GET /v1/contexts/x HTTP/1.1\r\nhost: x\r\nauthorization : Bearer x\r\nconnection: close\r\n\r\n",
    ] {
        let response = send_raw(gate.addr(), raw);
        assert!(response.status < 500, "{:?}: {}", String::from_utf8_lossy(raw), response.status);
    }
    // Forged identity in hostile shapes never reaches the upstream.
    let mut many = Request::get(path).header("authorization", &bearer(&valid));
    for i in 0..90 {
        many = many.header("x-context-tenant", &format!("evil-{i}"));
    }
    for request in [
        many,
        Request::get(path)
            .header("authorization", &bearer(&valid))
            .header_bytes("x-context-tenant", b"\xff")
            .header_bytes("x-context-actor-chain", b"\xfe\xfd"),
        Request::get(path)
            .header("authorization", &bearer(&valid))
            .header("x-context-tenant", &"e".repeat(50_000)),
    ] {
        let seen = forwarded(&gate.send(request));
        assert_eq!(
            seen.identity(),
            default_identity("read:projects/x", "read", "projects/x")
        );
    }
    eprintln!("hostile request statuses: {statuses:?}");
    assert!(
        statuses.keys().all(|s| (400..500).contains(s) || *s == 200),
        "{statuses:?}"
    );

    // Every worker still answers, and no VM was lost or replaced.
    for _ in 0..8 {
        forwarded(&gate.get(path, &keys.scoped(&["read:projects/x"])));
    }
    assert_eq!(vm_stats(&gate.envoy), vm_stats_before, "{VM_STATS:?}");
    gate.assert_vm_healthy();
}

/// Tokens a careless parser could choke on: deep nesting, huge or odd
/// numbers, control characters in claims that become headers.
fn hostile_tokens(keys: &TestKeys) -> Vec<String> {
    let header = json!({"alg": "ES256", "kid": ctxgate_demo::keys::KID_ES256});
    let base = Value::Object(keys.claims(&with_scopes(&["read:projects/x"])));
    let with = |claim: &str, value: Value| {
        let mut payload = base.clone();
        payload[claim] = value;
        keys.sign_raw(&header, &payload, MintAlg::ES256)
    };
    // Signs header and payload given as JSON text (deep nesting is built
    // as text: serde_json values that deep would overflow this thread).
    let signed_text = |header: &str, payload: &[u8]| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload));
        let signature =
            ctxgate_demo::mint::sign(&keys.demo, MintAlg::ES256, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    };
    let base_text = base.to_string();
    let with_text = |claim: &str, text: &str| {
        let payload = format!("{},\"{claim}\":{text}}}", &base_text[..base_text.len() - 1]);
        signed_text(&header.to_string(), payload.as_bytes())
    };
    let nested_act = format!(
        "{}{{\"sub\":\"a\"}}{}",
        "{\"sub\":\"a\",\"act\":".repeat(300),
        "}".repeat(300)
    );
    // Past serde_json's recursion limit (128), within the size limits.
    let deep = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let (deep_payload, deep_header) = (deep(2_000), deep(1_000));
    let mut tokens = vec![
        with("exp", json!(u64::MAX)),
        with("exp", json!(1e300)),
        with("exp", json!(-1)),
        with("exp", json!(1.5)),
        with("exp", json!("tomorrow")),
        with("nbf", json!(u64::MAX)),
        with("iat", json!(u64::MAX)),
        with("iat", json!(-5)),
        with("iss", json!(["https://idp.ctxgate.local"])),
        with("aud", json!({"aud": "context-api"})),
        with("sub", json!("root\r\nx-context-tenant: evil")),
        with("sub", json!("")),
        with("sub", json!(7)),
        with("tenant_id", json!("acme\r\nx-evil: 1")),
        with("tenant_id", json!("a".repeat(1_000))),
        with("tenant_id", json!(null)),
        with("tenant_id", json!(["acme"])),
        with("context_scopes", json!(42)),
        with(
            "context_scopes",
            json!([1, null, {}, ["read:*"], "read:projects/x"]),
        ),
        with("context_scopes", json!("read:projects/x\nadmin:*")),
        with("rate_limits", json!("premium")),
        with("rate_limits", json!({"tier": "gold\r\nx-evil: 1"})),
        with("rate_limits", json!({"tier": 5})),
        with("delegation_rights", json!([])),
        with("delegation_rights", json!({"can_delegate": "yes"})),
        with_text("act", &nested_act),
        with("act", json!({"sub": "a\u{0}b"})),
        with_text("deep", &deep_payload),
        signed_text(
            &format!("{{\"alg\":\"ES256\",\"kid\":{deep_header}}}"),
            base_text.as_bytes(),
        ),
        signed_text(
            &format!("{{\"x\":{deep_header},\"alg\":\"ES256\"}}"),
            base_text.as_bytes(),
        ),
        keys.sign_raw(&json!("ES256"), &base, MintAlg::ES256),
        keys.sign_raw(&header, &json!(null), MintAlg::ES256),
        keys.sign_raw(
            &json!({"alg": "ES256", "kid": "\u{0}\u{ffff}"}),
            &base,
            MintAlg::ES256,
        ),
        keys.sign_raw(
            &json!({"alg": "EdDSA", "kid": ctxgate_demo::keys::KID_EDDSA}),
            &base,
            MintAlg::ES256,
        ),
        keys.token(&MintOptions {
            sub: "用户-ü".into(),
            ..with_scopes(&["read:projects/x"])
        }),
    ];
    // Signed bytes that are not even JSON text, or JSON with duplicate keys.
    for payload in [
        &b"\xff\xfe\xfd"[..],
        b"{\"iss\":\"https://evil\",\"iss\":\"https://idp.ctxgate.local\",\"sub\":\"a\",\"aud\":\"context-api\",\"exp\":99999999999,\"tenant_id\":\"acme\"}",
        b"{\"iss\":\"https://idp.ctxgate.local\"",
    ] {
        tokens.push(signed_text(&header.to_string(), payload));
    }
    // Random garbage of plausible shape.
    for i in 0..20u8 {
        let noise: Vec<u8> = (0..(i as usize * 37 + 5))
            .map(|j| (j as u8).wrapping_mul(i).wrapping_add(i))
            .collect();
        tokens.push(format!(
            "{}.{}.{}",
            b64(&noise),
            b64(&noise[..noise.len() / 2]),
            b64(&noise[..3])
        ));
    }
    tokens
}

#[test]
fn it_counts_cache_hits_across_workers_and_refusals_per_reason() {
    let keys = TestKeys::generate();
    let gate = Gate::start_with(inline_config(&keys), |config| config.concurrency(4));
    let path = "/v1/contexts/projects/x";

    // One token, 40 fresh connections spread over 4 workers: verified
    // once, then found in the shared cache once per other worker that sees
    // it, then in each worker's own cache.
    let token = keys.scoped(&["read:projects/x"]);
    for _ in 0..40 {
        forwarded(&gate.get(path, &token));
    }
    let (hit, shared_hit, miss) = (
        gate.metric("cache.hit"),
        gate.metric("cache.shared_hit"),
        gate.metric("cache.miss"),
    );
    assert_eq!(miss, 1, "hit {hit} shared {shared_hit} miss {miss}");
    assert!(
        (1..=3).contains(&shared_hit),
        "hit {hit} shared {shared_hit} miss {miss}"
    );
    assert_eq!(hit + shared_hit + miss, 40);
    // On one kept-alive connection (one worker) it is a local hit each time.
    let mut client = Client::connect(gate.addr());
    let request = Request::get(path).header("authorization", &bearer(&token));
    for _ in 0..20 {
        assert_eq!(client.send(&request).status, 200);
    }
    assert_eq!(gate.metric("cache.hit"), hit + 20);
    assert_eq!(gate.metric("cache.miss"), 1);
    // Refusals that cost a signature check are cached per worker, never
    // shared; refusals found without one are not cached at all (a flood of
    // distinct garbage must not push good entries out).
    let forged = TestKeys::generate().token(&MintOptions::default());
    for _ in 0..10 {
        invalid_token(
            &client.send(&Request::get(path).header("authorization", &bearer(&forged))),
            "bad_signature",
        );
    }
    assert_eq!(gate.metric("cache.miss"), 2);
    assert_eq!(gate.metric("cache.hit"), hit + 29);
    let bad = keys.token(&MintOptions {
        iss: "https://evil.example".into(),
        ..MintOptions::default()
    });
    for _ in 0..10 {
        invalid_token(
            &client.send(&Request::get(path).header("authorization", &bearer(&bad))),
            "unknown_issuer",
        );
    }
    assert_eq!(gate.metric("cache.miss"), 12);
    assert_eq!(gate.metric("cache.hit"), hit + 29);
    // No token, public paths and early refusals do not touch the cache.
    denied(&client.send(&Request::get(path)), 401, "missing_token");
    forwarded(&client.send(&Request::get("/health/context")));
    invalid_request(
        &client.send(&Request::get("/v1/contexts/%252F")),
        "invalid_path",
    );
    invalid_token(
        &client.send(&Request::get(path).header("authorization", &bearer(&"a".repeat(9_000)))),
        "token_too_large",
    );
    assert_eq!(gate.metric("cache.miss"), 12);
    assert_eq!(gate.metric("cache.hit"), hit + 29);

    // One counter per reason, the same numbers in Prometheus form.
    assert_eq!(gate.metric("allowed"), 60);
    assert_eq!(gate.metric("passthrough"), 1);
    assert_eq!(gate.metric("denied.unknown_issuer"), 10);
    assert_eq!(gate.metric("denied.bad_signature"), 10);
    assert_eq!(gate.metric("denied.missing_token"), 1);
    assert_eq!(gate.metric("denied.invalid_path"), 1);
    assert_eq!(gate.metric("denied.token_too_large"), 1);
    assert_eq!(gate.metric("denied.token_expired"), 0);
    let prometheus = gate.envoy.prometheus();
    for line in [
        "ctxgate_auth_denied_unknown_issuer{} 10",
        "ctxgate_auth_allowed{} 60",
        "ctxgate_auth_cache_miss{} 12",
        "ctxgate_auth_denied_delegation_scope_not_delegable{} 0",
    ] {
        let line = format!("{}{line}", prometheus_prefix());
        assert!(
            prometheus.lines().any(|l| l == line),
            "{line} not in:\n{prometheus}"
        );
    }
    gate.assert_vm_healthy();
}
