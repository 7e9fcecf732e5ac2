//! Refusals: why a request was refused (the metric label and the response
//! details), and the 429/503 replies.

use serde_json::json;

use super::config::Counts;
use super::global::RlsCall;
use super::limiter::RateLimiter;
use super::limits::Limits;
use super::view::LimitView;
use crate::bucket::{GlobalView, Tightest};
use crate::http::RequestHead;
use crate::reply::LocalReply;

/// Why a request was refused, for the metric and the response details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The local bucket was full.
    LocalLimit,
    /// The RLS answered OVER_LIMIT.
    GlobalLimit,
    /// Too many requests in flight to the upstream.
    QueueFull,
    /// The bucket could not be updated (contention, or a slot that does
    /// not decode) and `on_contention` is `deny`.
    Contention,
    /// The RLS failed and `failure_mode` is `deny`.
    RlsUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::LocalLimit,
        Refusal::GlobalLimit,
        Refusal::QueueFull,
        Refusal::Contention,
        Refusal::RlsUnavailable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Refusal::LocalLimit => "local_limit",
            Refusal::GlobalLimit => "global_limit",
            Refusal::QueueFull => "queue_full",
            Refusal::Contention => "contention",
            Refusal::RlsUnavailable => "rls_unavailable",
        }
    }
}

/// A refused request: the reply, and why (for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reply: LocalReply,
    pub refusal: Refusal,
}

impl RateLimiter {
    /// 429 for a key the RLS reported over its limit, answered locally.
    pub(super) fn global_refusal_reply(
        &self,
        request: &RequestHead<'_>,
        label: &str,
        view: &GlobalView,
        cost: u64,
        now_ms: u64,
    ) -> LocalReply {
        let reset = view.reset_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
        let limit = view.limit;
        let mut headers = if self.response_headers {
            LimitView {
                limit,
                window_seconds: reset,
                remaining: 0,
                reset_seconds: reset,
            }
            .headers()
        } else {
            Vec::new()
        };
        headers.push(("retry-after".into(), reset.to_string()));
        let body = json!({
            "error": "rate_limited",
            "message": format!("{label} exceeded its global limit of {limit} for this window"),
            "limit": {"scope": "global", "limit": limit},
            "cost": cost,
            "retry_after_seconds": reset,
        });
        let mut reply = LocalReply::json_error(
            request,
            429,
            &body,
            headers,
            "ctxgate_ratelimit_refused{global_limit}".into(),
        );
        reply.grpc_status = reply.grpc_status.map(|_| 8);
        reply
    }

    pub(super) fn refusal_reply(
        &self,
        request: &RequestHead<'_>,
        label: &str,
        limits: &Limits,
        tightest: &Tightest,
        cost: u64,
        view: Option<LimitView>,
    ) -> LocalReply {
        let limit = limits.configs.get(tightest.index);
        let (name, window, counts) = limit.map_or(("limit", 60, Counts::Cost), |l| {
            (l.name.as_str(), l.window_seconds, l.counts)
        });
        let unit = if counts == Counts::Cost {
            "read-equivalents"
        } else {
            "requests"
        };
        let retry = tightest.reset_seconds.clamp(1, 86_400);
        let mut headers = view.map(|v| v.headers()).unwrap_or_default();
        headers.push(("retry-after".into(), retry.to_string()));
        let body = json!({
            "error": "rate_limited",
            "message": format!("{label} exceeded its {name} limit of {} {unit} per {window} s", tightest.capacity),
            "limit": {"name": name, "limit": tightest.capacity, "window_seconds": window, "counts": unit},
            "cost": cost,
            "retry_after_seconds": retry,
        });
        let mut reply = LocalReply::json_error(
            request,
            429,
            &body,
            headers,
            "ctxgate_ratelimit_refused{local_limit}".into(),
        );
        reply.grpc_status = reply.grpc_status.map(|_| 8);
        reply
    }
}

pub(super) fn contention_refusal(request: &RequestHead<'_>) -> Refused {
    let body =
        json!({"error": "rate_limited", "message": "the rate limiter is saturated; retry shortly"});
    let mut reply = LocalReply::json_error(
        request,
        429,
        &body,
        vec![("retry-after".into(), "1".into())],
        "ctxgate_ratelimit_refused{contention}".into(),
    );
    reply.grpc_status = reply.grpc_status.map(|_| 8);
    Refused {
        reply,
        refusal: Refusal::Contention,
    }
}

pub(super) fn reply_for(
    call: &RlsCall,
    status: u16,
    body: &serde_json::Value,
    headers: Vec<(String, String)>,
    details: &str,
) -> LocalReply {
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    LocalReply {
        status,
        headers,
        body: if call.head_request {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
        grpc_status: call.grpc.then_some(if status == 429 { 8 } else { 14 }),
        details: details.to_owned(),
    }
}
