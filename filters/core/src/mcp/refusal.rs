//! Why an MCP message was refused.
//!
//! Every refusal has one stable reason code (`mcp_header_mismatch`, ...).
//! The same string is `data.reason` in the JSON-RPC error body, the metric
//! label and the suffix of Envoy's response details
//! (`ctxgate_mcp_refused{mcp_header_mismatch}`), so a dashboard, a log
//! search and a client's bug report all name the same thing. The reason
//! also fixes the HTTP status and the JSON-RPC error code.

use std::fmt;

use super::message::{Id, Kind, Message};

/// The JSON-RPC error codes a refusal carries.
pub mod code {
    /// JSON-RPC 2.0: the body is not JSON the gateway could read.
    pub const PARSE_ERROR: i64 = -32700;
    /// JSON-RPC 2.0: the JSON is not a valid JSON-RPC message.
    pub const INVALID_REQUEST: i64 = -32600;
    /// JSON-RPC 2.0: the method's parameters are invalid. MCP uses it for
    /// an unknown tool and (from 2026-07-28) an unknown resource too.
    pub const INVALID_PARAMS: i64 = -32602;
    /// MCP 2026-07-28 `HeaderMismatch`: a standard header disagrees with
    /// the body, or is malformed. Drafts of the revision used -32001; the
    /// published revision allocates -32020 and tells new implementations
    /// not to use -32000..-32019 at all.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// The caller may not do this (HTTP 403). Application-defined, outside
    /// the range JSON-RPC and MCP reserve (-32768..-32000), so no client
    /// can mistake it for a code either defines; `data.reason` and the
    /// HTTP status say what it means.
    pub const FORBIDDEN: i64 = -31403;

    /// The code of a refusal another stage made with HTTP `status` (the
    /// rate limiter's 429 is -31429): application-defined like
    /// [`FORBIDDEN`], -31000 minus the status.
    pub fn for_status(status: u16) -> i64 {
        -31_000 - i64::from(status)
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The `content-type` is not `application/json`.
    NotJson,
    /// The body is not UTF-8, not JSON, or has data after the JSON value.
    InvalidJson,
    /// An object has the same key twice: readers disagree on which wins.
    DuplicateKey,
    /// Arrays and objects are nested deeper than the limit.
    TooDeep,
    /// Valid JSON, but not a valid JSON-RPC 2.0 message (or batch).
    InvalidJsonRpc,
    /// A batch (JSON array) under a protocol revision without batches.
    BatchNotAllowed,
    /// A batch with more messages than the limit.
    BatchTooLarge,
    /// The method's parameters have the wrong shape (`params.name` not a
    /// string, `arguments` not an object, ...).
    InvalidParams,
    /// An MCP standard header disagrees with the body.
    HeaderMismatch,
    /// A `tools/call` of a tool no rule of the tool map names.
    UnknownTool,
    /// A `resources/read` of a URI no resource rule covers.
    UnknownResource,
    /// The context path a message names is not a canonical context path.
    InvalidContext,
    /// The caller's scopes do not grant what the message needs.
    InsufficientScope,
    /// The body is longer than `max_body_bytes` (refused unread).
    BodyTooLarge,
    /// A token in the query string: MCP clients send it in the
    /// `Authorization` header only (MCP authorization, RFC 6750 2.3).
    QueryToken,
    /// An `Mcp-Session-Id` the gateway did not see issued (or forgot): 404,
    /// the client starts a new session.
    SessionUnknown,
    /// An `Mcp-Session-Id` issued to another principal: 404 as well, so
    /// the holder learns nothing about it.
    SessionOtherPrincipal,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::NotJson,
        Reason::InvalidJson,
        Reason::DuplicateKey,
        Reason::TooDeep,
        Reason::InvalidJsonRpc,
        Reason::BatchNotAllowed,
        Reason::BatchTooLarge,
        Reason::InvalidParams,
        Reason::HeaderMismatch,
        Reason::UnknownTool,
        Reason::UnknownResource,
        Reason::InvalidContext,
        Reason::InsufficientScope,
        Reason::BodyTooLarge,
        Reason::QueryToken,
        Reason::SessionUnknown,
        Reason::SessionOtherPrincipal,
    ];

    /// The stable reason code: metric label, `data.reason`, response
    /// details.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotJson => "mcp_not_json",
            Reason::InvalidJson => "mcp_invalid_json",
            Reason::DuplicateKey => "mcp_duplicate_key",
            Reason::TooDeep => "mcp_too_deep",
            Reason::InvalidJsonRpc => "mcp_invalid_jsonrpc",
            Reason::BatchNotAllowed => "mcp_batch_not_allowed",
            Reason::BatchTooLarge => "mcp_batch_too_large",
            Reason::InvalidParams => "mcp_invalid_params",
            Reason::HeaderMismatch => "mcp_header_mismatch",
            Reason::UnknownTool => "mcp_unknown_tool",
            Reason::UnknownResource => "mcp_unknown_resource",
            Reason::InvalidContext => "mcp_invalid_context",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::BodyTooLarge => "mcp_body_too_large",
            Reason::QueryToken => "mcp_query_token",
            Reason::SessionUnknown => "mcp_session_unknown",
            Reason::SessionOtherPrincipal => "mcp_session_other_principal",
        }
    }

    /// The HTTP status: 415 for a body that is not declared JSON, 403 for
    /// what the caller may not do, 400 for everything malformed. (A body
    /// over `max_body_bytes` is 413, refused before any parsing.)
    pub fn status(self) -> u16 {
        match self {
            Reason::NotJson => 415,
            Reason::BodyTooLarge => 413,
            Reason::SessionUnknown | Reason::SessionOtherPrincipal => 404,
            Reason::UnknownTool | Reason::UnknownResource | Reason::InsufficientScope => 403,
            _ => 400,
        }
    }

    /// The JSON-RPC error code.
    pub fn jsonrpc_code(self) -> i64 {
        match self {
            Reason::InvalidJson | Reason::DuplicateKey | Reason::TooDeep => code::PARSE_ERROR,
            Reason::NotJson
            | Reason::InvalidJsonRpc
            | Reason::BatchNotAllowed
            | Reason::BatchTooLarge
            | Reason::BodyTooLarge
            | Reason::QueryToken
            | Reason::SessionUnknown
            | Reason::SessionOtherPrincipal => code::INVALID_REQUEST,
            Reason::InvalidParams
            | Reason::UnknownTool
            | Reason::UnknownResource
            | Reason::InvalidContext => code::INVALID_PARAMS,
            Reason::HeaderMismatch => code::HEADER_MISMATCH,
            Reason::InsufficientScope => code::FORBIDDEN,
        }
    }

    /// Envoy's response code details: `ctxgate_mcp_refused{<code>}`.
    pub fn details(self) -> String {
        format!("ctxgate_mcp_refused{{{}}}", self.code())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refused message: why, a sentence for the client, and what the reply
/// needs to know about the message (its id, whether it was a
/// notification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// For the client and the log: what was wrong, in one sentence.
    pub message: String,
    /// The id of the refused request, when one could be read; the reply
    /// echoes it (`null` otherwise).
    pub id: Option<Id>,
    /// The refused message was a notification: the reply has no body.
    pub notification: bool,
    /// For [`Reason::InsufficientScope`]: the scope that would have been
    /// enough (`read:projects/engineering/x`).
    pub required_scope: Option<String>,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            id: None,
            notification: false,
            required_scope: None,
        }
    }

    /// The refusal of `message`: its id, and whether it gets a body.
    pub fn about(mut self, message: &Message) -> Refusal {
        self.id = message.id.clone();
        self.notification = message.kind == Kind::Notification;
        self
    }

    /// The refusal of a whole batch because of one of its messages: the
    /// reply is one error with `id: null`, never silent, whatever the
    /// message was.
    pub fn whole_batch(mut self) -> Refusal {
        self.id = None;
        self.notification = false;
        self
    }

    pub(super) fn with_id(mut self, id: Option<Id>, notification: bool) -> Refusal {
        self.id = id;
        self.notification = notification;
        self
    }

    pub fn status(&self) -> u16 {
        self.reason.status()
    }

    pub fn jsonrpc_code(&self) -> i64 {
        self.reason.jsonrpc_code()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.message)
    }
}

impl std::error::Error for Refusal {}

/// Longest client-supplied text quoted in a refusal's message, in
/// characters.
const MAX_QUOTED_CHARS: usize = 100;

/// `text` for a refusal's message: cut after [`MAX_QUOTED_CHARS`]
/// characters, so a client cannot make the gateway's replies and log
/// lines as long as its body.
pub(super) fn quoted(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// [`quoted`] for raw header bytes, which need not be UTF-8.
pub(super) fn quoted_bytes(bytes: &[u8]) -> String {
    quoted(&String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_fit_envoy_details() {
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for reason in Reason::ALL {
            let details = reason.details();
            assert!(!details.contains(char::is_whitespace), "{details}");
            assert!(details.starts_with("ctxgate_mcp_refused{"), "{details}");
        }
    }

    #[test]
    fn statuses_and_jsonrpc_codes() {
        let expect = [
            (Reason::NotJson, 415, -32600),
            (Reason::InvalidJson, 400, -32700),
            (Reason::DuplicateKey, 400, -32700),
            (Reason::TooDeep, 400, -32700),
            (Reason::InvalidJsonRpc, 400, -32600),
            (Reason::BatchNotAllowed, 400, -32600),
            (Reason::BatchTooLarge, 400, -32600),
            (Reason::InvalidParams, 400, -32602),
            (Reason::HeaderMismatch, 400, -32020),
            (Reason::UnknownTool, 403, -32602),
            (Reason::UnknownResource, 403, -32602),
            (Reason::InvalidContext, 400, -32602),
            (Reason::InsufficientScope, 403, -31403),
            (Reason::BodyTooLarge, 413, -32600),
            (Reason::QueryToken, 400, -32600),
            (Reason::SessionUnknown, 404, -32600),
            (Reason::SessionOtherPrincipal, 404, -32600),
        ];
        assert_eq!(expect.len(), Reason::ALL.len());
        for (reason, status, code) in expect {
            assert_eq!(
                (reason.status(), reason.jsonrpc_code()),
                (status, code),
                "{reason}"
            );
        }
    }

    #[test]
    fn quoted_text_is_bounded() {
        assert_eq!(quoted("short"), "short");
        let long = "\u{e9}".repeat(300);
        let shown = quoted(&long);
        assert_eq!(shown.chars().count(), MAX_QUOTED_CHARS + 3);
        assert_eq!(quoted_bytes(b"a\xffb"), "a\u{fffd}b");
    }
}
