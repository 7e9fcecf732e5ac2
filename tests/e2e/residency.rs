//! End-to-end tests of data residency through a real Envoy (1.40, V8,
//! `--concurrency 2`): auth -> residency -> router, on a gateway in region
//! `eu` with three echo upstreams: `eu-pool` and `us-pool`, the context
//! service's pools in eu and us, and `ap-remote` (the cross-region cluster
//! for ap), plus `misc`, a cluster of no known region. The route table sends a
//! request carrying the residency header to the cluster it names (an Envoy
//! `cluster_header` route, first), one carrying `x-context-region: eu` to
//! `eu-pool`, `/legacy/` and everything else to `us-pool`.
//!
//! Tenants: `acme` pinned to eu by the tenant table, `initech` to ap (no
//! pool here, forwarded cross-region), `hooli` to sa (no pool, no
//! cross-region cluster: refused), `umbrella` unpinned unless its token's
//! `data_region` claim pins it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{
    Client, Cluster, Envoy, EnvoyConfig, Request, Response, Route, WasmFilter, demo_idp,
};
use serde_json::{Value, json};

const READ: &str = "/v1/contexts/projects/a";
const CLUSTER_HEADER: &str = "x-context-residency-cluster";

fn token(tenant: &str, region: Option<&str>) -> String {
    let extra = match region {
        Some(r) => json!({ "data_region": r }),
        None => json!({}),
    };
    demo_idp::hs256_token(tenant, "user-1", &extra)
}

fn residency() -> Value {
    json!({
        "region": "eu",
        "tenants": {"acme": "eu", "initech": "ap", "hooli": "sa"},
        "claim": "data_region",
        "services": {"context": {"eu": ["eu-pool"], "us": ["us-pool"]}},
        "cross_region": {"ap": "ap-remote"},
    })
}

struct Gateway {
    envoy: Envoy,
    _upstreams: Vec<ShutdownHandle>,
}

fn gateway() -> Gateway {
    gateway_with(true)
}

/// `residency_route`: whether the route table has the `cluster_header`
/// route the stage needs.
fn gateway_with(residency_route: bool) -> Gateway {
    let mut config = EnvoyConfig::new().concurrency(2).filter(
        WasmFilter::ctxgate("ctxgate")
            .stage(
                "auth",
                json!({
                    "providers": [demo_idp::hs256_provider()],
                    "unmatched_requests": "authenticate",
                    "filter_state_claims": ["data_region"],
                }),
            )
            .stage("residency", residency()),
    );
    let mut handles = Vec::new();
    for name in ["eu-pool", "us-pool", "ap-remote", "misc"] {
        let (addr, handle) = ctxgate_demo::spawn_in_thread("127.0.0.1:0", name).unwrap();
        config = config.cluster(Cluster::new(name, [addr]));
        handles.push(handle);
    }
    if residency_route {
        config = config.route(Route::raw(json!({
            "match": {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": true}]},
            "route": {"cluster_header": CLUSTER_HEADER, "timeout": "5s"},
        })));
    }
    let config = config
        .route(Route::prefix("/misc/").cluster("misc"))
        .route(Route::prefix("/legacy/").cluster("us-pool"))
        .route(
            Route::prefix("/")
                .header("x-context-region", "eu")
                .cluster("eu-pool"),
        )
        .route(Route::prefix("/").cluster("us-pool"));
    Gateway {
        envoy: Envoy::start(&config),
        _upstreams: handles,
    }
}

/// The upstream that answered, and the headers it received.
fn upstream(response: &Response) -> (String, Value) {
    assert_eq!(
        response.status,
        200,
        "{:?} {}",
        response.headers,
        response.text()
    );
    let echo = response.json();
    (
        echo["upstream"].as_str().unwrap().to_owned(),
        echo["headers"].clone(),
    )
}

#[track_caller]
fn refused(response: &Response, status: u16, reason: &str) {
    assert_eq!(response.status, status, "{}", response.text());
    assert_eq!(response.json()["error"], reason, "{}", response.text());
}

#[test]
fn pinned_tenants_reach_their_region_the_cross_region_cluster_or_nothing() {
    let gw = gateway();
    let addr = gw.envoy.listener_addr();
    let get = |path: &str, token: &str| Request::get(path).bearer(token).send(addr);

    // Pinned by the table; a forged region header is replaced.
    let acme = token("acme", None);
    let r = Request::get(READ)
        .bearer(&acme)
        .header("x-context-region", "us")
        .send(addr);
    std::thread::sleep(std::time::Duration::from_millis(300));
    eprintln!(
        "LOG {}",
        gw.envoy
            .log()
            .lines()
            .filter(|l| l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (landed, headers) = upstream(&r);
    assert_eq!(landed, "eu-pool");
    assert_eq!(headers["x-context-region"], "eu");

    // A route that ignores the region would land it in the US: it goes
    // to the EU pool instead.
    let (landed, headers) = upstream(&get("/legacy/report", &acme));
    assert_eq!(landed, "eu-pool");
    assert_eq!(headers[CLUSTER_HEADER], "eu-pool");

    // No pool of its region here: forwarded to the cross-region cluster.
    let (landed, headers) = upstream(&get(READ, &token("initech", None)));
    assert_eq!(landed, "ap-remote");
    assert_eq!(headers["x-context-region"], "ap");

    // A route to a cluster of no known region.
    refused(&get("/misc/x", &acme), 421, "unmapped_cluster");
    assert_eq!(
        upstream(&get("/misc/x", &token("umbrella", None))).0,
        "misc"
    );

    // Neither a pool nor a cross-region cluster.
    let r = get(READ, &token("hooli", None));
    refused(&r, 421, "no_pool_in_region");
    assert_eq!(r.json()["region"], "sa");

    // Pinned by the token's claim; a claim contradicting the table is refused.
    assert_eq!(
        upstream(&get(READ, &token("umbrella", Some("eu")))).0,
        "eu-pool"
    );
    refused(
        &get(READ, &token("acme", Some("us"))),
        403,
        "region_conflict",
    );

    // Unpinned: routed as usual; a client cannot pick a cluster itself.
    let r = Request::get(READ)
        .bearer(&token("umbrella", None))
        .header(CLUSTER_HEADER, "eu-pool")
        .header("x-context-region", "eu")
        .send(addr);
    let (landed, headers) = upstream(&r);
    assert_eq!(landed, "us-pool");
    assert_eq!(headers[CLUSTER_HEADER], Value::Null);
    assert_eq!(headers["x-context-region"], Value::Null);

    let metric = |name: &str| gw.envoy.wasm_metric(&format!("ctxgate_residency.{name}"));
    let counted = ctxgate_e2e::eventually(std::time::Duration::from_secs(5), || {
        metric("in_region") == 3
            && metric("cross_region") == 1
            && metric("refused_no_pool") == 1
            && metric("refused_conflict") == 1
            && metric("refused_unmapped") == 1
            && metric("unpinned") == 2
    });
    assert!(
        counted,
        "{:?}",
        gw.envoy.stats_matching("ctxgate_residency")
    );
}

/// Many requests of every kind over several connections (both workers):
/// no pinned tenant's request ever reaches a pool outside its region.
#[test]
fn a_mixed_run_never_lands_a_pinned_tenant_out_of_region() {
    let gw = gateway();
    let addr = gw.envoy.listener_addr();
    let tenants = [
        ("acme", None, Some("eu")),
        ("initech", None, Some("ap")),
        ("hooli", None, Some("sa")),
        ("umbrella", Some("eu"), Some("eu")),
        ("umbrella", None, None),
    ];
    let tokens: Vec<String> = tenants
        .iter()
        .map(|(t, claim, _)| token(t, *claim))
        .collect();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    let paths = [READ, "/legacy/report", "/v1/other"];
    let mut outcomes: BTreeMap<(usize, &str), BTreeMap<String, u32>> = BTreeMap::new();
    for i in 0..1500usize {
        let t = i % tenants.len();
        let path = paths[(i / tenants.len()) % paths.len()];
        let client = &mut clients[i % 4];
        let mut request = Request::get(path).bearer(&tokens[t]);
        if i % 7 == 0 {
            // Forged routing headers must change nothing.
            request = request
                .header("x-context-region", "us")
                .header(CLUSTER_HEADER, "us-pool");
        }
        let r = client.send(&request);
        let outcome = match r.status {
            200 => {
                let (landed, headers) = upstream(&r);
                let pinned = tenants[t].2;
                if let Some(region) = pinned {
                    assert_eq!(headers["x-context-region"], region, "request {i}");
                    assert!(
                        landed.starts_with(region),
                        "request {i}: {} pinned to {region} landed in {landed}",
                        tenants[t].0
                    );
                }
                landed
            }
            status => format!("refused {status} {}", r.json()["error"].as_str().unwrap()),
        };
        *outcomes
            .entry((t, path))
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }
    // Every kind of request went one way only.
    let one = |t: usize, path: &str| -> String {
        let seen = &outcomes[&(t, path)];
        assert_eq!(seen.len(), 1, "{} {path}: {seen:?}", tenants[t].0);
        seen.keys().next().unwrap().clone()
    };
    assert_eq!(one(0, READ), "eu-pool");
    assert_eq!(one(0, "/v1/other"), "eu-pool");
    assert_eq!(one(0, "/legacy/report"), "eu-pool");
    for path in paths {
        assert_eq!(one(1, path), "ap-remote");
        assert_eq!(one(2, path), "refused 421 no_pool_in_region");
        assert_eq!(one(4, path), "us-pool");
    }
    assert_eq!(one(3, READ), "eu-pool");
    assert_eq!(one(3, "/legacy/report"), "eu-pool");
}

/// A route table without the `cluster_header` route: the router follows
/// its own routes, and the stage counts every answer from a cluster it did
/// not choose (the alert's signal), instead of believing it was obeyed.
#[test]
fn a_route_table_that_ignores_the_residency_header_is_detected() {
    let gw = gateway_with(false);
    let addr = gw.envoy.listener_addr();
    let acme = token("acme", None);
    let (landed, _) = upstream(&Request::get("/legacy/report").bearer(&acme).send(addr));
    assert_eq!(landed, "us-pool", "the misconfigured route table wins");
    let (landed, _) = upstream(&Request::get(READ).bearer(&acme).send(addr));
    assert_eq!(landed, "eu-pool");
    let counted = ctxgate_e2e::eventually(std::time::Duration::from_secs(5), || {
        gw.envoy.wasm_metric("ctxgate_residency.misrouted") == 1
    });
    assert!(
        counted,
        "{:?}",
        gw.envoy.stats_matching("ctxgate_residency")
    );
    assert!(gw.envoy.log_contains("was answered by us-pool"));
}
