//! Smoke tests of the harness itself: Envoy starts with the auth module,
//! serves direct responses and proxies to an in-process upstream, reports
//! stats, rejects a broken module, and is gone after drop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use ctxgate_e2e::{
    Client, Cluster, Envoy, EnvoyConfig, Request, Route, ScriptedServer, WasmFilter,
    filter_log_prefix, process_alive,
};
use serde_json::json;

/// The smallest valid auth configuration, with every path public: these
/// tests exercise the harness, not the filter (see `auth.rs`).
fn passthrough() -> serde_json::Value {
    json!({
        "providers": [{
            "name": "smoke",
            "issuer": "https://smoke.invalid",
            "jwks": {"inline": {"keys": [
                {"kty": "oct", "kid": "k", "alg": "HS256", "k": "c21va2Utc21va2Utc21va2Utc21va2Utc21va2Utc21va2U"}
            ]}},
        }],
        "public_paths": [{"prefix": "/"}],
    })
}

fn auth_config(upstream: &ScriptedServer) -> EnvoyConfig {
    EnvoyConfig::new()
        .filter(WasmFilter::single("auth", passthrough()))
        .route(Route::path("/direct").direct(200, "direct ok"))
        .route(Route::prefix("/").cluster("upstream"))
        .cluster(Cluster::new("upstream", [upstream.addr()]))
}

#[test]
fn it_serves_direct_responses_and_proxies_through_the_wasm_filter() {
    let upstream = ScriptedServer::start();
    upstream.set_response(200, &[("x-upstream", "1")], "from upstream");
    let envoy = Envoy::start(&auth_config(&upstream));

    let direct = Request::get("/direct").send(envoy.listener_addr());
    assert_eq!(direct.status, 200);
    assert_eq!(direct.text(), "direct ok");

    let proxied = Request::get("/api/things?x=1").send(envoy.listener_addr());
    assert_eq!(proxied.status, 200);
    assert_eq!(proxied.text(), "from upstream");
    assert_eq!(proxied.header("x-upstream"), Some("1"));

    assert_eq!(upstream.hits(), 1);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/api/things?x=1");
    assert_eq!(
        envoy.wait_for_metric("ctxgate_auth.passthrough", 2),
        2,
        "both requests went through the wasm filter"
    );

    assert!(envoy.wait_for_log(
        &format!(
            "{}auth: 1 provider(s): smoke",
            filter_log_prefix("ctxgate_auth")
        ),
        Duration::from_secs(5)
    ));
    assert_eq!(
        envoy.wait_for_counter("http.ingress.downstream_rq_2xx", 2),
        2
    );
    assert!(envoy.prometheus().contains("envoy_http_downstream_rq_xx"));

    let pid = envoy.pid();
    assert!(process_alive(pid));
    drop(envoy);
    assert!(!process_alive(pid), "envoy {pid} still running after drop");
}

#[test]
fn two_envoys_run_side_by_side() {
    let upstream = ScriptedServer::start();
    let first = Envoy::start(&auth_config(&upstream));
    let second = Envoy::start(&auth_config(&upstream));
    assert_ne!(first.listener_addr(), second.listener_addr());
    assert_ne!(first.admin_addr(), second.admin_addr());

    for envoy in [&first, &second] {
        let mut client = Client::connect(envoy.listener_addr());
        for _ in 0..5 {
            assert_eq!(client.send(&Request::get("/direct")).status, 200);
            assert_eq!(client.send(&Request::get("/up")).status, 200);
        }
        assert_eq!(client.reconnects(), 0);
    }
    assert_eq!(upstream.hits(), 10);

    let pids = [first.pid(), second.pid()];
    drop(first);
    drop(second);
    for pid in pids {
        assert!(!process_alive(pid), "envoy {pid} still running after drop");
    }
}

#[test]
fn upstream_failures_and_delays_reach_the_client() {
    let upstream = ScriptedServer::start();
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .filter(WasmFilter::single("auth", passthrough()))
            .route(
                Route::prefix("/slow").cluster_with_timeout("upstream", Duration::from_millis(200)),
            )
            .route(Route::prefix("/").cluster("upstream"))
            .cluster(Cluster::new("upstream", [upstream.addr()]).http2(true)),
    );

    upstream.set_json(503, &json!({"error": "down"}));
    let down = Request::get("/").send(envoy.listener_addr());
    assert_eq!(down.status, 503);
    assert_eq!(down.json()["error"], "down");

    upstream.set_delay(Duration::from_secs(1));
    let slow = Request::get("/slow").send(envoy.listener_addr());
    assert_eq!(slow.status, 504);
    assert_eq!(
        envoy.wait_for_counter("cluster.upstream.upstream_rq_timeout", 1),
        1
    );
}

#[test]
fn a_module_that_is_not_wasm_is_rejected_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"not a wasm module").unwrap();
    let log = Envoy::start_expect_failure(
        &EnvoyConfig::new()
            .filter(WasmFilter::new(broken.to_str().unwrap()))
            .route(Route::prefix("/").direct(200, "unreachable")),
    );
    assert!(
        log.contains("Unable to create Wasm plugin broken"),
        "unexpected log:\n{log}"
    );
}
