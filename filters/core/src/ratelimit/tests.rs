//! The rate-limit decision in plain Rust, on an in-memory shared store.

use serde_json::{Value, json};

use super::config::FailureMode;
use super::*;
use crate::bucket::MILLI;
use crate::contract::{Caller, MatchedOperation, RateLimitClaims};
use crate::http::RequestHead;
use crate::shared::{MemoryStore, Secret, SharedStore};

const NOW: u64 = 1_800_000_000_000;
const SECRET: Secret = Secret::from_bytes([3; 16]);

fn limiter(extra: Value) -> RateLimiter {
    let mut config = json!({
        "tiers": {
            "anonymous": [{"name": "per_minute", "limit": 5, "window_seconds": 60}],
            "standard": [{"name": "per_minute", "limit": 100, "window_seconds": 60}],
            "premium": [{"name": "per_minute", "limit": 1000, "window_seconds": 60}]
        },
        "slots": 64
    });
    if let (Some(target), Value::Object(extra)) = (config.as_object_mut(), extra) {
        target.extend(extra);
    }

    RateLimiter::from_json(config.to_string().as_bytes(), "t", SECRET).unwrap()
}

fn identity(tenant: &str, tier: &str) -> Caller {
    Caller {
        tenant: tenant.into(),
        subject: "alice".into(),
        tier: tier.into(),
        issuer: "iss".into(),
        actors: vec![],
        rate_limits: None,
        claims: Default::default(),
        ..Caller::default()
    }
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: crate::headers::Headers,
    identity: Option<Caller>,
    operation: Option<&'static str>,
    client: Option<&'static str>,
    end_of_stream: bool,
}

fn req(identity: Option<Caller>, operation: Option<&'static str>) -> Req {
    Req {
        method: "GET",
        path: "/v1/contexts/projects/a",
        headers: crate::headers::Headers::new(),
        identity,
        operation,
        client: Some("10.0.0.7:5123"),
        end_of_stream: true,
    }
}

impl Req {
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push(name, value.as_bytes());
        self
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            head: RequestHead {
                method: self.method,
                path: self.path,
                headers: &self.headers,
            },
            identity: self.identity.clone().map(std::sync::Arc::new),
            operation: self.operation.map(|name| {
                std::sync::Arc::new(MatchedOperation {
                    name: name.into(),
                    action: "read".into(),
                    context: "projects/a".into(),
                    target: None,
                })
            }),
            client_address: self.client.map(str::to_owned),
            route: None,
            end_of_stream: self.end_of_stream,
            price: None,
        }
    }
}

fn check(
    l: &RateLimiter,
    state: &mut LimiterState,
    store: &MemoryStore,
    r: &Req,
    now: u64,
) -> LocalDecision {
    l.check(state, store, &r.facts(), now)
}

fn admitted(step: &LocalDecision) -> &Admitted {
    match step {
        LocalDecision::Allow(a) => a,
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn refused(step: &LocalDecision) -> &Refused {
    match step {
        LocalDecision::Deny(r) => r,
        other => panic!("expected Deny, got {other:?}"),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn setup(extra: Value) -> (RateLimiter, LimiterState, MemoryStore) {
    let l = limiter(extra);
    let store = MemoryStore::default();
    l.init_shared(&store);
    let state = LimiterState::new(&l, 0x5eed);
    (l, state, store)
}

#[test]
fn operations_are_priced() {
    let (l, _, _) = setup(json!({}));
    let cost = |op: Option<&'static str>, headers: &[(&str, &str)]| {
        let mut r = req(Some(identity("acme", "standard")), op);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let facts = r.facts();
        l.cost(&facts, facts.operation.as_deref())
    };
    assert_eq!(cost(Some("read"), &[]), 1);
    assert_eq!(cost(Some("write"), &[]), 2);
    assert_eq!(cost(Some("complex_query"), &[]), 5);
    assert_eq!(cost(Some("graph_traversal"), &[]), 10);
    assert_eq!(cost(Some("unknown"), &[]), 1);
    assert_eq!(cost(None, &[]), 1);
    assert_eq!(
        cost(Some("write"), &[("content-length", "200000")]),
        2,
        "no body"
    );
    let body_cost = |length: &str| {
        let mut r =
            req(Some(identity("acme", "standard")), Some("write")).header("content-length", length);
        r.end_of_stream = false;
        let facts = r.facts();
        l.cost(&facts, facts.operation.as_deref())
    };
    assert_eq!(body_cost("200000"), 4);
    assert_eq!(body_cost("2000000"), 8);
    assert_eq!(
        body_cost("junk"),
        2,
        "unknown length: charged as it streams"
    );
}

#[test]
fn depth_and_header_bands_apply_when_configured() {
    let (l, _, _) = setup(json!({
        "depth_bands": [{"above": 1, "multiplier": 3}],
        "header_factor": {"header": "x-context-fanout", "bands": [{"above": 100, "multiplier": 2}]}
    }));
    let r = req(Some(identity("acme", "standard")), Some("read")).header("x-context-fanout", "500");
    let facts = r.facts();
    assert_eq!(
        l.cost(&facts, facts.operation.as_deref()),
        6,
        "depth 2 > 1 (x3) and fan-out 500 > 100 (x2)"
    );
}

#[test]
fn n_requests_of_cost_c_consume_exactly_n_times_c() {
    let (l, mut state, store) = setup(json!({}));
    let r = req(Some(identity("acme", "standard")), Some("graph_traversal"));
    for _ in 0..7 {
        admitted(&check(&l, &mut state, &store, &r, NOW));
    }
    let limits = l.limits(r.identity.as_ref(), 1.0);
    let hash = l.table.hash_key("tenant=acme|");
    assert_eq!(
        l.table.peek(&store, hash, &limits.specs, NOW),
        Some(vec![30])
    );
    for _ in 0..3 {
        admitted(&check(&l, &mut state, &store, &r, NOW));
    }
    let step = check(&l, &mut state, &store, &r, NOW);
    let refusal = refused(&step);
    assert_eq!(refusal.refusal, Refusal::LocalLimit);
    assert_eq!(refusal.reply.status, 429);
    assert_eq!(
        header(&refusal.reply.headers, "x-ratelimit-remaining"),
        Some("0")
    );
    assert_eq!(
        header(&refusal.reply.headers, "x-ratelimit-limit"),
        Some("100, 100;w=60")
    );
}

#[test]
fn refusals_name_the_limit_and_wait() {
    let (l, mut state, store) = setup(json!({}));
    let r = req(Some(identity("acme", "standard")), Some("graph_traversal"));
    for _ in 0..10 {
        admitted(&check(&l, &mut state, &store, &r, NOW));
    }
    let step = check(&l, &mut state, &store, &r, NOW);
    let refusal = refused(&step);
    // Empty bucket of 100/min: 10 tokens take 6 s.
    assert_eq!(header(&refusal.reply.headers, "retry-after"), Some("6"));
    let body: Value = serde_json::from_slice(&refusal.reply.body).unwrap();
    assert_eq!(body["limit"]["name"], "per_minute");
    assert_eq!(body["cost"], 10);
    assert!(body["message"].as_str().unwrap().contains("tenant acme"));
    assert_eq!(
        refusal.reply.details,
        "ctxgate_ratelimit_refused{local_limit}"
    );
}

#[test]
fn tenants_are_charged_by_identity_never_by_header() {
    let (l, mut state, store) = setup(json!({}));
    let mallory = req(
        Some(identity("mallory", "standard")),
        Some("graph_traversal"),
    )
    .header("x-context-tenant", "acme");
    for _ in 0..10 {
        admitted(&check(&l, &mut state, &store, &mallory, NOW));
    }
    refused(&check(&l, &mut state, &store, &mallory, NOW));
    let acme = req(Some(identity("acme", "standard")), Some("graph_traversal"));
    admitted(&check(&l, &mut state, &store, &acme, NOW));
}

#[test]
fn anonymous_clients_are_keyed_by_address() {
    let (l, mut state, store) = setup(json!({}));
    let a = req(None, None);
    for _ in 0..5 {
        admitted(&check(&l, &mut state, &store, &a, NOW));
    }
    refused(&check(&l, &mut state, &store, &a, NOW));
    let mut b = req(None, None);
    b.client = Some("10.0.0.8:1");
    admitted(&check(&l, &mut state, &store, &b, NOW));
    // A forged X-Forwarded-For does not make a new client.
    let forged = req(None, None).header("x-forwarded-for", "1.2.3.4");
    refused(&check(&l, &mut state, &store, &forged, NOW));
    // Anonymous buckets live in their own table.
    let acme = req(Some(identity("acme", "standard")), Some("read"));
    admitted(&check(&l, &mut state, &store, &acme, NOW));
    let anon_hash = l.anonymous_table.hash_key("anon|10.0.0.7");
    assert!(l.anonymous_table.global_view(&store, anon_hash).is_some());
    assert!(l.table.global_view(&store, anon_hash).is_none());
}

#[test]
fn behind_trusted_proxies_the_client_is_read_from_the_right() {
    let (l, mut state, store) = setup(json!({
        "anonymous": {"client": {"source": "forwarded_for", "trusted_hops": 1}}
    }));
    let from = |xff: &'static str| {
        let mut r = req(None, None).header("x-forwarded-for", xff);
        r.client = Some("10.0.0.1:1");
        r
    };
    for _ in 0..5 {
        admitted(&check(
            &l,
            &mut state,
            &store,
            &from("6.6.6.1, 203.0.113.5"),
            NOW,
        ));
    }
    // The client varies the part it controls: still the same client.
    refused(&check(
        &l,
        &mut state,
        &store,
        &from("6.6.6.2, 203.0.113.5"),
        NOW,
    ));
    admitted(&check(
        &l,
        &mut state,
        &store,
        &from("6.6.6.1, 203.0.113.6"),
        NOW,
    ));
}

#[test]
fn ipv6_clients_share_their_prefix() {
    let (l, mut state, store) = setup(json!({}));
    let from = |address: &'static str| {
        let mut r = req(None, None);
        r.client = Some(address);
        r
    };
    for i in 0..5 {
        let address = [
            "[2001:db8::1]:1",
            "[2001:db8::2]:1",
            "[2001:db8::3]:1",
            "[2001:db8::4]:1",
            "[2001:db8::5]:1",
        ][i];
        admitted(&check(&l, &mut state, &store, &from(address), NOW));
    }
    refused(&check(
        &l,
        &mut state,
        &store,
        &from("[2001:db8::ffff]:9"),
        NOW,
    ));
    admitted(&check(
        &l,
        &mut state,
        &store,
        &from("[2001:db8:0:1::1]:9"),
        NOW,
    ));
}

#[test]
fn limits_come_from_claims_tenants_and_tiers() {
    let (l, _, _) = setup(json!({
        "use_token_limits": true,
        "tenants": {"globex": {"tier": "premium"}, "initech": {"limits": [{"name": "tiny", "limit": 2, "window_seconds": 1}]}}
    }));
    let capacity = |id: Caller| {
        l.limits(Some(&id), 1.0)
            .specs
            .iter()
            .map(|s| s.capacity / MILLI)
            .collect::<Vec<_>>()
    };
    assert_eq!(capacity(identity("acme", "standard")), vec![100]);
    assert_eq!(
        capacity(identity("acme", "no-such-tier")),
        vec![100],
        "unknown tiers fall back to the default"
    );
    assert_eq!(capacity(identity("globex", "standard")), vec![1000]);
    assert_eq!(capacity(identity("initech", "premium")), vec![2]);
    let mut claimed = identity("acme", "standard");
    claimed.rate_limits = Some(RateLimitClaims {
        tier: None,
        requests_per_minute: Some(30),
        context_operations_per_hour: Some(500),
    });
    assert_eq!(capacity(claimed), vec![30, 500]);
    let (l, _, _) = setup(json!({}));
    let mut claimed = identity("acme", "standard");
    claimed.rate_limits = Some(RateLimitClaims {
        tier: None,
        requests_per_minute: Some(30),
        context_operations_per_hour: None,
    });
    assert_eq!(
        l.limits(Some(&claimed), 1.0).specs[0].capacity / MILLI,
        100,
        "claims ignored unless allowed"
    );
}

#[test]
fn another_token_of_the_same_tenant_does_not_refill_its_bucket() {
    let (l, mut state, store) = setup(json!({"use_token_limits": true}));
    let with_rpm = |rpm: u64| {
        let mut id = identity("acme", "standard");
        id.rate_limits = Some(RateLimitClaims {
            tier: None,
            requests_per_minute: Some(rpm),
            context_operations_per_hour: None,
        });
        req(Some(id), Some("read"))
    };
    for _ in 0..10 {
        admitted(&check(&l, &mut state, &store, &with_rpm(10), NOW));
    }
    refused(&check(&l, &mut state, &store, &with_rpm(10), NOW));
    // A token claiming 11: one more request, not a fresh bucket.
    admitted(&check(&l, &mut state, &store, &with_rpm(11), NOW));
    refused(&check(&l, &mut state, &store, &with_rpm(11), NOW));
    // A token with no claim falls back to the tier's limit, a separate
    // bucket level of its own (per_minute), which was never used.
    let tier = req(Some(identity("acme", "standard")), Some("read"));
    admitted(&check(&l, &mut state, &store, &tier, NOW));
    // And back: the claimed limit's level is still there.
    refused(&check(&l, &mut state, &store, &with_rpm(11), NOW));
}

#[test]
fn a_body_of_unknown_length_is_charged_as_it_streams() {
    let (l, mut state, store) = setup(json!({
        "payload_bands": [{"above": 1000, "multiplier": 3}, {"above": 5000, "multiplier": 10}]
    }));
    let mut r = req(Some(identity("acme", "standard")), Some("write"));
    r.method = "POST";
    r.end_of_stream = false;
    let step = check(&l, &mut state, &store, &r, NOW);
    let mut meter = admitted(&step).meter.clone().expect("unknown length");
    assert_eq!(admitted(&step).cost, 2);
    let hash = l.table.hash_key("tenant=acme|");
    let specs = l.limits(r.identity.as_ref(), 1.0).specs;
    assert_eq!(l.table.peek(&store, hash, &specs, NOW), Some(vec![98]));
    assert_eq!(
        l.on_body(&mut state, &store, &mut meter, 800, NOW),
        Ok(BodyCharge::default())
    );
    let charge = l.on_body(&mut state, &store, &mut meter, 800, NOW).unwrap();
    assert_eq!(charge.extra, 4, "x3: 4 more");
    assert_eq!(charge.view.map(|v| v.remaining), Some(94));
    assert_eq!(l.table.peek(&store, hash, &specs, NOW), Some(vec![94]));
    l.on_body(&mut state, &store, &mut meter, 10_000, NOW)
        .unwrap();
    assert_eq!(
        l.table.peek(&store, hash, &specs, NOW),
        Some(vec![80]),
        "x10: 14 more"
    );
    // A body the bucket cannot pay for is refused mid-stream.
    let mut big = r.facts();
    big.identity = Some(std::sync::Arc::new(identity("initech", "anonymous")));
    let LocalDecision::Allow(a) = l.check(&mut state, &store, &big, NOW) else {
        panic!()
    };
    let mut meter = a.meter.unwrap();
    let refusal = l
        .on_body(&mut state, &store, &mut meter, 1_000_000, NOW)
        .unwrap_err();
    assert_eq!(refusal.reply.status, 429);
    assert_eq!(refusal.refusal, Refusal::LocalLimit);
    // A body of known length is charged up front, and not metered.
    let mut known =
        req(Some(identity("acme", "standard")), Some("write")).header("content-length", "6000");
    known.end_of_stream = false;
    let step = check(&l, &mut state, &store, &known, NOW);
    assert_eq!(admitted(&step).cost, 20);
    assert!(admitted(&step).meter.is_none());
}

#[test]
fn the_adaptive_multiplier_shrinks_limits() {
    let (l, _, _) = setup(json!({}));
    let specs = l.limits(Some(&identity("acme", "standard")), 0.6).specs;
    assert_eq!(specs[0].capacity, 60 * MILLI);
}

fn hierarchical() -> Value {
    json!({"global": {"cluster": "rls", "domain": "ctxgate", "sync_threshold": 0.8}})
}

fn answer(over: bool, limit: u64, remaining: u64) -> rls::RlsAnswer {
    rls::RlsAnswer {
        first: descriptor_answer(over, limit, remaining),
        second: None,
    }
}

fn descriptor_answer(over: bool, limit: u64, remaining: u64) -> rls::DescriptorAnswer {
    rls::DescriptorAnswer {
        over_limit: over,
        limit: Some(limit),
        window_seconds: Some(60),
        remaining,
        reset_in_ms: Some(30_000),
    }
}

#[test]
fn hierarchical_mode_goes_local_below_the_threshold_and_global_above() {
    let (l, mut state, store) =
        setup(json!({"global": {"cluster": "rls", "sync_threshold": 0.8, "gateways": 1}}));
    let r = req(Some(identity("acme", "premium")), Some("read"));
    // Nothing known yet: the RLS decides.
    let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
        panic!()
    };
    assert_eq!(
        call.report.descriptor,
        vec![("tenant".to_owned(), "acme".to_owned())]
    );
    let admitted = l
        .on_rls_answer(&mut state, &store, &call, &answer(false, 100, 99), NOW)
        .unwrap();
    assert_eq!(admitted.decided_by, DecidedBy::Rls);
    assert_eq!(
        header(&admitted.response_headers(), "x-ratelimit-remaining"),
        Some("99")
    );
    // Known usage 1/100: local, until this gateway's unreported consumption
    // reaches its budget, (1 - 0.8) / 1 gateway of the limit = 20.
    for _ in 0..20 {
        assert_eq!(admitted_local(&l, &mut state, &store, &r), DecidedBy::Local);
    }
    let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
        panic!("budget used")
    };
    assert_eq!(
        call.report.hits, 21,
        "local admissions travel with the next global question"
    );
    let message =
        <rls::RateLimitRequest as prost::Message>::decode(call.report.message.as_slice()).unwrap();
    assert_eq!(message.hits_addend, 21);
    // Another gateway has been busy: the RLS count is 75 now.
    l.on_rls_answer(&mut state, &store, &call, &answer(false, 100, 25), NOW)
        .unwrap();
    for _ in 0..4 {
        assert_eq!(admitted_local(&l, &mut state, &store, &r), DecidedBy::Local);
    }
    let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
        panic!("80/100 reached")
    };
    let over = l
        .on_rls_answer(&mut state, &store, &call, &answer(true, 100, 0), NOW)
        .unwrap_err();
    assert_eq!(over.refusal, Refusal::GlobalLimit);
    assert_eq!(over.reply.status, 429);
    // Over the limit for the rest of the window: refused without asking.
    let step = check(&l, &mut state, &store, &r, NOW);
    let refusal = refused(&step);
    assert_eq!(refusal.refusal, Refusal::GlobalLimit);
    assert_eq!(header(&refusal.reply.headers, "retry-after"), Some("30"));
    // A new window: the RLS decides again.
    assert!(matches!(
        check(&l, &mut state, &store, &r, NOW + 30_000),
        LocalDecision::AskRls(_)
    ));
}

#[test]
fn the_countdown_is_monotonic_across_local_and_global_decisions() {
    // Local: 600 per minute. Global: 1200, of which others used 40.
    let (l, mut state, store) = setup(json!({
        "tiers": {
            "anonymous": [{"name": "per_minute", "limit": 5, "window_seconds": 60}],
            "standard": [{"name": "per_minute", "limit": 600, "window_seconds": 60}]
        },
        "global": {"cluster": "rls", "sync_threshold": 0.8, "gateways": 1}
    }));
    let r = req(Some(identity("acme", "standard")), Some("graph_traversal"));
    let mut rls_used = 40;
    let mut last = u64::MAX;
    let mut decided = std::collections::BTreeSet::new();
    for i in 0..55 {
        let admitted = match check(&l, &mut state, &store, &r, NOW + i) {
            LocalDecision::Allow(a) => a,
            LocalDecision::AskRls(call) => {
                rls_used += call.report.hits;
                let answer = answer(false, 1200, 1200 - rls_used);
                l.on_rls_answer(&mut state, &store, &call, &answer, NOW + i)
                    .unwrap()
            }
            LocalDecision::Deny(r) => panic!("{r:?}"),
        };
        decided.insert(format!("{:?}", admitted.decided_by));
        let remaining: u64 = header(&admitted.response_headers(), "x-ratelimit-remaining")
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining < last, "request {i}: {remaining} after {last}");
        last = remaining;
    }
    assert_eq!(
        decided.len(),
        2,
        "both local and RLS decisions: {decided:?}"
    );
}

#[test]
fn more_gateways_mean_smaller_local_budgets() {
    let (l, mut state, store) =
        setup(json!({"global": {"cluster": "rls", "sync_threshold": 0.8, "gateways": 4}}));
    let r = req(Some(identity("acme", "premium")), Some("read"));
    let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
        panic!()
    };
    l.on_rls_answer(&mut state, &store, &call, &answer(false, 1000, 999), NOW)
        .unwrap();
    // (1 - 0.8) / 4 of 1000 = 50.
    for _ in 0..50 {
        assert_eq!(admitted_local(&l, &mut state, &store, &r), DecidedBy::Local);
    }
    assert!(matches!(
        check(&l, &mut state, &store, &r, NOW),
        LocalDecision::AskRls(_)
    ));
}

fn admitted_local(
    l: &RateLimiter,
    state: &mut LimiterState,
    store: &MemoryStore,
    r: &Req,
) -> DecidedBy {
    admitted(&check(l, state, store, r, NOW)).decided_by
}

#[test]
fn local_admissions_are_reported_once_and_a_failed_report_is_resent_unchanged() {
    let (l, mut state, store) = setup(hierarchical());
    let r = req(Some(identity("acme", "premium")), Some("write"));
    let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
        panic!()
    };
    l.on_rls_answer(&mut state, &store, &call, &answer(false, 1000, 998), NOW)
        .unwrap();
    for _ in 0..5 {
        admitted_local(&l, &mut state, &store, &r);
    }
    let reports = l.sync_reports(&mut state, &store, NOW);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].hits, 10);
    assert!(
        l.sync_reports(&mut state, &store, NOW).is_empty(),
        "in flight: not sent twice at once"
    );
    let first = reports[0].clone();
    l.on_sync_failure(&mut state, first.id);
    // More usage meanwhile: it waits in the bucket, the failed report is
    // sent again as it was (same id: the RLS counts it once).
    admitted_local(&l, &mut state, &store, &r);
    let reports = l.sync_reports(&mut state, &store, NOW + 200);
    assert_eq!(reports, vec![first.clone()]);
    l.on_sync_answer(&mut state, &store, &first, &answer(false, 1000, 900), NOW);
    let view = l.table.global_view(&store, first.key_hash).unwrap();
    assert_eq!(view.used, 102, "the RLS count, plus what waits");
    let reports = l.sync_reports(&mut state, &store, NOW + 400);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].hits, 2);
    assert_ne!(reports[0].id, first.id);
    assert!(
        reports[0].message != first.message || reports[0].hits != first.hits,
        "a new report"
    );
}

#[test]
fn failure_modes_keep_the_failed_call_s_report_for_a_retry() {
    for (mode, expect) in [
        (
            "local_fallback",
            Some(DecidedBy::Fallback(FailureMode::LocalFallback)),
        ),
        ("allow", Some(DecidedBy::Fallback(FailureMode::Allow))),
        ("deny", None),
    ] {
        let (l, mut state, store) =
            setup(json!({"global": {"cluster": "rls", "failure_mode": mode, "deny_status": 503}}));
        let r = req(Some(identity("acme", "premium")), Some("graph_traversal"));
        let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
            panic!()
        };
        match (l.on_rls_failure(&mut state, &call), expect) {
            (Ok(a), Some(by)) => assert_eq!(a.decided_by, by, "{mode}"),
            (Err(refused), None) => {
                assert_eq!(refused.reply.status, 503);
                assert_eq!(refused.refusal, Refusal::RlsUnavailable);
            }
            (other, _) => panic!("{mode}: {other:?}"),
        }
        // The request's own cost is reported later, under the same id.
        let retry = l.sync_reports(&mut state, &store, NOW + 200);
        assert_eq!(retry, vec![call.report.clone()], "{mode}");
        assert_eq!(retry[0].hits, 10);
    }
}

#[test]
fn local_fallback_still_refuses_what_the_local_bucket_refuses() {
    let (l, mut state, store) = setup(json!({"global": {"cluster": "rls", "mode": "always"}}));
    let r = req(Some(identity("acme", "standard")), Some("graph_traversal"));
    for _ in 0..10 {
        let LocalDecision::AskRls(call) = check(&l, &mut state, &store, &r, NOW) else {
            panic!()
        };
        l.on_rls_failure(&mut state, &call).unwrap();
    }
    assert_eq!(
        refused(&check(&l, &mut state, &store, &r, NOW)).refusal,
        Refusal::LocalLimit
    );
    assert_eq!(state.outbox.len(), 10);
}

#[test]
fn a_bucket_slot_that_does_not_decode_is_counted_not_reset() {
    let (l, mut state, store) = setup(json!({"on_contention": "deny", "slots": 1}));
    store.set("t.tenants.slot.0", b"garbage", None).unwrap();
    let r = req(Some(identity("acme", "standard")), Some("read"));
    let refusal = refused(&check(&l, &mut state, &store, &r, NOW)).clone();
    assert_eq!(refusal.refusal, Refusal::Contention);
    assert_eq!(state.counts.invalid_records, 1);
    assert_eq!(store.get("t.tenants.slot.0").unwrap().0, b"garbage");
}

#[test]
fn bad_configuration_names_the_field() {
    let err = |extra: Value| {
        let mut config = json!({});
        if let (Some(t), Value::Object(e)) = (config.as_object_mut(), extra) {
            t.extend(e);
        }
        RateLimiter::from_json(config.to_string().as_bytes(), "t", SECRET)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(json!({"costs": {"read": 0}})).starts_with("costs.read"));
    assert!(
        err(json!({"tiers": {"standard": [{"name": "m", "limit": 0, "window_seconds": 60}]}}))
            .contains("limit")
    );
    assert!(err(json!({"default_tier": "gold"})).contains("gold"));
    assert!(err(json!({"tenants": {"a": {"tier": "gold"}}})).starts_with("tenants.a.tier"));
    assert!(
        err(json!({"global": {"cluster": "rls", "sync_threshold": 1.5}}))
            .starts_with("global.sync_threshold")
    );
    assert!(err(json!({"key": ["tenant", "planet"]})).starts_with("key"));
    assert!(err(json!({"bogus": true})).contains("bogus"));
}

/// The RLS question a decision asks; panics (with `why`) otherwise.
fn asked(step: LocalDecision, why: &str) -> Box<RlsCall> {
    match step {
        LocalDecision::AskRls(call) => call,
        other => panic!("{why}: expected AskRls, got {other:?}"),
    }
}

/// The descriptors of an RLS call's message, with their own hits.
fn sent(call: &RlsCall) -> Vec<(rls::Entries, Option<u64>)> {
    let message =
        <rls::RateLimitRequest as prost::Message>::decode(call.report.message.as_slice()).unwrap();
    message
        .descriptors
        .iter()
        .map(|d| {
            let entries = d.entries.iter().map(|e| (e.key.clone(), e.value.clone()));
            (entries.collect(), d.hits_addend.as_ref().map(|h| h.value))
        })
        .collect()
}

fn mcp_call_facts<'a>(r: &'a Req, tool: &str, price: u64) -> RequestFacts<'a> {
    let mut facts = r.facts();
    facts.operation = Some(std::sync::Arc::new(MatchedOperation {
        name: "mcp:tools/call".into(),
        action: "write".into(),
        context: "projects/a".into(),
        target: Some(tool.into()),
    }));
    facts.price = Some(price);
    facts
}

#[test]
fn an_mcp_call_is_limited_per_tool_through_the_rls_like_a_tenant() {
    let (l, mut state, store) =
        setup(json!({"global": {"cluster": "rls", "sync_threshold": 0.8, "gateways": 1}}));
    let rest = req(Some(identity("acme", "premium")), Some("read"));
    let mcp = req(Some(identity("acme", "premium")), None);
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let tool_descriptor = vec![
        pair("tenant", "acme"),
        pair("mcp_method", "tools/call"),
        pair("mcp_tool", "write_context"),
    ];
    // Nothing known: the first MCP call asks about the tenant and the
    // tool in one call, each descriptor with its own hits.
    let call = asked(
        l.check(
            &mut state,
            &store,
            &mcp_call_facts(&mcp, "write_context", 2),
            NOW,
        ),
        "nothing known yet",
    );
    assert_eq!(
        sent(&call),
        vec![
            (vec![pair("tenant", "acme")], Some(2)),
            (tool_descriptor.clone(), Some(2))
        ]
    );
    let both = rls::RlsAnswer {
        first: descriptor_answer(false, 1000, 998),
        second: Some(descriptor_answer(false, 10, 8)),
    };
    l.on_rls_answer(&mut state, &store, &call, &both, NOW)
        .unwrap();
    // Known and low on both: local, like REST traffic.
    assert_eq!(
        admitted_local(&l, &mut state, &store, &rest),
        DecidedBy::Local
    );
    let step = l.check(
        &mut state,
        &store,
        &mcp_call_facts(&mcp, "write_context", 2),
        NOW,
    );
    assert!(matches!(step, LocalDecision::Allow(_)), "{step:?}");
    // This gateway's share of the tool's budget, (1 - 0.8) x 10 = 2, is
    // used: the RLS decides about the tool alone (the tenant is far from
    // its limit), told of the usage admitted locally since.
    let call = asked(
        l.check(
            &mut state,
            &store,
            &mcp_call_facts(&mcp, "write_context", 2),
            NOW,
        ),
        "near the tool's limit",
    );
    assert_eq!(sent(&call), vec![(tool_descriptor.clone(), None)]);
    assert_eq!(call.report.hits, 4);
    // Over: 429 naming the tool; the tenant's bucket learns nothing.
    let over = answer(true, 10, 0);
    let over_tool = l
        .on_rls_answer(&mut state, &store, &call, &over, NOW)
        .unwrap_err();
    assert_eq!(over_tool.reply.status, 429);
    let body = String::from_utf8_lossy(&over_tool.reply.body).into_owned();
    assert!(
        body.contains("tools/call write_context of tenant acme exceeded its global limit of 10"),
        "{body}"
    );
    assert_eq!(header(&over_tool.reply.headers, "retry-after"), Some("30"));
    // The rest of the window: refused without asking; other tools and
    // REST traffic go on locally.
    let step = l.check(
        &mut state,
        &store,
        &mcp_call_facts(&mcp, "write_context", 2),
        NOW,
    );
    assert_eq!(refused(&step).refusal, Refusal::GlobalLimit);
    assert_eq!(
        admitted_local(&l, &mut state, &store, &rest),
        DecidedBy::Local
    );
    // A tool the RLS has no limit for: asked once, then local.
    let call = asked(
        l.check(
            &mut state,
            &store,
            &mcp_call_facts(&mcp, "search_context", 1),
            NOW,
        ),
        "nothing known about the tool",
    );
    let unlimited = rls::RlsAnswer {
        first: rls::DescriptorAnswer::default(),
        second: None,
    };
    l.on_rls_answer(&mut state, &store, &call, &unlimited, NOW)
        .unwrap();
    for _ in 0..50 {
        let step = l.check(
            &mut state,
            &store,
            &mcp_call_facts(&mcp, "search_context", 1),
            NOW,
        );
        assert!(matches!(step, LocalDecision::Allow(_)), "{step:?}");
    }
    // With `mcp_descriptor: false`, an MCP call is counted like any other.
    let (l, mut state, store) = setup(json!({"global": {
        "cluster": "rls", "sync_threshold": 0.8, "gateways": 1, "mcp_descriptor": false
    }}));
    let call = asked(
        l.check(
            &mut state,
            &store,
            &mcp_call_facts(&mcp, "write_context", 2),
            NOW,
        ),
        "the RLS decides",
    );
    assert_eq!(sent(&call), vec![(vec![pair("tenant", "acme")], None)]);
}
