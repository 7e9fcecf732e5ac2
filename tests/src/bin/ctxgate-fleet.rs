//! `make fleet`: three gateways, one RLS and Redis in containers, one
//! tenant's load through every fault (see `ctxgate_e2e::fleet`), written to
//! `docs/fleet.md`. A benchmark, not a test: it reports the figures
//! against the targets, met or not, and fails only if it cannot run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use ctxgate_e2e::docker;
use ctxgate_e2e::fleet::{self, Bounds, Fault, Images, Plan};

#[derive(Parser)]
#[command(about = "Measure a fleet of three gateways under faults (docs/fleet.md)")]
struct Args {
    /// Where to write the report.
    #[arg(long, default_value = "docs/fleet.md")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let engine = docker::engine();
    let images = Images::build(&engine)?;
    let plan = Plan::full();
    let mut results = Vec::new();
    // One scenario per window: the numbers of one do not share the
    // machine's two cores with another's.
    for (index, fault) in Fault::ALL.into_iter().enumerate() {
        eprintln!("fleet: {} ...", fault.describe());
        let measured = fleet::run_together(&engine, &images, &[fault], plan, index)?;
        for m in measured {
            eprintln!("fleet: {}", m.line());
            results.push(m);
        }
    }
    let report = fleet::markdown(&results, plan, Bounds::targets());
    std::fs::write(&args.out, &report)?;
    print!("{report}");
    Ok(())
}
