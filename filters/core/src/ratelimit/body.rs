//! Bodies of unknown size (chunked, HTTP/2 without `content-length`),
//! charged as they stream: when the bytes received cross a payload band,
//! the difference in cost is taken from the bucket, and the request is
//! refused mid-stream if it does not fit.

use super::keys::Table;
use super::limiter::{LimiterState, RateLimiter};
use super::pricing::band;
use super::refusal::{Refused, body_refusal};
use super::view::LimitView;
use crate::bucket::{GlobalAccounting, LimitSpec, TakeOutcome};
use crate::shared::SharedStore;

/// The charge of a body whose size was unknown when the headers arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyMeter {
    pub(super) table: Table,
    pub(super) hash: u64,
    pub(super) specs: Vec<LimitSpec>,
    pub(super) windows: Vec<u64>,
    /// The request's cost with a payload multiplier of 1.
    pub(super) unit_cost: u64,
    /// The payload multiplier already charged.
    pub(super) charged: u64,
    pub(super) received: u64,
    pub(super) descriptor: Vec<(String, String)>,
    pub(super) label: String,
    pub(super) grpc: bool,
    pub(super) head_request: bool,
}

/// What a body chunk was charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyCharge {
    /// Cost taken now (0: the chunk crossed no band).
    pub extra: u64,
    /// The limit view after the charge, when one was taken.
    pub view: Option<LimitView>,
}

impl RateLimiter {
    /// Charges the part of a body of unknown size received so far:
    /// `chunk` more bytes arrived. When the bytes received cross a payload
    /// band, the difference in cost is taken from the bucket, and the
    /// request is refused (mid-stream) if it does not fit.
    pub fn on_body(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        meter: &mut BodyMeter,
        chunk: u64,
        now_ms: u64,
    ) -> Result<BodyCharge, Refused> {
        meter.received = meter.received.saturating_add(chunk);
        let multiplier = band(&self.payload_bands, meter.received);
        if multiplier <= meter.charged {
            return Ok(BodyCharge::default());
        }
        let extra = meter.unit_cost.saturating_mul(multiplier - meter.charged);
        let accounting = if self.global.is_some() {
            GlobalAccounting::CountLocally
        } else {
            GlobalAccounting::None
        };
        let outcome = self.table(meter.table).take(
            store,
            meter.hash,
            &meter.specs,
            extra,
            accounting,
            now_ms,
        );
        let take = match outcome {
            TakeOutcome::Done { take, .. } => take,
            TakeOutcome::Invalid(e) => {
                state.record_invalid(e);
                return Ok(BodyCharge::default());
            }
            TakeOutcome::Contended | TakeOutcome::Unavailable => {
                state.counts.contended += 1;
                return Ok(BodyCharge::default());
            }
        };
        if take.allowed {
            meter.charged = multiplier;
            if self.global.is_some() {
                state.mark_dirty(
                    meter.hash,
                    meter.table == Table::Anonymous,
                    &meter.descriptor,
                );
            }
            let window = meter
                .windows
                .get(take.tightest.index)
                .copied()
                .unwrap_or(60);
            return Ok(BodyCharge {
                extra,
                view: self.response_headers.then_some(LimitView {
                    limit: take.tightest.capacity,
                    window_seconds: window,
                    remaining: take.tightest.remaining,
                    reset_seconds: take.tightest.reset_seconds,
                }),
            });
        }
        Err(body_refusal(meter, extra, take.tightest.reset_seconds))
    }
}
