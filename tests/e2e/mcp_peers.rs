//! The demo MCP peers against each other, with no gateway between them:
//! `services/mcp-demo/client.py` and `server.py`, both on the official
//! Python SDK (`mcp` 2.3.0). These pin down what the peers do on their own
//! (which revision the SDK negotiates, when a session id is issued, that a
//! traversal streams, what the server records of each request), so the
//! gateway's MCP tests can tell the gateway's doing from the peers'.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use ctxgate_e2e::{
    Client, McpClient, McpServer, Request, ScriptedResponse, ScriptedServer, Sessions,
};
use serde_json::{Value, json};

const ROADMAP: &str = "projects/engineering/roadmap";
/// The newest revision of the `initialize` handshake, which has sessions.
const HANDSHAKE: &str = "2025-11-25";
/// The revision the SDK negotiates by default: no handshake, no session.
const MODERN: &str = "2026-07-28";

fn tool_names(listing: &Value) -> Vec<&str> {
    listing["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect()
}

fn text_of(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[test]
fn it_lists_the_context_tools_with_their_output_schemas() {
    let server = McpServer::start(Sessions::Stateless);
    let listing = McpClient::new(server.url()).list_tools();

    assert_eq!(
        listing.protocol_version(),
        Some(MODERN),
        "the SDK's default negotiation"
    );
    assert_eq!(listing.session_id(), None);
    let tools = listing.result();
    assert_eq!(
        tool_names(tools),
        [
            "search_context",
            "read_context",
            "write_context",
            "traverse_context"
        ]
    );
    for tool in tools["tools"].as_array().unwrap() {
        assert_eq!(
            tool["inputSchema"]["properties"]["path"]["type"], "string",
            "{tool}"
        );
        assert!(
            tool["outputSchema"]["properties"]["received"].is_object(),
            "{tool}"
        );
    }
}

#[test]
fn it_calls_each_tool_over_both_protocol_eras() {
    let server = McpServer::start(Sessions::Stateless);
    let modern = McpClient::new(server.url());
    let handshake = McpClient::new(server.url()).protocol_version(HANDSHAKE);
    let path = "projects/research/findings";

    let written = modern.call(
        "write_context",
        &json!({"path": path, "content": "Gateways read MCP."}),
    );
    assert_eq!(written.protocol_version(), Some(MODERN));
    assert_eq!(
        (
            &written.structured()["created"],
            &written.structured()["bytes"]
        ),
        (&json!(true), &json!(18))
    );

    // The store is the server's: a client of the other era reads the write.
    let read = handshake.call("read_context", &json!({"path": path}));
    assert_eq!(read.protocol_version(), Some(HANDSHAKE));
    assert_eq!(read.structured()["content"], "Gateways read MCP.");

    let search = modern.call(
        "search_context",
        &json!({"path": "projects", "query": "mcp"}),
    );
    let found: Vec<&Value> = search.structured()["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["path"])
        .collect();
    assert_eq!(
        found,
        [&json!(ROADMAP), &json!(path)],
        "case-insensitive, below the path only"
    );

    let walk = modern.call(
        "traverse_context",
        &json!({"path": "projects/research", "depth": 1}),
    );
    assert_eq!(walk.structured()["visited"], json!([path]));
    assert!(
        walk.events().is_empty(),
        "no progress token, no log opt-in: no events"
    );

    // Tool failures are results with isError, not protocol errors.
    let missing = handshake.call("read_context", &json!({"path": "projects/none"}));
    assert_eq!(missing.result()["isError"], true);
    assert!(text_of(missing.result()).contains("no context document at projects/none"));
    let traversal = modern.call(
        "read_context",
        &json!({"path": "projects/../users/alice/preferences"}),
    );
    assert_eq!(traversal.result()["isError"], true);
    assert!(text_of(traversal.result()).contains("invalid context path"));
}

/// The traversal's events reach the client one by one, `delay` apart, not
/// all with the result: checked over both protocol eras (2026-07-28 commits
/// the response to SSE at the first event; the 2025 handshake always
/// answers a POST with SSE).
#[test]
fn it_streams_a_traversal_event_by_event() {
    let delay = Duration::from_millis(150);
    let server = McpServer::start_with_delay(Sessions::Stateful, delay);
    // projects/ holds six documents down to depth 3.
    let walk = json!({"path": "projects", "depth": 3});
    for client in [
        McpClient::new(server.url()),
        McpClient::new(server.url()).protocol_version(HANDSHAKE),
    ] {
        let streamed = client.call_streamed("traverse_context", &walk);
        let era = streamed.protocol_version().unwrap().to_owned();
        assert_eq!(
            streamed.structured()["visited"].as_array().unwrap().len(),
            6,
            "{era}"
        );

        let kinds: Vec<&str> = streamed
            .events()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["progress", "log"].repeat(6),
            "one progress and one log per document ({era})"
        );
        let progress: Vec<&Value> = streamed
            .events()
            .into_iter()
            .filter(|e| e["event"] == "progress")
            .collect();
        assert_eq!(progress[5]["progress"], 6.0, "{era}");
        assert_eq!(progress[5]["total"], 6.0, "{era}");

        let times = streamed.event_times();
        let first = streamed.time_to_first_event().unwrap();
        let result = streamed.time_to_result().unwrap();
        assert!(
            times.windows(2).all(|pair| pair[0] <= pair[1]),
            "events in order ({era}): {times:?}"
        );
        // Six visits, each followed by `delay`: the first event is sent
        // five delays before the last and six before the result. Allow one
        // delay for the first event's own way out (the response starts
        // with it), which can take tens of milliseconds on a busy machine;
        // were the events held back to the end, the spread would be ~0.
        let spread = delay * 4;
        assert!(
            *times.last().unwrap() - first >= spread,
            "events spread over time ({era}): {times:?}"
        );
        assert!(
            result - first >= spread,
            "the first event {first:?} came long before the result {result:?} ({era})"
        );
    }
}

/// The server writes a response's head and its body (each SSE event) in
/// separate writes. With Nagle's algorithm on its socket, each write after
/// the first waits for the peer to ACK the one before, and a peer in
/// delayed-ACK mode (a keep-alive client from its second request on,
/// Envoy's pooled upstream connection) sends that ACK only after its
/// delayed-ACK timer (40 ms minimum on Linux). So every answer after the
/// first on a connection took ~44 ms, and through the gateway the first
/// event of a streamed call came ~40 ms late. The server sets TCP_NODELAY.
#[test]
fn it_answers_back_to_back_requests_on_one_connection_without_waiting_for_an_ack() {
    let server = McpServer::start(Sessions::Stateless);
    let initialize = Request::post("/mcp")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": HANDSHAKE,
                "capabilities": {},
                "clientInfo": {"name": "keep-alive", "version": "0"},
            },
        }));
    let mut client = Client::connect(server.addr());
    // The first exchange of a connection is ACKed at once (quick-ACK mode).
    assert_eq!(client.send(&initialize).status, 200);
    let mut times: Vec<Duration> = (0..7)
        .map(|_| {
            let start = Instant::now();
            let response = client.send(&initialize);
            let took = start.elapsed();
            assert_eq!(response.status, 200, "{}", response.text());
            took
        })
        .collect();
    assert_eq!(client.reconnects(), 0, "one kept-alive connection");
    times.sort();
    let median = times[times.len() / 2];
    assert!(
        median < Duration::from_millis(30),
        "answers on a kept-alive connection wait for delayed ACKs \
         (Nagle on the server's socket): median {median:?} of {times:?}"
    );
}

#[test]
fn it_issues_a_session_id_only_in_stateful_mode_and_only_in_the_handshake_era() {
    let stateful = McpServer::start(Sessions::Stateful);
    let opened = McpClient::new(stateful.url()).open_session();
    let session = opened.result()["session_id"]
        .as_str()
        .expect("a session id")
        .to_owned();
    assert_eq!(opened.protocol_version(), Some(HANDSHAKE));
    assert_eq!(opened.session_id(), Some(session.as_str()));
    // The session served the request after the handshake, and was left open.
    let on_session: Vec<String> = stateful
        .requests()
        .into_iter()
        .filter(|r| r.session_id.as_deref() == Some(session.as_str()))
        .map(|r| format!("{} {}", r.http_method, r.rpc_method.unwrap_or_default()))
        .collect();
    assert!(
        on_session.contains(&"POST notifications/initialized".to_owned()),
        "{on_session:?}"
    );
    assert!(
        on_session.contains(&"POST tools/list".to_owned()),
        "{on_session:?}"
    );
    assert!(
        !on_session.iter().any(|r| r.starts_with("DELETE")),
        "{on_session:?}"
    );

    let modern = McpClient::new(stateful.url())
        .protocol_version(MODERN)
        .open_session();
    assert_eq!(
        modern.result()["session_id"],
        Value::Null,
        "2026-07-28 has no sessions"
    );

    let stateless = McpServer::start(Sessions::Stateless);
    let unsessioned = McpClient::new(stateless.url()).open_session();
    assert_eq!(unsessioned.protocol_version(), Some(HANDSHAKE));
    assert_eq!(unsessioned.result()["session_id"], Value::Null);
}

/// Without a gateway, a session id is all it takes to use a session: the
/// server binds sessions to nothing else (the SDK would bind them to the
/// credential only if the server did auth itself). The gateway must.
#[test]
fn a_session_id_serves_whoever_presents_it_when_nothing_is_in_front() {
    let server = McpServer::start(Sessions::Stateful);
    let opened = McpClient::new(server.url())
        .token("token-of-alice")
        .open_session();
    let session = opened.result()["session_id"].as_str().unwrap().to_owned();

    let borrowed = McpClient::new(server.url())
        .token("token-of-mallory")
        .call_with_session(&session, "read_context", &json!({"path": ROADMAP}));
    assert_eq!(borrowed.protocol_version(), Some(HANDSHAKE));
    assert_eq!(
        borrowed.structured()["received"]["session_id"],
        session.as_str()
    );
    assert!(
        borrowed.structured()["content"]
            .as_str()
            .unwrap()
            .starts_with("Q3")
    );

    let unknown = McpClient::new(server.url()).call_with_session(
        "0123456789abcdef",
        "read_context",
        &json!({"path": ROADMAP}),
    );
    assert!(unknown.answered);
    assert_eq!(unknown.error()["http_status"], 404);
    assert_eq!(unknown.error()["message"], "Session not found");
}

#[test]
fn it_reads_a_context_resource_and_renders_the_prompt() {
    let server = McpServer::start(Sessions::Stateless);
    let client = McpClient::new(server.url());

    let read = client.read_resource(&format!("ctx://{ROADMAP}"));
    let contents = &read.result()["contents"][0];
    assert_eq!(contents["uri"], format!("ctx://{ROADMAP}"));
    assert_eq!(contents["mimeType"], "text/markdown");
    assert!(
        contents["text"]
            .as_str()
            .unwrap()
            .starts_with("Q3: ship MCP-aware routing")
    );

    // A path the store does not hold, also when it would resolve to one.
    let outside = client.read_resource("ctx://projects/../teams/platform/oncall");
    assert_eq!(outside.error()["http_status"], 400);
    assert_eq!(outside.error()["jsonrpc_code"], -32602);

    let prompt = client.get_prompt("summarize_context", &json!({"path": ROADMAP}));
    let message = &prompt.result()["messages"][0];
    assert_eq!(message["role"], "user");
    let text = message["content"]["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("Summarize the context document {ROADMAP}")),
        "{text}"
    );
    assert!(text.contains("multi-region context replication"), "{text}");
}

#[test]
fn it_records_what_each_request_arrived_with_and_never_a_token() {
    let server = McpServer::start(Sessions::Stateful);
    let token = "demo-token-that-must-not-be-echoed";
    let with_identity = McpClient::new(server.url())
        .protocol_version(HANDSHAKE)
        .token(token)
        .header("x-context-tenant", "acme")
        .header("x-context-subject", "user-1");
    let read = with_identity.call("read_context", &json!({"path": ROADMAP}));
    let received = &read.structured()["received"];
    assert_eq!(received["authorization"], true);
    assert_eq!(received["tenant"], "acme");
    assert_eq!(received["subject"], "user-1");
    assert_eq!(received["protocol_version"], HANDSHAKE);
    assert_eq!(received["session_id"].as_str(), read.session_id());

    let requests = server.requests();
    let methods: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.http_method,
                r.rpc_method.clone().unwrap_or_default()
            )
        })
        .collect();
    // The SDK's whole conversation: handshake, the server-to-client stream,
    // the call, the listing it validates the structured result against, and
    // the end of the session.
    for expected in [
        "POST initialize",
        "POST notifications/initialized",
        "GET ",
        "POST tools/call",
        "POST tools/list",
        "DELETE ",
    ] {
        assert!(
            methods.contains(&expected.to_owned()),
            "{expected:?} not in {methods:?}"
        );
    }
    let call = requests
        .iter()
        .find(|r| r.rpc_method.as_deref() == Some("tools/call"))
        .unwrap();
    assert_eq!(call.name.as_deref(), Some("read_context"));
    assert!(
        requests
            .iter()
            .all(|r| r.authorization && r.tenant.as_deref() == Some("acme"))
    );
    assert!(!server.log().contains(token), "the server logged the token");
    assert!(
        !read
            .lines
            .iter()
            .any(|line| line.to_string().contains(token)),
        "the result echoed the token"
    );

    let anonymous = McpClient::new(server.url()).call("read_context", &json!({"path": ROADMAP}));
    assert_eq!(anonymous.structured()["received"]["authorization"], false);
    assert_eq!(anonymous.structured()["received"]["tenant"], Value::Null);
}

/// `discover` does what the SDK's OAuth flow does first: from the 401's
/// `WWW-Authenticate: ... resource_metadata="..."` to the protected
/// resource metadata (RFC 9728), checked against the server URL.
#[test]
fn discover_follows_a_401_to_the_protected_resource_metadata() {
    let idp = ScriptedServer::start();
    let resource = idp.url("/mcp");
    let metadata_url = idp.url("/.well-known/oauth-protected-resource/mcp");
    let metadata = json!({"resource": resource, "authorization_servers": [idp.url("/")], "scopes_supported": ["read:projects/*"]});
    let challenge =
        format!(r#"Bearer error="invalid_request", resource_metadata="{metadata_url}""#);
    idp.set_handler(move |request| match request.path.as_str() {
        "/mcp" => ScriptedResponse::json(401, &json!({"error": "unauthorized"}))
            .header("www-authenticate", &challenge),
        "/.well-known/oauth-protected-resource/mcp" => ScriptedResponse::json(200, &metadata),
        _ => ScriptedResponse::new(404),
    });

    let found = McpClient::new(idp.url("/mcp"))
        .token("ignored-by-discover")
        .discover();
    let result = found.result();
    assert_eq!(result["resource_metadata"], metadata_url.as_str());
    assert_eq!(result["metadata_url"], metadata_url.as_str());
    assert_eq!(result["metadata"]["resource"], resource.as_str());
    assert_eq!(
        result["metadata"]["scopes_supported"],
        json!(["read:projects/*"])
    );
    assert_eq!(result["resource_matches"], true);
    let challenged = &idp.requests()[0];
    assert_eq!(
        (
            challenged.method.as_str(),
            challenged.header("authorization")
        ),
        ("POST", None)
    );

    // The demo server itself asks for no token: nothing to discover.
    let server = McpServer::start(Sessions::Stateless);
    let open = McpClient::new(server.url()).discover();
    assert_eq!(open.error()["http_status"], 200);
}

/// What the gateway's tests assert on when the gateway refuses: the HTTP
/// status and challenge of an error without a JSON-RPC body, as an answer;
/// and no answer at all, told apart.
#[test]
fn an_http_refusal_is_an_answer_with_its_status_and_challenge() {
    let refusing = ScriptedServer::start();
    refusing.set_response(
        403,
        &[(
            "www-authenticate",
            r#"Bearer error="insufficient_scope", scope="read:projects/x""#,
        )],
        "forbidden",
    );
    let refused = McpClient::new(refusing.url("/mcp"))
        .protocol_version(HANDSHAKE)
        .list_tools();
    assert!(refused.answered);
    let error = refused.error();
    assert_eq!(error["http_status"], 403);
    assert_eq!(error["jsonrpc_code"], Value::Null, "no JSON-RPC body");
    assert_eq!(error["message"], "forbidden");
    assert!(
        error["www_authenticate"]
            .as_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unanswered = McpClient::new(format!("http://{closed}/mcp")).list_tools();
    assert!(!unanswered.answered);
    assert!(
        unanswered.error()["message"]
            .as_str()
            .unwrap()
            .starts_with("no answer")
    );
}
