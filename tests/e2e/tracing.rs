//! Tracing and the access log through a real Envoy (1.40, V8, two
//! workers), with the demo's own `tracing` and `access_log` blocks
//! (envoy/demo.yaml): the OpenTelemetry tracer exports each span over
//! OTLP/HTTP to a receiver this test owns ([`OtlpReceiver`]), which
//! decodes the `ExportTraceServiceRequest`s with the OpenTelemetry
//! protocol's own types.
//!
//! Each case sends a request the gateway allows, throttles or denies, then
//! finds its span by the trace id and checks the decision tags, checks the
//! `traceparent` the upstream received, and checks the JSON access-log
//! line of the same trace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ctxgate_e2e::demo::demo_hcm_field;

use std::time::Duration;

use ctxgate_e2e::otlp::Span;
use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, OtlpReceiver, Request, Route, ScriptedServer, WasmFilter,
    demo_idp, eventually,
};
use serde_json::{Value, json};

const READ: &str = "/v1/contexts/projects/a";

/// The span of `trace_id`, once exported.
fn span_of(receiver: &OtlpReceiver, trace_id: &str) -> Span {
    assert_eq!(receiver.invalid(), 0, "Envoy sent something else than OTLP");
    receiver
        .span_of(trace_id, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no span of trace {trace_id}: {:?}", receiver.spans()))
}

/// The access-log line of `trace_id`, once written.
fn log_line(envoy: &Envoy, trace_id: &str) -> Value {
    let mut found = None;
    eventually(Duration::from_secs(10), || {
        found = envoy
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["trace_id"] == trace_id);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no access-log line of trace {trace_id}:\n{}",
            envoy.stdout()
        )
    })
}

/// The span a client's requests name as their parent.
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// `request` in the client's sampled trace `trace_id`, under
/// [`CLIENT_SPAN`].
fn in_trace(request: Request, trace_id: &str) -> Request {
    request.header("traceparent", &format!("00-{trace_id}-{CLIENT_SPAN}-01"))
}

/// `(version, trace id, parent span id, flags)` of a W3C traceparent.
fn traceparent(value: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[1].len(), 32, "trace id of {value}");
    assert_eq!(parts[2].len(), 16, "parent id of {value}");
    assert!(
        parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit())),
        "traceparent {value}"
    );
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

struct Gateway {
    envoy: Envoy,
    upstream: ScriptedServer,
    receiver: OtlpReceiver,
}

fn gateway() -> Gateway {
    let upstream = ScriptedServer::start();
    let receiver = OtlpReceiver::start();
    let tracing = demo_hcm_field("tracing");
    assert!(tracing.is_object(), "envoy/demo.yaml has no tracing block");
    // The demo's exporter, pointed at this test's receiver.
    let tracing = receiver.tracing(tracing, "otel_collector");
    let access_log = demo_hcm_field("access_log");
    assert!(access_log.is_array(), "envoy/demo.yaml has no access_log");
    let mut auth_provider = demo_idp::hs256_provider();
    auth_provider["name"] = json!("demo");
    let config = EnvoyConfig::new()
        .hcm_field("tracing", tracing)
        .hcm_field("access_log", access_log)
        // A span is exported as soon as it ends (the default batches 5, or
        // waits 5 s).
        .bootstrap_field(
            "layered_runtime",
            json!({"layers": [{"name": "test", "static_layer": {
                "tracing.opentelemetry.min_flush_spans": 1,
                "tracing.opentelemetry.flush_interval_ms": 100,
            }}]}),
        )
        .filter(
            WasmFilter::ctxgate("ctxgate")
                .stage(
                    "auth",
                    json!({
                        "providers": [auth_provider],
                        "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
                    }),
                )
                .stage(
                    "ratelimit",
                    json!({"tiers": {
                        "standard": [{"name": "per_minute", "limit": 3, "window_seconds": 60}],
                        "anonymous": [{"name": "per_minute", "limit": 100, "window_seconds": 60}],
                    }}),
                )
                .stage(
                    "tagging",
                    json!({"defaults": {"type": "standard", "priority": "normal"}}),
                )
                .stage("breaker", json!({"breakers": [{"name": "context_repository"}]}))
                .stage("filter_state", json!(true)),
        )
        .cluster(Cluster::new("otel_collector", [receiver.addr()]))
        .cluster(Cluster::new("upstream", [upstream.addr()]))
        .route(Route::prefix("/").cluster("upstream"));
    Gateway {
        envoy: Envoy::start(&config),
        upstream,
        receiver,
    }
}

fn token(tenant: &str) -> String {
    demo_idp::hs256_token(
        tenant,
        "user-1",
        &json!({"rate_limits": {"tier": "standard"}}),
    )
}

/// The trace of the request the upstream got last.
fn forwarded_trace(gw: &Gateway) -> String {
    let forwarded = gw
        .upstream
        .last_request()
        .expect("the upstream got the request");
    let (_, trace_id, _, _) = traceparent(forwarded.header("traceparent").unwrap());
    trace_id
}

#[test]
fn an_allowed_request_s_span_and_log_line_carry_the_decision_and_the_upstream_gets_traceparent() {
    let gw = gateway();
    Request::get(READ)
        .bearer(&token("acme"))
        .send(gw.envoy.listener_addr())
        .expect_status(200);
    let trace_id = forwarded_trace(&gw);
    let span = span_of(&gw.receiver, &trace_id);
    let expected = [
        ("ctxgate.tenant", "acme"),
        ("ctxgate.tier", "standard"),
        ("ctxgate.operation", "read"),
        ("ctxgate.decision", "allow"),
        ("ctxgate.reason", "via_upstream"),
        ("ctxgate.cost", "1"),
        ("ctxgate.breaker", "closed"),
        ("ctxgate.route.type", "standard"),
        ("ctxgate.route.priority", "normal"),
    ];
    for (tag, value) in expected {
        assert_eq!(
            span.tags.get(tag).map(String::as_str),
            Some(value),
            "{tag} of {span:?}"
        );
    }
    // The upstream's parent is the gateway's span.
    let forwarded = gw.upstream.last_request().unwrap();
    let (version, _, parent, flags) = traceparent(forwarded.header("traceparent").unwrap());
    assert_eq!((version.as_str(), flags.as_str()), ("00", "01"));
    assert_eq!(parent, span.span_id);

    let line = log_line(&gw.envoy, &trace_id);
    let fields = [
        ("tenant", "acme"),
        ("tier", "standard"),
        ("operation", "read"),
        ("decision", "allow"),
        ("reason", "via_upstream"),
        ("cost", "1"),
        ("breaker", "closed"),
        ("route_type", "standard"),
        ("route_priority", "normal"),
        ("method", "GET"),
        ("path", READ),
        ("upstream", "upstream"),
    ];
    for (field, value) in fields {
        assert_eq!(line[field], json!(value), "{field} of {line}");
    }
    assert_eq!(line["status"], json!(200), "{line}");
}

#[test]
fn a_client_trace_is_continued_and_handed_on() {
    let gw = gateway();
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    in_trace(Request::get(READ).bearer(&token("acme")), client_trace)
        .send(gw.envoy.listener_addr())
        .expect_status(200);
    let forwarded = gw.upstream.last_request().unwrap();
    let (_, trace_id, parent, _) = traceparent(forwarded.header("traceparent").unwrap());
    assert_eq!(
        trace_id, client_trace,
        "the upstream is in the client's trace"
    );
    assert_ne!(parent, CLIENT_SPAN, "under the gateway's span");
    let span = span_of(&gw.receiver, client_trace);
    assert_eq!(span.span_id, parent);
    assert_eq!(span.tags["ctxgate.decision"], "allow");
}

#[test]
fn throttled_and_denied_requests_are_traced_and_logged_with_their_reason() {
    let gw = gateway();
    let bearer = token("acme");
    // The limit is 3 reads a minute: the fourth is throttled.
    for _ in 0..3 {
        Request::get(READ)
            .bearer(&bearer)
            .send(gw.envoy.listener_addr())
            .expect_status(200);
    }
    let throttle_trace = "0af7651916cd43dd8448eb211c80319c";
    in_trace(Request::get(READ).bearer(&bearer), throttle_trace)
        .send(gw.envoy.listener_addr())
        .expect_status(429);
    let span = span_of(&gw.receiver, throttle_trace);
    assert_eq!(span.tags["ctxgate.decision"], "throttle", "{span:?}");
    assert_eq!(span.tags["ctxgate.tenant"], "acme", "{span:?}");
    assert!(
        span.tags["ctxgate.reason"].starts_with("ctxgate_ratelimit"),
        "{span:?}"
    );
    assert!(
        !span.tags.contains_key("ctxgate.cost"),
        "nothing was charged: {span:?}"
    );
    let line = log_line(&gw.envoy, throttle_trace);
    assert_eq!(line["decision"], "throttle", "{line}");
    assert_eq!(line["status"], json!(429), "{line}");

    // A forged token: denied, and the tenant the client claims in a header
    // is in neither the span nor the log.
    let deny_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let forged = Request::get(READ)
        .header("authorization", "Bearer e30.e30.forged")
        .header("x-context-tenant", "victim");
    in_trace(forged, deny_trace)
        .send(gw.envoy.listener_addr())
        .expect_status(401);
    let span = span_of(&gw.receiver, deny_trace);
    assert_eq!(span.tags["ctxgate.decision"], "deny", "{span:?}");
    assert!(
        span.tags["ctxgate.reason"].starts_with("ctxgate_auth_denied"),
        "{span:?}"
    );
    assert!(!span.tags.contains_key("ctxgate.tenant"), "{span:?}");
    let line = log_line(&gw.envoy, deny_trace);
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["tenant"], Value::Null, "{line}");
    assert_eq!(line["cost"], Value::Null, "{line}");
    assert_eq!(
        gw.upstream.hits(),
        3,
        "neither refusal reached the upstream"
    );
}
