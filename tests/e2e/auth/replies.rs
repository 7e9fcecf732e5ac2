//! What clients and upstreams see: RFC 6750 refusals, HEAD and gRPC
//! shapes, requests that pass without a token, and identity headers a
//! client cannot forge.

use std::time::Duration;

use ctxgate_e2e::{Request, eventually};

use crate::support::*;

#[test]
fn it_answers_refusals_in_rfc6750_shape() {
    let keys = TestKeys::generate();
    // An access log with Envoy's response code details.
    let gate = Gate::start_with(inline_config(&keys), |envoy| {
        envoy.access_log("%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n")
    });
    let path = "/v1/contexts/projects/x";
    let expired = keys.token(&ctxgate_demo::MintOptions {
        exp_in: -3600,
        ..with_scopes(&["read:projects/x"])
    });

    // 401 invalid_token: error and description in the challenge, the same
    // in the JSON body, plus the stable reason code.
    let response = gate.get(path, &expired);
    let refusal = invalid_token(&response, "token_expired");
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"token has expired\""
            )
            .as_str()
        )
    );
    assert_eq!(refusal.body["error"], "invalid_token");
    assert_eq!(refusal.body["message"], "token has expired");
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str())
    );

    // 403 insufficient_scope names the scope that would have been needed.
    let reader = keys.scoped(&["read:projects/x"]);
    let response = gate.call("PUT", path, &reader);
    insufficient_scope(&response, "write:projects/x");
    assert_eq!(
        response.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", \
                 error_description=\"the token does not grant write:projects/x\", scope=\"write:projects/x\""
            )
            .as_str()
        )
    );

    // 400 invalid_request.
    let response = gate.get("/v1/contexts/a%252Fb", &reader);
    let refusal = invalid_request(&response, "invalid_path");
    assert_eq!(refusal.body["error"], "invalid_request");

    // HEAD: same status and headers, no body.
    let response = gate.send(Request::new("HEAD", path).header("authorization", &bearer(&expired)));
    assert_eq!(response.status, 401);
    assert!(response.body.is_empty());
    assert_eq!(
        parse_challenge(response.header("www-authenticate").unwrap())[1],
        ("error".to_owned(), "invalid_token".to_owned())
    );
    let response = gate.send(Request::new("HEAD", path));
    assert_eq!(response.status, 401);
    assert!(response.body.is_empty());
    assert_eq!(
        response.header("www-authenticate"),
        Some(format!("Bearer realm=\"{REALM}\"").as_str())
    );
    let response = gate.send(Request::new("HEAD", path).header("authorization", &bearer(&reader)));
    assert_eq!(response.status, 200, "HEAD is a read");

    // The reason code is also Envoy's response code details, for access logs.
    let logged = [
        "GET 401 ctxgate_auth_denied{token_expired}",
        "PUT 403 ctxgate_auth_denied{insufficient_scope}",
        "GET 400 ctxgate_auth_denied{invalid_path}",
        "HEAD 401 ctxgate_auth_denied{missing_token}",
    ];
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = gate.envoy.stdout();
            logged.iter().all(|line| log.lines().any(|l| l == *line))
        }),
        "access log:\n{}",
        gate.envoy.stdout()
    );
    assert_eq!(gate.wait_metric("denied.token_expired", 2), 2);
    gate.assert_vm_healthy();
}

#[test]
fn it_answers_grpc_requests_with_a_grpc_status() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let grpc = |token: Option<&str>, content_type: &str| {
        let mut request = Request::post(path)
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0]);
        if let Some(token) = token {
            request = request.header("authorization", &bearer(token));
        }
        gate.send(request)
    };

    // Unauthenticated: HTTP 200 with grpc-status 16.
    for content_type in ["application/grpc", "application/grpc+proto"] {
        let response = grpc(None, content_type);
        assert_eq!(
            response.status, 200,
            "{content_type}: {:?}",
            response.headers
        );
        assert_eq!(response.header("grpc-status"), Some("16"), "{content_type}");
        assert!(
            response
                .header("grpc-message")
                .is_some_and(|m| m.contains("missing_token"))
        );
    }
    let expired = keys.token(&ctxgate_demo::MintOptions {
        exp_in: -3600,
        ..with_scopes(&["write:projects/x"])
    });
    let response = grpc(Some(&expired), "application/grpc");
    assert_eq!(
        (response.status, response.header("grpc-status")),
        (200, Some("16"))
    );

    // Permission denied: grpc-status 7.
    let reader = keys.scoped(&["read:projects/x"]);
    let response = grpc(Some(&reader), "application/grpc");
    assert_eq!(
        (response.status, response.header("grpc-status")),
        (200, Some("7"))
    );
    assert_eq!(response.header("content-type"), Some("application/grpc"));
    assert!(
        response
            .header("grpc-message")
            .is_some_and(|m| m.contains("insufficient_scope"))
    );

    // Allowed gRPC requests are forwarded.
    let writer = keys.scoped(&["write:projects/x"]);
    forwarded(&grpc(Some(&writer), "application/grpc"));

    assert_eq!(gate.wait_metric("denied.missing_token", 2), 2);
    assert_eq!(gate.metric("denied.insufficient_scope"), 1);
    gate.assert_vm_healthy();
}

#[test]
fn it_lets_preflights_and_public_paths_through_and_strips_forged_identity() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let forged = [
        ("x-context-tenant", "evil"),
        ("x-context-subject", "root"),
        ("x-context-tier", "enterprise"),
        ("x-context-scopes", "admin:*"),
        ("x-context-issuer", "https://evil.example"),
        ("x-context-actor-chain", "nobody"),
        ("x-context-operation", "delete"),
        ("x-context-path", "projects/secret"),
        ("x-context-service", "evil-service"),
    ];
    let forge = |mut request: Request| {
        for (name, value) in forged {
            request = request.header(name, value);
        }
        // Twice, in another case: all copies must go.
        request.header("X-Context-Tenant", "evil2")
    };

    // A verified request: the token's identity replaces the forged one.
    let token = keys.scoped(&["read:projects/x"]);
    let seen = forwarded(&gate.send(forge(
        Request::get("/v1/contexts/projects/x").header("authorization", &bearer(&token)),
    )));
    assert_eq!(
        seen.identity(),
        default_identity("read:projects/x", "read", "projects/x")
    );
    // Headers the filter does not own are left alone.
    let seen = forwarded(
        &gate.send(
            Request::get("/v1/contexts/projects/x")
                .header("authorization", &bearer(&token))
                .header("x-context-other", "kept")
                .header("x-request-tag", "kept"),
        ),
    );
    assert_eq!(seen.header("x-context-other").as_deref(), Some("kept"));
    assert_eq!(seen.header("x-request-tag").as_deref(), Some("kept"));

    // Public paths pass without a token, and forged identity is removed.
    for request in [
        Request::get("/health/context"),
        Request::new("HEAD", "/health/context"),
        Request::get("/health/context?verbose=1"),
        Request::get("/health//context/"),
        Request::get("/.well-known/openid-configuration"),
        Request::post("/.well-known").body("x"),
    ] {
        let response = gate.send(forge(request.clone()));
        assert_eq!(response.status, 200, "{request:?}");
        assert_eq!(response.header("x-upstream"), Some("standard"));
        if !response.body.is_empty() {
            assert_eq!(
                forwarded(&response).identity(),
                identity(&[]),
                "{request:?}"
            );
        }
    }
    // ...but only those: other methods, neighbours and children are not.
    for request in [
        Request::post("/health/context").body("x"),
        Request::new("DELETE", "/health/context"),
        Request::get("/health/context/x"),
        Request::get("/health/contexts"),
        Request::get("/health"),
        Request::get("/.well-knownx"),
    ] {
        denied(&gate.send(request), 401, "missing_token");
    }
    // A public path with an invalid token still passes: no token is needed.
    forwarded(
        &gate.send(Request::get("/health/context").header("authorization", "Bearer garbage")),
    );

    // CORS preflights pass without a token, with forged identity removed.
    let seen = forwarded(
        &gate.send(forge(
            Request::new("OPTIONS", "/v1/contexts/projects/secret")
                .header("origin", "https://app.example")
                .header("access-control-request-method", "DELETE"),
        )),
    );
    assert_eq!(seen.identity(), identity(&[]));
    // An OPTIONS request that is not a preflight needs a token.
    denied(
        &gate.send(
            Request::new("OPTIONS", "/v1/contexts/projects/x")
                .header("origin", "https://app.example"),
        ),
        401,
        "missing_token",
    );

    // Refused requests never reach the upstream, forged or not.
    let response = gate.send(forge(Request::get("/v1/contexts/projects/x")));
    denied(&response, 401, "missing_token");

    assert_eq!(gate.wait_metric("passthrough", 8), 8);
    assert_eq!(gate.metric("allowed"), 2);
    gate.assert_vm_healthy();
}
