//! The request headers the MCP layer reads, and the check that the
//! 2026-07-28 standard headers agree with the body.
//!
//! Streamable HTTP (2026-07-28) mirrors body fields into headers so that
//! intermediaries can route on them: `Mcp-Method` is `method`, `Mcp-Name`
//! is `params.name` (`tools/call`, `prompts/get`) or `params.uri`
//! (`resources/read`), and `MCP-Protocol-Version` is
//! `params._meta["io.modelcontextprotocol/protocolVersion"]`. Something in
//! front of the gateway may route or limit on a header while the server
//! acts on the body, so a header that disagrees with the body is refused:
//! HTTP 400, JSON-RPC `HeaderMismatch` (-32020), `mcp_header_mismatch`.
//!
//! A header that is absent is no mismatch: clients of the 2025 revisions
//! do not send them. A header given twice, or an `Mcp-Name` or
//! `Mcp-Method` for a message with nothing to mirror, is one. `Mcp-Name`
//! may carry its value Base64-encoded as `=?base64?<standard Base64>?=`
//! (for names that are not plain ASCII); the value is decoded first, and
//! malformed or non-canonical Base64, or bytes that are not UTF-8, match
//! nothing. Values are compared exactly (header values are
//! case-sensitive). The gateway itself decides on the body, never on
//! these headers.

use std::borrow::Cow;

use super::message::Message;
use super::refusal::{Reason, Refusal, quoted, quoted_bytes};
use crate::http::RequestHead;

pub const CONTENT_TYPE: &str = "content-type";
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const MCP_METHOD: &str = "mcp-method";
pub const MCP_NAME: &str = "mcp-name";

/// The sentinel around a Base64-encoded `Mcp-Name` (case-sensitive).
const BASE64_PREFIX: &[u8] = b"=?base64?";
const BASE64_SUFFIX: &[u8] = b"?=";

/// One request header, as far as a check needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Header<'a> {
    #[default]
    Absent,
    /// Given once, with this value (raw bytes: need not be UTF-8).
    Value(&'a [u8]),
    /// Given more than once: ambiguous, never a match.
    Repeated,
}

impl<'a> Header<'a> {
    /// Header `name` (lower case) of `head`.
    pub fn of(head: &RequestHead<'a>, name: &'a str) -> Header<'a> {
        let mut values = head.header_values(name);
        match (values.next(), values.next()) {
            (None, _) => Header::Absent,
            (Some(value), None) => Header::Value(value),
            (Some(_), Some(_)) => Header::Repeated,
        }
    }
}

/// The headers of a POST to an MCP endpoint that the gateway reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McpHeaders<'a> {
    pub content_type: Header<'a>,
    pub protocol_version: Header<'a>,
    pub method: Header<'a>,
    pub name: Header<'a>,
}

impl<'a> McpHeaders<'a> {
    pub fn from_head(head: &RequestHead<'a>) -> McpHeaders<'a> {
        McpHeaders {
            content_type: Header::of(head, CONTENT_TYPE),
            protocol_version: Header::of(head, MCP_PROTOCOL_VERSION),
            method: Header::of(head, MCP_METHOD),
            name: Header::of(head, MCP_NAME),
        }
    }
}

/// The method and tool a POST declares in its standard headers
/// (2026-07-28), known before its body: what routing tags are made of.
/// The body still decides, and one that disagrees is refused
/// ([`check_headers`]), so a declared call that reaches the upstream is
/// the call it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub method: String,
    /// `Mcp-Name` of a `tools/call`.
    pub tool: Option<String>,
}

impl McpHeaders<'_> {
    /// What the headers declare: `None` without a single `Mcp-Method`.
    /// A value that could not be a header value as it stands (not
    /// printable ASCII once decoded) declares nothing: it is no tag.
    pub fn declared(&self) -> Option<Declared> {
        let Header::Value(method) = self.method else {
            return None;
        };
        let method = printable(method)?;
        let tool = match self.name {
            Header::Value(name) if method == "tools/call" => {
                decode_name(name).and_then(|n| printable(n.as_bytes()))
            }
            _ => None,
        };
        Some(Declared { method, tool })
    }
}

/// `value` as text, if it is non-empty printable ASCII.
fn printable(value: &[u8]) -> Option<String> {
    let ok = !value.is_empty() && value.iter().all(|b| (0x20..0x7f).contains(b));
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

/// Refuses `message` if a standard header that is present disagrees with
/// it. For a batch, every message is checked against the same headers.
pub fn check_headers(message: &Message, headers: &McpHeaders<'_>) -> Result<(), Refusal> {
    let mismatch = |text: String| Err(Refusal::new(Reason::HeaderMismatch, text).about(message));
    match headers.method {
        Header::Absent => {}
        Header::Repeated => return mismatch("Mcp-Method is given more than once".into()),
        Header::Value(value) => {
            let body = message.method.as_deref().unwrap_or_default();
            if message.method.is_none() || value != body.as_bytes() {
                return mismatch(format!(
                    "Mcp-Method header value '{}' does not match body value '{}'",
                    quoted_bytes(value),
                    quoted(body)
                ));
            }
        }
    }
    match headers.name {
        Header::Absent => {}
        Header::Repeated => return mismatch("Mcp-Name is given more than once".into()),
        Header::Value(value) => {
            let body = message.target.as_ref().map(|t| t.name());
            let header = decode_name(value);
            if header.is_none() || header.as_deref() != body {
                return mismatch(match body {
                    Some(body) => format!(
                        "Mcp-Name header value '{}' does not match body value '{}'",
                        quoted_bytes(value),
                        quoted(body)
                    ),
                    None => format!(
                        "Mcp-Name header value '{}' is given for a message without a name",
                        quoted_bytes(value)
                    ),
                });
            }
        }
    }
    match (headers.protocol_version, &message.protocol_version) {
        (Header::Repeated, _) => mismatch("MCP-Protocol-Version is given more than once".into()),
        (Header::Value(value), Some(body)) if value != body.as_bytes() => mismatch(format!(
            "MCP-Protocol-Version header value '{}' does not match body value '{}'",
            quoted_bytes(value),
            quoted(body)
        )),
        _ => Ok(()),
    }
}

/// The text an `Mcp-Name` value stands for: the value itself, or what its
/// Base64 sentinel form decodes to. `None` when no body value can match it
/// (bad Base64, not UTF-8).
pub fn decode_name(value: &[u8]) -> Option<Cow<'_, str>> {
    let sentinel = value
        .strip_prefix(BASE64_PREFIX)
        .and_then(|rest| rest.strip_suffix(BASE64_SUFFIX));
    match sentinel {
        Some(encoded) => {
            let decoded = decode_base64(encoded)?;
            String::from_utf8(decoded).ok().map(Cow::Owned)
        }
        // `=?base64?=` starts and ends like the sentinel without room for
        // one: a client must encode such a value, so it is malformed.
        None if value.starts_with(BASE64_PREFIX) && value.ends_with(BASE64_SUFFIX) => None,
        None => std::str::from_utf8(value).ok().map(Cow::Borrowed),
    }
}

/// Standard Base64 (RFC 4648 section 4) with padding, canonical only: the
/// length is a multiple of 4, `=` only as the last one or two characters,
/// and the bits padding leaves over are zero. Anything else is `None`, so
/// one name has exactly one encoded form.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let quads = text.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in text.chunks_exact(4).enumerate() {
        let [a, b, c, d] = <[u8; 4]>::try_from(quad).ok()?;
        let (a, b) = (sextet(a)?, sextet(b)?);
        let last = i + 1 == quads;
        match (c, d) {
            (b'=', b'=') if last => {
                if b & 0x0f != 0 {
                    return None;
                }
                out.push((a << 2) | (b >> 4));
            }
            (c, b'=') if last => {
                let c = sextet(c)?;
                if c & 0x03 != 0 {
                    return None;
                }
                out.push((a << 2) | (b >> 4));
                out.push(((b & 0x0f) << 4) | (c >> 2));
            }
            (c, d) => {
                let (c, d) = (sextet(c)?, sextet(d)?);
                out.push((a << 2) | (b >> 4));
                out.push(((b & 0x0f) << 4) | (c >> 2));
                out.push(((c & 0x03) << 6) | d);
            }
        }
    }
    Some(out)
}

fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mcp::message::{Limits, PROTOCOL_VERSION_META, parse_body};

    fn message(body: serde_json::Value) -> Message {
        let headers = McpHeaders {
            content_type: Header::Value(b"application/json"),
            ..McpHeaders::default()
        };
        let mut parsed =
            parse_body(body.to_string().as_bytes(), &headers, &Limits::default()).unwrap();
        parsed.messages.remove(0)
    }

    fn declared(method: Header<'_>, name: Header<'_>) -> Option<Declared> {
        McpHeaders {
            method,
            name,
            ..McpHeaders::default()
        }
        .declared()
    }

    #[test]
    fn the_headers_declare_a_method_and_the_tool_of_a_call() {
        let call = Some(Declared {
            method: "tools/call".into(),
            tool: Some("search_context".into()),
        });
        let v = Header::Value;
        assert_eq!(declared(v(b"tools/call"), v(b"search_context")), call);
        // The Base64 form declares the same tool.
        assert_eq!(
            declared(v(b"tools/call"), v(b"=?base64?c2VhcmNoX2NvbnRleHQ=?=")),
            call
        );
        // Only a tools/call names a tool.
        assert_eq!(
            declared(v(b"prompts/get"), v(b"summary")),
            Some(Declared {
                method: "prompts/get".into(),
                tool: None
            })
        );
        // Nothing without one Mcp-Method; no tool that is not printable
        // ASCII once decoded (a newline, "\u{e9}").
        assert_eq!(declared(Header::Absent, v(b"search_context")), None);
        assert_eq!(declared(Header::Repeated, v(b"search_context")), None);
        assert_eq!(declared(v(b"tools/\x01call"), Header::Absent), None);
        for name in [
            &b"=?base64?YQpi?="[..],
            b"=?base64?w6k=?=",
            b"=?base64?%%%?=",
        ] {
            assert_eq!(
                declared(v(b"tools/call"), v(name)).and_then(|d| d.tool),
                None,
                "{name:?}"
            );
        }
    }

    fn call(name: &str) -> Message {
        message(json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": {},
                       "_meta": {PROTOCOL_VERSION_META: "2026-07-28"}}
        }))
    }

    fn check(
        m: &Message,
        method: Header<'_>,
        name: Header<'_>,
        version: Header<'_>,
    ) -> Result<(), Refusal> {
        check_headers(
            m,
            &McpHeaders {
                content_type: Header::Value(b"application/json"),
                protocol_version: version,
                method,
                name,
            },
        )
    }

    #[test]
    fn matching_or_absent_headers_pass() {
        let m = call("get_weather");
        let v = Header::Value;
        assert!(check(&m, v(b"tools/call"), v(b"get_weather"), v(b"2026-07-28")).is_ok());
        assert!(check(&m, Header::Absent, Header::Absent, Header::Absent).is_ok());
        assert!(check(&m, v(b"tools/call"), Header::Absent, Header::Absent).is_ok());
        // A body without _meta has no protocol version to disagree with.
        let plain = message(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        assert!(check(&plain, v(b"tools/list"), Header::Absent, v(b"2025-06-18")).is_ok());
        let read = message(
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                                  "params": {"uri": "file:///projects/myapp/config.json"}}),
        );
        assert!(
            check(
                &read,
                v(b"resources/read"),
                v(b"file:///projects/myapp/config.json"),
                Header::Absent
            )
            .is_ok()
        );
    }

    #[test]
    fn disagreeing_headers_are_refused() {
        let m = call("get_weather");
        let v = Header::Value;
        for (method, name, version) in [
            (v(b"tools/list"), Header::Absent, Header::Absent),
            (v(b"Tools/Call"), Header::Absent, Header::Absent),
            (v(b"tools/call "), Header::Absent, Header::Absent),
            (Header::Repeated, Header::Absent, Header::Absent),
            (Header::Absent, v(b"get_weather2"), Header::Absent),
            (Header::Absent, v(b"GET_WEATHER"), Header::Absent),
            (Header::Absent, Header::Repeated, Header::Absent),
            (Header::Absent, Header::Absent, v(b"2025-11-25")),
            (Header::Absent, Header::Absent, Header::Repeated),
        ] {
            let r = check(&m, method, name, version).unwrap_err();
            assert_eq!(r.reason, Reason::HeaderMismatch);
            assert_eq!((r.status(), r.jsonrpc_code()), (400, -32020));
            assert_eq!(r.id, m.id);
        }
        let r = check(&m, v(b"prompts/get"), Header::Absent, Header::Absent).unwrap_err();
        assert_eq!(
            r.message,
            "Mcp-Method header value 'prompts/get' does not match body value 'tools/call'"
        );
    }

    #[test]
    fn a_name_header_needs_a_name_in_the_body() {
        let list = message(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
        let r = check(&list, Header::Absent, Header::Value(b"x"), Header::Absent).unwrap_err();
        assert_eq!(r.reason, Reason::HeaderMismatch);
        let response = message(json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        let r = check(
            &response,
            Header::Value(b"ping"),
            Header::Absent,
            Header::Absent,
        )
        .unwrap_err();
        assert_eq!(r.reason, Reason::HeaderMismatch);
    }

    #[test]
    fn base64_names_are_decoded_before_comparing() {
        let m = call("Hello, \u{4e16}\u{754c}");
        let ok =
            |name: &[u8]| check(&m, Header::Absent, Header::Value(name), Header::Absent).is_ok();
        assert!(ok(b"=?base64?SGVsbG8sIOS4lueVjA==?="));
        assert!(ok("Hello, \u{4e16}\u{754c}".as_bytes()));
        assert!(!ok(b"=?base64?SGVsbG8sIOS4lueVjA=?="));
        assert!(!ok(b"=?BASE64?SGVsbG8sIOS4lueVjA==?="));
        // The sentinel pattern itself must be encoded.
        let literal = call("=?base64?literal?=");
        let ok = |name: &[u8]| {
            check(
                &literal,
                Header::Absent,
                Header::Value(name),
                Header::Absent,
            )
            .is_ok()
        };
        assert!(ok(b"=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="));
        assert!(!ok(b"=?base64?literal?="));
        let padded = call(" padded ");
        assert!(
            check(
                &padded,
                Header::Absent,
                Header::Value(b"=?base64?IHBhZGRlZCA=?="),
                Header::Absent
            )
            .is_ok()
        );
    }

    #[test]
    fn sentinel_decoding_is_strict() {
        let d = |v: &[u8]| decode_name(v).map(|s| s.into_owned());
        assert_eq!(
            d(b"=?base64?bGluZTEKbGluZTI=?=").as_deref(),
            Some("line1\nline2")
        );
        assert_eq!(d(b"=?base64??=").as_deref(), Some(""));
        assert_eq!(d(b"plain").as_deref(), Some("plain"));
        for bad in [
            &b"=?base64?=?="[..],
            b"=?base64?=",
            b"=?base64?YQ?=",
            b"=?base64?YR==?=",
            b"=?base64?YWJ=?=",
            b"=?base64?YW=j?=",
            b"=?base64?YQ==YQ==?=",
            b"=?base64?YWJj ?=",
            b"=?base64?YW-j?=",
            b"=?base64?/w==?=",
            b"\xff",
        ] {
            assert_eq!(d(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(d(b"=?base64?YWI=?=").as_deref(), Some("ab"));
        assert_eq!(d(b"=?base64?YWI=?=x").as_deref(), Some("=?base64?YWI=?=x"));
    }

    #[test]
    fn base64_round_trips() {
        let encode = |bytes: &[u8]| {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..4 {
                    if i <= chunk.len() {
                        out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                    } else {
                        out.push('=');
                    }
                }
            }
            out
        };
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode_base64(encode(&bytes).as_bytes()), Some(bytes));
        }
    }

    #[test]
    fn headers_are_read_from_the_request() {
        let headers: Vec<(String, Vec<u8>)> = vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("mcp-method".into(), b"tools/call".to_vec()),
            ("mcp-name".into(), b"a".to_vec()),
            ("mcp-name".into(), b"b".to_vec()),
        ];
        let head = RequestHead {
            method: "POST",
            path: "/mcp",
            headers: &headers.iter().cloned().collect(),
        };
        let h = McpHeaders::from_head(&head);
        assert_eq!(h.content_type, Header::Value(b"application/json"));
        assert_eq!(h.method, Header::Value(b"tools/call"));
        assert_eq!(h.name, Header::Repeated);
        assert_eq!(h.protocol_version, Header::Absent);
    }
}
