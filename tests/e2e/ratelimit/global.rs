//! Global limiting through the real `ctxgate-rls`: several gateways share
//! one limit, every admission reaches the RLS's count once by whichever
//! channel carries it (the RLS call that decided it, a background report,
//! a retry), and `x-ratelimit-*` describe the tightest of the local and
//! global limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctxgate_e2e::{Client, Envoy, EnvoyConfig, Redis, Response, Rls, Route, eventually};
use serde_json::json;

use crate::support::*;

/// RLS limits of the global test: only `global-phase` has a global limit.
const GLOBAL_LIMIT: u64 = 2000;

/// Waits until at least `margin` is left before the current RLS window
/// (aligned to the unit, like envoyproxy/ratelimit) ends.
fn stay_clear_of_window_end(window: Duration, margin: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_millis(u64::try_from(now.as_millis() % window.as_millis()).unwrap());
    let left = window - into;
    if left < margin {
        println!("waiting {left:?} for the RLS window to roll over");
        std::thread::sleep(left + Duration::from_secs(2));
    }
}

/// Statuses of `total` reads split evenly over `targets` and
/// `threads_per_target` keep-alive connections each, all at once.
fn drive(
    targets: &[SocketAddr],
    token: &str,
    total: u64,
    threads_per_target: u64,
) -> Vec<BTreeMap<u16, u64>> {
    let per_thread = total / (targets.len() as u64 * threads_per_target);
    let barrier = Barrier::new(targets.len() * usize::try_from(threads_per_target).unwrap());
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = targets
            .iter()
            .map(|&addr| {
                (0..threads_per_target)
                    .map(|_| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            let mut client = Client::connect(addr);
                            let request = read(token);
                            barrier.wait();
                            let mut statuses = BTreeMap::new();
                            for _ in 0..per_thread {
                                *statuses.entry(client.send(&request).status).or_insert(0) += 1;
                            }
                            statuses
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|threads| {
                let mut sum = BTreeMap::new();
                for t in threads {
                    for (status, n) in t.join().unwrap() {
                        *sum.entry(status).or_insert(0) += n;
                    }
                }
                sum
            })
            .collect()
    })
}

/// Two gateways (auth -> ratelimit, hierarchical mode) with one RLS replica
/// each, both replicas counting in one Redis, take 6000 reads of one tenant
/// at once: together they admit the RLS limit (+-2%). The same load with
/// local buckets only (the limit on each gateway) admits twice as much.
/// Two gateways (auth -> ratelimit, hierarchical mode) with one RLS replica
/// each, both replicas counting in one Redis, take 6000 reads of one tenant
/// at once: together they admit the RLS limit (+-2%), and Redis counted
/// every admission once. The same load with local buckets only (the limit
/// on each gateway) admits twice as much.
///
/// How each admission reached Redis (with the RLS call that decided it, or
/// in a background report of local admissions) depends on timing: on a
/// busy machine one gateway may carry all its usage in its RLS calls and
/// never need a background report. The test checks the outcome only.
#[test]
fn two_gateways_sharing_one_rls_admit_the_global_limit_and_twice_as_much_without_it() {
    const LOAD: u64 = 6000;
    const THREADS: u64 = 4;
    stay_clear_of_window_end(Duration::from_secs(3600), Duration::from_secs(180));
    let redis = Redis::start();
    let limits = format!(
        "domain: ctxgate\ndescriptors:\n  - key: tenant\n    value: global-phase\n    \
         rate_limit: {{unit: hour, requests_per_unit: {GLOBAL_LIMIT}, name: global-phase}}\n"
    );
    // Redis's counter of the tenant in this hour (ctxgate-rls's key
    // layout: `<rule namespace>%%<descriptor>%%<window number>`).
    let hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600;
    let counter = format!("ctxgate-rls/ctxgate/tenant=global-phase%%tenant=global-phase%%{hour}");
    // Two RLS replicas counting in the one Redis; each gateway has its own.
    let replicas = [
        Rls::start(&limits, Some(&redis.url())),
        Rls::start(&limits, Some(&redis.url())),
    ];
    let config = |rls: Option<&Rls>| {
        let mut config = json!({
            "tiers": tiers(per("per_hour", 100_000, 3600)),
            "tenants": {"local-phase": {"limits": per("per_hour", GLOBAL_LIMIT, 3600)}},
        });
        let mut envoy = EnvoyConfig::new().route(Route::prefix("/").direct(200, "ok"));
        if let Some(rls) = rls {
            envoy = envoy.cluster(rls.cluster("rls"));
            // A generous deadline: this test measures accuracy, not outages.
            config["global"] = json!({
                "mode": "hierarchical",
                "cluster": "rls",
                "sync_threshold": 0.8,
                "gateways": 2,
                "sync_interval_ms": 100,
                "timeout_ms": 1000,
            });
        }
        envoy.filter(ratelimit(config))
    };

    // Phase 1: global limiting.
    let gateways = [
        Envoy::start(&config(Some(&replicas[0]))),
        Envoy::start(&config(Some(&replicas[1]))),
    ];
    let targets: Vec<SocketAddr> = gateways.iter().map(Envoy::listener_addr).collect();
    let started = Instant::now();
    let global = drive(&targets, &token("global-phase", json!({})), LOAD, THREADS);
    let global_elapsed = started.elapsed();
    let admitted_global: u64 = global
        .iter()
        .map(|s| s.get(&200).copied().unwrap_or(0))
        .sum();
    println!(
        "global limit {GLOBAL_LIMIT}/hour, {LOAD} requests over 2 gateways in {global_elapsed:?} \
         ({:.0} req/s): {admitted_global} admitted ({:+.2}%), per gateway {global:?}",
        LOAD as f64 / global_elapsed.as_secs_f64(),
        (admitted_global as f64 - GLOBAL_LIMIT as f64) * 100.0 / GLOBAL_LIMIT as f64
    );
    for (i, gateway) in gateways.iter().enumerate() {
        println!("  gateway {i} metrics: {:?}", metrics(gateway));
    }
    for (i, statuses) in global.iter().enumerate() {
        assert!(
            statuses.keys().all(|s| *s == 200 || *s == 429),
            "gateway {i}: {statuses:?}"
        );
        assert!(
            statuses.get(&200).is_some_and(|n| *n > 0),
            "gateway {i} admitted some"
        );
    }
    for gateway in &gateways {
        // Each gateway took 3000 reads, more than the global limit: each
        // refused some on the RLS's word.
        assert!(
            metric(gateway, "refused.global_limit") > 0,
            "{:?}",
            metrics(gateway)
        );
    }
    // Every admission reaches Redis once, whichever channel carried it.
    // Redis also counts what the RLS was asked about and refused (an RLS
    // counts every hit it sees): one per OVER_LIMIT answer to a request.
    let refused_by_rls: u64 = gateways
        .iter()
        .map(|g| metric(g, "rls.ok") - metric(g, "allowed.rls"))
        .sum();
    let mut counted = 0;
    let settled = eventually(Duration::from_secs(10), || {
        counted = redis.get_u64(&counter);
        counted == admitted_global + refused_by_rls
    });
    println!(
        "Redis counted {counted}: {admitted_global} admitted + {refused_by_rls} refused by the RLS"
    );
    assert!(
        settled,
        "Redis counted {counted} for {admitted_global} admitted and {refused_by_rls} refused by the RLS"
    );
    drop(gateways);
    drop(replicas);
    drop(redis);

    // Phase 2: the same load, local buckets only (2000/hour on each).
    let gateways = [Envoy::start(&config(None)), Envoy::start(&config(None))];
    let targets: Vec<SocketAddr> = gateways.iter().map(Envoy::listener_addr).collect();
    let started = Instant::now();
    let local = drive(&targets, &token("local-phase", json!({})), LOAD, THREADS);
    let local_elapsed = started.elapsed();
    let admitted_local: u64 = local
        .iter()
        .map(|s| s.get(&200).copied().unwrap_or(0))
        .sum();
    println!(
        "local limits only, {GLOBAL_LIMIT}/hour per gateway, {LOAD} requests in {local_elapsed:?}: \
         {admitted_local} admitted, per gateway {local:?}"
    );
    // Each bucket admits its 2000 plus what refills meanwhile (0.56/s).
    let refill = 2 * (local_elapsed.as_secs() * GLOBAL_LIMIT / 3600 + 1);
    assert!(
        (2 * GLOBAL_LIMIT..=2 * GLOBAL_LIMIT + refill).contains(&admitted_local),
        "admitted {admitted_local} without global limiting"
    );
    println!(
        "global/local admitted: {admitted_global} / {admitted_local} = {:.2}",
        admitted_global as f64 / admitted_local as f64
    );
    // Checked last, so that both figures are printed either way.
    let tolerance = GLOBAL_LIMIT / 50;
    assert!(
        admitted_global.abs_diff(GLOBAL_LIMIT) <= tolerance,
        "with global limiting {admitted_global} admitted, expected {GLOBAL_LIMIT} +- 2%"
    );
}

/// A client drains its local bucket (600) in hierarchical mode against an
/// RLS limit of 1200 per minute. Most requests are decided locally; one in
/// about sixty, when this gateway's unreported usage reaches its budget,
/// goes to the RLS. Whoever decided, `x-ratelimit-*` describe the tightest limit,
/// the local one here: the countdown goes 599, 598, ..., 0 without a jump to
/// the RLS's view on the requests it decided.
#[test]
fn in_hierarchical_mode_x_ratelimit_remaining_counts_down_the_tightest_limit_without_jumps() {
    const LOCAL: u64 = 600;
    let rls = Rls::start(
        "domain: ctxgate\ndescriptors:\n  - key: tenant\n    \
         rate_limit: {unit: minute, requests_per_unit: 1200, name: tenants}\n",
        None,
    );
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .filter(ratelimit(json!({
                "tiers": tiers(monthly(LOCAL)),
                "global": {
                    "mode": "hierarchical",
                    "cluster": "rls",
                    "sync_threshold": 0.8,
                    // (1 - 0.8) / 4 of 1200: every 60 local admissions
                    // the RLS decides one request.
                    "gateways": 4,
                    // No background report during the drain, so that the
                    // RLS calls do not depend on the machine's speed.
                    "sync_interval_ms": 60_000,
                    "timeout_ms": 1000,
                },
            })))
            .route(Route::prefix("/").direct(200, "ok"))
            .cluster(rls.cluster("rls")),
    );
    let acme = token("countdown", json!({}));
    let mut client = Client::connect(envoy.listener_addr());
    let mut admitted: Vec<Response> = Vec::new();
    let refused = loop {
        let response = client.send(&read(&acme));
        if response.status != 200 || admitted.len() > 2 * LOCAL as usize {
            break response;
        }
        admitted.push(response);
    };
    println!("{} admitted; {:?}", admitted.len(), metrics(&envoy));
    let countdown: Vec<u64> = admitted.iter().map(remaining).collect();
    let jumps: Vec<(usize, u64, u64)> = countdown
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] >= w[0])
        .map(|(i, w)| (i + 1, w[0], w[1]))
        .collect();
    assert!(
        jumps.is_empty(),
        "x-ratelimit-remaining went up or stalled at (request, before, after): {jumps:?}"
    );
    assert_eq!(countdown, (0..LOCAL).rev().collect::<Vec<u64>>());
    let limits: BTreeMap<&str, usize> = admitted.iter().fold(BTreeMap::new(), |mut seen, r| {
        *seen
            .entry(r.header("x-ratelimit-limit").unwrap_or("none"))
            .or_default() += 1;
        seen
    });
    assert_eq!(
        limits,
        BTreeMap::from([("600, 600;w=2678400", LOCAL as usize)]),
        "every response names the local limit"
    );
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(
        refused.header("x-ratelimit-limit"),
        Some("600, 600;w=2678400")
    );
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    // Both kinds of decision took part (else the test proves nothing).
    assert!(
        metric(&envoy, "allowed.rls") >= 5 && metric(&envoy, "allowed.local") >= 500,
        "{:?}",
        metrics(&envoy)
    );
}
