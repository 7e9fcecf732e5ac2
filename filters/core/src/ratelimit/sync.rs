//! Background reports to the RLS: usage admitted locally since the last
//! sync, one report per key, and every earlier report not yet
//! acknowledged (see [`super::report`]).

use super::limiter::{Dirty, LimiterState, RateLimiter};
use super::report::{Report, ReportId};
use super::rls;
use crate::shared::SharedStore;

impl RateLimiter {
    /// Reports to send now: usage admitted locally since the last sync (a
    /// new report per key, unless one for the key is still waiting), and
    /// every earlier report that is still unacknowledged.
    pub fn sync_reports(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        now_ms: u64,
    ) -> Vec<Report> {
        let Some(g) = &self.global else {
            return Vec::new();
        };
        let dirty: Vec<(u64, Dirty)> = state.dirty.drain().collect();
        for (hash, key) in dirty {
            if state.outbox.has_pending_for(hash) {
                // Keep accumulating in the bucket until that one is
                // acknowledged.
                state.dirty.insert(hash, key);
                continue;
            }
            let hits = match self.table_of(key.anonymous).claim_unreported(store, hash) {
                Ok(hits) => hits,
                Err(e) => {
                    state.record_invalid(e);
                    continue;
                }
            };
            if hits > 0 {
                let report = Report {
                    id: state.outbox.next_id(),
                    key_hash: hash,
                    anonymous: key.anonymous,
                    message: rls::encode_request(&g.domain, &key.descriptor, hits, None),
                    descriptor: key.descriptor,
                    hits,
                    also: None,
                    created_ms: now_ms,
                };
                state.outbox.keep(report, false);
            }
        }
        state.outbox.due(now_ms)
    }

    /// A report was answered: it is counted.
    pub fn on_sync_answer(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        report: &Report,
        answer: &rls::RlsAnswer,
        now_ms: u64,
    ) {
        state.outbox.acknowledged(report.id);
        self.learn(state, store, report, answer, now_ms);
    }

    /// A report failed: it is sent again on a later sync.
    pub fn on_sync_failure(&self, state: &mut LimiterState, id: ReportId) {
        state.outbox.failed(id);
    }
}
