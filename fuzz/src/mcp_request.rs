//! `mcp_request`: an MCP POST, its headers and body, read and decided.

use std::cell::OnceCell;

use serde_json::Value;

use ctxgate_core::mcp::{
    Header, Id, Kind, Limits, McpHeaders, Message, ParsedBody, Refusal, Target, ToolMap,
    decode_name, parse_body,
};
use ctxgate_core::path::ContextPath;
use ctxgate_core::scope::ScopeSet;

use crate::fixtures::{self, MCP_SCOPES};

struct Fixture {
    map: ToolMap,
    scopes: ScopeSet,
}

thread_local! {
    static FIXTURE: OnceCell<Fixture> = const { OnceCell::new() };
}

const CONTENT_TYPES: [Option<&[u8]>; 8] = [
    Some(b"application/json"),
    Some(b"application/json"),
    Some(b"application/json; charset=utf-8"),
    Some(b"Application/JSON"),
    None,
    Some(b"text/event-stream"),
    Some(b"application/jsonx"),
    Some(b"application/json\xff"),
];

const VERSIONS: [Option<&[u8]>; 8] = [
    None,
    Some(b"2025-03-26"),
    Some(b"2025-06-18"),
    Some(b"2025-11-25"),
    Some(b"2026-07-28"),
    Some(b"2026-07-28"),
    Some(b"2025-03-26 "),
    Some(b""),
];

/// The default `free_methods`, less `notifications/*`.
const FREE_METHODS: [&str; 7] = [
    "initialize",
    "ping",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "server/discover",
];

const DEPTHS: [usize; 4] = [64, 3, 8, 1000];
const BATCHES: [usize; 2] = [32, 2];

/// One header from two bits: absent, given once (twice as likely), or
/// repeated.
fn header(bits: u8, value: Option<&[u8]>) -> Header<'_> {
    match (bits & 3, value) {
        (0, _) | (_, None) => Header::Absent,
        (3, _) => Header::Repeated,
        (_, Some(value)) => Header::Value(value),
    }
}

/// Input: two bytes of flags, the `Mcp-Method` value up to the first
/// `\n`, the `Mcp-Name` value up to the next `\n`, then the body.
///
/// Byte 0: bits 0-1 `Mcp-Method` (absent, once, once, repeated), bits 2-3
/// `Mcp-Name` likewise, bits 4-6 the `content-type` (a table, mostly
/// JSON), bit 7 a repeated `MCP-Protocol-Version`. Byte 1: bits 0-2 the
/// `MCP-Protocol-Version` (a table, absent first), bits 3-4 the depth
/// limit, bit 5 the batch limit, bit 6 a repeated `content-type`.
///
/// The body is read, decided with the fixture tool map and scopes, and
/// both again: the same result. A refusal's reply is a JSON-RPC 2.0 error
/// with the request's id or `null`; what is allowed is granted by the
/// scopes (an independent reading of them) on a canonical context, and
/// agrees with the `Mcp-Method` and `Mcp-Name` the request declared.
pub fn mcp_request(data: &[u8]) {
    let (flags, rest) = data.split_at(data.len().min(2));
    let f0 = flags.first().copied().unwrap_or(0);
    let f1 = flags.get(1).copied().unwrap_or(0);
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let method_value = parts.next().unwrap_or_default();
    let name_value = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    let content_type = if f1 & 0x40 != 0 {
        Header::Repeated
    } else {
        CONTENT_TYPES[usize::from((f0 >> 4) & 7)].map_or(Header::Absent, Header::Value)
    };
    let protocol_version = if f0 & 0x80 != 0 {
        Header::Repeated
    } else {
        VERSIONS[usize::from(f1 & 7)].map_or(Header::Absent, Header::Value)
    };
    let headers = McpHeaders {
        content_type,
        protocol_version,
        method: header(f0, Some(method_value)),
        name: header(f0 >> 2, Some(name_value)),
    };
    let limits = Limits {
        max_depth: DEPTHS[usize::from((f1 >> 3) & 3)],
        max_batch: BATCHES[usize::from((f1 >> 5) & 1)],
    };

    FIXTURE.with(|cell| {
        let fixture = cell.get_or_init(|| Fixture {
            map: fixtures::mcp_map(),
            scopes: fixtures::mcp_scopes(),
        });
        let parsed = parse_body(body, &headers, &limits);
        assert_eq!(
            parse_body(body, &headers, &limits),
            parsed,
            "the same body read twice reads differently"
        );
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(refusal) => {
                check_parse_refusal(body, &refusal);
                return;
            }
        };
        check_parsed(&parsed);
        let decided = fixture.map.decide(&parsed, &headers, &fixture.scopes);
        assert_eq!(
            fixture.map.decide(&parsed, &headers, &fixture.scopes),
            decided,
            "the same body decided twice decides differently"
        );
        match decided {
            Err(refusal) => check_decide_refusal(&parsed, &refusal),
            Ok(resolved) => {
                assert_eq!(
                    resolved.len(),
                    parsed.messages.len(),
                    "one resolution per message"
                );
                for (message, resolved) in parsed.messages.iter().zip(&resolved) {
                    check_allowed(message, resolved);
                }
                check_declared(&parsed, &headers);
            }
        }
    });
}

/// Messages the parser accepted are JSON-RPC as the module documents it.
fn check_parsed(parsed: &ParsedBody) {
    assert!(!parsed.messages.is_empty(), "a body without messages");
    assert!(parsed.batch || parsed.messages.len() == 1);
    for m in &parsed.messages {
        match m.kind {
            Kind::Request => assert!(m.id.is_some() && m.method.is_some(), "{m:?}"),
            Kind::Notification => assert!(m.id.is_none() && m.method.is_some(), "{m:?}"),
            Kind::Response => assert!(m.id.is_some() && m.method.is_none(), "{m:?}"),
        }
        let expected = match m.method.as_deref() {
            Some("tools/call") => Some("tool"),
            Some("prompts/get") => Some("prompt"),
            Some("resources/read") => Some("resource"),
            _ => None,
        };
        let got = m.target.as_ref().map(|t| match t {
            Target::Tool(_) => "tool",
            Target::Prompt(_) => "prompt",
            Target::Resource(_) => "resource",
        });
        assert_eq!(got, expected, "{m:?}: target of the wrong kind");
        if m.arguments.is_some() {
            assert_eq!(got, Some("tool"), "{m:?}: arguments outside a tool call");
        }
    }
}

/// The id a lenient reader sees in a single-object body, if it is one an
/// `Id` can be.
fn lenient_id(body: &[u8]) -> Option<Value> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let id = value.as_object()?.get("id")?;
    Id::from_json(id).map(|id| id.to_json())
}

fn is_batch(body: &[u8]) -> bool {
    matches!(serde_json::from_slice::<Value>(body), Ok(Value::Array(_)))
}

fn check_parse_refusal(body: &[u8], refusal: &Refusal) {
    if let Some(id) = &refusal.id {
        assert_eq!(
            lenient_id(body).as_ref(),
            Some(&id.to_json()),
            "{refusal:?}: the refusal echoes an id the body does not carry"
        );
    }
    if is_batch(body) {
        assert!(
            refusal.id.is_none() && !refusal.notification,
            "{refusal:?}: a batch's refusal is one error with id null"
        );
    }
    check_reply(refusal);
}

fn check_decide_refusal(parsed: &ParsedBody, refusal: &Refusal) {
    if parsed.batch {
        assert!(
            refusal.id.is_none() && !refusal.notification,
            "{refusal:?}: a batch's refusal is one error with id null"
        );
    } else {
        let message = &parsed.messages[0];
        assert_eq!(refusal.id, message.id, "{refusal:?}: not the message's id");
        assert_eq!(
            refusal.notification,
            message.kind == Kind::Notification,
            "{refusal:?}: a reply body exactly when the message was no notification"
        );
    }
    check_reply(refusal);
}

/// The reply: the status, and unless a notification was refused a
/// JSON-RPC 2.0 error echoing the id (or `null`).
fn check_reply(refusal: &Refusal) {
    let reply = refusal.reply();
    assert_eq!(reply.status, refusal.status());
    assert!(
        matches!(reply.status, 400 | 403 | 415),
        "{refusal:?}: status {}",
        reply.status
    );
    if refusal.notification {
        assert!(
            reply.body.is_empty(),
            "{refusal:?}: a notification's reply has a body"
        );
        return;
    }
    let body: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{refusal:?}: the reply is not JSON: {e}"));
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    let id = body
        .as_object()
        .and_then(|o| o.get("id"))
        .unwrap_or_else(|| panic!("{body}: no id"));
    assert_eq!(
        *id,
        refusal.id.as_ref().map_or(Value::Null, Id::to_json),
        "{body}: not the request's id"
    );
    assert!(id.is_null() || Id::from_json(id).is_some(), "{body}");
    assert_eq!(body["error"]["code"], refusal.jsonrpc_code(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(
        body["error"]["data"]["reason"],
        refusal.reason.code(),
        "{body}"
    );
    assert!(
        body.as_object().is_some_and(|o| o.len() == 3),
        "{body}: a JSON-RPC error has jsonrpc, id and error only"
    );
}

/// An allowed message: its context is canonical and granted.
fn check_allowed(message: &Message, resolved: &ctxgate_core::mcp::Resolved) {
    let Some(access) = &resolved.access else {
        // Free: responses and the default free methods only.
        let free = match message.method.as_deref() {
            None => message.kind == Kind::Response,
            Some(method) => FREE_METHODS.contains(&method) || method.starts_with("notifications/"),
        };
        assert!(free, "{message:?}: allowed without access: {resolved:?}");
        return;
    };
    let context = &access.context;
    let shown = context.to_string();
    assert!(context.depth() > 0, "{message:?}: empty context");
    for segment in context.segments() {
        assert!(
            !matches!(segment.as_str(), "" | "." | ".."),
            "{message:?}: segment {segment:?} in {shown}"
        );
        assert!(
            !segment
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '%' | ';' | '?' | '#') || c.is_control()),
            "{message:?}: segment {segment:?} holds a delimiter"
        );
        assert_eq!(
            *segment,
            segment.to_lowercase(),
            "{message:?}: segment not lowercased"
        );
        assert_eq!(segment.trim(), segment, "{message:?}: segment {segment:?}");
    }
    assert_eq!(
        ContextPath::parse(&shown).as_ref(),
        Ok(context),
        "{message:?}: the context {shown} does not parse back to itself"
    );
    assert!(
        scopes_grant(access.action.as_str(), context.segments()),
        "{message:?}: allowed {} on {shown}, which no scope of {MCP_SCOPES:?} grants",
        access.action
    );
    // Where the context comes from.
    match &message.target {
        Some(Target::Prompt(_)) => assert!(shown.starts_with("mcp/prompts/"), "{shown}"),
        Some(Target::Resource(uri)) => assert!(
            uri.starts_with("ctx://") || uri.starts_with("docs://"),
            "{uri}: read through no resource rule"
        ),
        Some(Target::Tool(name)) => assert!(
            resolved.name.as_deref() == Some(name.as_str()),
            "{resolved:?}"
        ),
        None => assert!(shown.starts_with("mcp/methods/"), "{shown}"),
    }
}

/// An independent reading of [`MCP_SCOPES`]: `read` < `write` < `admin`,
/// a scope covers its path and everything below, `*` is any one segment.
fn scopes_grant(action: &str, segments: &[String]) -> bool {
    let rank = |a: &str| ["read", "write", "admin"].iter().position(|x| *x == a);
    let needed = rank(action).expect("a known action");
    MCP_SCOPES.iter().any(|scope| {
        let (granted, pattern) = scope.split_once(':').expect("scope");
        let pattern: Vec<&str> = pattern.split('/').collect();
        rank(granted).expect("scope action") >= needed
            && segments.len() >= pattern.len()
            && pattern
                .iter()
                .zip(segments)
                .all(|(want, have)| *want == "*" || want == have)
    })
}

/// An allowed request's headers said what its body does.
fn check_declared(parsed: &ParsedBody, headers: &McpHeaders<'_>) {
    for m in &parsed.messages {
        if let Header::Value(value) = headers.method {
            assert_eq!(
                Some(value),
                m.method.as_deref().map(str::as_bytes),
                "allowed although Mcp-Method disagrees with {m:?}"
            );
        }
        if let Header::Value(value) = headers.name {
            let name = decode_name(value);
            assert!(
                name.is_some() && name.as_deref() == m.target.as_ref().map(Target::name),
                "allowed although Mcp-Name {value:?} disagrees with {m:?}"
            );
        }
        assert!(
            !matches!(headers.method, Header::Repeated)
                && !matches!(headers.name, Header::Repeated),
            "allowed with a repeated standard header"
        );
    }
    let first = &parsed.messages[0];
    match headers.declared() {
        None => assert!(
            !matches!(headers.method, Header::Value(v) if !v.is_empty() && v.iter().all(|b| (0x20..0x7f).contains(b))),
            "a printable Mcp-Method declares nothing"
        ),
        Some(declared) => {
            assert_eq!(
                Some(declared.method.as_str()),
                first.method.as_deref(),
                "declared {declared:?}, the body is {first:?}"
            );
            match (&declared.tool, &first.target) {
                (None, _) => {}
                (Some(tool), Some(Target::Tool(name))) => {
                    assert_eq!(tool, name, "declared {declared:?}, the body is {first:?}")
                }
                (Some(_), _) => panic!("declared {declared:?} for {first:?}, which calls no tool"),
            }
            if let (None, Header::Value(_), Some(Target::Tool(name))) =
                (&declared.tool, headers.name, &first.target)
            {
                assert!(
                    name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "Mcp-Name names {name:?}, printable, but declares no tool"
                );
            }
        }
    }
}
