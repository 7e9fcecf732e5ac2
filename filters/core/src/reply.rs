//! The replies a stage sends itself instead of forwarding the request:
//! status, headers, a JSON body (none for `HEAD`), the gRPC status for gRPC
//! requests, and Envoy's response code details; and the gRPC status codes
//! ([`grpc`]).

use crate::http::RequestHead;

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set for gRPC requests: Envoy then answers with HTTP 200 and this
    /// `grpc-status`.
    pub grpc_status: Option<u32>,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%` in access
    /// logs): a stable, whitespace-free string such as
    /// `ctxgate_auth_denied{token_expired}`.
    pub details: String,
}

impl LocalReply {
    /// A JSON error reply shaped for the request: no body for HEAD, a
    /// gRPC status for gRPC.
    pub fn json_error(
        request: &RequestHead<'_>,
        status: u16,
        body: &serde_json::Value,
        headers: Vec<(String, String)>,
        details: String,
    ) -> LocalReply {
        let mut headers = headers;
        let body = if request.is_head() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        headers.push(("content-type".into(), "application/json".into()));
        let grpc_status = request.is_grpc().then(|| grpc_status_for(status));
        LocalReply {
            status,
            headers,
            body,
            grpc_status,
            details,
        }
    }
}

/// The gRPC status matching an HTTP status, as Envoy maps them.
pub fn grpc_status_for(http_status: u16) -> u32 {
    match http_status {
        400 => grpc::INVALID_ARGUMENT,
        401 => grpc::UNAUTHENTICATED,
        403 => grpc::PERMISSION_DENIED,
        404 => grpc::UNIMPLEMENTED,
        429 => grpc::RESOURCE_EXHAUSTED,
        502..=504 => grpc::UNAVAILABLE,
        _ => grpc::UNKNOWN,
    }
}

/// The gRPC status codes ctxgate sends or reads (`google.rpc.Code`).
pub mod grpc {
    pub const OK: u32 = 0;
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}
