//! The rate-limit filter's decision: what a request costs, whose bucket
//! pays, and whether the local bucket or the global Rate Limit Service
//! decides.
//!
//! * Cost: the operation's price (read 1, write 2, complex query 5, graph
//!   traversal 10 by default), times payload-size, context-depth and
//!   header bands; an integer >= 1. The payload band comes from the body's
//!   `content-length`; a body of unknown length (chunked, HTTP/2 without
//!   `content-length`) is charged as it streams ([`BodyMeter`]).
//! * Key: the tenant (and optionally subject, operation, route) of the
//!   identity the auth filter put in Envoy filter state; never a header a
//!   client could set. No identity: the client address ([`crate::client`]),
//!   in a table of its own.
//! * Limits: from the token's `rate_limits` claim when allowed, else the
//!   tenant's override, else its tier; several limits may apply and every
//!   one must have room. Each keeps its own level ([`crate::bucket`]).
//! * Global: in `hierarchical` mode the local bucket decides alone while
//!   the tenant's known global usage is below `sync_threshold` of the RLS
//!   limit; from there on the RLS decides, and local admissions are
//!   reported to it in the background. In `always` mode the RLS decides
//!   every request. When the RLS fails or is late, `failure_mode` applies,
//!   and the usage the call carried is reported again later under the same
//!   report id ([`report`]), so the RLS counts it exactly once.
//! * Responses carry `x-ratelimit-*` for the one limit with the fewest
//!   units left among the local limits and the known global limit.

pub mod adaptive;
pub mod config;
pub mod report;
pub mod rls;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::bucket::{
    BucketTable, GlobalAccounting, GlobalView, LimitSpec, MILLI, TakeOutcome, Tightest, limit_id,
};
use crate::config::{ConfigError, parse_json};
use crate::contract::{Caller, MatchedOperation};
use crate::http::{BodySize, RequestHead};
use crate::operation::{OperationMap, OperationMatch};
use crate::record::RecordError;
use crate::reply::LocalReply;
use crate::shared::{Secret, SharedStore};
use config::{
    AdaptiveConfig, Band, Contention, Counts, FailureMode, GlobalConfig, GlobalMode, KeyPart,
    LimitConfig, RateLimitConfig,
};
use report::{Outbox, Report, ReportId};

/// Everything the decision needs to know about a request.
pub struct RequestFacts<'a> {
    pub head: RequestHead<'a>,
    pub identity: Option<Caller>,
    pub operation: Option<MatchedOperation>,
    /// The downstream address Envoy computed (`ip:port`).
    pub client_address: Option<String>,
    /// The route name, if the key includes the route.
    pub route: Option<String>,
    /// The request headers ended the stream: there is no body.
    pub end_of_stream: bool,
}

/// Why a request was refused, for the metric and the response details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The local bucket was full.
    LocalLimit,
    /// The RLS answered OVER_LIMIT.
    GlobalLimit,
    /// Too many requests in flight to the upstream.
    QueueFull,
    /// The bucket could not be updated (contention, or a slot that does
    /// not decode) and `on_contention` is `deny`.
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
    fn tighter(self, other: Option<LimitView>) -> LimitView {
        match other {
            Some(o) if (o.remaining, o.limit) < (self.remaining, self.limit) => o,
            _ => self,
        }
    }

    /// The IETF RateLimit header fields, draft 03 (as Envoy's own
    /// rate-limit filters send them): `x-ratelimit-limit: 600, 600;w=60`,
    /// `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds).
    pub fn headers(&self) -> Vec<(String, String)> {
        vec![
            (
                "x-ratelimit-limit".into(),
                format!("{0}, {0};w={1}", self.limit, self.window_seconds),
            ),
            ("x-ratelimit-remaining".into(), self.remaining.to_string()),
            (
                "x-ratelimit-reset".into(),
                self.reset_seconds.min(u64::from(u32::MAX)).to_string(),
            ),
        ]
    }

    fn of_global(view: &GlobalView, now_ms: u64) -> Option<LimitView> {
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reply: LocalReply,
    pub refusal: Refusal,
}

/// Which table a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Tenants,
    Anonymous,
}

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
    label: String,
    failure_mode: FailureMode,
    deny_status: u16,
    grpc: bool,
    head_request: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDecision {
    Allow(Admitted),
    Deny(Refused),
    AskRls(Box<RlsCall>),
}

/// The charge of a body whose size was unknown when the headers arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyMeter {
    table: Table,
    hash: u64,
    specs: Vec<LimitSpec>,
    windows: Vec<u64>,
    /// The request's cost with a payload multiplier of 1.
    unit_cost: u64,
    /// The payload multiplier already charged.
    charged: u64,
    received: u64,
    descriptor: Vec<(String, String)>,
    label: String,
    grpc: bool,
    head_request: bool,
}

/// What a body chunk was charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyCharge {
    /// Cost taken now (0: the chunk crossed no band).
    pub extra: u64,
    /// The limit view after the charge, when one was taken.
    pub view: Option<LimitView>,
}

/// Events metrics count, per worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// Dirty keys dropped because the set was full.
    pub dirty_overflow: u64,
    /// Entries replaced to make room for another key.
    pub evictions: u64,
    /// Bucket updates that ran out of CAS attempts.
    pub contended: u64,
    /// Shared-data records that did not decode.
    pub invalid_records: u64,
    /// Unreported usage lost with a replaced entry.
    pub lost_unreported: u64,
}

/// Per-worker mutable state.
pub struct LimiterState {
    /// Keys with consumption not yet reported to the RLS.
    pub dirty: HashMap<u64, Dirty>,
    pub adaptive: Option<adaptive::Adaptive>,
    pub counts: Events,
    /// Reports the RLS has not acknowledged.
    pub outbox: Outbox,
}

impl LimiterState {
    /// `reporter`: a random id for this worker VM (see [`report`]).
    pub fn new(limiter: &RateLimiter, reporter: u64) -> LimiterState {
        let (max_pending, max_age_ms) = limiter.global.as_ref().map_or((1, 1), |g| {
            (
                g.max_pending_reports,
                g.report_retry_seconds.saturating_mul(1000),
            )
        });
        LimiterState {
            dirty: HashMap::new(),
            adaptive: None,
            counts: Events::default(),
            outbox: Outbox::new(reporter, max_pending, max_age_ms),
        }
    }

    fn mark_dirty(&mut self, hash: u64, anonymous: bool, descriptor: &[(String, String)]) {
        if self.dirty.len() < MAX_DIRTY || self.dirty.contains_key(&hash) {
            self.dirty.entry(hash).or_insert_with(|| Dirty {
                anonymous,
                descriptor: descriptor.to_vec(),
            });
        } else {
            self.counts.dirty_overflow += 1;
        }
    }

    fn record_invalid(&mut self, error: RecordError) {
        self.counts.invalid_records += 1;
        log::warn!("rate-limit slot in shared data does not decode ({error}); left untouched");
    }
}

/// A key with consumption not yet reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirty {
    anonymous: bool,
    descriptor: Vec<(String, String)>,
}

/// Most keys a worker remembers as having unreported consumption.
const MAX_DIRTY: usize = 10_000;

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
    /// Buckets of verified identities.
    pub table: BucketTable,
    /// Buckets of anonymous clients.
    pub anonymous_table: BucketTable,
    pub adaptive: Option<AdaptiveConfig>,
    pub global: Option<GlobalConfig>,
    /// Prefix of this plugin's shared-data keys.
    pub namespace: String,
}

impl RateLimiter {
    /// Parses and compiles the plugin configuration. `namespace` prefixes
    /// every shared-data key (the plugin's name: stable across
    /// configuration pushes, unique per plugin); `secret` keys the slot
    /// hashing.
    pub fn from_json(
        json: &[u8],
        namespace: &str,
        secret: Secret,
    ) -> Result<RateLimiter, ConfigError> {
        RateLimiter::new(parse_json(json)?, namespace, secret)
    }

    pub fn new(
        config: RateLimitConfig,
        namespace: &str,
        secret: Secret,
    ) -> Result<RateLimiter, ConfigError> {
        config.validate()?;
        // Only needed when the auth filter did not classify the request.
        let operations = (!config.operations.is_empty())
            .then(|| OperationMap::compile(&config.operations))
            .transpose()?;
        let table = |name: &str, slots: u32| {
            BucketTable::new(
                &format!("{namespace}.{name}"),
                slots,
                config.ways,
                config.cas_attempts,
                secret,
            )
        };
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
            table: table("tenants", config.slots),
            anonymous_table: table("anonymous", config.anonymous.slots),
            anonymous: config.anonymous,
            tiers: config.tiers,
            tenants: config.tenants,
            default_tier: config.default_tier,
            use_token_limits: config.use_token_limits,
            max_token_limit: config.max_token_limit,
            on_contention: config.on_contention,
            response_headers: config.response_headers,
            adaptive: config.adaptive,
            global: config.global,
            namespace: namespace.to_owned(),
        })
    }

    /// Creates the shared-data keys. Call from `on_configure`.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        self.table.init_shared(store);
        self.anonymous_table.init_shared(store);
    }

    fn table(&self, table: Table) -> &BucketTable {
        match table {
            Table::Tenants => &self.table,
            Table::Anonymous => &self.anonymous_table,
        }
    }

    fn table_of(&self, anonymous: bool) -> &BucketTable {
        if anonymous {
            &self.anonymous_table
        } else {
            &self.table
        }
    }

    /// Does the bucket key include the route (so the glue must look it up)?
    pub fn keys_by_route(&self) -> bool {
        self.key.contains(&KeyPart::Route)
    }

    /// The cost of a request with a payload multiplier of 1, and the
    /// payload multiplier known from the headers.
    fn costs(&self, facts: &RequestFacts<'_>, operation: Option<&MatchedOperation>) -> (u64, u64) {
        let base = operation
            .and_then(|op| self.costs.get(&op.name))
            .copied()
            .unwrap_or(self.default_cost);
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
        let unit = base
            .saturating_mul(depth.map_or(1, |d| band(&self.depth_bands, d)))
            .saturating_mul(header.unwrap_or(1))
            .max(1);
        let payload = match BodySize::of(&facts.head, facts.end_of_stream) {
            BodySize::Known(length) => band(&self.payload_bands, length),
            BodySize::Empty | BodySize::Unknown => 1,
        };
        (unit, payload)
    }

    /// The cost of a request, in read-equivalents (>= 1), as far as the
    /// headers tell.
    pub fn cost(&self, facts: &RequestFacts<'_>, operation: Option<&MatchedOperation>) -> u64 {
        let (unit, payload) = self.costs(facts, operation);
        unit.saturating_mul(payload)
    }

    fn operation(&self, facts: &RequestFacts<'_>) -> Option<MatchedOperation> {
        if let Some(op) = &facts.operation {
            return Some(op.clone());
        }
        match self
            .operations
            .as_ref()?
            .lookup_raw(facts.head.method, facts.head.path)
        {
            OperationMatch::Matched(op) => Some(MatchedOperation::from(&op)),
            _ => None,
        }
    }

    /// The bucket table, key, RLS descriptor and a label for messages.
    fn key(
        &self,
        facts: &RequestFacts<'_>,
        operation: Option<&MatchedOperation>,
    ) -> (Table, String, Vec<(String, String)>, String) {
        let Some(identity) = &facts.identity else {
            let forwarded_for: Vec<&str> = facts
                .head
                .header_values("x-forwarded-for")
                .filter_map(|v| std::str::from_utf8(v).ok())
                .collect();
            let forwarded_for = (!forwarded_for.is_empty()).then(|| forwarded_for.join(","));
            let client = self
                .anonymous
                .client
                .key(facts.client_address.as_deref(), forwarded_for.as_deref());
            let descriptor = vec![("client".to_owned(), client.clone())];
            return (
                Table::Anonymous,
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
        (
            Table::Tenants,
            key,
            descriptor,
            format!("tenant {}", identity.tenant),
        )
    }

    fn limits(&self, identity: Option<&Caller>, multiplier: f64) -> Limits<'_> {
        let configs = self.limit_configs(identity);
        let specs = configs
            .iter()
            .map(|l| {
                let capacity = l.burst.unwrap_or(l.limit);
                let scaled = |v: u64| ((v as f64) * multiplier).round().max(1.0) as u64;
                LimitSpec {
                    id: limit_id(&l.name),
                    capacity: scaled(capacity.saturating_mul(MILLI)),
                    refill: scaled(l.limit.saturating_mul(MILLI)),
                    period_ms: l.window_seconds.saturating_mul(1000),
                    counts_cost: l.counts == Counts::Cost,
                }
            })
            .collect();
        Limits { specs, configs }
    }

    fn limit_configs(&self, identity: Option<&Caller>) -> Cow<'_, [LimitConfig]> {
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

    /// The local view of the tightest limit, combined with the known
    /// global one.
    fn view(
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
            return LocalDecision::Deny(Refused {
                reply,
                refusal: Refusal::QueueFull,
            });
        }
        let operation = self.operation(facts);
        let (unit_cost, payload) = self.costs(facts, operation.as_ref());
        let cost = unit_cost.saturating_mul(payload);
        let (table, key, descriptor, label) = self.key(facts, operation.as_ref());
        let hash = self.table(table).hash_key(&key);
        let multiplier = state
            .adaptive
            .as_ref()
            .map_or(1.0, adaptive::Adaptive::multiplier);
        let limits = self.limits(facts.identity.as_ref(), multiplier);

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
        match &self.global {
            Some(g) if take.ask_rls => {
                let hits = cost.saturating_add(claimed);
                let report = Report {
                    id: state.outbox.next_id(),
                    key_hash: hash,
                    anonymous: table == Table::Anonymous,
                    message: rls::encode_request(&g.domain, &descriptor, hits),
                    descriptor,
                    hits,
                    created_ms: now_ms,
                };
                LocalDecision::AskRls(Box::new(RlsCall {
                    report,
                    cluster: g.cluster.clone(),
                    timeout_ms: g.timeout_ms,
                    cost,
                    local: admitted,
                    label,
                    failure_mode: g.failure_mode,
                    deny_status: g.deny_status,
                    grpc: request.is_grpc(),
                    head_request: request.is_head(),
                }))
            }
            Some(_) => {
                state.mark_dirty(hash, table == Table::Anonymous, &descriptor);
                LocalDecision::Allow(admitted)
            }
            None => LocalDecision::Allow(admitted),
        }
    }

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
        let retry = take.tightest.reset_seconds.clamp(1, 86_400);
        let body = json!({
            "error": "rate_limited",
            "message": format!(
                "{} cannot pay for a body of {} bytes and more: it costs {} read-equivalents more",
                meter.label, meter.received, extra
            ),
            "cost": extra,
            "retry_after_seconds": retry,
        });
        let mut headers = vec![("retry-after".to_owned(), retry.to_string())];
        headers.push(("content-type".into(), "application/json".into()));
        Err(Refused {
            reply: LocalReply {
                status: 429,
                headers,
                body: if meter.head_request {
                    Vec::new()
                } else {
                    body.to_string().into_bytes()
                },
                grpc_status: meter.grpc.then_some(8),
                details: "ctxgate_ratelimit_refused{local_limit}".into(),
            },
            refusal: Refusal::LocalLimit,
        })
    }

    /// Applies an RLS answer to a pending request.
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
        let limit = answer.limit.unwrap_or(0);
        let window = answer.window_seconds.unwrap_or(60);
        let reset = answer.reset_in_ms.map_or(window, |ms| ms.div_ceil(1000));
        let global = answer.limit.map(|limit| LimitView {
            limit,
            window_seconds: window,
            remaining: answer.remaining,
            reset_seconds: reset,
        });
        let view = call.local.view.map(|local| local.tighter(global));
        if !answer.over_limit {
            return Ok(Admitted {
                view,
                cost: call.cost,
                decided_by: DecidedBy::Rls,
                meter: call.local.meter.clone(),
            });
        }
        let body = json!({
            "error": "rate_limited",
            "message": format!("{} exceeded its global limit of {limit} per {window} s", call.label),
            "limit": {"scope": "global", "limit": limit, "window_seconds": window},
            "cost": call.cost,
            "retry_after_seconds": reset,
        });
        let mut headers = if self.response_headers {
            global.map(|g| g.headers()).unwrap_or_default()
        } else {
            Vec::new()
        };
        headers.push(("retry-after".into(), reset.max(1).to_string()));
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
        state: &mut LimiterState,
        store: &dyn SharedStore,
        report: &Report,
        answer: &rls::RlsAnswer,
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
        if let Err(e) = self
            .table_of(report.anonymous)
            .learn_global(store, report.key_hash, view)
        {
            state.record_invalid(e);
        }
    }

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
                    message: rls::encode_request(&g.domain, &key.descriptor, hits),
                    descriptor: key.descriptor,
                    hits,
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

    /// 429 for a key the RLS reported over its limit, answered locally.
    fn global_refusal_reply(
        &self,
        request: &RequestHead<'_>,
        label: &str,
        view: &GlobalView,
        cost: u64,
        now_ms: u64,
    ) -> LocalReply {
        let reset = view.reset_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
        let limit = view.limit;
        let mut headers = if self.response_headers {
            LimitView {
                limit,
                window_seconds: reset,
                remaining: 0,
                reset_seconds: reset,
            }
            .headers()
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

    fn refusal_reply(
        &self,
        request: &RequestHead<'_>,
        label: &str,
        limits: &Limits,
        tightest: &Tightest,
        cost: u64,
        view: Option<LimitView>,
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
        let mut headers = view.map(|v| v.headers()).unwrap_or_default();
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

fn contention_refusal(request: &RequestHead<'_>) -> Refused {
    let body =
        json!({"error": "rate_limited", "message": "the rate limiter is saturated; retry shortly"});
    let mut reply = LocalReply::json_error(
        request,
        429,
        &body,
        vec![("retry-after".into(), "1".into())],
        "ctxgate_ratelimit_refused{contention}".into(),
    );
    reply.grpc_status = reply.grpc_status.map(|_| 8);
    Refused {
        reply,
        refusal: Refusal::Contention,
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

/// The highest multiplier of the bands whose threshold `value` exceeds.
fn band(bands: &[Band], value: u64) -> u64 {
    bands
        .iter()
        .filter(|b| value > b.above)
        .map(|b| u64::from(b.multiplier))
        .max()
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
