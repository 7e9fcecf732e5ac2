//! `records`: every shared-data record decoder, through the public APIs
//! that read (and update) the records.
//!
//! The input is one shared-data value. Each scenario puts it under the key
//! one module reads, runs that module's calls, and checks the rule of
//! `filters/core/src/record.rs` and of the module's own documentation: a
//! value that does not decode is reported and left alone (bucket slots,
//! breakers, the adaptive registry and worker records, JWKS key sets,
//! secrets), except the JWKS schedule, which a tick replaces by a fetch
//! claim. Whether a value decodes is decided by an independent reading of
//! each documented layout (the `*_layout` functions), which must agree
//! with the module's own decoder. Values a module writes must decode.

use std::cell::{OnceCell, RefCell};

use ctxgate_core::auth::cache::digest;
use ctxgate_core::auth::jwks_sync::JwksSync;
use ctxgate_core::auth::shared_cache::{SharedTokenCache, provider_tag};
use ctxgate_core::auth::{Auth, Outcome, RequestEnv};
use ctxgate_core::breaker::{Admission, Breakers, State};
use ctxgate_core::bucket::{
    BucketTable, GlobalAccounting, GlobalView, LimitSpec, MILLI, TakeOutcome, limit_id,
};
use ctxgate_core::http::RequestHead;
use ctxgate_core::jwt::{KeySet, Symmetric};
use ctxgate_core::ratelimit::adaptive::Adaptive;
use ctxgate_core::ratelimit::config::AdaptiveConfig;
use ctxgate_core::record::{self, Kind};
use ctxgate_core::shared::{Cas, MemoryStore, Secret, SetError, SharedStore, load_secret};

use crate::fixtures::{self, ISSUER, NOW, SECRET};

const NOW_MS: u64 = NOW * 1000;

/// Input: one shared-data value, tried as every kind of record.
pub fn records(value: &[u8]) {
    FIXTURE.with(|cell| {
        let fixture = cell.get_or_init(Fixture::new);
        bucket_slot(value);
        token_cache_slot(value);
        shared_cache_hit(fixture, value);
        jwks_schedule(fixture, value);
        jwks_keys(fixture, value);
        jwks_fetch(fixture, value);
        adaptive_registry(value);
        adaptive_workers(value);
        breaker(fixture, value);
        secret(value);
    });
}

struct Fixture {
    /// The auth fixture (inline keys, 4 shared cache slots).
    auth: Auth,
    keys: KeySet,
    /// An auth configuration with a remote key set, and the two shared-data
    /// keys its `JwksSync` uses.
    remote: Auth,
    schedule_key: String,
    keys_key: String,
    breakers: Breakers,
    breaker_key: String,
}

thread_local! {
    static FIXTURE: OnceCell<Fixture> = const { OnceCell::new() };
}

/// Claim lifetime of a JWKS fetch: the remote's `timeout_ms` plus the
/// module's 5 s margin.
const JWKS_CLAIM_MS: u64 = 1_000 + 5_000;

impl Fixture {
    fn new() -> Fixture {
        let (auth, _) = fixtures::auth();
        let keys = KeySet::parse(&fixtures::jwks().to_string())
            .expect("fixture keys")
            .keys;
        let remote = serde_json::json!({"providers": [{
            "name": "idp", "issuer": ISSUER,
            "jwks": {"remote": {"cluster": "idp", "timeout_ms": 1000, "refresh_interval_seconds": 60,
                                "retry_interval_seconds": 1, "allow_symmetric_keys": true}}
        }]});
        let remote =
            Auth::from_json(remote.to_string().as_bytes(), "fuzz", SECRET).expect("remote config");
        // The key names, as `init_shared` creates them.
        let created = Recording::default();
        JwksSync::new(&remote).init_shared(&created);
        let schedule_key = created.created_with(Kind::JwksSchedule);
        let keys_key = created.created_with(Kind::JwksKeys);
        for (key, suffix) in [(&schedule_key, ".schedule"), (&keys_key, ".keys")] {
            let tag = key
                .strip_prefix("fuzz.jwks.idp-")
                .and_then(|rest| rest.strip_suffix(suffix));
            assert!(
                tag.is_some_and(|t| t.len() == 12 && t.bytes().all(|b| b.is_ascii_hexdigit())),
                "JWKS record key {key} is not <ns>.jwks.<name>-<tag>{suffix}"
            );
        }
        let breakers = Breakers::from_json(
            br#"{"breakers": [{"name": "b", "error_threshold_percent": 50, "window_seconds": 10,
                 "min_requests": 2, "reset_timeout_ms": 1000, "half_open_probes": 2}]}"#,
            "fuzz",
        )
        .expect("breaker config");
        let created = Recording::default();
        for b in &breakers.breakers {
            b.init_shared(&created);
        }
        let breaker_key = created.created_with(Kind::Breaker);
        assert_eq!(breaker_key, "fuzz.breaker.b");
        Fixture {
            auth,
            keys,
            remote,
            schedule_key,
            keys_key,
            breakers,
            breaker_key,
        }
    }
}

/// A store that remembers the keys written to it, to learn key names.
#[derive(Default)]
struct Recording {
    store: MemoryStore,
    written: RefCell<Vec<String>>,
}

impl SharedStore for Recording {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SetError> {
        self.written.borrow_mut().push(key.to_owned());
        self.store.set(key, value, cas)
    }
}

impl Recording {
    /// The one key created with a record of `kind`.
    fn created_with(&self, kind: Kind) -> String {
        let keys: Vec<String> = self
            .written
            .borrow()
            .iter()
            .filter(|key| {
                self.store
                    .get(key)
                    .is_some_and(|(v, _)| v.get(1) == Some(&(kind as u8)))
            })
            .cloned()
            .collect();
        match keys.as_slice() {
            [key] => key.clone(),
            other => panic!("expected one {kind:?} record, found {other:?}"),
        }
    }
}

fn value_of(store: &MemoryStore, key: &str) -> Vec<u8> {
    store.get(key).map(|(v, _)| v).unwrap_or_default()
}

fn stored(key: &str, value: &[u8]) -> MemoryStore {
    let store = MemoryStore::default();
    let _ = store.set(key, value, None);
    store
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

/// The payload of a record of `kind`, version 1.
fn payload(value: &[u8], kind: Kind) -> Option<&[u8]> {
    record::reader(value, kind, 1).ok().map(|mut r| r.rest())
}

// ---- bucket slots (bucket.rs) ---------------------------------------------
//
// The slot layout is in flux; whether a slot decodes is taken from the
// read-only `probe`, which reports a slot that does not decode.

fn bucket_slot(value: &[u8]) {
    let table = BucketTable::new("fuzz.rl", 1, 2, 4, SECRET);
    let key = "fuzz.rl.slot.0";
    let store = MemoryStore::default();
    table.init_shared(&store);
    assert!(store.get(key).is_some(), "bucket slot key is not {key}");
    let _ = store.set(key, value, None);
    // Aim at the first entry and its first limit, if the value has them.
    let hash = u64_at(value, 4).unwrap_or(1);
    let specs = [
        LimitSpec {
            id: limit_id("per_minute"),
            capacity: 60 * MILLI,
            refill: 60 * MILLI,
            period_ms: 60_000,
            counts_cost: true,
        },
        LimitSpec {
            id: 7,
            capacity: u64::MAX,
            refill: 1,
            period_ms: u64::MAX,
            counts_cost: false,
        },
    ];
    let times = [0, NOW_MS, u64_at(value, 12).unwrap_or(NOW_MS), u64::MAX];
    let what = |step: &str| format!("bucket slot {value:?}: {step}");

    let decodes = table.probe(&store, hash, &specs, 1, NOW_MS).is_ok();
    let _ = table.peek(&store, hash, &specs, NOW_MS);
    let _ = table.global_view(&store, hash);
    assert_eq!(value_of(&store, key), value, "{}", what("a read wrote"));

    let hierarchical = GlobalAccounting::Hierarchical {
        threshold: 0.8,
        budget_share: 0.2,
    };
    for now in times {
        for (i, action) in [
            GlobalAccounting::None,
            GlobalAccounting::CountLocally,
            hierarchical,
            GlobalAccounting::ClaimUnreported,
        ]
        .into_iter()
        .enumerate()
        {
            let cost = [1, 0, 1000, u64::MAX][i];
            let outcome = table.take(&store, hash, &specs, cost, action, now);
            check_slot(
                &table,
                &store,
                key,
                value,
                decodes,
                &what(&format!("take {action:?} at {now}")),
            );
            if !decodes {
                assert!(
                    matches!(outcome, TakeOutcome::Invalid(_)),
                    "{}: {outcome:?}",
                    what("take on an undecodable slot")
                );
            }
        }
        let answer = GlobalView {
            used: u64::MAX,
            limit: 100,
            reset_ms: now,
            window_ms: 60_000,
            unreported: 0,
        };
        let learned = table.learn_global(&store, hash, answer);
        check_slot(&table, &store, key, value, decodes, &what("learn_global"));
        assert_eq!(learned.is_err(), !decodes, "{}", what("learn_global"));
        let claimed = table.claim_unreported(&store, hash);
        check_slot(
            &table,
            &store,
            key,
            value,
            decodes,
            &what("claim_unreported"),
        );
        assert_eq!(claimed.is_err(), !decodes, "{}", what("claim_unreported"));
        // A new key: the slot is full at two ways, so an entry is replaced.
        let _ = table.take(&store, hash ^ 1, &specs, 1, GlobalAccounting::None, now);
        let _ = table.take(
            &store,
            hash ^ 2,
            &specs,
            1,
            GlobalAccounting::CountLocally,
            now,
        );
        check_slot(
            &table,
            &store,
            key,
            value,
            decodes,
            &what("take for new keys"),
        );
    }
    assert_eq!(store.len(), 1, "{}", what("the table grew"));
}

fn check_slot(
    table: &BucketTable,
    store: &MemoryStore,
    key: &str,
    original: &[u8],
    decodes: bool,
    what: &str,
) {
    let now = value_of(store, key);
    if decodes {
        assert!(
            table.probe(store, 1, &[], 1, NOW_MS).is_ok(),
            "{what}: wrote a slot that does not decode: {now:?}"
        );
    } else {
        assert_eq!(now, original, "{what}: an undecodable slot was overwritten");
    }
}

// ---- the shared token cache (auth/shared_cache.rs) ------------------------

/// digest [32], provider u16, provider tag u64, valid_until u64,
/// thumbprint [32], payload (the rest).
const TOKEN_CACHE_FIXED: usize = 32 + 2 + 8 + 8 + 32;

fn token_cache_slot(value: &[u8]) {
    let cache = SharedTokenCache::new("fuzz", 1);
    let store = stored("fuzz.cache.0", value);
    let digest: [u8; 32] = value
        .get(3..35)
        .and_then(|d| d.try_into().ok())
        .unwrap_or([0; 32]);
    for now in [0, NOW, u64_at(value, 45).unwrap_or(NOW), u64::MAX] {
        let got = cache.get(&store, &digest, now);
        assert_eq!(
            value_of(&store, "fuzz.cache.0"),
            value,
            "token cache slot {value:?}: a read wrote"
        );
        let what = format!("token cache slot {value:?} at {now}: {got:?}");
        match payload(value, Kind::TokenCacheSlot) {
            Some(p) if p.len() >= TOKEN_CACHE_FIXED => {
                let Ok(got) = got else {
                    panic!("{what}: a complete slot does not decode")
                };
                let valid_until = u64_at(p, 42).unwrap_or_default();
                match got {
                    Some(entry) => {
                        assert!(now < valid_until, "{what}: served after valid_until");
                        assert_eq!(entry.valid_until, valid_until, "{what}");
                        assert_eq!(
                            entry.provider_tag,
                            u64_at(p, 34).unwrap_or_default(),
                            "{what}"
                        );
                        assert_eq!(&entry.thumbprint[..], &p[50..82], "{what}");
                        assert_eq!(entry.payload, &p[TOKEN_CACHE_FIXED..], "{what}");
                    }
                    None => assert!(now >= valid_until, "{what}: a valid entry was not served"),
                }
            }
            _ => assert!(got.is_err(), "{what}: a truncated or foreign slot decoded"),
        }
    }
}

/// The value as the shared cache entry for a token the request carries: an
/// entry is believed only after the provider's issuer, audience and time
/// checks and with a key of this worker's set.
fn shared_cache_hit(fixture: &Fixture, value: &[u8]) {
    const TOKEN: &str = "not-a-jwt";
    let digest = digest(TOKEN);
    let slot = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % 4;
    let key = format!("fuzz.cache.{slot}");
    let mut entry = value.to_vec();
    if let Some(stored_digest) = entry.get_mut(3..35) {
        stored_digest.copy_from_slice(&digest);
    }
    let store = MemoryStore::default();
    fixture.auth.init_shared(&store);
    let _ = store.set(&key, &entry, None);
    let headers: ctxgate_core::headers::Headers = [(
        "authorization".to_owned(),
        format!("Bearer {TOKEN}").into_bytes(),
    )]
    .into_iter()
    .collect();
    let request = RequestHead {
        method: "GET",
        path: "/v1/contexts/projects/a",
        headers: &headers,
    };
    let address = || Some("10.0.0.1:40000".to_owned());
    let env = RequestEnv {
        end_of_stream: true,
        client_address: &address,
        authorised_later: false,
        peer: &|_| None,
    };
    let mut state = fixture.auth.new_state();
    let decision = fixture.auth.check(&mut state, &store, &request, &env, NOW);
    assert_eq!(
        value_of(&store, &key),
        entry,
        "shared cache entry {entry:?}: overwritten by a lookup"
    );
    let Outcome::Allow(allowed) = &decision.outcome else {
        return;
    };
    let what = format!("shared cache entry {entry:?} was believed: {allowed:?}");
    let p = payload(&entry, Kind::TokenCacheSlot).unwrap_or_else(|| panic!("{what}"));
    assert!(p.len() >= TOKEN_CACHE_FIXED, "{what}");
    assert_eq!(
        u32::from(p[32]) | u32::from(p[33]) << 8,
        0,
        "{what}: provider"
    );
    assert_eq!(
        u64_at(p, 34),
        Some(provider_tag("test", ISSUER)),
        "{what}: tag"
    );
    assert!(
        u64_at(p, 42).is_some_and(|until| until > NOW),
        "{what}: expired entry"
    );
    let thumbprint: [u8; 32] = p[50..82].try_into().unwrap_or([0; 32]);
    assert!(fixture.keys.holds(&thumbprint), "{what}: unknown key");
    let claims: serde_json::Value =
        serde_json::from_slice(&p[TOKEN_CACHE_FIXED..]).unwrap_or_else(|_| panic!("{what}"));
    assert_eq!(claims["iss"], ISSUER, "{what}: issuer");
    let audience_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == fixtures::AUDIENCE,
        serde_json::Value::Array(a) => a.iter().any(|a| a == fixtures::AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "{what}: audience");
    if let Some(exp) = claims["exp"].as_f64() {
        assert!(exp + 60.0 >= NOW as f64, "{what}: expired claims");
    }
}

// ---- JWKS schedule and key set (auth/jwks_sync.rs) ------------------------

/// next_ms u64, failures u32, last_success_ms u64.
fn schedule_layout(value: &[u8]) -> Option<(u64, u32, u64)> {
    let p = payload(value, Kind::JwksSchedule)?;
    (p.len() == 20).then(|| {
        (
            u64_at(p, 0).unwrap_or_default(),
            u32_at(p, 8).unwrap_or_default(),
            u64_at(p, 12).unwrap_or_default(),
        )
    })
}

fn jwks_schedule(fixture: &Fixture, value: &[u8]) {
    let (schedule_key, keys_key) = (&fixture.schedule_key, &fixture.keys_key);
    let what = |step: &str| format!("JWKS schedule {value:?}: {step}");
    let decoded = schedule_layout(value);
    for now in [0, NOW_MS, u64::MAX] {
        let store = MemoryStore::default();
        let mut sync = JwksSync::new(&fixture.remote);
        sync.init_shared(&store);
        let keys_before = value_of(&store, keys_key);
        let _ = store.set(schedule_key, value, None);
        let tick = sync.tick(&store, now);
        let after = value_of(&store, schedule_key);
        let claim = (
            now.saturating_add(JWKS_CLAIM_MS),
            decoded.map_or(0, |d| d.1),
            decoded.map_or(0, |d| d.2),
        );
        match decoded {
            Some((next_ms, _, _)) if now < next_ms => {
                assert_eq!(after, value, "{}", what("not due, yet written"));
                assert!(tick.fetch.is_empty(), "{}", what("not due, yet fetched"));
            }
            _ => {
                assert_eq!(
                    schedule_layout(&after),
                    Some(claim),
                    "{}",
                    what("the claim")
                );
                assert_eq!(tick.fetch.len(), 1, "{}", what("due, yet not fetched"));
            }
        }
        assert_eq!(
            sync.invalid_records,
            u64::from(decoded.is_none()),
            "{}",
            what("count")
        );
        assert_eq!(
            value_of(&store, keys_key),
            keys_before,
            "{}",
            what("tick wrote the keys")
        );
        assert!(
            tick.install.is_empty(),
            "{}",
            what("installed an empty key set")
        );

        // An early refresh never replaces a schedule it cannot read.
        let store = stored(schedule_key, value);
        let moved = sync.request_early_refresh(0, &store, now);
        match decoded {
            None => {
                assert!(
                    !moved,
                    "{}",
                    what("early refresh moved an unreadable schedule")
                );
                assert_eq!(
                    value_of(&store, schedule_key),
                    value,
                    "{}",
                    what("early refresh")
                );
            }
            Some(_) => assert!(
                schedule_layout(&value_of(&store, schedule_key)).is_some(),
                "{}",
                what("early refresh wrote an unreadable schedule")
            ),
        }

        // A failed fetch backs off from what the schedule said.
        let store = MemoryStore::default();
        sync.init_shared(&store);
        let keys_before = value_of(&store, keys_key);
        let _ = store.set(schedule_key, value, None);
        let _ = sync.fetch_completed(0, &store, now, Err("refused".into()));
        let after = schedule_layout(&value_of(&store, schedule_key));
        let (_, failures, last) = decoded.unwrap_or_default();
        assert!(
            after.is_some_and(|a| a.1 == failures.saturating_add(1) && a.2 == last),
            "{}: {after:?}",
            what("after a failed fetch")
        );
        assert_eq!(
            value_of(&store, keys_key),
            keys_before,
            "{}",
            what("failed fetch wrote keys")
        );
    }
}

/// The key set usable from a key-set record, if any.
fn usable_keys(body: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(body).ok()?;
    Some(KeySet::parse_with(text, Symmetric::Allow).ok()?.keys.len())
}

fn jwks_keys(fixture: &Fixture, value: &[u8]) {
    let keys_key = &fixture.keys_key;
    let what = |step: &str| format!("JWKS key set {value:?}: {step}");
    let store = MemoryStore::default();
    let mut sync = JwksSync::new(&fixture.remote);
    sync.init_shared(&store);
    let _ = store.set(keys_key, value, None);
    let tick = sync.tick(&store, NOW_MS);
    assert_eq!(
        value_of(&store, keys_key),
        value,
        "{}",
        what("a tick wrote the key set")
    );
    let body = payload(value, Kind::JwksKeys);
    let expected = body.and_then(usable_keys);
    assert_eq!(
        tick.install
            .iter()
            .map(|(_, k)| k.len())
            .collect::<Vec<_>>(),
        expected.into_iter().collect::<Vec<_>>(),
        "{}",
        what("installed")
    );
    assert_eq!(
        sync.invalid_records,
        u64::from(body.is_none()),
        "{}",
        what("count")
    );
    assert!(
        sync.tick(&store, NOW_MS + 1).install.is_empty(),
        "{}",
        what("installed twice")
    );
    let mut other = JwksSync::new(&fixture.remote);
    assert_eq!(
        other.newer_shared_keys(0, &store).map(|k| k.len()),
        expected,
        "{}",
        what("another worker")
    );
}

fn jwks_fetch(fixture: &Fixture, body: &[u8]) {
    let keys_key = &fixture.keys_key;
    let store = MemoryStore::default();
    let mut sync = JwksSync::new(&fixture.remote);
    sync.init_shared(&store);
    let before = value_of(&store, keys_key);
    let _ = sync.tick(&store, NOW_MS);
    let outcome = sync.fetch_completed(0, &store, NOW_MS, Ok((200, body.to_vec())));
    let after = value_of(&store, keys_key);
    let what = format!("JWKS body {body:?}: {outcome:?}");
    match usable_keys(body) {
        Some(_) => {
            assert_eq!(
                payload(&after, Kind::JwksKeys),
                Some(body),
                "{what}: stored"
            );
            let mut other = JwksSync::new(&fixture.remote);
            assert!(
                other.newer_shared_keys(0, &store).is_some(),
                "{what}: not shared"
            );
        }
        None => assert_eq!(after, before, "{what}: a bad body replaced the key set"),
    }
    assert!(
        schedule_layout(&value_of(&store, &fixture.schedule_key)).is_some(),
        "{what}: schedule"
    );
}

// ---- adaptive limits (ratelimit/adaptive.rs) ------------------------------

fn adaptive_config() -> AdaptiveConfig {
    AdaptiveConfig {
        latency_threshold_ms: 100,
        latency_multiplier: 0.5,
        ewma_alpha: 0.5,
        max_in_flight: 10,
        publish_interval_ms: 100,
    }
}

fn registry_layout(value: &[u8]) -> Option<u64> {
    let p = payload(value, Kind::AdaptiveRegistry)?;
    (p.len() == 8).then(|| u64_at(p, 0).unwrap_or_default())
}

fn registry(count: u64) -> Vec<u8> {
    let mut w = record::writer(Kind::AdaptiveRegistry, 1, 8);
    w.u64(count);
    w.finish()
}

/// ewma_ms f64 (finite, >= 0), samples, in_flight, updated_ms (u64 each).
fn worker_layout(value: &[u8]) -> Option<(f64, u64, u64, u64)> {
    let p = payload(value, Kind::AdaptiveWorker)?;
    let ewma = f64::from_bits(u64_at(p, 0)?);
    (p.len() == 32 && ewma.is_finite() && ewma >= 0.0).then(|| {
        (
            ewma,
            u64_at(p, 8).unwrap_or_default(),
            u64_at(p, 16).unwrap_or_default(),
            u64_at(p, 24).unwrap_or_default(),
        )
    })
}

fn adaptive_registry(value: &[u8]) {
    let key = "fuzz.adaptive.workers";
    let store = stored(key, value);
    let mut adaptive = Adaptive::new(adaptive_config(), "fuzz", &store);
    let what = |step: &str| format!("adaptive registry {value:?}: {step}");
    let decoded = registry_layout(value);
    match decoded {
        Some(n) => assert_eq!(
            value_of(&store, key),
            registry(n.saturating_add(1)),
            "{}",
            what("registration")
        ),
        None => assert_eq!(value_of(&store, key), value, "{}", what("overwritten")),
    }
    assert_eq!(
        adaptive.invalid_records,
        u64::from(decoded.is_none()),
        "{}",
        what("count")
    );
    adaptive.publish_and_combine(&store, NOW_MS);
    if decoded.is_none() {
        assert_eq!(
            value_of(&store, key),
            value,
            "{}",
            what("overwritten by publishing")
        );
    }
    let combined = adaptive.combined();
    assert!(!combined.ewma_ms.is_nan(), "{}", what("NaN latency"));
}

fn adaptive_workers(value: &[u8]) {
    let store = stored("fuzz.adaptive.workers", &registry(3));
    for worker in 0..3 {
        let _ = store.set(&format!("fuzz.adaptive.{worker}"), value, None);
    }
    let mut adaptive = Adaptive::new(adaptive_config(), "fuzz", &store);
    adaptive.started();
    adaptive.started();
    adaptive.finished(Some(50));
    adaptive.publish_and_combine(&store, NOW_MS);
    let what = |step: &str| format!("adaptive worker record {value:?}: {step}");
    for worker in 0..3 {
        assert_eq!(
            value_of(&store, &format!("fuzz.adaptive.{worker}")),
            value,
            "{}",
            what("another worker's record was written")
        );
    }
    assert_eq!(
        value_of(&store, "fuzz.adaptive.workers"),
        registry(4),
        "{}",
        what("registry")
    );
    let mine = worker_layout(&value_of(&store, "fuzz.adaptive.3"));
    assert_eq!(mine, Some((50.0, 1, 1, NOW_MS)), "{}", what("own record"));
    let decoded = worker_layout(value);
    let fresh = decoded.filter(|d| d.3 >= NOW_MS - 500);
    let others = fresh.map_or(0, |d| d.2.saturating_mul(3));
    let combined = adaptive.combined();
    assert_eq!(
        combined.others_in_flight,
        others,
        "{}",
        what("in flight elsewhere")
    );
    assert_eq!(
        adaptive.invalid_records,
        if decoded.is_none() { 3 } else { 0 },
        "{}",
        what("count")
    );
    assert!(!combined.ewma_ms.is_nan(), "{}", what("NaN latency"));
    let _ = adaptive.queue_full();
}

// ---- circuit breakers (breaker/mod.rs) ------------------------------------

/// state u8 (0-2), opened_at_ms u64, probes in flight u32, probes
/// succeeded u32, ten buckets of (period u64, total u32, failures u32).
fn breaker_layout(value: &[u8]) -> bool {
    payload(value, Kind::Breaker).is_some_and(|p| p.len() == 1 + 8 + 4 + 4 + 160 && p[0] <= 2)
}

fn breaker(fixture: &Fixture, value: &[u8]) {
    let key = &fixture.breaker_key;
    let breaker = &fixture.breakers.breakers[0];
    let decodes = breaker_layout(value);
    let what = |step: &str| format!("breaker record {value:?}: {step}");
    let opened_at = u64_at(value, 4).unwrap_or(NOW_MS);
    let head = RequestHead {
        method: "GET",
        path: "/",
        headers: &ctxgate_core::headers::NO_HEADERS,
    };
    for now in [
        0,
        NOW_MS,
        opened_at,
        opened_at.saturating_add(1000),
        u64::MAX,
    ] {
        let store = stored(key, value);
        let state = breaker.state(&store);
        if !decodes {
            assert_eq!(state, State::Closed, "{}", what("unreadable, not closed"));
        }
        let invalid_before = breaker.invalid_records.get();
        let (admission, _) = breaker.admit(&store, &head, now);
        check_breaker(
            &store,
            key,
            value,
            decodes,
            &what(&format!("admit at {now}")),
        );
        if !decodes {
            assert_eq!(
                admission,
                Admission::Pass,
                "{}",
                what("unreadable, not failing open")
            );
            assert_eq!(
                breaker.invalid_records.get(),
                invalid_before + 1,
                "{}",
                what("count")
            );
        }
        for (admission, failed) in [
            (admission, Some(true)),
            (Admission::Probe { round: opened_at }, Some(false)),
            (Admission::Probe { round: opened_at }, Some(true)),
            (Admission::Probe { round: opened_at }, None),
            (Admission::Pass, Some(false)),
            (Admission::Pass, Some(true)),
        ] {
            let _ = breaker.record(&store, &admission, failed, now);
            check_breaker(
                &store,
                key,
                value,
                decodes,
                &what(&format!("record {admission:?} {failed:?} at {now}")),
            );
        }
    }
}

fn check_breaker(store: &MemoryStore, key: &str, original: &[u8], decodes: bool, what: &str) {
    let now = value_of(store, key);
    if decodes {
        assert!(
            breaker_layout(&now),
            "{what}: wrote a record that does not decode: {now:?}"
        );
    } else {
        assert_eq!(
            now, original,
            "{what}: an undecodable record was overwritten"
        );
    }
}

// ---- the slot-hashing secret (shared.rs) ----------------------------------

fn secret(value: &[u8]) {
    let key = "fuzz.secret";
    let store = stored(key, value);
    let got = load_secret(&store, key, [9; 16]);
    assert_eq!(
        value_of(&store, key),
        value,
        "secret {value:?}: overwritten"
    );
    match payload(value, Kind::Secret).and_then(|p| <[u8; 16]>::try_from(p).ok()) {
        Some(bytes) => assert_eq!(got, Ok(Secret::from_bytes(bytes)), "secret {value:?}"),
        None => assert!(
            got.is_err(),
            "secret {value:?}: a bad record was used: {got:?}"
        ),
    }
}
