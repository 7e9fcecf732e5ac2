//! One measured run of one scenario: start its Envoy, prove it is wired up
//! right, warm it up, measure, check every response was a 2xx, stop it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, HttpFilter, OtlpReceiver, Request, Route, WasmService,
};
use serde_json::{Value, json};

use super::cpu;
use super::scenarios::{
    Call, Load, MCP_CALL, MCP_PATH, MCP_PROTOCOL_VERSION, MCP_RESULT, PATH, Scenario, audit_section,
};
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
    // Connections spread evenly over the workers: with the kernel's
    // choice one worker may hold most of wrk's connections in one run and
    // half in the next, and CPU per request moves with that (a busier
    // event loop batches more), swamping differences of a few percent.
    let mut config = EnvoyConfig::new()
        .concurrency(opts.concurrency)
        .log_level("warning")
        .listener_field("connection_balance_config", json!({"exact_balance": {}}))
        // An edge gateway's setting: Envoy computes the client's address
        // from the connection and appends it to `X-Forwarded-For`, where
        // the audited rows read it (`audit.client`).
        .hcm_field("use_remote_address", json!(true));
    if let Some(rls) = &rls {
        config = config.cluster(rls.cluster("ctxgate_rls"));
    }
    // The audited rows: the demo collector, in this process, appending
    // to a file in a temp dir, and the audit singleton in Envoy.
    let audit = if scenario.audit {
        let dir = tempfile::tempdir().context("audit temp dir")?;
        let out = dir.path().join("audit.jsonl");
        let collector =
            ctxgate_audit::CollectorHandle::spawn(([127, 0, 0, 1], 0).into(), out.clone())?;
        config = config.cluster(Cluster::new("audit_collector", [collector.addr()]));
        if !scenario.filters.iter().all(HttpFilter::is_native) {
            config = config
                .bootstrap_extension(WasmService::audit_singleton("ctxgate", audit_section()));
        }
        Some((dir, out, collector))
    } else {
        None
    };
    // The traced rows: the demo's tracing block and runtime, exporting to
    // an OTLP receiver in this process.
    let otlp = scenario.tracing.map(|_| OtlpReceiver::start());
    if let (Some(receiver), Some(percent)) = (&otlp, scenario.tracing) {
        let mut tracing = ctxgate_e2e::demo::demo_hcm_field("tracing");
        let Some(block) = tracing.as_object_mut() else {
            bail!("envoy/demo.yaml has no tracing block");
        };
        block.insert("random_sampling".into(), json!({ "value": percent }));
        let runtime = ctxgate_e2e::demo::demo()
            .get("layered_runtime")
            .cloned()
            .context("envoy/demo.yaml has no layered_runtime")?;
        config = config
            .cluster(Cluster::new("otel_collector", [receiver.addr()]))
            .hcm_field("tracing", receiver.tracing(tracing, "otel_collector"))
            .bootstrap_field("layered_runtime", runtime);
    }
    for filter in &scenario.filters {
        config = config.filter(filter.clone());
    }
    let config = match scenario.call {
        Call::Rest => config.route(Route::prefix("/").direct(200, "ok")),
        Call::McpTool => {
            let socket = upstream_socket();
            config
                .extra_listener(mcp_upstream_listener(&socket))
                .raw_cluster(mcp_upstream_cluster(&socket))
                .route(Route::path(MCP_PATH).cluster(MCP_UPSTREAM))
        }
    };
    let envoy = Envoy::start(&config);
    let addr = envoy.listener_addr();
    let path = request_path(scenario.call);

    probe(&envoy, scenario, material)?;

    if !opts.warmup.is_zero() {
        let warmup = wrk::Params {
            duration: opts.warmup,
            ..opts.wrk.clone()
        };
        wrk::run(
            &warmup,
            addr,
            path,
            &wrk_request(scenario, material, &material.warmup_pool)?,
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
        path,
        &wrk_request(scenario, material, &material.measure_pool)?,
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
    if let Some((_dir, out, _collector)) = &audit {
        // An audited row that audits nothing must not report a number.
        let delivered = ctxgate_e2e::eventually(Duration::from_secs(10), || {
            ctxgate_audit::verify_file(out)
                .ok()
                .and_then(Result::ok)
                .is_some_and(|s| s.events >= result.envoy_responses)
        });
        let summary = ctxgate_audit::verify_file(out)?;
        ensure!(
            delivered,
            "{}: the collector's trail does not hold the run's events: {summary:?}",
            scenario.name
        );
    }
    if let (Some(receiver), Some(percent)) = (&otlp, scenario.tracing) {
        // A traced row that traces nothing must not report a number: the
        // sampled share of the responses has its spans (the last batch
        // within the tracer's 5 s flush interval), with the decision tag.
        let expected = (result.envoy_responses as f64 * percent / 100.0 * 0.9) as u64;
        let exported =
            ctxgate_e2e::eventually(Duration::from_secs(10), || receiver.received() >= expected);
        ensure!(
            exported && receiver.invalid() == 0,
            "{}: {} spans exported for {} responses at {percent}% ({} invalid exports)",
            scenario.name,
            receiver.received(),
            result.envoy_responses,
            receiver.invalid()
        );
        let last = receiver.spans().pop();
        ensure!(
            last.as_ref()
                .is_some_and(|s| s.tags.get("ctxgate.decision").is_some_and(|d| d == "allow")),
            "{}: the spans carry no decision: {last:?}",
            scenario.name
        );
    }
    drop(envoy);
    drop(rls);
    drop(audit);
    drop(otlp);
    Ok(result)
}

/// The path every request of `call` goes to.
fn request_path(call: Call) -> &'static str {
    match call {
        Call::Rest => PATH,
        Call::McpTool => MCP_PATH,
    }
}

/// The cluster of the stand-in MCP server.
const MCP_UPSTREAM: &str = "mcp_upstream";

/// A Unix socket name in the abstract namespace no other run uses: nothing
/// on the file system to clean up, no port to race other processes for.
fn upstream_socket() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    format!(
        "@ctxgate-bench-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// The stand-in MCP server: a second listener of the same Envoy, on
/// `socket`, answering every request with [`MCP_RESULT`] as
/// `application/json` (`direct_response`, no filters but the router).
fn mcp_upstream_listener(socket: &str) -> Value {
    json!({
        "name": "mcp_upstream",
        "address": { "pipe": { "path": socket } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "mcp_upstream",
                "route_config": { "virtual_hosts": [{
                    "name": "mcp_upstream",
                    "domains": ["*"],
                    "routes": [{
                        "match": { "prefix": "/" },
                        "direct_response": { "status": 200, "body": { "inline_string": MCP_RESULT } },
                        "response_headers_to_add": [{
                            "header": { "key": "content-type", "value": "application/json" },
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }],
                    }],
                }] },
                // The whole request is read before the answer: a reply
                // sent while the body is still coming closes the HTTP/1.1
                // connection, and every call would pay a new one.
                "http_filters": [
                    {
                        "name": "envoy.filters.http.buffer",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                            "max_request_bytes": 65536,
                        },
                    },
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                        },
                    },
                ],
            },
        }] }],
    })
}

/// The cluster forwarding to [`mcp_upstream_listener`] (HTTP/1.1).
fn mcp_upstream_cluster(socket: &str) -> Value {
    json!({
        "name": MCP_UPSTREAM,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": MCP_UPSTREAM,
            "endpoints": [{ "lb_endpoints": [{
                "endpoint": { "address": { "pipe": { "path": socket } } },
            }] }],
        },
    })
}

/// The headers of an MCP client's POST, besides the token.
fn mcp_headers() -> Vec<(String, String)> {
    [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", MCP_PROTOCOL_VERSION),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .to_vec()
}

/// What wrk sends for `scenario`; fresh tokens come from `pool`.
fn wrk_request<'a>(
    scenario: &Scenario,
    material: &'a Material,
    pool: &'a Pool,
) -> Result<wrk::Request<'a>> {
    let bearer = || {
        (
            "Authorization".to_owned(),
            format!("Bearer {}", material.repeated_token),
        )
    };
    Ok(match (scenario.call, scenario.load) {
        (Call::Rest, Load::Anonymous) => wrk::Request::Static { headers: vec![] },
        (Call::Rest, Load::RepeatedToken) => wrk::Request::Static {
            headers: vec![bearer()],
        },
        (Call::Rest, Load::FreshToken) => wrk::Request::Tokens {
            pool,
            script_dir: &material.script_dir,
        },
        (Call::McpTool, Load::Anonymous | Load::RepeatedToken) => {
            let mut headers = mcp_headers();
            if scenario.load == Load::RepeatedToken {
                headers.push(bearer());
            }
            wrk::Request::Post {
                headers,
                body: MCP_CALL,
                script_dir: &material.script_dir,
            }
        }
        (Call::McpTool, Load::FreshToken) => bail!(
            "scenario `{}`: MCP calls with fresh tokens are not implemented",
            scenario.name
        ),
    })
}

/// A request of `call` with `body` (MCP only) and, if given, a token.
fn request(call: Call, body: &str, token: Option<&str>) -> Request {
    let mut request = match call {
        Call::Rest => Request::get(PATH),
        Call::McpTool => mcp_headers()
            .iter()
            .fold(Request::post(MCP_PATH), |r, (name, value)| {
                r.header(name, value)
            })
            .body(body.as_bytes().to_vec()),
    };
    if let Some(token) = token {
        request = request.bearer(token);
    }
    request
}

/// One request with a token (must be 200; for MCP, a JSON-RPC result) and,
/// where the scenario says so, one without (must get the scenario's
/// status) and the calls it must refuse (403): a misconfigured filter
/// fails here, in a second, with the response in the error.
fn probe(envoy: &Envoy, scenario: &Scenario, material: &Material) -> Result<()> {
    let send = |request: Request| {
        request
            .timeout(Duration::from_secs(5))
            .try_send(envoy.listener_addr())
            .context("probe request failed")
    };
    let call = scenario.call;
    let token = match scenario.load {
        Load::Anonymous => None,
        Load::RepeatedToken | Load::FreshToken => Some(material.probe_token.as_str()),
    };
    let what = match call {
        Call::Rest => format!("GET {PATH}"),
        Call::McpTool => format!("POST {MCP_PATH}"),
    };
    let with_token = send(request(call, MCP_CALL, token))?;
    let answered = match call {
        Call::Rest => true,
        Call::McpTool => with_token.text() == MCP_RESULT,
    };
    ensure!(
        with_token.status == 200 && answered,
        "scenario `{}` is misconfigured: {what} got {} (want 200{}), body {:?}\n{}",
        scenario.name,
        with_token.status,
        if call == Call::McpTool {
            " and the upstream's JSON-RPC result"
        } else {
            ""
        },
        with_token.text(),
        log_tail(envoy)
    );
    if let Some(want) = scenario.unauthenticated_status {
        let without = send(request(call, MCP_CALL, None))?;
        ensure!(
            without.status == want,
            "scenario `{}` is misconfigured: {what} without a token got {} (want {want}); \
             is the filter active?",
            scenario.name,
            without.status
        );
    }
    for forbidden in scenario.forbidden {
        let refused = send(request(call, forbidden.body, token))?;
        ensure!(
            refused.status == 403,
            "scenario `{}` is misconfigured: {what} of {} got {} (want 403), body {:?}",
            scenario.name,
            forbidden.what,
            refused.status,
            refused.text()
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
