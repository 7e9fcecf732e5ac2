//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as ProtoUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as ProtoRateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::config::{Limits, Policy, RateLimit, Rule, Unit};
use crate::counters::{Counters, Hit, StorageError, counter_key};
use crate::metrics::{Answer, Metrics};
use crate::report::{self, ReportId};

/// The most one descriptor adds to a counter in one request. Limits are
/// u32, so such a cost is over any limit on its own: the answers are the
/// same as with the full cost, and a 64-bit counter cannot overflow.
const MAX_COST: u64 = 1 << 32;

/// The gRPC service: the loaded limits and their counters.
pub struct RlsService {
    limits: Arc<Limits>,
    counters: Counters,
    /// What this process answered, for Prometheus (see [`crate::metrics`]).
    metrics: Arc<Metrics>,
    /// Whether the last storage call succeeded: storage failures are logged
    /// once when they start and once when they end, not once per request.
    storage_ok: AtomicBool,
}

/// What becomes of one request descriptor.
enum Planned<'r> {
    /// Decided without counting.
    Answered(DescriptorStatus),
    /// Limited: its status waits for its counter (the next of the request's
    /// hits).
    Limited {
        rule: &'r Rule,
        limit: &'r RateLimit,
        entries: Vec<(&'r str, &'r str)>,
    },
}

impl RlsService {
    pub fn new(limits: Arc<Limits>, counters: Counters) -> RlsService {
        RlsService {
            limits,
            counters,
            metrics: Arc::new(Metrics::new()),
            storage_ok: AtomicBool::new(true),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// This service's counters: clone the `Arc` to serve them
    /// ([`crate::server::serve_metrics`]) once the service is moved into
    /// the gRPC server.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decides one request at time `now` (Unix seconds). With a `report`
    /// id, its hits are added only if that id was not applied before;
    /// otherwise the answer comes from the counters as they are.
    ///
    /// Every descriptor is checked and matched first, so a refused request
    /// counts nothing; then all its hits are one storage call.
    ///
    /// Counts the hits added, and the report, in [`Self::metrics`]; the call
    /// itself is counted by [`RateLimitService::should_rate_limit`].
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
        report: Option<ReportId>,
        now: u64,
    ) -> Result<RateLimitResponse, Status> {
        let domain = self.limits.domain(&request.domain);
        if domain.is_none() {
            tracing::debug!(domain = %request.domain, "unknown domain: every descriptor is OK");
        }
        let request_cost = u64::from(request.hits_addend.max(1));
        let mut planned = Vec::with_capacity(request.descriptors.len());
        let mut hits = Vec::new();
        for descriptor in &request.descriptors {
            if descriptor.is_negative_hits {
                return Err(Status::invalid_argument(
                    "ctxgate-rls does not support is_negative_hits (refunds)",
                ));
            }
            if descriptor.limit.is_some() {
                return Err(Status::invalid_argument(
                    "ctxgate-rls does not support per-descriptor limit overrides (RateLimitDescriptor.limit)",
                ));
            }
            let entries: Vec<(&str, &str)> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            // A per-descriptor hits_addend wins, and may be 0 (check only);
            // the request's 0 means 1, as in envoyproxy/ratelimit.
            let cost = descriptor
                .hits_addend
                .as_ref()
                .map_or(request_cost, |h| h.value);
            let rule = domain.and_then(|d| d.find(entries.iter().copied()));
            planned.push(match rule.map(|r| (r, &r.policy)) {
                None => Planned::Answered(DescriptorStatus {
                    code: Code::Ok.into(),
                    ..Default::default()
                }),
                Some((_, Policy::Unlimited)) => Planned::Answered(DescriptorStatus {
                    code: Code::Ok.into(),
                    limit_remaining: u32::MAX,
                    ..Default::default()
                }),
                Some((rule, Policy::Limit(limit))) => {
                    let unit = limit.unit.seconds();
                    hits.push(Hit {
                        key: counter_key(rule, &entries, now / unit),
                        cost: cost.min(MAX_COST),
                        ttl: unit.saturating_mul(2),
                    });
                    Planned::Limited {
                        rule,
                        limit,
                        entries,
                    }
                }
            });
        }

        // Only a request that adds something needs its id marked; one that
        // adds nothing is "applied" every time, harmlessly.
        let reported = report.is_some();
        let report = report.filter(|_| hits.iter().any(|hit| hit.cost > 0));
        let mut values = Vec::new().into_iter();
        let mut duplicate = false;
        let mut added = 0;
        if !hits.is_empty() {
            let counted = self
                .counters
                .apply(report, &hits, now)
                .await
                .map_err(|e| self.storage_failed(&e))?;
            self.storage_recovered();
            duplicate = counted.duplicate;
            if duplicate && let Some(id) = report {
                tracing::debug!(report = %id, "report already applied: nothing added");
            }
            if !duplicate {
                added = hits.iter().map(|hit| hit.cost).fold(0, u64::saturating_add);
                self.metrics.hits_added(added);
            }
            values = counted.values.into_iter();
        }
        if reported {
            self.metrics.report(duplicate);
        }

        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(planned.len());
        for plan in planned {
            let (rule, limit, entries) = match plan {
                Planned::Answered(status) => {
                    statuses.push(status);
                    continue;
                }
                Planned::Limited {
                    rule,
                    limit,
                    entries,
                } => (rule, limit, entries),
            };
            let Some(value) = values.next() else {
                return Err(self.storage_failed(&StorageError::Failed(
                    "fewer counters than descriptors came back".into(),
                )));
            };
            let limit_value = u64::from(limit.requests_per_unit);
            let over_limit = value > limit_value;
            if over_limit {
                tracing::debug!(
                    limit = %rule.full_key,
                    shadow_mode = limit.shadow_mode,
                    descriptor = ?entries,
                    "over limit"
                );
            }
            let over = over_limit && !limit.shadow_mode;
            if over {
                overall = Code::OverLimit;
            }
            let window = limit.unit.seconds();
            statuses.push(DescriptorStatus {
                code: if over { Code::OverLimit } else { Code::Ok }.into(),
                current_limit: Some(ProtoRateLimit {
                    name: limit.name.clone(),
                    requests_per_unit: limit.requests_per_unit,
                    unit: proto_unit(limit.unit).into(),
                }),
                limit_remaining: u32::try_from(limit_value.saturating_sub(value))
                    .unwrap_or(u32::MAX),
                duration_until_reset: Some(ProtoDuration {
                    seconds: i64::try_from(window - now % window).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                quota: None,
            });
        }
        if overall == Code::OverLimit {
            self.metrics.hits_refused(added);
        }
        Ok(RateLimitResponse {
            overall_code: overall.into(),
            statuses,
            ..Default::default()
        })
    }

    /// One ShouldRateLimit call: its report id, its deadline, its decision.
    async fn answer(
        &self,
        request: &Request<RateLimitRequest>,
    ) -> Result<RateLimitResponse, Status> {
        let report = report_id(request.metadata())?;
        if let Some(Deadline(at)) = request.extensions().get::<Deadline>()
            && Instant::now() >= *at
        {
            tracing::debug!("the caller's deadline passed before counting began: not counted");
            return Err(Status::deadline_exceeded(
                "ctxgate-rls: the deadline passed before counting began; nothing was counted",
            ));
        }
        self.decide(request.get_ref(), report, unix_now()).await
    }

    fn storage_failed(&self, error: &StorageError) -> Status {
        self.metrics.storage_error();
        if self.storage_ok.swap(false, Ordering::Relaxed) {
            tracing::error!(
                "{error}; answering UNAVAILABLE (clients apply their failure mode) until it recovers"
            );
        } else {
            tracing::debug!("{error}");
        }
        Status::unavailable(format!("ctxgate-rls: {error}"))
    }

    fn storage_recovered(&self) {
        if !self.storage_ok.swap(true, Ordering::Relaxed) {
            tracing::info!("counter storage answers again: limiting resumed");
        }
    }
}

fn proto_unit(unit: Unit) -> ProtoUnit {
    match unit {
        Unit::Second => ProtoUnit::Second,
        Unit::Minute => ProtoUnit::Minute,
        Unit::Hour => ProtoUnit::Hour,
        Unit::Day => ProtoUnit::Day,
        Unit::Week => ProtoUnit::Week,
        Unit::Month => ProtoUnit::Month,
        Unit::Year => ProtoUnit::Year,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The request's report id (see [`crate::report`]); `None` without the
/// header. A malformed one is refused, so that nothing is counted under an
/// id the client did not mean.
fn report_id(metadata: &MetadataMap) -> Result<Option<ReportId>, Status> {
    let mut values = metadata.get_all(report::HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |why: String| {
        Status::invalid_argument(format!("ctxgate-rls: bad {} header: {why}", report::HEADER))
    };
    if values.next().is_some() {
        return Err(refuse("sent more than once".into()));
    }
    let text = value
        .to_str()
        .map_err(|_| refuse("not visible ASCII".into()))?;
    ReportId::parse(text).map(Some).ok_or_else(|| {
        refuse(format!(
            "expected <16 lowercase hex digits>-<decimal sequence number>, got {:?}",
            text.get(..64).unwrap_or(text)
        ))
    })
}

/// When the caller stops waiting: the `grpc-timeout` it sent, counted from
/// when tonic received the call. Put in the request's extensions by
/// [`stamp_deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// A tonic interceptor (it runs when the call arrives, before the message is
/// read) that records the caller's [`Deadline`].
///
/// tonic 0.14 already enforces `grpc-timeout` on the server: when it
/// elapses, the handler is dropped (an in-flight Redis call with it) and the
/// caller gets CANCELLED. But tonic polls the handler before its timer, so a
/// handler first polled after the deadline (a busy runtime after a Redis
/// hang) would still send its script to Redis. The handler checks this
/// stamp first and starts no storage call once the deadline has passed.
pub fn stamp_deadline(mut request: Request<()>) -> Result<Request<()>, Status> {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout);
    if let Some(at) = timeout.and_then(|timeout| Instant::now().checked_add(timeout)) {
        request.extensions_mut().insert(Deadline(at));
    }
    Ok(request)
}

/// `grpc-timeout`: at most 8 digits and a unit (`H M S m u n`).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = (text.get(..split)?, text.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        // Dropped unanswered (tonic gave up on this handler), it counts as
        // an error.
        let call = self.metrics.call();
        let result = self.answer(&request).await;
        call.answered(match &result {
            Ok(response) if response.overall_code == i32::from(Code::OverLimit) => {
                Answer::OverLimit
            }
            Ok(_) => Answer::Ok,
            Err(_) => Answer::Error,
        });
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Domain;
    use crate::counters::StorageConfig;
    use crate::metrics::Snapshot;
    use crate::report::Dedupe;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::UInt64Value;

    /// acme: 3 a day; any other tenant: 100 a day.
    async fn service() -> RlsService {
        let text = "domain: d\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: day, requests_per_unit: 100}\n  - key: tenant\n    value: acme\n    rate_limit: {unit: day, requests_per_unit: 3}\n";
        let mut limits = Limits::default();
        limits
            .add(Domain::parse(std::path::Path::new("d.yaml"), text).unwrap())
            .unwrap();
        let storage = StorageConfig::Memory { max_counters: 100 };
        let counters = Counters::open(&storage, Dedupe::default()).await.unwrap();
        RlsService::new(Arc::new(limits), counters)
    }

    fn request(domain: &str, tenants: &[&str], hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors: tenants
                .iter()
                .map(|tenant| RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "tenant".into(),
                        value: (*tenant).into(),
                    }],
                    ..Default::default()
                })
                .collect(),
            hits_addend,
        }
    }

    fn id(seq: u64) -> Option<ReportId> {
        Some(ReportId { reporter: 1, seq })
    }

    #[tokio::test]
    async fn counts_the_hits_it_adds_and_refuses() {
        let rls = service().await;
        let d = |r: RateLimitRequest| {
            let rls = &rls;
            async move { rls.decide(&r, None, 86_400 * 20_000 + 5).await }
        };
        d(request("d", &["acme"], 2)).await.unwrap();
        let over = d(request("d", &["acme"], 2)).await.unwrap();
        assert_eq!(over.overall_code, i32::from(Code::OverLimit));
        // Each matched limit adds the cost: 2 × 5.
        d(request("d", &["x", "y"], 5)).await.unwrap();
        // Nothing added: no limit matched, or a cost of 0.
        d(request("elsewhere", &["acme"], 7)).await.unwrap();
        let mut check = request("d", &["x"], 9);
        if let Some(descriptor) = check.descriptors.first_mut() {
            descriptor.hits_addend = Some(UInt64Value { value: 0 });
        }
        d(check).await.unwrap();
        // Refused before counting.
        let mut refund = request("d", &["x"], 1);
        if let Some(descriptor) = refund.descriptors.first_mut() {
            descriptor.is_negative_hits = true;
        }
        d(refund).await.unwrap_err();

        assert_eq!(
            rls.metrics().snapshot(),
            Snapshot {
                hits: 2 + 2 + 10,
                hits_refused: 2,
                ..Snapshot::default()
            }
        );
    }

    #[tokio::test]
    async fn counts_reports_applied_and_duplicate() {
        let rls = service().await;
        let now = 86_400 * 20_000 + 5;
        rls.decide(&request("d", &["x"], 4), id(1), now)
            .await
            .unwrap();
        rls.decide(&request("d", &["x"], 4), id(1), now)
            .await
            .unwrap();
        rls.decide(&request("d", &["x"], 4), id(2), now)
            .await
            .unwrap();
        // Adds nothing, so is not marked: applied each time.
        rls.decide(&request("elsewhere", &["x"], 4), id(3), now)
            .await
            .unwrap();
        // Over the limit and a duplicate: nothing added, nothing refused.
        rls.decide(&request("d", &["acme"], 5), id(4), now)
            .await
            .unwrap();
        let again = rls
            .decide(&request("d", &["acme"], 5), id(4), now)
            .await
            .unwrap();
        assert_eq!(again.overall_code, i32::from(Code::OverLimit));
        assert_eq!(
            rls.metrics().snapshot(),
            Snapshot {
                hits: 4 + 4 + 5,
                hits_refused: 5,
                reports_applied: 4,
                reports_duplicate: 2,
                ..Snapshot::default()
            }
        );
    }

    #[tokio::test]
    async fn counts_every_call_by_its_answer() {
        let rls = service().await;
        let call = |r: RateLimitRequest| rls.should_rate_limit(Request::new(r));
        call(request("d", &["acme"], 3)).await.unwrap();
        call(request("d", &["acme"], 1)).await.unwrap();
        call(request("elsewhere", &[], 1)).await.unwrap();
        let mut bad_id = Request::new(request("d", &["x"], 1));
        bad_id
            .metadata_mut()
            .insert(report::HEADER, "not-an-id".parse().unwrap());
        rls.should_rate_limit(bad_id).await.unwrap_err();
        let mut late = Request::new(request("d", &["x"], 1));
        late.extensions_mut().insert(Deadline(Instant::now()));
        rls.should_rate_limit(late).await.unwrap_err();
        let snapshot = rls.metrics().snapshot();
        assert_eq!(
            (
                snapshot.requests_ok,
                snapshot.requests_over_limit,
                snapshot.requests_error
            ),
            (2, 1, 2),
            "{snapshot:?}"
        );
    }

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("20m"), Some(Duration::from_millis(20)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "20", "20x", "-1m", "123456789m", "1.5S", "20 m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stamps_the_deadline_on_arrival() {
        let mut request = Request::new(());
        request.set_timeout(Duration::from_millis(250));
        let before = Instant::now();
        let request = stamp_deadline(request).unwrap();
        let Deadline(at) = *request.extensions().get::<Deadline>().unwrap();
        assert!(at >= before + Duration::from_millis(250), "{at:?}");
        assert!(at <= Instant::now() + Duration::from_millis(250), "{at:?}");
        let request = stamp_deadline(Request::new(())).unwrap();
        assert!(request.extensions().get::<Deadline>().is_none());
    }

    #[test]
    fn reads_the_report_header() {
        let mut metadata = MetadataMap::new();
        assert_eq!(report_id(&metadata).unwrap(), None);
        metadata.insert(report::HEADER, "00000000000000ff-3".parse().unwrap());
        assert_eq!(
            report_id(&metadata).unwrap(),
            Some(ReportId {
                reporter: 255,
                seq: 3
            })
        );
        metadata.append(report::HEADER, "00000000000000ff-4".parse().unwrap());
        let refused = report_id(&metadata).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("x-ctxgate-report"),
            "{refused:?}"
        );
    }
}
