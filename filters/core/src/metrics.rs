//! Metrics counted in the module and handed to the proxy on a tick.
//!
//! A host call costs about a microsecond, so a request never makes one per
//! counter: stages count into [`Metrics`] (plain integers), and the worker
//! flushes what changed every `metrics.flush_interval` (default 1 s, see
//! the README). Every metric a stage registers at configure time is
//! defined at the first flush, so dashboards and alerts see zeros rather
//! than missing series; a labelled family defines a label set the first
//! time it occurs. A histogram sample is the exception: an Envoy histogram
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
        });
        self.entries.len() - 1
    }

    pub fn inc(&mut self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn add(&mut self, counter: Counter, n: u64) {
        if let Some(e) = self.entries.get_mut(counter.0) {
            e.delta = e.delta.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn set(&mut self, gauge: Gauge, value: u64) {
        if let Some(e) = self.entries.get_mut(gauge.0) {
            e.value = Some(value);
            e.delta = 0;
        }
    }

    /// Adds `delta` (may be negative) to a gauge that sums what every
    /// worker contributes.
    pub fn add_to_gauge(&mut self, gauge: Gauge, delta: i64) {
        if let Some(e) = self.entries.get_mut(gauge.0) {
            e.delta = e.delta.saturating_add(delta);
        }
    }

    /// Hands everything counted since the last flush to the host.
    pub fn flush(&mut self, host: &mut dyn Host) {
        for e in &mut self.entries {
            if !e.defined {
                e.define(host);
            }
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
