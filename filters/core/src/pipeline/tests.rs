//! The driver and every stage against the in-memory host: what the proxy
//! is asked to do, in what order, for whole requests.

use jwt_simple::prelude::*;
use prost::Message;
use serde_json::{Value, json};

use super::*;
use crate::mock::AppliedOp;
use crate::mock::MockHost;
use crate::ratelimit::rls;
use crate::test_keys::{jwks, sign};

const NOW_MS: u64 = 1_800_000_000_000;
const ISS: &str = "https://idp.test";
const SEEDS: Seeds = Seeds {
    secret: [9; 16],
    reporter: 42,
};

fn auth_section(key: &ES256KeyPair) -> Value {
    json!({
        "providers": [{"name": "test", "issuer": ISS, "audiences": ["context-api"], "jwks": {"inline": jwks(key)}}],
        "operations": [
            {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT", "POST"], "path": "/v1/contexts/{context}", "action": "write"}
        ]
    })
}

fn token(key: &ES256KeyPair, tenant: &str) -> String {
    let now = NOW_MS / 1000;
    sign(
        key,
        json!({
            "iss": ISS, "sub": "alice", "aud": "context-api", "iat": now, "exp": now + 600,
            "tenant_id": tenant, "context_scopes": ["read:projects/*", "write:projects/engineering"]
        }),
    )
}

fn ratelimit_section(limit: u64, extra: Value) -> Value {
    let mut section = json!({
        "tiers": {"standard": [{"name": "per_minute", "limit": limit, "window_seconds": 60}],
                  "anonymous": [{"name": "per_minute", "limit": 2, "window_seconds": 60}]},
        "slots": 64
    });
    if let (Some(t), Value::Object(e)) = (section.as_object_mut(), extra) {
        t.extend(e);
    }
    section
}

fn tagging_section() -> Value {
    json!({"headers": {"tier": "x-ctxgate-route-tier"}, "from_claims": {"tier": "tier"}})
}

fn breaker_section() -> Value {
    json!({"breakers": [{"name": "repo", "error_threshold_percent": 50, "window_seconds": 10,
        "min_requests": 4, "reset_timeout_ms": 1000, "half_open_probes": 1}]})
}

struct Gateway {
    host: MockHost,
    worker: Worker,
    next_stream: StreamId,
}

impl Gateway {
    fn new(config: Value) -> Gateway {
        let mut host = MockHost::new(NOW_MS);
        let worker = Worker::new(config.to_string().as_bytes(), "test", SEEDS, &mut host)
            .unwrap_or_else(|e| panic!("config: {e}"));
        Gateway {
            host,
            worker,
            next_stream: 1,
        }
    }

    /// Opens a stream and runs its request headers through the pipeline.
    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> (StreamId, Flow) {
        let id = self.next_stream;
        self.next_stream += 1;
        let mut all = vec![(":method", method), (":path", path), (":authority", "api")];
        all.extend_from_slice(headers);
        self.host.open(id, &all);
        self.host
            .streams
            .get_mut(&id)
            .unwrap()
            .attributes
            .insert("client_address", "10.0.0.1:4000".into());
        let flow = self.worker.on_request_headers(&mut self.host, id, true);
        (id, flow)
    }

    fn respond(&mut self, id: StreamId, status: u16) {
        self.host
            .streams
            .get_mut(&id)
            .unwrap()
            .response_headers
            .push((":status".into(), status.to_string()));
        assert_eq!(
            self.worker.on_response_headers(&mut self.host, id),
            Flow::Continue
        );
        self.worker.on_done(&mut self.host, id);
    }

    fn tick_at(&mut self, now_ms: u64) {
        self.host.now_ms = now_ms;
        self.worker.on_tick(&mut self.host);
    }

    fn reply_status(&self, id: StreamId) -> Option<u16> {
        self.host.stream(id).reply.as_ref().map(|r| r.status)
    }
}

fn full_chain(key: &ES256KeyPair) -> Value {
    json!({
        "auth": auth_section(key),
        "ratelimit": ratelimit_section(100, json!({})),
        "tagging": tagging_section(),
        "breaker": breaker_section()
    })
}

#[test]
fn one_header_read_one_change_batch_and_no_metric_call_per_request() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(full_chain(&key));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let calls_before = gw.host.metric_calls;
    let (id, flow) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer), ("x-context-tenant", "evil")],
    );
    assert_eq!(flow, Flow::Continue);
    let s = gw.host.stream(id);
    assert_eq!(s.header_reads, 1);
    assert_eq!(s.change_batches.len(), 1, "{:?}", s.change_batches);
    assert_eq!(
        gw.host.header(id, "x-context-tenant").as_deref(),
        Some("acme")
    );
    assert_eq!(
        gw.host.header(id, "x-ctxgate-route-tier").as_deref(),
        Some("standard"),
        "tagging saw the identity auth established, in memory"
    );
    assert!(gw.host.header(id, "authorization").is_none());
    assert!(
        s.filter_state
            .contains_key(crate::contract::REQUEST_FILTER_STATE)
    );
    gw.respond(id, 200);
    assert!(
        gw.host
            .stream(id)
            .response_headers
            .iter()
            .any(|(n, _)| n == "x-ratelimit-remaining")
    );
    assert_eq!(
        gw.host.metric_calls, calls_before,
        "metrics wait for the flush"
    );
    assert_eq!(gw.host.metric("ctxgate_auth.allowed"), 0);
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(gw.host.metric("ctxgate_auth.allowed"), 1);
    assert_eq!(gw.host.metric("ctxgate_ratelimit.allowed.local"), 1);
    assert_eq!(gw.host.metric("ctxgate_tagging.tagged"), 1);
    assert_eq!(gw.worker.streams(), 0);
}

#[test]
fn every_metric_is_defined_at_configure_time() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let gw = Gateway::new(full_chain(&key));
    let names: Vec<&str> = gw
        .host
        .metric_names
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    for name in [
        "ctxgate_auth.denied.missing_token",
        "ctxgate_ratelimit.refused.local_limit",
        "ctxgate_tagging.tagged",
        "ctxgate_breaker.repo.state",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[test]
fn a_refusal_mid_pipeline_stops_it_and_strips_forged_identity_first() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&key);
    config["ratelimit"] = ratelimit_section(1, json!({}));
    let mut gw = Gateway::new(config);
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let (first, _) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    gw.respond(first, 200);
    let (id, flow) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer), ("x-ctxgate-route-tier", "gold")],
    );
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(429));
    assert_eq!(
        gw.host.header(id, "x-ctxgate-route-tier").as_deref(),
        Some("gold"),
        "tagging did not run after the refusal"
    );
    assert_eq!(
        gw.host.header(id, "x-context-tenant").as_deref(),
        Some("acme")
    );
    // The proxy calls the response path for the local reply too: nothing
    // is recorded for it (the breaker never admitted it).
    gw.respond(id, 429);
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(gw.host.metric("ctxgate_ratelimit.refused.local_limit"), 1);
    assert_eq!(gw.host.metric("ctxgate_breaker.repo.failures"), 0);
    assert_eq!(gw.host.metric("ctxgate_tagging.tagged"), 1);
}

#[test]
fn an_auth_refusal_sends_the_reply_after_removing_client_identity_headers() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(full_chain(&key));
    let (id, flow) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("x-context-tenant", "evil")],
    );
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(401));
    assert!(gw.host.header(id, "x-context-tenant").is_none());
    assert_eq!(gw.host.stream(id).change_batches.len(), 1);
}

fn rls_config(key: &ES256KeyPair, failure_mode: &str) -> Value {
    let mut config = full_chain(key);
    config["ratelimit"] = ratelimit_section(
        100,
        json!({"global": {"cluster": "rls", "mode": "always", "timeout_ms": 20, "failure_mode": failure_mode}}),
    );
    config
}

fn rls_answer(over: bool) -> CallResponse {
    let code = if over {
        rls::CODE_OVER_LIMIT
    } else {
        rls::CODE_OK
    };
    let message = rls::RateLimitResponse {
        overall_code: code,
        statuses: vec![rls::DescriptorStatus {
            code,
            current_limit: Some(rls::RateLimit {
                requests_per_unit: 100,
                unit: 2,
                name: "per_minute".into(),
            }),
            limit_remaining: if over { 0 } else { 90 },
            duration_until_reset: Some(rls::ProtoDuration {
                seconds: 30,
                nanos: 0,
            }),
        }],
    }
    .encode_to_vec();
    CallResponse::Grpc { status: 0, message }
}

#[test]
fn the_rls_deadline_is_enforced_by_the_driver_and_the_rest_of_the_pipeline_runs_on_resume() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(rls_config(&key, "local_fallback"));
    assert_eq!(gw.worker.tick_ms(), 5, "the watchdog needs a short tick");
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let (id, flow) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    assert_eq!(flow, Flow::Pause);
    let call = gw.host.last_call().unwrap().clone();
    assert_eq!(call.owner, Some(id));
    assert_eq!(call.cluster, "rls");
    assert!(call.metadata.iter().any(|(k, _)| k == "x-ctxgate-report"));
    assert_eq!(
        call.timeout_ms, 70,
        "the proxy's timeout is a backstop after ours"
    );
    assert!(
        gw.host.header(id, "x-ctxgate-route-tier").is_none(),
        "tagging waits for the rate limit"
    );
    gw.tick_at(NOW_MS + 19);
    assert_eq!(gw.host.stream(id).resumed, 0);
    gw.tick_at(NOW_MS + 20);
    assert!(gw.host.calls.iter().any(|c| c.id == call.id && c.cancelled));
    assert_eq!(gw.host.stream(id).resumed, 1);
    assert_eq!(
        gw.host.header(id, "x-ctxgate-route-tier").as_deref(),
        Some("standard")
    );
    // A late answer to the cancelled call changes nothing.
    gw.worker
        .on_call_response(&mut gw.host, call.id, rls_answer(true));
    assert_eq!(gw.host.stream(id).resumed, 1);
    assert!(gw.host.stream(id).reply.is_none());
    gw.respond(id, 200);
    gw.tick_at(NOW_MS + 2000);
    assert_eq!(gw.host.metric("ctxgate_ratelimit.rls.timeout"), 1);
    assert_eq!(
        gw.host.metric("ctxgate_ratelimit.allowed.fallback_local"),
        1
    );
}

#[test]
fn an_answer_in_time_resumes_or_refuses() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(rls_config(&key, "deny"));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let (ok, _) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    let call = gw.host.last_call().unwrap().id;
    gw.host.now_ms += 3;
    gw.worker
        .on_call_response(&mut gw.host, call, rls_answer(false));
    assert_eq!(gw.host.stream(ok).resumed, 1);
    assert!(gw.host.header(ok, "x-ctxgate-route-tier").is_some());

    let (over, _) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    let call = gw.host.last_call().unwrap().id;
    gw.worker
        .on_call_response(&mut gw.host, call, rls_answer(true));
    assert_eq!(gw.host.stream(over).resumed, 0);
    assert_eq!(gw.reply_status(over), Some(429));
    // The deadline passing later does nothing more.
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(gw.host.stream(over).resumed, 0);
}

#[test]
fn body_bytes_arriving_while_waiting_are_held_not_resumed() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(rls_config(&key, "allow"));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let id = 99;
    gw.host.open(
        id,
        &[
            (":method", "PUT"),
            (":path", "/v1/contexts/projects/engineering"),
            ("authorization", &bearer),
        ],
    );
    assert_eq!(
        gw.worker.on_request_headers(&mut gw.host, id, false),
        Flow::Pause
    );
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 100),
        Flow::Pause
    );
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 300),
        Flow::Pause
    );
    assert_eq!(gw.host.stream(id).resumed, 0);
    let call = gw.host.last_call().unwrap().id;
    gw.worker
        .on_call_response(&mut gw.host, call, rls_answer(false));
    assert_eq!(gw.host.stream(id).resumed, 1);
    // After the resume the proxy counts from zero again.
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 10),
        Flow::Continue
    );
}

#[test]
fn an_rls_that_cannot_be_called_applies_the_failure_mode_at_once() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(rls_config(&key, "deny"));
    gw.host.refuse_calls = true;
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let (id, flow) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    assert_eq!(flow, Flow::Pause);
    assert!(gw.reply_status(id).is_some());
}

#[test]
fn the_breaker_counts_upstream_answers_and_opens_for_every_worker() {
    let mut gw = Gateway::new(json!({"breaker": breaker_section()}));
    for _ in 0..4 {
        let (id, flow) = gw.request("GET", "/", &[]);
        assert_eq!(flow, Flow::Continue);
        gw.respond(id, 503);
    }
    let (id, flow) = gw.request("GET", "/", &[]);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(503));
    gw.respond(id, 503);
    // A second worker sharing the store sees the open breaker.
    let mut other = Worker::new(
        json!({"breaker": breaker_section()}).to_string().as_bytes(),
        "test",
        SEEDS,
        &mut gw.host,
    )
    .unwrap();
    gw.host.open(500, &[(":method", "GET"), (":path", "/")]);
    assert_eq!(
        other.on_request_headers(&mut gw.host, 500, true),
        Flow::Pause
    );
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(gw.host.metric("ctxgate_breaker.repo.failures"), 4);
    assert_eq!(gw.host.metric("ctxgate_breaker.repo.opened"), 1);
    assert_eq!(gw.host.metric("ctxgate_breaker.repo.rejected"), 1);
    assert_eq!(gw.host.metric("ctxgate_breaker.repo.state"), 1);
}

#[test]
fn a_stream_that_ends_without_an_answer_releases_its_probe() {
    let mut gw = Gateway::new(json!({"breaker": breaker_section()}));
    for _ in 0..4 {
        let (id, _) = gw.request("GET", "/", &[]);
        gw.respond(id, 503);
    }
    gw.host.now_ms += 1500;
    let (probe, flow) = gw.request("GET", "/", &[]);
    assert_eq!(flow, Flow::Continue, "half-open: one probe");
    let (second, _) = gw.request("GET", "/", &[]);
    assert_eq!(
        gw.reply_status(second),
        Some(503),
        "only one probe at a time"
    );
    gw.worker.on_done(&mut gw.host, probe);
    let (again, flow) = gw.request("GET", "/", &[]);
    assert_eq!(
        flow,
        Flow::Continue,
        "the reset probe's place is free again"
    );
    gw.respond(again, 200);
}

#[test]
fn without_auth_in_the_pipeline_stages_read_the_filter_state_an_earlier_filter_wrote() {
    let mut gw = Gateway::new(json!({"tagging": tagging_section()}));
    let id = 7;
    gw.host.open(id, &[(":method", "GET"), (":path", "/")]);
    let state = br#"{"identity":{"tenant":"acme","subject":"a","tier":"premium","issuer":"i"}}"#;
    gw.host
        .streams
        .get_mut(&id)
        .unwrap()
        .filter_state
        .insert(crate::contract::REQUEST_FILTER_STATE.into(), state.to_vec());
    assert_eq!(
        gw.worker.on_request_headers(&mut gw.host, id, true),
        Flow::Continue
    );
    assert_eq!(
        gw.host.header(id, "x-ctxgate-route-tier").as_deref(),
        Some("premium")
    );
}

#[test]
fn route_dependent_attributes_see_the_changes_made_before_them() {
    let mut config = json!({"tagging": tagging_section(), "breaker": breaker_section()});
    config["breaker"]["breakers"][0]["select"] = json!({"routes": ["fallback-route"]});
    let mut gw = Gateway::new(config);
    let (id, _) = gw.request("GET", "/", &[("x-ctxgate-route-tier", "forged")]);
    let batches = &gw.host.stream(id).change_batches;
    assert_eq!(batches.len(), 1, "applied before the route was read, once");
    assert!(
        batches[0].contains(&AppliedOp::Remove("x-ctxgate-route-tier".into())),
        "{batches:?}"
    );
}

#[test]
fn configuration_errors_name_the_section_and_field() {
    let mut host = MockHost::new(NOW_MS);
    let err = |config: Value, host: &mut MockHost| {
        Worker::new(config.to_string().as_bytes(), "t", SEEDS, host)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(json!({}), &mut host).contains("no stage configured"));
    assert!(err(json!({"ratelimt": {}}), &mut host).contains("unknown field `ratelimt`"));
    let e = err(json!({"ratelimit": {"slots": 0, "tiers": {}}}), &mut host);
    assert!(e.starts_with("ratelimit"), "{e}");
    let e = err(json!({"breaker": {"breakers": []}}), &mut host);
    assert!(e.starts_with("breaker"), "{e}");
    let e = err(
        json!({"tagging": tagging_section(), "metrics": {"flush_interval_ms": 0}}),
        &mut host,
    );
    assert!(e.starts_with("metrics.flush_interval_ms"), "{e}");
}
