//! A POST body on an MCP endpoint, read into the messages the gateway
//! decides on.
//!
//! The body must be declared `application/json`, be UTF-8 and JSON that
//! no two readers could read differently (see [`super::json`]), and hold
//! one JSON-RPC 2.0 message: a request (`method` and an `id` that is a
//! string or an integer, never `null`), a notification (`method`, no
//! `id`), or a response the client sends to a server's request (`result`
//! or `error`, and an `id`). `params`, when present, is an object or an
//! array.
//!
//! A JSON array is a batch. Only protocol revision 2025-03-26 had them
//! (2025-06-18 removed them); a request without `MCP-Protocol-Version` is
//! taken to be 2025-03-26, as the 2025-06-18 transport says a server should
//! assume (and 2026-07-28 says it may). An empty batch is invalid in any
//! revision.
//!
//! For the methods whose target the gateway authorises, the target is read
//! too: `tools/call` and `prompts/get` name theirs in `params.name`,
//! `resources/read` in `params.uri`, and `tools/call` carries its
//! `params.arguments` (an object, or absent). A target of the wrong type
//! is invalid params (-32602), as the server would answer.

use serde_json::{Map, Number, Value};

use super::headers::{Header, McpHeaders};
use super::json::{self, ReadError};
use super::refusal::{Reason, Refusal, quoted};

/// Where a 2026-07-28 request carries its protocol revision:
/// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
pub const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// The one protocol revision with batches.
pub const BATCH_REVISION: &str = "2025-03-26";

/// How much of a body the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of arrays and objects (the message object itself is
    /// 1). At most [`json::MAX_DEPTH_CEILING`].
    pub max_depth: usize,
    /// Most messages in a batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_depth: 64,
            max_batch: 32,
        }
    }
}

/// A JSON-RPC id: a string or an integer, kept as JSON wrote it so a
/// reply can echo it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    String(String),
    /// An integer (a JSON number without fraction or exponent that fits
    /// 64 bits).
    Number(Number),
}

impl Id {
    /// The id `value` is, if it is one (`null` and fractions are not).
    pub fn from_json(value: &Value) -> Option<Id> {
        match value {
            Value::String(s) => Some(Id::String(s.clone())),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Id::Number(n.clone())),
            _ => None,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Id::String(s) => Value::String(s.clone()),
            Id::Number(n) => Value::Number(n.clone()),
        }
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A method call with an id: the server answers it.
    Request,
    /// A method call without an id: nobody answers it.
    Notification,
    /// The client's answer to a server's request (`result` or `error`).
    Response,
}

/// What a message acts on, for the methods the gateway authorises by
/// target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tools/call`: the tool's name.
    Tool(String),
    /// `prompts/get`: the prompt's name.
    Prompt(String),
    /// `resources/read`: the resource's URI.
    Resource(String),
}

impl Target {
    /// The name or URI, as the body wrote it (what `Mcp-Name` mirrors).
    pub fn name(&self) -> &str {
        match self {
            Target::Tool(name) | Target::Prompt(name) | Target::Resource(name) => name,
        }
    }
}

/// One JSON-RPC message, as far as the gateway needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// `None` for a notification.
    pub id: Option<Id>,
    /// `None` for a response.
    pub method: Option<String>,
    pub target: Option<Target>,
    /// `tools/call`'s `params.arguments`, when given.
    pub arguments: Option<Map<String, Value>>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, when
    /// given (2026-07-28 and later).
    pub protocol_version: Option<String>,
}

/// The messages of one POST body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBody {
    /// One message, or a batch's (at least one).
    pub messages: Vec<Message>,
    /// The body was a JSON array.
    pub batch: bool,
}

/// Reads a POST body. `headers` gives its `content-type` and
/// `MCP-Protocol-Version` (whether a batch is allowed).
pub fn parse_body(
    body: &[u8],
    headers: &McpHeaders<'_>,
    limits: &Limits,
) -> Result<ParsedBody, Refusal> {
    if !is_json(headers.content_type) {
        return Err(Refusal::new(
            Reason::NotJson,
            "the body of an MCP message must be sent as application/json",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::new(Reason::InvalidJson, "the body is not UTF-8"))?;
    let value = json::read(text, limits.max_depth).map_err(|e| match e {
        ReadError::Syntax(detail) => Refusal::new(
            Reason::InvalidJson,
            format!("the body is not JSON: {detail}"),
        ),
        ReadError::DuplicateKey(key) => Refusal::new(
            Reason::DuplicateKey,
            format!("the key '{}' appears twice in one object", quoted(&key)),
        ),
        ReadError::TooDeep => Refusal::new(
            Reason::TooDeep,
            format!("the body nests deeper than {} levels", limits.max_depth),
        ),
    })?;
    match value {
        Value::Array(items) => batch(items, headers.protocol_version, limits),
        single => Ok(ParsedBody {
            messages: vec![message(single)?],
            batch: false,
        }),
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: Header<'_>) -> bool {
    let Header::Value(value) = content_type else {
        return false;
    };
    std::str::from_utf8(value).is_ok_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    })
}

fn batch(
    items: Vec<Value>,
    protocol_version: Header<'_>,
    limits: &Limits,
) -> Result<ParsedBody, Refusal> {
    let allowed = match protocol_version {
        Header::Absent => true,
        Header::Value(version) => version == BATCH_REVISION.as_bytes(),
        Header::Repeated => false,
    };
    if !allowed {
        return Err(Refusal::new(
            Reason::BatchNotAllowed,
            format!("batches are only allowed in protocol revision {BATCH_REVISION}"),
        ));
    }
    if items.is_empty() {
        return Err(Refusal::new(Reason::InvalidJsonRpc, "the batch is empty"));
    }
    if items.len() > limits.max_batch {
        return Err(Refusal::new(
            Reason::BatchTooLarge,
            format!("a batch holds at most {} messages", limits.max_batch),
        ));
    }
    let messages = items
        .into_iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Refusal::whole_batch)?;
    // A response is routed to its request by id: two requests with one id
    // in a batch could not be told apart.
    let requests: Vec<&Id> = messages
        .iter()
        .filter(|m| m.kind == Kind::Request)
        .filter_map(|m| m.id.as_ref())
        .collect();
    if requests
        .iter()
        .enumerate()
        .any(|(i, id)| requests.iter().skip(i + 1).any(|other| other == id))
    {
        return Err(Refusal::new(
            Reason::InvalidJsonRpc,
            "two requests of the batch have the same id",
        ));
    }
    Ok(ParsedBody {
        messages,
        batch: true,
    })
}

/// Reads one message of the body.
fn message(value: Value) -> Result<Message, Refusal> {
    let Value::Object(mut object) = value else {
        return Err(Refusal::new(
            Reason::InvalidJsonRpc,
            "a JSON-RPC message is a JSON object",
        ));
    };
    // The id first, so that every later refusal can echo it.
    let id = match object.get("id") {
        None => None,
        Some(value) => Some(Id::from_json(value).ok_or_else(|| {
            Refusal::new(
                Reason::InvalidJsonRpc,
                "the id must be a string or an integer",
            )
        })?),
    };
    let notification = object.contains_key("method") && id.is_none();
    let invalid =
        |reason: Reason, text: &str| Refusal::new(reason, text).with_id(id.clone(), notification);
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(Reason::InvalidJsonRpc, "jsonrpc must be \"2.0\""));
    }
    let answers = object.contains_key("result") || object.contains_key("error");
    let method = match object.remove("method") {
        Some(_) if answers => {
            return Err(invalid(
                Reason::InvalidJsonRpc,
                "a message has a method or a result or an error, not both",
            ));
        }
        Some(Value::String(method)) => method,
        Some(_) => return Err(invalid(Reason::InvalidJsonRpc, "method must be a string")),
        None if answers => return response(&object, id),
        None => {
            return Err(invalid(
                Reason::InvalidJsonRpc,
                "a message needs a method, a result or an error",
            ));
        }
    };
    let mut params = match object.remove("params") {
        None => None,
        Some(Value::Object(params)) => Some(params),
        Some(Value::Array(_)) => None,
        Some(_) => {
            return Err(invalid(
                Reason::InvalidJsonRpc,
                "params must be an object or an array",
            ));
        }
    };
    let target = match method.as_str() {
        "tools/call" => Some(Target::Tool(string_param(
            params.as_ref(),
            "name",
            &invalid,
        )?)),
        "prompts/get" => Some(Target::Prompt(string_param(
            params.as_ref(),
            "name",
            &invalid,
        )?)),
        "resources/read" => Some(Target::Resource(string_param(
            params.as_ref(),
            "uri",
            &invalid,
        )?)),
        _ => None,
    };
    let arguments = match (&target, params.as_mut().and_then(|p| p.remove("arguments"))) {
        (Some(Target::Tool(_)), Some(Value::Object(arguments))) => Some(arguments),
        (Some(Target::Tool(_)), Some(_)) => {
            return Err(invalid(
                Reason::InvalidParams,
                "params.arguments must be an object",
            ));
        }
        _ => None,
    };
    let protocol_version = match params.as_ref().and_then(|p| p.get("_meta")) {
        None => None,
        Some(Value::Object(meta)) => match meta.get(PROTOCOL_VERSION_META) {
            None => None,
            Some(Value::String(version)) => Some(version.clone()),
            Some(_) => {
                return Err(invalid(
                    Reason::InvalidParams,
                    "params._meta's protocol version must be a string",
                ));
            }
        },
        Some(_) => {
            return Err(invalid(
                Reason::InvalidParams,
                "params._meta must be an object",
            ));
        }
    };
    Ok(Message {
        kind: if id.is_some() {
            Kind::Request
        } else {
            Kind::Notification
        },
        id,
        method: Some(method),
        target,
        arguments,
        protocol_version,
    })
}

/// `params[key]`, which must be a string.
fn string_param(
    params: Option<&Map<String, Value>>,
    key: &str,
    invalid: &impl Fn(Reason, &str) -> Refusal,
) -> Result<String, Refusal> {
    match params.and_then(|p| p.get(key)) {
        Some(Value::String(value)) => Ok(value.clone()),
        _ => Err(invalid(
            Reason::InvalidParams,
            &format!("params.{key} must be a string"),
        )),
    }
}

/// A response from the client: exactly one of `result` and `error` (an
/// object with an integer `code` and a string `message`), and the id of
/// the server's request it answers.
fn response(object: &Map<String, Value>, id: Option<Id>) -> Result<Message, Refusal> {
    let invalid =
        |text: &str| Refusal::new(Reason::InvalidJsonRpc, text).with_id(id.clone(), false);
    if object.contains_key("result") && object.contains_key("error") {
        return Err(invalid("a response has a result or an error, not both"));
    }
    if let Some(error) = object.get("error") {
        let code = error.get("code").is_some_and(|c| c.is_i64());
        let message = error.get("message").is_some_and(Value::is_string);
        if !(error.is_object() && code && message) {
            return Err(invalid("an error has an integer code and a string message"));
        }
    }
    if id.is_none() {
        return Err(invalid("a response needs the id of the request it answers"));
    }
    Ok(Message {
        kind: Kind::Response,
        id,
        method: None,
        target: None,
        arguments: None,
        protocol_version: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn headers<'a>(content_type: &'a str, version: Option<&'a str>) -> McpHeaders<'a> {
        McpHeaders {
            content_type: Header::Value(content_type.as_bytes()),
            protocol_version: version.map_or(Header::Absent, |v| Header::Value(v.as_bytes())),
            ..McpHeaders::default()
        }
    }

    fn parse_with(body: &str, version: Option<&str>) -> Result<ParsedBody, Refusal> {
        parse_body(
            body.as_bytes(),
            &headers("application/json", version),
            &Limits::default(),
        )
    }

    fn parse(body: &str) -> Result<ParsedBody, Refusal> {
        parse_with(body, Some("2025-06-18"))
    }

    fn one(body: Value) -> Message {
        let mut parsed = parse(&body.to_string()).unwrap();
        assert!(!parsed.batch);
        parsed.messages.remove(0)
    }

    fn refused(body: &str) -> Refusal {
        parse(body).unwrap_err()
    }

    #[test]
    fn a_tool_call_names_its_tool_and_arguments() {
        let m = one(json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {
                "name": "search_context",
                "arguments": {"path": "projects/engineering/x", "query": "roadmap"},
                "_meta": {PROTOCOL_VERSION_META: "2026-07-28", "progressToken": 1}
            }
        }));
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id, Some(Id::Number(7.into())));
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.target, Some(Target::Tool("search_context".into())));
        assert_eq!(
            m.arguments.unwrap().get("path"),
            Some(&json!("projects/engineering/x"))
        );
        assert_eq!(m.protocol_version.as_deref(), Some("2026-07-28"));
    }

    #[test]
    fn prompts_and_resources_name_their_targets() {
        let m = one(json!({"jsonrpc": "2.0", "id": "p", "method": "prompts/get",
                           "params": {"name": "summarize_context", "arguments": {"x": "y"}}}));
        assert_eq!(m.target, Some(Target::Prompt("summarize_context".into())));
        assert_eq!(m.arguments, None);
        let m = one(
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                           "params": {"uri": "ctx://projects/engineering/roadmap"}}),
        );
        assert_eq!(
            m.target,
            Some(Target::Resource(
                "ctx://projects/engineering/roadmap".into()
            ))
        );
        let m = one(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}));
        assert_eq!((m.target, m.arguments), (None, None));
    }

    #[test]
    fn notifications_and_responses() {
        let m = one(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert_eq!((m.kind, m.id), (Kind::Notification, None));
        let m = one(json!({"jsonrpc": "2.0", "id": "s-1", "result": {"roots": []}}));
        assert_eq!(m.kind, Kind::Response);
        assert_eq!(m.id, Some(Id::String("s-1".into())));
        assert_eq!(m.method, None);
        let m = one(json!({"jsonrpc": "2.0", "id": 3,
                           "error": {"code": -32601, "message": "no sampling here"}}));
        assert_eq!(m.kind, Kind::Response);
    }

    #[test]
    fn ids_are_strings_or_integers_and_are_echoed() {
        for id in [
            json!(0),
            json!(-5),
            json!(u64::MAX),
            json!(""),
            json!("abc"),
        ] {
            let m = one(json!({"jsonrpc": "2.0", "id": id, "method": "ping"}));
            assert_eq!(m.id.unwrap().to_json(), id);
        }
        for id in [
            json!(null),
            json!(1.5),
            json!(true),
            json!([1]),
            json!({"a": 1}),
        ] {
            let r = refused(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string());
            assert_eq!(r.reason, Reason::InvalidJsonRpc, "{id}");
            assert_eq!((r.id, r.notification), (None, false), "{id}");
        }
        // 1.0 and 1e2 are numbers, not integers, as JSON wrote them.
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#).reason,
            Reason::InvalidJsonRpc
        );
        assert_eq!(
            refused(r#"{"jsonrpc":"2.0","id":1e2,"method":"ping"}"#).reason,
            Reason::InvalidJsonRpc
        );
    }

    #[test]
    fn invalid_jsonrpc_is_refused_with_the_id_when_readable() {
        for body in [
            json!({"id": 1, "method": "ping"}),
            json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
            json!({"jsonrpc": 2.0, "id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "x"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": null}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "x"}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": "broken"}),
        ] {
            let r = refused(&body.to_string());
            assert_eq!(r.reason, Reason::InvalidJsonRpc, "{body}");
            assert_eq!(r.id, Some(Id::Number(1.into())), "{body}");
            assert_eq!(r.jsonrpc_code(), -32600);
        }
        let r = refused(r#"{"jsonrpc":"2.0","result":{}}"#);
        assert_eq!((r.reason, r.id), (Reason::InvalidJsonRpc, None));
        for body in ["[1]", "\"x\"", "5", "null"] {
            let r = parse_with(body, None).unwrap_err();
            assert_eq!(r.reason, Reason::InvalidJsonRpc, "{body}");
        }
        // An invalid notification is still a notification: no reply body.
        let r = refused(r#"{"jsonrpc":"2.0","method":"notifications/x","params":1}"#);
        assert!(r.notification);
    }

    #[test]
    fn targets_of_the_wrong_type_are_invalid_params() {
        for body in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["search"]}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "x", "arguments": ["a"]}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "x", "arguments": null}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": null}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"name": "x"}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": {}}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": []}}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping",
                   "params": {"_meta": {PROTOCOL_VERSION_META: 20260728}}}),
        ] {
            let r = refused(&body.to_string());
            assert_eq!(r.reason, Reason::InvalidParams, "{body}");
            assert_eq!((r.status(), r.jsonrpc_code()), (400, -32602));
            assert_eq!(r.id, Some(Id::Number(1.into())));
        }
    }

    #[test]
    fn content_type_must_be_json() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            " application/json ",
        ] {
            assert!(
                parse_body(body, &headers(ct, None), &Limits::default()).is_ok(),
                "{ct}"
            );
        }
        for ct in [
            "text/plain",
            "application/json-seq",
            "application/jsonx",
            "",
            "text/event-stream",
        ] {
            let r = parse_body(body, &headers(ct, None), &Limits::default()).unwrap_err();
            assert_eq!((r.reason, r.status()), (Reason::NotJson, 415), "{ct}");
        }
        for content_type in [
            Header::Absent,
            Header::Repeated,
            Header::Value(b"application/json\xff"),
        ] {
            let h = McpHeaders {
                content_type,
                ..McpHeaders::default()
            };
            assert_eq!(
                parse_body(body, &h, &Limits::default()).unwrap_err().reason,
                Reason::NotJson
            );
        }
    }

    #[test]
    fn bodies_that_are_not_json_are_parse_errors() {
        for body in [
            &b""[..],
            b"{",
            b"\xff",
            b"{\"jsonrpc\":\"2.0\"} x",
            b"\xef\xbb\xbf{}",
        ] {
            let r = parse_body(body, &headers("application/json", None), &Limits::default())
                .unwrap_err();
            assert_eq!(r.reason, Reason::InvalidJson, "{body:?}");
            assert_eq!((r.status(), r.jsonrpc_code(), r.id), (400, -32700, None));
        }
    }

    #[test]
    fn duplicate_keys_anywhere_are_refused() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"path":"p","path":"q"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"deep":[{"x":{"k":1,"k":2}}]}}}"#,
        ] {
            let r = refused(body);
            assert_eq!(
                (r.reason, r.jsonrpc_code()),
                (Reason::DuplicateKey, -32700),
                "{body}"
            );
        }
    }

    #[test]
    fn nesting_is_limited() {
        let deep = |n: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{"a":{}{}}}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // message, params, arguments: 3 levels before the arrays.
        assert!(parse(&deep(61)).is_ok());
        assert_eq!(refused(&deep(62)).reason, Reason::TooDeep);
        assert_eq!(refused(&deep(10_000)).reason, Reason::TooDeep);
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        let body = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
                       {"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        let parsed = parse_with(body, Some("2025-03-26")).unwrap();
        assert!(parsed.batch);
        assert_eq!(parsed.messages.len(), 2);
        assert_eq!(parsed.messages[1].kind, Kind::Notification);
        // No MCP-Protocol-Version: taken to be 2025-03-26.
        assert!(parse_with(body, None).is_ok());
        for version in ["2025-06-18", "2025-11-25", "2026-07-28"] {
            let r = parse_with(body, Some(version)).unwrap_err();
            assert_eq!(
                (r.reason, r.status()),
                (Reason::BatchNotAllowed, 400),
                "{version}"
            );
        }
        let h = McpHeaders {
            content_type: Header::Value(b"application/json"),
            protocol_version: Header::Repeated,
            ..McpHeaders::default()
        };
        assert_eq!(
            parse_body(body.as_bytes(), &h, &Limits::default())
                .unwrap_err()
                .reason,
            Reason::BatchNotAllowed
        );
        assert_eq!(
            parse_with("[]", None).unwrap_err().reason,
            Reason::InvalidJsonRpc
        );
    }

    #[test]
    fn a_bad_message_refuses_the_whole_batch() {
        let r = parse_with(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":7}]"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            (r.reason, r.id, r.notification),
            (Reason::InvalidJsonRpc, None, false)
        );
        let r = parse_with(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
            None,
        )
        .unwrap_err();
        assert_eq!(r.reason, Reason::InvalidJsonRpc);
        // A response may reuse a request's id: it answers the server.
        assert!(
            parse_with(
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"result":{}}]"#,
                None
            )
            .is_ok()
        );
        let many = format!(
            "[{}]",
            vec![r#"{"jsonrpc":"2.0","method":"notifications/x"}"#; 33].join(",")
        );
        assert_eq!(
            parse_with(&many, None).unwrap_err().reason,
            Reason::BatchTooLarge
        );
    }
}
