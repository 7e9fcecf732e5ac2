//! End-to-end tests of the MCP stage through a real Envoy (1.40, V8,
//! `--concurrency 2`): a real MCP server and a real MCP client, both the
//! official Python SDK (`mcp` 2.3.0, `services/mcp-demo`), talking
//! Streamable HTTP through `ctxgate.wasm` (auth + mcp + ratelimit).
//!
//! Tokens are HS256 from the demo key set, with the audience the MCP
//! resource URL (RFC 8707) and a scope of `read:projects/engineering/*`
//! unless a case says otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::Duration;

use ctxgate_demo::mint::DEMO_ISSUER;
use ctxgate_demo::{MintAlg, MintOptions};
use ctxgate_e2e::{
    Envoy, EnvoyConfig, McpClient, McpServer, Request, Response, Rls, Route, Sessions, WasmFilter,
    demo_idp, fresh_minute,
};
use serde_json::{Value, json};

/// A free port on 127.0.0.1 for the gateway's listener: the resource URL
/// (and so the metadata URL in every challenge) must name it up front.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

struct Gateway {
    envoy: Envoy,
    server: McpServer,
    resource: String,
}

impl Gateway {
    fn start(sessions: Sessions) -> Gateway {
        Gateway::start_with(sessions, |filter, config| (filter, config))
    }

    /// The gateway, with `custom` changing its plugin and Envoy config
    /// before the catch-all route to the MCP server is added last.
    fn start_with(
        sessions: Sessions,
        custom: impl FnOnce(WasmFilter, EnvoyConfig) -> (WasmFilter, EnvoyConfig),
    ) -> Gateway {
        let server = McpServer::start(sessions);
        let port = free_port();
        let resource = format!("http://127.0.0.1:{port}/mcp");
        let provider = {
            let mut p = demo_idp::hs256_provider();
            p["audiences"] = json!([resource]);
            p
        };
        let filter = WasmFilter::ctxgate("ctxgate")
            .stage(
                "auth",
                json!({
                    "providers": [provider],
                    "operations": [
                        {"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}
                    ],
                }),
            )
            .stage(
                "mcp",
                json!({
                    "max_body_bytes": 65536,
                    "tools": [
                        {"name": "search_context", "action": "read", "context": {"pointer": "/path"}},
                        {"name": "read_context", "action": "read", "context": {"pointer": "/path"}},
                        {"name": "traverse_context", "action": "read", "context": {"pointer": "/path"}},
                        {"name": "write_context", "action": "write", "context": {"pointer": "/path"}},
                    ],
                    "resources": [{"uri_prefix": "ctx://", "context_prefix": ""}],
                    "resource_metadata": {
                        "resource": resource,
                        "authorization_servers": [DEMO_ISSUER],
                        "scopes_supported": ["read:projects/*", "write:projects/*"],
                    },
                }),
            )
            .stage(
                "ratelimit",
                json!({
                    "tiers": {
                        "standard": [{"name": "per_minute", "limit": 100000, "window_seconds": 60}],
                        "anonymous": [{"name": "per_minute", "limit": 100000, "window_seconds": 60}],
                    },
                }),
            );
        let config = EnvoyConfig::new().concurrency(2).listener_field(
            "address",
            json!({"socket_address": {"address": "127.0.0.1", "port_value": port}}),
        );
        let (filter, config) = custom(filter, config);
        let config = config
            .filter(filter)
            .cluster(server.cluster("mcp"))
            .route(Route::prefix("/").cluster("mcp"));
        let envoy = Envoy::start(&config);
        assert_eq!(envoy.listener_addr().port(), port);
        Gateway {
            envoy,
            server,
            resource,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.envoy.listener_addr()
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr())
    }

    fn token(&self, scopes: &[&str]) -> String {
        self.token_of("agent-7", scopes)
    }

    fn token_of(&self, subject: &str, scopes: &[&str]) -> String {
        let opts = MintOptions {
            sub: subject.to_owned(),
            tenant: Some("acme".to_owned()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            aud: vec![self.resource.clone()],
            alg: MintAlg::HS256,
            ..MintOptions::default()
        };
        ctxgate_demo::mint(demo_idp::demo_keys(), &opts).unwrap()
    }

    fn client(&self, scopes: &[&str]) -> McpClient {
        McpClient::new(self.url()).token(&self.token(scopes))
    }

    /// A raw POST to `/mcp` (for what no SDK client would send).
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut request = Request::post(path)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.body(body.to_vec()).send(self.addr())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Envoy log ---\n{}", self.envoy.log());
            eprintln!("--- MCP server log ---\n{}", self.server.log());
        }
    }
}

const ENGINEERING: &[&str] = &["read:projects/engineering/*"];

fn tool_call(id: u64, tool: &str, path: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {"path": path}}})
    .to_string()
    .into_bytes()
}

fn json_body(response: &Response) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&response.body)))
}

#[test]
fn an_agent_calls_a_tool_on_a_context_its_scope_covers_and_the_server_never_sees_the_token() {
    let gw = Gateway::start(Sessions::Stateless);
    for era in [None, Some("2025-11-25")] {
        let mut client = gw.client(ENGINEERING);
        if let Some(version) = era {
            client = client.protocol_version(version);
        }
        let found = client.call(
            "search_context",
            &json!({"path": "projects/engineering/roadmap", "query": "roadmap"}),
        );
        let received = &found.structured()["received"];
        assert_eq!(
            received["authorization"], false,
            "no token passthrough ({era:?})"
        );
        assert_eq!(received["tenant"], "acme", "{era:?}");
        assert_eq!(received["subject"], "agent-7", "{era:?}");
    }
}

#[test]
fn the_same_tool_on_a_context_outside_the_scope_is_refused_with_the_scope_it_needs() {
    let gw = Gateway::start(Sessions::Stateless);
    let refused = gw
        .client(ENGINEERING)
        .call("read_context", &json!({"path": "projects/sales/plan"}));
    let error = refused.error();
    assert_eq!(error["http_status"], 403, "{error}");
    let challenge = error["www_authenticate"].as_str().unwrap();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(r#"scope="read:projects/sales/plan""#),
        "{challenge}"
    );
    // Dot segments do not climb out of the scope: refused as malformed.
    let climbing = gw.client(ENGINEERING).call(
        "read_context",
        &json!({"path": "projects/engineering/../sales/plan"}),
    );
    assert_eq!(climbing.error()["http_status"], 400);
    // Nothing refused reached the server.
    assert!(
        gw.server
            .requests()
            .iter()
            .all(|r| r.name.as_deref() != Some("read_context")),
        "{}",
        gw.server.log()
    );
}

#[test]
fn a_tool_missing_from_the_map_is_denied() {
    let gw = Gateway::start(Sessions::Stateless);
    let response = gw.post(
        "/mcp",
        &[(
            "authorization",
            &format!("Bearer {}", gw.token(&["admin:*"])),
        )],
        &tool_call(11, "drop_all_contexts", "projects/engineering"),
    );
    assert_eq!(response.status, 403);
    let body = json_body(&response);
    assert_eq!(body["id"], 11);
    assert_eq!(body["error"]["data"]["reason"], "mcp_unknown_tool");
}

#[test]
fn a_401_names_the_resource_metadata_and_a_real_client_follows_it() {
    let gw = Gateway::start(Sessions::Stateless);
    let found = McpClient::new(gw.url()).discover();
    let result = found.result();
    let metadata_url = format!(
        "http://{}/.well-known/oauth-protected-resource/mcp",
        gw.addr()
    );
    assert_eq!(result["resource_metadata"], metadata_url.as_str());
    assert_eq!(result["metadata"]["resource"], gw.resource.as_str());
    assert_eq!(
        result["metadata"]["authorization_servers"],
        json!([DEMO_ISSUER])
    );
    assert_eq!(result["resource_matches"], true);
    // The 401 itself is a JSON-RPC error. Auth decides at the headers,
    // before Proxy-Wasm hands over the body, so its id is null.
    let response = gw.post(
        "/mcp",
        &[],
        &tool_call(5, "search_context", "projects/engineering/roadmap"),
    );
    assert_eq!(response.status, 401);
    let body = json_body(&response);
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], Value::Null);
}

#[test]
fn a_streamed_tool_result_arrives_event_by_event_through_the_gateway() {
    let gw = Gateway::start(Sessions::Stateful);
    let delay = Duration::from_millis(100);
    let direct = McpClient::new(gw.server.url())
        .protocol_version("2025-11-25")
        .call_streamed("traverse_context", &json!({"path": "projects", "depth": 2}));
    let through = gw
        .client(&["read:projects", "read:projects/*"])
        .protocol_version("2025-11-25")
        .call_streamed("traverse_context", &json!({"path": "projects", "depth": 2}));
    let times = through.event_times();
    assert!(times.len() >= 4, "{:?}", through.lines);
    let first = through.time_to_first_event().unwrap();
    assert!(
        *times.last().unwrap() - first >= delay * 3,
        "the events were not held back: {times:?}"
    );
    let direct_first = direct.time_to_first_event().unwrap();
    eprintln!("time to first event: direct {direct_first:?}, through the gateway {first:?}");
    assert!(
        first < direct_first + delay * 2,
        "the gateway delays the first event: {first:?} against {direct_first:?}"
    );
}

#[test]
fn bounds_and_malformed_requests_get_their_own_refusals() {
    let gw = Gateway::start(Sessions::Stateless);
    let bearer = format!("Bearer {}", gw.token(ENGINEERING));
    let auth = [("authorization", bearer.as_str())];
    // Oversized body: 413 unread.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    let response = gw.post("/mcp", &auth, big.as_bytes());
    assert_eq!(response.status, 413);
    assert_eq!(
        json_body(&response)["error"]["data"]["reason"],
        "mcp_body_too_large"
    );
    // Bad JSON.
    let response = gw.post("/mcp", &auth, br#"{"jsonrpc":"2.0","id":2,"method":"#);
    assert_eq!(response.status, 400);
    assert_eq!(json_body(&response)["error"]["code"], -32700);
    // A key given twice: the gateway and the server could read it two ways.
    let response = gw.post(
        "/mcp",
        &auth,
        br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search_context","name":"write_context","arguments":{"path":"projects/engineering"}}}"#,
    );
    assert_eq!(response.status, 400);
    assert_eq!(
        json_body(&response)["error"]["data"]["reason"],
        "mcp_duplicate_key"
    );
    // Mcp-Name disagrees with the body.
    let response = gw.post(
        "/mcp",
        &[
            auth[0],
            ("mcp-method", "tools/call"),
            ("mcp-name", "search_context"),
        ],
        &tool_call(4, "write_context", "projects/engineering/x"),
    );
    assert_eq!(response.status, 400);
    let body = json_body(&response);
    assert_eq!(
        (body["id"].clone(), body["error"]["code"].clone()),
        (json!(4), json!(-32020))
    );
    // A token in the query string.
    let response = gw.post(
        &format!("/mcp?access_token={}", gw.token(ENGINEERING)),
        &auth,
        &tool_call(6, "search_context", "projects/engineering"),
    );
    assert_eq!(response.status, 400);
    assert_eq!(
        json_body(&response)["error"]["data"]["reason"],
        "mcp_query_token"
    );
    // Not JSON at all.
    let response = Request::post("/mcp")
        .header("content-type", "text/plain")
        .header("authorization", &bearer)
        .body(b"ping".to_vec())
        .send(gw.addr());
    assert_eq!(response.status, 415);
}

fn tool_names(listing: &Value) -> Vec<&str> {
    listing["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {listing}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

#[test]
fn tools_list_shows_only_the_tools_the_caller_may_use() {
    let gw = Gateway::start(Sessions::Stateful);
    for era in [None, Some("2025-11-25")] {
        let reader = {
            let c = gw.client(ENGINEERING);
            match era {
                Some(v) => c.protocol_version(v),
                None => c,
            }
        };
        let listing = reader.list_tools();
        assert_eq!(
            tool_names(listing.result()),
            ["search_context", "read_context", "traverse_context"],
            "a reader does not see write_context ({era:?})"
        );
        let writer = {
            let c = gw.client(&["read:projects/*", "write:projects/engineering/*"]);
            match era {
                Some(v) => c.protocol_version(v),
                None => c,
            }
        };
        assert_eq!(
            tool_names(writer.list_tools().result()),
            [
                "search_context",
                "read_context",
                "write_context",
                "traverse_context"
            ],
            "{era:?}"
        );
    }
}

#[test]
fn a_session_id_serves_only_the_principal_it_was_issued_to() {
    let gw = Gateway::start(Sessions::Stateful);
    let scopes = ["read:projects/*"];
    let alice = McpClient::new(gw.url()).token(&gw.token_of("alice", &scopes));
    let opened = alice.open_session();
    let session = opened.result()["session_id"]
        .as_str()
        .expect("the server issued a session id")
        .to_owned();
    let roadmap = json!({"path": "projects/engineering/roadmap"});
    // Its owner goes on using it.
    let own = alice.call_with_session(&session, "read_context", &roadmap);
    assert_eq!(own.structured()["received"]["session_id"], session.as_str());
    // Another principal with a valid token and the same scopes is refused:
    // 404, as for a session that does not exist.
    let mallory = McpClient::new(gw.url()).token(&gw.token_of("mallory", &scopes));
    let hijack = mallory.call_with_session(&session, "read_context", &roadmap);
    assert_eq!(hijack.error()["http_status"], 404, "{:?}", hijack.lines);
    // A session id the server never issued: 404 too.
    let made_up =
        alice.call_with_session("0123456789abcdef0123456789abcdef", "read_context", &roadmap);
    assert_eq!(made_up.error()["http_status"], 404);
    // Nothing of mallory's reached the server on alice's session.
    assert!(
        gw.server
            .requests()
            .iter()
            .filter(|r| r.session_id.as_deref() == Some(session.as_str()))
            .all(|r| r.subject.as_deref() != Some("mallory")),
        "{}",
        gw.server.log()
    );
}

/// Per-tool global limits in `ctxgate-rls`: a day's budget per tenant, and
/// two `write_context` calls a minute per tenant.
const PER_TOOL_LIMITS: &str = "domain: ctxgate
descriptors:
  - key: tenant
    rate_limit: {unit: day, requests_per_unit: 1000000}
    descriptors:
      - key: mcp_method
        value: tools/call
        descriptors:
          - key: mcp_tool
            value: write_context
            rate_limit: {unit: minute, requests_per_unit: 2}
";

#[test]
fn tool_calls_are_routed_by_their_tool_and_limited_per_tool_through_the_rls() {
    // Writes go to a backend of their own, chosen by the tag the gateway
    // sets from the call's standard headers (checked against the body).
    let writes = McpServer::start(Sessions::Stateless);
    let rls = Rls::start(PER_TOOL_LIMITS, None);
    let writes_cluster = writes.cluster("mcp_writes");
    let rls_cluster = rls.cluster("ctxgate_rls");
    let gw = Gateway::start_with(Sessions::Stateless, move |filter, config| {
        let mut ratelimit = filter.config["ratelimit"].clone();
        ratelimit["global"] = json!({"cluster": "ctxgate_rls", "mode": "hierarchical"});
        let filter = filter
            .stage("ratelimit", ratelimit)
            .stage("tagging", json!({}));
        let config = config
            .access_log(
                "mcp-access %REQ(X-MCP-METHOD)% %REQ(X-MCP-TOOL)% %REQ(X-CONTEXT-TENANT)% \
                 %FILTER_STATE(wasm.ctxgate.request:PLAIN)%\n",
            )
            .cluster(writes_cluster)
            .cluster(rls_cluster)
            .route(
                Route::prefix("/mcp")
                    .header("x-mcp-tool", "write_context")
                    .cluster("mcp_writes"),
            );
        (filter, config)
    });
    let writer = gw.client(&["write:projects/engineering/*"]);
    let write = |n: u32| {
        writer.call(
            "write_context",
            &json!({"path": format!("projects/engineering/note-{n}"), "content": "x"}),
        )
    };
    // The three writes fall in one of the RLS's minute windows.
    fresh_minute(Duration::from_secs(15));
    for n in 0..2 {
        let written = write(n);
        assert_eq!(written.structured()["received"]["tenant"], "acme", "{n}");
    }
    let routed: Vec<_> = writes
        .requests()
        .into_iter()
        .filter(|r| r.rpc_method.as_deref() == Some("tools/call"))
        .collect();
    assert_eq!(routed.len(), 2, "both writes reached the writes backend");
    for r in &routed {
        assert_eq!(r.tag_method.as_deref(), Some("tools/call"));
        assert_eq!(r.tag_tool.as_deref(), Some("write_context"));
    }
    // The third write of the minute: the RLS refuses the tool, and the
    // client gets a JSON-RPC error answering its request.
    let refused = write(2);
    let error = refused.error();
    assert_eq!(error["http_status"], 429, "{error}");
    assert_eq!(error["jsonrpc_code"], -31429, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("tools/call write_context of tenant acme exceeded its global limit of 2"),
        "{error}"
    );
    assert_eq!(
        writes
            .requests()
            .iter()
            .filter(|r| r.rpc_method.as_deref() == Some("tools/call"))
            .count(),
        2,
        "the refused write never reached the backend"
    );
    // Other tools of the tenant go on, to the default backend.
    let found = gw.client(ENGINEERING).call(
        "search_context",
        &json!({"path": "projects/engineering/roadmap", "query": "roadmap"}),
    );
    assert_eq!(found.structured()["received"]["tenant"], "acme");
    let searched = gw
        .server
        .requests()
        .into_iter()
        .find(|r| r.name.as_deref() == Some("search_context"))
        .expect("the search reached the default backend");
    assert_eq!(searched.tag_tool.as_deref(), Some("search_context"));
    // A 2025 client declares nothing in headers: no MCP tags, and the
    // access log still names the call from the filter state the mcp
    // stage wrote once it read the body.
    gw.client(ENGINEERING).protocol_version("2025-11-25").call(
        "read_context",
        &json!({"path": "projects/engineering/roadmap"}),
    );
    let read = gw
        .server
        .requests()
        .into_iter()
        .find(|r| r.name.as_deref() == Some("read_context"))
        .expect("the read reached the default backend");
    assert_eq!((read.tag_method, read.tag_tool), (None, None));
    let log = gw.envoy.stdout();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("mcp-access "))
        .collect();
    let line_of = |needle: &str| {
        *lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no access log line with {needle}: {lines:#?}"))
    };
    let write_line = line_of("mcp-access tools/call write_context acme ");
    assert!(
        write_line.contains(r#""target":"write_context""#),
        "{write_line}"
    );
    let read_line = line_of(r#""target":"read_context""#);
    assert!(read_line.starts_with("mcp-access - - acme "), "{read_line}");
    assert!(
        read_line.contains(r#""name":"mcp:tools/call""#),
        "{read_line}"
    );
}
