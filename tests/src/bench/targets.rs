//! What the pipeline is held to, computed from one run: overheads over
//! bare Envoy (Envoy CPU per request minus bare's, medians), the targets
//! of the pipeline, and what each stage adds over the wasm floor. The same
//! numbers go to `docs/benchmarks.md` and to the README's performance
//! section.

use std::fmt::Write as _;

use super::report::{Row, median};
use super::run::RunResult;
use super::scenarios::{
    AUTH_HOST_CALLS, AUTH_REPEATED, BARE, ENGINE_PAIRS, FOUR_PLUGINS, JWT_AUTHN_CACHE,
    JWT_AUTHN_CACHE_FRESH, JWT_AUTHN_LOCAL_RATELIMIT, NATIVE_AUTH_FRESH, NATIVE_PIPELINE,
    NATIVE_PIPELINE_AUDIT, PIPELINE, PIPELINE_AUDIT, PIPELINE_HOST_CALLS,
    PIPELINE_NO_REQUEST_METRICS, PIPELINE_TRACING, PIPELINE_TRACING_SAMPLED, WASM_FLOOR,
};

/// `pipeline`'s overhead is at most this share of the four plugins'.
const PIPELINE_TARGET: f64 = 1.0 / 3.0;
/// `pipeline + audit` costs at most this multiple of `pipeline` (Envoy
/// CPU per request, whole: the audit singleton's included).
const AUDIT_TARGET: f64 = 1.05;
/// `pipeline` (request metrics on) costs at most this multiple of the
/// same pipeline without them (Envoy CPU per request, whole).
const METRICS_TARGET: f64 = 1.05;
/// auth's overhead (repeated token) is at most this multiple of native
/// `jwt_authn` with its cache.
const AUTH_TARGET: f64 = 2.0;
/// The native engine's `native pipeline`: throughput at least this share
/// of bare Envoy's.
const NATIVE_THROUGHPUT_TARGET: f64 = 0.80;
/// ... and an overhead at most this multiple of native `jwt_authn` (cached)
/// and `local_ratelimit` together.
const NATIVE_OVERHEAD_TARGET: f64 = 1.5;
/// `native auth (fresh token)` costs at most this multiple of native
/// `jwt_authn` with its cache on fresh tokens (Envoy CPU per request).
const NATIVE_FRESH_TARGET: f64 = 1.5;

/// Rows of the per-stage table: a stage alone, in its own plugin.
const STAGES: [&str; 6] = [
    AUTH_REPEATED,
    "auth (public path)",
    "ratelimit (local)",
    "ratelimit (hierarchical RLS)",
    "tagging",
    "breaker",
];

/// Median Envoy CPU per request of a row, if the run has it.
fn cpu(rows: &[Row], name: &str) -> Option<f64> {
    let row = rows.iter().find(|r| r.scenario.name == name)?;
    let values: Vec<f64> = row
        .runs
        .iter()
        .map(RunResult::envoy_us_per_request)
        .collect();
    (!values.is_empty()).then(|| median(&values))
}

/// Median requests per second of a row.
fn throughput(rows: &[Row], name: &str) -> Option<f64> {
    let row = rows.iter().find(|r| r.scenario.name == name)?;
    let values: Vec<f64> = row.runs.iter().map(|r| r.wrk.requests_per_sec).collect();
    (!values.is_empty()).then(|| median(&values))
}

/// A row's CPU per request minus bare's.
fn overhead(rows: &[Row], name: &str) -> Option<f64> {
    Some(cpu(rows, name)? - cpu(rows, BARE)?)
}

/// One line per target: what was measured and whether it holds.
pub fn targets_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| target | measured (overhead over bare, Envoy CPU/req) | ratio | target | met |\n\
         |---|---|---:|---:|:---:|\n",
    );
    let mut line = |what: &str,
                    (a, a_name): (Option<f64>, &str),
                    (b, b_name): (Option<f64>, &str),
                    target: f64,
                    op: &str| {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => {
                let ratio = a / b;
                let met = ratio <= target;
                let _ = writeln!(
                    out,
                    "| {what} | `{a_name}` {a:.1} µs, `{b_name}` {b:.1} µs | {ratio:.2}{op} | ≤ {target:.2}{op} | {} |",
                    if met { "yes" } else { "**no**" }
                );
            }
            _ => {
                let _ = writeln!(out, "| {what} | not measured in this run | | | |");
            }
        }
    };
    line(
        "the pipeline costs at most a third of the four plugins",
        (overhead(rows, PIPELINE), PIPELINE),
        (overhead(rows, FOUR_PLUGINS), FOUR_PLUGINS),
        PIPELINE_TARGET,
        "",
    );
    line(
        "auth (repeated token) costs at most twice native `jwt_authn` with its cache",
        (overhead(rows, AUTH_REPEATED), AUTH_REPEATED),
        (overhead(rows, JWT_AUTHN_CACHE), JWT_AUTHN_CACHE),
        AUTH_TARGET,
        "×",
    );
    line(
        "the request metrics cost under 5% of the pipeline (Envoy CPU/req, not overhead)",
        (cpu(rows, PIPELINE), PIPELINE),
        (
            cpu(rows, PIPELINE_NO_REQUEST_METRICS),
            PIPELINE_NO_REQUEST_METRICS,
        ),
        METRICS_TARGET,
        "×",
    );
    line(
        "auditing costs at most 5% of the pipeline (Envoy CPU/req, not overhead)",
        (cpu(rows, PIPELINE_AUDIT), PIPELINE_AUDIT),
        (cpu(rows, PIPELINE), PIPELINE),
        AUDIT_TARGET,
        "×",
    );
    line(
        "native: auditing costs at most 5% of the native pipeline (Envoy CPU/req, not overhead)",
        (cpu(rows, NATIVE_PIPELINE_AUDIT), NATIVE_PIPELINE_AUDIT),
        (cpu(rows, NATIVE_PIPELINE), NATIVE_PIPELINE),
        AUDIT_TARGET,
        "×",
    );
    line(
        "native: `native pipeline` overhead at most 1.5× native `jwt_authn`+cache and \
         `local_ratelimit` together",
        (overhead(rows, NATIVE_PIPELINE), NATIVE_PIPELINE),
        (
            overhead(rows, JWT_AUTHN_LOCAL_RATELIMIT),
            JWT_AUTHN_LOCAL_RATELIMIT,
        ),
        NATIVE_OVERHEAD_TARGET,
        "×",
    );
    line(
        "native: a fresh ES256 token costs at most 1.5× native `jwt_authn`+cache on fresh \
         tokens (Envoy CPU/req, not overhead)",
        (cpu(rows, NATIVE_AUTH_FRESH), NATIVE_AUTH_FRESH),
        (cpu(rows, JWT_AUTHN_CACHE_FRESH), JWT_AUTHN_CACHE_FRESH),
        NATIVE_FRESH_TARGET,
        "×",
    );
    match (throughput(rows, NATIVE_PIPELINE), throughput(rows, BARE)) {
        (Some(a), Some(b)) if b > 0.0 => {
            let ratio = a / b;
            let _ = writeln!(
                out,
                "| native: `native pipeline` throughput at least 0.80× bare Envoy's \
                 | `{NATIVE_PIPELINE}` {a:.0} req/s, `{BARE}` {b:.0} req/s | {ratio:.2}× \
                 | ≥ {NATIVE_THROUGHPUT_TARGET:.2}× | {} |",
                if ratio >= NATIVE_THROUGHPUT_TARGET {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "| native throughput | not measured in this run | | | |"
            );
        }
    }
    // No target: what tracing costs, reported.
    for (row, what) in [
        (PIPELINE_TRACING, "every request traced"),
        (PIPELINE_TRACING_SAMPLED, "10% of requests traced"),
    ] {
        match (cpu(rows, row), cpu(rows, PIPELINE)) {
            (Some(a), Some(b)) if b > 0.0 => {
                let _ = writeln!(
                    out,
                    "| what tracing costs, {what} (reported, no target) \
                     | `{row}` {a:.1} µs, `{PIPELINE}` {b:.1} µs | {:.2}× | – | – |",
                    a / b
                );
            }
            _ => {
                let _ = writeln!(out, "| tracing, {what} | not measured in this run | | | |");
            }
        }
    }
    out
}

/// What each stage adds: over bare Envoy, and over the wasm floor (what
/// any Rust proxy-wasm filter costs before it does anything).
pub fn stages_table(rows: &[Row]) -> String {
    let floor = cpu(rows, WASM_FLOOR);
    let mut out = String::from(
        "| stage (alone, in its own plugin) | Envoy CPU/req | over bare | over the wasm floor |\n\
         |---|---:|---:|---:|\n",
    );
    let mut any = false;
    for name in STAGES.into_iter().chain([
        WASM_FLOOR,
        AUTH_HOST_CALLS,
        PIPELINE_HOST_CALLS,
        PIPELINE_NO_REQUEST_METRICS,
        PIPELINE,
        PIPELINE_TRACING,
        PIPELINE_TRACING_SAMPLED,
        PIPELINE_AUDIT,
        FOUR_PLUGINS,
    ]) {
        let (Some(total), Some(over_bare)) = (cpu(rows, name), overhead(rows, name)) else {
            continue;
        };
        any = true;
        let over_floor = floor.map_or("–".to_owned(), |f| format!("{:.1} µs", total - f));
        let _ = writeln!(
            out,
            "| {name} | {total:.1} µs | {over_bare:.1} µs | {over_floor} |"
        );
    }
    if any { out } else { String::new() }
}

/// The two engines side by side: each row that runs on both, its Envoy
/// CPU per request, overhead and throughput.
pub fn engines_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| work | wasm: CPU/req, overhead, req/s | native: CPU/req, overhead, req/s | \
         native overhead / wasm overhead |\n|---|---:|---:|---:|\n",
    );
    let mut any = false;
    for (wasm, native) in ENGINE_PAIRS {
        let cell = |name: &str| match (
            cpu(rows, name),
            overhead(rows, name),
            throughput(rows, name),
        ) {
            (Some(c), Some(o), Some(t)) => format!("{c:.1} µs, {o:.1} µs, {t:.0}"),
            _ => "not measured".to_owned(),
        };
        if cpu(rows, wasm).is_none() && cpu(rows, native).is_none() {
            continue;
        }
        any = true;
        let ratio = match (overhead(rows, native), overhead(rows, wasm)) {
            (Some(n), Some(w)) if w > 0.0 => format!("{:.2}", n / w),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| `{wasm}` | {} | {} | {ratio} |",
            cell(wasm),
            cell(native)
        );
    }
    if any { out } else { String::new() }
}

/// The README's performance numbers, between the markers of
/// [`README_BEGIN`] and [`README_END`].
pub fn readme_section(rows: &[Row], when: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Medians of the committed run ({when}, `make bench`; the whole report is \
         [docs/benchmarks.md](docs/benchmarks.md)). Overhead is Envoy's CPU per \
         request minus bare Envoy's.\n"
    );
    out.push_str(&targets_table(rows));
    out.push('\n');
    out.push_str(&stages_table(rows));
    let engines = engines_table(rows);
    if !engines.is_empty() {
        let _ = writeln!(
            out,
            "\nThe same work on both engines (`dist/ctxgate.wasm` on V8, \
             `dist/libctxgate.so` as a dynamic module):\n"
        );
        out.push_str(&engines);
    }
    let mcp = super::report::mcp_table(rows);
    if !mcp.is_empty() {
        let _ = writeln!(
            out,
            "\nAn MCP `tools/call` (`POST /mcp`) through the same Envoy to a stand-in \
             MCP server; *added* is over `mcp bare`, the same call with no filter:\n"
        );
        out.push_str(&mcp);
    }
    out
}

pub const README_BEGIN: &str = "<!-- BEGIN GENERATED: performance (make bench) -->";
pub const README_END: &str = "<!-- END GENERATED -->";

/// `readme` with the text between the performance markers replaced by
/// `section`; `None` if the markers are missing.
pub fn splice_readme(readme: &str, section: &str) -> Option<String> {
    let start = readme.find(README_BEGIN)? + README_BEGIN.len();
    let end = start + readme.get(start..)?.find(README_END)?;
    Some(format!(
        "{}\n\n{}\n{}",
        readme.get(..start)?,
        section.trim_end(),
        readme.get(end..)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_between_the_markers_is_replaced_and_nothing_else() {
        let readme = format!("a\n{README_BEGIN}\nold\n{README_END}\nb\n");
        let spliced = splice_readme(&readme, "new\n").unwrap();
        assert_eq!(
            spliced,
            format!("a\n{README_BEGIN}\n\nnew\n{README_END}\nb\n")
        );
        assert!(splice_readme("no markers", "x").is_none());
    }
}
