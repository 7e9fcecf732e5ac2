//! Method overrides: headers and parameters that make upstream frameworks
//! treat a request as another method than the one the gateway authorised.

use ctxgate_e2e::Request;
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
