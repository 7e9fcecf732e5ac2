use serde_json::{Value, json};

use super::*;
use crate::shared::MemoryStore;

fn breakers(extra: Value) -> Breakers {
    let mut breaker = json!({
        "name": "context_repository",
        "error_threshold_percent": 50,
        "window_seconds": 10,
        "min_requests": 4,
        "reset_timeout_ms": 1000,
        "half_open_probes": 2
    });
    if let (Some(t), Value::Object(e)) = (breaker.as_object_mut(), extra) {
        t.extend(e);
    }
    Breakers::from_json(json!({"breakers": [breaker]}).to_string().as_bytes(), "cb").unwrap()
}

fn head() -> RequestHead<'static> {
    RequestHead {
        method: "GET",
        path: "/",
        headers: &crate::headers::NO_HEADERS,
    }
}

fn setup(extra: Value) -> (Breakers, MemoryStore) {
    let b = breakers(extra);
    let store = MemoryStore::default();
    b.breakers[0].init_shared(&store);
    (b, store)
}

/// Sends one request through the breaker with the given upstream outcome.
fn run(
    b: &Breaker,
    store: &MemoryStore,
    failed: bool,
    now: u64,
) -> (Admission, Option<Transition>) {
    let (admission, t1) = b.admit(store, &head(), now);
    let t2 = match admission {
        Admission::Pass | Admission::Probe { .. } => b.record(store, &admission, Some(failed), now),
        _ => None,
    };
    (admission, t1.or(t2))
}

#[test]
fn opens_at_the_threshold_after_the_minimum() {
    let (bs, store) = setup(json!({}));
    let b = &bs.breakers[0];
    for _ in 0..3 {
        assert_eq!(run(b, &store, true, 100).1, None, "below min_requests");
    }
    assert_eq!(
        run(b, &store, false, 100).1,
        Some(Transition::Opened),
        "3 of 4 failed"
    );
    assert_eq!(b.state(&store), State::Open);
    let (admission, _) = b.admit(&store, &head(), 200);
    let Admission::Reject(reply) = admission else {
        panic!("{admission:?}")
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers[0], ("retry-after".into(), "1".into()));
    assert!(String::from_utf8_lossy(&reply.body).contains("context_repository"));
}

#[test]
fn healthy_traffic_keeps_it_closed() {
    let (bs, store) = setup(json!({}));
    let b = &bs.breakers[0];
    for i in 0..100 {
        run(b, &store, i % 3 == 1, 100 + i);
    }
    assert_eq!(b.state(&store), State::Closed, "33% < 50%");
}

#[test]
fn old_failures_leave_the_window() {
    let (bs, store) = setup(json!({}));
    let b = &bs.breakers[0];
    for _ in 0..3 {
        run(b, &store, true, 0);
    }
    assert_eq!(
        run(b, &store, false, 20_000).1,
        None,
        "the failures are 20 s old"
    );
}

#[test]
fn half_open_lets_only_the_probe_budget_through_then_closes() {
    let (bs, store) = setup(json!({}));
    let b = &bs.breakers[0];
    for _ in 0..4 {
        run(b, &store, true, 0);
    }
    assert_eq!(b.state(&store), State::Open);
    let (p1, t) = b.admit(&store, &head(), 1_000);
    assert!(matches!(p1, Admission::Probe { .. }));
    assert_eq!(t, Some(Transition::HalfOpened));
    let (p2, t) = b.admit(&store, &head(), 1_001);
    assert!(matches!(p2, Admission::Probe { .. }) && t.is_none());
    assert!(
        matches!(b.admit(&store, &head(), 1_002).0, Admission::Reject(_)),
        "budget of 2 used"
    );
    assert_eq!(b.record(&store, &p1, Some(false), 1_010), None);
    assert_eq!(
        b.record(&store, &p2, Some(false), 1_020),
        Some(Transition::Closed)
    );
    assert_eq!(b.state(&store), State::Closed);
    assert!(matches!(b.admit(&store, &head(), 1_030).0, Admission::Pass));
}

#[test]
fn a_failed_probe_opens_it_again_and_stale_probes_are_ignored() {
    let (bs, store) = setup(json!({}));
    let b = &bs.breakers[0];
    for _ in 0..4 {
        run(b, &store, true, 0);
    }
    let (p1, _) = b.admit(&store, &head(), 1_000);
    let (p2, _) = b.admit(&store, &head(), 1_000);
    assert_eq!(
        b.record(&store, &p1, Some(true), 1_005),
        Some(Transition::Opened)
    );
    assert_eq!(b.state(&store), State::Open);
    assert_eq!(
        b.record(&store, &p2, Some(false), 1_006),
        None,
        "stale probe"
    );
    assert!(matches!(
        b.admit(&store, &head(), 1_500).0,
        Admission::Reject(_)
    ));
    assert!(matches!(
        b.admit(&store, &head(), 2_005).0,
        Admission::Probe { .. }
    ));
}

#[test]
fn abandoned_probes_free_their_slot() {
    let (bs, store) = setup(json!({"half_open_probes": 1}));
    let b = &bs.breakers[0];
    for _ in 0..4 {
        run(b, &store, true, 0);
    }
    let (p1, _) = b.admit(&store, &head(), 1_000);
    assert!(matches!(
        b.admit(&store, &head(), 1_001).0,
        Admission::Reject(_)
    ));
    b.record(&store, &p1, None, 1_002);
    assert!(matches!(
        b.admit(&store, &head(), 1_003).0,
        Admission::Probe { .. }
    ));
}

#[test]
fn fallback_mode_tags_instead_of_refusing() {
    let (bs, store) = setup(json!({"on_open": {"action": "fallback"}}));
    let b = &bs.breakers[0];
    for _ in 0..4 {
        run(b, &store, true, 0);
    }
    let (admission, _) = b.admit(&store, &head(), 10);
    assert_eq!(
        admission,
        Admission::Fallback {
            request_header: ("x-context-degraded".into(), "cache".into()),
            response_header: ("x-context-degraded".into(), "true".into()),
        }
    );
}

#[test]
fn failure_statuses_are_configurable() {
    let (bs, _) = setup(json!({"failure_statuses": [502, 429]}));
    let b = &bs.breakers[0];
    assert!(b.is_failure(429) && b.is_failure(502) && !b.is_failure(500));
    let (bs, _) = setup(json!({}));
    assert!(bs.breakers[0].is_failure(504) && !bs.breakers[0].is_failure(404));
}

#[test]
fn selection_by_route_cluster_and_header() {
    let bs = Breakers::from_json(
        json!({"breakers": [
            {"name": "processor", "select": {"header": {"name": "x-context-type", "values": ["graph"]}}},
            {"name": "repository", "select": {"routes": ["contexts"], "clusters": ["repo"]}},
            {"name": "catch_all"}
        ]})
        .to_string()
        .as_bytes(),
        "cb",
    )
    .unwrap();
    let headers = [("x-context-type".to_owned(), b"graph".to_vec())];
    let pick = |route: Option<&str>, cluster: Option<&str>, headers: &[(String, Vec<u8>)]| {
        let head = RequestHead {
            method: "GET",
            path: "/",
            headers: &headers.iter().cloned().collect(),
        };
        bs.select(&Selection {
            route,
            cluster,
            head,
        })
        .map(|i| bs.breakers[i].name().to_owned())
    };
    assert_eq!(pick(None, None, &headers).as_deref(), Some("processor"));
    assert_eq!(
        pick(Some("contexts"), Some("repo"), &[]).as_deref(),
        Some("repository")
    );
    assert_eq!(
        pick(Some("contexts"), Some("other"), &[]).as_deref(),
        Some("catch_all")
    );
    assert!(bs.needs_route && bs.needs_cluster);
}

#[test]
fn concurrent_outcomes_are_never_lost() {
    // Interleave two "workers" sharing one store: every outcome lands.
    let (bs, store) = setup(json!({"min_requests": 1000000}));
    let b = &bs.breakers[0];
    for i in 0..500 {
        run(b, &store, i % 2 == 0, 5);
        run(b, &store, false, 5);
    }
    let record = Record::decode(&store.get(&b.key).unwrap().0).unwrap();
    assert_eq!(record.window(b.period(5)), (1000, 250));
}

#[test]
fn bad_configuration_names_the_field() {
    let err = |v: Value| {
        Breakers::from_json(v.to_string().as_bytes(), "cb")
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(json!({"breakers": []})).starts_with("breakers"));
    assert!(
        err(json!({"breakers": [{"name": "a", "error_threshold_percent": 0}]}))
            .starts_with("breakers[0].error_threshold_percent")
    );
    assert!(
        err(json!({"breakers": [{"name": "a"}, {"name": "a"}]})).starts_with("breakers[1].name")
    );
    assert!(
        err(json!({"breakers": [{"name": "a", "on_open": {"action": "explode"}}]}))
            .contains("breakers[0].on_open")
    );
    assert!(
        err(json!({"breakers": [{"name": "a", "failure_statuses": [700]}]}))
            .starts_with("breakers[0].failure_statuses")
    );
}

#[test]
fn any_header_selects_on_one_of_several_tags() {
    let bs = Breakers::from_json(
        json!({"breakers": [{"name": "processor", "select": {"any_header": [
            {"name": "x-context-type", "values": ["large-context"]},
            {"name": "x-context-priority", "values": ["high"]}
        ]}}]})
        .to_string()
        .as_bytes(),
        "cb",
    )
    .unwrap();
    let pick = |headers: &[(String, Vec<u8>)]| {
        let head = RequestHead {
            method: "GET",
            path: "/",
            headers: &headers.iter().cloned().collect(),
        };
        bs.select(&Selection {
            route: None,
            cluster: None,
            head,
        })
        .is_some()
    };
    assert!(pick(&[("x-context-priority".to_owned(), b"high".to_vec())]));
    assert!(pick(&[(
        "x-context-type".to_owned(),
        b"large-context".to_vec()
    )]));
    assert!(!pick(&[(
        "x-context-type".to_owned(),
        b"standard".to_vec()
    )]));
}

#[test]
fn a_record_that_does_not_decode_fails_open_is_counted_and_left_alone() {
    let store = MemoryStore::default();
    let bs = breakers(json!({"name": "repo", "min_requests": 1}));
    let b = &bs.breakers[0];
    b.init_shared(&store);
    store.set(&b.key, b"\x01garbage", None).unwrap();
    let (admission, _) = b.admit(&store, &head(), 0);
    assert_eq!(admission, Admission::Pass);
    assert_eq!(b.record(&store, &admission, Some(true), 0), None);
    assert_eq!(b.invalid_records.get(), 1, "counted once per request");
    assert_eq!(store.get(&b.key).unwrap().0, b"\x01garbage");
}
