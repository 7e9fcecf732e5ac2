//! The reply to a refused MCP message: a JSON-RPC 2.0 error response,
//!
//! ```json
//! {"jsonrpc": "2.0", "id": 7,
//!  "error": {"code": -32020, "message": "Mcp-Method header value ...",
//!            "data": {"reason": "mcp_header_mismatch"}}}
//! ```
//!
//! with the refusal's HTTP status. The id is the refused request's, or
//! `null` when none could be read (a parse error, a batch). A refused
//! notification gets the status alone and no body: nobody is waiting for
//! a response to it, and `202 Accepted` would say it was accepted.

use serde_json::{Map, Value, json};

use super::message::Id;
use super::refusal::Refusal;
use crate::reply::LocalReply;

/// A JSON-RPC 2.0 error response answering `id` (`null` when unknown).
pub fn error_response(
    id: Option<&Id>,
    code: i64,
    message: &str,
    data: Map<String, Value>,
) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id.map_or(Value::Null, Id::to_json),
        "error": {
            "code": code,
            "message": message,
            "data": data,
        },
    })
}

impl Refusal {
    /// The JSON-RPC error response, or `None` for a notification.
    pub fn body(&self) -> Option<Value> {
        if self.notification {
            return None;
        }
        let mut data = Map::new();
        data.insert("reason".into(), self.reason.code().into());
        if let Some(scope) = &self.required_scope {
            data.insert("required_scope".into(), scope.as_str().into());
        }
        Some(error_response(
            self.id.as_ref(),
            self.jsonrpc_code(),
            &self.message,
            data,
        ))
    }

    /// The local reply: the status, the body (with `content-type:
    /// application/json`) unless the message was a notification, and
    /// Envoy's response details `ctxgate_mcp_refused{<reason>}`.
    pub fn reply(&self) -> LocalReply {
        let (headers, body) = match self.body() {
            Some(body) => (
                vec![("content-type".to_owned(), "application/json".to_owned())],
                body.to_string().into_bytes(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        LocalReply {
            status: self.status(),
            headers,
            body,
            grpc_status: None,
            details: self.reason.details(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mcp::message::Id;
    use crate::mcp::refusal::Reason;

    #[test]
    fn a_refused_request_gets_a_jsonrpc_error_with_its_id() {
        let refusal = Refusal::new(
            Reason::HeaderMismatch,
            "Mcp-Name header value 'foo' does not match body value 'bar'",
        )
        .with_id(Some(Id::Number(1.into())), false);
        let reply = refusal.reply();
        assert_eq!(reply.status, 400);
        assert_eq!(reply.details, "ctxgate_mcp_refused{mcp_header_mismatch}");
        assert_eq!(
            reply.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"jsonrpc": "2.0", "id": 1, "error": {
                "code": -32020,
                "message": "Mcp-Name header value 'foo' does not match body value 'bar'",
                "data": {"reason": "mcp_header_mismatch"}
            }})
        );
    }

    #[test]
    fn string_ids_are_echoed_and_unknown_ids_are_null() {
        let with =
            Refusal::new(Reason::UnknownTool, "no").with_id(Some(Id::String("a-1".into())), false);
        assert_eq!(with.body().unwrap()["id"], json!("a-1"));
        let without = Refusal::new(Reason::InvalidJson, "not JSON");
        let body = without.body().unwrap();
        assert_eq!(body["id"], Value::Null);
        assert_eq!(body["error"]["code"], json!(-32700));
    }

    #[test]
    fn scope_refusals_name_the_scope() {
        let mut refusal = Refusal::new(
            Reason::InsufficientScope,
            "mcp:tools/call needs the scope read:projects/sales/x",
        )
        .with_id(Some(Id::Number(4.into())), false);
        refusal.required_scope = Some("read:projects/sales/x".into());
        let reply = refusal.reply();
        assert_eq!(reply.status, 403);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body["error"]["data"],
            json!({"reason": "insufficient_scope", "required_scope": "read:projects/sales/x"})
        );
        assert_eq!(body["error"]["code"], json!(-31403));
    }

    #[test]
    fn a_refused_notification_gets_its_status_and_no_body() {
        let refusal = Refusal::new(Reason::InsufficientScope, "no").with_id(None, true);
        let reply = refusal.reply();
        assert_eq!(reply.status, 403);
        assert!(reply.body.is_empty());
        assert!(reply.headers.is_empty());
        assert_eq!(reply.details, "ctxgate_mcp_refused{insufficient_scope}");
        // Refused as part of a batch, it answers for the batch.
        assert!(refusal.whole_batch().body().is_some());
    }
}
