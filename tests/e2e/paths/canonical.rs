//! Paths: refused when upstreams could read them differently, otherwise
//! forwarded in the canonical form the decision was made on.

use ctxgate_e2e::Request;
use serde_json::json;

use crate::demo;
use crate::setup::*;
use crate::support::*;

/// Requests that climb out of a public prefix with `..;` towards what the
/// caller may not read. A servlet upstream drops `;...` from each segment
/// before resolving dot segments, so to it `/.well-known/..;/v1/admin` is
/// `/v1/admin`, while a gateway treating `;` as data sees a path below
/// `/.well-known`.
const RAW_PARAMETER_CLIMBS: [&str; 5] = [
    "/.well-known/..;/v1/contexts/projects/secret",
    "/.well-known/..;jsessionid=x/v1/contexts/projects/secret",
    "/.well-known/jwks.json/..;/..;/v1/admin",
    "/.well-known/x/..;/..;/v1/contexts/projects/public/..;/secret",
    "/v1/contexts/projects/public/..;/secret",
];

#[test]
fn dot_dot_semicolon_from_a_public_prefix_is_refused_as_a_path_parameter() {
    let keys = TestKeys::generate();
    let token = caller(&keys);

    // The filter alone: Envoy's path normalization turned off, as a
    // deployment may have it. Every `;` in a segment is a 400, with or
    // without a token, on public and protected paths alike.
    let bare = start(&keys, |config| {
        config
            .hcm_field("normalize_path", json!(false))
            .hcm_field("merge_slashes", json!(false))
    });
    for path in RAW_PARAMETER_CLIMBS.into_iter().chain([
        "/.well-known;x/jwks.json",
        "/health/context;jsessionid=x",
        "/v1/contexts/projects/public;jsessionid=x/notes",
        "/v1/contexts/projects/public/notes;",
    ]) {
        invalid_request(&bare.send(Request::get(path)), "path_parameter");
        invalid_request(&bare.get(path, &token), "path_parameter");
    }
    assert_eq!(bare.wait_metric("denied.path_parameter", 18), 18);
    bare.assert_vm_healthy();

    // Behind Envoy's normalization (the demo's listener settings), `..;`
    // is a dot segment to Envoy already (its canonicalizer ends a dot
    // segment at `;`): the filter sees the resolved path, outside the
    // public prefix, and asks for a token, which does not grant it.
    let gate = start(&keys, |config| config);
    for path in RAW_PARAMETER_CLIMBS {
        denied(&gate.send(Request::get(path)), 401, "missing_token");
        let response = gate.get(path, &token);
        assert_eq!(
            (response.status, answered_by(&response).as_str()),
            (
                403,
                if path.contains("admin") {
                    "unknown_operation"
                } else {
                    "insufficient_scope"
                }
            ),
            "{path}"
        );
    }
    gate.assert_vm_healthy();
}

#[test]
fn an_encoded_semicolon_is_a_path_parameter_too() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let gate = start(&keys, |config| config);
    // `%3B` passes Envoy's normalization untouched; an upstream that
    // decodes before it strips path parameters reads `..;` again.
    let paths = [
        "/.well-known/..%3B/v1/contexts/projects/secret",
        "/.well-known/..%3b/v1/admin",
        "/.well-known/%2e%2e%3B/v1/contexts/projects/secret",
        "/.well-known/jwks.json%3Bx/..%3B/..%3B/v1/admin",
        "/health/context/..%3B/..%3B/v1/contexts/projects/secret",
        "/v1/contexts/projects/public/..%3B/secret",
        "/v1/contexts/projects/public%3Bjsessionid=x",
        "/v1/contexts/projects/public/notes%3b",
        "/v1/contexts/projects%2Fpublic%2F..%3B%2Fsecret",
    ];
    for path in paths {
        invalid_request(&gate.send(Request::get(path)), "path_parameter");
        invalid_request(&gate.get(path, &token), "path_parameter");
        invalid_request(&gate.call("POST", path, &token), "path_parameter");
    }
    assert_eq!(gate.wait_metric("denied.path_parameter", 27), 27);
    assert_eq!(gate.metric("allowed") + gate.metric("passthrough"), 0);
    gate.assert_vm_healthy();
}

#[test]
fn a_post_to_well_known_needs_a_token_even_when_disguised_as_a_get() {
    let keys = TestKeys::generate();
    // The demo's own public paths.
    let mut config = gate_config(&keys);
    config["public_paths"] = demo::auth_config(&demo::hcm())["public_paths"].clone();
    let gate = Gate::start(config);

    // Reading is public, on the canonical path.
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/x/../jwks.json",
        "/.well-known/x%2F..%2Fjwks.json",
        "/.well-known",
    ] {
        for method in ["GET", "HEAD"] {
            let response = gate.send(Request::new(method, path));
            assert_eq!(
                (response.status, answered_by(&response)),
                (200, "upstream".to_owned()),
                "{method} {path}"
            );
        }
    }
    // Anything else needs a token, whatever the path's spelling.
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known",
        "/.well-known/x/../jwks.json",
        "/.well-known/x%2F..%2Fjwks.json",
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let response = gate.send(Request::new(method, path).body("{}"));
            denied(&response, 401, "missing_token");
        }
    }
    // A GET that asks the upstream framework to treat it as a POST (or any
    // other method) is refused before it can pass as a public read.
    let path = "/.well-known/jwks.json";
    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        for method in ["POST", "DELETE", "put"] {
            let response = gate.send(Request::get(path).header(header, method));
            invalid_request(&response, "method_override");
        }
    }
    for query in [
        "_method=POST",
        "_method=delete",
        "%5Fmethod=PUT",
        "_METHOD=PATCH",
    ] {
        let response = gate.send(Request::get(format!("{path}?{query}")));
        invalid_request(&response, "method_override");
    }
    // Naming the request's own method is no override.
    let seen =
        forwarded(&gate.send(
            Request::get(format!("{path}?_method=GET")).header("x-http-method-override", "get"),
        ));
    assert_eq!(seen.path(), format!("{path}?_method=GET"));
    assert_eq!(gate.wait_metric("denied.method_override", 13), 13);
    gate.assert_vm_healthy();
}

#[test]
fn the_upstream_receives_the_canonical_path_it_was_authorised_on_with_the_query_kept() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let gate = start(&keys, |config| config);

    // (method, path as sent, path and query the upstream must receive,
    // operation, context)
    let cases = [
        // Encoded slashes are separators, forwarded as such.
        (
            "GET",
            "/v1/contexts/projects%2Fpublic%2Fnotes?x=1",
            "/v1/contexts/projects/public/notes?x=1",
            "read",
            "projects/public/notes",
        ),
        (
            "GET",
            "/v1/contexts/projects%2fpublic%2Fold%2F..%2Fnotes",
            "/v1/contexts/projects/public/notes",
            "read",
            "projects/public/notes",
        ),
        // Template literals in their configured spelling, contexts lowercased.
        (
            "GET",
            "/V1/CONTEXTS/projects/public?limit=5&sort=name",
            "/v1/contexts/projects/public?limit=5&sort=name",
            "read",
            "projects/public",
        ),
        (
            "GET",
            "/v1/Contexts/PROJECTS/Public/Notes?x=1",
            "/v1/contexts/projects/public/notes?x=1",
            "read",
            "projects/public/notes",
        ),
        // Dot segments hidden from Envoy behind `%2F`, resolved.
        (
            "GET",
            "/v1/contexts/projects/public%2Fnotes%2F%2E%2E%2Fdrafts?b=2&a=1",
            "/v1/contexts/projects/public/drafts?b=2&a=1",
            "read",
            "projects/public/drafts",
        ),
        // Empty segments, `.` and a trailing slash.
        (
            "GET",
            "/v1//contexts/./projects/public/",
            "/v1/contexts/projects/public",
            "read",
            "projects/public",
        ),
        (
            "PUT",
            "/V1/contexts/Projects/Public/Drafts%2Fpost-1?draft=true",
            "/v1/contexts/projects/public/drafts/post-1?draft=true",
            "write",
            "projects/public/drafts/post-1",
        ),
        // A canonical request is forwarded as it came.
        (
            "GET",
            "/v1/contexts/projects/public/notes?x=1&x=2",
            "/v1/contexts/projects/public/notes?x=1&x=2",
            "read",
            "projects/public/notes",
        ),
    ];
    for (method, path, expected, operation, context) in cases {
        let seen = forwarded(&gate.call(method, path, &token));
        assert_eq!(seen.path(), expected, "{method} {path}");
        assert_eq!(seen.0["method"], method);
        assert_eq!(
            seen.identity(),
            default_identity(SCOPES_HEADER, operation, context),
            "{method} {path}"
        );
    }

    // Public paths too: the upstream serves the path that was public.
    for (path, expected) in [
        (
            "/.well-known/x%2F..%2Fjwks.json?v=1",
            "/.well-known/jwks.json?v=1",
        ),
        ("/.well-known/%2Fjwks.json", "/.well-known/jwks.json"),
        ("/health//context/?verbose=1", "/health/context?verbose=1"),
        (
            "/health/context/x%2F..?verbose=1",
            "/health/context?verbose=1",
        ),
    ] {
        let seen = forwarded(&gate.send(Request::get(path)));
        assert_eq!(seen.path(), expected, "{path}");
        assert_eq!(seen.identity(), identity(&[]), "{path}");
    }
    gate.assert_vm_healthy();
}
