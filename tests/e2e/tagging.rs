//! End-to-end tests of the tagging filter through a real Envoy (1.40, V8):
//! auth -> tagging -> router, with a route table that matches the tag
//! headers and sends each match to its own demo echo upstream
//! (`standard`, `high-memory`, `compute`, `cache`, `fast-ssd`, `eu`,
//! `variant-b`, ...). The upstream's name in the response says where Envoy
//! routed the request, and its echo of the request headers says which tag
//! values the gateway set, so every case checks both.
//!
//! Tokens are HS256, signed with the demo HMAC secret and trusted inline:
//! the cheapest to mint and to verify, which matters for the 10 000-tenant
//! variant split.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use ctxgate_core::tagging::config::VariantConfig;
use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{
    Client, Cluster, Envoy, EnvoyConfig, Request, Response, Route, WasmFilter, demo_idp,
    filter_log_prefix, filter_rejected,
};
use serde_json::{Value, json};

/// A read of this context is the plain request most cases start from.
const READ: &str = "/v1/contexts/projects/a";
const CONTEXT: &str = "projects/a";

/// The tag headers the filter owns (its default `headers` map).
const TAG_HEADERS: [&str; 6] = [
    "x-context-tenant",
    "x-context-type",
    "x-context-priority",
    "x-context-region",
    "x-context-id",
    "x-context-variant",
];

fn token(tenant: &str, extra: Value) -> String {
    demo_idp::hs256_token(tenant, "user-1", &extra)
}

fn tier(tier: &str) -> Value {
    json!({"rate_limits": {"tier": tier}})
}

fn operations() -> Value {
    json!([
        {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
        {"name": "write", "methods": ["PUT", "POST", "PATCH"], "path": "/v1/contexts/{context}", "action": "write"},
        {"name": "complex_query", "methods": ["POST"], "path": "/v1/query", "context_param": "context", "action": "read"},
        {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"},
    ])
}

/// The auth stage trusting the demo HMAC secret inline. Requests outside
/// the operation map only need a valid token (`/v1/bulk/...`,
/// `/v1/reports/...`), `/public` needs none, and `data_region` is passed
/// on to tagging.
fn auth_stage() -> Value {
    json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": operations(),
        "unmatched_requests": "authenticate",
        "public_paths": [{"prefix": "/public"}],
        "filter_state_claims": ["data_region"],
    })
}

/// One ctxgate plugin: the auth stage, then the tagging stage.
fn auth_and_tagging(tagging: Value) -> WasmFilter {
    WasmFilter::ctxgate("ctxgate")
        .stage("auth", auth_stage())
        .stage("tagging", tagging)
}

/// Size threshold of the `large contexts` rule, in bytes.
const LARGE: usize = 65_536;

/// One rule per condition type, in an order that makes first-match-wins
/// observable: `bulk writes` sets `priority` before `premium tenants`
/// can, the size rule sets `type` before `graph work` can.
fn tagging_rules() -> Value {
    json!({
        "rules": [
            {"name": "large contexts", "when": {"size": {"above": LARGE}}, "set": {"type": "large-context"}},
            {"name": "bulk writes",
             "when": {"all": [{"method": ["POST", "PUT"]}, {"path": {"prefix": "/v1/bulk/"}}]},
             "set": {"type": "large-context", "priority": "low"}},
            {"name": "graph work", "when": {"operation": ["graph_traversal", "complex_query"]}, "set": {"type": "compute"}},
            {"name": "premium tenants", "when": {"claim": {"name": "tier", "one_of": ["premium", "enterprise"]}}, "set": {"priority": "high"}},
            {"name": "reports", "when": {"path": {"regex": "/v1/reports/[0-9]+"}}, "set": {"priority": "high"}},
            {"name": "interactive",
             "when": {"any": [
                 {"header": {"name": "x-client-class", "one_of": ["interactive", "realtime"]}},
                 {"path": {"exact": "/v1/hot"}},
             ]},
             "set": {"priority": "high"}},
            {"name": "cached reads",
             "when": {"all": [
                 {"header": {"name": "x-prefer", "exact": "cached"}},
                 {"not": {"method": ["POST", "PUT", "PATCH", "DELETE"]}},
             ]},
             "set": {"type": "cached"}},
        ],
        "tenants": {"globex": {"region": "eu-west"}},
        "from_claims": {"region": "data_region"},
        "defaults": {"type": "standard", "priority": "normal", "region": "us-east"},
    })
}

/// Echo upstreams, one cluster each, named after the upstream.
struct Upstreams {
    clusters: Vec<Cluster>,
    _handles: Vec<ShutdownHandle>,
}

impl Upstreams {
    fn start(names: &[&str]) -> Upstreams {
        let mut clusters = Vec::new();
        let mut handles = Vec::new();
        for name in names {
            let (addr, handle) = ctxgate_demo::spawn_in_thread("127.0.0.1:0", name).unwrap();
            clusters.push(Cluster::new(name, [addr]));
            handles.push(handle);
        }
        Upstreams {
            clusters,
            _handles: handles,
        }
    }

    fn add_to(&self, mut config: EnvoyConfig) -> EnvoyConfig {
        for cluster in &self.clusters {
            config = config.cluster(cluster.clone());
        }
        config
    }
}

const UPSTREAMS: [&str; 7] = [
    "standard",
    "high-memory",
    "compute",
    "cache",
    "fast-ssd",
    "eu",
    "variant-b",
];

/// The route table: a route per tag value that matters, the first match
/// wins, everything else goes to `standard`.
fn tag_routes(config: EnvoyConfig) -> EnvoyConfig {
    let on = |header: &str, value: &str, cluster: &str| {
        Route::prefix("/").header(header, value).cluster(cluster)
    };
    config
        .route(on("x-context-type", "large-context", "high-memory"))
        .route(on("x-context-type", "compute", "compute"))
        .route(on("x-context-type", "cached", "cache"))
        .route(on("x-context-priority", "high", "fast-ssd"))
        .route(on("x-context-region", "eu-west", "eu"))
        .route(on("x-context-variant", "b", "variant-b"))
        .route(Route::prefix("/").cluster("standard"))
}

/// Where a request landed and the tag headers the upstream received
/// (`x-context-type` -> value; a header received twice shows both values
/// joined by `|`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Landed {
    upstream: String,
    tags: BTreeMap<String, String>,
}

#[track_caller]
fn landed(response: &Response) -> Landed {
    assert_eq!(
        response.status,
        200,
        "expected an upstream's 200; headers {:?} body {:?}",
        response.headers,
        response.text()
    );
    let echo = response.json();
    let upstream = echo["upstream"].as_str().unwrap().to_owned();
    assert_eq!(response.header("x-upstream"), Some(upstream.as_str()));
    let mut tags = BTreeMap::new();
    for name in TAG_HEADERS {
        let value = match &echo["headers"][name] {
            Value::Null => continue,
            Value::String(v) => v.clone(),
            Value::Array(values) => values
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>()
                .join("|"),
            other => panic!("unexpected echo value {other}"),
        };
        tags.insert(name.to_owned(), value);
    }
    Landed { upstream, tags }
}

/// What a case expects: an upstream, and the tag headers as overrides of
/// the gateway's values for a plain acme request (`tenant` acme, `type`
/// standard, `priority` normal, `region` us-east, no `id`, no `variant`).
/// An override with value `""` expects the header to be absent.
#[derive(Debug, Clone)]
struct Expect {
    upstream: &'static str,
    tags: Vec<(&'static str, &'static str)>,
}

fn expect(upstream: &'static str, tags: &[(&'static str, &'static str)]) -> Expect {
    Expect {
        upstream,
        tags: tags.to_vec(),
    }
}

impl Expect {
    fn landed(&self) -> Landed {
        let mut tags: BTreeMap<String, String> = [
            ("tenant", "acme"),
            ("type", "standard"),
            ("priority", "normal"),
            ("region", "us-east"),
        ]
        .iter()
        .chain(self.tags.iter())
        .map(|(tag, value)| (format!("x-context-{tag}"), (*value).to_owned()))
        .collect();
        tags.retain(|_, value| !value.is_empty());
        Landed {
            upstream: self.upstream.to_owned(),
            tags,
        }
    }
}

struct Case {
    what: &'static str,
    request: Request,
    expect: Expect,
}

fn case(what: &'static str, request: Request, expect: Expect) -> Case {
    Case {
        what,
        request,
        expect,
    }
}

/// Sends every case on a fresh connection and fails once, listing every
/// case that went wrong.
#[track_caller]
fn check_cases(addr: SocketAddr, cases: &[Case]) {
    let mut wrong = Vec::new();
    for case in cases {
        let response = case.request.send(addr);
        if response.status != 200 {
            wrong.push(format!(
                "{}: status {} body {}",
                case.what,
                response.status,
                response.text()
            ));
            continue;
        }
        let got = landed(&response);
        let want = case.expect.landed();
        if got != want {
            wrong.push(format!(
                "{}:\n    got  {got:?}\n    want {want:?}",
                case.what
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n  {}",
        wrong.len(),
        cases.len(),
        wrong.join("\n  ")
    );
}

fn get(path: &str, token: &str) -> Request {
    Request::get(path).bearer(token)
}

fn post(path: &str, token: &str, body_len: usize) -> Request {
    Request::post(path).bearer(token).body(vec![b'x'; body_len])
}

/// A request for every rule and condition type, with where it must land.
fn routing_cases() -> Vec<Case> {
    let acme = token("acme", json!({}));
    let premium = token("acme", tier("premium"));
    let enterprise = token("acme", tier("enterprise"));
    let explicit_standard = token("acme", tier("standard"));
    let globex = token("globex", json!({}));
    let globex_ap = token("globex", json!({"data_region": "ap-south"}));
    let initech_eu = token("initech", json!({"data_region": "eu-west"}));
    let initech_ap = token("initech", json!({"data_region": "ap-south"}));
    let initech = token("initech", json!({}));
    let id = ("id", CONTEXT);
    let graph = "/v1/graph/traverse?context=projects/a";
    vec![
        // defaults
        case("plain read", get(READ, &acme), expect("standard", &[id])),
        case(
            "request outside the operation map",
            get("/v1/ping", &acme),
            expect("standard", &[]),
        ),
        // size: content-length, never a size the client only declares
        case(
            "write with a body one byte over the threshold",
            post(READ, &acme, LARGE + 1),
            expect("high-memory", &[("type", "large-context"), id]),
        ),
        case(
            "write with a body exactly at the threshold",
            post(READ, &acme, LARGE),
            expect("standard", &[id]),
        ),
        case(
            "read declaring a 10 MiB context in a header",
            get(READ, &acme).header("x-context-size", "10485760"),
            expect("standard", &[id]),
        ),
        case(
            "small write declaring a large context in a header",
            post(READ, &acme, 10).header("x-context-size", &(LARGE + 1).to_string()),
            expect("standard", &[id]),
        ),
        case(
            "chunked write of unknown length: the configured default (0 bytes)",
            Request::new("PUT", READ)
                .bearer(&acme)
                .chunked(&vec![b'x'; LARGE * 2], 4096),
            expect("standard", &[id]),
        ),
        // operation
        case(
            "graph traversal",
            post(graph, &acme, 2),
            expect("compute", &[("type", "compute"), id]),
        ),
        case(
            "complex query",
            post("/v1/query?context=projects/a", &acme, 2),
            expect("compute", &[("type", "compute"), id]),
        ),
        case(
            "small write (another operation)",
            post(READ, &acme, 10),
            expect("standard", &[id]),
        ),
        // claim: rate_limits.tier
        case(
            "premium tier",
            get(READ, &premium),
            expect("fast-ssd", &[("priority", "high"), id]),
        ),
        case(
            "enterprise tier",
            get(READ, &enterprise),
            expect("fast-ssd", &[("priority", "high"), id]),
        ),
        case(
            "explicit standard tier",
            get(READ, &explicit_standard),
            expect("standard", &[id]),
        ),
        // method + path prefix (all)
        case(
            "POST under /v1/bulk/",
            post("/v1/bulk/import", &acme, 10),
            expect(
                "high-memory",
                &[("type", "large-context"), ("priority", "low")],
            ),
        ),
        case(
            "PUT under /v1/bulk/",
            Request::new("PUT", "/v1/bulk/import")
                .bearer(&acme)
                .body("x"),
            expect(
                "high-memory",
                &[("type", "large-context"), ("priority", "low")],
            ),
        ),
        case(
            "GET under /v1/bulk/ (method does not match)",
            get("/v1/bulk/import", &acme),
            expect("standard", &[]),
        ),
        case(
            "POST to /v1/bulkier (prefix does not match)",
            post("/v1/bulkier", &acme, 10),
            expect("standard", &[]),
        ),
        // path regex (anchored)
        case(
            "report by number",
            get("/v1/reports/2024", &acme),
            expect("fast-ssd", &[("priority", "high")]),
        ),
        case(
            "report path with a suffix (regex is anchored)",
            get("/v1/reports/2024x", &acme),
            expect("standard", &[]),
        ),
        case(
            "report path without a number",
            get("/v1/reports/", &acme),
            expect("standard", &[]),
        ),
        // header conditions (any, one_of, exact, not)
        case(
            "interactive client",
            get(READ, &acme).header("x-client-class", "interactive"),
            expect("fast-ssd", &[("priority", "high"), id]),
        ),
        case(
            "realtime client",
            get(READ, &acme).header("x-client-class", "realtime"),
            expect("fast-ssd", &[("priority", "high"), id]),
        ),
        case(
            "batch client",
            get(READ, &acme).header("x-client-class", "batch"),
            expect("standard", &[id]),
        ),
        case(
            "the other branch of any: path /v1/hot",
            get("/v1/hot", &acme),
            expect("fast-ssd", &[("priority", "high")]),
        ),
        case(
            "read preferring the cache",
            get(READ, &acme).header("x-prefer", "cached"),
            expect("cache", &[("type", "cached"), id]),
        ),
        case(
            "write preferring the cache (not a read method)",
            post(READ, &acme, 10).header("x-prefer", "cached"),
            expect("standard", &[id]),
        ),
        // tenant table, from_claims, defaults
        case(
            "tenant with a region in the tenant table",
            get(READ, &globex),
            expect("eu", &[("tenant", "globex"), ("region", "eu-west"), id]),
        ),
        case(
            "tenant table beats the data_region claim",
            get(READ, &globex_ap),
            expect("eu", &[("tenant", "globex"), ("region", "eu-west"), id]),
        ),
        case(
            "data_region claim",
            get(READ, &initech_eu),
            expect("eu", &[("tenant", "initech"), ("region", "eu-west"), id]),
        ),
        case(
            "data_region claim without a route of its own",
            get(READ, &initech_ap),
            expect(
                "standard",
                &[("tenant", "initech"), ("region", "ap-south"), id],
            ),
        ),
        case(
            "no region anywhere: the default",
            get(READ, &initech),
            expect("standard", &[("tenant", "initech"), id]),
        ),
        // first match wins, per tag
        case(
            "premium bulk write: bulk's priority came first",
            post("/v1/bulk/import", &premium, 10),
            expect(
                "high-memory",
                &[("type", "large-context"), ("priority", "low")],
            ),
        ),
        case(
            "large graph traversal: the size rule's type came first",
            post(graph, &acme, LARGE + 1),
            expect("high-memory", &[("type", "large-context"), id]),
        ),
        case(
            "premium graph traversal: each rule sets its own tag",
            post(graph, &premium, 2),
            expect("compute", &[("type", "compute"), ("priority", "high"), id]),
        ),
        case(
            "premium globex: priority route before region route, region still set",
            get(READ, &token("globex", tier("premium"))),
            expect(
                "fast-ssd",
                &[
                    ("tenant", "globex"),
                    ("priority", "high"),
                    ("region", "eu-west"),
                    id,
                ],
            ),
        ),
        // no identity (public path): rules on the request still apply
        case(
            "public path, no token",
            Request::get("/public/info"),
            expect("standard", &[("tenant", "")]),
        ),
        case(
            "public path declaring a large context",
            Request::get("/public/info").header("x-context-size", "10485760"),
            expect("standard", &[("tenant", "")]),
        ),
    ]
}

fn tagged_gateway(upstreams: &Upstreams) -> Envoy {
    let config = EnvoyConfig::new().filter(auth_and_tagging(tagging_rules()));
    Envoy::start(&upstreams.add_to(tag_routes(config)))
}

#[test]
fn it_routes_each_rule_and_condition_type_to_its_upstream() {
    let upstreams = Upstreams::start(&UPSTREAMS);
    let envoy = tagged_gateway(&upstreams);
    let cases = routing_cases();
    check_cases(envoy.listener_addr(), &cases);
    assert_eq!(
        envoy.wait_for_metric("ctxgate_tagging.tagged", cases.len() as u64),
        cases.len() as u64,
        "every request went through the tagging filter once"
    );
}

/// Re-selection, first half: the same requests through the same route
/// table without the tagging filter all take the default route, so it is
/// the filter's tag that moves them in
/// [`it_routes_each_rule_and_condition_type_to_its_upstream`]. The route
/// table does honour a tag header (a client's, here): which is why
/// [`it_ignores_routing_tags_sent_by_the_client`] matters.
#[test]
fn without_the_tagging_filter_the_same_requests_take_the_default_route() {
    let upstreams = Upstreams::start(&UPSTREAMS);
    let envoy = Envoy::start(&upstreams.add_to(tag_routes(
        EnvoyConfig::new().filter(WasmFilter::single("auth", auth_stage())),
    )));
    let addr = envoy.listener_addr();

    let cases = routing_cases();
    let moved: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let landed = landed(&case.request.send(addr));
            (landed.upstream != "standard").then(|| format!("{} -> {}", case.what, landed.upstream))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "without tagging these left the default route: {moved:#?}"
    );
    // The cases cover every non-default route of the table.
    let targets: BTreeSet<&str> = cases.iter().map(|c| c.expect.upstream).collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            "standard",
            "high-memory",
            "compute",
            "cache",
            "fast-ssd",
            "eu"
        ])
    );

    let acme = token("acme", json!({}));
    let by_client_header = landed(
        &get(READ, &acme)
            .header("x-context-type", "large-context")
            .send(addr),
    );
    assert_eq!(
        by_client_header.upstream, "high-memory",
        "the route table routes on the header, whoever set it"
    );
}

/// Re-selection, second half, and the spoofing guarantee: a tag header
/// the client sends would pick a route (see the test above), but the
/// filter removes it and sets its own value, and Envoy routes on that.
#[test]
fn it_ignores_routing_tags_sent_by_the_client() {
    let upstreams = Upstreams::start(&UPSTREAMS);
    let envoy = tagged_gateway(&upstreams);
    let acme = token("acme", json!({}));
    let premium = token("acme", tier("premium"));
    let plain = || expect("standard", &[("id", CONTEXT)]);

    let spoofs: [(&str, &str); 8] = [
        ("x-context-type", "large-context"),
        ("x-context-type", "compute"),
        ("x-context-type", "cached"),
        ("x-context-priority", "high"),
        ("x-context-region", "eu-west"),
        ("x-context-variant", "b"),
        ("x-context-tenant", "globex"),
        ("x-context-id", "projects/other"),
    ];
    let mut cases: Vec<Case> = spoofs
        .iter()
        .map(|(name, value)| {
            case(
                "one spoofed tag",
                get(READ, &acme).header(name, value),
                plain(),
            )
        })
        .collect();
    let all = |request: Request| {
        spoofs.iter().fold(request, |request, (name, value)| {
            request.header(name, value)
        })
    };
    cases.extend([
        case("every tag spoofed at once", all(get(READ, &acme)), plain()),
        case(
            "spoofed tags sent twice, in mixed case",
            get(READ, &acme)
                .header("X-Context-Type", "large-context")
                .header("x-context-type", "large-context")
                .header("X-CONTEXT-PRIORITY", "high")
                .header("x-context-region", "eu-west")
                .header("x-context-region", "eu-west"),
            plain(),
        ),
        case(
            "premium caller spoofing a large context: the gateway's priority, not the client's type",
            all(get(READ, &premium)),
            expect("fast-ssd", &[("priority", "high"), ("id", CONTEXT)]),
        ),
        case(
            "spoofed low priority does not hide a premium caller",
            get(READ, &premium).header("x-context-priority", "low"),
            expect("fast-ssd", &[("priority", "high"), ("id", CONTEXT)]),
        ),
        case(
            "no identity: spoofed tenant, variant and id are removed, not replaced",
            all(Request::get("/public/info")),
            expect("standard", &[("tenant", "")]),
        ),
    ]);
    check_cases(envoy.listener_addr(), &cases);
}

/// Tagging without auth in front: no identity, so no tenant, claim or
/// variant tags, but every owned header the client sent is still removed
/// and the request-based rules still route (the operation comes from the
/// filter's own operation map).
#[test]
fn tagging_alone_still_strips_client_tags() {
    let upstreams = Upstreams::start(&UPSTREAMS);
    let mut config = tagging_rules();
    config["operations"] = operations();
    config["variant"] = json!({"variants": [{"name": "b", "weight": 1}]});
    let envoy = Envoy::start(&upstreams.add_to(tag_routes(
        EnvoyConfig::new().filter(WasmFilter::single("tagging", config)),
    )));
    let anonymous = [("tenant", "")];
    let spoofed = |request: Request| {
        request
            .header("x-context-type", "large-context")
            .header("x-context-priority", "high")
            .header("x-context-region", "eu-west")
            .header("x-context-tenant", "globex")
            .header("x-context-variant", "b")
            .header("x-context-id", "projects/other")
            .header("x-context-tier", "premium")
            .header("authorization", "Bearer not-checked-here")
    };
    check_cases(
        envoy.listener_addr(),
        &[
            case(
                "read with every tag spoofed",
                spoofed(Request::get(READ)),
                expect("standard", &[("tenant", ""), ("id", CONTEXT)]),
            ),
            case(
                "request outside the operation map, every tag spoofed",
                spoofed(Request::get("/v1/ping")),
                expect("standard", &anonymous),
            ),
            case(
                "graph traversal (operation from tagging's own map)",
                spoofed(Request::post("/v1/graph/traverse?context=projects/a").body("{}")),
                expect(
                    "compute",
                    &[("tenant", ""), ("type", "compute"), ("id", CONTEXT)],
                ),
            ),
            case(
                "large context",
                spoofed(Request::post(READ).body(vec![b'x'; LARGE + 1])),
                expect(
                    "high-memory",
                    &[("tenant", ""), ("type", "large-context"), ("id", CONTEXT)],
                ),
            ),
        ],
    );
}

/// `x-context-id` drives a consistent hash: a RING_HASH cluster of three
/// echo upstreams behind a route hashing on the header.
#[test]
fn it_pins_each_context_to_one_host_of_a_ring_hash_cluster() {
    let names = ["ctx-a", "ctx-b", "ctx-c"];
    let mut addrs = Vec::new();
    let mut handles = Vec::new();
    for name in names {
        let (addr, handle) = ctxgate_demo::spawn_in_thread("127.0.0.1:0", name).unwrap();
        addrs.push(addr);
        handles.push(handle);
    }
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .filter(auth_and_tagging(json!({})))
            .route(Route::raw(json!({
                "match": {"prefix": "/"},
                "route": {
                    "cluster": "contexts",
                    "timeout": "5s",
                    "hash_policy": [{"header": {"header_name": "x-context-id"}}],
                },
            })))
            .cluster(Cluster::new("contexts", addrs).lb_policy("RING_HASH")),
    );
    let addr = envoy.listener_addr();
    let before = envoy.worker_connections(2);
    let acme = token("acme", json!({}));

    // Every request on its own connection, so both workers (each with its
    // own load balancer instance) serve each context.
    let contexts: Vec<String> = (0..24).map(|i| format!("projects/p{i}")).collect();
    let mut hosts: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut wrong_id = Vec::new();
    for (i, context) in contexts.iter().enumerate() {
        let spoof = format!("projects/spoof-{i}");
        let requests = [
            get(&format!("/v1/contexts/{context}"), &acme),
            get(&format!("/v1/contexts/{context}"), &acme),
            get(&format!("/v1/contexts/{context}"), &acme),
            get(&format!("/v1/contexts/{context}"), &acme),
            post(&format!("/v1/contexts/{context}"), &acme, 5),
            post(&format!("/v1/query?context={context}"), &acme, 5),
            get(&format!("/v1/contexts/{context}"), &acme).header("x-context-id", &spoof),
            get(&format!("/v1/contexts/{context}"), &acme).header("x-context-id", "projects/p0"),
        ];
        for request in requests {
            let landed = landed(&request.send(addr));
            if landed.tags.get("x-context-id") != Some(context) {
                wrong_id.push((context.clone(), landed.tags.clone()));
            }
            hosts
                .entry(context.as_str())
                .or_default()
                .insert(landed.upstream);
        }
    }
    assert!(wrong_id.is_empty(), "wrong x-context-id: {wrong_id:?}");
    let split: Vec<_> = hosts.iter().filter(|(_, h)| h.len() != 1).collect();
    assert!(
        split.is_empty(),
        "contexts served by more than one host: {split:?}"
    );
    let used: BTreeSet<&String> = hosts.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "24 contexts all hashed to one host: {hosts:?}"
    );
    let after = envoy.worker_connections(2);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "both workers should have served requests: {before:?} -> {after:?}"
    );
}

/// A weighted A/B split over 10 000 tenants: the shares match the weights
/// within 2 percentage points, each tenant gets exactly the variant the
/// filter's hash assigns it, and keeps it on every connection and token.
#[test]
fn it_splits_tenants_across_variants_by_weight_and_keeps_each_on_its_variant() {
    const TENANTS: usize = 10_000;
    const THREADS: usize = 4;
    let split = json!({
        "key": "tenant",
        "salt": "e2e-split",
        "variants": [
            {"name": "control", "weight": 60},
            {"name": "b", "weight": 30},
            {"name": "c", "weight": 10},
        ],
    });
    let weights: BTreeMap<&str, f64> = [("control", 60.0), ("b", 30.0), ("c", 10.0)].into();
    let variant_config: VariantConfig = serde_json::from_value(split.clone()).unwrap();
    let split_of = ctxgate_core::tagging::Split::new(&variant_config);
    let upstreams = Upstreams::start(&["standard", "variant-b", "variant-c"]);
    let envoy = Envoy::start(
        &upstreams.add_to(
            EnvoyConfig::new()
                .filter(auth_and_tagging(json!({"variant": split})))
                .route(
                    Route::prefix("/")
                        .header("x-context-variant", "b")
                        .cluster("variant-b"),
                )
                .route(
                    Route::prefix("/")
                        .header("x-context-variant", "c")
                        .cluster("variant-c"),
                )
                .route(Route::prefix("/").cluster("standard")),
        ),
    );
    let addr = envoy.listener_addr();
    let upstream_of = |variant: &str| match variant {
        "b" => "variant-b",
        "c" => "variant-c",
        _ => "standard",
    };

    // Each thread mints and sends its share on one keep-alive connection.
    let started = Instant::now();
    let results: Vec<(usize, String, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut seen = Vec::with_capacity(TENANTS / THREADS + 1);
                    for i in (t..TENANTS).step_by(THREADS) {
                        let tenant = format!("tenant-{i:05}");
                        let token = demo_idp::hs256_token(&tenant, "user-1", &json!({}));
                        let response = client.send(&get("/v1/ping", &token));
                        let landed = landed(&response);
                        let variant = landed
                            .tags
                            .get("x-context-variant")
                            .cloned()
                            .unwrap_or_default();
                        seen.push((i, variant, landed.upstream));
                    }
                    seen
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    assert_eq!(results.len(), TENANTS);

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut assigned: HashMap<usize, String> = HashMap::new();
    for (i, variant, upstream) in &results {
        let tenant = format!("tenant-{i:05}");
        let expected = split_of.pick(&tenant);
        if variant != expected || upstream != upstream_of(expected) {
            wrong.push(format!(
                "{tenant}: variant {variant:?} at {upstream}, want {expected}"
            ));
        }
        *counts.entry(variant.clone()).or_default() += 1;
        assigned.insert(*i, variant.clone());
    }
    assert!(
        wrong.is_empty(),
        "{} tenants misassigned, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let shares: BTreeMap<&str, f64> = weights
        .keys()
        .map(|v| {
            (
                *v,
                100.0 * *counts.get(*v).unwrap_or(&0) as f64 / TENANTS as f64,
            )
        })
        .collect();
    assert_eq!(
        counts.values().sum::<usize>(),
        TENANTS,
        "only configured variants: {counts:?}"
    );
    for (variant, weight) in &weights {
        assert!(
            (shares[variant] - weight).abs() <= 2.0,
            "variant {variant}: {:.2}% of tenants, weight {weight}% (shares {shares:?})",
            shares[variant]
        );
    }
    eprintln!("variant split over {TENANTS} tenants: {shares:?} in {elapsed:?}");

    // Stickiness: a few tenants of each variant again, each request on a
    // new connection (so both workers answer) with a new token (another
    // subject), some spoofing another variant.
    let mut sample: Vec<usize> = Vec::new();
    for variant in weights.keys() {
        sample.extend(
            assigned
                .iter()
                .filter(|(_, v)| v == variant)
                .map(|(i, _)| *i)
                .take(2),
        );
    }
    let mut drift = Vec::new();
    for i in sample {
        let tenant = format!("tenant-{i:05}");
        for round in 0..6 {
            let token = demo_idp::hs256_token(&tenant, &format!("user-{round}"), &json!({}));
            let mut request = get("/v1/ping", &token);
            if round % 2 == 1 {
                request = request.header("x-context-variant", if round == 1 { "b" } else { "c" });
            }
            let landed = landed(&request.send(addr));
            let variant = landed.tags.get("x-context-variant").cloned();
            if variant.as_ref() != Some(&assigned[&i])
                || landed.upstream != upstream_of(&assigned[&i])
            {
                drift.push(format!(
                    "{tenant} round {round}: {variant:?} at {}, first {}",
                    landed.upstream, assigned[&i]
                ));
            }
        }
    }
    assert!(drift.is_empty(), "tenants changed variant: {drift:#?}");
}

/// A rule with a regex that does not compile stops Envoy at startup, with
/// the field path in the log line, as does a split with no weight.
#[test]
fn it_refuses_a_bad_tagging_config_and_names_the_field() {
    let cases = [
        (
            json!({"rules": [
                {"when": {"method": ["GET"]}, "set": {"type": "read"}},
                {"when": {"all": [{"method": ["POST"]}, {"path": {"regex": "/v1/(unclosed"}}]},
                 "set": {"type": "compute"}},
            ]}),
            "invalid configuration: tagging.rules[1].when.all[1].path.regex: regex parse error",
        ),
        (
            json!({"variant": {"variants": [{"name": "a", "weight": 0}]}}),
            "invalid configuration: tagging.variant.variants: give at least one variant with a positive weight",
        ),
    ];
    let mut wrong = Vec::new();
    for (config, expected) in cases {
        let log = Envoy::start_expect_failure(
            &EnvoyConfig::new()
                .filter(WasmFilter::single("tagging", config))
                .route(Route::prefix("/").direct(200, "unreachable")),
        );
        let named = log
            .lines()
            .any(|l| l.contains(&filter_log_prefix("ctxgate_tagging")) && l.contains(expected));
        if !named || !log.contains(&filter_rejected("ctxgate_tagging")) {
            wrong.push(format!("expected {expected:?} in:\n{log}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
