//! `make oci`: the OCI image of `dist/ctxgate.wasm` that Istio's WasmPlugin
//! pulls, built without a container engine (see `ctxgate_e2e::oci`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Build the OCI image (Istio's compat Wasm variant) of the ctxgate module")]
struct Args {
    /// The Wasm module.
    #[arg(long, default_value = "dist/ctxgate.wasm")]
    wasm: PathBuf,
    /// The image's name and tag.
    #[arg(long, default_value = concat!("ghcr.io/ctxgate/ctxgate:", env!("CARGO_PKG_VERSION")))]
    reference: String,
    /// Where to write the layout (`<out>/layout`) and its tar
    /// (`<out>/ctxgate-oci.tar`).
    #[arg(long, default_value = "dist/oci")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let module =
        std::fs::read(&args.wasm).with_context(|| format!("read {}", args.wasm.display()))?;
    let image = ctxgate_e2e::oci::build(&module, &args.reference, &args.out)?;
    println!("{}", args.reference);
    println!("  layout    {}", image.layout.display());
    println!(
        "  archive   {} (docker load -i, skopeo copy oci-archive:)",
        image.archive.display()
    );
    println!("  manifest  {}", image.manifest_digest);
    println!("  layer     {} (plugin.wasm)", image.layer_digest);
    println!("  config    {}", image.config_digest);
    Ok(())
}
