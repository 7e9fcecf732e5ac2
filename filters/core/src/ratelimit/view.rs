//! What a client is told about its limit (`x-ratelimit-*`): the limit
//! with the fewest units left among the local limits and the known global
//! one.

use super::limiter::RateLimiter;
use super::limits::Limits;
use crate::bucket::{GlobalView, Tightest};

/// What a client is told about its limit in `x-ratelimit-*`: the limit
/// with the fewest units left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitView {
    pub limit: u64,
    pub window_seconds: u64,
    pub remaining: u64,
    pub reset_seconds: u64,
}

impl LimitView {
    /// The tighter of two views: fewer units left (on a tie, the smaller
    /// limit). Taking the minimum of every limit's remaining units keeps
    /// the countdown monotonic while a client drains its budget, whichever
    /// limit (local or global) happens to be the tightest.
    pub(super) fn tighter(self, other: Option<LimitView>) -> LimitView {
        match other {
            Some(o) if (o.remaining, o.limit) < (self.remaining, self.limit) => o,
            _ => self,
        }
    }

    /// The IETF RateLimit header fields, draft 03 (as Envoy's own
    /// rate-limit filters send them): `x-ratelimit-limit: 600, 600;w=60`,
    /// `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds).
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut number = itoa::Buffer::new();
        let limit = number.format(self.limit);
        let mut policy = String::with_capacity(2 * limit.len() + 16);
        policy.push_str(limit);
        policy.push_str(", ");
        policy.push_str(limit);
        policy.push_str(";w=");
        policy.push_str(number.format(self.window_seconds));
        vec![
            ("x-ratelimit-limit".into(), policy),
            (
                "x-ratelimit-remaining".into(),
                number.format(self.remaining).to_owned(),
            ),
            (
                "x-ratelimit-reset".into(),
                number
                    .format(self.reset_seconds.min(u64::from(u32::MAX)))
                    .to_owned(),
            ),
        ]
    }

    pub(super) fn of_global(view: &GlobalView, now_ms: u64) -> Option<LimitView> {
        let remaining = view.remaining(now_ms)?;
        let reset = view.reset_ms.saturating_sub(now_ms).div_ceil(1000);
        Some(LimitView {
            limit: view.limit,
            window_seconds: view.window_ms.div_ceil(1000).max(1),
            remaining,
            reset_seconds: reset,
        })
    }
}

impl RateLimiter {
    /// The local view of the tightest limit, combined with the known
    /// global one.
    pub(super) fn view(
        &self,
        limits: &Limits<'_>,
        tightest: &Tightest,
        global: Option<&GlobalView>,
        now_ms: u64,
    ) -> Option<LimitView> {
        if !self.response_headers {
            return None;
        }
        let window = limits
            .configs
            .get(tightest.index)
            .map_or(60, |l| l.window_seconds);
        let local = LimitView {
            limit: tightest.capacity,
            window_seconds: window,
            remaining: tightest.remaining,
            reset_seconds: tightest.reset_seconds,
        };
        Some(local.tighter(global.and_then(|g| LimitView::of_global(g, now_ms))))
    }
}
