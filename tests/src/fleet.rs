//! A fleet of gateways sharing one global limit, in containers, measured
//! through faults: `make fleet` (all scenarios, `docs/fleet.md`) and, with
//! looser bounds and fewer scenarios, `tests/e2e/fleet.rs` in `make test`.
//!
//! Each scenario is its own world on two networks it creates: `front`
//! (the gateways, their ports published on 127.0.0.1) and `back` (the
//! gateways, `ctxgate-rls` and Redis). Three gateways (Envoy 1.40, two
//! workers, `dist/ctxgate.wasm`: auth -> ratelimit in hierarchical mode,
//! sync threshold 0.8, `failure_mode: local_fallback`) share one RLS that
//! counts in Redis. One tenant may use [`Plan::limit`] cost units per
//! (epoch-aligned) minute; clients on the host send it a steady mix of
//! reads (cost 1), writes (2) and graph traversals (10) at
//! [`Plan::offered`] times that rate, spread evenly over the gateways, for
//! one whole window. A request whose gateway does not answer (killed) is
//! sent to the next gateway, as a load balancer would.
//!
//! The faults, each from [`Plan::fault_start`] into the window:
//!
//! * Redis stopped ([`Plan::fault_length`]; an orderly stop that saves,
//!   as any Redis with persistence, and a start that loads);
//! * Redis hung: SIGSTOP, then SIGCONT;
//! * the RLS container restarted (`docker restart`);
//! * one gateway cut off from the back network (`docker network
//!   disconnect`), then reconnected;
//! * one gateway killed (SIGKILL) and started again 3 s later.
//!
//! Measured per scenario: the cost admitted in the window against the
//! limit, the share of requests that reached the RLS (from the RLS's own
//! `ctxgate_rls_requests_total`), every status, and how long after the
//! fault ended the fleet was back in sync (every gateway answering, and no
//! report of admitted usage still waiting to reach the RLS).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use serde_json::json;

use crate::docker::Engine;
use crate::{
    EnvoyConfig, Request, Route, WasmFilter, demo_idp, free_port, images, next_minute, sleep_until,
};

pub const GATEWAYS: usize = 3;

/// What a scenario does to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    RedisStopped,
    RedisHung,
    RlsRestarted,
    GatewayDisconnected,
    GatewayKilled,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::None,
        Fault::RedisStopped,
        Fault::RedisHung,
        Fault::RlsRestarted,
        Fault::GatewayDisconnected,
        Fault::GatewayKilled,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::None => "steady",
            Fault::RedisStopped => "Redis stopped",
            Fault::RedisHung => "Redis hung (SIGSTOP)",
            Fault::RlsRestarted => "RLS container restarted",
            Fault::GatewayDisconnected => "gateway cut off from the RLS network",
            Fault::GatewayKilled => "gateway killed and restarted",
        }
    }
}

/// The load and the fault's timing.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Cost units per minute for the tenant, at the RLS.
    pub limit: u64,
    /// Offered load, as a multiple of the limit's rate.
    pub offered: f64,
    /// From the start of the window; the load stops this long after it.
    pub load_length: Duration,
    pub fault_start: Duration,
    pub fault_length: Duration,
    /// The gateways' background report interval (`global.sync_interval_ms`).
    pub sync_interval_ms: u64,
}

impl Plan {
    /// `make fleet`: 3000 units a minute at 1.5 times that, for the whole
    /// window but its last half second; faults of 10 s from 15 s.
    pub fn full() -> Plan {
        Plan {
            limit: 3000,
            offered: 1.5,
            load_length: Duration::from_millis(59_300),
            fault_start: Duration::from_secs(15),
            fault_length: Duration::from_secs(10),
            // Not the default 200 ms: six worker VMs each reporting five
            // times a second are most of the RLS's load at this rate.
            sync_interval_ms: 1000,
        }
    }

    /// Units per second offered.
    fn rate(&self) -> f64 {
        self.limit as f64 / 60.0 * self.offered
    }
}

/// The requests of the mix, by share: (kind, cost, share of requests).
const MIX: [(Kind, u64, u32); 3] = [
    (Kind::Read, 1, 70),
    (Kind::Write, 2, 20),
    (Kind::Traversal, 10, 10),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Traversal,
}

impl Kind {
    fn request(self, token: &str) -> Request {
        let request = match self {
            Kind::Read => Request::get("/v1/contexts/projects/fleet"),
            Kind::Write => Request::new("PUT", "/v1/contexts/projects/fleet").body("{\"note\":1}"),
            Kind::Traversal => {
                Request::post("/v1/graph/traverse?context=projects/fleet").body("{}")
            }
        };
        request.bearer(token).timeout(Duration::from_secs(5))
    }
}

/// The images every world runs, built once (from this machine's
/// binaries: nothing is pulled) and removed when dropped.
pub struct Images {
    engine: Arc<Engine>,
    pub services: String,
    pub envoy: String,
    pub redis: String,
}

impl Images {
    pub fn build(engine: &Arc<Engine>) -> Result<Images> {
        let tag = std::process::id();
        let built = Images {
            engine: Arc::clone(engine),
            services: format!("ctxgate-fleet/services:{tag}"),
            envoy: format!("ctxgate-fleet/envoy:{tag}"),
            redis: format!("ctxgate-fleet/redis:{tag}"),
        };
        images::services(
            engine,
            &crate::repo_root().join("target/release"),
            &built.services,
        )?;
        images::envoy(engine, &images::envoy_executable()?, &built.envoy)?;
        images::redis(engine, &images::redis_dir()?, &built.redis)?;
        Ok(built)
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in [&self.services, &self.envoy, &self.redis] {
            let _ = self
                .engine
                .docker()
                .args(["image", "rm", "--force", image])
                .output();
        }
    }
}

struct Gateway {
    container: String,
    listener: SocketAddr,
    admin: SocketAddr,
}

/// One scenario's containers and networks, removed when dropped.
pub struct World {
    engine: Arc<Engine>,
    fault: Fault,
    plan: Plan,
    name: String,
    tenant: String,
    gateways: Vec<Gateway>,
    rls: String,
    rls_metrics: SocketAddr,
    redis: String,
    _dir: tempfile::TempDir,
}

impl World {
    /// Starts world number `index` of this process for `fault`, and waits
    /// until every gateway answers.
    pub fn start(
        engine: &Arc<Engine>,
        images: &Images,
        fault: Fault,
        plan: Plan,
        index: usize,
    ) -> Result<World> {
        let name = format!("ctxgate-fleet-{}-{index}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-fleet-")
            .tempdir()?;
        let mut world = World {
            engine: Arc::clone(engine),
            fault,
            plan,
            tenant: format!("fleet-{index}"),
            gateways: Vec::new(),
            rls: format!("{name}-rls"),
            rls_metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            redis: format!("{name}-redis"),
            name,
            _dir: dir,
        };
        for network in ["front", "back"] {
            world.docker(&[
                "network",
                "create",
                "--label",
                &world.label(),
                &world.network(network),
            ])?;
        }

        world.docker(&[
            "run",
            "--detach",
            "--name",
            &world.redis,
            "--label",
            &world.label(),
            "--network",
            &world.network("back"),
            "--network-alias",
            "redis",
            "--user",
            "0",
            "--volume",
            &format!("{}-data:/data", world.redis),
            "--entrypoint",
            "/usr/local/bin/redis-server",
            &images.redis,
            // Persistence as in production: an orderly stop saves.
            "--dir",
            "/data",
            "--save",
            "3600 1",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ])?;

        let limits = world._dir.path().join("limits.yaml");
        std::fs::write(
            &limits,
            format!(
                "domain: ctxgate\ndescriptors:\n  - key: tenant\n    rate_limit: \
                 {{unit: minute, requests_per_unit: {}, name: tenants}}\n",
                plan.limit
            ),
        )?;
        set_readable(&limits)?;
        world.docker(&[
            "run",
            "--detach",
            "--name",
            &world.rls,
            "--label",
            &world.label(),
            "--network",
            &world.network("back"),
            "--network-alias",
            "rls",
            "--publish",
            &format!("127.0.0.1:{}:9090", world.rls_metrics.port()),
            "--volume",
            &format!("{}:/etc/ctxgate/limits.yaml:ro", limits.display()),
            &images.services,
            "ctxgate-rls",
            "--listen",
            "0.0.0.0:8089",
            "--config",
            "/etc/ctxgate/limits.yaml",
            "--redis-url",
            "redis://redis:6379",
            "--metrics-listen",
            "0.0.0.0:9090",
        ])?;

        let config = world._dir.path().join("envoy.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&gateway_config(plan).to_json())?,
        )?;
        set_readable(&config)?;
        let wasm = crate::wasm_module("ctxgate");
        for i in 0..GATEWAYS {
            let gateway = Gateway {
                container: format!("{}-gw{i}", world.name),
                listener: SocketAddr::from(([127, 0, 0, 1], free_port())),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            };
            world.docker(&[
                "run",
                "--detach",
                "--name",
                &gateway.container,
                "--label",
                &world.label(),
                "--network",
                &world.network("front"),
                "--publish",
                &format!("127.0.0.1:{}:10000", gateway.listener.port()),
                "--publish",
                &format!("127.0.0.1:{}:9901", gateway.admin.port()),
                "--volume",
                &format!("{}:/etc/envoy/envoy.json:ro", config.display()),
                "--volume",
                &format!("{0}:{0}:ro", wasm.display()),
                "--entrypoint",
                "/usr/local/bin/envoy",
                &images.envoy,
                "--config-path",
                "/etc/envoy/envoy.json",
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])?;
            // Listed before anything else can fail: dropping the world
            // removes what it lists.
            let container = gateway.container.clone();
            world.gateways.push(gateway);
            world.docker(&["network", "connect", &world.network("back"), &container])?;
        }
        world.wait_ready(Duration::from_secs(60))?;
        Ok(world)
    }

    fn label(&self) -> String {
        format!("ctxgate.fleet={}", self.name)
    }

    fn network(&self, which: &str) -> String {
        format!("{}-{which}", self.name)
    }

    fn docker(&self, args: &[&str]) -> Result<String> {
        self.engine.try_run(self.engine.docker().args(args))
    }

    /// Every gateway admits a request of another tenant (the RLS and Redis
    /// answering through it).
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let token = demo_idp::hs256_token(&format!("{}-warmup", self.tenant), "user-1", &json!({}));
        let deadline = Instant::now() + timeout;
        for gateway in &self.gateways {
            loop {
                let ok = Kind::Read
                    .request(&token)
                    .try_send(gateway.listener)
                    .is_ok_and(|r| r.status == 200);
                let synced = self.rls_requests().is_ok_and(|n| n > 0);
                if ok && synced {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{}: {} did not get ready:\n{}",
                        self.name,
                        gateway.container,
                        self.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for container in self.containers() {
            let out = self
                .engine
                .docker()
                .args(["logs", "--tail", "20", &container])
                .output();
            if let Ok(out) = out {
                text.push_str(&format!(
                    "--- {container}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        text
    }

    fn containers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.gateways.iter().map(|g| g.container.clone()).collect();
        names.push(self.rls.clone());
        names.push(self.redis.clone());
        names
    }

    /// `ctxgate_rls_requests_total`, every code: the calls the RLS took.
    fn rls_requests(&self) -> Result<u64> {
        let text = Request::get("/metrics")
            .timeout(Duration::from_secs(2))
            .try_send(self.rls_metrics)?
            .text();
        Ok(text
            .lines()
            .filter(|l| l.starts_with("ctxgate_rls_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Reports of admitted usage still waiting to reach the RLS, summed
    /// over the gateways; `None` while one does not answer.
    fn pending_reports(&self) -> Option<u64> {
        let mut total = 0;
        for gateway in &self.gateways {
            let text = Request::get(
                "/stats?filter=%5Ewasmcustom%5C.ctxgate_ratelimit%5C.reports%5C.pending%24",
            )
            .timeout(Duration::from_secs(2))
            .try_send(gateway.admin)
            .ok()?
            .text();
            total += text
                .lines()
                .filter_map(|l| l.split_once(": ")?.1.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Some(total)
    }

    /// Redis's count of the tenant in minute window `window`.
    fn counted(&self, window: u64) -> Result<u64> {
        let key = format!(
            "ctxgate-rls/ctxgate/tenant%%tenant={}%%{window}",
            self.tenant
        );
        let value = self.docker(&["exec", &self.redis, "redis-cli", "GET", &key])?;
        Ok(value.trim().parse().unwrap_or(0))
    }

    /// Applies the fault on schedule from `start`, then measures how long
    /// the fleet takes to be back in sync after it (at most 30 s).
    fn inflict(&self, start: Instant) -> Result<Option<Duration>> {
        let plan = self.plan;
        let victim = self
            .gateways
            .get(1)
            .map(|g| g.container.clone())
            .unwrap_or_default();
        sleep_until(start + plan.fault_start);
        match self.fault {
            Fault::None => return Ok(None),
            Fault::RedisStopped => {
                self.docker(&["stop", "--time", "10", &self.redis])?;
                sleep_until(start + plan.fault_start + plan.fault_length);
                self.docker(&["start", &self.redis])?;
            }
            Fault::RedisHung => {
                self.docker(&["kill", "--signal", "STOP", &self.redis])?;
                sleep_until(start + plan.fault_start + plan.fault_length);
                self.docker(&["kill", "--signal", "CONT", &self.redis])?;
            }
            Fault::RlsRestarted => {
                self.docker(&["restart", "--time", "5", &self.rls])?;
            }
            Fault::GatewayDisconnected => {
                self.docker(&["network", "disconnect", &self.network("back"), &victim])?;
                sleep_until(start + plan.fault_start + plan.fault_length);
                self.docker(&["network", "connect", &self.network("back"), &victim])?;
            }
            Fault::GatewayKilled => {
                self.docker(&["kill", &victim])?;
                sleep_until(start + plan.fault_start + Duration::from_secs(3));
                self.docker(&["start", &victim])?;
                // Recovered once it is live again (Envoy up, the module
                // loaded): its own start is not the fleet's resync.
                let admin = self.gateways.get(1).map(|g| g.admin);
                let booted = Instant::now();
                while let Some(admin) = admin
                    && booted.elapsed() < Duration::from_secs(30)
                    && !Request::get("/ready")
                        .timeout(Duration::from_secs(1))
                        .try_send(admin)
                        .is_ok_and(|r| r.status == 200)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let recovered = Instant::now();
        loop {
            if self.pending_reports() == Some(0) {
                return Ok(Some(recovered.elapsed()));
            }
            if recovered.elapsed() > Duration::from_secs(30) {
                return Ok(Some(recovered.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let mut args = vec![
            "rm".to_owned(),
            "--force".to_owned(),
            "--volumes".to_owned(),
        ];
        args.extend(self.containers());
        let _ = self.engine.docker().args(&args).output();
        let _ = self
            .engine
            .docker()
            .args(["volume", "rm", "--force", &format!("{}-data", self.redis)])
            .output();
        for network in ["front", "back"] {
            let _ = self
                .engine
                .docker()
                .args(["network", "rm", &self.network(network)])
                .output();
        }
    }
}

/// The gateways' Envoy configuration: ctxgate (auth, ratelimit) -> a
/// direct 200, the RLS at `rls:8089` on the back network.
fn gateway_config(plan: Plan) -> EnvoyConfig {
    let auth = json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": [
            {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT", "POST", "PATCH"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"},
        ],
    });
    let share = plan.limit / GATEWAYS as u64;
    let ratelimit = json!({
        "costs": {"read": 1, "write": 2, "graph_traversal": 10},
        "tiers": {
            // Each gateway's local bucket is its share of the limit: what
            // it may admit alone while the RLS is away.
            "standard": [{"name": "per_minute", "limit": share, "window_seconds": 60}],
            "anonymous": [{"name": "per_minute", "limit": 60, "window_seconds": 60}],
        },
        "global": {
            "mode": "hierarchical",
            "cluster": "rls",
            "domain": "ctxgate",
            "sync_threshold": 0.8,
            "gateways": GATEWAYS,
            "sync_interval_ms": plan.sync_interval_ms,
            "timeout_ms": 50,
            "failure_mode": "local_fallback",
        },
    });
    EnvoyConfig::new()
        .filter(
            WasmFilter::ctxgate("ctxgate")
                .stage("auth", auth)
                .stage("ratelimit", ratelimit)
                .stage("metrics", json!({"flush_interval_ms": 100})),
        )
        .route(Route::prefix("/").direct(200, "ok"))
        .raw_cluster(json!({
            "name": "rls",
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_ONLY",
            // A restarted RLS may come back at another address.
            "dns_refresh_rate": "1s",
            "connect_timeout": "0.25s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {"cluster_name": "rls", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "rls", "port_value": 8089}}}}
            ]}]},
        }))
        .listener_field("address", json!({"socket_address": {"address": "0.0.0.0", "port_value": 10000}}))
        .bootstrap_field("admin", json!({"address": {"socket_address": {"address": "0.0.0.0", "port_value": 9901}}}))
}

fn set_readable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// One request: when it was due, its kind, its status (0: no gateway
/// answered), and whether it went to another gateway than its own.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    due: Duration,
    cost: u64,
    status: u16,
    failed_over: bool,
}

/// The load: `SENDERS_PER_GATEWAY` threads per gateway, the mix in a fixed
/// rotation, each request on schedule from `start` (late ones go at once).
fn load(world: &World, token: &str, start: Instant) -> Vec<Outcome> {
    const SENDERS_PER_GATEWAY: usize = 2;
    let targets: Vec<SocketAddr> = world.gateways.iter().map(|g| g.listener).collect();
    let senders = targets.len() * SENDERS_PER_GATEWAY;
    // The mix's mean cost gives the request rate for the units offered.
    let total_share: u32 = MIX.iter().map(|(_, _, share)| share).sum();
    let mean_cost: f64 = MIX
        .iter()
        .map(|(_, cost, share)| *cost as f64 * f64::from(*share))
        .sum::<f64>()
        / f64::from(total_share);
    let requests_per_second = world.plan.rate() / mean_cost;
    let period = Duration::from_secs_f64(senders as f64 / requests_per_second);
    let rotation: Vec<(Kind, u64)> = MIX
        .iter()
        .flat_map(|(kind, cost, share)| std::iter::repeat_n((*kind, *cost), (*share / 10) as usize))
        .collect();
    let length = world.plan.load_length;
    let mut outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..senders)
            .map(|i| {
                let targets = &targets;
                let rotation = &rotation;
                s.spawn(move || {
                    let mut outcomes = Vec::new();
                    let mut due = period.mul_f64(i as f64 / senders as f64);
                    let mut n = i;
                    while due < length {
                        sleep_until(start + due);
                        let (kind, cost) = rotation[n % rotation.len()];
                        let request = kind.request(token);
                        let home = i % targets.len();
                        let mut status = 0;
                        let mut failed_over = false;
                        for attempt in 0..targets.len() {
                            let addr = targets[(home + attempt) % targets.len()];
                            if let Ok(response) = request.try_send(addr) {
                                status = response.status;
                                failed_over = attempt > 0;
                                break;
                            }
                        }
                        outcomes.push(Outcome {
                            due,
                            cost,
                            status,
                            failed_over,
                        });
                        due += period;
                        n += 1;
                    }
                    outcomes
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    });
    outcomes.sort_by_key(|o| o.due);
    outcomes
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Measured {
    pub fault: Fault,
    pub limit: u64,
    pub requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Cost units admitted in the window.
    pub admitted: u64,
    /// Requests another gateway answered because theirs did not.
    pub failed_over: u64,
    /// Calls the RLS took during the window (its own counter).
    pub rls_calls: u64,
    /// Redis's count of the window, once every report landed.
    pub counted: u64,
    /// From the end of the fault (Redis answering again, the RLS container
    /// restarted, the gateway reconnected, or the killed gateway live
    /// again) until no gateway has a report of admitted usage waiting.
    pub resync: Option<Duration>,
}

impl Measured {
    /// Admitted against the limit, in percent (+ over, - under).
    pub fn deviation(&self) -> f64 {
        (self.admitted as f64 - self.limit as f64) * 100.0 / self.limit as f64
    }

    /// The share of requests that reached the RLS, in percent.
    pub fn rls_share(&self) -> f64 {
        self.rls_calls as f64 * 100.0 / self.requests.max(1) as f64
    }

    /// Statuses other than 200 and 429, and requests no gateway answered.
    pub fn unexpected(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| !matches!(status, 200 | 429))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn line(&self) -> String {
        format!(
            "{}: admitted {} of {} ({:+.2}%), {} requests, RLS calls {} ({:.1}%), statuses {:?}, \
             failed over {}, Redis counted {}, resync {}",
            self.fault.describe(),
            self.admitted,
            self.limit,
            self.deviation(),
            self.requests,
            self.rls_calls,
            self.rls_share(),
            self.statuses,
            self.failed_over,
            self.counted,
            self.resync
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        )
    }
}

/// Bounds a scenario is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Steady: admitted within this many percent of the limit.
    pub steady_percent: f64,
    /// Through a fault.
    pub fault_percent: f64,
    /// Share of requests reaching the RLS, steady, in percent.
    pub rls_percent: f64,
    pub resync: Duration,
}

impl Bounds {
    /// The targets: 1%, 5%, 20%, 2 s.
    pub fn targets() -> Bounds {
        Bounds {
            steady_percent: 1.0,
            fault_percent: 5.0,
            rls_percent: 20.0,
            resync: Duration::from_secs(2),
        }
    }
}

/// What is wrong with `m` by `bounds`.
pub fn judge(m: &Measured, bounds: Bounds) -> Vec<String> {
    let name = m.fault.describe();
    let mut failures = Vec::new();
    let allowed = if m.fault == Fault::None {
        bounds.steady_percent
    } else {
        bounds.fault_percent
    };
    if m.deviation().abs() > allowed {
        failures.push(format!(
            "{name}: admitted {:+.2}% off the limit (bound {allowed}%)",
            m.deviation()
        ));
    }
    if m.unexpected() > 0 {
        failures.push(format!(
            "{name}: {} requests not answered 200 or 429: {:?}",
            m.unexpected(),
            m.statuses
        ));
    }
    if m.fault == Fault::None && m.rls_share() > bounds.rls_percent {
        failures.push(format!(
            "{name}: {:.1}% of requests reached the RLS (bound {}%)",
            m.rls_share(),
            bounds.rls_percent
        ));
    }
    if let Some(resync) = m.resync
        && resync > bounds.resync
    {
        failures.push(format!(
            "{name}: back in sync {:.2} s after the fault (bound {:?})",
            resync.as_secs_f64(),
            bounds.resync
        ));
    }
    failures
}

/// Runs `world` through one window starting at `start_at` (a minute
/// boundary).
pub fn measure(world: &World, start_at: SystemTime) -> Result<Measured> {
    let token = demo_idp::hs256_token(&world.tenant, "user-1", &json!({}));
    let window = start_at.duration_since(UNIX_EPOCH)?.as_secs() / 60;
    let rls_before = world.rls_requests()?;
    let start = Instant::now()
        + start_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
    let (outcomes, resync) = std::thread::scope(|s| {
        let fault = s.spawn(|| world.inflict(start));
        let outcomes = load(world, &token, start + Duration::from_millis(300));
        (outcomes, fault.join())
    });
    let resync = resync.map_err(|_| anyhow::anyhow!("the fault thread panicked"))??;
    // Every report lands (at most 15 s), then the RLS's count is read.
    let settle = Instant::now();
    while world.pending_reports() != Some(0) && settle.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let rls_calls = world.rls_requests()?.saturating_sub(rls_before);
    let counted = world.counted(window)?;
    let mut statuses = BTreeMap::new();
    let mut admitted = 0;
    let mut failed_over = 0;
    for outcome in &outcomes {
        *statuses.entry(outcome.status).or_insert(0) += 1;
        if outcome.status == 200 {
            admitted += outcome.cost;
        }
        failed_over += u64::from(outcome.failed_over);
    }
    Ok(Measured {
        fault: world.fault,
        limit: world.plan.limit,
        requests: outcomes.len() as u64,
        statuses,
        admitted,
        failed_over,
        rls_calls,
        counted,
        resync,
    })
}

/// Runs `faults`, all in one window (in parallel), each in its own world.
pub fn run_together(
    engine: &Arc<Engine>,
    images: &Images,
    faults: &[Fault],
    plan: Plan,
    first_index: usize,
) -> Result<Vec<Measured>> {
    let worlds = faults
        .iter()
        .enumerate()
        .map(|(i, fault)| World::start(engine, images, *fault, plan, first_index + i))
        .collect::<Result<Vec<_>>>()?;
    let start_at = next_minute(Duration::from_secs(2));
    std::thread::scope(|s| {
        let threads: Vec<_> = worlds
            .iter()
            .map(|w| s.spawn(move || measure(w, start_at)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a scenario panicked"))?
            })
            .collect()
    })
}

/// `docs/fleet.md` for `results`.
pub fn markdown(results: &[Measured], plan: Plan, bounds: Bounds) -> String {
    let mut text = String::from(
        "# The fleet under faults\n\n\
         Generated by `make fleet` (`cargo run --release -p ctxgate-e2e --bin ctxgate-fleet`);\n\
         see `tests/src/fleet.rs` for the topology and the measurement.\n\n",
    );
    text.push_str(&format!(
        "Three gateways (Envoy 1.40, `--concurrency 2`, `dist/ctxgate.wasm`: auth -> ratelimit,\n\
         hierarchical, sync threshold 0.8, background reports every {} ms, local fallback), one\n\
         `ctxgate-rls` counting in Redis,\n\
         in containers on two networks of their own. One tenant, limit {} cost units per\n\
         minute (the RLS's epoch-aligned window), offered {}x that as a mix of reads (1),\n\
         writes (2) and graph traversals (10), spread over the gateways for {:.1} s of the\n\
         window. Faults start {} s into the window and last {} s (the RLS: one `docker\n\
         restart`; the killed gateway: started again 3 s later).\n\n",
        plan.sync_interval_ms,
        plan.limit,
        plan.offered,
        plan.load_length.as_secs_f64(),
        plan.fault_start.as_secs(),
        plan.fault_length.as_secs(),
    ));
    text.push_str(
        "| scenario | admitted / limit | deviation | requests | reached the RLS | statuses | failed over | Redis counted | back in sync | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in results {
        let verdict = judge(m, bounds);
        text.push_str(&format!(
            "| {} | {} / {} | {:+.2}% | {} | {} ({:.1}%) | {} | {} | {} | {} | {} |\n",
            m.fault.describe(),
            m.admitted,
            m.limit,
            m.deviation(),
            m.requests,
            m.rls_calls,
            m.rls_share(),
            m.statuses
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            m.failed_over,
            m.counted,
            m.resync
                .map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            if verdict.is_empty() {
                "met".to_owned()
            } else {
                format!("**missed**: {}", verdict.join("; "))
            },
        ));
    }
    text.push_str(&format!(
        "\nTargets: steady within {}% of the limit; through each fault within {}%, every request\n\
         answered 200 or 429 (status 0: no gateway answered), back in sync within {:?} of the\n\
         fault's end; at most {}% of requests reaching the RLS (steady, from its own\n\
         `ctxgate_rls_requests_total`).\n",
        bounds.steady_percent, bounds.fault_percent, bounds.resync, bounds.rls_percent
    ));
    text
}
