//! Which limits apply to a caller: the token's `rate_limits` claim when
//! allowed, else the tenant's override, else its tier (anonymous clients:
//! the anonymous tier), scaled by the adaptive multiplier.

use std::borrow::Cow;

use super::config::{Counts, LimitConfig};
use super::limiter::RateLimiter;
use crate::bucket::{LimitSpec, MILLI, limit_id};
use crate::contract::Caller;

pub(super) struct Limits<'a> {
    pub(super) specs: Vec<LimitSpec>,
    pub(super) configs: Cow<'a, [LimitConfig]>,
}

impl RateLimiter {
    pub(super) fn limits(&self, identity: Option<&Caller>, multiplier: f64) -> Limits<'_> {
        let configs = self.limit_configs(identity);
        let specs = configs
            .iter()
            .map(|l| {
                let capacity = l.burst.unwrap_or(l.limit);
                let scaled = |v: u64| ((v as f64) * multiplier).round().max(1.0) as u64;
                LimitSpec {
                    id: limit_id(&l.name),
                    capacity: scaled(capacity.saturating_mul(MILLI)),
                    refill: scaled(l.limit.saturating_mul(MILLI)),
                    period_ms: l.window_seconds.saturating_mul(1000),
                    counts_cost: l.counts == Counts::Cost,
                }
            })
            .collect();
        Limits { specs, configs }
    }

    /// The limits that apply to a caller (its tier's, or its token's).
    pub fn limit_configs(&self, identity: Option<&Caller>) -> Cow<'_, [LimitConfig]> {
        let Some(identity) = identity else {
            return self.tier(&self.anonymous.tier);
        };
        if self.use_token_limits
            && let Some(claims) = &identity.rate_limits
        {
            let cap = |v: u64| v.clamp(1, self.max_token_limit);
            let mut limits = Vec::new();
            if let Some(rpm) = claims.requests_per_minute {
                limits.push(LimitConfig {
                    name: "requests_per_minute".into(),
                    limit: cap(rpm),
                    window_seconds: 60,
                    burst: None,
                    counts: Counts::Requests,
                });
            }
            if let Some(per_hour) = claims.context_operations_per_hour {
                limits.push(LimitConfig {
                    name: "context_operations_per_hour".into(),
                    limit: cap(per_hour),
                    window_seconds: 3600,
                    burst: None,
                    counts: Counts::Cost,
                });
            }
            if !limits.is_empty() {
                return Cow::Owned(limits);
            }
        }
        if let Some(tenant) = self.tenants.get(&identity.tenant) {
            if let Some(limits) = &tenant.limits {
                return Cow::Borrowed(limits);
            }
            if let Some(tier) = &tenant.tier {
                return self.tier(tier);
            }
        }
        self.tier(&identity.tier)
    }

    fn tier(&self, name: &str) -> Cow<'_, [LimitConfig]> {
        let limits = self
            .tiers
            .get(name)
            .or_else(|| self.tiers.get(&self.default_tier));
        Cow::Borrowed(limits.map_or(&[][..], Vec::as_slice))
    }
}
