//! Outgoing calls on Envoy's clusters: gRPC framing over an HTTP/2
//! stream, and the answers the pipeline expects.
//!
//! The ABI has no gRPC client, so a unary gRPC call is one HTTP/2 stream:
//! a `POST /<service>/<method>` carrying one length-prefixed message, whose
//! status arrives in the trailers (or, for an error with no message, in the
//! headers: "trailers-only"). A one-shot callout would drop the trailers,
//! so gRPC calls use the ABI's streams.

use ctxgate_core::headers::Headers;
use ctxgate_core::host::{CallResponse, GrpcCall, HttpCall};
use ctxgate_core::reply::{grpc, grpc_status_for};

use crate::abi::{CallAnswer, CallEnd};

/// A call's request, owned (it may wait for the main thread).
#[derive(Debug, Clone)]
pub struct Request {
    pub cluster: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    pub kind: Kind,
}

/// What the answer is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Grpc,
}

impl Request {
    pub fn grpc(call: &GrpcCall<'_>) -> Request {
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            (":method".into(), b"POST".to_vec()),
            (
                ":path".into(),
                format!("/{}/{}", call.service, call.method).into_bytes(),
            ),
            (":authority".into(), call.cluster.as_bytes().to_vec()),
            ("content-type".into(), b"application/grpc".to_vec()),
            ("te".into(), b"trailers".to_vec()),
            (
                "grpc-timeout".into(),
                format!("{}m", call.timeout_ms).into_bytes(),
            ),
        ];
        for (name, value) in call.metadata {
            headers.push(((*name).to_owned(), value.to_vec()));
        }
        Request {
            cluster: call.cluster.to_owned(),
            headers,
            body: frame(call.message),
            timeout_ms: call.timeout_ms,
            kind: Kind::Grpc,
        }
    }

    pub fn http(call: &HttpCall<'_>) -> Request {
        Request {
            cluster: call.cluster.to_owned(),
            headers: call
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: call.body.map(<[u8]>::to_vec).unwrap_or_default(),
            timeout_ms: call.timeout_ms,
            kind: Kind::Http,
        }
    }

    /// The headers as the ABI takes them.
    pub fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }
}

/// One gRPC message, length-prefixed, uncompressed.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 5);
    body.push(0);
    body.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.extend_from_slice(message);
    body
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn number<T: std::str::FromStr>(value: Option<&[u8]>) -> Option<T> {
    std::str::from_utf8(value?).ok()?.trim().parse().ok()
}

/// The pipeline's view of an answer.
pub fn response(kind: Kind, end: CallEnd, answer: CallAnswer) -> CallResponse {
    match kind {
        Kind::Http => {
            let status = match end {
                CallEnd::Answered => number::<u16>(header(&answer.headers, ":status")),
                CallEnd::Failed => None,
            };
            let body = if status.is_some() {
                answer.body
            } else {
                Vec::new()
            };
            CallResponse::Http { status, body }
        }
        Kind::Grpc => grpc_response(end, answer),
    }
}

fn grpc_response(end: CallEnd, answer: CallAnswer) -> CallResponse {
    let failed = |status| CallResponse::Grpc {
        status,
        message: Vec::new(),
    };
    if end == CallEnd::Failed {
        return failed(grpc::UNAVAILABLE);
    }
    let http = number::<u16>(header(&answer.headers, ":status"));
    let status = number::<u32>(header(&answer.trailers, "grpc-status"))
        .or_else(|| number::<u32>(header(&answer.headers, "grpc-status")));
    let status = match (http, status) {
        (Some(200), Some(status)) => status,
        // A 200 without a status is not a gRPC answer.
        (Some(200), None) => grpc::UNKNOWN,
        // Envoy reports a call that timed out as a synthesized 504.
        (Some(504), _) => grpc::DEADLINE_EXCEEDED,
        (Some(http), _) => grpc_status_for(http),
        (None, _) => grpc::UNAVAILABLE,
    };
    if status != grpc::OK {
        return failed(status);
    }
    match unframe(&answer.body) {
        Some(message) => CallResponse::Grpc {
            status,
            message: message.to_vec(),
        },
        None => failed(grpc::UNKNOWN),
    }
}

/// The one uncompressed message of a unary answer.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = body.split_first()?;
    let (length, message) = rest.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    (compressed == 0 && message.len() == length).then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)], body: &[u8], trailers: &[(&str, &str)]) -> CallAnswer {
        let own = |h: &[(&str, &str)]| {
            h.iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        CallAnswer {
            headers: own(headers),
            body: body.to_vec(),
            trailers: own(trailers),
        }
    }

    #[test]
    fn a_grpc_answer_is_read_from_trailers() {
        let ok = answer(
            &[(":status", "200")],
            &frame(b"hi"),
            &[("grpc-status", "0")],
        );
        assert_eq!(
            response(Kind::Grpc, CallEnd::Answered, ok),
            CallResponse::Grpc {
                status: 0,
                message: b"hi".to_vec()
            }
        );
        let only = answer(&[(":status", "200"), ("grpc-status", "14")], b"", &[]);
        assert_eq!(
            response(Kind::Grpc, CallEnd::Answered, only),
            CallResponse::Grpc {
                status: 14,
                message: vec![]
            }
        );
        let truncated = answer(
            &[(":status", "200")],
            &frame(b"hi")[..4],
            &[("grpc-status", "0")],
        );
        assert_eq!(
            response(Kind::Grpc, CallEnd::Answered, truncated),
            CallResponse::Grpc {
                status: grpc::UNKNOWN,
                message: vec![]
            }
        );
        let timeout = answer(&[(":status", "504")], b"upstream request timeout", &[]);
        assert_eq!(
            response(Kind::Grpc, CallEnd::Answered, timeout),
            CallResponse::Grpc {
                status: grpc::DEADLINE_EXCEEDED,
                message: vec![]
            }
        );
        assert_eq!(
            response(Kind::Grpc, CallEnd::Failed, CallAnswer::default()),
            CallResponse::Grpc {
                status: grpc::UNAVAILABLE,
                message: vec![]
            }
        );
    }

    #[test]
    fn an_http_answer_keeps_status_and_body() {
        let ok = answer(&[(":status", "200")], b"{}", &[]);
        assert_eq!(
            response(Kind::Http, CallEnd::Answered, ok),
            CallResponse::Http {
                status: Some(200),
                body: b"{}".to_vec()
            }
        );
        assert_eq!(
            response(Kind::Http, CallEnd::Failed, CallAnswer::default()),
            CallResponse::Http {
                status: None,
                body: vec![]
            }
        );
    }
}
