//! What the gateway tells operators beyond each stage's own counters:
//! every request counted by tier, operation, decision, status class and
//! tenant ([`requests`]), with tenant labels bounded ([`tenants`]), and
//! the rate-limit use of each labelled tenant ([`utilisation`]), and where
//! a sample of requests spends its time ([`timing`]).

pub mod requests;
pub mod tenants;
pub mod timing;
pub mod utilisation;

use crate::host::MetricKind;

/// A metric family whose series carry label values first seen at run
/// time: its series are named `<family>.<label>.<value>...`, with these
/// labels in this order. An engine that can only define metrics while it
/// loads (Envoy's dynamic modules) defines each family once, with these
/// label names, and maps every series name onto it.
#[derive(Debug, Clone, Copy)]
pub struct LabelledFamily {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
}

/// Every labelled family the pipeline defines.
pub const LABELLED_FAMILIES: [LabelledFamily; 5] = [
    LabelledFamily {
        name: "ctxgate_requests",
        kind: MetricKind::Counter,
        labels: &["tier", "operation", "decision", "status_class", "tenant"],
    },
    LabelledFamily {
        name: "ctxgate_upstream_latency_ms",
        kind: MetricKind::Histogram,
        labels: &["operation", "route"],
    },
    LabelledFamily {
        name: "ctxgate_ratelimit_utilisation_permille",
        kind: MetricKind::Gauge,
        labels: &["tenant", "limit"],
    },
    LabelledFamily {
        name: "ctxgate_ratelimit_burst_permille",
        kind: MetricKind::Gauge,
        labels: &["tenant"],
    },
    LabelledFamily {
        name: "ctxgate_context_bytes",
        kind: MetricKind::Histogram,
        labels: &["operation", "direction"],
    },
];

impl LabelledFamily {
    /// The family and label values of series `name`, if it is one.
    pub fn of(kind: MetricKind, name: &str) -> Option<(&'static LabelledFamily, Vec<&str>)> {
        let mut segments = name.split('.');
        let family_name = segments.next()?;
        let family = LABELLED_FAMILIES
            .iter()
            .find(|f| f.name == family_name && f.kind == kind)?;
        let mut values = Vec::with_capacity(family.labels.len());
        for label in family.labels {
            if segments.next()? != *label {
                return None;
            }
            values.push(segments.next()?);
        }
        segments.next().is_none().then_some((family, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_name_maps_onto_its_family_and_nothing_else_does() {
        let (family, values) = LabelledFamily::of(
            MetricKind::Counter,
            "ctxgate_requests.tier.standard.operation.read.decision.allow.status_class.2xx.tenant.acme",
        )
        .unwrap();
        assert_eq!(family.name, "ctxgate_requests");
        assert_eq!(values, ["standard", "read", "allow", "2xx", "acme"]);
        let (_, values) = LabelledFamily::of(
            MetricKind::Histogram,
            "ctxgate_upstream_latency_ms.operation.read.route.none",
        )
        .unwrap();
        assert_eq!(values, ["read", "none"]);
        for (kind, name) in [
            (MetricKind::Counter, "ctxgate_requests"),
            (
                MetricKind::Gauge,
                "ctxgate_requests.tier.a.operation.b.decision.c.status_class.d.tenant.e",
            ),
            (
                MetricKind::Counter,
                "ctxgate_requests.tier.a.operation.b.decision.c.status_class.d",
            ),
            (
                MetricKind::Counter,
                "ctxgate_requests.tier.a.operation.b.decision.c.status_class.d.tenant.e.x",
            ),
            (MetricKind::Counter, "ctxgate_auth.allowed"),
            (
                MetricKind::Gauge,
                "ctxgate_ratelimit_burst_permille.limit.x",
            ),
        ] {
            assert!(LabelledFamily::of(kind, name).is_none(), "{name}");
        }
    }
}
