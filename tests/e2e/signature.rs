//! End-to-end tests of the signature stage through a real Envoy (1.40, V8,
//! two workers): requests signed by the PyPI package
//! `http-message-signatures` (RFC 9421, `hmac-sha256`, pinned by
//! `scripts/bootstrap`), driven by `tests/signature/sign.py`. The library
//! builds the signature base and the `Content-Digest` itself; the test
//! only sends what it produced, sometimes changed after signing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use ctxgate_core::signature::sfv::encode_base64;
use ctxgate_e2e::mcp::python;
use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, Request, Response, Route, ScriptedServer, WasmFilter, demo_idp,
    repo_root,
};
use serde_json::{Value, json};

const KEY_ID: &str = "ingest";
const SECRET: &[u8] = b"the ingest service's shared secret, 46 bytes..";
const OTHER_SECRET: &[u8] = b"a secret the gateway has never been given.....";
const BODY_LIMIT: u64 = 4096;

/// What the library is asked to cover; it adds `content-digest` itself
/// when it is given the body.
const COVERED: [&str; 3] = ["@method", "@path", "@query"];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One request for the signer.
struct ToSign {
    method: &'static str,
    path: String,
    body: String,
    nonce: String,
    created: u64,
    secret: &'static [u8],
    /// Give the library the body, so that it adds and covers
    /// `Content-Digest`.
    digest: bool,
}

fn to_sign(method: &'static str, path: &str, body: &str, nonce: &str) -> ToSign {
    ToSign {
        method,
        path: path.to_owned(),
        body: body.to_owned(),
        nonce: nonce.to_owned(),
        created: now(),
        secret: SECRET,
        digest: true,
    }
}

/// The header fields the library sets for each request, in order. One
/// Python process per secret.
fn sign(requests: &[ToSign]) -> Vec<BTreeMap<String, String>> {
    requests
        .iter()
        .map(|r| {
            let document = json!({
                "keys": {KEY_ID: encode_base64(r.secret)},
                "requests": [{
                    "method": r.method,
                    "url": format!("http://gateway.test{}", r.path),
                    "body": if r.digest { Some(&r.body) } else { None },
                    "keyid": KEY_ID,
                    "created": r.created,
                    "nonce": r.nonce,
                    "covered": COVERED,
                }],
            });
            let mut child = Command::new(python())
                .arg(repo_root().join("tests/signature/sign.py"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run tests/signature/sign.py (scripts/bootstrap installs its package)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(document.to_string().as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "sign.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut signed: Vec<BTreeMap<String, String>> =
                serde_json::from_slice(&out.stdout).unwrap();
            signed.remove(0)
        })
        .collect()
}

/// `method path` with the signed headers and `body`.
fn request(method: &str, path: &str, headers: &BTreeMap<String, String>, body: &str) -> Request {
    let mut request = Request::new(method, path);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if method != "GET" || !body.is_empty() {
        request = request.body(body.as_bytes().to_vec());
    }
    request
}

fn signature_section() -> Value {
    json!({
        "keys": {KEY_ID: {"secret": encode_base64(SECRET)}},
        "routes": [{"path": {"prefix": "/secure/"}}],
        "max_age_seconds": 60,
        "body_limit": BODY_LIMIT,
    })
}

fn gateway(upstream: &ScriptedServer) -> Envoy {
    Envoy::start(
        &EnvoyConfig::new()
            .concurrency(2)
            .listener_field("connection_balance_config", json!({"exact_balance": {}}))
            .filter(WasmFilter::ctxgate("ctxgate").stage("signature", signature_section()))
            .route(Route::prefix("/").cluster("upstream"))
            .cluster(Cluster::new("upstream", [upstream.addr()])),
    )
}

/// The refusal's status and reason (the JSON body's `reason`).
fn outcome(response: &Response) -> (u16, String) {
    let reason = match response.status {
        200 => String::new(),
        _ => response.json()["reason"].as_str().unwrap_or("?").to_owned(),
    };
    (response.status, reason)
}

fn refused(envoy: &Envoy, reason: &str) -> u64 {
    envoy.wasm_metric(&format!("ctxgate_signature.refused.{reason}"))
}

#[test]
fn it_accepts_what_the_library_signs_and_refuses_each_tampering() {
    let upstream = ScriptedServer::start();
    let envoy = gateway(&upstream);
    let addr = envoy.listener_addr();
    let body = r#"{"context":"projects/a","content":"signed"}"#;
    let path = "/secure/contexts?tenant=acme&v=1";

    let mut stale = to_sign("POST", path, body, "stale");
    stale.created = now() - 120;
    let mut wrong_key = to_sign("POST", path, body, "wrong-key");
    wrong_key.secret = OTHER_SECRET;
    let mut undigested = to_sign("POST", path, body, "no-digest");
    undigested.digest = false;
    let signed = sign(&[
        to_sign("POST", path, body, "good"),
        to_sign("GET", "/secure/contexts/a", "", "bodiless"),
        wrong_key,
        to_sign("POST", path, body, "body"),
        to_sign("POST", path, body, "path"),
        to_sign("POST", path, body, "query"),
        stale,
        undigested,
    ]);
    let [
        good,
        bodiless,
        wrong_key,
        body_h,
        path_h,
        query_h,
        stale,
        undigested,
    ] = signed.as_slice()
    else {
        panic!("{signed:?}")
    };
    // What the library emitted, as the verifier has to read it.
    assert!(
        good["signature-input"]
            .starts_with(r#"pyhms=("@method" "@path" "@query" "content-digest");created="#)
            && good["signature-input"].contains(r#"keyid="ingest";alg="hmac-sha256";nonce="good""#),
        "{good:?}"
    );
    assert!(good["content-digest"].starts_with("sha-256=:"), "{good:?}");

    let accepted = request("POST", path, good, body).send(addr);
    assert_eq!(
        outcome(&accepted),
        (200, String::new()),
        "{}",
        accepted.text()
    );
    let seen = upstream.last_request().unwrap();
    assert_eq!(
        (seen.path.as_str(), seen.body.as_slice()),
        (path, body.as_bytes())
    );
    assert_eq!(seen.header("signature"), Some(good["signature"].as_str()));

    let bodiless_response = request("GET", "/secure/contexts/a", bodiless, "").send(addr);
    assert_eq!(outcome(&bodiless_response), (200, String::new()));
    assert_eq!(upstream.hits(), 2);

    let cases = [
        (
            "signed with another secret",
            request("POST", path, wrong_key, body),
            401,
            "signature_invalid",
        ),
        (
            "changed body",
            request("POST", path, body_h, &body.replace("signed", "forged")),
            401,
            "content_digest_mismatch",
        ),
        (
            "changed path",
            request("POST", &path.replace("contexts", "admin"), path_h, body),
            401,
            "signature_invalid",
        ),
        (
            "changed query",
            request("POST", &path.replace("acme", "globex"), query_h, body),
            401,
            "signature_invalid",
        ),
        (
            "created two minutes ago (window 60 s)",
            request("POST", path, stale, body),
            401,
            "signature_stale",
        ),
        (
            "replayed",
            request("POST", path, good, body),
            401,
            "signature_replayed",
        ),
        (
            "unsigned",
            Request::post(path).body(body.as_bytes().to_vec()),
            401,
            "signature_missing",
        ),
        (
            "Content-Digest not covered",
            request("POST", path, undigested, body),
            401,
            "signature_incomplete",
        ),
        (
            "two signatures",
            request("POST", path, good, body).header("signature", "other=:AAAA:"),
            400,
            "signature_malformed",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, request, status, reason) in cases {
        let got = outcome(&request.send(addr));
        if got != (status, reason.to_owned()) {
            wrong.push(format!("{what}: expected {status} {reason}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Only the changed body got past the headers (they verify): Envoy
    // may have opened the upstream request with them, and reset it when
    // the body was refused, before any of the body was sent (the upstream
    // records such a request with an empty body, if it saw it at all).
    // Every other refusal stopped at the headers.
    let seen: Vec<(String, Vec<u8>)> = upstream
        .requests()
        .into_iter()
        .map(|r| (r.path, r.body))
        .collect();
    let accepted = [
        (path.to_owned(), body.as_bytes().to_vec()),
        ("/secure/contexts/a".to_owned(), Vec::new()),
    ];
    let reset = (path.to_owned(), Vec::new());
    assert!(
        seen == accepted || seen == [accepted[0].clone(), accepted[1].clone(), reset],
        "the upstream never received a refused request's body: {seen:?}"
    );

    for (reason, count) in [
        ("signature_invalid", 3),
        ("content_digest_mismatch", 1),
        ("signature_stale", 1),
        ("signature_replayed", 1),
        ("signature_missing", 1),
        ("signature_malformed", 1),
        ("signature_incomplete", 1),
    ] {
        assert_eq!(refused(&envoy, reason), count, "{reason}");
    }
    assert_eq!(envoy.wasm_metric("ctxgate_signature.verified"), 2);

    // Not a signed route: passes untouched.
    assert_eq!(Request::get("/open").send(addr).status, 200);
}

#[test]
fn a_nonce_used_on_one_worker_is_refused_on_the_other() {
    let upstream = ScriptedServer::start();
    let envoy = gateway(&upstream);
    let [mut a, mut b] = envoy.connect_to_each_worker();
    let body = "{}";
    let signed = sign(&[
        to_sign("PUT", "/secure/x", body, "first"),
        to_sign("PUT", "/secure/x", body, "second"),
    ]);
    let first = request("PUT", "/secure/x", &signed[0], body);
    let second = request("PUT", "/secure/x", &signed[1], body);

    assert_eq!(outcome(&a.send(&first)), (200, String::new()), "worker A");
    assert_eq!(
        outcome(&b.send(&first)),
        (401, "signature_replayed".to_owned()),
        "worker B sees worker A's nonce"
    );
    assert_eq!(outcome(&b.send(&second)), (200, String::new()), "worker B");
    assert_eq!(
        outcome(&a.send(&second)),
        (401, "signature_replayed".to_owned()),
        "and worker A sees worker B's"
    );
    assert_eq!(upstream.hits(), 2);
}

/// Auth runs before the signature stage and rewrites the request (it
/// removes the token parameter); the signature still verifies, because it
/// is checked against the request as the client signed and sent it.
#[test]
fn it_verifies_the_request_as_sent_when_auth_rewrites_it() {
    let upstream = ScriptedServer::start();
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .concurrency(2)
            .filter(
                WasmFilter::ctxgate("ctxgate")
                    .stage(
                        "auth",
                        json!({
                            "providers": [demo_idp::hs256_provider()],
                            "from_params": ["access_token"],
                            "unmatched_requests": "authenticate",
                        }),
                    )
                    .stage("signature", signature_section()),
            )
            .route(Route::prefix("/").cluster("upstream"))
            .cluster(Cluster::new("upstream", [upstream.addr()])),
    );
    let token = demo_idp::hs256_token("acme", "ingest", &json!({}));
    let path = format!("/secure/contexts?x=1&access_token={token}");
    let signed = sign(&[to_sign("POST", &path, "{}", "with-token")]);
    let response = request("POST", &path, &signed[0], "{}").send(envoy.listener_addr());
    assert_eq!(
        outcome(&response),
        (200, String::new()),
        "{}",
        response.text()
    );
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/secure/contexts?x=1", "auth removed the token");
    assert_eq!(seen.header("x-context-tenant"), Some("acme"));
}

/// A nonce store too small for the traffic refuses (503) rather than
/// forget a nonce, and makes room again as nonces leave the window.
#[test]
fn a_full_nonce_store_refuses_the_request() {
    let upstream = ScriptedServer::start();
    let mut section = signature_section();
    section["nonces"] = json!({"buckets": 1, "per_bucket": 2});
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .concurrency(2)
            .filter(WasmFilter::ctxgate("ctxgate").stage("signature", section))
            .route(Route::prefix("/").cluster("upstream"))
            .cluster(Cluster::new("upstream", [upstream.addr()])),
    );
    let signed = sign(&[
        to_sign("GET", "/secure/a", "", "one"),
        to_sign("GET", "/secure/a", "", "two"),
        to_sign("GET", "/secure/a", "", "three"),
    ]);
    let statuses: Vec<(u16, String)> = signed
        .iter()
        .map(|h| outcome(&request("GET", "/secure/a", h, "").send(envoy.listener_addr())))
        .collect();
    assert_eq!(
        statuses,
        [
            (200, String::new()),
            (200, String::new()),
            (503, "nonce_store_full".to_owned())
        ]
    );
    assert_eq!(refused(&envoy, "nonce_store_full"), 1);
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let upstream = ScriptedServer::start();
    let envoy = gateway(&upstream);
    let body = "x".repeat(usize::try_from(BODY_LIMIT).unwrap() + 1);
    let signed = sign(&[to_sign("POST", "/secure/big", &body, "big")]);
    let response = request("POST", "/secure/big", &signed[0], &body).send(envoy.listener_addr());
    assert_eq!(outcome(&response), (413, "body_too_large".to_owned()));
    let chunked = sign(&[to_sign("POST", "/secure/big", &body, "big-chunked")]);
    let mut request = Request::new("POST", "/secure/big");
    for (name, value) in &chunked[0] {
        request = request.header(name, value);
    }
    let response = request
        .chunked(body.as_bytes(), 1000)
        .send(envoy.listener_addr());
    assert_eq!(outcome(&response), (413, "body_too_large".to_owned()));
    assert_eq!(refused(&envoy, "body_too_large"), 2);
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn it_refuses_a_bad_signature_config_and_names_the_field() {
    let mut section = signature_section();
    section["keys"][KEY_ID]["secret"] = json!(encode_base64(b"too short"));
    let log = Envoy::start_expect_failure(
        &EnvoyConfig::new()
            .filter(WasmFilter::ctxgate("ctxgate").stage("signature", section))
            .route(Route::prefix("/").direct(200, "unreachable")),
    );
    assert!(
        log.contains("invalid configuration: signature.keys.ingest.secret: is 9 bytes"),
        "{log}"
    );
}
