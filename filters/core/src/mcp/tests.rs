//! Requests through the whole MCP layer, as the gateway will run them:
//! headers and body read, decided, answered; listings filtered on the way
//! back.

use serde_json::{Value, json};

use super::*;
use crate::config::parse_json;
use crate::http::RequestHead;
use crate::reply::LocalReply;
use crate::scope::ScopeSet;

fn tool_map() -> ToolMap {
    let config: config::McpConfig = parse_json(
        json!({
            "tools": [
                {"name": "search_context", "action": "read", "context": {"pointer": "/path"}},
                {"name": "read_context", "action": "read", "context": {"pointer": "/path"}},
                {"name": "write_context", "action": "write", "context": {"pointer": "/path"},
                 "cost": {"base": 2, "bands": [{"above": 1024, "multiplier": 3}]}},
                {"name": "traverse_context", "action": "read", "context": {"pointer": "/path"},
                 "cost": {"base": 10}}
            ],
            "resources": [{"uri_prefix": "ctx://", "context_prefix": ""}]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    config.validate().unwrap();
    ToolMap::compile(&config).unwrap()
}

/// What the gateway does with one POST: the resolved messages, or the
/// reply that refuses them.
fn post(
    headers: &[(&str, &str)],
    body: &str,
    scopes: &[&str],
) -> Result<Vec<Resolved>, LocalReply> {
    let headers: crate::headers::Headers = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect();
    let head = RequestHead {
        method: "POST",
        path: "/mcp",
        headers: &headers,
    };
    let mcp = McpHeaders::from_head(&head);
    let scopes = ScopeSet::parse(scopes.iter().copied()).unwrap();
    parse_body(body.as_bytes(), &mcp, &Limits::default())
        .and_then(|parsed| tool_map().decide(&parsed, &mcp, &scopes))
        .map_err(|refusal| refusal.reply())
}

fn error_body(reply: &LocalReply) -> Value {
    serde_json::from_slice(&reply.body).unwrap()
}

fn call(id: u64, tool: &str, arguments: Value) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments,
                   "_meta": {PROTOCOL_VERSION_META: "2026-07-28", "progressToken": "p-1"}}
    })
    .to_string()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const V2026: (&str, &str) = ("mcp-protocol-version", "2026-07-28");
const READER: &[&str] = &["read:projects/engineering/*"];

#[test]
fn a_2026_tool_call_with_its_standard_headers() {
    let headers = [
        JSON,
        V2026,
        ("mcp-method", "tools/call"),
        ("mcp-name", "search_context"),
    ];
    let body = call(
        1,
        "search_context",
        json!({"path": "projects/engineering/x", "query": "q"}),
    );
    let resolved = post(&headers, &body, READER).unwrap();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].operation, "mcp:tools/call");
    assert_eq!(resolved[0].name.as_deref(), Some("search_context"));
    assert_eq!(
        resolved[0].access.as_ref().unwrap().required_scope(),
        "read:projects/engineering/x"
    );
    assert_eq!(resolved[0].cost.units(body.len() as u64), 1);
}

#[test]
fn the_engineering_reader_is_kept_to_engineering() {
    let sales = post(
        &[JSON],
        &call(2, "search_context", json!({"path": "projects/sales/x"})),
        READER,
    )
    .unwrap_err();
    assert_eq!(sales.status, 403);
    assert_eq!(sales.details, "ctxgate_mcp_refused{insufficient_scope}");
    assert_eq!(
        error_body(&sales),
        json!({"jsonrpc": "2.0", "id": 2, "error": {
            "code": -31403,
            "message": "mcp:tools/call needs the scope read:projects/sales/x",
            "data": {"reason": "insufficient_scope", "required_scope": "read:projects/sales/x"}
        }})
    );
    let climbing = post(
        &[JSON],
        &call(
            3,
            "search_context",
            json!({"path": "projects/engineering/../sales/x"}),
        ),
        READER,
    )
    .unwrap_err();
    assert_eq!(climbing.status, 400);
    let body = error_body(&climbing);
    assert_eq!(body["id"], 3);
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(body["error"]["data"]["reason"], "mcp_invalid_context");
}

#[test]
fn a_header_that_disagrees_with_the_body_is_refused() {
    // A gateway in front routes and limits on Mcp-Name: it must be the
    // tool the server will run.
    let headers = [
        JSON,
        V2026,
        ("mcp-method", "tools/call"),
        ("mcp-name", "search_context"),
    ];
    let body = call(
        4,
        "write_context",
        json!({"path": "projects/engineering/x", "content": "hi"}),
    );
    let reply = post(&headers, &body, &["write:projects/engineering/*"]).unwrap_err();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.details, "ctxgate_mcp_refused{mcp_header_mismatch}");
    let body = error_body(&reply);
    assert_eq!(body["id"], 4);
    assert_eq!(body["error"]["code"], -32020);
    assert_eq!(
        body["error"]["message"],
        "Mcp-Name header value 'search_context' does not match body value 'write_context'"
    );
    let older = [JSON, ("mcp-protocol-version", "2025-11-25")];
    let reply = post(
        &older,
        &call(
            5,
            "search_context",
            json!({"path": "projects/engineering/x"}),
        ),
        READER,
    )
    .unwrap_err();
    assert_eq!(
        error_body(&reply)["error"]["data"]["reason"],
        "mcp_header_mismatch"
    );
}

#[test]
fn a_2025_session_starts_free() {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {"sampling": {}},
                   "clientInfo": {"name": "mcp", "version": "0.1.0"}}
    });
    let resolved = post(
        &[("content-type", "application/json; charset=utf-8")],
        &initialize.to_string(),
        &[],
    )
    .unwrap();
    assert_eq!(
        (resolved[0].access.clone(), resolved[0].cost.units(0)),
        (None, 0)
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert!(
        post(
            &[JSON, ("mcp-protocol-version", "2025-06-18")],
            &initialized.to_string(),
            &[]
        )
        .is_ok()
    );
}

#[test]
fn a_refused_notification_has_no_body() {
    let progress = json!({"jsonrpc": "2.0", "method": "custom/notify", "params": {"x": 1}});
    let reply = post(&[JSON], &progress.to_string(), READER).unwrap_err();
    assert_eq!(reply.status, 403);
    assert!(reply.body.is_empty());
    assert_eq!(reply.details, "ctxgate_mcp_refused{insufficient_scope}");
}

#[test]
fn unreadable_bodies_get_a_parse_error_with_a_null_id() {
    for (headers, body, status, code, reason) in [
        (
            &[("content-type", "text/plain")][..],
            "{}",
            415,
            -32600,
            "mcp_not_json",
        ),
        (
            &[JSON][..],
            "{\"jsonrpc\":",
            400,
            -32700,
            "mcp_invalid_json",
        ),
        (
            &[JSON][..],
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_context","name":"write_context"}}"#,
            400,
            -32700,
            "mcp_duplicate_key",
        ),
        (
            &[JSON, V2026][..],
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            400,
            -32600,
            "mcp_batch_not_allowed",
        ),
    ] {
        let reply = post(headers, body, READER).unwrap_err();
        assert_eq!(reply.status, status, "{body}");
        let error = error_body(&reply);
        assert_eq!(error["id"], Value::Null, "{body}");
        assert_eq!(error["error"]["code"], code, "{body}");
        assert_eq!(error["error"]["data"]["reason"], reason, "{body}");
    }
}

#[test]
fn a_2025_03_26_batch_is_decided_message_by_message() {
    let headers = [JSON, ("mcp-protocol-version", "2025-03-26")];
    let batch = format!(
        "[{},{},{}]",
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "search_context", "arguments": {"path": "projects/engineering/a"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})
    );
    let resolved = post(&headers, &batch, READER).unwrap();
    let operations: Vec<&str> = resolved.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(
        operations,
        [
            "mcp:tools/list",
            "mcp:tools/call",
            "mcp:notifications/cancelled"
        ]
    );
    let forbidden = batch.replace("projects/engineering/a", "projects/hr/a");
    let reply = post(&headers, &forbidden, READER).unwrap_err();
    assert_eq!(reply.status, 403);
    assert_eq!(error_body(&reply)["id"], Value::Null);
    // A 2026-07-28 message inside says which revision it speaks.
    let mixed = batch.replace(
        r#""arguments":{"path":"projects/engineering/a"}"#,
        &format!(r#""arguments":{{"path":"projects/engineering/a"}},"_meta":{{"{PROTOCOL_VERSION_META}":"2026-07-28"}}"#),
    );
    assert_ne!(mixed, batch);
    let reply = post(&headers, &mixed, READER).unwrap_err();
    assert_eq!(
        error_body(&reply)["error"]["data"]["reason"],
        "mcp_header_mismatch"
    );
}

#[test]
fn write_costs_grow_with_the_body() {
    let small = call(
        6,
        "write_context",
        json!({"path": "projects/engineering/x", "content": "hi"}),
    );
    let large = call(
        7,
        "write_context",
        json!({"path": "projects/engineering/x", "content": "x".repeat(4096)}),
    );
    let writer = &["write:projects/engineering"];
    let cost = |body: &str| {
        post(&[JSON], body, writer).unwrap()[0]
            .cost
            .units(body.len() as u64)
    };
    assert_eq!(cost(&small), 2);
    assert_eq!(cost(&large), 6);
}

#[test]
fn a_listing_request_and_its_filtered_sse_response() {
    let map = tool_map();
    let headers = McpHeaders {
        content_type: Header::Value(b"application/json"),
        protocol_version: Header::Value(b"2026-07-28"),
        method: Header::Value(b"tools/list"),
        name: Header::Absent,
    };
    let request = json!({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list",
                         "params": {"_meta": {PROTOCOL_VERSION_META: "2026-07-28"}}});
    let parsed = parse_body(request.to_string().as_bytes(), &headers, &Limits::default()).unwrap();
    let scopes = ScopeSet::parse(READER.iter().copied()).unwrap();
    assert!(map.decide(&parsed, &headers, &scopes).is_ok());
    let listings = Listings::of(&parsed);
    let response = json!({"jsonrpc": "2.0", "id": "list-1", "result": {"tools": [
        {"name": "search_context", "inputSchema": {"type": "object"}},
        {"name": "write_context", "inputSchema": {"type": "object"}},
        {"name": "delete_everything", "inputSchema": {"type": "object"}}
    ], "ttlMs": 60000}});
    let stream = format!("event: message\r\nid: abc\r\ndata: {response}\r\n\r\n");
    let viewer = Viewer {
        map: &map,
        scopes: &scopes,
    };
    let mut filter = SseListingFilter::new(listings, 1 << 20);
    let (head, tail) = stream.as_bytes().split_at(40);
    let mut out = filter.push(head, &viewer).unwrap();
    assert!(out.is_empty(), "nothing is sent before the event is whole");
    out.extend(filter.push(tail, &viewer).unwrap());
    out.extend(filter.finish(&viewer));
    let out = String::from_utf8(out).unwrap();
    let data = out
        .strip_prefix("event: message\r\nid: abc\r\ndata: ")
        .and_then(|rest| rest.strip_suffix("\r\n\r\n"))
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(data).unwrap(),
        json!({"jsonrpc": "2.0", "id": "list-1", "result": {"tools": [
            {"name": "search_context", "inputSchema": {"type": "object"}}
        ], "ttlMs": 60000}})
    );
}
