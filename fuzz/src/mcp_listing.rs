//! `mcp_listing`: listing responses narrowed to what the caller may use,
//! as one JSON body and as an SSE stream fed in chunks.

use std::cell::OnceCell;

use serde_json::{Value, json};

use ctxgate_core::mcp::{
    Id, Kind, Listings, Message, ParsedBody, SseListingFilter, ToolMap, Viewer, filter_body,
    filter_json,
};
use ctxgate_core::scope::ScopeSet;

use crate::fixtures;

struct Fixture {
    map: ToolMap,
    scopes: ScopeSet,
    listings: Listings,
}

thread_local! {
    static FIXTURE: OnceCell<Fixture> = const { OnceCell::new() };
}

/// The requests the listings answer: (id, method). A `ping` and a
/// notification are asked too, and are no listings.
fn asked() -> [(Value, &'static str); 6] {
    [
        (json!(1), "tools/list"),
        (json!("t"), "tools/list"),
        (json!(2), "prompts/list"),
        (json!(3), "resources/list"),
        (json!("r"), "resources/list"),
        (json!(4), "ping"),
    ]
}

fn listings() -> Listings {
    let request = |id: Option<&Value>, method: &str| Message {
        kind: if id.is_some() {
            Kind::Request
        } else {
            Kind::Notification
        },
        id: id.and_then(Id::from_json),
        method: Some(method.into()),
        target: None,
        arguments: None,
        protocol_version: None,
    };
    let mut messages: Vec<Message> = asked()
        .iter()
        .map(|(id, method)| request(Some(id), method))
        .collect();
    messages.push(request(None, "tools/list"));
    Listings::of(&ParsedBody {
        messages,
        batch: true,
    })
}

/// The member of `result` and the key of an entry, for a response with
/// this id; `None`: no listing was asked with it.
fn listing_of(id: &Value) -> Option<(&'static str, &'static str)> {
    Id::from_json(id)?;
    let (_, method) = asked().into_iter().find(|(asked, _)| asked == id)?;
    match method {
        "tools/list" => Some(("tools", "name")),
        "prompts/list" => Some(("prompts", "name")),
        "resources/list" => Some(("resources", "uri")),
        _ => None,
    }
}

/// An independent reading of the fixture tool map and scopes: the tools
/// the caller may list. `search_*` and `traverse_?` take their context
/// from an argument and need `read` somewhere; `write_context` needs
/// `write` somewhere (`write:projects/docs/drafts`); `reindex` needs
/// `admin:projects` (not granted); `ping_tool` needs
/// `read:mcp/tools/ping_tool` and `status`
/// `read:projects/engineering/status` (both granted).
fn may_list_tool(name: &str) -> bool {
    name.starts_with("search_")
        || (name.starts_with("traverse_") && name.chars().count() == "traverse_".len() + 1)
        || name == "write_context"
        || name == "ping_tool"
        || name == "status"
}

/// Input: two bytes choosing chunk sizes, then the rest `R`. `R` is
/// filtered as a JSON body, and as an SSE stream both raw and wrapped
/// (each of its lines a `data:` line of one event, after a comment and
/// before a notification event). Each stream is fed whole, byte by byte
/// and in chunks of the chosen sizes (empty chunks included): the same
/// output, which is the input with each event whose data the JSON filter
/// rewrites rewritten, every other event byte for byte. Every JSON text
/// filtered keeps exactly the entries an independent oracle allows (and
/// no tool the scopes do not allow), is valid JSON, and is rewritten only
/// when it is a listing.
pub fn mcp_listing(data: &[u8]) {
    let (sizes, rest) = data.split_at(data.len().min(2));
    let first = usize::from(sizes.first().copied().unwrap_or(0) % 16);
    let second = usize::from(sizes.get(1).copied().unwrap_or(0) % 64) + 1;
    FIXTURE.with(|cell| {
        let fixture = cell.get_or_init(|| Fixture {
            map: fixtures::mcp_map(),
            scopes: fixtures::mcp_scopes(),
            listings: listings(),
        });
        let viewer = Viewer {
            map: &fixture.map,
            scopes: &fixture.scopes,
        };
        check_json(fixture, &viewer, rest);
        check_sse(fixture, &viewer, rest, [first, second]);
        check_sse(fixture, &viewer, &wrap(rest), [first, second]);
    });
}

/// `R` as the data of an event between two others.
fn wrap(text: &[u8]) -> Vec<u8> {
    let mut out = b": keep-alive\r\n\r\nevent: message\r\nid: 7\r\n".to_vec();
    for line in text.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n");
    out
}

/// Nesting depth of arrays and objects.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The oracle: `value` (as a lenient reader reads it) with the entries
/// the caller may not see dropped; how many were, and whether any
/// response to a listing was seen.
fn oracle(fixture: &Fixture, value: &Value) -> (Value, usize, bool) {
    let mut value = value.clone();
    let mut removed = 0;
    let mut listing = false;
    let mut filter = |response: &mut Value| {
        let Some(members) = response.as_object_mut() else {
            return;
        };
        let Some((member, key)) = members.get("id").and_then(listing_of) else {
            return;
        };
        let Some(entries) = members
            .get_mut("result")
            .and_then(Value::as_object_mut)
            .and_then(|result| result.get_mut(member))
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        listing = true;
        let before = entries.len();
        entries.retain(|entry| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .is_some_and(|name| match member {
                    "tools" => may_list_tool(name),
                    "prompts" => fixture.map.may_list_prompt(name, &fixture.scopes),
                    _ => fixture.map.may_list_resource(name, &fixture.scopes),
                })
        });
        removed += before - entries.len();
    };
    match &mut value {
        Value::Array(items) => items.iter_mut().for_each(&mut filter),
        single => filter(single),
    }
    (value, removed, listing)
}

/// `filter_json` on one JSON text, against the oracle; its result.
fn check_json(fixture: &Fixture, viewer: &Viewer<'_>, input: &[u8]) -> Option<Vec<u8>> {
    let out = filter_json(input, &fixture.listings, viewer);
    assert_eq!(
        filter_json(input, &fixture.listings, viewer),
        out,
        "filtered twice, filtered differently"
    );
    let text = String::from_utf8_lossy(input);
    let lenient: Option<Value> = serde_json::from_str(&text).ok();
    let shown: String = text.chars().take(300).collect();
    match (&out, &lenient) {
        (Some(out), None) => panic!(
            "{shown:?}: rewritten as {:?}, but it is not JSON",
            String::from_utf8_lossy(out)
        ),
        (Some(out), Some(value)) => {
            let filtered: Value = serde_json::from_slice(out).unwrap_or_else(|e| {
                panic!(
                    "{shown:?}: rewritten as {:?}, which is not JSON: {e}",
                    String::from_utf8_lossy(out)
                )
            });
            let (expected, removed, listing) = oracle(fixture, value);
            assert_eq!(
                filtered, expected,
                "{shown:?}: filtered otherwise than the oracle"
            );
            assert!(
                removed > 0 || listing,
                "{shown:?}: rewritten although it holds no listing"
            );
        }
        (None, Some(value)) if depth(value) <= ctxgate_core::mcp::MAX_DEPTH_CEILING => {
            let (_, removed, _) = oracle(fixture, value);
            assert_eq!(
                removed, 0,
                "{shown:?}: left as it is, with {removed} entries the caller may not see"
            );
        }
        (None, _) => {}
    }
    if serde_json::from_slice::<Value>(input).is_ok() {
        let sent = out.as_deref().unwrap_or(input);
        assert!(
            serde_json::from_slice::<Value>(sent).is_ok(),
            "{shown:?}: JSON in, not JSON out"
        );
    }
    out
}

fn check_sse(fixture: &Fixture, viewer: &Viewer<'_>, stream: &[u8], sizes: [usize; 2]) {
    let feed = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut filter = SseListingFilter::new(fixture.listings.clone(), usize::MAX);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(
                filter
                    .push(chunk, viewer)
                    .expect("no limit on the event size"),
            );
        }
        out.extend(filter.finish(viewer));
        out
    };
    let whole = feed(&mut std::iter::once(stream));
    // Byte by byte costs the splitter time quadratic in a line's length
    // (it rescans the incomplete line on every push): only short streams,
    // so that the fuzzer keeps its pace; the chosen sizes include 1.
    let bytes = if stream.len() <= 1024 {
        feed(&mut stream.chunks(1))
    } else {
        whole.clone()
    };
    let mut chunks = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        let end = (at + size).min(stream.len());
        chunks.push(&stream[at..end]);
        at = end;
        if at == stream.len() {
            break;
        }
    }
    let chunked = feed(&mut chunks.into_iter());
    let shown = String::from_utf8_lossy(stream.get(..300).unwrap_or(stream)).into_owned();
    assert!(
        bytes == whole,
        "{shown:?}: byte by byte {:?}, whole {:?}",
        String::from_utf8_lossy(&bytes),
        String::from_utf8_lossy(&whole)
    );
    assert!(
        chunked == whole,
        "{shown:?}: in chunks of {sizes:?} {:?}, whole {:?}",
        String::from_utf8_lossy(&chunked),
        String::from_utf8_lossy(&whole)
    );
    assert_eq!(
        filter_body(
            Some(b"text/event-stream"),
            stream,
            &fixture.listings,
            viewer
        ),
        (whole != stream).then(|| whole.clone()),
        "{shown:?}: filter_body disagrees with the chunked filter"
    );
    // The oracle: events split as the HTML standard splits them, those
    // whose data the JSON filter rewrites rewritten, the rest as they came.
    let mut expected = Vec::new();
    for event in events(stream) {
        match data(event).and_then(|data| check_json(fixture, viewer, data.as_bytes())) {
            Some(filtered) => {
                expected.extend(with_data(event, &String::from_utf8_lossy(&filtered)))
            }
            None => expected.extend_from_slice(event),
        }
    }
    assert!(
        whole == expected,
        "{shown:?}: filtered {:?}, expected {:?}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&expected)
    );
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The next line of `bytes` from `from`: (content end, next line start),
/// lines ending in CRLF, LF or CR; `None` at the end or for an
/// unterminated last line.
fn next_line(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let at = from
        + bytes
            .get(from..)?
            .iter()
            .position(|b| matches!(b, b'\r' | b'\n'))?;
    let next = if bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n') {
        at + 2
    } else {
        at + 1
    };
    Some((at, next))
}

/// A whole stream's events, each with the blank line ending it (a leading
/// byte order mark on its own, an unterminated last event last).
fn events(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let stream = match stream.strip_prefix(BOM) {
        Some(rest) => {
            out.push(BOM);
            rest
        }
        None => stream,
    };
    let (mut start, mut line) = (0, 0);
    while let Some((end, next)) = next_line(stream, line) {
        if end == line {
            out.push(&stream[start..next]);
            start = next;
        }
        line = next;
    }
    if start < stream.len() {
        out.push(&stream[start..]);
    }
    out
}

/// An event's lines: (content, terminator).
fn lines(event: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < event.len() {
        let (end, next) = next_line(event, start).unwrap_or((event.len(), event.len()));
        out.push((&event[start..end], &event[end..next]));
        start = next;
    }
    out
}

/// The value of a `data` field line.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    if line == b"data" {
        return Some(b"");
    }
    let value = line.strip_prefix(b"data:")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// An event's data: its `data` values joined with `\n`, lossy UTF-8.
fn data(event: &[u8]) -> Option<String> {
    let event = event.strip_prefix(BOM).unwrap_or(event);
    let values: Vec<&[u8]> = lines(event)
        .into_iter()
        .filter_map(|(line, _)| data_value(line))
        .collect();
    (!values.is_empty()).then(|| String::from_utf8_lossy(&values.join(&b'\n')).into_owned())
}

/// The event with its data replaced: `data:` lines where the first was,
/// separated by its terminator, the other `data` lines dropped.
fn with_data(event: &[u8], data: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut written = false;
    for (line, terminator) in lines(event) {
        if data_value(line).is_none() {
            out.extend_from_slice(line);
            out.extend_from_slice(terminator);
        } else if !written {
            written = true;
            let between: &[u8] = if terminator.is_empty() {
                b"\n"
            } else {
                terminator
            };
            for (i, piece) in data.split('\n').enumerate() {
                if i > 0 {
                    out.extend_from_slice(between);
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(piece.as_bytes());
            }
            out.extend_from_slice(terminator);
        }
    }
    out
}
