//! Identity headers belong to the gateway on every outcome: a client's copy
//! is gone before a refusal is logged, not only before a request is
//! forwarded, and the demo listener refuses the spellings and addresses a
//! client could use to pass for someone else.

use std::time::Duration;

use ctxgate_demo::MintOptions;
use ctxgate_e2e::{Envoy, Request, eventually};
use serde_json::json;

use crate::demo;
use crate::setup::*;
use crate::support::*;

/// What a client claims to be, in every identity header.
const FORGED: [(&str, &str); 8] = [
    ("x-context-tenant", "evil"),
    ("x-context-subject", "root"),
    ("x-context-tier", "enterprise"),
    ("x-context-scopes", "admin:*"),
    ("x-context-issuer", "https://evil.example"),
    ("x-context-actor-chain", "nobody"),
    ("x-context-operation", "delete"),
    ("x-context-path", "projects/secret"),
];

/// One line per request: its case id, the outcome, and every identity
/// header as Envoy saw it when the request ended.
const ACCESS_LOG: &str = "case=%REQ(X-CASE)% status=%RESPONSE_CODE% \
    details=%RESPONSE_CODE_DETAILS% identity=%REQ(X-CONTEXT-TENANT)%|\
    %REQ(X-CONTEXT-SUBJECT)%|%REQ(X-CONTEXT-TIER)%|%REQ(X-CONTEXT-SCOPES)%|\
    %REQ(X-CONTEXT-ISSUER)%|%REQ(X-CONTEXT-ACTOR-CHAIN)%|\
    %REQ(X-CONTEXT-OPERATION)%|%REQ(X-CONTEXT-PATH)%\n";

/// The identity part of a log line without any identity header.
const NO_IDENTITY: &str = "identity=-|-|-|-|-|-|-|-";

fn forge(mut request: Request, case: &str) -> Request {
    for (name, value) in FORGED {
        request = request.header(name, value);
    }
    // A second copy, spelled differently: every copy must go.
    request
        .header("X-Context-Tenant", "evil2")
        .header("x-case", case)
}

/// The access log line of `case`, waiting for Envoy to flush it.
#[track_caller]
fn log_line(envoy: &Envoy, case: &str) -> String {
    let prefix = format!("case={case} ");
    let mut line = None;
    let found = eventually(Duration::from_secs(5), || {
        line = envoy
            .stdout()
            .lines()
            .find(|l| l.starts_with(&prefix))
            .map(str::to_owned);
        line.is_some()
    });
    assert!(found, "no access log line for {case}:\n{}", envoy.stdout());
    line.unwrap()
}

#[test]
fn forged_identity_never_shows_in_the_access_log_whatever_the_outcome() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let stranger = TestKeys::generate().token(&MintOptions::default());
    let gate = start(&keys, |config| config.access_log(ACCESS_LOG));
    let read = "/v1/contexts/projects/public";

    // (case, request, status, reason): one refusal of each kind.
    let refusals = [
        ("no-token", Request::get(read), 401, "missing_token"),
        (
            "garbage-token",
            Request::get(read).bearer("garbage"),
            401,
            "malformed_token",
        ),
        (
            "forged-signature",
            Request::get(read).bearer(&stranger),
            401,
            "bad_signature",
        ),
        (
            "other-project",
            Request::get("/v1/contexts/projects/secret").bearer(&token),
            403,
            "insufficient_scope",
        ),
        (
            "unmapped",
            Request::get("/v1/admin").bearer(&token),
            403,
            "unknown_operation",
        ),
        (
            "path-parameter",
            Request::get("/.well-known/..%3B/v1/admin"),
            400,
            "path_parameter",
        ),
        (
            "double-encoded",
            Request::get("/v1/contexts/projects%252Fsecret").bearer(&token),
            400,
            "invalid_path",
        ),
        (
            "bad-query",
            Request::get(format!("{read}?a=%zz")).bearer(&token),
            400,
            "invalid_query",
        ),
        (
            "two-tokens",
            Request::get(read).bearer(&token).bearer(&stranger),
            400,
            "multiple_tokens",
        ),
        (
            "no-context",
            Request::post("/v1/query").bearer(&token).body("{}"),
            400,
            "invalid_context",
        ),
        (
            "repeated-context",
            Request::post("/v1/query?context=projects/public&Context=projects/secret")
                .bearer(&token)
                .body("{}"),
            400,
            "repeated_parameter",
        ),
        (
            "method-override",
            Request::get(read)
                .bearer(&token)
                .header("x-http-method-override", "DELETE"),
            400,
            "method_override",
        ),
        (
            "preflight-body",
            Request::new("OPTIONS", read)
                .header("origin", "https://app.example")
                .header("access-control-request-method", "PUT")
                .body("x"),
            400,
            "preflight_with_body",
        ),
    ];
    for (case, request, status, reason) in refusals {
        let response = gate.send(forge(request, case));
        denied(&response, status, reason);
        let line = log_line(&gate.envoy, case);
        assert!(
            line.contains(&format!(
                "status={status} details=ctxgate_auth_denied{{{reason}}} "
            )),
            "{line}"
        );
        assert!(line.ends_with(NO_IDENTITY), "{case}: {line}");
    }

    // Forwarded requests log what the gateway established: the verified
    // identity, or none on a public path.
    forwarded(&gate.send(forge(Request::get(read).bearer(&token), "allowed")));
    let line = log_line(&gate.envoy, "allowed");
    let verified = format!(
        "identity={TENANT}|{SUBJECT}|standard|{SCOPES_HEADER}|{ISSUER}|-|read|projects/public"
    );
    assert!(line.ends_with(&verified), "{line}");
    forwarded(&gate.send(forge(Request::get("/.well-known/jwks.json"), "public")));
    let line = log_line(&gate.envoy, "public");
    assert!(line.ends_with(NO_IDENTITY), "{line}");
    gate.assert_vm_healthy();
}

#[test]
fn the_demo_listener_refuses_underscored_identity_headers_and_takes_the_peer_as_the_client() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let log = "case=%REQ(X-CASE)% status=%RESPONSE_CODE% \
        client=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n";
    let settings = demo::listener_settings();
    let demo_like = start(&keys, |config| {
        settings
            .into_iter()
            .fold(config, |config, (name, value)| {
                config.hcm_field(name, value)
            })
            .access_log(log)
    });
    // The harness's listener, without the demo's settings, for contrast:
    // proves the requests below would otherwise get through.
    let plain = start(&keys, |config| {
        config
            .hcm_field("use_remote_address", json!(false))
            .access_log(log)
    });

    // `x_context_tenant` is not `x-context-tenant` to the filter, but is
    // to an upstream that maps `_` to `-` (CGI, many frameworks).
    let underscored = |case: &str| {
        [
            Request::get("/.well-known/jwks.json").header("x_context_tenant", "evil"),
            Request::get("/v1/contexts/projects/public")
                .bearer(&token)
                .header("x_context_tenant", "evil")
                .header("x_context_scopes", "admin:*"),
        ]
        .map(|request| request.header("x-case", case))
    };
    for request in underscored("underscore") {
        refused_by_envoy(&demo_like.send(request), 400);
    }
    for request in underscored("underscore") {
        let seen = forwarded(&plain.send(request));
        assert_eq!(seen.header("x_context_tenant").as_deref(), Some("evil"));
    }

    // A client's X-Forwarded-For does not make it someone else.
    let spoofed = |case: &str| {
        Request::get("/.well-known/jwks.json")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-case", case)
    };
    forwarded(&demo_like.send(spoofed("xff")));
    let line = log_line(&demo_like.envoy, "xff");
    assert!(line.ends_with("status=200 client=127.0.0.1"), "{line}");
    forwarded(&plain.send(spoofed("xff")));
    let line = log_line(&plain.envoy, "xff");
    assert!(line.ends_with("status=200 client=203.0.113.7"), "{line}");
    demo_like.assert_vm_healthy();
}
