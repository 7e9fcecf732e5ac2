//! CORS preflights: the one request that passes without a token. It must
//! not carry a body to the upstream, nor a path the upstream reads another
//! way; in the demo, Envoy's CORS filter answers every preflight itself.

use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{Cluster, Envoy, EnvoyConfig, RawFilter, Request, Response, Route, WasmFilter};
use serde_json::{Value, json};

use crate::demo;
use crate::setup::*;
use crate::support::*;

/// An OPTIONS request with `Origin` and `Access-Control-Request-Method`.
fn preflight(path: &str, origin: &str) -> Request {
    Request::new("OPTIONS", path)
        .header("origin", origin)
        .header("access-control-request-method", "DELETE")
        .header("access-control-request-headers", "authorization")
}

#[test]
fn a_preflight_with_a_body_is_refused_and_one_without_reaches_the_upstream_canonical() {
    let keys = TestKeys::generate();
    let gate = start(&keys, |config| config);
    let origin = "https://app.example";
    let path = "/v1/contexts/projects/secret";

    // A body on a request that needs no token would be an unauthenticated
    // upload: refused, whatever its framing.
    for request in [
        preflight(path, origin).body("{\"drop\": \"everything\"}"),
        preflight(path, origin).chunked(b"{\"drop\": \"everything\"}", 5),
        preflight("/.well-known/jwks.json", origin).chunked(b"x", 1),
    ] {
        invalid_request(&gate.send(request), "preflight_with_body");
    }
    // A path the upstream could read another way is refused as for any
    // request.
    invalid_request(
        &gate.send(preflight("/.well-known/..%3B/v1/admin", origin)),
        "path_parameter",
    );

    // Without a body (or with an empty one) it passes, and the upstream
    // receives the canonical path and query, and no forged identity.
    for (sent, expected) in [
        (
            "/v1/contexts/projects/public%2F..%2Fsecret?x=1;y=2",
            "/v1/contexts/projects/secret?x=1&y=2",
        ),
        ("/v1//contexts/./projects/x/", "/v1/contexts/projects/x"),
        (
            "/v1/contexts/projects%2fx%2F%2E%2E%2Fy",
            "/v1/contexts/projects/y",
        ),
    ] {
        let seen =
            forwarded(&gate.send(preflight(sent, origin).header("x-context-tenant", "evil")));
        assert_eq!(seen.path(), expected, "{sent}");
        assert_eq!(seen.0["method"], "OPTIONS");
        assert_eq!(seen.0["body_bytes"], 0);
        assert_eq!(seen.identity(), identity(&[]), "{sent}");
    }
    let seen = forwarded(&gate.send(preflight(path, origin).body("")));
    assert_eq!(seen.path(), path);
    assert_eq!(gate.wait_metric("denied.preflight_with_body", 3), 3);
    gate.assert_vm_healthy();
}

/// Envoy with the demo's arrangement: the CORS filter before the auth
/// filter, the demo's CORS policy on the virtual host, the demo echo
/// upstream as cluster `upstream`.
struct BehindCors {
    envoy: Envoy,
    _upstream: ShutdownHandle,
}

impl BehindCors {
    fn start(policy: Value, plugin_config: Value) -> BehindCors {
        let (upstream_addr, upstream) =
            ctxgate_demo::spawn_in_thread("127.0.0.1:0", "standard").unwrap();
        let config = EnvoyConfig::new()
            .filter(RawFilter(json!({
                "name": "envoy.filters.http.cors",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
                }
            })))
            .filter(WasmFilter::single("auth", plugin_config))
            .route(Route::prefix("/").cluster("upstream"))
            .cluster(Cluster::new("upstream", [upstream_addr]));
        // The builder has one virtual host and no field for its filter
        // configs: render its route_config and set it again with the policy.
        let mut route_config =
            config.to_json()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["route_config"]
                .clone();
        route_config["virtual_hosts"][0]["typed_per_filter_config"] =
            json!({ "envoy.filters.http.cors": policy });
        let config = config.hcm_field("route_config", route_config);
        BehindCors {
            envoy: Envoy::start(&config),
            _upstream: upstream,
        }
    }

    fn send(&self, request: Request) -> Response {
        request.send(self.envoy.listener_addr())
    }

    /// Requests the upstream cluster has received.
    fn upstream_requests(&self) -> u64 {
        self.envoy.counter("cluster.upstream.upstream_rq_total")
    }
}

#[test]
fn envoys_cors_filter_answers_every_preflight_so_none_reaches_the_upstream() {
    let hcm = demo::hcm();
    let policy = demo::cors_policy(&hcm).expect("the demo virtual host has a CORS policy");
    let allowed_origin = policy["allow_origin_string_match"][0]["exact"]
        .as_str()
        .expect("the demo allows one exact origin")
        .to_owned();
    let keys = TestKeys::generate();
    let front = BehindCors::start(policy, gate_config(&keys));

    // Preflights for the allowed origin and for any other, with and without
    // bodies, on canonical and hostile paths: Envoy answers them all.
    let mut preflights = 0;
    for origin in [allowed_origin.as_str(), "https://evil.example", "null"] {
        for path in [
            "/v1/contexts/projects/secret",
            "/.well-known/..%3B/v1/admin",
            "/v1/contexts/projects/public%2F..%2Fsecret",
        ] {
            for request in [
                preflight(path, origin),
                preflight(path, origin).body("{\"drop\": 1}"),
                preflight(path, origin).chunked(b"{\"drop\": 1}", 4),
            ] {
                let response = front.send(request);
                preflights += 1;
                assert_eq!(
                    (response.status, response.header("x-upstream")),
                    (200, None),
                    "{origin} {path}: headers {:?} body {:?}",
                    response.headers,
                    response.text()
                );
                let allow_origin = response.header("access-control-allow-origin");
                if origin == allowed_origin {
                    assert_eq!(allow_origin, Some(origin), "{path}");
                    let methods = response.header("access-control-allow-methods").unwrap();
                    assert!(methods.contains("DELETE"), "{methods}");
                } else {
                    assert_eq!(allow_origin, None, "{origin} {path}");
                }
            }
        }
    }
    assert_eq!(preflights, 27);
    assert_eq!(
        front.upstream_requests(),
        0,
        "a preflight reached the upstream"
    );

    // The actual requests still go through the auth filter, and answers to
    // the allowed origin carry the CORS headers.
    let token = caller(&keys);
    let response = front.send(
        Request::get("/v1/contexts/projects/public")
            .bearer(&token)
            .header("origin", &allowed_origin),
    );
    forwarded(&response);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some(allowed_origin.as_str())
    );
    denied(
        &front.send(Request::get("/v1/contexts/projects/public").header("origin", &allowed_origin)),
        401,
        "missing_token",
    );
    assert_eq!(
        front
            .envoy
            .wait_for_counter("cluster.upstream.upstream_rq_total", 1),
        1
    );
    assert_vm_healthy(&front.envoy);
}
