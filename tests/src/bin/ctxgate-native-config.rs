//! `ENGINE=native make run`: an Envoy bootstrap moved to the native engine
//! (`ctxgate_e2e::demo::on_native`), written as JSON (which Envoy reads
//! as YAML).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Write an Envoy bootstrap that runs ctxgate as a dynamic module")]
struct Args {
    /// The bootstrap running dist/ctxgate.wasm.
    #[arg(long, default_value = "envoy/demo.yaml")]
    config: PathBuf,
    /// Where to write the native bootstrap.
    #[arg(long, default_value = "dist/demo-native.json")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read {}", args.config.display()))?;
    let bootstrap = ctxgate_e2e::yaml::documents(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?
        .into_iter()
        .next()
        .context("an empty configuration")?;
    let native = ctxgate_e2e::demo::on_native(&bootstrap);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&native)?)
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
