//! The rate-limit filter's decision: what a request costs, whose bucket
//! pays, and whether the local bucket or the global Rate Limit Service
//! decides.
//!
//! * Cost: the operation's price (read 1, write 2, complex query 5, graph
//!   traversal 10 by default), times payload-size, context-depth and
//!   header bands; an integer >= 1.
//! * Key: the tenant (and optionally subject, operation, route) of the
//!   identity the auth filter put in Envoy filter state; never a header a
//!   client could set. No identity: an anonymous key (client address).
//! * Limits: from the token's `rate_limits` claim when allowed, else the
//!   tenant's override, else its tier; several limits may apply and the
//!   tightest decides.
//! * Local buckets live in shared data ([`bucket`]), shrunk by the adaptive
//!   multiplier ([`adaptive`]).
//! * Global: in `hierarchical` mode the local bucket decides alone while
//!   the tenant's known global usage is below `sync_threshold` of the RLS
//!   limit; from there on the RLS decides, and local admissions are
//!   reported to it in the background. In `always` mode the RLS decides
//!   every request. When the RLS fails or is late, `failure_mode` applies.

pub mod adaptive;
pub mod bucket;
pub mod config;
pub mod rls;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::auth::config::{ConfigError, parse_json};
use crate::auth::identity::SharedIdentity;
use crate::http::{LocalReply, RequestHead};
use crate::operation::{OperationMap, OperationMatch};
use bucket::{BucketTable, GlobalAction, LimitSpec, MILLI, TakeOutcome, Tightest};
use config::{
    AdaptiveConfig, AnonymousKey, Band, Contention, Counts, FailureMode, GlobalConfig, GlobalMode,
    KeyPart, LimitConfig, RateLimitConfig,
};

pub use crate::auth::SharedOperation;

/// Everything the decision needs to know about a request.
pub struct RequestFacts<'a> {
    pub head: RequestHead<'a>,
    pub identity: Option<SharedIdentity>,
    pub operation: Option<SharedOperation>,
    /// The downstream address Envoy saw (`ip:port`).
    pub client_address: Option<String>,
    /// The route name, if the key includes the route.
    pub route: Option<String>,
}

/// Why a request was refused, for the metric and the response details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The local bucket was empty.
    LocalLimit,
    /// The RLS answered OVER_LIMIT.
    GlobalLimit,
    /// Too many requests in flight to the upstream.
    QueueFull,
    /// The bucket could not be updated (contention) and `on_contention`
    /// is `deny`.
    Contention,
    /// The RLS failed and `failure_mode` is `deny`.
    RlsUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::LocalLimit,
        Refusal::GlobalLimit,
        Refusal::QueueFull,
        Refusal::Contention,
        Refusal::RlsUnavailable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Refusal::LocalLimit => "local_limit",
            Refusal::GlobalLimit => "global_limit",
            Refusal::QueueFull => "queue_full",
            Refusal::Contention => "contention",
            Refusal::RlsUnavailable => "rls_unavailable",
        }
    }
}

/// A decision that lets the request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// `x-ratelimit-*` headers for the response (empty if disabled).
    pub response_headers: Vec<(String, String)>,
    pub cost: u64,
    /// Who decided, for metrics.
    pub decided_by: DecidedBy,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reply: LocalReply,
    pub refusal: Refusal,
}

/// A question for the RLS, and what to do if it does not answer in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlsCall {
    /// Serialized `RateLimitRequest`.
    pub message: Vec<u8>,
    pub cluster: String,
    pub timeout_ms: u64,
    pub key_hash: u64,
    pub descriptor: Vec<(String, String)>,
    /// Unreported local consumption sent along with this request's cost;
    /// given back to the bucket if the call fails.
    pub piggybacked: u64,
    pub cost: u64,
    /// What the local bucket decided, used by `local_fallback`.
    pub local: Result<Admitted, Refused>,
    label: String,
    failure_mode: FailureMode,
    deny_status: u16,
    grpc: bool,
    head_request: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Allow(Admitted),
    Deny(Refused),
    AskRls(Box<RlsCall>),
}

/// Per-worker mutable state.
#[derive(Default)]
pub struct LimiterState {
    /// Keys with consumption not yet reported to the RLS: hash -> descriptor.
    pub dirty: HashMap<u64, Vec<(String, String)>>,
    pub adaptive: Option<adaptive::Adaptive>,
    /// Dirty keys dropped because the set was full (their consumption is
    /// reported when the key is next touched by a sync).
    pub dirty_overflow: u64,
    /// Buckets replaced to make room for another key (see [`bucket`]).
    pub evictions: u64,
    /// Bucket updates that ran out of CAS attempts.
    pub contended: u64,
}

/// Most keys a worker remembers as having unreported consumption.
const MAX_DIRTY: usize = 10_000;

/// A report of local consumption to send to the RLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub message: Vec<u8>,
    pub key_hash: u64,
    pub descriptor: Vec<(String, String)>,
    pub hits: u64,
}

struct Limits<'a> {
    specs: Vec<LimitSpec>,
    configs: Cow<'a, [LimitConfig]>,
}

pub struct RateLimiter {
    operations: Option<OperationMap>,
    costs: BTreeMap<String, u64>,
    default_cost: u64,
    payload_bands: Vec<Band>,
    depth_bands: Vec<Band>,
    header_factor: Option<config::HeaderFactor>,
    key: Vec<KeyPart>,
    anonymous: config::AnonymousConfig,
    tiers: BTreeMap<String, Vec<LimitConfig>>,
    tenants: BTreeMap<String, config::TenantConfig>,
    default_tier: String,
    use_token_limits: bool,
    max_token_limit: u64,
    on_contention: Contention,
    response_headers: bool,
    pub table: BucketTable,
    pub adaptive: Option<AdaptiveConfig>,
    pub global: Option<GlobalConfig>,
    pub fingerprint: String,
}

impl RateLimiter {
    pub fn from_json(json: &[u8]) -> Result<RateLimiter, ConfigError> {
        let digest = hmac_sha256::Hash::hash(json);
        let fingerprint: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        RateLimiter::new(parse_json(json)?, fingerprint)
    }

    pub fn new(config: RateLimitConfig, fingerprint: String) -> Result<RateLimiter, ConfigError> {
        config.validate()?;
        // Only needed when the auth filter did not classify the request.
        let operations = (!config.operations.is_empty())
            .then(|| OperationMap::compile(&config.operations))
            .transpose()?;
        Ok(RateLimiter {
            operations,
            costs: config
                .costs
                .into_iter()
                .map(|(k, v)| (k, u64::from(v)))
                .collect(),
            default_cost: u64::from(config.default_cost),
            payload_bands: config.payload_bands,
            depth_bands: config.depth_bands,
            header_factor: config.header_factor,
            key: config.key,
            anonymous: config.anonymous,
            tiers: config.tiers,
            tenants: config.tenants,
            default_tier: config.default_tier,
            use_token_limits: config.use_token_limits,
            max_token_limit: config.max_token_limit,
            on_contention: config.on_contention,
            response_headers: config.response_headers,
            table: BucketTable::new(&fingerprint, config.slots, config.ways, config.cas_attempts),
            adaptive: config.adaptive,
            global: config.global,
            fingerprint,
        })
    }

    /// Does the bucket key include the route (so the glue must look it up)?
    pub fn keys_by_route(&self) -> bool {
        self.key.contains(&KeyPart::Route)
    }

    /// The cost of a request, in read-equivalents (>= 1).
    pub fn cost(&self, facts: &RequestFacts<'_>, operation: Option<&SharedOperation>) -> u64 {
        let base = operation
            .and_then(|op| self.costs.get(&op.name))
            .copied()
            .unwrap_or(self.default_cost);
        let content_length = facts
            .head
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let depth = operation
            .filter(|op| !op.context.is_empty())
            .map(|op| op.context.split('/').count() as u64);
        let header = self.header_factor.as_ref().and_then(|h| {
            facts
                .head
                .header(&h.header)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|v| band(&h.bands, v))
        });
        base.saturating_mul(content_length.map_or(1, |n| band(&self.payload_bands, n)))
            .saturating_mul(depth.map_or(1, |d| band(&self.depth_bands, d)))
            .saturating_mul(header.unwrap_or(1))
            .max(1)
    }

    fn operation(&self, facts: &RequestFacts<'_>) -> Option<SharedOperation> {
        if let Some(op) = &facts.operation {
            return Some(op.clone());
        }
        match self
            .operations
            .as_ref()?
            .lookup_raw(facts.head.method, facts.head.path)
        {
            OperationMatch::Matched(op) => Some(SharedOperation {
                name: op.name.to_owned(),
                action: op.action.as_str().to_owned(),
                context: op.context.to_string(),
            }),
            _ => None,
        }
    }

    /// The bucket key, its RLS descriptor and a label for messages.
    fn key(
        &self,
        facts: &RequestFacts<'_>,
        operation: Option<&SharedOperation>,
    ) -> (String, Vec<(String, String)>, String) {
        let Some(identity) = &facts.identity else {
            let client = match self.anonymous.by {
                AnonymousKey::ClientAddress => facts.client_address.as_deref().map(strip_port),
                AnonymousKey::Header => self
                    .anonymous
                    .header
                    .as_deref()
                    .and_then(|h| facts.head.header(h))
                    .map(|v| v.split(',').next().unwrap_or(v).trim()),
            }
            .unwrap_or("unknown")
            .to_owned();
            let descriptor = vec![("client".to_owned(), client.clone())];
            return (
                format!("anon|{client}"),
                descriptor,
                format!("client {client}"),
            );
        };
        let mut key = String::new();
        let mut descriptor = Vec::new();
        for part in &self.key {
            let (name, value) = match part {
                KeyPart::Tenant => ("tenant", identity.tenant.as_str()),
                KeyPart::Subject => ("subject", identity.subject.as_str()),
                KeyPart::Operation => (
                    "operation",
                    operation.map_or("unknown", |o| o.name.as_str()),
                ),
                KeyPart::Route => ("route", facts.route.as_deref().unwrap_or("unknown")),
            };
            key.push_str(name);
            key.push('=');
            key.push_str(value);
            key.push('|');
            descriptor.push((name.to_owned(), value.to_owned()));
        }
        (key, descriptor, format!("tenant {}", identity.tenant))
    }

    fn limits(&self, identity: Option<&SharedIdentity>, multiplier: f64) -> Limits<'_> {
        let configs = self.limit_configs(identity);
        let specs = configs
            .iter()
            .map(|l| {
                let capacity = l.burst.unwrap_or(l.limit);
                let scaled = |v: u64| ((v as f64) * multiplier).round().max(1.0) as u64;
                LimitSpec {
                    capacity: scaled(capacity.saturating_mul(MILLI)),
                    refill: scaled(l.limit.saturating_mul(MILLI)),
                    period_ms: l.window_seconds.saturating_mul(1000),
                    counts_cost: l.counts == Counts::Cost,
                }
            })
            .collect();
        Limits { specs, configs }
    }

    fn limit_configs(&self, identity: Option<&SharedIdentity>) -> Cow<'_, [LimitConfig]> {
        let Some(identity) = identity else {
            return self.tier(&self.anonymous.tier);
        };
        if self.use_token_limits
            && let Some(claims) = &identity.rate_limits
        {
            let cap = |v: u64| v.clamp(1, self.max_token_limit);
            let mut limits = Vec::new();
            if let Some(rpm) = claims.requests_per_minute {
                limits.push(LimitConfig {
                    name: "requests_per_minute".into(),
                    limit: cap(rpm),
                    window_seconds: 60,
                    burst: None,
                    counts: Counts::Requests,
                });
            }
            if let Some(per_hour) = claims.context_operations_per_hour {
                limits.push(LimitConfig {
                    name: "context_operations_per_hour".into(),
                    limit: cap(per_hour),
                    window_seconds: 3600,
                    burst: None,
                    counts: Counts::Cost,
                });
            }
            if !limits.is_empty() {
                return Cow::Owned(limits);
            }
        }
        if let Some(tenant) = self.tenants.get(&identity.tenant) {
            if let Some(limits) = &tenant.limits {
                return Cow::Borrowed(limits);
            }
            if let Some(tier) = &tenant.tier {
                return self.tier(tier);
            }
        }
        self.tier(&identity.tier)
    }

    fn tier(&self, name: &str) -> Cow<'_, [LimitConfig]> {
        let limits = self
            .tiers
            .get(name)
            .or_else(|| self.tiers.get(&self.default_tier));
        Cow::Borrowed(limits.map_or(&[][..], Vec::as_slice))
    }

    /// Decides on a request.
    pub fn check(
        &self,
        state: &mut LimiterState,
        store: &dyn crate::shared::SharedStore,
        facts: &RequestFacts<'_>,
        now_ms: u64,
    ) -> Step {
        let request = &facts.head;
        if let Some(adaptive) = &state.adaptive
            && adaptive.queue_full()
        {
            let body = json!({
                "error": "overloaded",
                "message": "too many requests in flight to the upstream; retry shortly",
            });
            let mut reply = LocalReply::json_error(
                request,
                503,
                &body,
                vec![("retry-after".into(), "1".into())],
                "ctxgate_ratelimit_refused{queue_full}".into(),
            );
            reply.grpc_status = reply.grpc_status.map(|_| 8);
            return Step::Deny(Refused {
                reply,
                refusal: Refusal::QueueFull,
            });
        }
        let operation = self.operation(facts);
        let cost = self.cost(facts, operation.as_ref());
        let (key, descriptor, label) = self.key(facts, operation.as_ref());
        let hash = BucketTable::hash_key(&key);
        let multiplier = state
            .adaptive
            .as_ref()
            .map_or(1.0, adaptive::Adaptive::multiplier);
        let limits = self.limits(facts.identity.as_ref(), multiplier);

        // Does the RLS get a say? The local/global split is decided inside
        // the bucket update, atomically.
        let global_action = match &self.global {
            None => GlobalAction::None,
            Some(g) if g.mode == GlobalMode::Always => GlobalAction::ClaimUnreported,
            Some(g) => GlobalAction::Hierarchical {
                threshold: g.sync_threshold,
                budget_share: (1.0 - g.sync_threshold) / g.gateways as f64,
            },
        };

        let (local, claimed, ask_rls) = match self.table.take(
            store,
            hash,
            &limits.specs,
            cost,
            global_action,
            now_ms,
        ) {
            TakeOutcome::Done {
                take,
                claimed_unreported,
            } => {
                state.evictions += u64::from(take.evicted);
                let headers = self.headers(&limits, &take.tightest);
                if take.allowed {
                    (
                        Ok(Admitted {
                            response_headers: headers,
                            cost,
                            decided_by: DecidedBy::Local,
                        }),
                        claimed_unreported,
                        take.ask_rls,
                    )
                } else if take.global_exhausted {
                    let reply =
                        self.global_refusal_reply(request, &label, &take.global, cost, now_ms);
                    (
                        Err(Refused {
                            reply,
                            refusal: Refusal::GlobalLimit,
                        }),
                        0,
                        false,
                    )
                } else {
                    let reply =
                        self.refusal_reply(request, &label, &limits, &take.tightest, cost, headers);
                    (
                        Err(Refused {
                            reply,
                            refusal: Refusal::LocalLimit,
                        }),
                        0,
                        false,
                    )
                }
            }
            TakeOutcome::Contended | TakeOutcome::Unavailable => {
                state.contended += 1;
                match self.on_contention {
                    Contention::Allow => (
                        Ok(Admitted {
                            response_headers: Vec::new(),
                            cost,
                            decided_by: DecidedBy::Contention,
                        }),
                        0,
                        false,
                    ),
                    Contention::Deny => {
                        let body = json!({"error": "rate_limited", "message": "the rate limiter is saturated; retry shortly"});
                        let reply = LocalReply::json_error(
                            request,
                            429,
                            &body,
                            vec![("retry-after".into(), "1".into())],
                            "ctxgate_ratelimit_refused{contention}".into(),
                        );
                        (
                            Err(Refused {
                                reply,
                                refusal: Refusal::Contention,
                            }),
                            0,
                            false,
                        )
                    }
                }
            }
        };

        match (&self.global, ask_rls, local) {
            (Some(_), false, Ok(admitted)) if admitted.decided_by == DecidedBy::Local => {
                if state.dirty.len() < MAX_DIRTY || state.dirty.contains_key(&hash) {
                    state.dirty.entry(hash).or_insert(descriptor);
                } else {
                    state.dirty_overflow += 1;
                }
                Step::Allow(admitted)
            }
            (Some(g), true, Ok(admitted)) if admitted.decided_by == DecidedBy::Local => {
                Step::AskRls(Box::new(RlsCall {
                    message: rls::encode_request(
                        &g.domain,
                        &descriptor,
                        cost.saturating_add(claimed),
                    ),
                    cluster: g.cluster.clone(),
                    timeout_ms: g.timeout_ms,
                    key_hash: hash,
                    descriptor,
                    piggybacked: claimed,
                    cost,
                    local: Ok(admitted),
                    label,
                    failure_mode: g.failure_mode,
                    deny_status: g.deny_status,
                    grpc: request.is_grpc(),
                    head_request: request.is_head(),
                }))
            }
            (_, _, Ok(admitted)) => Step::Allow(admitted),
            (_, _, Err(refused)) => Step::Deny(refused),
        }
    }

    /// Applies an RLS answer to a pending request.
    pub fn on_rls_answer(
        &self,
        store: &dyn crate::shared::SharedStore,
        call: &RlsCall,
        answer: &rls::RlsAnswer,
        now_ms: u64,
    ) -> Result<Admitted, Refused> {
        self.learn(store, call.key_hash, answer, now_ms);
        let Ok(local) = &call.local else {
            // Not reached: only locally admitted requests ask the RLS.
            return call.local.clone();
        };
        let limit = answer.limit.unwrap_or(0);
        let window = answer.window_seconds.unwrap_or(60);
        let reset = answer.reset_in_ms.map_or(window, |ms| ms.div_ceil(1000));
        let headers = if self.response_headers && answer.limit.is_some() {
            ratelimit_headers(limit, window, answer.remaining, reset)
        } else {
            local.response_headers.clone()
        };
        if !answer.over_limit {
            return Ok(Admitted {
                response_headers: headers,
                cost: call.cost,
                decided_by: DecidedBy::Rls,
            });
        }
        let body = json!({
            "error": "rate_limited",
            "message": format!("{} exceeded its global limit of {limit} per {window} s", call.label),
            "limit": {"scope": "global", "limit": limit, "window_seconds": window},
            "cost": call.cost,
            "retry_after_seconds": reset,
        });
        let mut headers = headers;
        headers.push(("retry-after".into(), reset.to_string()));
        let reply = reply_for(
            call,
            429,
            &body,
            headers,
            "ctxgate_ratelimit_refused{global_limit}",
        );
        Err(Refused {
            reply,
            refusal: Refusal::GlobalLimit,
        })
    }

    /// The RLS failed, or missed its deadline: apply the failure mode. The
    /// consumption sent along is given back to be reported later.
    pub fn on_rls_failure(
        &self,
        store: &dyn crate::shared::SharedStore,
        call: &RlsCall,
    ) -> Result<Admitted, Refused> {
        self.table
            .return_unreported(store, call.key_hash, call.piggybacked);
        match call.failure_mode {
            FailureMode::LocalFallback => call.local.clone().map(|a| Admitted {
                decided_by: DecidedBy::Fallback(FailureMode::LocalFallback),
                ..a
            }),
            FailureMode::Allow => Ok(Admitted {
                response_headers: Vec::new(),
                cost: call.cost,
                decided_by: DecidedBy::Fallback(FailureMode::Allow),
            }),
            FailureMode::Deny => {
                let body = json!({"error": "rate_limit_unavailable", "message": "the rate limit service is unavailable"});
                let reply = reply_for(
                    call,
                    call.deny_status,
                    &body,
                    Vec::new(),
                    "ctxgate_ratelimit_refused{rls_unavailable}",
                );
                Err(Refused {
                    reply,
                    refusal: Refusal::RlsUnavailable,
                })
            }
        }
    }

    /// Records what the RLS said about a key.
    fn learn(
        &self,
        store: &dyn crate::shared::SharedStore,
        hash: u64,
        answer: &rls::RlsAnswer,
        now_ms: u64,
    ) {
        let sync_ms = self.global.as_ref().map_or(1000, |g| g.sync_interval_ms);
        match answer.used() {
            Some(used) => {
                let window_ms = answer.window_seconds.unwrap_or(60).saturating_mul(1000);
                let reset_ms = now_ms.saturating_add(answer.reset_in_ms.unwrap_or(window_ms));
                self.table
                    .learn_global(store, hash, used, answer.limit.unwrap_or(0), reset_ms);
            }
            // The RLS has no limit for this key: local buckets decide, and
            // the question is asked again after a while.
            None => {
                self.table.learn_global(
                    store,
                    hash,
                    0,
                    u64::MAX,
                    now_ms.saturating_add(sync_ms.saturating_mul(50)),
                );
            }
        }
    }

    /// Reports for the keys this worker admitted locally since the last sync.
    pub fn sync_reports(
        &self,
        state: &mut LimiterState,
        store: &dyn crate::shared::SharedStore,
    ) -> Vec<SyncReport> {
        let Some(g) = &self.global else {
            return Vec::new();
        };
        let mut reports = Vec::new();
        for (hash, descriptor) in state.dirty.drain() {
            let hits = self.table.claim_unreported(store, hash);
            if hits > 0 {
                reports.push(SyncReport {
                    message: rls::encode_request(&g.domain, &descriptor, hits),
                    key_hash: hash,
                    descriptor,
                    hits,
                });
            }
        }
        reports
    }

    /// A sync report was answered.
    pub fn on_sync_answer(
        &self,
        store: &dyn crate::shared::SharedStore,
        report: &SyncReport,
        answer: &rls::RlsAnswer,
        now_ms: u64,
    ) {
        self.learn(store, report.key_hash, answer, now_ms);
    }

    /// A sync report failed: keep the consumption for the next one.
    pub fn on_sync_failure(
        &self,
        state: &mut LimiterState,
        store: &dyn crate::shared::SharedStore,
        report: SyncReport,
    ) {
        self.table
            .return_unreported(store, report.key_hash, report.hits);
        state.dirty.insert(report.key_hash, report.descriptor);
    }

    /// 429 for a key the RLS reported over its limit, answered locally.
    fn global_refusal_reply(
        &self,
        request: &RequestHead<'_>,
        label: &str,
        view: &bucket::GlobalView,
        cost: u64,
        now_ms: u64,
    ) -> LocalReply {
        let reset = view.reset_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
        let limit = view.limit;
        let mut headers = if self.response_headers {
            vec![
                ("x-ratelimit-limit".into(), limit.to_string()),
                ("x-ratelimit-remaining".into(), "0".into()),
                ("x-ratelimit-reset".into(), reset.to_string()),
            ]
        } else {
            Vec::new()
        };
        headers.push(("retry-after".into(), reset.to_string()));
        let body = json!({
            "error": "rate_limited",
            "message": format!("{label} exceeded its global limit of {limit} for this window"),
            "limit": {"scope": "global", "limit": limit},
            "cost": cost,
            "retry_after_seconds": reset,
        });
        let mut reply = LocalReply::json_error(
            request,
            429,
            &body,
            headers,
            "ctxgate_ratelimit_refused{global_limit}".into(),
        );
        reply.grpc_status = reply.grpc_status.map(|_| 8);
        reply
    }

    fn headers(&self, limits: &Limits, tightest: &Tightest) -> Vec<(String, String)> {
        if !self.response_headers {
            return Vec::new();
        }
        let window = limits
            .configs
            .get(tightest.index)
            .map_or(60, |l| l.window_seconds);
        ratelimit_headers(
            tightest.capacity,
            window,
            tightest.remaining,
            tightest.reset_seconds,
        )
    }

    fn refusal_reply(
        &self,
        request: &RequestHead<'_>,
        label: &str,
        limits: &Limits,
        tightest: &Tightest,
        cost: u64,
        mut headers: Vec<(String, String)>,
    ) -> LocalReply {
        let limit = limits.configs.get(tightest.index);
        let (name, window, counts) = limit.map_or(("limit", 60, Counts::Cost), |l| {
            (l.name.as_str(), l.window_seconds, l.counts)
        });
        let unit = if counts == Counts::Cost {
            "read-equivalents"
        } else {
            "requests"
        };
        let retry = tightest.reset_seconds.clamp(1, 86_400);
        headers.push(("retry-after".into(), retry.to_string()));
        let body = json!({
            "error": "rate_limited",
            "message": format!("{label} exceeded its {name} limit of {} {unit} per {window} s", tightest.capacity),
            "limit": {"name": name, "limit": tightest.capacity, "window_seconds": window, "counts": unit},
            "cost": cost,
            "retry_after_seconds": retry,
        });
        let mut reply = LocalReply::json_error(
            request,
            429,
            &body,
            headers,
            "ctxgate_ratelimit_refused{local_limit}".into(),
        );
        reply.grpc_status = reply.grpc_status.map(|_| 8);
        reply
    }
}

fn reply_for(
    call: &RlsCall,
    status: u16,
    body: &serde_json::Value,
    headers: Vec<(String, String)>,
    details: &str,
) -> LocalReply {
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    LocalReply {
        status,
        headers,
        body: if call.head_request {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
        grpc_status: call.grpc.then_some(if status == 429 { 8 } else { 14 }),
        details: details.to_owned(),
    }
}

/// `x-ratelimit-*` as Envoy's rate-limit filters emit them (IETF draft 03).
fn ratelimit_headers(
    limit: u64,
    window_seconds: u64,
    remaining: u64,
    reset_seconds: u64,
) -> Vec<(String, String)> {
    vec![
        (
            "x-ratelimit-limit".into(),
            format!("{limit}, {limit};w={window_seconds}"),
        ),
        ("x-ratelimit-remaining".into(), remaining.to_string()),
        (
            "x-ratelimit-reset".into(),
            reset_seconds.min(u64::from(u32::MAX)).to_string(),
        ),
    ]
}

/// The highest multiplier of the bands whose threshold `value` exceeds.
fn band(bands: &[Band], value: u64) -> u64 {
    bands
        .iter()
        .filter(|b| value > b.above)
        .map(|b| u64::from(b.multiplier))
        .max()
        .unwrap_or(1)
}

/// `10.0.0.1:5555` -> `10.0.0.1`, `[::1]:5555` -> `::1`.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

#[cfg(test)]
mod tests;
