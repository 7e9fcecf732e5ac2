//! What every rate-limit test needs: tokens, the auth and rate-limit
//! plugin configurations, a gateway in front of an upstream, the requests
//! the suite sends (a read costs 1, a graph traversal 10), and the filter's
//! metrics and `x-ratelimit-*` headers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, Request, Response, Route, WasmFilter, demo_idp, metric_prefix,
};
use serde_json::{Value, json};

/// A read (cost 1).
pub const READ: &str = "/v1/contexts/projects/a";
/// A graph traversal (cost 10).
pub const GRAPH: &str = "/v1/graph/traverse?context=projects/a";

/// An HS256 token of `user-1` at `tenant`, with every right on
/// `projects/*` and these extra claims (`rate_limits`).
pub fn token(tenant: &str, extra: Value) -> String {
    demo_idp::hs256_token(tenant, "user-1", &extra)
}

/// Anonymous requests (no token) pass the auth filter under this prefix;
/// the rate limiter keys them by client address.
pub const PUBLIC: &str = "/public/info";

/// The auth stage: the demo provider, the suite's three operations, and
/// [`PUBLIC`].
pub fn auth_stage() -> Value {
    json!({
        "providers": [demo_idp::hs256_provider()],
        "public_paths": [{"prefix": "/public"}],
        "operations": [
            {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT", "POST", "PATCH"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"},
        ],
    })
}

/// One ctxgate plugin: the auth stage, then the rate-limit stage with
/// `config`.
pub fn ratelimit(config: Value) -> WasmFilter {
    WasmFilter::ctxgate("ctxgate")
        .stage("auth", auth_stage())
        .stage("ratelimit", config)
}

/// A ctxgate plugin with the rate-limit stage alone: every request is
/// anonymous to it.
pub fn ratelimit_only(config: Value) -> WasmFilter {
    WasmFilter::single("ratelimit", config)
}

/// A limit that does not refill noticeably during a test: `capacity`
/// read-equivalents, refilled at 100 per 31 days (0.04 milli-tokens/s).
pub fn monthly(capacity: u64) -> Value {
    json!([{"name": "monthly", "limit": 100, "window_seconds": 2_678_400, "burst": capacity}])
}

pub fn per(name: &str, limit: u64, window_seconds: u64) -> Value {
    json!([{"name": name, "limit": limit, "window_seconds": window_seconds}])
}

/// `tiers` with `standard` (the default tier) as given and a small
/// `anonymous` tier (the config requires both).
pub fn tiers(standard: Value) -> Value {
    json!({"standard": standard, "anonymous": per("per_minute", 60, 60)})
}

/// ctxgate (auth, ratelimit) -> router to `upstream`.
pub fn gateway(ratelimit_config: Value, upstream: SocketAddr) -> EnvoyConfig {
    EnvoyConfig::new()
        .filter(ratelimit(ratelimit_config))
        .route(Route::prefix("/").cluster("backend"))
        .cluster(Cluster::new("backend", [upstream]))
}

/// The demo echo upstream (honours `x-demo-delay-ms`, echoes headers).
pub fn echo_upstream() -> (SocketAddr, ShutdownHandle) {
    ctxgate_demo::upstream::spawn_in_thread("127.0.0.1:0", "backend").unwrap()
}

pub fn read(token: &str) -> Request {
    Request::get(READ).bearer(token)
}

pub fn graph(token: &str) -> Request {
    Request::post(GRAPH).bearer(token).body("{}")
}

/// A write of `bytes` bytes of payload (cost 2 times the payload band).
pub fn write(token: &str, bytes: usize) -> Request {
    Request::new("PUT", READ)
        .bearer(token)
        .body(vec![b'x'; bytes])
}

/// `ctxgate_ratelimit.<name>`.
pub fn metric(envoy: &Envoy, name: &str) -> u64 {
    envoy.wasm_metric(&format!("ctxgate_ratelimit.{name}"))
}

/// Every rate-limit metric with a value, for messages and output.
pub fn metrics(envoy: &Envoy) -> BTreeMap<String, u64> {
    let prefix = format!("{}ctxgate_ratelimit.", metric_prefix());
    envoy
        .stats_matching(&format!("^{}", prefix.replace('.', r"\.")))
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| (k.trim_start_matches(&prefix).to_owned(), v))
        .collect()
}

#[track_caller]
pub fn remaining(response: &Response) -> u64 {
    response
        .header("x-ratelimit-remaining")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no x-ratelimit-remaining: {} {:?} {:?}",
                response.status,
                response.headers,
                response.text()
            )
        })
}

#[track_caller]
pub fn ok(response: Response) -> Response {
    response.expect_status(200)
}

/// A distinct IPv4 address per client number.
pub fn client_ip(id: u64) -> String {
    format!("10.{}.{}.{}", (id >> 16) & 255, (id >> 8) & 255, id & 255)
}
