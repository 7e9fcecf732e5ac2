//! `make compose`: prepares what `deploy/compose/docker-compose.yaml`
//! mounts and runs (see `ctxgate_e2e::compose`): the Envoy configuration
//! generated from `envoy/demo.yaml`, the demo keys, and the services image
//! built from the release binaries. With `--stand-ins`, also `FROM scratch`
//! stand-ins for the public Envoy and Redis images, for machines that
//! cannot pull (as the tests do).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use ctxgate_demo::keys::DemoKeys;
use ctxgate_e2e::docker::Engine;
use ctxgate_e2e::{compose, images, repo_root};

#[derive(Parser)]
#[command(about = "Prepare the docker-compose demo stack (deploy/compose)")]
struct Args {
    /// Where the release binaries of the services are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Tag of the services image (the compose file's CTXGATE_IMAGE).
    #[arg(long, default_value = images::SERVICES_IMAGE)]
    image: String,
    /// Also build local stand-ins for envoyproxy/envoy and redis from this
    /// machine's Envoy (.venv) and redis-server, tagged
    /// ctxgate-local/envoy:1.40.0 and ctxgate-local/redis:7.0.
    #[arg(long)]
    stand_ins: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = repo_root();
    let config = root.join(compose::ENVOY_CONFIG);
    compose::write_envoy_config(&root, &config)?;
    println!("envoy config   {}", config.display());

    let keys = DemoKeys::load_or_generate(&root.join(".demo/keys"))?;
    println!(
        "demo keys      {} (jwks.json mounted into Envoy)",
        keys.dir().display()
    );

    let engine = Engine::answering()
        .context("no container engine answers (docker info): start Docker, or set DOCKER_HOST")?;
    images::services(&engine, &root.join(&args.bin_dir), &args.image)?;
    println!("services image {}", args.image);
    if args.stand_ins {
        images::stand_ins(&engine)?;
        let (envoy, redis) = (images::STAND_IN_ENVOY, images::STAND_IN_REDIS);
        println!("stand-ins      {envoy}, {redis}; run the stack with");
        println!("               ENVOY_IMAGE={envoy} REDIS_IMAGE={redis}");
    }
    Ok(())
}
