//! The Envoy Rate Limit Service messages (`envoy.service.ratelimit.v3`),
//! as sent over `dispatch_grpc_call`.
//!
//! Only the fields ctxgate reads or writes are declared; their numbers and
//! types are those of the official protos (`envoy/service/ratelimit/v3/
//! rls.proto`, `envoy/extensions/common/ratelimit/v3/ratelimit.proto`), so
//! any standard RLS (envoyproxy/ratelimit, Limitador, ctxgate-rls) can
//! answer. Protobuf ignores undeclared fields on decode.

use prost::Message;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DescriptorEntry>,
    /// This descriptor's hits, instead of the request's `hits_addend`.
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

/// `google.protobuf.UInt64Value`.
#[derive(Clone, PartialEq, Message)]
pub struct UInt64Value {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    pub unit: i32,
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

/// Seconds in an RLS `RateLimit.Unit`.
pub fn unit_seconds(unit: i32) -> Option<u64> {
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3600),
        4 => Some(86_400),
        5 => Some(30 * 86_400),
        6 => Some(365 * 86_400),
        7 => Some(7 * 86_400),
        _ => None,
    }
}

/// Descriptor entries, as `(key, value)` pairs in order.
pub type Entries = Vec<(String, String)>;

/// Builds the serialized request for a bucket's descriptor and `hits`;
/// with `call`, a second descriptor (an MCP call's) counting its own hits.
pub fn encode_request(
    domain: &str,
    entries: &[(String, String)],
    hits: u64,
    call: Option<(&[(String, String)], u64)>,
) -> Vec<u8> {
    let descriptor = |entries: &[(String, String)], hits: Option<u64>| RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| DescriptorEntry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
    };
    let mut descriptors = Vec::with_capacity(2);
    match call {
        None => descriptors.push(descriptor(entries, None)),
        Some((call, call_hits)) => {
            descriptors.push(descriptor(entries, Some(hits)));
            descriptors.push(descriptor(call, Some(call_hits)));
        }
    }
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: u32::try_from(hits).unwrap_or(u32::MAX),
    }
    .encode_to_vec()
}

/// What ctxgate takes from an RLS answer: one [`DescriptorAnswer`] per
/// descriptor sent (at most two: a bucket's, and an MCP call's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlsAnswer {
    pub first: DescriptorAnswer,
    /// The second descriptor's, when two were sent.
    pub second: Option<DescriptorAnswer>,
}

/// The RLS's word on one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorAnswer {
    pub over_limit: bool,
    /// The limit that applied, if the RLS has one for this descriptor.
    pub limit: Option<u64>,
    /// The limit's window, seconds.
    pub window_seconds: Option<u64>,
    pub remaining: u64,
    /// Milliseconds until the RLS window resets.
    pub reset_in_ms: Option<u64>,
}

impl DescriptorAnswer {
    /// The RLS count after this request, if it can be known.
    pub fn used(&self) -> Option<u64> {
        self.limit.map(|l| {
            if self.over_limit {
                l
            } else {
                l.saturating_sub(self.remaining)
            }
        })
    }

    fn of(status: &DescriptorStatus) -> DescriptorAnswer {
        let limit = status.current_limit.as_ref();
        DescriptorAnswer {
            over_limit: status.code == CODE_OVER_LIMIT,
            limit: limit.map(|l| u64::from(l.requests_per_unit)),
            window_seconds: limit.and_then(|l| unit_seconds(l.unit)),
            remaining: u64::from(status.limit_remaining),
            reset_in_ms: status.duration_until_reset.as_ref().map(|d| {
                let seconds = u64::try_from(d.seconds).unwrap_or(0);
                let nanos = u64::try_from(d.nanos).unwrap_or(0);
                seconds
                    .saturating_mul(1000)
                    .saturating_add(nanos / 1_000_000)
            }),
        }
    }
}

/// Parses a serialized `RateLimitResponse` to a request of `sent`
/// descriptors (1 or 2). An unparseable answer or an `UNKNOWN` code is an
/// error, handled like an unreachable RLS. A descriptor without a status
/// takes the overall code, so an answer over the limit that marks no
/// descriptor refuses.
pub fn decode_response(bytes: &[u8], sent: usize) -> Result<RlsAnswer, String> {
    let response =
        RateLimitResponse::decode(bytes).map_err(|e| format!("undecodable RLS response: {e}"))?;
    let overall = match response.overall_code {
        CODE_OK => false,
        CODE_OVER_LIMIT => true,
        other => return Err(format!("RLS answered with code {other}")),
    };
    let answer = |i: usize| {
        response.statuses.get(i).map_or(
            DescriptorAnswer {
                over_limit: overall,
                ..DescriptorAnswer::default()
            },
            DescriptorAnswer::of,
        )
    };
    let mut first = answer(0);
    let second = (sent > 1).then(|| answer(1));
    // Over the limit overall with every status saying otherwise: a
    // malformed answer, refused rather than trusted.
    if overall && !first.over_limit && !second.is_some_and(|s| s.over_limit) {
        first.over_limit = true;
    }
    Ok(RlsAnswer { first, second })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_domain_descriptor_and_hits() {
        let bytes = encode_request("ctxgate", &[("tenant".into(), "acme".into())], 10, None);
        let request = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(request.domain, "ctxgate");
        assert_eq!(request.hits_addend, 10);
        assert_eq!(request.descriptors.len(), 1);
        assert_eq!(request.descriptors[0].hits_addend, None);
        assert_eq!(
            request.descriptors[0].entries[0],
            DescriptorEntry {
                key: "tenant".into(),
                value: "acme".into()
            }
        );
    }

    #[test]
    fn an_mcp_call_adds_its_descriptor_with_its_own_hits() {
        let bucket = [("tenant".to_owned(), "acme".to_owned())];
        let call = [
            ("tenant".to_owned(), "acme".to_owned()),
            ("mcp_method".to_owned(), "tools/call".to_owned()),
            ("mcp_tool".to_owned(), "search_context".to_owned()),
        ];
        // The bucket's descriptor carries the usage claimed along with
        // this call (12); the call's only its own cost (5).
        let bytes = encode_request("ctxgate", &bucket, 12, Some((&call, 5)));
        let request = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        let hits: Vec<Option<u64>> = request
            .descriptors
            .iter()
            .map(|d| d.hits_addend.as_ref().map(|h| h.value))
            .collect();
        assert_eq!(hits, [Some(12), Some(5)]);
        assert_eq!(request.descriptors[1].entries.len(), 3);
        assert_eq!(request.descriptors[1].entries[2].value, "search_context");
    }

    #[test]
    fn a_call_over_its_limit_is_told_apart_from_the_bucket() {
        let status = |code, limit| DescriptorStatus {
            code,
            current_limit: Some(RateLimit {
                requests_per_unit: limit,
                unit: 1,
                name: String::new(),
            }),
            limit_remaining: 0,
            duration_until_reset: None,
        };
        let answer = |statuses| {
            decode_response(
                &RateLimitResponse {
                    overall_code: CODE_OVER_LIMIT,
                    statuses,
                }
                .encode_to_vec(),
                2,
            )
            .unwrap()
        };
        // The tool's limit (5/s) refused, the tenant's (1000/s) did not:
        // the bucket learns nothing false.
        let a = answer(vec![status(CODE_OK, 1000), status(CODE_OVER_LIMIT, 5)]);
        assert!(!a.first.over_limit);
        assert_eq!(a.first.limit, Some(1000));
        let second = a.second.unwrap();
        assert!(second.over_limit);
        assert_eq!(second.limit, Some(5));
        // Over, with no status: both are over.
        let a = answer(vec![]);
        assert!(a.first.over_limit && a.second.unwrap().over_limit);
        // Over, with both statuses OK: malformed, so the first is over.
        let a = answer(vec![status(CODE_OK, 1000), status(CODE_OK, 5)]);
        assert!(a.first.over_limit && !a.second.unwrap().over_limit);
    }

    #[test]
    fn answers_are_read() {
        let response = RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![DescriptorStatus {
                code: CODE_OVER_LIMIT,
                current_limit: Some(RateLimit {
                    requests_per_unit: 100,
                    unit: 2,
                    name: "t".into(),
                }),
                limit_remaining: 0,
                duration_until_reset: Some(ProtoDuration {
                    seconds: 12,
                    nanos: 500_000_000,
                }),
            }],
        };
        let answer = decode_response(&response.encode_to_vec(), 1).unwrap();
        assert_eq!(answer.second, None);
        let answer = answer.first;
        assert!(answer.over_limit);
        assert_eq!(
            (answer.limit, answer.window_seconds, answer.reset_in_ms),
            (Some(100), Some(60), Some(12_500))
        );
        assert_eq!(answer.used(), Some(100));
        assert!(decode_response(b"\xff\xff", 1).is_err());
        assert!(
            decode_response(
                &RateLimitResponse {
                    overall_code: 0,
                    statuses: vec![]
                }
                .encode_to_vec(),
                1
            )
            .is_err()
        );
    }
}
