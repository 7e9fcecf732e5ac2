//! Usage reports to the RLS, counted once and only once.
//!
//! Every RLS call that carries hits is a *report* with an id: this worker's
//! random 64-bit reporter id and a sequence number, sent as the gRPC
//! metadata `x-ctxgate-report: <16 hex digits>-<seq>`. ctxgate-rls applies
//! each id at most once (the id is marked in the same atomic step that adds
//! the hits). So a report whose call failed, or missed the filter's
//! deadline, is kept here and sent again, unchanged and with the same id,
//! until the RLS answers: if the first attempt was applied after all (the
//! answer was lost, or Redis ran it late after a hang), the retry is a
//! no-op; if it was not, the retry counts it. Every admission is reported
//! eventually, and no report is applied twice.
//!
//! Why ids and not deadlines: a deadline can stop the RLS from *starting*
//! late work, but a call that fails at the gateway may still have been
//! applied (the increment can land a microsecond before the deadline and
//! the answer after it, or sit queued in a hung Redis). The gateway can
//! never know, so only an idempotent retry makes "give up and try again"
//! exact.
//!
//! The outbox is bounded: a report is retried for `report_retry_seconds`
//! (the RLS keeps ids longer than that) and at most `max_pending_reports`
//! wait; what is dropped is counted.

use std::collections::BTreeMap;

/// The gRPC metadata carrying a report id.
pub const REPORT_HEADER: &str = "x-ctxgate-report";

/// A report's id: reporter (one per worker VM) and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportId {
    pub reporter: u64,
    pub seq: u64,
}

impl ReportId {
    /// The `x-ctxgate-report` value.
    pub fn header_value(&self) -> String {
        format!("{:016x}-{}", self.reporter, self.seq)
    }
}

/// Hits for one descriptor, waiting to be (re)sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: ReportId,
    pub key_hash: u64,
    /// The key lives in the anonymous table.
    pub anonymous: bool,
    pub descriptor: Vec<(String, String)>,
    pub hits: u64,
    /// A second key reported in the same call (an MCP call's, in the
    /// tenants table), its descriptor second in the message.
    pub also: Option<ReportKey>,
    /// The serialized `RateLimitRequest`, sent as is on every attempt.
    pub message: Vec<u8>,
    /// When the report was first created, unix ms.
    pub created_ms: u64,
}

/// A key a report carries hits for, besides its first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportKey {
    pub key_hash: u64,
    pub descriptor: Vec<(String, String)>,
    pub hits: u64,
}

impl Report {
    /// How many descriptors the message carries.
    pub fn descriptors(&self) -> usize {
        1 + usize::from(self.also.is_some())
    }

    /// The hits of every key it carries.
    pub fn total_hits(&self) -> u64 {
        self.hits
            .saturating_add(self.also.as_ref().map_or(0, |k| k.hits))
    }
}

struct Pending {
    report: Report,
    in_flight: bool,
}

/// What the outbox dropped, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Retried for longer than `report_retry_seconds`.
    pub expired: u64,
    /// Pushed out by newer reports when the outbox was full.
    pub overflow: u64,
    /// Hits those reports carried.
    pub hits: u64,
}

/// This worker's reports that the RLS has not acknowledged.
pub struct Outbox {
    reporter: u64,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    max_pending: usize,
    max_age_ms: u64,
    pub dropped: Dropped,
}

impl Outbox {
    /// `reporter` must be random per worker VM (two workers, or a VM and
    /// its restarted successor, must never share one).
    pub fn new(reporter: u64, max_pending: usize, max_age_ms: u64) -> Outbox {
        Outbox {
            reporter,
            next_seq: 1,
            pending: BTreeMap::new(),
            max_pending: max_pending.max(1),
            max_age_ms,
            dropped: Dropped::default(),
        }
    }

    /// A fresh id for a new report.
    pub fn next_id(&mut self) -> ReportId {
        let id = ReportId {
            reporter: self.reporter,
            seq: self.next_seq,
        };
        self.next_seq = self.next_seq.saturating_add(1);
        id
    }

    /// Keeps a report until the RLS acknowledges it. `in_flight`: a call
    /// carrying it is under way right now.
    pub fn keep(&mut self, report: Report, in_flight: bool) {
        while self.pending.len() >= self.max_pending {
            let Some((_, oldest)) = self.pending.pop_first() else {
                break;
            };
            self.dropped.overflow += 1;
            self.dropped.hits = self.dropped.hits.saturating_add(oldest.report.total_hits());
        }
        self.pending
            .insert(report.id.seq, Pending { report, in_flight });
    }

    /// Is a report for this key waiting? (New usage of the key then stays
    /// unreported in its bucket until it is acknowledged, so that one key
    /// has at most one background report outstanding.)
    pub fn has_pending_for(&self, key_hash: u64) -> bool {
        self.pending.values().any(|p| {
            p.report.key_hash == key_hash
                || p.report
                    .also
                    .as_ref()
                    .is_some_and(|k| k.key_hash == key_hash)
        })
    }

    /// Drops reports older than the retry window, then returns the ones to
    /// send now (those not already in flight), marking them in flight.
    pub fn due(&mut self, now_ms: u64) -> Vec<Report> {
        let max_age = self.max_age_ms;
        let mut expired = Dropped::default();
        self.pending.retain(|_, p| {
            let keep = now_ms < p.report.created_ms.saturating_add(max_age);
            if !keep {
                expired.expired += 1;
                expired.hits = expired.hits.saturating_add(p.report.total_hits());
            }
            keep
        });
        self.dropped.expired += expired.expired;
        self.dropped.hits = self.dropped.hits.saturating_add(expired.hits);
        self.pending
            .values_mut()
            .filter(|p| !p.in_flight)
            .map(|p| {
                p.in_flight = true;
                p.report.clone()
            })
            .collect()
    }

    /// The RLS answered the report: it is counted.
    pub fn acknowledged(&mut self, id: ReportId) {
        if id.reporter == self.reporter {
            self.pending.remove(&id.seq);
        }
    }

    /// The call carrying the report failed: send it again later.
    pub fn failed(&mut self, id: ReportId) {
        if let Some(p) = self.pending.get_mut(&id.seq)
            && id.reporter == self.reporter
        {
            p.in_flight = false;
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outbox: &mut Outbox, key_hash: u64, hits: u64, now: u64) -> Report {
        Report {
            id: outbox.next_id(),
            key_hash,
            anonymous: false,
            descriptor: vec![("tenant".into(), "acme".into())],
            hits,
            also: None,
            message: vec![1, 2, 3],
            created_ms: now,
        }
    }

    #[test]
    fn ids_are_unique_and_rendered_for_the_rls() {
        let mut outbox = Outbox::new(0xabc, 10, 1000);
        let a = outbox.next_id();
        let b = outbox.next_id();
        assert_ne!(a, b);
        assert_eq!(a.header_value(), "0000000000000abc-1");
        assert_eq!(b.header_value(), "0000000000000abc-2");
    }

    #[test]
    fn a_failed_report_is_resent_unchanged_until_acknowledged() {
        let mut outbox = Outbox::new(1, 10, 60_000);
        let r = report(&mut outbox, 7, 5, 0);
        outbox.keep(r.clone(), true);
        assert!(
            outbox.due(10).is_empty(),
            "in flight: not sent twice at once"
        );
        outbox.failed(r.id);
        assert_eq!(outbox.due(20), vec![r.clone()]);
        outbox.failed(r.id);
        assert_eq!(outbox.due(30), vec![r.clone()], "same id, same hits");
        assert!(outbox.has_pending_for(7));
        outbox.acknowledged(r.id);
        assert!(outbox.is_empty());
        assert!(outbox.due(40).is_empty());
    }

    #[test]
    fn the_outbox_is_bounded_in_size_and_age() {
        let mut outbox = Outbox::new(1, 2, 1_000);
        for i in 0..3 {
            let r = report(&mut outbox, i, 10, 0);
            outbox.keep(r, false);
        }
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.dropped.overflow, 1);
        assert_eq!(outbox.due(999).len(), 2);
        assert!(outbox.due(1_000).is_empty());
        assert_eq!(outbox.dropped.expired, 2);
        assert_eq!(outbox.dropped.hits, 30);
    }

    #[test]
    fn foreign_ids_are_ignored() {
        let mut outbox = Outbox::new(1, 10, 1_000);
        let r = report(&mut outbox, 7, 5, 0);
        outbox.keep(r.clone(), false);
        outbox.acknowledged(ReportId {
            reporter: 2,
            seq: r.id.seq,
        });
        assert_eq!(outbox.len(), 1);
    }
}
