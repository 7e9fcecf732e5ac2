//! The local decision on a request: its cost, its key and limits, one
//! atomic bucket update, and whether the RLS must be asked (global
//! limiting).

use super::adaptive;
use super::body::BodyMeter;
use super::config::{Contention, FailureMode, GlobalMode};
use super::global::RlsCall;
use super::keys::Table;
use super::limiter::{LimiterState, RateLimiter};
use super::refusal::{Refusal, Refused, contention_refusal, queue_full_refusal};
use super::report::{Report, ReportKey};
use super::rls;
use super::view::LimitView;
use crate::bucket::{GlobalAccounting, TakeOutcome};
use crate::contract::{Caller, MatchedOperation};
use crate::http::{BodySize, RequestHead};
use crate::shared::SharedStore;
use std::sync::Arc;

/// Everything the decision needs to know about a request.
pub struct RequestFacts<'a> {
    pub head: RequestHead<'a>,
    pub identity: Option<Arc<Caller>>,
    pub operation: Option<Arc<MatchedOperation>>,
    /// The downstream address Envoy computed (`ip:port`).
    pub client_address: Option<String>,
    /// The route name, if the key includes the route.
    pub route: Option<String>,
    /// The request headers ended the stream: there is no body.
    pub end_of_stream: bool,
    /// The price an earlier stage set from the body (MCP), in
    /// read-equivalents, instead of this limiter's own pricing.
    pub price: Option<u64>,
}

/// What the local buckets decided: let the request through, refuse it,
/// or ask the RLS (global limiting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDecision {
    Allow(Admitted),
    Deny(Refused),
    AskRls(Box<RlsCall>),
}

/// A decision that lets the request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// For `x-ratelimit-*` (absent when response headers are disabled).
    pub view: Option<LimitView>,
    pub cost: u64,
    /// Who decided, for metrics.
    pub decided_by: DecidedBy,
    /// Set when the body's size is unknown: charge it as it streams.
    pub meter: Option<Box<BodyMeter>>,
}

impl Admitted {
    pub fn response_headers(&self) -> Vec<(String, String)> {
        self.view.map(|v| v.headers()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    Local,
    Rls,
    /// The RLS failed; the failure mode let the request through.
    Fallback(FailureMode),
    /// The bucket could not be updated; `on_contention: allow`.
    Contention,
}

impl RateLimiter {
    /// Decides on a request.
    pub fn check(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        facts: &RequestFacts<'_>,
        now_ms: u64,
    ) -> LocalDecision {
        let request = &facts.head;
        if let Some(adaptive) = &state.adaptive
            && adaptive.queue_full()
        {
            return LocalDecision::Deny(queue_full_refusal(request));
        }
        let operation = self.operation(facts);
        let (unit_cost, payload) = match facts.price {
            Some(price) => (price.max(1), 1),
            None => self.costs(facts, operation.as_deref()),
        };
        let cost = unit_cost.saturating_mul(payload);
        let (table, key, descriptor, label) = self.key(facts, operation.as_deref());
        let hash = self.table(table).hash_key(&key);
        let multiplier = state
            .adaptive
            .as_ref()
            .map_or(1.0, adaptive::Adaptive::multiplier);
        let limits = self.limits(facts.identity.as_deref(), multiplier);

        // Does the RLS get a say? The local/global split is decided inside
        // the bucket update, atomically.
        let accounting = match &self.global {
            None => GlobalAccounting::None,
            Some(g) if g.mode == GlobalMode::Always => GlobalAccounting::ClaimUnreported,
            Some(g) => GlobalAccounting::Hierarchical {
                threshold: g.sync_threshold,
                budget_share: (1.0 - g.sync_threshold) / g.gateways as f64,
            },
        };
        let meter = (BodySize::of(request, facts.end_of_stream) == BodySize::Unknown).then(|| {
            Box::new(BodyMeter {
                table,
                hash,
                specs: limits.specs.clone(),
                windows: limits.configs.iter().map(|l| l.window_seconds).collect(),
                unit_cost,
                charged: 1,
                received: 0,
                descriptor: descriptor.clone(),
                label: label.clone(),
                grpc: request.is_grpc(),
                head_request: request.is_head(),
            })
        });

        let outcome = self
            .table(table)
            .take(store, hash, &limits.specs, cost, accounting, now_ms);
        let (take, claimed) = match outcome {
            TakeOutcome::Done {
                take,
                claimed_unreported,
            } => (take, claimed_unreported),
            TakeOutcome::Contended | TakeOutcome::Unavailable | TakeOutcome::Invalid(_) => {
                match outcome {
                    TakeOutcome::Invalid(e) => state.record_invalid(e),
                    _ => state.counts.contended += 1,
                }
                return match self.on_contention {
                    Contention::Allow => LocalDecision::Allow(Admitted {
                        view: None,
                        cost,
                        decided_by: DecidedBy::Contention,
                        meter: None,
                    }),
                    Contention::Deny => LocalDecision::Deny(contention_refusal(request)),
                };
            }
        };
        state.counts.evictions += u64::from(take.evicted);
        state.counts.lost_unreported = state
            .counts
            .lost_unreported
            .saturating_add(take.lost_unreported);
        let global_view = self.global.is_some().then_some(&take.global);
        if !take.allowed {
            let reply = if take.global_exhausted {
                self.global_refusal_reply(request, &label, &take.global, cost, now_ms)
            } else {
                let view = self.view(&limits, &take.tightest, global_view, now_ms);
                self.refusal_reply(request, &label, &limits, &take.tightest, cost, view)
            };
            let refusal = if take.global_exhausted {
                Refusal::GlobalLimit
            } else {
                Refusal::LocalLimit
            };
            return LocalDecision::Deny(Refused { reply, refusal });
        }
        let admitted = Admitted {
            view: self.view(&limits, &take.tightest, global_view, now_ms),
            cost,
            decided_by: DecidedBy::Local,
            meter,
        };
        let Some(g) = &self.global else {
            return LocalDecision::Allow(admitted);
        };
        let call = match self.take_call(
            state,
            store,
            facts,
            operation.as_deref(),
            cost,
            accounting,
            now_ms,
        ) {
            Ok(call) => call,
            Err(refused) => return LocalDecision::Deny(refused),
        };
        let anonymous = table == Table::Anonymous;
        if !take.ask_rls {
            state.mark_dirty(hash, anonymous, &descriptor);
        }
        if let Some(c) = call.as_ref().filter(|c| !c.ask) {
            state.mark_dirty(c.hash, false, &c.descriptor);
        }
        let call = call.filter(|c| c.ask);
        // One question for whichever keys ask: the bucket's first, the
        // call's second (or alone).
        let (report, label, call_label) = match (take.ask_rls, call) {
            (false, None) => return LocalDecision::Allow(admitted),
            (true, call) => {
                let hits = cost.saturating_add(claimed);
                let also = call.as_ref().map(|c| ReportKey {
                    key_hash: c.hash,
                    descriptor: c.descriptor.clone(),
                    hits: cost.saturating_add(c.claimed),
                });
                let message = rls::encode_request(
                    &g.domain,
                    &descriptor,
                    hits,
                    also.as_ref().map(|k| (k.descriptor.as_slice(), k.hits)),
                );
                let report = Report {
                    id: state.outbox.next_id(),
                    key_hash: hash,
                    anonymous,
                    descriptor,
                    hits,
                    also,
                    message,
                    created_ms: now_ms,
                };
                (report, label, call.map(|c| call_label(&c.descriptor)))
            }
            (false, Some(call)) => {
                let label = call_label(&call.descriptor);
                let hits = cost.saturating_add(call.claimed);
                let report = Report {
                    id: state.outbox.next_id(),
                    key_hash: call.hash,
                    anonymous: false,
                    message: rls::encode_request(&g.domain, &call.descriptor, hits, None),
                    descriptor: call.descriptor,
                    hits,
                    also: None,
                    created_ms: now_ms,
                };
                (report, label, None)
            }
        };
        LocalDecision::AskRls(Box::new(RlsCall {
            report,
            cluster: g.cluster.clone(),
            timeout_ms: g.timeout_ms,
            cost,
            local: admitted,
            label,
            call_label,
            failure_mode: g.failure_mode,
            deny_status: g.deny_status,
            grpc: request.is_grpc(),
            head_request: request.is_head(),
        }))
    }

    /// An MCP call's own key, `[tenant, mcp_method, mcp_tool]`
    /// ([`RateLimiter::call_descriptor`]), in the tenants table: no local
    /// limit, the same global accounting as the bucket, so a per-tool
    /// limit in the RLS holds as a tenant's does (counted locally well
    /// below it, decided by the RLS near it, refused here for the rest of
    /// the window once over). `None` for other requests, or when the key
    /// cannot be updated and `on_contention` lets the request through.
    #[allow(clippy::too_many_arguments)]
    fn take_call(
        &self,
        state: &mut LimiterState,
        store: &dyn SharedStore,
        facts: &RequestFacts<'_>,
        operation: Option<&MatchedOperation>,
        cost: u64,
        accounting: GlobalAccounting,
        now_ms: u64,
    ) -> Result<Option<CallKey>, Refused> {
        let Some(descriptor) = self.call_descriptor(facts, operation) else {
            return Ok(None);
        };
        let mut key = String::from("mcp|");
        for (name, value) in &descriptor {
            key.push_str(name);
            key.push('=');
            key.push_str(value);
            key.push('|');
        }
        let table = self.table(Table::Tenants);
        let hash = table.hash_key(&key);
        match table.take(store, hash, &[], cost, accounting, now_ms) {
            TakeOutcome::Done {
                take,
                claimed_unreported,
            } => {
                state.counts.evictions += u64::from(take.evicted);
                state.counts.lost_unreported = state
                    .counts
                    .lost_unreported
                    .saturating_add(take.lost_unreported);
                if !take.allowed {
                    let label = call_label(&descriptor);
                    let reply =
                        self.global_refusal_reply(&facts.head, &label, &take.global, cost, now_ms);
                    return Err(Refused {
                        reply,
                        refusal: Refusal::GlobalLimit,
                    });
                }
                Ok(Some(CallKey {
                    hash,
                    descriptor,
                    ask: take.ask_rls,
                    claimed: claimed_unreported,
                }))
            }
            outcome => {
                match outcome {
                    TakeOutcome::Invalid(e) => state.record_invalid(e),
                    _ => state.counts.contended += 1,
                }
                match self.on_contention {
                    Contention::Allow => Ok(None),
                    Contention::Deny => Err(contention_refusal(&facts.head)),
                }
            }
        }
    }
}

/// An MCP call's key after its update.
struct CallKey {
    hash: u64,
    descriptor: rls::Entries,
    /// The RLS decides this call (near or over the tool's known limit, or
    /// nothing known yet).
    ask: bool,
    /// Usage of the key admitted locally and not yet reported, sent along.
    claimed: u64,
}

/// `tools/call search_context of tenant acme`, from an MCP call's
/// descriptor.
fn call_label(descriptor: &[(String, String)]) -> String {
    let entry = |key: &str| {
        descriptor
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    };
    let mut label = entry("mcp_method").to_owned();
    if let Some((_, tool)) = descriptor.iter().find(|(k, _)| k == "mcp_tool") {
        label.push(' ');
        label.push_str(tool);
    }
    label.push_str(" of tenant ");
    label.push_str(entry("tenant"));
    label
}
