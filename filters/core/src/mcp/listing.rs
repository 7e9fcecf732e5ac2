//! Listings filtered to what the caller may use: the responses to
//! `tools/list`, `prompts/list` and `resources/list` lose the entries the
//! caller's scopes would not let it call, get or read
//! (`result.tools[].name` through the tool map, `result.prompts[].name`,
//! `result.resources[].uri`; see [`ToolMap::may_list_tool`] and its
//! siblings). An entry without a string name or URI is dropped too.
//!
//! A response is recognised by its id: the gateway read the request, so
//! it knows which ids asked for which listing ([`Listings`]). The body is
//! either JSON (one response, or a batch of them) or an SSE stream
//! (`text/event-stream`), in which only the `data` of events that are
//! responses to a listing is rewritten; `id:`, `event:`, `retry:` lines,
//! comments and every other event stay byte for byte. A JSON text is
//! rewritten only when an entry is removed, or when it repeats a key (it
//! is then read as `serde_json` reads it, last key wins, and written back
//! as read, so every client sees what was filtered). Text that is not
//! JSON, or nests deeper than the gateway reads, is passed on as it came:
//! the filter narrows what an honest server lists, calls are authorised
//! on their own.
//!
//! `resources/templates/list` is not filtered: a template names no
//! resource until it is filled in.

use serde_json::Value;

use super::json::{self, MAX_DEPTH_CEILING, ReadError};
use super::message::{Id, Kind, ParsedBody};
use super::sse::{self, EventSplitter, EventTooLarge};
use super::tools::ToolMap;
use crate::scope::ScopeSet;

/// A listing method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    pub fn of_method(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "prompts/list" => Some(ListKind::Prompts),
            "resources/list" => Some(ListKind::Resources),
            _ => None,
        }
    }

    /// The member of `result` holding the entries.
    fn member(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
        }
    }

    /// The member of an entry the decision is about.
    fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
        }
    }
}

/// The listing requests of one POST body, by id: which responses to
/// filter, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listings {
    requests: Vec<(Id, ListKind)>,
}

impl Listings {
    pub fn of(body: &ParsedBody) -> Listings {
        let requests = body
            .messages
            .iter()
            .filter(|m| m.kind == Kind::Request)
            .filter_map(|m| {
                let kind = ListKind::of_method(m.method.as_deref()?)?;
                Some((m.id.clone()?, kind))
            })
            .collect();
        Listings { requests }
    }

    /// No listing was asked for: the response needs no filtering.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    fn kind_of(&self, id: &Id) -> Option<ListKind> {
        self.requests
            .iter()
            .find(|(asked, _)| asked == id)
            .map(|(_, kind)| *kind)
    }
}

/// Who is looking at a listing.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub map: &'a ToolMap,
    pub scopes: &'a ScopeSet,
}

impl Viewer<'_> {
    fn may_see(&self, kind: ListKind, key: &str) -> bool {
        match kind {
            ListKind::Tools => self.map.may_list_tool(key, self.scopes),
            ListKind::Prompts => self.map.may_list_prompt(key, self.scopes),
            ListKind::Resources => self.map.may_list_resource(key, self.scopes),
        }
    }
}

/// Filters a response body by its `content-type`: `None` when it stays as
/// it is (not a listing, nothing removed, or neither JSON nor SSE).
pub fn filter_body(
    content_type: Option<&[u8]>,
    body: &[u8],
    listings: &Listings,
    viewer: &Viewer<'_>,
) -> Option<Vec<u8>> {
    if listings.is_empty() {
        return None;
    }
    let media = content_type
        .and_then(|ct| std::str::from_utf8(ct).ok())
        .and_then(|ct| ct.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())?;
    match media.as_str() {
        "application/json" => filter_json(body, listings, viewer),
        "text/event-stream" => {
            let mut filter = SseListingFilter::new(listings.clone(), usize::MAX);
            let mut out = filter.push(body, viewer).ok()?;
            out.extend(filter.finish(viewer));
            (out != body).then_some(out)
        }
        _ => None,
    }
}

/// Filters a JSON response body (one response, or a batch of them).
/// `None`: leave it as it is.
pub fn filter_json(body: &[u8], listings: &Listings, viewer: &Viewer<'_>) -> Option<Vec<u8>> {
    filter_text(&String::from_utf8_lossy(body), listings, viewer).map(String::into_bytes)
}

/// Filters an SSE response stream as its chunks arrive.
#[derive(Debug, Clone)]
pub struct SseListingFilter {
    splitter: EventSplitter,
    listings: Listings,
}

impl SseListingFilter {
    /// `max_event_bytes`: the longest incomplete event held back (a
    /// listing must be whole to be filtered).
    pub fn new(listings: Listings, max_event_bytes: usize) -> SseListingFilter {
        SseListingFilter {
            splitter: EventSplitter::new(max_event_bytes),
            listings,
        }
    }

    /// The next chunk of the stream; returns what can be sent on now. On
    /// [`EventTooLarge`] the stream cannot be filtered: reset it.
    pub fn push(&mut self, chunk: &[u8], viewer: &Viewer<'_>) -> Result<Vec<u8>, EventTooLarge> {
        let events = self.splitter.push(chunk)?;
        Ok(self.rewrite(events, viewer))
    }

    /// The end of the stream: the rest to send on.
    pub fn finish(&mut self, viewer: &Viewer<'_>) -> Vec<u8> {
        let events = self.splitter.finish();
        self.rewrite(events, viewer)
    }

    fn rewrite(&self, events: Vec<Vec<u8>>, viewer: &Viewer<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for event in events {
            let filtered = sse::data(&event)
                .and_then(|data| filter_text(&data, &self.listings, viewer))
                .map(|data| sse::with_data(&event, &data));
            out.extend(filtered.unwrap_or(event));
        }
        out
    }
}

/// Filters one JSON text; `None`: leave it as it is.
fn filter_text(text: &str, listings: &Listings, viewer: &Viewer<'_>) -> Option<String> {
    let (mut value, repeated_key) = match json::read(text, MAX_DEPTH_CEILING) {
        Ok(value) => (value, false),
        Err(ReadError::DuplicateKey(_)) => (serde_json::from_str(text).ok()?, true),
        Err(ReadError::Syntax(_) | ReadError::TooDeep) => return None,
    };
    let outcomes: Vec<Option<usize>> = match &mut value {
        Value::Array(items) => items
            .iter_mut()
            .map(|item| filter_response(item, listings, viewer))
            .collect(),
        single => vec![filter_response(single, listings, viewer)],
    };
    let listing = outcomes.iter().any(Option::is_some);
    let removed: usize = outcomes.iter().flatten().sum();
    (removed > 0 || (listing && repeated_key)).then(|| value.to_string())
}

/// Drops the entries the viewer may not see from `response`, if it is a
/// response to a listing: how many were dropped (`None`: not a listing
/// response).
fn filter_response(
    response: &mut Value,
    listings: &Listings,
    viewer: &Viewer<'_>,
) -> Option<usize> {
    let members = response.as_object_mut()?;
    let kind = listings.kind_of(&Id::from_json(members.get("id")?)?)?;
    let entries = members
        .get_mut("result")?
        .as_object_mut()?
        .get_mut(kind.member())?
        .as_array_mut()?;
    let before = entries.len();
    entries.retain(|entry| {
        entry
            .get(kind.key())
            .and_then(Value::as_str)
            .is_some_and(|key| viewer.may_see(kind, key))
    });
    Some(before - entries.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::parse_json;
    use crate::mcp::config::McpConfig;
    use crate::mcp::message::Message;

    fn map() -> ToolMap {
        let config: McpConfig = parse_json(
            json!({
                "tools": [
                    {"name": "search_context", "action": "read", "context": {"pointer": "/path"}},
                    {"name": "write_context", "action": "write", "context": {"pointer": "/path"}},
                    {"name": "reindex", "action": "admin", "context": {"fixed": "projects"}}
                ],
                "resources": [{"uri_prefix": "ctx://", "context_prefix": ""}]
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        ToolMap::compile(&config).unwrap()
    }

    fn request(id: Value, method: &str) -> Message {
        Message {
            kind: Kind::Request,
            id: Id::from_json(&id),
            method: Some(method.into()),
            target: None,
            arguments: None,
            protocol_version: None,
        }
    }

    fn listings(requests: &[(Value, &str)]) -> Listings {
        Listings::of(&ParsedBody {
            messages: requests
                .iter()
                .map(|(id, m)| request(id.clone(), m))
                .collect(),
            batch: requests.len() > 1,
        })
    }

    fn tool(name: &str) -> Value {
        json!({
            "name": name,
            "title": name.replace('_', " "),
            "description": format!("{name} over the context store"),
            "inputSchema": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "query": {"type": "string"}},
                "required": ["path"]
            },
            "annotations": {"readOnlyHint": name.starts_with("search")}
        })
    }

    fn tools_list(id: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {
            "tools": [tool("search_context"), tool("write_context"), tool("reindex"),
                      tool("unmapped_tool"), {"title": "no name"}],
            "nextCursor": "eyJwYWdlIjoyfQ=="
        }})
    }

    fn names(response: &Value, member: &str, key: &str) -> Vec<String> {
        response["result"][member]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[key].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_json_tools_list_keeps_what_the_reader_may_call() {
        let map = map();
        let scopes = ScopeSet::parse(["read:projects/engineering/*"]).unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let body = tools_list(json!(2)).to_string();
        let out = filter_body(
            Some(b"application/json"),
            body.as_bytes(),
            &listings(&[(json!(2), "tools/list")]),
            &viewer,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&out, "tools", "name"), ["search_context"]);
        assert_eq!(out["result"]["nextCursor"], "eyJwYWdlIjoyfQ==");
        assert_eq!(out["result"]["tools"][0], tool("search_context"));

        let admin = ScopeSet::parse(["admin:projects"]).unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &admin,
        };
        let out = filter_json(
            body.as_bytes(),
            &listings(&[(json!(2), "tools/list")]),
            &viewer,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            names(&out, "tools", "name"),
            ["search_context", "write_context", "reindex"]
        );
    }

    #[test]
    fn only_responses_to_the_listing_are_touched() {
        let map = map();
        let scopes = ScopeSet::default();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let body = tools_list(json!("other")).to_string();
        let asked = listings(&[(json!(2), "tools/list")]);
        assert_eq!(
            filter_body(Some(b"application/json"), body.as_bytes(), &asked, &viewer),
            None
        );
        let body = tools_list(json!(2)).to_string();
        assert_eq!(
            filter_body(
                Some(b"application/json"),
                body.as_bytes(),
                &Listings::default(),
                &viewer
            ),
            None
        );
        assert_eq!(
            filter_body(Some(b"text/plain"), body.as_bytes(), &asked, &viewer),
            None
        );
        assert_eq!(filter_body(None, body.as_bytes(), &asked, &viewer), None);
        let error =
            json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "boom"}})
                .to_string();
        assert_eq!(filter_json(error.as_bytes(), &asked, &viewer), None);
        assert_eq!(filter_json(b"not json", &asked, &viewer), None);
        // A listing that removes nothing is left byte for byte.
        let empty = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#;
        assert_eq!(filter_json(empty.as_bytes(), &asked, &viewer), None);
    }

    #[test]
    fn prompts_and_resources_lists() {
        let map = map();
        let scopes = ScopeSet::parse([
            "read:projects/engineering",
            "read:mcp/prompts/summarize_context",
        ])
        .unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let prompts = json!({"jsonrpc": "2.0", "id": "p", "result": {"prompts": [
            {"name": "summarize_context", "description": "Summarize a context",
             "arguments": [{"name": "path", "required": true}]},
            {"name": "draft_release_notes", "arguments": []}
        ]}});
        let out = filter_json(
            prompts.to_string().as_bytes(),
            &listings(&[(json!("p"), "prompts/list")]),
            &viewer,
        )
        .unwrap();
        assert_eq!(
            names(&serde_json::from_slice(&out).unwrap(), "prompts", "name"),
            ["summarize_context"]
        );
        let resources = json!({"jsonrpc": "2.0", "id": 5, "result": {"resources": [
            {"uri": "ctx://projects/engineering/roadmap", "name": "roadmap", "mimeType": "text/markdown"},
            {"uri": "ctx://projects/sales/pipeline", "name": "pipeline", "mimeType": "text/markdown"},
            {"uri": "file:///etc/hosts", "name": "hosts"},
            {"uri": "ctx://projects/engineering/../sales/pipeline", "name": "sneaky"}
        ]}});
        let out = filter_json(
            resources.to_string().as_bytes(),
            &listings(&[(json!(5), "resources/list")]),
            &viewer,
        )
        .unwrap();
        assert_eq!(
            names(&serde_json::from_slice(&out).unwrap(), "resources", "uri"),
            ["ctx://projects/engineering/roadmap"]
        );
    }

    #[test]
    fn batched_responses_are_filtered_each_by_its_request() {
        let map = map();
        let scopes = ScopeSet::parse(["read:projects/x"]).unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let body = json!([
            tools_list(json!(1)),
            {"jsonrpc": "2.0", "id": 2, "result": {"resources": [{"uri": "ctx://projects/y"}, {"uri": "ctx://projects/x/a"}]}},
            {"jsonrpc": "2.0", "id": 3, "result": {}}
        ]);
        let asked = listings(&[
            (json!(1), "tools/list"),
            (json!(2), "resources/list"),
            (json!(3), "ping"),
        ]);
        let out: Value = serde_json::from_slice(
            &filter_json(body.to_string().as_bytes(), &asked, &viewer).unwrap(),
        )
        .unwrap();
        assert_eq!(names(&out[0], "tools", "name"), ["search_context"]);
        assert_eq!(names(&out[1], "resources", "uri"), ["ctx://projects/x/a"]);
        assert_eq!(out[2], json!({"jsonrpc": "2.0", "id": 3, "result": {}}));
    }

    #[test]
    fn repeated_keys_are_written_back_as_read() {
        let map = map();
        let scopes = ScopeSet::parse(["read:projects/x"]).unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let asked = listings(&[(json!(1), "tools/list")]);
        // A first-key-wins client would see the hidden list.
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"reindex"}],"tools":[]}}"#;
        let out: Value =
            serde_json::from_slice(&filter_json(body.as_bytes(), &asked, &viewer).unwrap())
                .unwrap();
        assert_eq!(
            out,
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})
        );
    }

    /// An SSE response as the Python SDK streams it: CRLF lines, a log
    /// notification first, then the response, with a keep-alive comment.
    fn sse_stream(response: &Value) -> String {
        format!(
            "event: message\r\nid: 7d3f-0\r\ndata: {}\r\n\r\n: ping - 2026-07-28 10:00:00\r\n\r\n\
             event: message\r\nid: 7d3f-1\r\ndata: {}\r\n\r\n",
            json!({"jsonrpc": "2.0", "method": "notifications/message",
                   "params": {"level": "info", "data": "listing tools"}}),
            response
        )
    }

    #[test]
    fn an_sse_tools_list_is_rewritten_in_place() {
        let map = map();
        let scopes = ScopeSet::parse(["write:projects/engineering"]).unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let asked = listings(&[(json!(2), "tools/list")]);
        let stream = sse_stream(&tools_list(json!(2)));
        let out = filter_body(
            Some(b"text/event-stream"),
            stream.as_bytes(),
            &asked,
            &viewer,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        let events: Vec<&str> = out.split("\r\n\r\n").collect();
        let original: Vec<&str> = stream.split("\r\n\r\n").collect();
        assert_eq!(events.len(), 4);
        // The notification and the comment are untouched.
        assert_eq!(events[0], original[0]);
        assert_eq!(events[1], original[1]);
        assert!(events[2].starts_with("event: message\r\nid: 7d3f-1\r\ndata: {"));
        let data = events[2].rsplit("data: ").next().unwrap();
        let filtered: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            names(&filtered, "tools", "name"),
            ["search_context", "write_context"]
        );
        assert_eq!(events[3], "");
    }

    #[test]
    fn an_sse_stream_is_filtered_whatever_its_chunks() {
        let map = map();
        let scopes = ScopeSet::parse(["read:projects/a"]).unwrap();
        let viewer = Viewer {
            map: &map,
            scopes: &scopes,
        };
        let asked = listings(&[(json!(2), "tools/list")]);
        // Multi-line data, LF endings, an event type and a retry line.
        let response = serde_json::to_string_pretty(&tools_list(json!(2))).unwrap();
        let data: String = response.lines().map(|l| format!("data: {l}\n")).collect();
        let stream = format!("retry: 3000\n\nid: 1\nevent: message\n{data}\n");
        let whole = filter_body(
            Some(b"text/event-stream; charset=utf-8"),
            stream.as_bytes(),
            &asked,
            &viewer,
        )
        .unwrap();
        let whole = String::from_utf8(whole).unwrap();
        assert!(
            whole.starts_with("retry: 3000\n\nid: 1\nevent: message\ndata: {"),
            "{whole}"
        );
        assert!(whole.ends_with("}\n\n"));
        assert_eq!(whole.matches("data: ").count(), 1);
        for chunk in [1, 7, 64, 1000] {
            let mut filter = SseListingFilter::new(asked.clone(), 1 << 16);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(chunk) {
                out.extend(filter.push(piece, &viewer).unwrap());
            }
            out.extend(filter.finish(&viewer));
            assert_eq!(String::from_utf8(out).unwrap(), whole, "chunks of {chunk}");
        }
        // An event too long to hold is an error, not a leak.
        let mut filter = SseListingFilter::new(asked, 64);
        let unfinished = stream.as_bytes().get(..stream.len() - 1).unwrap();
        assert_eq!(filter.push(unfinished, &viewer), Err(EventTooLarge));
    }

    #[test]
    fn listings_come_from_requests_with_ids() {
        let body = ParsedBody {
            messages: vec![
                request(json!(1), "tools/list"),
                request(json!("b"), "prompts/list"),
                request(json!(3), "resources/templates/list"),
                Message {
                    kind: Kind::Notification,
                    id: None,
                    ..request(json!(4), "tools/list")
                },
            ],
            batch: true,
        };
        let listings = Listings::of(&body);
        assert_eq!(
            listings.kind_of(&Id::Number(1.into())),
            Some(ListKind::Tools)
        );
        assert_eq!(
            listings.kind_of(&Id::String("b".into())),
            Some(ListKind::Prompts)
        );
        assert_eq!(listings.kind_of(&Id::Number(3.into())), None);
        assert_eq!(listings.requests.len(), 2);
    }
}
