//! `ctxgate-audit collect`: the demo collector; `ctxgate-audit verify
//! FILE`: checks a collector's file (exit 0 when intact, 1 naming the
//! first broken line otherwise, 2 when it cannot be read).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ctxgate_audit::{Collector, serve, verify_file};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(name = "ctxgate-audit", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Appends every batch POSTed to it to FILE, as one JSON line, once.
    Collect {
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks the chain and the sequence of every chain in FILE.
    Verify { file: PathBuf },
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Collect { listen, out } => match collect(&listen, out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ctxgate-audit: error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Verify { file } => match verify_file(&file) {
            Ok(Ok(summary)) => {
                println!(
                    "ok: {} chains, {} batches, {} records, {} events, {} events dropped \
                     (recorded in the chain)",
                    summary.chains,
                    summary.batches,
                    summary.records,
                    summary.events,
                    summary.dropped
                );
                ExitCode::SUCCESS
            }
            Ok(Err(broken)) => {
                println!("broken: {broken}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("ctxgate-audit: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn collect(listen: &str, out: PathBuf) -> Result<()> {
    let collector = Arc::new(Collector::open(&out)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!(
            "ctxgate-audit: collecting on http://{} into {}",
            listener.local_addr()?,
            out.display()
        );
        tokio::select! {
            () = serve(listener, collector) => {}
            res = tokio::signal::ctrl_c() => res?,
        }
        Ok(())
    })
}
