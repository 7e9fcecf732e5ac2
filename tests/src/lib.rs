//! End-to-end test harness for ctxgate: runs a real Envoy (1.40, V8 wasm
//! runtime) with the wasm modules from `dist/`, talks to it over raw HTTP/1.1,
//! and plays the upstreams and JWKS endpoints it needs. For MCP it runs
//! real peers instead ([`mcp`]): the demo MCP server and a client, both on
//! the official Python SDK.
//!
//! Unit tests of the filter logic live next to the code in `filters/`; this
//! crate answers the questions only a real Envoy can: does the module load,
//! does Envoy reject a bad configuration, what does a client see on the wire,
//! which metrics does an operator get.
//!
//! Every piece is built to run in parallel test threads on a small machine:
//! each [`Envoy`] gets its own temp dir, ports chosen by the kernel (port 0)
//! and a dynamic base id, and it is killed when dropped, also when the test
//! panics (and, failing that, when the test process dies).
//!
//! ```no_run
//! use ctxgate_e2e::*;
//!
//! let upstream = ScriptedServer::start();
//! let envoy = Envoy::start(
//!     &EnvoyConfig::new()
//!         .filter(WasmFilter::new("ctxgate_auth").config(serde_json::json!({})))
//!         .route(Route::prefix("/").cluster("upstream"))
//!         .cluster(Cluster::new("upstream", [upstream.addr()])),
//! );
//! let resp = Request::get("/hello").send(envoy.listener_addr());
//! assert_eq!(resp.status, 200);
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod compose;
pub mod config;
pub mod demo;
pub mod demo_idp;
pub mod docker;
pub mod engine;
pub mod envoy;
pub mod fleet;
pub mod http;
pub mod images;
pub mod mcp;
pub mod oci;
pub mod otlp;
pub mod reference;
pub mod rls;
pub mod servers;
pub mod stats;
pub mod tls;
pub mod yaml;

pub use config::{
    Cluster, EnvoyConfig, HeaderMatch, HttpFilter, PathMatch, RawFilter, Route, RouteAction,
    RouteBuilder, WasmFilter, WasmService,
};
pub use engine::{
    FilterEngine, filter_log_prefix, filter_rejected, metric_prefix, prometheus_prefix,
    skip_on_native,
};
pub use envoy::{Envoy, envoy_binary, process_alive};
pub use http::{Client, Request, Response, send_raw};
pub use mcp::{McpClient, McpOutput, McpRequest, McpServer, Sessions};
pub use otlp::OtlpReceiver;
pub use rls::{Redis, Rls, SlowRls, free_port, rls_binary};
pub use servers::{RecordedRequest, ScriptedResponse, ScriptedServer};
pub use tls::{CertFiles, TestPki, TlsClient};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root: the parent of this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("tests/ crate has a parent directory")
        .to_path_buf()
}

/// `$var` if set and not empty, else `<repo>/default`: where the harness
/// finds what it runs (modules, binaries), overridable from outside.
fn path_from_env(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => repo_root().join(default),
    }
}

/// Where built filter modules live: `$CTXGATE_DIST`, else `<repo>/dist`.
pub fn dist_dir() -> PathBuf {
    path_from_env("CTXGATE_DIST", "dist")
}

/// Path of a built filter module, e.g. `wasm_module("ctxgate_auth")` is
/// `dist/ctxgate_auth.wasm`.
///
/// Panics if the file is missing: e2e tests run against what `make build`
/// produced, never against a stale module somewhere in `target/`.
pub fn wasm_module(name: &str) -> PathBuf {
    let path = dist_dir().join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "wasm module {} not found: run `make build` first \
         (or point CTXGATE_DIST at a directory holding {name}.wasm)",
        path.display()
    );
    path
}

/// Sleeps until `at` (at once if it has passed).
pub fn sleep_until(at: Instant) {
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// The next minute boundary of the Unix clock at least `margin` from now:
/// where a window of an RLS's epoch-aligned per-minute limits starts.
pub fn next_minute(margin: Duration) -> std::time::SystemTime {
    use std::time::{SystemTime, UNIX_EPOCH};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let next = (now + margin).as_secs().div_ceil(60) * 60;
    UNIX_EPOCH + Duration::from_secs(next)
}

/// Waits for the next minute when the current one ends within `margin`:
/// an RLS's per-minute windows are aligned to the Unix clock, and a case
/// that counts on one window must not straddle two.
pub fn fresh_minute(margin: Duration) {
    let left = next_minute(Duration::ZERO)
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if left <= margin {
        std::thread::sleep(left + Duration::from_millis(100));
    }
}

/// `promtool SUBCOMMAND FILE` (`check rules`, `test rules`): its report
/// (stdout and stderr), as `Ok` if it succeeded. promtool comes with
/// Debian's `prometheus` package, which `scripts/bootstrap` installs.
pub fn promtool(subcommand: &[&str], file: &std::path::Path) -> Result<String, String> {
    let out = std::process::Command::new("promtool")
        .args(subcommand)
        .arg(file)
        .output()
        .expect("promtool (Debian package prometheus, installed by scripts/bootstrap)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns
/// whether it held. For effects that land shortly after a response, such as
/// stats incremented when a stream is destroyed or log lines being flushed.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
