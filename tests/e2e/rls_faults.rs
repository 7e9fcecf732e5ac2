//! Usage is counted once, and only once, through RLS faults: the
//! measurement, end to end.
//!
//! Each scenario is its own world: a `redis-server`, one `ctxgate-rls`
//! counting in it, and three gateways (Envoy, two workers each: auth ->
//! ratelimit in hierarchical mode, `failure_mode: local_fallback`) sharing
//! the RLS. One tenant may use 3000 units per minute (the RLS's fixed,
//! epoch-aligned minute); the clients send it 75 reads per second spread
//! evenly over the gateways, 1.5 times the limit, for one window:
//!
//! * (a) steady: no fault;
//! * (b) Redis stopped for 10 s early in the window (an orderly shutdown
//!   that saves its data, and a restart that loads it: the count before
//!   the outage is kept, as by any Redis with persistence);
//! * (c) Redis hung for 10 s early in the window (SIGSTOP): calls wait in
//!   its socket, unanswered; the gateways give up on them, and Redis runs
//!   them all when it resumes;
//! * (d) the RLS killed (SIGKILL) mid-window and restarted 3 s later.
//!
//! The scenarios run in parallel threads, aligned to the same minute, so
//! the binary takes about one window. For each, the test asserts:
//!
//! * the admitted total stays within 5% of the limit;
//! * no lockout: the tenant is admitted, through the fault and after it,
//!   until (nearly) its limit is reached;
//! * Redis's own count equals what was admitted, plus the requests the RLS
//!   itself answered OVER_LIMIT (an RLS counts every hit it is asked
//!   about): nothing lost, nothing counted twice, whatever carried it (the
//!   RLS call that decided a request, a background report, a retry).
//!
//! During an outage the gateways fall back to their local buckets. Those
//! are sized at the gateway's share of the limit (3000 / 3 per minute), so
//! that a long outage cannot let the three admit more than the global rate
//! plus one burst each; `gateways: 3` makes each gateway's budget of
//! unreported local usage a third of the headroom above `sync_threshold`.
//!
//! Run with `--nocapture` to see the figures of each scenario.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "ratelimit/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctxgate_e2e::{
    Client, Envoy, EnvoyConfig, Redis, Rls, Route, eventually, next_minute, sleep_until,
};
use serde_json::json;
use tempfile::TempDir;

use support::{metric, per, ratelimit, read, token};

/// The tenant's limit per (epoch-aligned) minute, at the RLS.
const LIMIT: u64 = 3000;
const GATEWAYS: usize = 3;
/// Keep-alive connections per gateway, each with its own client thread.
const CONNECTIONS: usize = 2;
/// Reads per second, over all gateways: 1.5 times the limit.
const RATE: u64 = 75;
/// When the load starts, after the minute boundary, and how long it lasts
/// (it stops before the window ends, so that every report of it lands in
/// the window).
const LOAD_START: Duration = Duration::from_millis(300);
const LOAD_LENGTH: Duration = Duration::from_secs(50);
/// Redis's outages, from the start of the load.
const REDIS_FAULT_START: Duration = Duration::from_secs(5);
const REDIS_FAULT_LENGTH: Duration = Duration::from_secs(10);
/// The RLS's outage: killed mid-window (at about half the limit), back 3 s
/// later.
const RLS_FAULT_START: Duration = Duration::from_secs(20);
const RLS_FAULT_LENGTH: Duration = Duration::from_secs(3);
/// The scenarios are set up before the boundary is chosen; this is what
/// starting their load takes at most.
const SETUP_MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    RedisStopped,
    RedisHung,
    RlsRestarted,
}

impl Fault {
    fn describe(self) -> String {
        let span = |start: Duration, length: Duration| {
            format!("{} s to {} s", start.as_secs(), (start + length).as_secs())
        };
        match self {
            Fault::None => "(a) steady".into(),
            Fault::RedisStopped => format!(
                "(b) Redis stopped {}",
                span(REDIS_FAULT_START, REDIS_FAULT_LENGTH)
            ),
            Fault::RedisHung => format!(
                "(c) Redis hung {}",
                span(REDIS_FAULT_START, REDIS_FAULT_LENGTH)
            ),
            Fault::RlsRestarted => format!(
                "(d) RLS killed and restarted {}",
                span(RLS_FAULT_START, RLS_FAULT_LENGTH)
            ),
        }
    }

    /// When the fault starts and ends, from the start of the load.
    fn span(self) -> Option<(Duration, Duration)> {
        match self {
            Fault::None => None,
            Fault::RedisStopped | Fault::RedisHung => {
                Some((REDIS_FAULT_START, REDIS_FAULT_START + REDIS_FAULT_LENGTH))
            }
            Fault::RlsRestarted => Some((RLS_FAULT_START, RLS_FAULT_START + RLS_FAULT_LENGTH)),
        }
    }
}

/// One scenario's processes.
struct World {
    fault: Fault,
    tenant: String,
    // Field order: gateways, then the RLS, then Redis and its dir go down.
    gateways: Vec<Envoy>,
    rls: Rls,
    redis: Redis,
    redis_dir: TempDir,
}

impl World {
    fn start(fault: Fault, tenant: &str) -> World {
        let redis_dir = tempfile::Builder::new()
            .prefix("ctxgate-redis-")
            .tempdir()
            .unwrap();
        let redis = Redis::start_saving_in(redis_dir.path());
        let rls = Rls::start(
            &format!(
                "domain: ctxgate\ndescriptors:\n  - key: tenant\n    \
                 rate_limit: {{unit: minute, requests_per_unit: {LIMIT}, name: tenants}}\n"
            ),
            Some(&redis.url()),
        );
        let gateway = EnvoyConfig::new()
            .concurrency(2)
            .filter(ratelimit(json!({
                "tiers": {
                    // The gateway's share of the limit (see the top).
                    "standard": per("per_minute", LIMIT / GATEWAYS as u64, 60),
                    "anonymous": per("per_minute", 60, 60),
                },
                "global": {
                    "mode": "hierarchical",
                    "cluster": "rls",
                    "sync_threshold": 0.8,
                    "gateways": GATEWAYS,
                    "sync_interval_ms": 200,
                    "timeout_ms": 50,
                    "failure_mode": "local_fallback",
                },
            })))
            .route(Route::prefix("/").direct(200, "ok"))
            .cluster(rls.cluster("rls"));
        let gateways = (0..GATEWAYS).map(|_| Envoy::start(&gateway)).collect();
        World {
            fault,
            tenant: tenant.to_owned(),
            gateways,
            rls,
            redis,
            redis_dir,
        }
    }

    /// Redis's count of the tenant in the minute window `window`
    /// (ctxgate-rls's key layout: `<rule namespace>%%<descriptor>%%<window>`).
    fn counted(&self, window: u64) -> u64 {
        self.redis.get_u64(&format!(
            "ctxgate-rls/ctxgate/tenant%%tenant={0}%%{window}",
            self.tenant
        ))
    }

    /// Applies the fault on schedule, from `start` (the start of the load).
    fn inflict(&mut self, start: Instant) {
        let Some((from, to)) = self.fault.span() else {
            return;
        };
        sleep_until(start + from);
        match self.fault {
            Fault::None => {}
            Fault::RedisStopped => self.redis.shutdown_saving(),
            Fault::RedisHung => self.redis.pause(),
            Fault::RlsRestarted => self.rls.stop(),
        }
        sleep_until(start + to);
        match self.fault {
            Fault::None => {}
            Fault::RedisStopped => self.redis.restart_saved(self.redis_dir.path()),
            Fault::RedisHung => self.redis.resume(),
            Fault::RlsRestarted => self.rls.restart(),
        }
    }
}

/// One request: when it was due (from the start of the load) and its
/// status (0: no response).
type Outcome = (Duration, u16);

/// Sends `RATE` reads per second, spread evenly over every connection of
/// every gateway, on schedule from `start` for `LOAD_LENGTH` (a request
/// that falls behind goes out at once). Returns every outcome, by due time.
fn load(targets: &[SocketAddr], token: &str, start: Instant) -> Vec<Outcome> {
    let senders = targets.len() * CONNECTIONS;
    let period = Duration::from_secs(senders as u64) / u32::try_from(RATE).unwrap();
    let mut outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..senders)
            .map(|i| {
                let addr = targets[i % targets.len()];
                s.spawn(move || {
                    let mut client = Client::connect(addr);
                    let request = read(token);
                    let mut outcomes = Vec::new();
                    let mut due =
                        period * u32::try_from(i).unwrap() / u32::try_from(senders).unwrap();
                    while due < LOAD_LENGTH {
                        sleep_until(start + due);
                        let status = client.try_send(&request).map_or(0, |r| r.status);
                        outcomes.push((due, status));
                        due += period;
                    }
                    outcomes
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    outcomes.sort_unstable();
    outcomes
}

/// What one scenario measured.
struct Measured {
    fault: Fault,
    statuses: BTreeMap<u16, u64>,
    admitted: u64,
    /// Admitted while the fault lasted.
    admitted_in_fault: u64,
    /// The first refusal: when, and how many were admitted before it.
    first_refusal: Option<(Duration, u64)>,
    /// Redis's count once every report landed.
    counted: u64,
    /// Requests the RLS answered OVER_LIMIT (it counts their hits too).
    refused_by_rls: u64,
    /// Summed over the gateways.
    gateway_metrics: BTreeMap<String, u64>,
}

impl Measured {
    fn report(&self) -> String {
        let deviation = (self.admitted as f64 - LIMIT as f64) * 100.0 / LIMIT as f64;
        let first = self
            .first_refusal
            .map_or("none".to_owned(), |(at, before)| {
                format!("at {:.1} s, after {before} admitted", at.as_secs_f64())
            });
        format!(
            "{}: admitted {} ({deviation:+.2}%), {} of them during the fault; statuses {:?}; \
             first refusal {first}; Redis counted {} = admitted {:+} (RLS refused {}); \
             gateways {:?}",
            self.fault.describe(),
            self.admitted,
            self.admitted_in_fault,
            self.statuses,
            self.counted,
            i128::from(self.counted) - i128::from(self.admitted),
            self.refused_by_rls,
            self.gateway_metrics,
        )
    }
}

/// Waits until every gateway's outbox is empty and Redis's count stands
/// still, at most 15 s; returns the count.
fn settled_count(world: &World, window: u64) -> u64 {
    let mut last = (u64::MAX, Instant::now());
    let mut count = 0;
    eventually(Duration::from_secs(15), || {
        count = world.counted(window);
        let pending: u64 = world
            .gateways
            .iter()
            .map(|g| metric(g, "reports.pending"))
            .sum();
        if count != last.0 || pending > 0 {
            last = (count, Instant::now());
        }
        last.1.elapsed() >= Duration::from_secs(1)
    });
    count
}

fn measure(mut world: World, start_at: SystemTime) -> Measured {
    let targets: Vec<SocketAddr> = world.gateways.iter().map(Envoy::listener_addr).collect();
    let token = token(&world.tenant, json!({}));
    let window = start_at.duration_since(UNIX_EPOCH).unwrap().as_secs() / 60;
    let start = Instant::now()
        + start_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
    let fault = world.fault;
    let outcomes = std::thread::scope(|s| {
        let world = &mut world;
        s.spawn(move || world.inflict(start));
        load(&targets, &token, start)
    });
    let counted = settled_count(&world, window);
    let mut statuses = BTreeMap::new();
    let mut admitted = 0;
    let mut admitted_in_fault = 0;
    let mut first_refusal = None;
    for &(due, status) in &outcomes {
        *statuses.entry(status).or_insert(0) += 1;
        if status == 200 {
            admitted += 1;
            if fault
                .span()
                .is_some_and(|(from, to)| (from..to).contains(&due))
            {
                admitted_in_fault += 1;
            }
        } else if first_refusal.is_none() {
            first_refusal = Some((due, admitted));
        }
    }
    let mut gateway_metrics = BTreeMap::new();
    for gateway in &world.gateways {
        for (name, value) in support::metrics(gateway) {
            *gateway_metrics.entry(name).or_insert(0) += value;
        }
    }
    let refused_by_rls = gateway_metrics.get("rls.ok").copied().unwrap_or(0)
        - gateway_metrics.get("allowed.rls").copied().unwrap_or(0);
    Measured {
        fault,
        statuses,
        admitted,
        admitted_in_fault,
        first_refusal,
        counted,
        refused_by_rls,
        gateway_metrics,
    }
}

/// What is wrong with a scenario's figures, if anything.
fn judge(m: &Measured) -> Vec<String> {
    let name = m.fault.describe();
    let tolerance = LIMIT / 20;
    let mut failures = Vec::new();
    if !m.statuses.keys().all(|s| *s == 200 || *s == 429) {
        failures.push(format!(
            "{name}: requests neither admitted nor refused with 429: {:?}",
            m.statuses
        ));
    }
    if m.admitted.abs_diff(LIMIT) > tolerance {
        failures.push(format!(
            "{name}: {} admitted in the window, limit {LIMIT} +- 5%",
            m.admitted
        ));
    }
    // No lockout: nothing is refused before (nearly) the whole limit was
    // admitted, through and after the fault alike.
    match m.first_refusal {
        None => failures.push(format!("{name}: nothing refused at 1.5 times the limit")),
        Some((at, before)) if before < LIMIT - tolerance => failures.push(format!(
            "{name}: locked out from {:.1} s on, after only {before} admitted",
            at.as_secs_f64()
        )),
        Some((at, _)) if m.fault.span().is_some_and(|(_, to)| at < to) => failures.push(format!(
            "{name}: the first refusal came during the fault, at {:.1} s",
            at.as_secs_f64()
        )),
        Some(_) => {}
    }
    // Counted once: Redis holds every admission and the hits of the
    // requests the RLS refused, and nothing else.
    if m.counted != m.admitted + m.refused_by_rls {
        failures.push(format!(
            "{name}: Redis counted {} for {} admitted and {} refused by the RLS",
            m.counted, m.admitted, m.refused_by_rls
        ));
    }
    failures
}

#[test]
fn usage_is_counted_once_through_redis_and_rls_faults_and_the_tenant_gets_its_limit() {
    let scenarios = [
        (Fault::None, "steady"),
        (Fault::RedisStopped, "redis-stopped"),
        (Fault::RedisHung, "redis-hung"),
        (Fault::RlsRestarted, "rls-restarted"),
    ];
    let began = Instant::now();
    let measured: Vec<Measured> = std::thread::scope(|s| {
        let (ready, worlds_ready) = mpsc::channel::<()>();
        let mut starts = Vec::new();
        let threads: Vec<_> = scenarios
            .iter()
            .map(|&(fault, tenant)| {
                let ready = ready.clone();
                let (go, start) = mpsc::channel::<SystemTime>();
                starts.push(go);
                s.spawn(move || {
                    let world = World::start(fault, tenant);
                    ready.send(()).unwrap();
                    drop(ready);
                    let start_at = start.recv().expect("another scenario failed to set up");
                    measure(world, start_at)
                })
            })
            .collect();
        // A scenario that fails to set up drops its sender without a word:
        // then the others are not started, and every thread ends.
        drop(ready);
        let set_up = worlds_ready.iter().take(scenarios.len()).count();
        if set_up < scenarios.len() {
            drop(starts);
            for t in threads {
                if let Err(panic) = t.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            unreachable!("a scenario failed to set up");
        }
        let boundary = next_minute(SETUP_MARGIN);
        println!(
            "set up in {:?}; the load starts {LOAD_START:?} after the minute boundary, in {:?}",
            began.elapsed(),
            boundary
                .duration_since(SystemTime::now())
                .unwrap_or_default()
        );
        for go in starts {
            go.send(boundary + LOAD_START).unwrap();
        }
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for m in &measured {
        println!("{}", m.report());
    }
    println!("all scenarios done in {:?}", began.elapsed());

    // Every scenario is judged, and every failure reported, together.
    let failures: Vec<String> = measured.iter().flat_map(judge).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
