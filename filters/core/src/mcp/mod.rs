//! MCP (Model Context Protocol) messages: what a POST to an MCP endpoint
//! asks for, whether the caller may ask it, and what it costs; and the
//! listings a caller gets back, narrowed to what it may use. Revisions
//! 2025-03-26, 2025-06-18, 2025-11-25 and 2026-07-28 (JSON-RPC 2.0 over
//! Streamable HTTP).
//!
//! The gateway authorises MCP the way it authorises the REST API: by an
//! action on a context path. A tool call's path comes from its arguments
//! (or is fixed, or the tool's own `mcp/tools/<name>`), a resource's from
//! its URI, a prompt's is `mcp/prompts/<name>`, any other method's
//! `mcp/methods/<method>`; a few methods (`initialize`, `ping`, the
//! listings, notifications) are free. Everything the gateway decides on
//! comes from the body, read once and strictly, so that the gateway and
//! the server cannot read one body two ways.
//!
//! A request, in order:
//!
//! 1. [`McpHeaders::from_head`]: the headers MCP reads;
//! 2. [`parse_body`]: the body, bounded by the caller
//!    (`max_body_bytes`, 413), into [`Message`]s: refused if it is not
//!    declared JSON, not UTF-8 or JSON, repeats a key anywhere, nests too
//!    deep, is not JSON-RPC 2.0, or is a batch outside 2025-03-26;
//! 3. [`ToolMap::decide`], for each message: [`check_headers`] (the
//!    2026-07-28 `Mcp-Method`, `Mcp-Name` and `MCP-Protocol-Version` agree
//!    with the body), [`ToolMap::resolve`] (a [`Resolved`]: operation,
//!    name, [`Access`], [`Cost`]) and [`authorize`] (the caller's
//!    [`ScopeSet`](crate::scope::ScopeSet) grants it);
//! 4. a [`Refusal`] at any step becomes the reply, [`Refusal::reply`]: a
//!    JSON-RPC error with the request's id, the HTTP status, and the
//!    stable reason (`mcp_header_mismatch`, ...) in `data.reason` and in
//!    Envoy's response details; a refused notification gets no body.
//!
//! The response, when the request was a listing ([`Listings::of`]):
//! [`filter_body`] for a whole JSON or SSE body, or [`SseListingFilter`]
//! chunk by chunk.
//!
//! One concern per file: `message` (the body), `json` (strict JSON),
//! `headers` (the standard headers), [`config`] (the `mcp` section),
//! `tools` (the compiled [`ToolMap`]), `glob` (name patterns), `decide`
//! (resolution and authorisation), `refusal` (reasons, statuses, codes),
//! `reply` (the error body), `listing` (filtered listings) and `sse`
//! (event streams, byte for byte).

pub mod config;
mod decide;
mod glob;
mod headers;
mod json;
mod listing;
mod message;
mod refusal;
mod reply;
mod session;
mod sse;
mod tools;

#[cfg(test)]
mod tests;

pub use decide::{Access, RESPONSE_OPERATION, Resolved, authorize};
pub use glob::Glob;
pub use headers::{
    CONTENT_TYPE, Declared, Header, MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, McpHeaders,
    check_headers, decode_name,
};
pub use json::MAX_DEPTH_CEILING;
pub use listing::{ListKind, Listings, SseListingFilter, Viewer, filter_body, filter_json};
pub use message::{
    BATCH_REVISION, Id, Kind, Limits, Message, PROTOCOL_VERSION_META, ParsedBody, Target,
    parse_body,
};
pub use refusal::{Reason, Refusal, code};
pub use reply::error_response;
pub use session::{SessionCheck, SessionTable};
pub use sse::EventTooLarge;
pub use tools::{Cost, ToolMap};
