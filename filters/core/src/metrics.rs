//! Metrics counted in the module and handed to the proxy on a tick.
//!
//! A host call costs about a microsecond, so a request never makes one per
//! counter: stages count into [`Metrics`] (plain integers), and the worker
//! flushes what changed every `metrics.flush_interval` (default 1 s, see
//! the README). Every metric a stage registers at configure time is
//! defined at the first flush, so dashboards and alerts see zeros rather
//! than missing series; a labelled family defines a label set the first
//! time it occurs. A flush visits only the metrics changed since the last
//! one (the native engine flushes after every callback, and a labelled
//! family may hold thousands of series). A histogram sample is the exception: an Envoy histogram
//! takes one value per host call, so [`Metrics::record`] makes one.

use crate::host::{Host, MetricId, MetricKind};

/// A counter's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(usize);

/// A gauge's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge(usize);

/// A histogram's handle. A sample is handed to the proxy when it is
/// recorded (one host call): an Envoy histogram takes one value per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Histogram(usize);

#[derive(Debug)]
struct Entry {
    name: String,
    kind: MetricKind,
    /// Defined with the host; `None` until the first flush, or if the host
    /// refused (then the metric is dropped, never retried per flush).
    id: Option<MetricId>,
    defined: bool,
    /// Added since the last flush.
    delta: i64,
    /// A gauge value set since the last flush.
    value: Option<u64>,
    /// Listed in [`Metrics::changed`].
    changed: bool,
}

impl Entry {
    fn define(&mut self, host: &mut dyn Host) {
        self.defined = true;
        self.id = host.define_metric(self.kind, &self.name);
        if self.id.is_none() {
            log::warn!("ctxgate: cannot define metric {}", self.name);
        }
    }
}

/// Every metric of one worker.
#[derive(Debug, Default)]
pub struct Metrics {
    entries: Vec<Entry>,
    /// Entries counted or set since the last flush, each once.
    changed: Vec<usize>,
    /// Entries from here on were registered after the last flush.
    registered: usize,
}

impl Metrics {
    pub fn counter(&mut self, name: &str) -> Counter {
        Counter(self.register(name, MetricKind::Counter))
    }

    pub fn gauge(&mut self, name: &str) -> Gauge {
        Gauge(self.register(name, MetricKind::Gauge))
    }

    pub fn histogram(&mut self, name: &str) -> Histogram {
        Histogram(self.register(name, MetricKind::Histogram))
    }

    /// Records one sample (defining the histogram first if this is its
    /// first use).
    pub fn record(&mut self, host: &mut dyn Host, histogram: Histogram, value: u64) {
        let Some(e) = self.entries.get_mut(histogram.0) else {
            return;
        };
        if !e.defined {
            e.define(host);
        }
        if let Some(id) = e.id {
            host.record_metric(id, value);
        }
    }

    fn register(&mut self, name: &str, kind: MetricKind) -> usize {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.name == name && e.kind == kind)
        {
            return i;
        }
        self.entries.push(Entry {
            name: name.to_owned(),
            kind,
            id: None,
            defined: false,
            delta: 0,
            value: None,
            changed: false,
        });
        self.entries.len() - 1
    }

    pub fn inc(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn add(&mut self, counter: Counter, n: u64) {
        if let Some(e) = self.change(counter.0) {
            e.delta = e.delta.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn set(&mut self, gauge: Gauge, value: u64) {
        if let Some(e) = self.change(gauge.0) {
            e.value = Some(value);
            e.delta = 0;
        }
    }

    /// Adds `delta` (may be negative) to a gauge that sums what every
    /// worker contributes.
    pub fn add_to_gauge(&mut self, gauge: Gauge, delta: i64) {
        if let Some(e) = self.change(gauge.0) {
            e.delta = e.delta.saturating_add(delta);
        }
    }

    /// The entry at `index`, listed as changed.
    fn change(&mut self, index: usize) -> Option<&mut Entry> {
        let e = self.entries.get_mut(index)?;
        if !e.changed {
            e.changed = true;
            self.changed.push(index);
        }
        Some(e)
    }

    /// Hands everything counted since the last flush to the host, defining
    /// the metrics registered since.
    pub fn flush(&mut self, host: &mut dyn Host) {
        for e in self.entries.iter_mut().skip(self.registered) {
            if !e.defined {
                e.define(host);
            }
        }
        self.registered = self.entries.len();
        for index in self.changed.drain(..) {
            let Some(e) = self.entries.get_mut(index) else {
                continue;
            };
            e.changed = false;
            let Some(id) = e.id else { continue };
            if let Some(value) = e.value.take() {
                host.set_metric(id, value);
            }
            if e.delta != 0 {
                host.add_metric(id, std::mem::take(&mut e.delta));
            }
        }
    }

    /// Counted but not yet flushed (tests).
    pub fn pending(&self, name: &str) -> i64 {
        self.entries
            .iter()
            .filter(|e| e.name == name)
            .map(|e| e.delta)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockHost;

    #[test]
    fn a_flush_defines_every_metric_and_hands_over_only_what_changed() {
        let mut host = MockHost::new(0);
        let mut metrics = Metrics::default();
        let allowed = metrics.counter("allowed");
        let denied = metrics.counter("denied");
        let level = metrics.gauge("level");
        metrics.flush(&mut host);
        assert_eq!(host.metric_calls, 3, "three definitions, no values");
        assert_eq!(host.metric("denied"), 0);

        metrics.inc(allowed);
        metrics.add(allowed, 2);
        metrics.set(level, 7);
        host.metric_calls = 0;
        metrics.flush(&mut host);
        assert_eq!(host.metric_calls, 2, "one add, one set");
        assert_eq!((host.metric("allowed"), host.metric("level")), (3, 7));

        host.metric_calls = 0;
        metrics.flush(&mut host);
        assert_eq!(host.metric_calls, 0, "nothing changed");

        // Registered between flushes: defined at the next one, with its count.
        let late = metrics.counter("late");
        metrics.inc(late);
        metrics.add_to_gauge(level, 0);
        metrics.inc(denied);
        metrics.flush(&mut host);
        assert_eq!(host.metric_calls, 3, "one definition, two adds");
        assert_eq!(
            (
                host.metric("late"),
                host.metric("denied"),
                host.metric("level")
            ),
            (1, 1, 7)
        );
        assert_eq!(metrics.pending("allowed"), 0);
    }
}
