//! Reading Envoy's stats through the admin interface.
//!
//! Metrics a wasm module defines with proxy-wasm `define_metric` show up in
//! Envoy 1.40 as:
//!
//! - admin `/stats`: `wasmcustom.<name as defined>`, e.g. a counter defined
//!   as `ctxgate_test.hits` is `wasmcustom.ctxgate_test.hits`;
//! - admin `/stats/prometheus`: the `wasmcustom.` prefix is dropped and dots
//!   become underscores, without Envoy's usual `envoy_` prefix:
//!   `# TYPE ctxgate_test_hits counter` / `ctxgate_test_hits{} 2`.
//!
//! They are process-wide: every worker's VM increments the same counter, so
//! the value is the total over all workers. A gauge set with `record_metric`
//! is likewise one value. Values are live: admin reads them from the store,
//! there is no flush interval to wait for. Envoy's own request counters are
//! incremented when a stream ends, which can be a moment after the client
//! got its response, hence [`Envoy::wait_for_counter`].

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::envoy::Envoy;

impl Envoy {
    /// All counters and gauges (histograms and text readouts are skipped).
    pub fn stats(&self) -> HashMap<String, u64> {
        metrics_flushed();
        self.stats_query("/stats?format=json")
    }

    /// Counters and gauges whose name matches the RE2 `regex`; cheaper than
    /// [`Envoy::stats`] when polling.
    pub fn stats_matching(&self, regex: &str) -> HashMap<String, u64> {
        metrics_flushed();
        self.stats_query(&format!(
            "/stats?format=json&filter={}",
            percent_encode(regex)
        ))
    }

    /// Value of the counter or gauge `name`, 0 if Envoy has no such stat
    /// (Envoy creates many stats lazily, on first use).
    pub fn counter(&self, name: &str) -> u64 {
        let exact = format!("^{}$", regex_escape(name));
        self.stats_matching(&exact).get(name).copied().unwrap_or(0)
    }

    /// Value of a metric the pipeline defined as `name` (see module docs),
    /// on either engine ([`crate::metric_prefix`]).
    pub fn wasm_metric(&self, name: &str) -> u64 {
        metrics_flushed();
        self.counter(&format!("{}{name}", crate::metric_prefix()))
    }

    /// [`Envoy::wait_for_counter`] for a metric the pipeline defined as
    /// `name`, on either engine.
    pub fn wait_for_metric(&self, name: &str, value: u64) -> u64 {
        self.wait_for_counter(&format!("{}{name}", crate::metric_prefix()), value)
    }

    /// Waits up to 5 s for counter `name` to reach `value`; returns its last
    /// value so the assertion message shows it.
    pub fn wait_for_counter(&self, name: &str, value: u64) -> u64 {
        let mut last = 0;
        crate::eventually(Duration::from_secs(5), || {
            last = self.counter(name);
            last >= value
        });
        last
    }

    /// Connections each of the first `workers` workers accepted so far
    /// (`listener.<addr>.worker_<i>.downstream_cx_total`; the harness binds
    /// the listener to port 0, hence `127.0.0.1_0`).
    pub fn worker_connections(&self, workers: usize) -> Vec<u64> {
        let stats =
            self.stats_matching(r"^listener\.127\.0\.0\.1_0\.worker_[0-9]+\.downstream_cx_total$");
        (0..workers)
            .map(|i| {
                let name = format!("listener.127.0.0.1_0.worker_{i}.downstream_cx_total");
                stats.get(&name).copied().unwrap_or(0)
            })
            .collect()
    }

    /// The Prometheus exposition text (`/stats/prometheus`).
    pub fn prometheus(&self) -> String {
        metrics_flushed();
        self.admin_get("/stats/prometheus")
            .expect_status(200)
            .text()
    }

    /// `/stats/prometheus` with the metric names Prometheus stores: on the
    /// native engine, renamed by the relabelling rule
    /// `observability/native-relabel.yaml` ships for it.
    pub fn scraped(&self) -> String {
        let text = self.prometheus();
        match crate::FilterEngine::current() {
            crate::FilterEngine::Wasm => text,
            crate::FilterEngine::Native => crate::engine::native_relabel(&text),
        }
    }

    fn stats_query(&self, path: &str) -> HashMap<String, u64> {
        let body = self.admin_get(path).expect_status(200).json();
        let mut stats = HashMap::new();
        for entry in body
            .get("stats")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // Histograms come as {"histograms": ...} without a name.
            let name = entry.get("name").and_then(Value::as_str);
            let value = entry.get("value").and_then(Value::as_u64);
            if let (Some(name), Some(value)) = (name, value) {
                stats.insert(name.to_owned(), value);
            }
        }
        stats
    }
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Waits until every worker has flushed what its ctxgate pipeline counted
/// for the last exchange: the pipeline counts in the module and hands
/// metrics to Envoy on a tick, not per request. Five flush intervals of
/// the e2e configuration ([`crate::config::FLUSH_INTERVAL_MS`]) after the
/// last response leave room for a late timer on a busy machine.
fn metrics_flushed() {
    let settle = std::time::Duration::from_millis(5 * crate::config::FLUSH_INTERVAL_MS);
    if let Some(last) = crate::http::last_exchange() {
        let wait = (last + settle).saturating_duration_since(std::time::Instant::now());
        std::thread::sleep(wait);
    }
}
