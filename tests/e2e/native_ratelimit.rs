//! `ctxgate-rls` against a client the project did not write: Envoy's own
//! rate-limit filter (`envoy.filters.http.ratelimit`, 1.40) calling it
//! over the Rate Limit Service API, with descriptors built from request
//! headers, a request cost sent as `hits_addend`, and a limits file in
//! envoyproxy/ratelimit's format (nested descriptors, a value-specific
//! override).
//!
//! The rate limits are the filter's own `rate_limits`: Envoy 1.40 takes a
//! `hits_addend` from there, while the same limits on the virtual host
//! reached the RLS with a cost of 1 (measured while writing this test).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, RawFilter, Request, Response, Rls, ScriptedServer, fresh_minute,
};
use serde_json::json;

/// 10 units a minute per tenant, 30 for globex; MCP `write_context` calls
/// 4 a minute per tenant on top.
const LIMITS: &str = "domain: ctxgate
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10}
    descriptors:
      - key: mcp_tool
        value: write_context
        rate_limit: {unit: minute, requests_per_unit: 4}
  - key: tenant
    value: globex
    rate_limit: {unit: minute, requests_per_unit: 30}
";

/// The gateway, and the upstream it forwards to (Envoy's filter asks the
/// RLS only on a route to a cluster, not on a direct response).
fn gateway(rls: &Rls) -> (Envoy, ScriptedServer) {
    let upstream = ScriptedServer::start();
    let rate_limits = json!([
        {"actions": [{"request_headers": {"header_name": "x-tenant", "descriptor_key": "tenant"}}],
         "hits_addend": {"format": "%REQ(x-cost)%"}},
        {"actions": [
            {"request_headers": {"header_name": "x-tenant", "descriptor_key": "tenant"}},
            {"request_headers": {"header_name": "x-mcp-tool", "descriptor_key": "mcp_tool"}},
        ],
         "hits_addend": {"format": "%REQ(x-cost)%"}},
    ]);
    let filter = json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "ctxgate",
            "rate_limits": rate_limits,
            "failure_mode_deny": true,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "ctxgate_rls"}, "timeout": "1s"},
            },
        },
    });
    // Two descriptors per request: [tenant] and, for an MCP tool call,
    // [tenant, mcp_tool]; the request's cost (x-cost) is the hits_addend.
    let config = EnvoyConfig::new()
        .filter(RawFilter(filter))
        .cluster(rls.cluster("ctxgate_rls"))
        .cluster(Cluster::new("upstream", [upstream.addr()]))
        .hcm_field(
            "route_config",
            json!({"name": "local", "virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
            }]}),
        );
    (Envoy::start(&config), upstream)
}

fn send(envoy: &Envoy, tenant: &str, cost: u32, tool: Option<&str>) -> Response {
    let mut request = Request::get("/v1/contexts/projects/a")
        .header("x-tenant", tenant)
        .header("x-cost", &cost.to_string());
    if let Some(tool) = tool {
        request = request.header("x-mcp-tool", tool);
    }
    request.send(envoy.listener_addr())
}

#[test]
fn envoy_s_own_ratelimit_filter_is_limited_by_ctxgate_rls_with_costs_and_nested_descriptors() {
    let rls = Rls::start(LIMITS, None);
    let (envoy, upstream) = gateway(&rls);
    fresh_minute(Duration::from_secs(5));

    // acme: 10 a minute; three requests of cost 3 are 9 units.
    for remaining in [7, 4, 1] {
        let response = send(&envoy, "acme", 3, None).expect_status(200);
        assert_eq!(
            response.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str()),
            "{response:?}"
        );
        assert_eq!(
            response.header("x-ratelimit-limit"),
            Some("10, 10;w=60"),
            "{response:?}"
        );
    }
    // A fourth of cost 3 would be 12: refused, and Envoy says why. As in
    // envoyproxy/ratelimit, a refused request counts too, so the tenant
    // stays limited for the rest of the window.
    let refused = send(&envoy, "acme", 3, None).expect_status(429);
    assert_eq!(refused.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    send(&envoy, "acme", 1, None).expect_status(429);

    // globex has its own, larger limit (the value-specific entry).
    for _ in 0..3 {
        send(&envoy, "globex", 9, None).expect_status(200);
    }
    send(&envoy, "globex", 9, None).expect_status(429);

    // initech: the nested MCP tool limit (4) binds before the tenant's
    // (10); both descriptors count each call.
    send(&envoy, "initech", 2, Some("write_context")).expect_status(200);
    send(&envoy, "initech", 2, Some("write_context")).expect_status(200);
    // The header names the tightest limit first, then each descriptor's.
    let refused = send(&envoy, "initech", 2, Some("write_context")).expect_status(429);
    assert_eq!(
        refused.header("x-ratelimit-limit"),
        Some("4, 10;w=60, 4;w=60")
    );
    // Other tools count against the tenant only: 6 used, 4 left.
    send(&envoy, "initech", 4, Some("read_context")).expect_status(200);
    send(&envoy, "initech", 1, Some("read_context")).expect_status(429);

    // Only the admitted requests reached the upstream.
    assert_eq!(upstream.hits(), 3 + 3 + 2 + 1);
}

#[test]
fn an_unreachable_rls_is_the_filter_s_failure_mode() {
    let mut rls = Rls::start(LIMITS, None);
    let (envoy, _upstream) = gateway(&rls);
    fresh_minute(Duration::from_secs(5));
    send(&envoy, "acme", 1, None).expect_status(200);
    rls.stop();
    // failure_mode_deny: Envoy refuses when it cannot ask.
    let response = send(&envoy, "acme", 1, None);
    assert_eq!(response.status, 500, "{response:?}");
    rls.restart();
    ctxgate_e2e::eventually(Duration::from_secs(10), || {
        send(&envoy, "acme", 1, None).status == 200
    });
    send(&envoy, "acme", 1, None).expect_status(200);
}
