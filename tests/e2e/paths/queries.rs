//! Queries: read the way the most lenient upstream reads them, refused when
//! a parameter the gateway decides on could be read twice, and forwarded in
//! the one spelling the gateway read.

use ctxgate_core::query::Query;
use ctxgate_e2e::Request;

use crate::setup::*;
use crate::support::*;

const ENDPOINTS: [(&str, &str); 2] = [
    ("/v1/query", "complex_query"),
    ("/v1/graph/traverse", "graph_traversal"),
];

#[test]
fn a_parameter_the_gateway_reads_is_refused_when_given_twice_under_any_spelling() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let gate = start(&keys, |config| config);

    // An upstream may take the first or the last `context`, and may decode
    // or case-fold the key: each of these names two contexts to someone.
    let repeated = [
        "context=projects/public&%63ontext=projects/secret",
        "context=projects/public&context=projects/public",
        "%63ontext=projects/secret&context=projects/public",
        "context=projects/public&CONTEXT=projects/secret",
        "Context=projects/secret&context=projects/public",
        "context=projects/public;context=projects/secret",
        "context=projects/public&c%6Fntext=projects/secret",
        "context=projects/public&%43%4F%4E%54%45%58%54=projects/secret",
        "context=projects/public&&context",
        "x=1;Context=projects/secret&context=projects/public",
    ];
    for (endpoint, _) in ENDPOINTS {
        for query in repeated {
            let target = format!("{endpoint}?{query}");
            invalid_request(&gate.call("POST", &target, &token), "repeated_parameter");
        }
    }
    // The method override parameter is read too.
    for query in [
        "_method=GET&_method=DELETE",
        "_method=GET&%5Fmethod=DELETE",
        "_method=GET;_METHOD=GET",
    ] {
        let target = format!("/v1/contexts/projects/public?{query}");
        invalid_request(&gate.get(&target, &token), "repeated_parameter");
    }
    // Parameters the gateway does not read may repeat, and are forwarded
    // as they came.
    let target = "/v1/query?context=projects/public&tag=a&tag=b&TAG=c";
    let seen = forwarded(&gate.call("POST", target, &token));
    assert_eq!(seen.path(), target);
    assert_eq!(gate.wait_metric("denied.repeated_parameter", 23), 23);
    gate.assert_vm_healthy();
}

#[test]
fn query_keys_are_read_decoded_and_the_upstream_gets_the_query_the_gateway_read() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let gate = start(&keys, |config| config);

    // (query as sent, query the upstream must receive, context decided on)
    let cases = [
        (
            "%63ontext=projects/public",
            "context=projects/public",
            "projects/public",
        ),
        (
            "c%6Fntext=Projects%2FPublic%2FNotes",
            "context=projects/public/notes",
            "projects/public/notes",
        ),
        (
            "CONTEXT=projects/public&limit=5",
            "context=projects/public&limit=5",
            "projects/public",
        ),
        (
            "limit=5;context=projects/public;depth=2",
            "limit=5&context=projects/public&depth=2",
            "projects/public",
        ),
        (
            "context=projects/public&q=a+b&r=c%2Bd",
            "context=projects/public&q=a%20b&r=c%2Bd",
            "projects/public",
        ),
        (
            "context=projects/public/notes+2",
            "context=projects/public/notes%202",
            "projects/public/notes 2",
        ),
        (
            "context=projects/public&q=caf%c3%a9&x=%7e&&",
            "context=projects/public&q=caf%C3%A9&x=~",
            "projects/public",
        ),
        (
            "context=projects/public/drafts/../notes&%61%62=1",
            "context=projects/public/notes&ab=1",
            "projects/public/notes",
        ),
    ];
    for (endpoint, operation) in ENDPOINTS {
        for (query, expected, context) in cases {
            let target = format!("{endpoint}?{query}");
            let seen = forwarded(&gate.call("POST", &target, &token));
            assert_eq!(seen.path(), format!("{endpoint}?{expected}"), "{target}");
            assert_eq!(
                seen.identity(),
                default_identity(SCOPES_HEADER, operation, context),
                "{target}"
            );
            assert_canonical(expected);
        }
    }

    // Queries the gateway does not read are normalised the same way on
    // every path it forwards: protected and public alike.
    for (path, expected) in [
        (
            "/v1/contexts/projects/public?a=1;b=2",
            "/v1/contexts/projects/public?a=1&b=2",
        ),
        (
            "/v1/contexts/projects/public?q=a+b&%61=%41",
            "/v1/contexts/projects/public?q=a%20b&a=A",
        ),
        (
            "/v1/contexts/projects/public?flag&&x=",
            "/v1/contexts/projects/public?flag&x=",
        ),
        ("/health/context?verbose;x=1", "/health/context?verbose&x=1"),
        (
            "/.well-known/jwks.json?kid=a+b",
            "/.well-known/jwks.json?kid=a%20b",
        ),
    ] {
        let response = if path.starts_with("/v1/") {
            gate.get(path, &token)
        } else {
            gate.send(Request::get(path))
        };
        assert_eq!(forwarded(&response).path(), expected, "{path}");
    }
    gate.assert_vm_healthy();
}

/// The gateway's own parser reads `query` back unchanged.
#[track_caller]
fn assert_canonical(query: &str) {
    assert_eq!(Query::parse(query).unwrap().serialize(), query);
}
