//! Shared data is not a trust root: end-to-end tests through a real Envoy
//! (1.40, V8) of what the ctxgate filters do with the records they keep in
//! proxy-wasm shared data when someone else wrote them.
//!
//! Shared data belongs to a `vm_id`: every plugin of that `vm_id` in one
//! Envoy reads and writes the same keys. The tests put such a neighbour
//! next to a ctxgate plugin: `tests/wasm-floor` (the benchmark's no-op
//! module, built by `make bench`) in its `write_shared_data` mode, with the
//! ctxgate plugin's `vm_id`, placed before it in the filter chain. For
//! every request that carries the neighbour's trigger header it overwrites
//! ctxgate's keys (`ctxgate/<plugin name>.<...>`) with bytes the test
//! chose, before the ctxgate filter sees the request: garbage, records of
//! another kind or version, or a forged but well-formed record.
//!
//! Modules before the versioned record format namespaced their keys by a
//! digest of the plugin configuration instead of by plugin name, and read
//! a value that did not decode as "empty". The neighbour writes the same
//! garbage under those keys too ([`legacy`]), so that against such modules
//! (`CTXGATE_DIST` pointing at an older build) the tests fail for the
//! reason they exist: a drained bucket refilled, a forged identity
//! believed, a configuration push that starts every bucket afresh.
//!
//! A configuration push is a real one: the listener is served by
//! file-based LDS and replaced while Envoy runs
//! ([`Envoy::push_listener`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ctxgate_e2e::yaml;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

// The token cache's digest is SHA-256.
use ctxgate_core::auth::cache::digest as sha256;
use ctxgate_core::auth::shared_cache::{SharedEntry, SharedTokenCache, provider_tag};
use ctxgate_core::record::Kind;
use ctxgate_core::shared::{MemoryStore, SharedStore};
use ctxgate_demo::mint::{DEMO_AUDIENCE, DEMO_ISSUER};
use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, Request, Response, Route, ScriptedServer, WasmFilter, demo_idp,
    repo_root, skip_on_native,
};
use serde_json::{Value, json};

/// Why the tests with a neighbour do not run on the native engine.
const NO_NEIGHBOUR: &str = "the native engine keeps shared state in its own process memory, \
    which no other plugin can write; the records' decoding is covered by the core's tests";

/// A read (cost 1) of a context the demo tokens may read.
const READ: &str = "/v1/contexts/projects/a";

/// Bytes that are no ctxgate record at all.
const NOT_A_RECORD: &[u8] = b"\x00\x01garbage from a neighbour";

/// A record header (magic, kind, version) and `payload` after it:
/// ctxgate's shared-data record format (`filters/core/src/record.rs`).
fn record(kind: Kind, version: u8, payload: &[u8]) -> Vec<u8> {
    [&[0xC7, kind as u8, version][..], payload].concat()
}

// --- The neighbour ---------------------------------------------------------

/// The module `make bench` builds from `tests/wasm-floor`.
fn floor_module() -> String {
    let path = repo_root().join("target/wasm32-wasip1/wasm/ctxgate_wasm_floor.wasm");
    assert!(
        path.is_file(),
        "{} not found: build it with \
         `cargo build --profile wasm --target wasm32-wasip1 -p ctxgate-wasm-floor` \
         (`make bench` does)",
        path.display()
    );
    path.display().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plugin named `name` in the shared data of `vm_id` that, for every
/// request carrying header `trigger`, sets each key of `writes` to its
/// bytes before the filters after it see the request.
fn neighbour(name: &str, vm_id: &str, trigger: &str, writes: &[(String, Vec<u8>)]) -> WasmFilter {
    let mut words = format!("write_shared_data on=request trigger={trigger}");
    for (key, value) in writes {
        assert!(!key.contains([' ', '=']), "{key}");
        words.push_str(&format!(" {key}={}", hex(value)));
    }
    WasmFilter::new(&floor_module())
        .name(name)
        .root_id(name)
        .vm_id(vm_id)
        .config(json!(words))
}

/// The keys of modules that namespaced shared data by configuration.
mod legacy {
    use serde_json::Value;

    /// The namespace such a module derived from its configuration: the
    /// first four bytes of the SHA-256 of the JSON it was handed.
    pub fn namespace(config: &Value) -> String {
        super::hex(&super::sha256(&config.to_string())[..4])
    }

    /// The token-cache slot layout of those modules: digest, provider,
    /// expiry, the verifying key's `kid`, payload. They rebuilt the
    /// identity from the payload with the claim rules alone.
    pub fn token_cache_entry(token: &str, valid_until: u64, kid: &str, payload: &Value) -> Vec<u8> {
        let mut value = super::sha256(token).to_vec();
        value.extend_from_slice(&0u16.to_le_bytes());
        value.extend_from_slice(&valid_until.to_le_bytes());
        value.push(u8::try_from(kid.len()).unwrap());
        value.extend_from_slice(kid.as_bytes());
        value.extend_from_slice(payload.to_string().as_bytes());
        value
    }
}

// --- Gateways --------------------------------------------------------------

fn now() -> u64 {
    u64::try_from(ctxgate_demo::mint::now()).unwrap()
}

/// The auth plugin configuration: the demo HS256 issuer, read, write and
/// delete (admin) operations on contexts, and `extra` merged over it.
fn auth_config(extra: Value) -> Value {
    let mut config = json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": [
            {"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "delete", "methods": ["DELETE"], "path": "/v1/contexts/{context}", "action": "admin"},
        ],
    });
    for (name, value) in extra.as_object().unwrap() {
        config[name] = value.clone();
    }
    config
}

fn auth(config: &Value) -> WasmFilter {
    WasmFilter::single("auth", config.clone())
}

fn token(tenant: &str) -> String {
    demo_idp::hs256_token(tenant, "user-1", &json!({}))
}

/// A limit that does not refill during a test.
fn monthly(capacity: u64) -> Value {
    json!([{"name": "monthly", "limit": 100, "window_seconds": 2_678_400, "burst": capacity}])
}

/// A rate-limit configuration with these `standard` limits (the default
/// tier) and the anonymous tier the configuration requires, plus `extra`.
fn limiter_config(standard: Value, extra: Value) -> Value {
    let mut config = json!({
        "tiers": {
            "standard": standard,
            "anonymous": [{"name": "per_minute", "limit": 60, "window_seconds": 60}],
        },
    });
    for (name, value) in extra.as_object().unwrap() {
        config[name] = value.clone();
    }
    config
}

/// `filters`, then the router to `upstream`.
fn gateway(filters: Vec<WasmFilter>, upstream: SocketAddr) -> EnvoyConfig {
    filters
        .into_iter()
        .fold(EnvoyConfig::new(), EnvoyConfig::filter)
        .route(Route::prefix("/").cluster("upstream"))
        .cluster(Cluster::new("upstream", [upstream]))
}

fn read(token: &str) -> Request {
    Request::get(READ).bearer(token)
}

/// `<metric>` (as the pipeline defined it), once it reached `value` (up to 5 s: the breaker
/// exports some counters on its 1 s tick), or its last value.
fn metric_reaching(envoy: &Envoy, metric: &str, value: u64) -> u64 {
    envoy.wait_for_metric(metric, value)
}

#[track_caller]
fn expect(response: &Response, status: u16, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: headers {:?} body {:?}",
        response.headers,
        response.text()
    );
}

// --- Records that do not decode --------------------------------------------

#[test]
fn a_rate_limit_slot_that_does_not_decode_refuses_instead_of_refilling_a_drained_tenant() {
    if skip_on_native(NO_NEIGHBOUR) {
        return;
    }
    let upstream = ScriptedServer::start();
    let limiter = limiter_config(monthly(3), json!({"slots": 1, "on_contention": "deny"}));
    // The one slot of the tenants' table, with a valid header and a payload
    // cut short; under the old key, anything.
    let garbage = vec![
        (
            "ctxgate/ctxgate_ratelimit.tenants.slot.0".to_owned(),
            record(Kind::BucketSlot, 1, &[5, 0, 0]),
        ),
        (
            format!("ctxgate_rl.{}.slot.0", legacy::namespace(&limiter)),
            NOT_A_RECORD.to_vec(),
        ),
    ];
    let envoy = Envoy::start(&gateway(
        vec![
            neighbour("neighbour", "ctxgate_ratelimit", "x-corrupt", &garbage),
            auth(&auth_config(json!({}))),
            WasmFilter::single("ratelimit", limiter),
        ],
        upstream.addr(),
    ));
    let addr = envoy.listener_addr();
    let acme = token("acme");
    for i in 0..3 {
        expect(&read(&acme).send(addr), 200, &format!("read {i}"));
    }
    expect(&read(&acme).send(addr), 429, "acme is drained");
    assert_eq!(
        metric_reaching(&envoy, "ctxgate_ratelimit.refused.local_limit", 1),
        1
    );

    // The neighbour overwrites the slot holding acme's bucket. An
    // unreadable bucket is not an empty one: acme stays refused, and so is
    // a tenant never seen before, whose bucket would live in that slot.
    expect(
        &read(&acme).header("x-corrupt", "1").send(addr),
        429,
        "acme after its bucket was overwritten",
    );
    expect(&read(&acme).send(addr), 429, "acme again");
    expect(&read(&token("globex")).send(addr), 429, "a new tenant");
    assert_eq!(
        metric_reaching(&envoy, "ctxgate_ratelimit.refused.contention", 3),
        3
    );
    assert!(metric_reaching(&envoy, "ctxgate_ratelimit.shared_record_invalid", 3) >= 3);
    assert_eq!(envoy.wasm_metric("ctxgate_ratelimit.allowed.local"), 3);
    assert_eq!(upstream.hits(), 3, "only the three reads acme paid for");
    assert!(envoy.wait_for_log(
        "rate-limit slot in shared data does not decode (the record payload does not decode)",
        Duration::from_secs(5)
    ));
}

#[test]
fn a_breaker_record_that_does_not_decode_fails_open_and_is_counted() {
    if skip_on_native(NO_NEIGHBOUR) {
        return;
    }
    let upstream = ScriptedServer::start();
    upstream.set_response(500, &[("x-upstream", "repo")], "down");
    let breakers = json!({"breakers": [{
        "name": "repo",
        "min_requests": 4,
        "error_threshold_percent": 50,
        "window_seconds": 10,
        "reset_timeout_ms": 60_000,
    }]});
    // A breaker record of a format version this module does not read (as a
    // newer module would write it); under the old key, anything.
    let garbage = vec![
        (
            "ctxgate/ctxgate_breaker.breaker.repo".to_owned(),
            record(Kind::Breaker, 99, &[1; 16]),
        ),
        (
            format!("ctxgate_cb.{}.repo", legacy::namespace(&breakers)),
            NOT_A_RECORD.to_vec(),
        ),
    ];
    let envoy = Envoy::start(&gateway(
        vec![
            neighbour("neighbour", "ctxgate_breaker", "x-corrupt", &garbage),
            WasmFilter::single("breaker", breakers),
        ],
        upstream.addr(),
    ));
    let addr = envoy.listener_addr();
    for i in 0..4 {
        expect(&Request::get("/").send(addr), 500, &format!("failure {i}"));
    }
    let open = Request::get("/").send(addr);
    expect(&open, 503, "the breaker opened");
    assert_eq!(open.header("x-upstream"), None);
    upstream.set_response(200, &[("x-upstream", "repo")], "ok");
    expect(&Request::get("/").send(addr), 503, "still open");

    // An unreadable breaker must not take the upstream down: it lets
    // requests through and says so in a counter. It leaves the record
    // alone, so every request after this one is counted too.
    let response = Request::get("/").header("x-corrupt", "1").send(addr);
    expect(&response, 200, "after the record was overwritten");
    assert_eq!(response.header("x-upstream"), Some("repo"));
    for _ in 0..3 {
        expect(&Request::get("/").send(addr), 200, "fails open");
    }
    assert!(
        metric_reaching(&envoy, "ctxgate_breaker.repo.shared_record_invalid", 4) >= 4,
        "each request through the unreadable breaker is counted"
    );
    assert!(envoy.wait_for_log(
        "breaker repo: shared record does not decode (record format version 99 is unknown); failing open",
        Duration::from_secs(5)
    ));
}

#[test]
fn a_token_cache_slot_that_does_not_decode_is_counted_and_the_token_verified_again() {
    if skip_on_native(NO_NEIGHBOUR) {
        return;
    }
    let upstream = ScriptedServer::start();
    let config = auth_config(json!({"cache": {"shared_slots": 1}}));
    // A ctxgate record, but a rate-limit bucket slot, where the one slot of
    // the shared token cache is; under the old key, anything.
    let garbage = vec![
        (
            "ctxgate/ctxgate_auth.cache.0".to_owned(),
            record(Kind::BucketSlot, 1, &[0]),
        ),
        (
            format!("ctxgate_auth.{}.cache.0", legacy::namespace(&config)),
            NOT_A_RECORD.to_vec(),
        ),
    ];
    let envoy = Envoy::start(
        &gateway(
            vec![
                neighbour("neighbour", "ctxgate_auth", "x-corrupt", &garbage),
                auth(&config),
            ],
            upstream.addr(),
        )
        .listener_field("connection_balance_config", json!({"exact_balance": {}})),
    );
    let [mut a, mut b] = envoy.connect_to_each_worker();
    let acme = token("acme");

    // Worker A verifies the token and publishes it; worker B finds the slot
    // overwritten: it counts the record and verifies the token itself.
    expect(&a.send(&read(&acme)), 200, "worker A");
    expect(
        &b.send(&read(&acme).header("x-corrupt", "1")),
        200,
        "worker B, slot overwritten",
    );
    assert_eq!(
        (
            envoy.wasm_metric("ctxgate_auth.cache.miss"),
            envoy.wasm_metric("ctxgate_auth.cache.shared_hit"),
        ),
        (2, 0),
        "both workers verified the token"
    );
    assert_eq!(
        envoy.wasm_metric("ctxgate_auth.shared_record_invalid"),
        1,
        "the slot that did not decode is counted"
    );
    // From then on B answers from its own cache.
    expect(&b.send(&read(&acme)), 200, "worker B again");
    assert_eq!(envoy.wasm_metric("ctxgate_auth.cache.hit"), 1);
    assert_eq!(upstream.hits(), 3);
    assert!(envoy.wait_for_log(
        "shared token cache slot does not decode (a ctxgate record of another kind (1))",
        Duration::from_secs(5)
    ));
}

// --- Forged records --------------------------------------------------------

/// RFC 7638 thumbprint of the demo HMAC key (`kty` `oct`): SHA-256 of its
/// required members in lexicographic order, as compact JSON.
fn demo_key_thumbprint() -> [u8; 32] {
    let k = demo_idp::demo_keys().hs256_secret_b64();
    sha256(&format!(r#"{{"k":"{k}","kty":"oct"}}"#))
}

/// An unsigned token (its signature is 16 bytes of nothing) with `claims`:
/// what an attacker who can write shared data but holds no key sends.
fn forged_token(claims: &Value) -> String {
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    let b64 = |bytes: &[u8]| Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap();
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": ctxgate_demo::keys::KID_HS256});
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(&[0; 16])
    )
}

/// Admin rights on everything of tenant acme, for `aud`, expiring at `exp`.
fn admin_claims(aud: &str, exp: u64) -> Value {
    json!({
        "iss": DEMO_ISSUER,
        "sub": "mallory",
        "aud": aud,
        "iat": exp.saturating_sub(3600),
        "exp": exp,
        "tenant_id": "acme",
        "context_scopes": ["admin:projects/*"],
    })
}

/// The shared token-cache entry a ctxgate VM would write for `token`
/// verified with the demo key and `claims`, valid for another hour, in the
/// one slot of plugin `ctxgate_auth`: written by the filter's own encoder.
fn forged_entry(token: &str, claims: &Value) -> (String, Vec<u8>) {
    let store = MemoryStore::default();
    let namespace = "ctxgate/ctxgate_auth";
    SharedTokenCache::new(namespace, 1).put(
        &store,
        &sha256(token),
        &SharedEntry {
            provider: 0,
            provider_tag: provider_tag("demo", DEMO_ISSUER),
            valid_until: now() + 3600,
            thumbprint: demo_key_thumbprint(),
            payload: claims.to_string().into_bytes(),
        },
    );
    let key = format!("{namespace}.cache.0");
    let value = store.get(&key).unwrap().0;
    assert_eq!(value[..3], [0xC7, Kind::TokenCacheSlot as u8, 1]);
    (key, value)
}

#[test]
fn a_forged_token_cache_entry_is_checked_against_the_provider_before_it_is_believed() {
    if skip_on_native(NO_NEIGHBOUR) {
        return;
    }
    let upstream = ScriptedServer::start();
    let config = auth_config(json!({"cache": {"shared_slots": 1}}));
    let legacy_key = format!("ctxgate_auth.{}.cache.0", legacy::namespace(&config));
    let hour = now() + 3600;
    // Each forgery: an unsigned token, and an entry for it claiming it was
    // verified (with a key the provider holds) for admin rights.
    let forgery = |claims: &Value| {
        let token = forged_token(claims);
        let (key, entry) = forged_entry(&token, claims);
        let old = legacy::token_cache_entry(&token, hour, ctxgate_demo::keys::KID_HS256, claims);
        (token, vec![(key, entry), (legacy_key.clone(), old)])
    };
    let (other_audience, other_audience_writes) = forgery(&admin_claims("another-api", hour));
    let (expired, expired_writes) = forgery(&admin_claims(DEMO_AUDIENCE, now() - 7200));
    let (believable, believable_writes) = forgery(&admin_claims(DEMO_AUDIENCE, hour));
    let envoy = Envoy::start(&gateway(
        vec![
            neighbour(
                "forge_audience",
                "ctxgate_auth",
                "x-forge-audience",
                &other_audience_writes,
            ),
            neighbour(
                "forge_expired",
                "ctxgate_auth",
                "x-forge-expired",
                &expired_writes,
            ),
            neighbour(
                "forge_believable",
                "ctxgate_auth",
                "x-forge-believable",
                &believable_writes,
            ),
            auth(&config),
        ],
        upstream.addr(),
    ));
    let addr = envoy.listener_addr();
    let admin = Request::new("DELETE", READ);

    // The entry names the provider and a key it holds, but claims another
    // audience, or an `exp` long past: the filter checks the claims again,
    // does not believe them, and verifies the token, which has no valid
    // signature.
    for (what, token, trigger) in [
        ("another audience", &other_audience, "x-forge-audience"),
        ("an expired exp", &expired, "x-forge-expired"),
    ] {
        let response = admin.clone().bearer(token).header(trigger, "1").send(addr);
        expect(&response, 401, what);
        assert_eq!(response.json()["reason"], "bad_signature", "{what}");
    }
    assert_eq!(envoy.wasm_metric("ctxgate_auth.cache.shared_hit"), 0);
    assert_eq!(envoy.wasm_metric("ctxgate_auth.cache.miss"), 2);
    assert_eq!(envoy.wasm_metric("ctxgate_auth.denied.bad_signature"), 2);
    assert_eq!(upstream.hits(), 0);

    // The same forgery with claims the provider would accept is believed:
    // whoever writes a vm_id's shared data is inside its trust boundary,
    // which is why every plugin needs a vm_id (or a root namespace) of its
    // own. This also shows the entries above were well-formed: what
    // refused them was the audience and the expiry.
    let response = admin
        .clone()
        .bearer(&believable)
        .header("x-forge-believable", "1")
        .send(addr);
    expect(&response, 200, "claims the provider accepts");
    assert_eq!(envoy.wasm_metric("ctxgate_auth.cache.shared_hit"), 1);
    assert_eq!(envoy.wasm_metric("ctxgate_auth.shared_record_invalid"), 0);
}

// --- Configuration pushes ---------------------------------------------------

#[test]
fn a_configuration_push_keeps_the_bucket_levels_of_limits_it_did_not_change() {
    let upstream = ScriptedServer::start();
    let auth_filter = auth(&auth_config(json!({})));
    // The gateway with acme's (the standard tier's) limit at `capacity`,
    // and `extra` rate-limit settings.
    let version = |capacity: u64, extra: Value| {
        let limiter = limiter_config(monthly(capacity), extra);
        gateway(
            vec![
                auth_filter.clone(),
                WasmFilter::single("ratelimit", limiter),
            ],
            upstream.addr(),
        )
        .dynamic_listener()
    };
    let mut envoy = Envoy::start(&version(3, json!({})));
    let acme = token("acme");
    let reads = |envoy: &Envoy, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| read(&acme).send(envoy.listener_addr()).status)
            .collect()
    };
    assert_eq!(reads(&envoy, 4), [200, 200, 200, 429], "acme drains");

    // Pushes that change other things: prices, a new tier, another
    // tenant's limits. acme's limit is the same, and so is its bucket.
    // Every version uses the same keys: shared data does not grow with
    // configuration versions.
    let pushes = [
        json!({"costs": {"read": 2, "write": 3}}),
        json!({
            "costs": {"read": 2, "write": 3},
            "tenants": {"globex": {"tier": "premium"}},
            "tiers": {
                "standard": monthly(3),
                "premium": monthly(50),
                "anonymous": [{"name": "per_minute", "limit": 60, "window_seconds": 60}],
            },
        }),
    ];
    for (i, push) in pushes.into_iter().enumerate() {
        envoy.push_listener(&version(3, push));
        assert_eq!(reads(&envoy, 1), [429], "acme after push {i}");
        // The push is in force: a tenant seen for the first time pays the
        // new price (2 of 3) from a full bucket.
        let fresh = read(&token(&format!("tenant-{i}"))).send(envoy.listener_addr());
        expect(&fresh, 200, "a new tenant");
        assert_eq!(
            fresh.header("x-ratelimit-remaining"),
            Some("1"),
            "read costs 2 after push {i}"
        );
    }
    let premium = read(&token("globex")).send(envoy.listener_addr());
    expect(&premium, 200, "globex");
    assert_eq!(premium.header("x-ratelimit-remaining"), Some("48"));

    // Raising acme's limit does not refill its bucket either: the level
    // stays, only more fits (5 - 3 used = 2 reads at cost 1).
    envoy.push_listener(&version(5, json!({})));
    assert_eq!(reads(&envoy, 3), [200, 200, 429], "acme's limit raised");
    assert_eq!(
        envoy.counter("listener_manager.listener_in_place_updated"),
        3,
        "three pushes, each applied to the running listener"
    );
    assert_eq!(upstream.hits(), 8);
}

#[test]
fn two_plugins_sharing_a_vm_id_keep_their_state_apart() {
    // As Istio runs WasmPlugins: one (empty) vm_id for all, told apart by
    // plugin name. Two rate limiters with the same configuration, each
    // allowing 4 reads: sharing buckets, they would charge each read twice.
    let upstream = ScriptedServer::start();
    let limiter = |name: &str| {
        WasmFilter::ctxgate(name)
            .vm_id("")
            .stage("ratelimit", limiter_config(monthly(4), json!({})))
    };
    let envoy = Envoy::start(&gateway(
        vec![
            auth(&auth_config(json!({}))),
            limiter("ratelimit_a"),
            limiter("ratelimit_b"),
        ],
        upstream.addr(),
    ));
    let acme = token("acme");
    let statuses: Vec<u16> = (0..5)
        .map(|_| read(&acme).send(envoy.listener_addr()).status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429],
        "each limiter charges each read once, in its own bucket"
    );
    assert_eq!(upstream.hits(), 4);
}

// --- Shipped configurations -------------------------------------------------

/// Plugin name and vm_id of every wasm filter in a bootstrap.
fn wasm_plugins(bootstrap: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut stack = vec![bootstrap];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(vm_id) = map.get("vm_config").and_then(|vm| vm.get("vm_id"))
                    && let Some(name) = map.get("name").and_then(Value::as_str)
                {
                    found.push((name.to_owned(), vm_id.as_str().unwrap_or("").to_owned()));
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found.sort();
    found
}

#[track_caller]
fn assert_distinct(what: &str, values: &[String]) {
    let unique: BTreeSet<&String> = values.iter().collect();
    assert_eq!(unique.len(), values.len(), "{what} repeat: {values:?}");
}

#[test]
fn every_shipped_configuration_gives_each_plugin_its_own_namespace() {
    // envoy/demo.yaml: one plugin, the whole pipeline, with its own vm_id,
    // and the audit singleton in that same VM (the audit queue and the
    // workers' shares of it are that VM's).
    let demo = std::fs::read_to_string(repo_root().join("envoy/demo.yaml")).unwrap();
    let demo = yaml::documents(&demo).unwrap();
    let plugins = wasm_plugins(&demo[0]);
    assert_eq!(
        plugins,
        [
            ("ctxgate".to_owned(), "ctxgate".to_owned()),
            ("ctxgate_audit".to_owned(), "ctxgate".to_owned()),
        ],
        "the pipeline and its audit singleton"
    );

    // The e2e harness: single-stage plugins are named, and get a vm_id,
    // after their stage.
    let harness: Vec<(String, String)> = ["auth", "ratelimit", "tagging", "breaker"]
        .map(|stage| {
            let filter = WasmFilter::single(stage, json!({}));
            (filter.name, filter.vm_id)
        })
        .into();
    let (names, vm_ids): (Vec<_>, Vec<_>) = harness.into_iter().unzip();
    assert_distinct("harness plugin names", &names);
    assert_distinct("harness vm_ids", &vm_ids);

    // istio/: Istio sets no vm_id (every WasmPlugin shares the empty one)
    // and names each plugin `<namespace>.<name>`: the filters' namespace.
    let mut istio = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("istio")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            istio.extend(yaml::documents(&text).unwrap());
        }
    }
    let plugins: Vec<&Value> = istio.iter().filter(|o| o["kind"] == "WasmPlugin").collect();
    assert_eq!(plugins.len(), 1, "one WasmPlugin runs the whole pipeline");
    let names: Vec<String> = plugins
        .iter()
        .map(|p| {
            let namespace = p["metadata"]["namespace"].as_str().unwrap_or("default");
            format!("{namespace}.{}", p["metadata"]["name"].as_str().unwrap())
        })
        .collect();
    assert_distinct("WasmPlugin names", &names);
    let root_ids: Vec<String> = plugins
        .iter()
        .map(|p| p["spec"]["pluginName"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_distinct("WasmPlugin pluginNames (root ids)", &root_ids);
}
