//! `ctxgate-rls`: Envoy's Rate Limit Service (gRPC) with envoyproxy/ratelimit's
//! YAML config. See the `ctxgate_rls` library docs for the semantics.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ctxgate_rls::config::Policy;
use ctxgate_rls::{Dedupe, Limits, StorageConfig};
use tokio::net::TcpListener;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Rate Limit Service for Envoy (envoy.service.ratelimit.v3) and ctxgate's
/// wasm rate-limit filter.
#[derive(Parser, Debug)]
#[command(name = "ctxgate-rls", version)]
struct Args {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: String,
    /// Limits: an envoyproxy/ratelimit YAML file (one domain), or a directory
    /// of them (every *.yaml / *.yml directly in it).
    #[arg(long)]
    config: PathBuf,
    /// Count in Redis (shared by every replica), e.g. redis://127.0.0.1:6379.
    /// Without it, counters live in this process.
    #[arg(long)]
    redis_url: Option<String>,
    /// Bound on each Redis round of a request, connecting included; past it
    /// the call fails with UNAVAILABLE.
    #[arg(long, default_value_t = 500)]
    redis_timeout_ms: u64,
    /// In-memory storage only: how many counters to keep (least recently used
    /// ones beyond this are forgotten).
    #[arg(long, default_value_t = 100_000)]
    max_counters: u64,
    /// How long an applied report id (x-ctxgate-report) is remembered, so
    /// that a retry of the same report adds nothing. Must exceed how long
    /// clients retry a report (ctxgate's filter: at most 300 s); a retry
    /// arriving later is counted again.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    dedupe_seconds: u64,
    /// In-memory storage only: how many chunks of report-id marks to keep
    /// (one chunk: 4096 consecutive ids of one reporter, about 600 bytes).
    /// Beyond it the least recently used are forgotten early, which can
    /// make a retry count twice (logged).
    #[arg(long, default_value_t = Dedupe::default().max_chunks)]
    dedupe_max_chunks: usize,
    /// Serve Prometheus metrics on this address (HTTP GET /metrics).
    ///
    /// E.g. 0.0.0.0:9090; plain HTTP/1.1, Prometheus text format 0.0.4.
    /// Without it, no metrics listener. Counters, from process start:
    ///   ctxgate_rls_requests_total{code="ok"|"over_limit"|"error"}
    ///       ShouldRateLimit calls by answer; error: any gRPC error status
    ///       (bad request, storage failure, deadline) or abandoned unanswered
    ///   ctxgate_rls_hits_total
    ///       hits added to counters (cost × limits matched)
    ///   ctxgate_rls_hits_refused_total
    ///       of those, hits of calls answered OVER_LIMIT
    ///   ctxgate_rls_reports_total{outcome="applied"|"duplicate"}
    ///       calls with an x-ctxgate-report id: applied, or already applied
    ///   ctxgate_rls_storage_errors_total
    ///       counter-storage (Redis) failures
    #[arg(long, value_name = "ADDR", verbatim_doc_comment)]
    metrics_listen: Option<String>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: Level,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = Targets::new()
        .with_default(Level::WARN.min(args.log_level))
        .with_target("ctxgate_rls", args.log_level);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .with(filter)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let limits = Limits::load(&args.config).context("invalid rate limit config")?;
    let storage = match &args.redis_url {
        Some(url) => StorageConfig::Redis {
            url: url.clone(),
            timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
        },
        None => StorageConfig::Memory {
            max_counters: args.max_counters,
        },
    };
    let dedupe = Dedupe {
        horizon: Duration::from_secs(args.dedupe_seconds),
        max_chunks: args.dedupe_max_chunks,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the listen address")?;
        let metrics_listener = match &args.metrics_listen {
            Some(metrics_addr) => Some(
                TcpListener::bind(metrics_addr)
                    .await
                    .with_context(|| format!("cannot listen on {metrics_addr} (--metrics-listen)"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .context("cannot read the metrics listen address")?;
        let summary = describe(&limits);
        let limiter = ctxgate_rls::rate_limiter(limits, &storage, dedupe).await?;
        let metrics_note = metrics_addr
            .map(|metrics_addr| format!(", metrics on http://{metrics_addr}/metrics"))
            .unwrap_or_default();
        tracing::info!(
            "ctxgate-rls listening on {addr} (gRPC envoy.service.ratelimit.v3 + grpc.health.v1){metrics_note}, storage {storage}, {dedupe}, {summary}"
        );
        let metrics_server = metrics_listener.map(|metrics_listener| {
            tokio::spawn(ctxgate_rls::serve_metrics(
                metrics_listener,
                Arc::clone(limiter.metrics()),
            ))
        });
        let served =
            ctxgate_rls::serve(listener, limiter, shutdown_signal(), Duration::from_secs(5)).await;
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        served?;
        tracing::info!("ctxgate-rls stopped");
        Ok(())
    })
}

/// `domains ctxgate (4 limits, 1 unlimited) from ctxgate.yaml, …`
fn describe(limits: &Limits) -> String {
    let domains: Vec<String> = limits
        .domains()
        .map(|domain| {
            let (mut limited, mut unlimited) = (0, 0);
            for rule in domain.rules() {
                match rule.policy {
                    Policy::Limit(_) => limited += 1,
                    Policy::Unlimited => unlimited += 1,
                }
            }
            let unlimited = if unlimited > 0 {
                format!(", {unlimited} unlimited")
            } else {
                String::new()
            };
            format!(
                "{} ({limited} limit{}{unlimited}) from {}",
                domain.name(),
                if limited == 1 { "" } else { "s" },
                domain.file().display()
            )
        })
        .collect();
    format!("domains {}", domains.join(", "))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: finishing in-flight calls");
}
