//! One measured run of one scenario: start its Envoy, prove it is wired up
//! right, warm it up, measure, check every response was a 2xx, stop it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ctxgate_e2e::{Envoy, EnvoyConfig, Request, Route};

use super::cpu;
use super::scenarios::{Load, PATH, Scenario};
use super::tokens::Pool;
use super::wrk;

/// Settings shared by every run.
pub struct Options {
    pub concurrency: u32,
    pub wrk: wrk::Params,
    pub warmup: Duration,
    /// Largest tolerated share of non-2xx responses (and socket errors).
    pub max_failure_ratio: f64,
}

/// Tokens and key material, made once before the first Envoy starts.
pub struct Material {
    pub repeated_token: String,
    /// Sent once before each run; never part of the load.
    pub probe_token: String,
    pub warmup_pool: Pool,
    pub measure_pool: Pool,
    pub script_dir: PathBuf,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub wrk: wrk::Outcome,
    pub cpu: cpu::Window,
    /// Responses Envoy counted during the measured window, and how many of
    /// them were not 2xx.
    pub envoy_responses: u64,
    pub envoy_non_2xx: u64,
}

impl RunResult {
    /// Envoy's CPU time per response, in microseconds.
    pub fn envoy_us_per_request(&self) -> f64 {
        self.cpu.envoy.as_secs_f64() * 1e6 / (self.envoy_responses.max(1) as f64)
    }
}

/// Runs `scenario` once on a fresh Envoy.
pub fn run_once(scenario: &Scenario, material: &Material, opts: &Options) -> Result<RunResult> {
    let rls = scenario
        .needs_rls
        .then(|| ctxgate_e2e::Rls::start(super::scenarios::RLS_LIMITS, None));
    let mut config = EnvoyConfig::new()
        .concurrency(opts.concurrency)
        .log_level("warning");
    if let Some(rls) = &rls {
        config = config.cluster(rls.cluster("ctxgate_rls"));
    }
    for filter in &scenario.filters {
        config = config.filter(filter.clone());
    }
    let config = config.route(Route::prefix("/").direct(200, "ok"));
    let envoy = Envoy::start(&config);
    let addr = envoy.listener_addr();

    probe(&envoy, scenario, material)?;

    if !opts.warmup.is_zero() {
        let warmup = wrk::Params {
            duration: opts.warmup,
            ..opts.wrk.clone()
        };
        wrk::run(
            &warmup,
            addr,
            PATH,
            &wrk_request(scenario.load, material, &material.warmup_pool),
        )
        .context("warm-up")?;
    }

    let before_counts = settled_status_counts(&envoy);
    let before = cpu::sample(envoy.pid())?;
    let params = wrk::Params {
        connections: scenario.connections.unwrap_or(opts.wrk.connections),
        ..opts.wrk.clone()
    };
    let outcome = wrk::run(
        &params,
        addr,
        PATH,
        &wrk_request(scenario.load, material, &material.measure_pool),
    )?;
    let after = cpu::sample(envoy.pid())?;
    let after_counts = settled_status_counts(&envoy);

    let delta = |class: &str| {
        after_counts
            .get(class)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before_counts.get(class).copied().unwrap_or(0))
    };
    let ok = delta("2xx");
    let not_ok: u64 = ["1xx", "3xx", "4xx", "5xx"].iter().map(|c| delta(c)).sum();
    let result = RunResult {
        wrk: outcome,
        cpu: before.until(&after),
        envoy_responses: ok + not_ok,
        envoy_non_2xx: not_ok,
    };
    check_responses(scenario, &result, opts.max_failure_ratio)?;
    drop(envoy);
    drop(rls);
    Ok(result)
}

/// What wrk sends for `load`; fresh tokens come from `pool`.
fn wrk_request<'a>(load: Load, material: &'a Material, pool: &'a Pool) -> wrk::Request<'a> {
    match load {
        Load::Anonymous => wrk::Request::Static { headers: vec![] },
        Load::RepeatedToken => wrk::Request::Static {
            headers: vec![(
                "Authorization".to_owned(),
                format!("Bearer {}", material.repeated_token),
            )],
        },
        Load::FreshToken => wrk::Request::Tokens {
            pool,
            script_dir: &material.script_dir,
        },
    }
}

/// One request with a token (must be 200) and, where the scenario says
/// so, one without (must get the scenario's status): a misconfigured
/// filter fails here, in a second, with the response in the error.
fn probe(envoy: &Envoy, scenario: &Scenario, material: &Material) -> Result<()> {
    let send = |request: Request| {
        request
            .timeout(Duration::from_secs(5))
            .try_send(envoy.listener_addr())
            .context("probe request failed")
    };
    let with_token = match scenario.load {
        Load::Anonymous => send(Request::get(PATH))?,
        Load::RepeatedToken | Load::FreshToken => {
            send(Request::get(PATH).bearer(&material.probe_token))?
        }
    };
    ensure!(
        with_token.status == 200,
        "scenario `{}` is misconfigured: GET {PATH} got {} (want 200), body {:?}\n{}",
        scenario.name,
        with_token.status,
        with_token.text(),
        log_tail(envoy)
    );
    if let Some(want) = scenario.unauthenticated_status {
        let without = send(Request::get(PATH))?;
        ensure!(
            without.status == want,
            "scenario `{}` is misconfigured: GET {PATH} without a token got {} (want {want}); \
             is the filter active?",
            scenario.name,
            without.status
        );
    }
    Ok(())
}

fn check_responses(scenario: &Scenario, result: &RunResult, max_ratio: f64) -> Result<()> {
    let total = result.envoy_responses.max(1) as f64;
    let failed = result.envoy_non_2xx.max(result.wrk.non_2xx_3xx);
    if failed as f64 / total > max_ratio {
        bail!(
            "scenario `{}`: {failed} of {} responses were not 2xx (more than {:.2}%): the \
             scenario is misconfigured or Envoy is failing; numbers from this run would be \
             meaningless",
            scenario.name,
            result.envoy_responses,
            max_ratio * 100.0
        );
    }
    let errors = result.wrk.socket_errors as f64;
    if errors / (result.wrk.requests.max(1) as f64) > max_ratio {
        bail!(
            "scenario `{}`: wrk saw {} socket errors in {} requests",
            scenario.name,
            result.wrk.socket_errors,
            result.wrk.requests
        );
    }
    Ok(())
}

/// Envoy's `downstream_rq_<N>xx` counters by class (`"2xx"`), read once
/// they stopped moving: Envoy counts a response when its stream is torn
/// down, which can lag the client by a moment.
fn settled_status_counts(envoy: &Envoy) -> HashMap<String, u64> {
    let read = || -> HashMap<String, u64> {
        envoy
            .stats_matching(r"^http\.ingress\.downstream_rq_[1-5]xx$")
            .into_iter()
            .filter_map(|(name, value)| {
                let class = name.rsplit('_').next()?.to_owned();
                Some((class, value))
            })
            .collect()
    };
    let mut last = read();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = read();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn log_tail(envoy: &Envoy) -> String {
    let log = envoy.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines
        .get(lines.len().saturating_sub(20)..)
        .unwrap_or_default()
        .join("\n");
    format!("--- envoy.log (last 20 lines) ---\n{tail}")
}
