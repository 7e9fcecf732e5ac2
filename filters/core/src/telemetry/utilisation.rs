//! How much of its rate limits each labelled tenant uses.
//!
//! `ctxgate_ratelimit_utilisation_permille{tenant, limit}`: the units a
//! tenant was admitted over the limit's last window, in thousandths of
//! the limit. Each worker counts what it admitted in a sliding window of
//! [`SLOTS`] slots and adds its share to one gauge on every metrics
//! flush, so the gauge is the proxy's total; across gateways sharing a
//! global limit, Prometheus sums the instances.
//!
//! `ctxgate_ratelimit_burst_permille{tenant}`: how full the tightest
//! bucket was at the tenant's latest admission, in thousandths of its
//! capacity (the burst used; with `response_headers` on).
//!
//! Only tenants with a label of their own are tracked (named ones and
//! heavy hitters), so both families are bounded like `ctxgate_requests`.

use std::collections::HashMap;

use crate::metrics::{Gauge, Metrics};
use crate::ratelimit::config::{Counts, LimitConfig};
use crate::telemetry::requests::label_value;

/// Slots of a sliding window.
pub const SLOTS: u64 = 10;

/// Units admitted in the last window, in [`SLOTS`] slots.
#[derive(Debug, Clone)]
struct Window {
    slot_ms: u64,
    /// Slot number (time / slot_ms) of `sums[newest % SLOTS]`.
    newest: u64,
    /// When the first units were added.
    since_ms: Option<u64>,
    sums: [u64; SLOTS as usize],
}

impl Window {
    fn new(window_ms: u64) -> Window {
        Window {
            slot_ms: (window_ms / SLOTS).max(1),
            newest: 0,
            since_ms: None,
            sums: [0; SLOTS as usize],
        }
    }

    /// Moves to `now_ms`, emptying the slots that fell out.
    fn advance(&mut self, now_ms: u64) {
        let slot = now_ms / self.slot_ms;
        if slot <= self.newest {
            return;
        }
        let gone = (slot - self.newest).min(SLOTS);
        for n in 1..=gone {
            if let Some(s) = self.sums.get_mut(((self.newest + n) % SLOTS) as usize) {
                *s = 0;
            }
        }
        self.newest = slot;
    }

    fn add(&mut self, now_ms: u64, units: u64) {
        self.since_ms.get_or_insert(now_ms);
        self.advance(now_ms);
        if let Some(s) = self.sums.get_mut((self.newest % SLOTS) as usize) {
            *s = s.saturating_add(units);
        }
    }

    /// Units over the last window. Once the window lies wholly after the
    /// first units, the slots cover it less what is still to come of the
    /// current slot, so their sum is scaled up to a whole window (a
    /// steady rate reads the same at any moment).
    fn total(&mut self, now_ms: u64) -> u64 {
        self.advance(now_ms);
        let sum: u64 = self.sums.iter().sum();
        let window = self.slot_ms.saturating_mul(SLOTS);
        if self
            .since_ms
            .is_none_or(|since| now_ms.saturating_sub(since) < window)
        {
            return sum;
        }
        let covered = self
            .slot_ms
            .saturating_mul(SLOTS - 1)
            .saturating_add(now_ms % self.slot_ms + 1);
        u64::try_from(u128::from(sum) * u128::from(window) / u128::from(covered.max(1)))
            .unwrap_or(u64::MAX)
    }
}

struct Tracked {
    name: String,
    limit: u64,
    window: Window,
    gauge: Gauge,
    /// What this worker last added to the gauge.
    contributed: u64,
}

#[derive(Default)]
pub struct Utilisation {
    /// tenant label -> its limits.
    limits: HashMap<String, Vec<Tracked>>,
    /// tenant label -> (gauge, latest burst use, set since the last flush).
    burst: HashMap<String, (Gauge, u64, bool)>,
}

impl Utilisation {
    /// Counts an admitted request of a labelled tenant against each of
    /// its limits.
    pub fn admitted(
        &mut self,
        tenant: &str,
        limits: &[LimitConfig],
        cost: u64,
        burst_permille: Option<u64>,
        now_ms: u64,
        metrics: &mut Metrics,
    ) {
        for l in limits {
            let units = match l.counts {
                Counts::Cost => cost,
                Counts::Requests => 1,
            };
            // No allocation once a tenant's limits are known.
            if !self.limits.contains_key(tenant) {
                self.limits.insert(tenant.to_owned(), Vec::new());
            }
            let Some(tracked) = self.limits.get_mut(tenant) else {
                continue;
            };
            let index = match tracked.iter().position(|t| t.name == l.name) {
                Some(i) => i,
                None => {
                    tracked.push(Tracked {
                        name: l.name.clone(),
                        limit: l.limit,
                        window: Window::new(l.window_seconds.saturating_mul(1000)),
                        gauge: metrics.gauge(&format!(
                            "ctxgate_ratelimit_utilisation_permille.tenant.{}.limit.{}",
                            label_value(tenant),
                            label_value(&l.name)
                        )),
                        contributed: 0,
                    });
                    tracked.len() - 1
                }
            };
            if let Some(t) = tracked.get_mut(index) {
                t.limit = l.limit;
                t.window.add(now_ms, units);
            }
        }
        if let Some(permille) = burst_permille {
            let entry = self.burst.entry(tenant.to_owned()).or_insert_with(|| {
                let gauge = metrics.gauge(&format!(
                    "ctxgate_ratelimit_burst_permille.tenant.{}",
                    label_value(tenant)
                ));
                (gauge, 0, false)
            });
            entry.1 = permille;
            entry.2 = true;
        }
    }

    /// Hands this worker's share to the gauges (on every metrics flush).
    pub fn publish(&mut self, now_ms: u64, metrics: &mut Metrics) {
        for t in self.limits.values_mut().flatten() {
            let permille = t
                .window
                .total(now_ms)
                .saturating_mul(1000)
                .checked_div(t.limit)
                .unwrap_or(0);
            let delta = i128::from(permille) - i128::from(t.contributed);
            if delta != 0 {
                metrics.add_to_gauge(t.gauge, i64::try_from(delta).unwrap_or(0));
                t.contributed = permille;
            }
        }
        for (gauge, permille, fresh) in self.burst.values_mut() {
            if std::mem::take(fresh) {
                metrics.set(*gauge, *permille);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, limit: u64, window_seconds: u64) -> LimitConfig {
        serde_json::from_value(serde_json::json!({
            "name": name, "limit": limit, "window_seconds": window_seconds
        }))
        .unwrap()
    }

    #[test]
    fn a_window_forgets_what_fell_out_of_it() {
        let mut w = Window::new(60_000);
        w.add(0, 10);
        w.add(30_000, 5);
        assert_eq!(w.total(59_999), 15);
        // The first slot fell out; 54 s of the window are covered.
        assert_eq!(w.total(60_000), 5 * 60 / 54);
        assert_eq!(w.total(200_000), 0);
        // A steady 1 unit per second reads 60 whenever it is read.
        let mut w = Window::new(60_000);
        for s in 0..300 {
            w.add(s * 1000, 1);
            if s >= 60 {
                let total = w.total(s * 1000 + 500);
                assert!((58..=61).contains(&total), "{total} at {s} s");
            }
        }
    }

    #[test]
    fn each_worker_adds_its_share_of_the_limit() {
        let (mut metrics, mut u) = (Metrics::default(), Utilisation::default());
        let limits = [limit("per_minute", 100, 60)];
        for i in 0..45 {
            u.admitted("acme", &limits, 2, Some(900), i * 1000, &mut metrics);
        }
        u.publish(45_000, &mut metrics);
        let name = "ctxgate_ratelimit_utilisation_permille.tenant.acme.limit.per_minute";
        assert_eq!(metrics.pending(name), 900, "90 of 100 units");
        // A minute and a half later nothing is left: the share goes back.
        u.publish(135_000, &mut metrics);
        assert_eq!(metrics.pending(name), 0);
    }
}
