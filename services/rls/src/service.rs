//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as ProtoUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as ProtoRateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

use crate::config::{Action, Limits, Unit};
use crate::counters::{Counters, StorageError};

/// The gRPC service: the loaded limits and their counters.
pub struct RateLimiter {
    limits: Arc<Limits>,
    counters: Counters,
    /// Whether the last storage call succeeded: storage failures are logged
    /// once when they start and once when they end, not once per request.
    storage_ok: AtomicBool,
}

impl RateLimiter {
    pub fn new(limits: Arc<Limits>, counters: Counters) -> RateLimiter {
        RateLimiter {
            limits,
            counters,
            storage_ok: AtomicBool::new(true),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decides one request at time `now` (Unix seconds).
    pub async fn decide(
        &self,
        request: &RateLimitRequest,
        now: u64,
    ) -> Result<RateLimitResponse, Status> {
        let domain = self.limits.domain(&request.domain);
        if domain.is_none() {
            tracing::debug!(domain = %request.domain, "unknown domain: every descriptor is OK");
        }
        let request_cost = u64::from(request.hits_addend.max(1));
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(request.descriptors.len());
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
            let status = match rule.map(|r| (r, &r.action)) {
                None => DescriptorStatus {
                    code: Code::Ok.into(),
                    ..Default::default()
                },
                Some((_, Action::Unlimited)) => DescriptorStatus {
                    code: Code::Ok.into(),
                    limit_remaining: u32::MAX,
                    ..Default::default()
                },
                Some((rule, Action::Limit(limit))) => {
                    let window = limit.unit.seconds();
                    let hit = self
                        .counters
                        .hit(rule, &entries, now / window, cost)
                        .await
                        .map_err(|e| self.storage_failed(&e))?;
                    self.storage_recovered();
                    let over = hit.over && !limit.shadow_mode;
                    if hit.over {
                        tracing::debug!(
                            limit = %rule.full_key,
                            shadow_mode = limit.shadow_mode,
                            descriptor = ?entries,
                            "over limit"
                        );
                    }
                    if over {
                        overall = Code::OverLimit;
                    }
                    DescriptorStatus {
                        code: if over { Code::OverLimit } else { Code::Ok }.into(),
                        current_limit: Some(ProtoRateLimit {
                            name: limit.name.clone(),
                            requests_per_unit: limit.requests_per_unit,
                            unit: proto_unit(limit.unit).into(),
                        }),
                        limit_remaining: u32::try_from(hit.remaining).unwrap_or(u32::MAX),
                        duration_until_reset: Some(ProtoDuration {
                            seconds: i64::try_from(window - now % window).unwrap_or(i64::MAX),
                            nanos: 0,
                        }),
                        quota: None,
                    }
                }
            };
            statuses.push(status);
        }
        Ok(RateLimitResponse {
            overall_code: overall.into(),
            statuses,
            ..Default::default()
        })
    }

    fn storage_failed(&self, error: &StorageError) -> Status {
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

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.decide(request.get_ref(), unix_now())
            .await
            .map(Response::new)
    }
}
