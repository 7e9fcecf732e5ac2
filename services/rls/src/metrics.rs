//! The service's own counters, and their Prometheus text exposition.
//!
//! Every series is declared here, in [`FAMILIES`] order, so an operator can
//! read each name and what it counts without reading the service. They are
//! process-lifetime counters (they start at 0 and only grow; a restart
//! resets them, which Prometheus's `rate()` handles), kept in atomics: the
//! request path never takes a lock to count.
//!
//! | series | counts |
//! |---|---|
//! | `ctxgate_rls_requests_total{code="ok"}` | ShouldRateLimit calls answered `overall_code` OK |
//! | `ctxgate_rls_requests_total{code="over_limit"}` | calls answered OVER_LIMIT |
//! | `ctxgate_rls_requests_total{code="error"}` | calls that ended with a gRPC error status, or were abandoned unanswered |
//! | `ctxgate_rls_hits_total` | hits added to counters |
//! | `ctxgate_rls_hits_refused_total` | of those, hits of calls answered OVER_LIMIT |
//! | `ctxgate_rls_reports_total{outcome="applied"}` | calls with an `x-ctxgate-report` id applied |
//! | `ctxgate_rls_reports_total{outcome="duplicate"}` | calls with an id already applied (nothing added) |
//! | `ctxgate_rls_storage_errors_total` | failed counter-storage calls |
//!
//! The server ([`crate::server::serve_metrics`]) answers `GET /metrics` with
//! [`Snapshot::render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `content-type` of [`Snapshot::render`]: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// One metric family: its name and the `# HELP` text an operator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

pub const REQUESTS: Family = Family {
    name: "ctxgate_rls_requests_total",
    help: "ShouldRateLimit calls, by outcome: ok and over_limit by the answer's overall_code, \
           error for any gRPC error status (bad request, storage failure, deadline passed) \
           and for calls abandoned unanswered.",
};
pub const HITS: Family = Family {
    name: "ctxgate_rls_hits_total",
    help: "Hits added to rate-limit counters: each request's cost summed over the limits it \
           matched. Duplicate reports and unmatched descriptors add nothing.",
};
pub const HITS_REFUSED: Family = Family {
    name: "ctxgate_rls_hits_refused_total",
    help: "Hits added by calls answered OVER_LIMIT (included in ctxgate_rls_hits_total).",
};
pub const REPORTS: Family = Family {
    name: "ctxgate_rls_reports_total",
    help: "Calls carrying an x-ctxgate-report id, answered: applied (first time) or \
           duplicate (already applied within the dedupe horizon: nothing added).",
};
pub const STORAGE_ERRORS: Family = Family {
    name: "ctxgate_rls_storage_errors_total",
    help: "Counter-storage failures (Redis down, erroring or slower than the timeout); \
           each one answered UNAVAILABLE.",
};

/// Every family, in exposition order.
pub const FAMILIES: [Family; 5] = [REQUESTS, HITS, HITS_REFUSED, REPORTS, STORAGE_ERRORS];

/// How a ShouldRateLimit call ended: the `code` label of
/// `ctxgate_rls_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    OverLimit,
    Error,
}

/// The live counters, shared by the gRPC service and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    requests_ok: AtomicU64,
    requests_over_limit: AtomicU64,
    requests_error: AtomicU64,
    hits: AtomicU64,
    hits_refused: AtomicU64,
    reports_applied: AtomicU64,
    reports_duplicate: AtomicU64,
    storage_errors: AtomicU64,
}

/// The counters at one moment (each read on its own: not one atomic cut
/// across them, which counters scraped at intervals do not need).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests_ok: u64,
    pub requests_over_limit: u64,
    pub requests_error: u64,
    pub hits: u64,
    pub hits_refused: u64,
    pub reports_applied: u64,
    pub reports_duplicate: u64,
    pub storage_errors: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Starts counting one ShouldRateLimit call. Counted as an error if the
    /// [`Call`] is dropped before [`Call::answered`]: tonic drops a handler
    /// whose caller's `grpc-timeout` elapsed or who went away.
    pub fn call(&self) -> Call<'_> {
        Call {
            metrics: self,
            answered: false,
        }
    }

    /// `hits` were added to counters.
    pub fn hits_added(&self, hits: u64) {
        if hits > 0 {
            add(&self.hits, hits);
        }
    }

    /// A call that added `hits` was answered OVER_LIMIT.
    pub fn hits_refused(&self, hits: u64) {
        if hits > 0 {
            add(&self.hits_refused, hits);
        }
    }

    /// A call carrying a report id was counted: a `duplicate` of one
    /// already applied, or applied now.
    pub fn report(&self, duplicate: bool) {
        add(
            if duplicate {
                &self.reports_duplicate
            } else {
                &self.reports_applied
            },
            1,
        );
    }

    /// A counter-storage call failed.
    pub fn storage_error(&self) {
        add(&self.storage_errors, 1);
    }

    pub fn snapshot(&self) -> Snapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Snapshot {
            requests_ok: read(&self.requests_ok),
            requests_over_limit: read(&self.requests_over_limit),
            requests_error: read(&self.requests_error),
            hits: read(&self.hits),
            hits_refused: read(&self.hits_refused),
            reports_applied: read(&self.reports_applied),
            reports_duplicate: read(&self.reports_duplicate),
            storage_errors: read(&self.storage_errors),
        }
    }

    fn answered(&self, answer: Answer) {
        add(
            match answer {
                Answer::Ok => &self.requests_ok,
                Answer::OverLimit => &self.requests_over_limit,
                Answer::Error => &self.requests_error,
            },
            1,
        );
    }
}

/// One ShouldRateLimit call in progress (see [`Metrics::call`]).
#[must_use = "a call dropped unanswered counts as an error"]
#[derive(Debug)]
pub struct Call<'m> {
    metrics: &'m Metrics,
    answered: bool,
}

impl Call<'_> {
    /// Counts the call as answered with `answer`.
    pub fn answered(mut self, answer: Answer) {
        self.answered = true;
        self.metrics.answered(answer);
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.answered(Answer::Error);
        }
    }
}

impl Snapshot {
    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]):
    /// `# HELP` and `# TYPE` for every family, and every series, labelled
    /// ones included, even at 0.
    pub fn render(&self) -> String {
        let families: [(Family, &[(&str, u64)]); 5] = [
            (
                REQUESTS,
                &[
                    (r#"{code="ok"}"#, self.requests_ok),
                    (r#"{code="over_limit"}"#, self.requests_over_limit),
                    (r#"{code="error"}"#, self.requests_error),
                ],
            ),
            (HITS, &[("", self.hits)]),
            (HITS_REFUSED, &[("", self.hits_refused)]),
            (
                REPORTS,
                &[
                    (r#"{outcome="applied"}"#, self.reports_applied),
                    (r#"{outcome="duplicate"}"#, self.reports_duplicate),
                ],
            ),
            (STORAGE_ERRORS, &[("", self.storage_errors)]),
        ];
        let mut out = String::with_capacity(2048);
        for (family, series) in families {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} counter", family.name);
            for (labels, value) in series {
                let _ = writeln!(out, "{}{labels} {value}", family.name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_help_and_type() {
        let snapshot = Snapshot {
            requests_ok: 1,
            requests_over_limit: 2,
            requests_error: 3,
            hits: 40,
            hits_refused: 5,
            reports_applied: 6,
            reports_duplicate: 7,
            storage_errors: 8,
        };
        let text = snapshot.render();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                r#"ctxgate_rls_requests_total{code="ok"} 1"#,
                r#"ctxgate_rls_requests_total{code="over_limit"} 2"#,
                r#"ctxgate_rls_requests_total{code="error"} 3"#,
                "ctxgate_rls_hits_total 40",
                "ctxgate_rls_hits_refused_total 5",
                r#"ctxgate_rls_reports_total{outcome="applied"} 6"#,
                r#"ctxgate_rls_reports_total{outcome="duplicate"} 7"#,
                "ctxgate_rls_storage_errors_total 8",
            ]
        );
        for family in FAMILIES {
            let help = format!("# HELP {} ", family.name);
            let kind = format!("# TYPE {} counter\n", family.name);
            let at = text.find(&help).unwrap();
            assert!(text[at..].contains(&kind), "{text}");
            // HELP and TYPE come before the family's first sample.
            let first = text.find(&format!("\n{}", family.name)).unwrap();
            assert!(at < first && text.find(&kind).unwrap() < first, "{text}");
        }
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        assert_eq!(typed, FAMILIES.map(|f| f.name), "in FAMILIES order");
        assert!(text.ends_with('\n'));
    }

    /// The exposition format: a HELP text escapes only `\` and newlines;
    /// ours have neither, and names are `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[test]
    fn families_are_valid_exposition() {
        for family in FAMILIES {
            assert!(!family.help.contains(['\\', '\n']), "{family:?}");
            assert!(family.help.len() > 20, "{family:?}");
            assert!(family.name.starts_with("ctxgate_rls_"), "{family:?}");
            assert!(family.name.ends_with("_total"), "counters: {family:?}");
            assert!(
                family
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c == b'_'),
                "{family:?}"
            );
        }
    }

    #[test]
    fn every_series_is_present_at_zero() {
        let text = Metrics::new().snapshot().render();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 8, "{text}");
        assert!(samples.iter().all(|s| s.ends_with(" 0")), "{text}");
    }

    #[test]
    fn counts_calls_by_answer() {
        let metrics = Metrics::new();
        metrics.call().answered(Answer::Ok);
        metrics.call().answered(Answer::Ok);
        metrics.call().answered(Answer::OverLimit);
        metrics.call().answered(Answer::Error);
        // Dropped unanswered: tonic gave up on the handler.
        drop(metrics.call());
        let snapshot = metrics.snapshot();
        assert_eq!(
            (
                snapshot.requests_ok,
                snapshot.requests_over_limit,
                snapshot.requests_error
            ),
            (2, 1, 2)
        );
    }

    #[test]
    fn counts_hits_reports_and_storage_errors() {
        let metrics = Metrics::new();
        metrics.hits_added(5);
        metrics.hits_added(0);
        metrics.hits_added(u64::from(u32::MAX));
        metrics.hits_refused(3);
        metrics.report(false);
        metrics.report(true);
        metrics.report(true);
        metrics.storage_error();
        assert_eq!(
            metrics.snapshot(),
            Snapshot {
                hits: 5 + u64::from(u32::MAX),
                hits_refused: 3,
                reports_applied: 1,
                reports_duplicate: 2,
                storage_errors: 1,
                ..Snapshot::default()
            }
        );
    }

    #[test]
    fn counts_from_many_threads() {
        let metrics = Metrics::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        metrics.call().answered(Answer::Ok);
                        metrics.hits_added(2);
                    }
                });
            }
        });
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.requests_ok, snapshot.hits), (4000, 8000));
    }
}
