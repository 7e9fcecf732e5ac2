//! Refusals in one place: why a request was refused (the metric label and
//! Envoy's response details), and the 429/503 replies with their JSON
//! bodies and gRPC statuses.

use serde_json::json;

use super::body::BodyMeter;
use super::config::Counts;
use super::global::{RlsCall, limit_view};
use super::limiter::RateLimiter;
use super::limits::Limits;
use super::rls::DescriptorAnswer;
use super::view::LimitView;
use crate::bucket::{GlobalView, Tightest};
use crate::http::RequestHead;
use crate::reply::{LocalReply, grpc};

/// Envoy's response code details of each refusal
/// (`%RESPONSE_CODE_DETAILS%` in access logs):
/// `ctxgate_ratelimit_refused{<code>}`, see [`Refusal::details`].
pub const DETAILS_LOCAL_LIMIT: &str = "ctxgate_ratelimit_refused{local_limit}";
pub const DETAILS_GLOBAL_LIMIT: &str = "ctxgate_ratelimit_refused{global_limit}";
pub const DETAILS_QUEUE_FULL: &str = "ctxgate_ratelimit_refused{queue_full}";
pub const DETAILS_CONTENTION: &str = "ctxgate_ratelimit_refused{contention}";
pub const DETAILS_RLS_UNAVAILABLE: &str = "ctxgate_ratelimit_refused{rls_unavailable}";

/// The `error` member of a refusal's JSON body: the limit (local, global,
/// or a saturated limiter), too many requests in flight, or no RLS.
pub const ERROR_RATE_LIMITED: &str = "rate_limited";
pub const ERROR_OVERLOADED: &str = "overloaded";
pub const ERROR_RLS_UNAVAILABLE: &str = "rate_limit_unavailable";

/// The `message` of the refusals that have nothing to add.
const MESSAGE_QUEUE_FULL: &str = "too many requests in flight to the upstream; retry shortly";
const MESSAGE_CONTENTION: &str = "the rate limiter is saturated; retry shortly";
const MESSAGE_RLS_UNAVAILABLE: &str = "the rate limit service is unavailable";

/// Longest `Retry-After` of a local refusal, in seconds (a day).
const MAX_RETRY_SECONDS: u64 = 86_400;

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

    /// The metric label (`ctxgate_ratelimit.refused.<code>`).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::LocalLimit => "local_limit",
            Refusal::GlobalLimit => "global_limit",
            Refusal::QueueFull => "queue_full",
            Refusal::Contention => "contention",
            Refusal::RlsUnavailable => "rls_unavailable",
        }
    }

    /// Envoy's response code details (`ctxgate_ratelimit_refused{<code>}`).
    pub fn details(self) -> &'static str {
        match self {
            Refusal::LocalLimit => DETAILS_LOCAL_LIMIT,
            Refusal::GlobalLimit => DETAILS_GLOBAL_LIMIT,
            Refusal::QueueFull => DETAILS_QUEUE_FULL,
            Refusal::Contention => DETAILS_CONTENTION,
            Refusal::RlsUnavailable => DETAILS_RLS_UNAVAILABLE,
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
            "error": ERROR_RATE_LIMITED,
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
            Refusal::GlobalLimit.details().into(),
        );
        reply.grpc_status = reply.grpc_status.map(|_| grpc::RESOURCE_EXHAUSTED);
        reply
    }

    /// 429 for a local limit without room: the limit with the fewest
    /// units left (`tightest`).
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
        let retry = tightest.reset_seconds.clamp(1, MAX_RETRY_SECONDS);
        let mut headers = view.map(|v| v.headers()).unwrap_or_default();
        headers.push(("retry-after".into(), retry.to_string()));
        let body = json!({
            "error": ERROR_RATE_LIMITED,
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
            Refusal::LocalLimit.details().into(),
        );
        reply.grpc_status = reply.grpc_status.map(|_| grpc::RESOURCE_EXHAUSTED);
        reply
    }
}

/// 429 when the bucket could not be updated and `on_contention` is `deny`.
pub(super) fn contention_refusal(request: &RequestHead<'_>) -> Refused {
    let body = json!({"error": ERROR_RATE_LIMITED, "message": MESSAGE_CONTENTION});
    let mut reply = LocalReply::json_error(
        request,
        429,
        &body,
        vec![("retry-after".into(), "1".into())],
        Refusal::Contention.details().into(),
    );
    reply.grpc_status = reply.grpc_status.map(|_| grpc::RESOURCE_EXHAUSTED);
    Refused {
        reply,
        refusal: Refusal::Contention,
    }
}

/// 503 while too many requests are in flight to the upstream (adaptive
/// limiting).
pub(super) fn queue_full_refusal(request: &RequestHead<'_>) -> Refused {
    let body = json!({
        "error": ERROR_OVERLOADED,
        "message": MESSAGE_QUEUE_FULL,
    });
    let mut reply = LocalReply::json_error(
        request,
        503,
        &body,
        vec![("retry-after".into(), "1".into())],
        Refusal::QueueFull.details().into(),
    );
    reply.grpc_status = reply.grpc_status.map(|_| grpc::RESOURCE_EXHAUSTED);
    Refused {
        reply,
        refusal: Refusal::QueueFull,
    }
}

/// 429 mid-stream: a body of unknown size crossed a payload band that its
/// bucket cannot pay the `extra` cost of; the bucket has room again in
/// `reset_seconds`.
pub(super) fn body_refusal(meter: &BodyMeter, extra: u64, reset_seconds: u64) -> Refused {
    let retry = reset_seconds.clamp(1, MAX_RETRY_SECONDS);
    let body = json!({
        "error": ERROR_RATE_LIMITED,
        "message": format!(
            "{} cannot pay for a body of {} bytes and more: it costs {} read-equivalents more",
            meter.label, meter.received, extra
        ),
        "cost": extra,
        "retry_after_seconds": retry,
    });
    let mut headers = vec![("retry-after".to_owned(), retry.to_string())];
    headers.push(("content-type".into(), "application/json".into()));
    Refused {
        reply: LocalReply {
            status: 429,
            headers,
            body: if meter.head_request {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            },
            grpc_status: meter.grpc.then_some(grpc::RESOURCE_EXHAUSTED),
            details: Refusal::LocalLimit.details().into(),
        },
        refusal: Refusal::LocalLimit,
    }
}

impl RateLimiter {
    /// 429: the RLS answered OVER_LIMIT (`global`: its limit, for
    /// `x-ratelimit-*`).
    pub(super) fn rls_over_limit_refusal(
        &self,
        call: &RlsCall,
        label: &str,
        answer: &DescriptorAnswer,
    ) -> Refused {
        let limit = answer.limit.unwrap_or(0);
        let window = answer.window_seconds.unwrap_or(60);
        let reset = answer.reset_in_ms.map_or(window, |ms| ms.div_ceil(1000));
        let global = limit_view(answer);
        let body = json!({
            "error": ERROR_RATE_LIMITED,
            "message": format!("{label} exceeded its global limit of {limit} per {window} s"),
            "limit": {"scope": "global", "limit": limit, "window_seconds": window},
            "cost": call.cost,
            "retry_after_seconds": reset,
        });
        let mut headers = if self.response_headers {
            global.map(|g| g.headers()).unwrap_or_default()
        } else {
            Vec::new()
        };
        headers.push(("retry-after".into(), reset.max(1).to_string()));
        let reply = reply_for(call, 429, &body, headers, Refusal::GlobalLimit.details());
        Refused {
            reply,
            refusal: Refusal::GlobalLimit,
        }
    }
}

/// `deny_status` when the RLS failed and `failure_mode` is `deny`.
pub(super) fn rls_unavailable_refusal(call: &RlsCall) -> Refused {
    let body = json!({"error": ERROR_RLS_UNAVAILABLE, "message": MESSAGE_RLS_UNAVAILABLE});
    let reply = reply_for(
        call,
        call.deny_status,
        &body,
        Vec::new(),
        Refusal::RlsUnavailable.details(),
    );
    Refused {
        reply,
        refusal: Refusal::RlsUnavailable,
    }
}

/// A reply to a request that waited for the RLS (its head is gone: the
/// call kept what the reply depends on).
fn reply_for(
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
        grpc_status: call.grpc.then_some(if status == 429 {
            grpc::RESOURCE_EXHAUSTED
        } else {
            grpc::UNAVAILABLE
        }),
        details: details.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_name_the_metric_label() {
        for refusal in Refusal::ALL {
            assert_eq!(
                refusal.details(),
                format!("ctxgate_ratelimit_refused{{{}}}", refusal.code())
            );
        }
    }
}
