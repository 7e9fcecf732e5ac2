//! Global limiting: the question a request puts to the RLS (about its
//! bucket's key, an MCP call's own key, or both), the answer (recorded in
//! each key's global view), and the failure mode when the
//! RLS fails or is late (the report the call carried is kept and sent
//! again under the same id).

use super::config::FailureMode;
use super::decision::{Admitted, DecidedBy};
use super::limiter::{LimiterState, RateLimiter};
use super::refusal::{Refused, rls_unavailable_refusal};
use super::report::Report;
use super::rls;
use super::view::LimitView;
use crate::bucket::GlobalView;
use crate::shared::SharedStore;

/// A question for the RLS, and what to do if it does not answer in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsCall {
    /// The report this call carries (its id goes in the call's metadata).
    pub report: Report,
    pub cluster: String,
    pub timeout_ms: u64,
    pub cost: u64,
    /// What the local bucket decided, used by `local_fallback`.
    pub local: Admitted,
    pub(super) label: String,
    /// When the call carries two descriptors, what the second (an MCP
    /// call's own key) limits, for its refusal (`tools/call
    /// search_context of tenant acme`).
    pub(super) call_label: Option<String>,
    pub(super) failure_mode: FailureMode,
    pub(super) deny_status: u16,
    pub(super) grpc: bool,
    pub(super) head_request: bool,
}

impl RateLimiter {
    /// Applies an RLS answer to a pending request: each key the call
    /// reported learns its own descriptor's answer; either one over its
    /// limit refuses the request.
    pub fn on_rls_answer(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        call: &RlsCall,
        answer: &rls::RlsAnswer,
        now_ms: u64,
    ) -> Result<Admitted, Refused> {
        state.outbox.acknowledged(call.report.id);
        self.learn(state, store, &call.report, answer, now_ms);
        let first = &answer.first;
        if first.over_limit {
            return Err(self.rls_over_limit_refusal(call, &call.label, first));
        }
        if let (Some(second), Some(label)) = (&answer.second, &call.call_label)
            && second.over_limit
        {
            return Err(self.rls_over_limit_refusal(call, label, second));
        }
        Ok(Admitted {
            view: call
                .local
                .view
                .map(|local| local.tighter(limit_view(first))),
            cost: call.cost,
            decided_by: DecidedBy::Rls,
            meter: call.local.meter.clone(),
        })
    }

    /// The RLS failed, or missed its deadline: apply the failure mode. The
    /// report the call carried (this request's cost and the usage sent
    /// along with it) is kept and sent again later under the same id.
    pub fn on_rls_failure(
        &self,
        state: &mut LimiterState,
        call: &RlsCall,
    ) -> Result<Admitted, Refused> {
        state.outbox.keep(call.report.clone(), false);
        match call.failure_mode {
            FailureMode::LocalFallback => Ok(Admitted {
                decided_by: DecidedBy::Fallback(FailureMode::LocalFallback),
                ..call.local.clone()
            }),
            FailureMode::Allow => Ok(Admitted {
                view: None,
                cost: call.cost,
                decided_by: DecidedBy::Fallback(FailureMode::Allow),
                meter: call.local.meter.clone(),
            }),
            FailureMode::Deny => Err(rls_unavailable_refusal(call)),
        }
    }

    /// Records what the RLS said about each key a report carried.
    pub(super) fn learn(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        report: &Report,
        answer: &rls::RlsAnswer,
        now_ms: u64,
    ) {
        self.learn_key(
            state,
            store,
            report.anonymous,
            report.key_hash,
            &answer.first,
            now_ms,
        );
        if let (Some(also), Some(second)) = (&report.also, &answer.second) {
            self.learn_key(state, store, false, also.key_hash, second, now_ms);
        }
    }

    fn learn_key(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        anonymous: bool,
        key_hash: u64,
        answer: &rls::DescriptorAnswer,
        now_ms: u64,
    ) {
        let sync_ms = self.global.as_ref().map_or(1000, |g| g.sync_interval_ms);
        let window_ms = answer.window_seconds.unwrap_or(60).saturating_mul(1000);
        let view = match answer.used() {
            Some(used) => GlobalView {
                used,
                limit: answer.limit.unwrap_or(0),
                reset_ms: now_ms.saturating_add(answer.reset_in_ms.unwrap_or(window_ms)),
                window_ms,
                unreported: 0,
            },
            // The RLS has no limit for this key: local buckets decide, and
            // the question is asked again after a while.
            None => GlobalView {
                used: 0,
                limit: u64::MAX,
                reset_ms: now_ms.saturating_add(sync_ms.saturating_mul(50)),
                window_ms,
                unreported: 0,
            },
        };
        if let Err(e) = self.table_of(anonymous).learn_global(store, key_hash, view) {
            state.record_invalid(e);
        }
    }
}

/// What an RLS answer says about a descriptor's limit, for `x-ratelimit-*`.
pub(super) fn limit_view(answer: &rls::DescriptorAnswer) -> Option<LimitView> {
    let window = answer.window_seconds.unwrap_or(60);
    answer.limit.map(|limit| LimitView {
        limit,
        window_seconds: window,
        remaining: answer.remaining,
        reset_seconds: answer.reset_in_ms.map_or(window, |ms| ms.div_ceil(1000)),
    })
}
