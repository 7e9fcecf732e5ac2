//! `ctxgate_requests`: every request counted once, when it is done, by
//! tier, operation, decision, status class and tenant; and
//! `ctxgate_upstream_latency_ms`, an Envoy histogram of the time from
//! forwarding a request to its response headers, by operation and route
//! (the value of a routing header the tagging stage sets).
//!
//! The counter of a label set is defined the first time the set occurs,
//! and counted in the worker like every other metric (no host call per
//! request). Every dimension is bounded: tenants by [`TenantLabels`],
//! tiers by [`MAX_TIERS`] (first seen, then `other`), operations by the
//! configuration's operation map, decisions and status classes by their
//! enums. So the family has at most
//! `(named tenants + top_tenants + 2) x (MAX_TIERS + 2) x (operations + 1)
//! x 3 x 5` series, and far fewer in practice.

use std::collections::{HashMap, HashSet};

use super::tenants::{OTHER, TenantLabels};
use crate::contract::Established;
use crate::host::Host;
use crate::metrics::{Counter, Histogram, Metrics};
use crate::shared::SharedStore;

/// Distinct tiers labelled per worker; later ones are `other`.
pub const MAX_TIERS: usize = 16;

/// Distinct routes labelled per worker; later ones are `other`.
pub const MAX_ROUTES: usize = 16;

/// Label value of a dimension the request did not have (no identity, no
/// operation matched).
pub const NONE: &str = "none";

/// What the gateway decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Forwarded upstream.
    Allow,
    /// Refused by the rate limiter (429).
    Throttle,
    /// Refused by any other stage.
    Deny,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Throttle => "throttle",
            Decision::Deny => "deny",
        }
    }
}

/// The `operation` label of a request: the operation it matched in the
/// operation map, [`NONE`] if none.
pub fn operation_label(established: Option<&Established>) -> &str {
    established
        .and_then(|e| e.operation.as_ref())
        .map_or(NONE, |o| o.name.as_str())
}

/// The response's status class: `2xx` .. `5xx`, or `none` when the
/// stream ended without one (reset).
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => NONE,
    }
}

/// The interned label values of one dimension.
#[derive(Default)]
struct Values {
    ids: HashMap<String, u16>,
}

impl Values {
    fn id(&mut self, value: &str) -> u16 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = u16::try_from(self.ids.len()).unwrap_or(u16::MAX);
        self.ids.insert(value.to_owned(), id);
        id
    }
}

/// A dimension labelled by value for the first `max` values seen, then
/// `other`; `none` when the request has no value.
struct FirstSeen {
    seen: HashSet<String>,
    max: usize,
}

impl FirstSeen {
    fn new(max: usize) -> FirstSeen {
        FirstSeen {
            seen: HashSet::new(),
            max,
        }
    }

    fn label<'a>(&mut self, value: Option<&'a str>) -> &'a str {
        match value {
            Some(v) if self.seen.contains(v) => v,
            Some(v) if self.seen.len() < self.max => {
                self.seen.insert(v.to_owned());
                v
            }
            Some(_) => OTHER,
            None => NONE,
        }
    }
}

type Key = (u16, u16, u16, Decision, &'static str);

pub struct RequestMetrics {
    tenants: TenantLabels,
    /// Tiers with a label of their own (at most [`MAX_TIERS`]).
    tiers: FirstSeen,
    tier_values: Values,
    operation_values: Values,
    tenant_values: Values,
    counters: HashMap<Key, Counter>,
    /// Routes with a label of their own (at most [`MAX_ROUTES`]).
    routes: FirstSeen,
    route_values: Values,
    latency: HashMap<(u16, u16), Histogram>,
}

impl RequestMetrics {
    pub fn new(tenants: TenantLabels) -> RequestMetrics {
        RequestMetrics {
            tenants,
            tiers: FirstSeen::new(MAX_TIERS),
            tier_values: Values::default(),
            operation_values: Values::default(),
            tenant_values: Values::default(),
            counters: HashMap::new(),
            routes: FirstSeen::new(MAX_ROUTES),
            route_values: Values::default(),
            latency: HashMap::new(),
        }
    }

    /// Counts one finished request. Returns the tenant's label if it has
    /// one of its own (named, or a heavy hitter).
    pub fn count<'a>(
        &mut self,
        established: Option<&'a Established>,
        decision: Decision,
        status: Option<u16>,
        store: &dyn SharedStore,
        metrics: &mut Metrics,
    ) -> Option<&'a str> {
        let caller = established.and_then(|e| e.identity.as_deref());
        let tenant = match caller {
            Some(c) => self.tenants.label(&c.tenant, store),
            None => NONE,
        };
        let tier = self.tiers.label(caller.map(|c| c.tier.as_str()));
        let operation = operation_label(established);
        let class = status_class(status);
        let key = (
            self.tier_values.id(tier),
            self.operation_values.id(operation),
            self.tenant_values.id(tenant),
            decision,
            class,
        );
        let counter = *self.counters.entry(key).or_insert_with(|| {
            metrics.counter(&format!(
                "ctxgate_requests.tier.{}.operation.{}.decision.{}.status_class.{}.tenant.{}",
                label_value(tier),
                label_value(operation),
                decision.name(),
                class,
                label_value(tenant),
            ))
        });
        metrics.inc(counter);
        Some(tenant).filter(|t| *t != OTHER && *t != NONE)
    }

    /// Records how long the upstream took to answer a forwarded request.
    pub fn upstream_latency(
        &mut self,
        host: &mut dyn Host,
        established: Option<&Established>,
        route: Option<&str>,
        ms: u64,
        metrics: &mut Metrics,
    ) {
        let operation = operation_label(established);
        let route = self.routes.label(route);
        let key = (
            self.operation_values.id(operation),
            self.route_values.id(route),
        );
        let histogram = *self.latency.entry(key).or_insert_with(|| {
            metrics.histogram(&format!(
                "ctxgate_upstream_latency_ms.operation.{}.route.{}",
                label_value(operation),
                label_value(route),
            ))
        });
        metrics.record(host, histogram, ms);
    }

    /// Learns the heavy hitters other workers labelled (on every flush).
    pub fn refresh(&mut self, store: &dyn SharedStore) {
        self.tenants.refresh(store);
    }

    /// Label sets counted so far (tests).
    pub fn series(&self) -> usize {
        self.counters.len()
    }
}

/// A label value as one segment of an Envoy stat name: characters other
/// than ASCII letters, digits, `_` and `-` become `_` (a `.` would split
/// the name, and the demo's `stats_tags` read one segment per label).
pub fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    let keep = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if value.chars().all(keep) {
        std::borrow::Cow::Borrowed(value)
    } else {
        std::borrow::Cow::Owned(
            value
                .chars()
                .map(|c| if keep(c) { c } else { '_' })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Caller, MatchedOperation};
    use crate::shared::MemoryStore;

    fn established(tenant: &str, tier: &str, operation: Option<&str>) -> Established {
        Established {
            identity: Some(std::sync::Arc::new(Caller {
                tenant: tenant.into(),
                tier: tier.into(),
                ..Caller::default()
            })),
            operation: operation.map(|name| {
                std::sync::Arc::new(MatchedOperation {
                    name: name.into(),
                    action: "read".into(),
                    context: String::new(),
                    target: None,
                })
            }),
            ..Established::default()
        }
    }

    #[test]
    fn a_flood_of_tenants_and_tiers_stays_bounded() {
        let store = MemoryStore::default();
        let tenants = TenantLabels::new(&["acme".into()], 3, 0.01, "k".into(), &store);
        let mut requests = RequestMetrics::new(tenants);
        let mut metrics = Metrics::default();
        for i in 0..100_000 {
            let e = established(&format!("t{i}"), &format!("tier{}", i % 100), Some("read"));
            requests.count(Some(&e), Decision::Allow, Some(200), &store, &mut metrics);
        }
        let e = established("acme", "tier3", Some("write"));
        requests.count(
            Some(&e),
            Decision::Throttle,
            Some(429),
            &store,
            &mut metrics,
        );
        requests.count(None, Decision::Deny, Some(401), &store, &mut metrics);
        // 16 tiers + other, one operation, one tenant label (other); then
        // acme's and the anonymous request's own.
        assert_eq!(requests.series(), MAX_TIERS + 1 + 2);
        assert_eq!(
            metrics.pending("ctxgate_requests.tier.tier3.operation.write.decision.throttle.status_class.4xx.tenant.acme"),
            1
        );
        assert_eq!(
            metrics.pending("ctxgate_requests.tier.none.operation.none.decision.deny.status_class.4xx.tenant.none"),
            1
        );
        assert_eq!(
            metrics.pending("ctxgate_requests.tier.other.operation.read.decision.allow.status_class.2xx.tenant.other"),
            100_000 - i64::try_from(MAX_TIERS * 1000).unwrap()
        );
    }

    #[test]
    fn label_values_are_one_stat_name_segment() {
        assert_eq!(label_value("acme-eu_1"), "acme-eu_1");
        assert_eq!(label_value("acme.eu/x y"), "acme_eu_x_y");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "none");
    }
}
