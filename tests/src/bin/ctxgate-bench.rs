//! `make bench`: throughput and latency of Envoy with ctxgate's filters,
//! next to bare Envoy and Envoy's native `jwt_authn`, written to a markdown
//! report. See `tests/src/bench/mod.rs` for how it measures, and
//! `tests/src/bench/scenarios.rs` for the rows.
//!
//! ```text
//! cargo run --release -p ctxgate-e2e --bin ctxgate-bench -- --out docs/benchmarks.md
//! cargo run --release -p ctxgate-e2e --bin ctxgate-bench -- --rounds 1 --duration 3s --scenarios bare,jwt_authn
//! ```

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use ctxgate_demo::DemoKeys;

use bench::report::{self, Meta, Row};
use bench::run::{self, Material, Options};
use bench::scenarios::{self, Fixtures, Load, Scenario};
use bench::tokens::Minter;
use bench::wrk;

/// Benchmark Envoy with ctxgate's filters against bare Envoy and native filters.
#[derive(Parser, Debug)]
#[command(name = "ctxgate-bench")]
struct Args {
    /// Write the markdown report here (the table is printed either way).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the generated performance block of this README (between
    /// its `BEGIN GENERATED: performance` and `END GENERATED` markers).
    #[arg(long)]
    readme: Option<PathBuf>,
    /// Envoy worker threads (`--concurrency`), the same for every scenario.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// wrk connections (at least --threads).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Length of each measured run: `8s`, `1m`, or seconds.
    #[arg(long, default_value = "8s", value_parser = parse_secs)]
    duration: Duration,
    /// Length of the discarded warm-up run before each measured run.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    warmup: Duration,
    /// Rounds; each runs every scenario once, in a rotated order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Only these scenarios (comma-separated names, see --list).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Add a row: the no-op wasm filter making these host calls on every
    /// request (comma-separated, see tests/wasm-floor), to price a set of
    /// host calls without any logic. Repeatable.
    #[arg(long)]
    floor: Vec<String>,
    /// Highest request rate a fresh-token scenario could plausibly reach;
    /// token pools are sized so that no token repeats below it. Default:
    /// 10000 per Envoy worker, since verifying an ES256 signature costs a
    /// worker at least ~100 µs (native BoringSSL; wasm is slower).
    #[arg(long)]
    fresh_max_rps: Option<u64>,
    /// Fail when more than this share of responses is not 2xx.
    #[arg(long, default_value_t = 0.001)]
    max_failure_ratio: f64,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(minutes) => (minutes, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of seconds (`8s`, `1m`, `8`)"))?;
    Ok(Duration::from_secs(n * scale))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench_main(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctxgate-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_main(args: &Args) -> Result<()> {
    let started = SystemTime::now();
    let clock = Instant::now();
    if args.connections < args.threads || args.threads == 0 || args.rounds == 0 {
        bail!("need --threads >= 1, --connections >= --threads and --rounds >= 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be at least 1s");
    }

    // Everything that can be missing, before minting or starting anything.
    let wrk_version = wrk::version()?;
    let module = ctxgate_e2e::dist_dir().join("ctxgate.wasm");
    if !module.is_file() {
        bail!(
            "{} not found: run `make build` (or `make bench`, which builds first)",
            module.display()
        );
    }
    let envoy_version = envoy_version()?;

    let work = tempfile::Builder::new()
        .prefix("ctxgate-bench-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let keys = DemoKeys::load_or_generate(&work.path().join("keys"))?;
    let fixtures = Fixtures::from_demo_jwks(&keys.jwks()?)?;
    let mut selected = select(scenarios::all(&fixtures), &args.scenarios)?;
    selected.extend(args.floor.iter().map(|calls| scenarios::floor_row(calls)));
    if args.list {
        for s in scenarios::all(&fixtures) {
            println!("{:32} {}", s.name, s.load.describe());
        }
        return Ok(());
    }

    let minter = Minter::new(&keys)?;
    let fresh = selected.iter().any(|s| s.load == Load::FreshToken);
    let max_rps = args
        .fresh_max_rps
        .unwrap_or(10_000 * u64::from(args.concurrency));
    let pool_size = |d: Duration| {
        if fresh {
            usize::try_from(max_rps.saturating_mul(d.as_secs().max(1))).unwrap_or(0)
        } else {
            1
        }
    };
    let (warmup_size, measure_size) = (pool_size(args.warmup), pool_size(args.duration));
    let mint_clock = Instant::now();
    let material = Material {
        repeated_token: minter.token(&keys, "repeated", 0)?,
        probe_token: minter.token(&keys, "probe", 0)?,
        warmup_pool: minter.pool(&work.path().join("warmup.tokens"), "warmup", warmup_size)?,
        measure_pool: minter.pool(&work.path().join("measure.tokens"), "measure", measure_size)?,
        script_dir: work.path().to_path_buf(),
    };
    if fresh {
        eprintln!(
            "minted {} + {} ES256 tokens in {:.1} s",
            warmup_size,
            measure_size,
            mint_clock.elapsed().as_secs_f64()
        );
    }

    let options = Options {
        concurrency: args.concurrency,
        wrk: wrk::Params {
            threads: args.threads,
            connections: args.connections,
            duration: args.duration,
        },
        warmup: args.warmup,
        max_failure_ratio: args.max_failure_ratio,
    };
    let per_run = args.duration + args.warmup + Duration::from_secs(3);
    eprintln!(
        "{} scenarios x {} rounds, Envoy --concurrency {}, wrk {}: about {:.0} minutes",
        selected.len(),
        args.rounds,
        args.concurrency,
        options.wrk.describe(),
        (per_run * u32::try_from(selected.len() * args.rounds).unwrap_or(u32::MAX)).as_secs_f64()
            / 60.0
    );
    let load_before = loadavg();

    let mut rows: Vec<Row> = selected
        .iter()
        .map(|scenario| Row {
            scenario,
            runs: Vec::new(),
        })
        .collect();
    let n = rows.len();
    for round in 0..args.rounds {
        for step in 0..n {
            let index = (round + step) % n;
            let Some(row) = rows.get_mut(index) else {
                continue;
            };
            let name = row.scenario.name;
            eprint!(
                "round {}/{} [{}/{n}] {name:32} ",
                round + 1,
                args.rounds,
                step + 1
            );
            let result = guarded(|| run::run_once(row.scenario, &material, &options))
                .with_context(|| format!("scenario `{name}`, round {}", round + 1))?;
            eprintln!(
                "{:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  Envoy {:.1} µs/req  cores: Envoy {:.2} wrk {:.2} other {:.2}{}",
                result.wrk.requests_per_sec,
                result.wrk.p50_us / 1000.0,
                result.wrk.p99_us / 1000.0,
                result.envoy_us_per_request(),
                result.cpu.cores(result.cpu.envoy),
                result.cpu.cores(result.cpu.wrk),
                result.cpu.other_cores,
                if result.wrk.tokens_wrapped {
                    "  TOKEN POOL WRAPPED"
                } else {
                    ""
                }
            );
            row.runs.push(result);
        }
    }

    let meta = Meta {
        started,
        elapsed: clock.elapsed(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned()),
        envoy_version,
        wrk_version,
        concurrency: args.concurrency,
        wrk_params: options.wrk.describe(),
        warmup: args.warmup,
        rounds: args.rounds,
        load_before,
        load_after: loadavg(),
        pool_sizes: if fresh {
            (warmup_size, measure_size)
        } else {
            (0, 0)
        },
    };
    println!("\n{}", report::table(&rows));
    let mcp = report::mcp_table(&rows);
    if !mcp.is_empty() {
        println!("{mcp}");
    }
    println!("{}", report::noise_verdict(&rows));
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(out, report::markdown(&meta, &rows))
            .with_context(|| format!("cannot write {}", out.display()))?;
        println!("report written to {}", out.display());
    }
    if let Some(readme) = &args.readme {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("cannot read {}", readme.display()))?;
        let section = bench::targets::readme_section(&rows, &report::utc_date(started));
        let Some(spliced) = bench::targets::splice_readme(&text, &section) else {
            bail!(
                "{} has no {} ... {} block",
                readme.display(),
                bench::targets::README_BEGIN,
                bench::targets::README_END
            );
        };
        std::fs::write(readme, spliced)
            .with_context(|| format!("cannot write {}", readme.display()))?;
        println!("performance section of {} regenerated", readme.display());
    }
    println!("{}", bench::targets::targets_table(&rows));
    Ok(())
}

/// The scenarios named in `names` (all if empty), in report order.
fn select(all: Vec<Scenario>, names: &[String]) -> Result<Vec<Scenario>> {
    if let Some(unknown) = names.iter().find(|n| !all.iter().any(|s| s.name == *n)) {
        let known: Vec<&str> = all.iter().map(|s| s.name).collect();
        bail!("unknown scenario {unknown:?}; known: {}", known.join(", "));
    }
    Ok(all
        .into_iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect())
}

/// Runs `f`, turning a panic (the harness panics when Envoy does not start)
/// into an error; the panic message itself is already on stderr. Envoys
/// started inside `f` are stopped while unwinding.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let first_line = message.lines().next().unwrap_or_default();
        Err(anyhow!("the harness panicked: {first_line}"))
    })
}

/// `envoy --version`, e.g. `9e55.../1.40.0/Clean/RELEASE/BoringSSL`.
fn envoy_version() -> Result<String> {
    let binary = guarded(|| Ok(ctxgate_e2e::envoy_binary()))?;
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.split_once("version:").map(|(_, v)| v.trim().to_owned()))
        .ok_or_else(|| anyhow!("`{} --version` printed no version", binary.display()))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}
