//! The driver and every stage against the in-memory host: what the proxy
//! is asked to do, in what order, for whole requests.

use jwt_simple::prelude::*;
use prost::Message;
use serde_json::{Value, json};

use super::test_gateway::{Gateway, NOW_MS, SEEDS};
use super::*;
use crate::mock::AppliedOp;
use crate::mock::MockHost;
use crate::ratelimit::rls;
use crate::test_keys::{jwks, sign};

const ISS: &str = "https://idp.test";

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

fn full_chain(key: &ES256KeyPair) -> Value {
    json!({
        "auth": auth_section(key),
        "ratelimit": ratelimit_section(100, json!({})),
        "tagging": tagging_section(),
        "breaker": breaker_section()
    })
}

#[test]
fn one_header_read_one_change_batch_and_one_metric_call_per_request() {
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
        gw.host.metric_calls,
        calls_before + 2,
        "counters wait for the flush; the latency histogram takes its sample \
         (defined on first use, then one call)"
    );
    assert_eq!(gw.host.metric("ctxgate_auth.allowed"), 0);
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(gw.host.metric("ctxgate_auth.allowed"), 1);
    assert_eq!(
        gw.host.metric(
            "ctxgate_requests.tier.standard.operation.read.decision.allow.status_class.2xx.tenant.other"
        ),
        1
    );
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

#[test]
fn a_request_without_a_method_or_a_path_is_refused_before_any_stage() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&key);
    // Public for every method: a head without a method or a path must not
    // pass as a request for `/`.
    config["auth"]["public_paths"] = json!([{"prefix": "/"}]);
    let mut gw = Gateway::new(config);
    let heads: [&[(&str, &str)]; 4] = [
        // A CONNECT tunnel: no `:path`.
        &[
            (":method", "CONNECT"),
            (":authority", "db.internal:5432"),
            ("x-context-tenant", "evil"),
        ],
        &[(":method", "GET"), (":path", ""), (":authority", "api")],
        &[(":path", "/"), (":authority", "api")],
        // A header map the engine could not read.
        &[],
    ];
    for head in heads {
        let id = gw.open(head);
        assert_eq!(
            gw.worker.on_request_headers(&mut gw.host, id, true),
            Flow::Pause
        );
        assert_eq!(
            gw.details(id),
            Some((400, "ctxgate_request_refused{incomplete_head}".to_owned())),
            "{head:?}"
        );
        let reply = gw.host.stream(id).reply.clone().unwrap();
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["reason"], "incomplete_head");
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(gw.host.stream(id).resumed, 0);
        assert_eq!(
            gw.host.header(id, ":path"),
            head.iter()
                .find(|(n, _)| *n == ":path")
                .map(|(_, v)| (*v).to_owned()),
            "the path is not guessed"
        );
        assert!(
            gw.host.header(id, "x-context-tenant").is_none(),
            "forged identity removed before the refusal"
        );
        gw.respond(id, 400);
    }
    let (id, flow) = gw.request("GET", "/", &[]);
    assert_eq!(flow, Flow::Continue);
    gw.respond(id, 200);
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(gw.host.metric("ctxgate_request.refused.incomplete_head"), 4);
    assert_eq!(
        gw.host.metric("ctxgate_auth.passthrough"),
        1,
        "no stage saw the incomplete heads"
    );
    assert_eq!(gw.worker.streams(), 0);
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
        gw.worker.on_request_body(&mut gw.host, id, 100, false),
        Flow::Pause
    );
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 300, false),
        Flow::Pause
    );
    assert_eq!(gw.host.stream(id).resumed, 0);
    let call = gw.host.last_call().unwrap().id;
    gw.worker
        .on_call_response(&mut gw.host, call, rls_answer(false));
    assert_eq!(gw.host.stream(id).resumed, 1);
    // After the resume the proxy counts from zero again.
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 10, true),
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

fn mcp_chain(key: &ES256KeyPair) -> Value {
    json!({
        "auth": auth_section(key),
        "mcp": {
            "max_body_bytes": 2048,
            "tools": [
                {"name": "search_*", "action": "read", "context": {"pointer": "/path"}},
                {"name": "write_context", "action": "write", "context": {"pointer": "/path"}}
            ],
            "resource_metadata": {
                "resource": "https://gw.example/mcp",
                "authorization_servers": ["https://idp.test"]
            }
        },
        "ratelimit": ratelimit_section(100, json!({}))
    })
}

fn tool_call(id: u64, tool: &str, path: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {"path": path}}})
    .to_string()
    .into_bytes()
}

impl Gateway {
    /// A POST to `/mcp` whose body arrives in one piece after the headers.
    fn mcp_post(&mut self, headers: &[(&str, &str)], body: &[u8]) -> (StreamId, Flow, Flow) {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let (id, on_headers, on_body) = self.send("POST", "/mcp", &all, Some(body));
        (id, on_headers, on_body.unwrap())
    }

    fn reply_json(&self, id: StreamId) -> Value {
        serde_json::from_slice(&self.host.stream(id).reply.as_ref().unwrap().body).unwrap()
    }

    fn reply_header(&self, id: StreamId, name: &str) -> Option<String> {
        let reply = self.host.stream(id).reply.as_ref()?;
        reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

#[test]
fn mcp_a_tool_call_in_scope_waits_for_its_body_and_goes_through_without_the_token() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(mcp_chain(&key));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let body = tool_call(7, "search_context", "projects/engineering/roadmap");
    let (id, on_headers, on_body) = gw.mcp_post(&[("authorization", &bearer)], &body);
    assert_eq!(
        on_headers,
        Flow::Continue,
        "the headers go on (Proxy-Wasm gives no body to held headers)"
    );
    assert_eq!(
        on_body,
        Flow::Continue,
        "the body is let through once decided"
    );
    assert_eq!(gw.reply_status(id), None);
    let forwarded = &gw.host.stream(id).request_headers;
    assert!(
        !forwarded.iter().any(|(n, _)| n == "authorization"),
        "no token passthrough: {forwarded:?}"
    );
    assert!(
        forwarded
            .iter()
            .any(|(n, v)| n == "x-context-tenant" && v == b"acme")
    );
}

#[test]
fn mcp_a_tool_call_outside_the_scope_is_refused_with_the_scope_it_needs() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(mcp_chain(&key));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let body = tool_call(8, "write_context", "projects/sales/plan");
    let (id, _, on_body) = gw.mcp_post(&[("authorization", &bearer)], &body);
    assert_eq!(on_body, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(403));
    let reply = gw.reply_json(id);
    assert_eq!(reply["id"], 8);
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["error"]["data"]["reason"], "insufficient_scope");
    let challenge = gw.reply_header(id, "www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"write:projects/sales/plan\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(
            "resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource/mcp\""
        ),
        "{challenge}"
    );
    // A tool missing from the map is denied.
    let (id, _, _) = gw.mcp_post(
        &[("authorization", &bearer)],
        &tool_call(9, "drop_everything", "projects/a"),
    );
    assert_eq!(gw.reply_status(id), Some(403));
    assert_eq!(
        gw.reply_json(id)["error"]["data"]["reason"],
        "mcp_unknown_tool"
    );
}

#[test]
fn mcp_no_token_gets_a_401_naming_the_resource_metadata_with_the_request_id() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(mcp_chain(&key));
    let (id, _, _) = gw.mcp_post(&[], &tool_call(3, "search_context", "projects/a"));
    assert_eq!(gw.reply_status(id), Some(401));
    let challenge = gw.reply_header(id, "www-authenticate").unwrap();
    assert!(
        challenge.contains(
            "resource_metadata=\"https://gw.example/.well-known/oauth-protected-resource/mcp\""
        ),
        "{challenge}"
    );
    assert_eq!(
        gw.reply_json(id)["id"],
        Value::Null,
        "refused at the headers: the id is not known yet"
    );
    assert_eq!(gw.reply_json(id)["jsonrpc"], "2.0");
    // The metadata document is served without a token.
    let (id, flow) = gw.request("GET", "/.well-known/oauth-protected-resource/mcp", &[]);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(200));
    let document = gw.reply_json(id);
    assert_eq!(document["resource"], "https://gw.example/mcp");
    assert_eq!(document["authorization_servers"][0], "https://idp.test");
}

#[test]
fn mcp_bounds_and_malformed_bodies_are_refused_before_any_policy() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(mcp_chain(&key));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    // Declared too long: refused at the headers, unread.
    let big = vec![b' '; 4096];
    let (id, on_headers, _) = gw.mcp_post(&[("authorization", &bearer)], &big);
    assert_eq!(on_headers, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(413));
    // Duplicate keys.
    let dup = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}"#;
    let (id, _, _) = gw.mcp_post(&[("authorization", &bearer)], dup);
    assert_eq!(gw.reply_status(id), Some(400));
    assert_eq!(
        gw.reply_json(id)["error"]["data"]["reason"],
        "mcp_duplicate_key"
    );
    // A header that disagrees with the body.
    let body = tool_call(4, "search_context", "projects/a");
    let (id, _, _) = gw.mcp_post(
        &[("authorization", &bearer), ("mcp-method", "tools/list")],
        &body,
    );
    assert_eq!(gw.reply_status(id), Some(400));
    assert_eq!(gw.reply_json(id)["error"]["code"], -32020);
    // A token in the query string.
    let (id, _, _) = gw.send(
        "POST",
        "/mcp?access_token=abc",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        Some(&body),
    );
    assert_eq!(gw.reply_status(id), Some(400));
    assert_eq!(
        gw.reply_json(id)["error"]["data"]["reason"],
        "mcp_query_token"
    );
}

#[test]
fn mcp_a_body_that_grows_past_the_limit_is_refused_while_streaming() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(mcp_chain(&key));
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let id = gw.open(&[
        (":method", "POST"),
        (":path", "/mcp"),
        (":authority", "api"),
        ("content-type", "application/json"),
        ("authorization", &bearer),
    ]);
    assert_eq!(
        gw.worker.on_request_headers(&mut gw.host, id, false),
        Flow::Continue
    );
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 1000, false),
        Flow::Pause
    );
    assert_eq!(gw.reply_status(id), None, "still buffering");
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 3000, false),
        Flow::Pause
    );
    assert_eq!(gw.reply_status(id), Some(413));
}

#[test]
fn mcp_a_listing_response_is_narrowed_to_the_tools_the_caller_may_use() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut gw = Gateway::new(mcp_chain(&key));
    // The token may read projects/* and write projects/engineering only.
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let listing = tools_list_response();
    for (content_type, body) in [
        ("application/json", listing.clone()),
        (
            "text/event-stream",
            format!("event: message\ndata: {listing}\n\n"),
        ),
    ] {
        let request = br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
        let (id, _, on_body) = gw.mcp_post(&[("authorization", &bearer)], request);
        assert_eq!(on_body, Flow::Continue);
        let stream = gw.host.streams.get_mut(&id).unwrap();
        stream.response_headers = vec![
            (":status".into(), "200".into()),
            ("content-type".into(), content_type.into()),
            ("content-length".into(), body.len().to_string()),
        ];
        assert_eq!(
            gw.worker.on_response_headers(&mut gw.host, id),
            Flow::Continue
        );
        assert!(
            !gw.host
                .stream(id)
                .response_headers
                .iter()
                .any(|(n, _)| n == "content-length"),
            "the length changes"
        );
        // Two chunks: JSON is held until whole, SSE passes as it can.
        let (first, second) = body.as_bytes().split_at(body.len() / 2);
        gw.host.streams.get_mut(&id).unwrap().response_body = first.to_vec();
        let flow = gw
            .worker
            .on_response_body(&mut gw.host, id, first.len() as u64, false);
        let mut seen = Vec::new();
        if content_type == "application/json" {
            assert_eq!(flow, Flow::Pause);
            gw.host.streams.get_mut(&id).unwrap().response_body = body.as_bytes().to_vec();
            let flow = gw
                .worker
                .on_response_body(&mut gw.host, id, body.len() as u64, true);
            assert_eq!(flow, Flow::Continue);
            seen.extend(gw.host.stream(id).response_body.clone());
        } else {
            assert_eq!(flow, Flow::Continue);
            seen.extend(gw.host.stream(id).response_body.clone());
            gw.host.streams.get_mut(&id).unwrap().response_body = second.to_vec();
            gw.worker
                .on_response_body(&mut gw.host, id, second.len() as u64, true);
            seen.extend(gw.host.stream(id).response_body.clone());
        }
        let text = String::from_utf8(seen).unwrap();
        assert!(text.contains("search_context"), "{content_type}: {text}");
        assert!(text.contains("write_context"), "{content_type}: {text}");
        assert!(!text.contains("drop_everything"), "{content_type}: {text}");
    }
}

fn tools_list_response() -> String {
    json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [
        {"name": "search_context", "inputSchema": {"type": "object"}},
        {"name": "write_context", "inputSchema": {"type": "object"}},
        {"name": "drop_everything", "inputSchema": {"type": "object"}}
    ]}})
    .to_string()
}

#[test]
fn mcp_the_declared_call_becomes_routing_tags_and_a_rate_limit_refusal_answers_its_id() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut chain = mcp_chain(&key);
    chain["ratelimit"] = ratelimit_section(2, json!({}));
    chain["tagging"] = json!({});
    let mut gw = Gateway::new(chain);
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let declared = [
        ("authorization", bearer.as_str()),
        ("mcp-method", "tools/call"),
        ("mcp-name", "search_context"),
        ("x-mcp-tool", "forged"),
    ];
    let body = tool_call(11, "search_context", "projects/engineering/roadmap");
    let (id, on_headers, on_body) = gw.mcp_post(&declared, &body);
    assert_eq!((on_headers, on_body), (Flow::Continue, Flow::Continue));
    let forwarded = &gw.host.stream(id).request_headers;
    let values = |name: &str| -> Vec<&[u8]> {
        forwarded
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    assert_eq!(values("x-mcp-method"), [b"tools/call".as_slice()]);
    assert_eq!(
        values("x-mcp-tool"),
        [b"search_context".as_slice()],
        "the gateway's tag, never the client's"
    );
    assert_eq!(values("x-context-tenant"), [b"acme".as_slice()]);
    // A call without the standard headers (a 2025 client) gets no MCP tag.
    let (id, _, _) = gw.mcp_post(
        &[("authorization", &bearer), ("x-mcp-tool", "forged")],
        &body,
    );
    assert!(
        !gw.host
            .stream(id)
            .request_headers
            .iter()
            .any(|(n, _)| n.starts_with("x-mcp-")),
    );
    // The third call of the minute: the rate limiter's 429 answers the
    // request's id as a JSON-RPC error.
    let (id, _, on_body) = gw.mcp_post(&declared, &tool_call(13, "search_context", "projects/x"));
    assert_eq!(on_body, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(429));
    let reply = gw.reply_json(id);
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["id"], 13);
    assert_eq!(reply["error"]["code"], -31429);
    assert_eq!(reply["error"]["data"]["reason"], "rate_limited");
    assert_eq!(reply["error"]["data"]["status"], 429);
    assert!(gw.reply_header(id, "retry-after").is_some());
    // A notification refused the same way gets the status and no body.
    let notification = json!({"jsonrpc": "2.0", "method": "tools/call",
        "params": {"name": "search_context", "arguments": {"path": "projects/x"}}});
    let (id, _, _) = gw.mcp_post(&declared, notification.to_string().as_bytes());
    assert_eq!(gw.reply_status(id), Some(429));
    let reply = gw.host.stream(id).reply.as_ref().unwrap();
    assert!(reply.body.is_empty(), "{:?}", reply.body);
    assert!(gw.reply_header(id, "content-type").is_none());
}

/// The route table of the residency tests: the residency header picks
/// its cluster (an Envoy `cluster_header` route, first), `/legacy/` goes
/// to the US pool, the region header picks the EU pool, and everything
/// else goes to the US pool.
fn residency_routes(headers: &[(String, Vec<u8>)]) -> Option<String> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    if let Some(cluster) = header("x-context-residency-cluster") {
        return Some(cluster);
    }
    let path = header(":path").unwrap_or_default();
    if path.starts_with("/misc/") {
        return Some("misc".into());
    }
    if !path.starts_with("/legacy/") && header("x-context-region").as_deref() == Some("eu") {
        return Some("eu-pool".into());
    }
    Some("us-pool".into())
}

fn residency_gateway() -> (Gateway, ES256KeyPair) {
    let key = ES256KeyPair::generate();
    let mut auth = auth_section(&key);
    auth["filter_state_claims"] = json!(["data_region"]);
    auth["unmatched_requests"] = json!("authenticate");
    let mut gw = Gateway::new(json!({
        "auth": auth,
        "residency": {
            "region": "eu",
            "tenants": {"acme": "eu", "initech": "ap", "hooli": "sa"},
            "claim": "data_region",
            "services": {"context": {"eu": ["eu-pool", "eu-archive"], "us": ["us-pool"]}},
            "cross_region": {"ap": "ap-remote"},
        },
    }));
    gw.host.router = Some(residency_routes);
    (gw, key)
}

fn regional_token(key: &ES256KeyPair, tenant: &str, region: Option<&str>) -> String {
    let now = NOW_MS / 1000;
    let mut claims = json!({
        "iss": ISS, "sub": "alice", "aud": "context-api", "iat": now, "exp": now + 600,
        "tenant_id": tenant, "context_scopes": ["read:projects/*"]
    });
    if let Some(region) = region {
        claims["data_region"] = json!(region);
    }
    sign(key, claims)
}

#[test]
fn residency_keeps_a_pinned_tenant_in_its_region() {
    let (mut gw, key) = residency_gateway();
    let get = |gw: &mut Gateway, path: &str, token: &str, extra: &[(&str, &str)]| {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend_from_slice(extra);
        gw.request("GET", path, &headers)
    };
    let cluster = |gw: &Gateway, id| residency_routes(&gw.host.stream(id).request_headers);
    let sent_to = |gw: &Gateway, id| gw.host.header(id, "x-context-residency-cluster");

    // Pinned by the table: the route's EU pool is kept.
    let acme = regional_token(&key, "acme", None);
    let (id, flow) = get(
        &mut gw,
        "/v1/contexts/projects/a",
        &acme,
        &[("x-context-region", "eu")],
    );
    assert_eq!(flow, Flow::Continue);
    assert_eq!(sent_to(&gw, id).as_deref(), Some("eu-pool"));
    assert_eq!(cluster(&gw, id).as_deref(), Some("eu-pool"));

    // A route to the US: sent to the service's first EU pool instead, and
    // a forged region header is replaced.
    let (id, _) = get(&mut gw, "/legacy/x", &acme, &[("x-context-region", "us")]);
    assert_eq!(sent_to(&gw, id).as_deref(), Some("eu-pool"));
    assert_eq!(
        gw.host.header(id, "x-context-region").as_deref(),
        Some("eu")
    );

    // No pool of its own: the cross-region cluster.
    let initech = regional_token(&key, "initech", None);
    let (id, flow) = get(&mut gw, "/v1/contexts/projects/a", &initech, &[]);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(cluster(&gw, id).as_deref(), Some("ap-remote"));

    // Neither a pool nor a cross-region cluster: refused.
    let hooli = regional_token(&key, "hooli", None);
    let (id, flow) = get(&mut gw, "/v1/contexts/projects/a", &hooli, &[]);
    assert_eq!(flow, Flow::Pause);
    let reply = gw.host.stream(id).reply.clone().unwrap();
    assert_eq!(reply.status, 421);
    assert_eq!(reply.details, "ctxgate_residency_denied{no_pool_in_region}");

    // Pinned by the claim; a claim contradicting the table is refused.
    let claimed = regional_token(&key, "umbrella", Some("eu"));
    let (id, _) = get(&mut gw, "/v1/contexts/projects/a", &claimed, &[]);
    assert_eq!(sent_to(&gw, id).as_deref(), Some("eu-pool"));

    // A route to a cluster of no known region: refused.
    let (id, _) = get(&mut gw, "/misc/x", &acme, &[]);
    let reply = gw.host.stream(id).reply.clone().unwrap();
    assert_eq!(reply.status, 421);
    assert_eq!(reply.details, "ctxgate_residency_denied{unmapped_cluster}");
    let conflicting = regional_token(&key, "acme", Some("us"));
    let (id, _) = get(&mut gw, "/v1/contexts/projects/a", &conflicting, &[]);
    let reply = gw.host.stream(id).reply.clone().unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.details, "ctxgate_residency_denied{region_conflict}");

    // Unpinned: routed as usual, and a client cannot pick the cluster.
    let free = regional_token(&key, "umbrella", None);
    let forged = [("x-context-residency-cluster", "ap-remote")];
    let (id, flow) = get(&mut gw, "/v1/contexts/projects/a", &free, &forged);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(cluster(&gw, id).as_deref(), Some("us-pool"));

    // The cluster that answers is checked: a route table that ignored the
    // residency header is counted.
    let (id, _) = get(&mut gw, "/v1/contexts/projects/a", &acme, &[]);
    gw.host.router = None;
    gw.host
        .streams
        .get_mut(&id)
        .unwrap()
        .attributes
        .insert("cluster_name", "us-pool".into());
    gw.respond(id, 200);

    gw.host.now_ms += 2000;
    gw.worker.on_tick(&mut gw.host);
    assert_eq!(gw.host.metric("ctxgate_residency.in_region"), 4);
    assert_eq!(gw.host.metric("ctxgate_residency.cross_region"), 1);
    assert_eq!(gw.host.metric("ctxgate_residency.refused_no_pool"), 1);
    assert_eq!(gw.host.metric("ctxgate_residency.refused_conflict"), 1);
    assert_eq!(gw.host.metric("ctxgate_residency.refused_unmapped"), 1);
    assert_eq!(gw.host.metric("ctxgate_residency.unpinned"), 1);
    assert_eq!(gw.host.metric("ctxgate_residency.misrouted"), 1);
}
#[test]
fn residency_configuration_errors_name_the_field() {
    let mut host = MockHost::new(NOW_MS);
    let err = |config: Value, host: &mut MockHost| {
        Worker::new(config.to_string().as_bytes(), "t", SEEDS, host)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let base = json!({"region": "eu", "services": {"api": {"eu": ["eu-pool"]}}});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        json!({ "residency": c })
    };
    let e = err(with("cross_region", json!({"us": "eu-pool"})), &mut host);
    assert!(
        e.starts_with("residency.cross_region.us: cluster 'eu-pool' is a pool"),
        "{e}"
    );
    let twice = json!({"api": {"eu": ["eu-pool"]}, "mcp": {"us": ["eu-pool"]}});
    let e = err(with("services", twice), &mut host);
    assert!(
        e.starts_with("residency.services.mcp.us: cluster 'eu-pool' is also in"),
        "{e}"
    );
    let e = err(with("services", json!({})), &mut host);
    assert!(e.starts_with("residency.services"), "{e}");
    let e = err(with("services", json!({"api": {"eu": []}})), &mut host);
    assert!(e.starts_with("residency.services.api.eu"), "{e}");
    let e = err(with("region_header", json!("X-Region")), &mut host);
    assert!(e.starts_with("residency.region_header"), "{e}");
    let e = err(with("tenants", json!({"acme": ""})), &mut host);
    assert!(e.starts_with("residency.tenants.acme"), "{e}");
}

#[test]
fn the_auth_stage_reads_the_client_certificate_from_the_host() {
    const INGEST: &str = "spiffe://cluster.local/ns/ctx/sa/ingest";
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&key);
    config["auth"]["services"] = json!([
        {"name": "ingest", "match": {"spiffe_id": INGEST}, "tenant": "acme", "scopes": ["write:projects/*"]}
    ]);
    config["auth"]["operations"].as_array_mut().unwrap().push(
        json!({"name": "ingest", "methods": ["POST"], "path": "/v1/ingest/{context}",
                     "action": "write", "require_service": true}),
    );
    let mut gw = Gateway::new(config);
    // What Envoy's connection attributes say, per stream.
    let send = |gw: &mut Gateway, mtls: &str, uri_san: Option<&str>| {
        let id = gw.open(&[
            (":method", "POST"),
            (":path", "/v1/ingest/projects/a"),
            (":authority", "api"),
            ("x-context-service", "forged"),
        ]);
        let attributes = &mut gw.host.streams.get_mut(&id).unwrap().attributes;
        attributes.insert("peer_mtls", mtls.into());
        if let Some(uri) = uri_san {
            attributes.insert("peer_uri_san", uri.into());
        }
        let flow = gw.worker.on_request_headers(&mut gw.host, id, true);
        (id, flow)
    };
    let (id, flow) = send(&mut gw, "true", Some(INGEST));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(
        gw.host.header(id, "x-context-service").as_deref(),
        Some("ingest")
    );
    assert_eq!(
        gw.host.header(id, "x-context-subject").as_deref(),
        Some(INGEST)
    );
    assert_eq!(
        gw.host.header(id, "x-context-tenant").as_deref(),
        Some("acme")
    );
    let state = gw
        .host
        .stream(id)
        .filter_state
        .get("ctxgate.request")
        .cloned();
    let state = String::from_utf8(state.unwrap()).unwrap();
    assert!(state.contains(r#""service":"ingest""#), "{state}");
    gw.respond(id, 200);

    let (id, _) = send(&mut gw, "false", None);
    assert_eq!(gw.reply_status(id), Some(403));
    assert!(gw.host.header(id, "x-context-service").is_none());
    gw.respond(id, 403);
    let (id, _) = send(
        &mut gw,
        "true",
        Some("spiffe://cluster.local/ns/ctx/sa/other"),
    );
    assert_eq!(gw.reply_status(id), Some(403));
    gw.respond(id, 403);
    gw.tick_at(NOW_MS + 1000);
    assert_eq!(
        gw.host
            .metric("ctxgate_auth.denied.missing_client_certificate"),
        1
    );
    assert_eq!(
        gw.host
            .metric("ctxgate_auth.denied.unknown_service_certificate"),
        1
    );
    assert_eq!(gw.host.metric("ctxgate_auth.allowed"), 1);
}

#[test]
fn each_request_is_counted_by_its_labels_and_its_upstream_latency_recorded() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&key);
    config["metrics"] = json!({"tenants": ["acme"], "route_header": "x-ctxgate-route-tier"});
    config["ratelimit"] = ratelimit_section(1, json!({}));
    let mut gw = Gateway::new(config);
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let (id, _) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    gw.host.now_ms += 120;
    gw.respond(id, 503);
    let (id, _) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &bearer)],
    );
    assert_eq!(gw.reply_status(id), Some(429));
    gw.worker.on_done(&mut gw.host, id);
    let (id, _) = gw.request("GET", "/v1/contexts/projects/a", &[]);
    assert_eq!(gw.reply_status(id), Some(401));
    gw.worker.on_done(&mut gw.host, id);
    gw.tick_at(gw.host.now_ms + 1000);
    let count = |labels: &str| gw.host.metric(&format!("ctxgate_requests.{labels}"));
    assert_eq!(
        count("tier.standard.operation.read.decision.allow.status_class.5xx.tenant.acme"),
        1
    );
    assert_eq!(
        count("tier.standard.operation.read.decision.throttle.status_class.4xx.tenant.acme"),
        1
    );
    assert_eq!(
        count("tier.none.operation.none.decision.deny.status_class.4xx.tenant.none"),
        1
    );
    assert_eq!(
        gw.host
            .samples("ctxgate_upstream_latency_ms.operation.read.route.standard"),
        [120],
        "forwarded to response headers, routed by the tier tag"
    );
}

#[test]
fn a_plugin_without_auth_counts_requests_only_when_told() {
    // A chain of ctxgate plugins must count each request once: by default
    // the plugin that runs auth does.
    for (metrics, counted) in [(json!({}), false), (json!({"requests": true}), true)] {
        let mut gw = Gateway::new(json!({
            "ratelimit": ratelimit_section(100, json!({})),
            "metrics": metrics,
        }));
        let (id, _) = gw.request("GET", "/v1/contexts/projects/a", &[]);
        gw.respond(id, 200);
        gw.tick_at(gw.host.now_ms + 1000);
        let names: Vec<&str> = gw
            .host
            .metric_names
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.starts_with("ctxgate_requests."))
            .collect();
        assert_eq!(!names.is_empty(), counted, "{metrics}: {names:?}");
    }
}

/// The outcome values a stream's filter state holds (`filter_state` on).
fn outcome_state(gw: &Gateway, id: StreamId) -> Vec<(String, String)> {
    let mut values: Vec<(String, String)> = gw
        .host
        .stream(id)
        .filter_state
        .iter()
        .filter(|(k, _)| *k != crate::contract::REQUEST_FILTER_STATE)
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    values.sort();
    values
}

fn pairs(values: &[(&str, &str)]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_decision_reaches_filter_state_once_decided_allow_throttle_deny() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&key);
    config["ratelimit"] = ratelimit_section(3, json!({}));
    config["filter_state"] = json!(true);
    let mut gw = Gateway::new(config);
    let bearer = format!("Bearer {}", token(&key, "acme"));
    let headers = [("authorization", bearer.as_str())];
    let (id, _) = gw.request("GET", "/v1/contexts/projects/a", &headers);
    assert_eq!(
        outcome_state(&gw, id),
        pairs(&[
            ("ctxgate.breaker", "closed"),
            ("ctxgate.cost", "1"),
            ("ctxgate.decision", "allow")
        ])
    );
    gw.respond(id, 200);
    for _ in 0..2 {
        let (id, _) = gw.request("GET", "/v1/contexts/projects/a", &headers);
        gw.respond(id, 200);
    }
    // The fourth read is over the limit of 3: throttled, nothing charged,
    // and no breaker met (the pipeline stopped before it).
    let (id, flow) = gw.request("GET", "/v1/contexts/projects/a", &headers);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.reply_status(id), Some(429));
    assert_eq!(
        outcome_state(&gw, id),
        pairs(&[("ctxgate.decision", "throttle")])
    );
    gw.worker.on_done(&mut gw.host, id);
    // A forged token: denied by auth.
    let (id, _) = gw.request(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", "Bearer not.a.token")],
    );
    assert_eq!(gw.reply_status(id), Some(401));
    assert_eq!(
        outcome_state(&gw, id),
        pairs(&[("ctxgate.decision", "deny")])
    );
}

#[test]
fn an_open_breaker_is_in_the_outcome_and_nothing_is_written_unless_configured() {
    let mut gw = Gateway::new(json!({"breaker": breaker_section(), "filter_state": true}));
    for _ in 0..4 {
        let (id, _) = gw.request("GET", "/", &[]);
        gw.respond(id, 503);
    }
    let (id, _) = gw.request("GET", "/", &[]);
    assert_eq!(gw.reply_status(id), Some(503));
    assert_eq!(
        outcome_state(&gw, id),
        pairs(&[("ctxgate.breaker", "open"), ("ctxgate.decision", "deny")])
    );
    let mut off = Gateway::new(json!({"breaker": breaker_section()}));
    let (id, _) = off.request("GET", "/", &[]);
    assert!(off.host.stream(id).filter_state.is_empty());
}

#[test]
fn a_timed_request_records_each_stage_the_decision_the_token_check_and_its_sizes() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&key);
    config["metrics"] = json!({"timing_every": 2});
    let mut gw = Gateway::new(config);
    // Every clock reading is 10 µs after the one before.
    gw.host.clock_step_ns = 10_000;
    let acme = format!("Bearer {}", token(&key, "acme"));
    let globex = format!("Bearer {}", token(&key, "globex"));
    for bearer in [&acme, &acme, &acme, &globex] {
        let (id, _, _) = gw.send(
            "PUT",
            "/v1/contexts/projects/engineering",
            &[("authorization", bearer.as_str())],
            Some(b"{\"a\":1}"),
        );
        gw.respond_with(id, 200, &[("content-length", "321")]);
    }
    // The second and the fourth were timed: acme's token was in this
    // worker's cache by then, globex's had its signature verified.
    assert_eq!(gw.host.samples("ctxgate_auth_check_us.cache.miss"), [10]);
    assert_eq!(gw.host.samples("ctxgate_auth_check_us.cache.hit"), [10]);
    for stage in ["auth", "ratelimit", "tagging", "breaker"] {
        let samples = gw.host.samples(&format!("ctxgate_stage_us.stage.{stage}"));
        assert_eq!(samples.len(), 2, "{stage}: {samples:?}");
    }
    // auth: its two readings around the token check come between the
    // stage's own two.
    assert_eq!(gw.host.samples("ctxgate_stage_us.stage.auth"), [30, 30]);
    assert_eq!(gw.host.samples("ctxgate_decision_us").len(), 2);
    assert_eq!(
        gw.host
            .samples("ctxgate_context_bytes.operation.write.direction.request"),
        [7, 7]
    );
    assert_eq!(
        gw.host
            .samples("ctxgate_context_bytes.operation.write.direction.response"),
        [321, 321]
    );
    let mut off =
        Gateway::new(json!({"breaker": breaker_section(), "metrics": {"timing_every": 0}}));
    for _ in 0..3 {
        let (id, _) = off.request("GET", "/", &[]);
        off.respond(id, 200);
    }
    assert!(off.host.samples("ctxgate_decision_us").is_empty());
}

/// The issuer rotates its key and keeps the `kid`. The worker that fetches
/// the new set installs it at once; another, between its ticks, meets a
/// token signed with the new key as a bad signature against the old one.
/// It looks for a newer set in shared data first, installs it and
/// decides again: the token passes on every worker as soon as one has the
/// keys, not a tick later.
#[test]
fn a_bad_signature_installs_newer_shared_keys_before_refusing() {
    let old = ES256KeyPair::generate().with_key_id("k1");
    let new = ES256KeyPair::generate().with_key_id("k1");
    let mut config = full_chain(&old);
    config["auth"]["providers"][0]["jwks"] =
        json!({"remote": {"cluster": "idp", "refresh_interval_seconds": 300}});
    let mut gw = Gateway::new(config.clone());
    let fetch = |gw: &mut Gateway, keys: &ES256KeyPair| {
        gw.worker.on_tick(&mut gw.host);
        let call = gw.host.calls.last().map(|c| c.id).unwrap();
        let body = jwks(keys).to_string().into_bytes();
        gw.worker.on_call_response(
            &mut gw.host,
            call,
            CallResponse::Http {
                status: Some(200),
                body,
            },
        );
    };
    fetch(&mut gw, &old);
    // A second worker of the same proxy: installs the old set at its tick.
    let mut other = Worker::new(config.to_string().as_bytes(), "test", SEEDS, &mut gw.host)
        .unwrap_or_else(|e| panic!("config: {e}"));
    other.on_tick(&mut gw.host);
    let mut on_other = |gw: &mut Gateway, key: &ES256KeyPair, tenant: &str| {
        let bearer = format!("Bearer {}", token(key, tenant));
        let id = gw.open(&[
            (":method", "GET"),
            (":path", "/v1/contexts/projects/a"),
            (":authority", "api"),
            ("authorization", &bearer),
        ]);
        let flow = other.on_request_headers(&mut gw.host, id, true);
        (flow, gw.host.stream(id).reply.as_ref().map(|r| r.status))
    };
    assert_eq!(on_other(&mut gw, &old, "acme"), (Flow::Continue, None));
    // No newer set anywhere: the new key's token is a bad signature (a
    // refusal this worker caches until it installs keys).
    assert_eq!(on_other(&mut gw, &new, "globex"), (Flow::Pause, Some(401)));

    // The refresh comes due; the first worker fetches the rotated set.
    gw.host.now_ms += 301_000;
    fetch(&mut gw, &new);
    assert_eq!(
        on_other(&mut gw, &new, "acme"),
        (Flow::Continue, None),
        "the other worker took the new set from shared data before its tick"
    );
    assert_eq!(on_other(&mut gw, &old, "initech"), (Flow::Pause, Some(401)));
}
