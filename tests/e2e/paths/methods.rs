//! Method overrides: headers and parameters that make upstream frameworks
//! treat a request as another method than the one the gateway authorised.

use ctxgate_e2e::{Request, Route, send_raw};
use serde_json::json;

use crate::setup::*;
use crate::support::*;

/// The filter's default override headers.
const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

#[test]
fn a_method_override_naming_another_method_is_refused() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let gate = start(&keys, |config| config);
    let read = "/v1/contexts/projects/public";
    let write = "/v1/contexts/projects/public/drafts/post";

    let mut refused = 0;
    let mut refuse = |request: Request| {
        invalid_request(&gate.send(request), "method_override");
        refused += 1;
    };
    for header in OVERRIDE_HEADERS {
        // A read that the upstream would run as a write or a delete, and a
        // write the upstream would run as a delete (admin, not granted).
        for method in ["DELETE", "PUT", "post", " Patch "] {
            refuse(Request::get(read).bearer(&token).header(header, method));
        }
        refuse(
            Request::new("PUT", write)
                .bearer(&token)
                .header(header, "DELETE")
                .body("{}"),
        );
        // Before any token is looked at.
        refuse(Request::get(read).header(header, "DELETE"));
        // Sent twice (Envoy joins them), or as a list.
        refuse(
            Request::get(read)
                .bearer(&token)
                .header(header, "GET")
                .header(header, "DELETE"),
        );
        refuse(
            Request::get(read)
                .bearer(&token)
                .header(header, "GET, DELETE"),
        );
    }
    for query in [
        "_method=DELETE",
        "_method=put",
        "%5Fmethod=DELETE",
        "_METHOD=DELETE",
        "x=1;_method=DELETE",
        "_method=+DELETE+",
    ] {
        refuse(Request::get(format!("{read}?{query}")).bearer(&token));
    }
    assert_eq!(gate.wait_metric("denied.method_override", refused), refused);

    // An override naming the request's own method changes nothing: it is
    // forwarded, and the request is decided as what it is.
    for header in OVERRIDE_HEADERS {
        let seen = forwarded(&gate.send(Request::get(read).bearer(&token).header(header, "get")));
        assert_eq!(seen.header(header).as_deref(), Some("get"));
        assert_eq!(seen.header("x-context-operation").as_deref(), Some("read"));
    }
    let seen = forwarded(
        &gate.send(
            Request::new("PUT", format!("{write}?_method=PUT"))
                .bearer(&token)
                .body("{}"),
        ),
    );
    assert_eq!(seen.path(), format!("{write}?_method=PUT"));
    assert_eq!(seen.header("x-context-operation").as_deref(), Some("write"));
    gate.assert_vm_healthy();
}

#[test]
fn a_custom_method_override_list_replaces_the_default_one() {
    let keys = TestKeys::generate();
    let token = caller(&keys);
    let mut config = gate_config(&keys);
    config["method_override_headers"] = json!(["x-verb"]);
    config["method_override_params"] = json!(["verb"]);
    let gate = Gate::start(config);
    let read = "/v1/contexts/projects/public";

    // The configured names are refused when they name another method...
    for request in [
        Request::get(read).bearer(&token).header("x-verb", "DELETE"),
        Request::get(read).bearer(&token).header("X-Verb", "put"),
        Request::get(format!("{read}?verb=DELETE")).bearer(&token),
        Request::get(format!("{read}?VERB=delete")).bearer(&token),
        Request::get(format!("{read}?v%65rb=PATCH")).bearer(&token),
        Request::get("/.well-known/jwks.json").header("x-verb", "POST"),
    ] {
        invalid_request(&gate.send(request), "method_override");
    }
    // ...and read once, like every parameter the gateway reads.
    invalid_request(
        &gate.get(&format!("{read}?verb=GET&Verb=GET"), &token),
        "repeated_parameter",
    );
    // The defaults are no longer special: forwarded as they came.
    let seen = forwarded(
        &gate.send(
            Request::get(format!("{read}?_method=DELETE"))
                .bearer(&token)
                .header("x-http-method-override", "DELETE"),
        ),
    );
    assert_eq!(seen.path(), format!("{read}?_method=DELETE"));
    assert_eq!(
        seen.header("x-http-method-override").as_deref(),
        Some("DELETE")
    );
    // The own method passes.
    let seen = forwarded(
        &gate.send(
            Request::get(format!("{read}?verb=GET"))
                .bearer(&token)
                .header("x-verb", "GET"),
        ),
    );
    assert_eq!(seen.path(), format!("{read}?verb=GET"));
    assert_eq!(gate.wait_metric("denied.method_override", 6), 6);
    gate.assert_vm_healthy();
}

/// A CONNECT tunnel has no `:path`: nothing the gateway decides on. It is
/// refused before any stage (400 `incomplete_head`), even where every path
/// is public and the listener and route accept CONNECT, never decided as a
/// request for `/`.
#[test]
fn a_connect_tunnel_is_refused_before_any_stage() {
    let keys = TestKeys::generate();
    let mut config = gate_config(&keys);
    config["public_paths"] = json!([{"prefix": "/"}]);
    let gate = Gate::start_with(config, |envoy| {
        envoy
            .hcm_field("upgrade_configs", json!([{"upgrade_type": "CONNECT"}]))
            .route(Route::raw(json!({
                "match": {"connect_matcher": {}},
                "route": {
                    "cluster": "upstream",
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                },
            })))
    });
    let token = caller(&keys);
    for raw in [
        "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\n\r\n".to_owned(),
        format!(
            "CONNECT db.internal:5432 HTTP/1.1\r\nhost: db.internal:5432\r\nauthorization: Bearer {token}\r\n\r\n"
        ),
    ] {
        let response = send_raw(gate.addr(), raw.as_bytes());
        assert_eq!(
            (response.status, answered_by(&response)),
            (400, "incomplete_head".to_owned()),
            "headers {:?} body {:?}",
            response.headers,
            response.text()
        );
        assert_eq!(response.json()["error"], "invalid_request");
    }
    assert_eq!(
        gate.envoy
            .wait_for_metric("ctxgate_request.refused.incomplete_head", 2),
        2
    );
    for counter in [
        "passthrough",
        "allowed",
        "denied.missing_token",
        "denied.invalid_path",
    ] {
        assert_eq!(gate.metric(counter), 0, "{counter}: no stage saw them");
    }
    // The public paths still pass.
    forwarded(&gate.send(Request::get("/anything")));
    gate.assert_vm_healthy();
}
