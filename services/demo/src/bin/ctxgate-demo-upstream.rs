//! Echo upstream for the ctxgate demo. See `ctxgate_demo::upstream` for the
//! response format and the `x-demo-status` / `x-demo-delay-ms` controls.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;

/// HTTP/1.1 + h2c echo server: answers every request with a JSON description
/// of it.
#[derive(Parser, Debug)]
#[command(name = "ctxgate-demo-upstream", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// Name reported in the `upstream` field and the `x-upstream` header.
    #[arg(long, default_value = "demo")]
    name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctxgate-demo-upstream: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
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
        println!(
            "ctxgate-demo-upstream: {} listening on http://{addr} (HTTP/1.1 and h2c)",
            args.name
        );
        tokio::select! {
            () = ctxgate_demo::serve(listener, args.name) => {}
            res = shutdown_signal() => res?,
        }
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot handle Ctrl-C")
    }
}
