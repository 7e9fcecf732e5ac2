//! Turning runs into the markdown report: medians per scenario, the
//! machine and tool versions, and a noise verdict.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::run::RunResult;
use super::scenarios::{
    MCP_AUTH_ONLY, MCP_BARE, MCP_NATIVE, MCP_PIPELINE, MCP_PIPELINE_LOCAL, Scenario,
};

/// A scenario's spread of requests/s beyond which the run is called noisy.
const NOISY_SPREAD: f64 = 0.10;
/// Average foreign CPU load (in cores) beyond which the run is called noisy.
const NOISY_OTHER_CORES: f64 = 0.15;

/// Everything about the run that is not a measurement.
pub struct Meta {
    pub started: SystemTime,
    pub elapsed: Duration,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub envoy_version: String,
    pub wrk_version: String,
    pub concurrency: u32,
    pub wrk_params: String,
    pub warmup: Duration,
    pub rounds: usize,
    pub load_before: String,
    pub load_after: String,
    pub pool_sizes: (usize, usize),
}

/// All rounds of one scenario.
pub struct Row<'a> {
    pub scenario: &'a Scenario,
    /// One entry per round, in round order.
    pub runs: Vec<RunResult>,
}

impl Row<'_> {
    fn values(&self, f: impl Fn(&RunResult) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }

    pub fn median_rps(&self) -> f64 {
        median(&self.values(|r| r.wrk.requests_per_sec))
    }

    fn rps_range(&self) -> (f64, f64) {
        let rps = self.values(|r| r.wrk.requests_per_sec);
        (
            rps.iter().copied().fold(f64::INFINITY, f64::min),
            rps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    }

    /// (max - min) / median of requests/s.
    fn spread(&self) -> f64 {
        let (min, max) = self.rps_range();
        (max - min) / self.median_rps().max(1e-9)
    }

    fn tokens_note(&self) -> Option<String> {
        let used = self.runs.iter().filter_map(|r| r.wrk.tokens_used).max()?;
        let wrapped = self.runs.iter().filter(|r| r.wrk.tokens_wrapped).count();
        Some(if wrapped == 0 {
            format!("at most {used} tokens used per run, none repeated")
        } else {
            format!(
                "**the token pool wrapped in {wrapped} of {} runs** (up to {used} requests): \
                 some tokens were sent twice and may have hit a cache",
                self.runs.len()
            )
        })
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted.get(n / 2).copied().unwrap_or(f64::NAN),
        _ => {
            let (a, b) = (sorted.get(n / 2 - 1), sorted.get(n / 2));
            a.zip(b).map_or(f64::NAN, |(a, b)| (a + b) / 2.0)
        }
    }
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// The results table, in markdown (also what goes to stdout).
pub fn table(rows: &[Row]) -> String {
    let bare = rows
        .iter()
        .find(|r| r.scenario.name == "bare")
        .map(Row::median_rps);
    let mut out = String::from(
        "| scenario | req/s (median) | range | p50 | p99 | vs bare | Envoy CPU/req |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let rps = row.median_rps();
        let (min, max) = row.rps_range();
        let ratio = bare.map_or("–".to_owned(), |b| format!("{:.2}×", rps / b));
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0}–{:.0} | {} | {} | {} | {:.1} µs |",
            row.scenario.name,
            rps,
            min,
            max,
            ms(median(&row.values(|r| r.wrk.p50_us))),
            ms(median(&row.values(|r| r.wrk.p99_us))),
            ratio,
            median(&row.values(RunResult::envoy_us_per_request)),
        );
    }
    out
}

/// The MCP rows next to each other: req/s, latency and Envoy CPU per
/// request, what the filters add over `mcp bare`, and the pipeline against
/// the native filters. Empty when the run has no MCP rows.
pub fn mcp_table(rows: &[Row]) -> String {
    let find = |name: &str| rows.iter().find(|r| r.scenario.name == name);
    let Some(bare) = find(MCP_BARE) else {
        return String::new();
    };
    let p50 = |row: &Row| median(&row.values(|r| r.wrk.p50_us));
    let p99 = |row: &Row| median(&row.values(|r| r.wrk.p99_us));
    let cpu = |row: &Row| median(&row.values(RunResult::envoy_us_per_request));
    let added = |us: f64| format!("{:+.2} ms", us / 1000.0);
    let mut out = format!(
        "| scenario | req/s (median) | vs `{MCP_BARE}` | p50 | p99 | added p50 | added p99 | \
         Envoy CPU/req | added CPU/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let _ = writeln!(
        out,
        "| {MCP_BARE} | {:.0} | 1.00× | {} | {} | – | – | {:.1} µs | – |",
        bare.median_rps(),
        ms(p50(bare)),
        ms(p99(bare)),
        cpu(bare)
    );
    let authorising: Vec<&Row> = [MCP_NATIVE, MCP_AUTH_ONLY, MCP_PIPELINE_LOCAL, MCP_PIPELINE]
        .into_iter()
        .filter_map(&find)
        .collect();
    for row in &authorising {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2}× | {} | {} | {} | {} | {:.1} µs | {:+.1} µs |",
            row.scenario.name,
            row.median_rps(),
            row.median_rps() / bare.median_rps().max(1e-9),
            ms(p50(row)),
            ms(p99(row)),
            added(p50(row) - p50(bare)),
            added(p99(row) - p99(bare)),
            cpu(row),
            cpu(row) - cpu(bare)
        );
    }
    let Some(native) = find(MCP_NATIVE) else {
        return out;
    };
    for pipeline in [MCP_AUTH_ONLY, MCP_PIPELINE_LOCAL, MCP_PIPELINE]
        .into_iter()
        .filter_map(&find)
    {
        let added_cpu = |row: &Row| cpu(row) - cpu(bare);
        let cpu_ratio = if added_cpu(native) > 0.0 {
            format!(
                "{:.2}× the native filters' added Envoy CPU per request",
                added_cpu(pipeline) / added_cpu(native)
            )
        } else {
            "the native filters added no measurable Envoy CPU per request".to_owned()
        };
        let _ = writeln!(
            out,
            "\n`{}` against `{MCP_NATIVE}`: {:.2}× its requests/s; {cpu_ratio}; \
             its latency minus theirs: {} at p50, {} at p99.",
            pipeline.scenario.name,
            pipeline.median_rps() / native.median_rps().max(1e-9),
            added(p50(pipeline) - p50(native)),
            added(p99(pipeline) - p99(native)),
        );
    }
    out
}

/// The whole report.
pub fn markdown(meta: &Meta, rows: &[Row]) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# ctxgate benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `make bench` (`ctxgate-bench`) on {} in {:.1} minutes. \
         Numbers from one machine; compare rows with each other, not with other machines.\n",
        utc_date(meta.started),
        meta.elapsed.as_secs_f64() / 60.0
    );
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(
        w,
        "| machine | {} CPUs, {}, Linux {} |",
        meta.cpus, meta.cpu_model, meta.kernel
    );
    let _ = writeln!(w, "| Envoy | `{}` |", meta.envoy_version);
    let _ = writeln!(
        w,
        "| Envoy workers | `--concurrency {}` |",
        meta.concurrency
    );
    let _ = writeln!(
        w,
        "| load | `{}` `{}`, after a {} s warm-up run per scenario (discarded) |",
        meta.wrk_version,
        meta.wrk_params,
        meta.warmup.as_secs()
    );
    let _ = writeln!(
        w,
        "| rounds | {}: every round runs every scenario once, on a fresh Envoy, in a rotated \
         order; the table shows medians over rounds |",
        meta.rounds
    );
    let _ = writeln!(
        w,
        "| load average | {} before, {} after |\n",
        meta.load_before, meta.load_after
    );

    let _ = writeln!(w, "## Results\n");
    w.push_str(&table(rows));
    w.push('\n');
    for row in rows {
        if let Some(note) = row.tokens_note() {
            let _ = writeln!(w, "- `{}`: {note}.", row.scenario.name);
        }
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(
        w,
        "Overhead: a row's Envoy CPU per request minus bare Envoy's, medians of this run.\n"
    );
    w.push_str(&super::targets::targets_table(rows));
    let _ = writeln!(w, "\n## What each stage adds\n");
    let _ = writeln!(
        w,
        "Each stage alone in its own plugin (`dist/ctxgate.wasm` with one section), \
         against bare Envoy and against the wasm floor (a Rust proxy-wasm filter that does \
         nothing). The floor rows with host calls make exactly the host calls of the stage \
         or the pipeline and nothing else: the difference to them is the logic.\n"
    );
    w.push_str(&super::targets::stages_table(rows));
    w.push('\n');

    let engines = super::targets::engines_table(rows);
    if !engines.is_empty() {
        let _ = writeln!(w, "## wasm and native\n");
        let _ = writeln!(
            w,
            "The same configuration on both engines: `dist/ctxgate.wasm` on Envoy's V8 \
             runtime and `dist/libctxgate.so` as an Envoy dynamic module. Medians of this \
             run; overhead over bare Envoy.\n"
        );
        w.push_str(&engines);
        w.push('\n');
    }

    let mcp = mcp_table(rows);
    if !mcp.is_empty() {
        let _ = writeln!(w, "## MCP tools/call\n");
        let _ = writeln!(
            w,
            "One MCP `tools/call` (`POST /mcp`, JSON-RPC, the same body and token on every \
             request) authorised by Envoy's native filters and by the pipeline, against the \
             same call through Envoy with no filter. The MCP rows share a stand-in MCP \
             server (see `{MCP_BARE}` below), so *added* is what the filters add to a call: \
             a row's median minus `{MCP_BARE}`'s. Latencies are at {} open connections, so \
             they include queueing. Every authorising row is probed before every run with \
             calls it must refuse (see their descriptions below).\n",
            connections(&meta.wrk_params)
        );
        w.push_str(&mcp);
        w.push('\n');
    }

    let _ = writeln!(w, "## How to read this\n");
    let _ = writeln!(
        w,
        "Every scenario is its own Envoy (same binary, same worker count) whose only route \
         answers `200 ok` itself (`direct_response`, no upstream), so the numbers are the cost \
         of the filters alone; the MCP rows, which need an upstream, are the exception (see \
         their descriptions). Every other request is `GET /v1/contexts/projects/bench`. Tokens are \
         ES256, signed with the demo key, and carry `context_scopes: [\"read:projects/*\"]`; \
         every verifier is configured with the same single public key, issuer and audience. \
         Token rows other than the \"fresh token\" ones send **one token, reused on every \
         request**, which is what caches are for: they show the steady state of a client \
         that keeps its token, not the cost of verifying a signature.\n"
    );
    for row in rows {
        let _ = writeln!(
            w,
            "- **{}** ({}): {}",
            row.scenario.name,
            row.scenario.load.describe(),
            row.scenario.about
        );
    }
    let _ = writeln!(
        w,
        "\nColumns: *req/s* is wrk's `Requests/sec`, the median over rounds, and *range* its \
         lowest and highest round; *p50* and *p99* are the medians over rounds of wrk's \
         latency percentiles (at {} open connections, so they include queueing); *vs bare* is \
         median req/s divided by bare's median req/s. *Envoy CPU/req* is Envoy's CPU time \
         (all threads, from `/proc/<pid>/stat`) during the measured run divided by the \
         responses it counted: the per-request cost of the filters, and less sensitive to the \
         client and to noise than req/s, since wrk and Envoy share the same {} cores.\n",
        connections(&meta.wrk_params),
        meta.cpus
    );
    let _ = writeln!(
        w,
        "Every run is checked: a probe request before it must get 200 (and 401 without a \
         token where the filter requires one, and 403 for the calls an MCP row must \
         refuse), and more than 0.1% non-2xx responses \
         (Envoy's `http.ingress.downstream_rq_<N>xx` counters) fails the benchmark. \
         Fresh-token pools: {} tokens for the warm-up and {} for the measured run, one new \
         token per request, never repeated unless noted above.\n",
        meta.pool_sizes.0, meta.pool_sizes.1
    );

    let _ = writeln!(w, "## Noise\n");
    let _ = writeln!(w, "{}\n", noise_verdict(rows));
    let _ = writeln!(
        w,
        "Per round, requests/s and (in parentheses) the CPU that neither Envoy, wrk nor the \
         benchmark used during the measured run, in cores: other processes on the machine.\n"
    );
    let rounds = rows.iter().map(|r| r.runs.len()).max().unwrap_or(0);
    let _ = write!(w, "| scenario |");
    for round in 1..=rounds {
        let _ = write!(w, " round {round} |");
    }
    let _ = write!(w, " spread |\n|---|");
    for _ in 0..=rounds {
        let _ = write!(w, "---:|");
    }
    let _ = writeln!(w);
    for row in rows {
        let _ = write!(w, "| {} |", row.scenario.name);
        for run in &row.runs {
            let _ = write!(
                w,
                " {:.0} ({:.2}) |",
                run.wrk.requests_per_sec, run.cpu.other_cores
            );
        }
        let _ = writeln!(w, " {:.0}% |", row.spread() * 100.0);
    }
    md
}

/// One paragraph saying whether the run was noisy, and why.
pub fn noise_verdict(rows: &[Row]) -> String {
    let runs: Vec<&RunResult> = rows.iter().flat_map(|r| &r.runs).collect();
    let other: Vec<f64> = runs.iter().map(|r| r.cpu.other_cores).collect();
    let steal: Vec<f64> = runs.iter().map(|r| r.cpu.steal_cores).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / (v.len().max(1) as f64);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let worst = rows.iter().max_by(|a, b| a.spread().total_cmp(&b.spread()));
    let worst_spread = worst.map_or(0.0, Row::spread);
    let noisy = worst_spread > NOISY_SPREAD || mean(&other) > NOISY_OTHER_CORES;
    format!(
        "**{}.** Other processes used {:.2} cores on average during the measured runs (at \
         most {:.2}); CPU steal averaged {:.2} cores. The widest spread of requests/s over \
         rounds was {:.0}% ({}).{}",
        if noisy { "Noisy run" } else { "Quiet run" },
        mean(&other),
        max(&other),
        mean(&steal),
        worst_spread * 100.0,
        worst.map_or("–", |r| r.scenario.name),
        if noisy {
            " Medians damp single disturbed rounds, but treat differences of less than \
             about 10% between rows as noise; Envoy CPU/req is the steadier column."
        } else {
            ""
        }
    )
}

fn connections(wrk_params: &str) -> String {
    wrk_params
        .split_whitespace()
        .find_map(|p| p.strip_prefix("-c"))
        .unwrap_or("?")
        .to_owned()
}

/// `2025-01-31 14:05 UTC`, without a date crate (Howard Hinnant's
/// days-to-civil algorithm).
pub fn utc_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn dates_are_civil_utc() {
        let at = |secs| utc_date(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(at(1_735_689_599), "2024-12-31 23:59 UTC");
    }
}
