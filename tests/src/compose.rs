//! The docker-compose stack (`deploy/compose/docker-compose.yaml`) and its
//! Envoy configuration, generated from `envoy/demo.yaml` so that `make run`
//! and the compose stack cannot drift apart.
//!
//! What differs between the two is where things are, nothing else:
//!
//! * Envoy listens on all of its container's addresses (the ports are
//!   published on 127.0.0.1 by the compose file), not on loopback.
//! * An endpoint on 127.0.0.1 whose port [`SERVICES`] names becomes that
//!   compose service (resolved by Compose's DNS: the cluster turns from
//!   `STATIC` to `STRICT_DNS`). Loopback endpoints of ports the stack
//!   leaves to the user keep their address ([`LOCAL_PORTS`]); any other
//!   port fails the generation, so a new demo service cannot be forgotten.
//!
//! Relative file names (`dist/ctxgate.wasm`, `.demo/keys/jwks.json`) stay
//! as they are: the compose file mounts those files at the same place under
//! Envoy's working directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::yaml;

/// The compose services the demo's loopback endpoints become, by port.
pub const SERVICES: [(u16, &str); 8] = [
    (8081, "standard-a"),
    (8082, "standard-b"),
    (8083, "standard-c"),
    (8084, "high-memory"),
    (8085, "fast-ssd"),
    (8086, "cache"),
    (8089, "rls"),
    (8091, "audit"),
];

/// Loopback endpoints the compose stack keeps: Envoy's own listener (the
/// demo IdP's JWKS route), and the MCP server (8090) and OpenTelemetry
/// collector (4318), which are not part of the stack.
pub const LOCAL_PORTS: [u16; 3] = [10000, 8090, 4318];

/// The compose file, relative to the repository root.
pub const COMPOSE_FILE: &str = "deploy/compose/docker-compose.yaml";

/// Where `make compose` writes the generated Envoy configuration, relative
/// to the repository root (the compose file's default `CTXGATE_ENVOY_CONFIG`).
pub const ENVOY_CONFIG: &str = "dist/compose/envoy.json";

pub fn compose_file() -> PathBuf {
    crate::repo_root().join(COMPOSE_FILE)
}

/// The compose stack's Envoy configuration, from the text of
/// `envoy/demo.yaml`.
pub fn envoy_config(demo_yaml: &str) -> Result<Value> {
    let mut documents =
        yaml::documents(demo_yaml).map_err(|e| anyhow::anyhow!("envoy/demo.yaml: {e}"))?;
    ensure!(
        documents.len() == 1,
        "envoy/demo.yaml: one document expected"
    );
    let mut config = documents.remove(0);

    let admin = config
        .pointer_mut("/admin/address/socket_address")
        .context("envoy/demo.yaml: no admin.address.socket_address")?;
    listen_on_all(admin)?;
    let listeners = config
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .context("envoy/demo.yaml: no static_resources.listeners")?;
    for listener in listeners {
        let address = listener
            .pointer_mut("/address/socket_address")
            .context("envoy/demo.yaml: a listener without address.socket_address")?;
        listen_on_all(address)?;
    }

    let clusters = config
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .context("envoy/demo.yaml: no static_resources.clusters")?;
    for cluster in clusters {
        let name = cluster["name"].as_str().unwrap_or("?").to_owned();
        let mut renamed = false;
        let endpoints = cluster
            .pointer_mut("/load_assignment/endpoints")
            .and_then(Value::as_array_mut)
            .with_context(|| format!("cluster {name}: no load_assignment.endpoints"))?;
        for locality in endpoints {
            let lb_endpoints = locality["lb_endpoints"]
                .as_array_mut()
                .with_context(|| format!("cluster {name}: no lb_endpoints"))?;
            for endpoint in lb_endpoints {
                let address = endpoint
                    .pointer_mut("/endpoint/address/socket_address")
                    .with_context(|| format!("cluster {name}: an endpoint without an address"))?;
                renamed |= to_service(address).with_context(|| format!("cluster {name}"))?;
            }
        }
        if renamed {
            cluster["type"] = json!("STRICT_DNS");
            cluster["dns_lookup_family"] = json!("V4_ONLY");
        }
    }
    Ok(config)
}

/// Writes the configuration generated from `<root>/envoy/demo.yaml` to
/// `out`, pretty-printed JSON (Envoy reads `.json`).
pub fn write_envoy_config(root: &Path, out: &Path) -> Result<()> {
    let demo =
        std::fs::read_to_string(root.join("envoy/demo.yaml")).context("read envoy/demo.yaml")?;
    let config = envoy_config(&demo)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(&config)?;
    text.push('\n');
    std::fs::write(out, text).with_context(|| format!("write {}", out.display()))
}

/// The services of the compose file, for checking that every service an
/// endpoint names exists there.
pub fn compose_services(compose_yaml: &str) -> Result<BTreeSet<String>> {
    let documents =
        yaml::documents(compose_yaml).map_err(|e| anyhow::anyhow!("the compose file: {e}"))?;
    let services = documents
        .first()
        .and_then(|d| d["services"].as_object())
        .context("the compose file has no services")?;
    Ok(services.keys().cloned().collect())
}

fn listen_on_all(address: &mut Value) -> Result<()> {
    ensure!(
        address["address"] == "127.0.0.1",
        "envoy/demo.yaml listens on {} (expected 127.0.0.1)",
        address["address"]
    );
    address["address"] = json!("0.0.0.0");
    Ok(())
}

/// Points a loopback endpoint at its compose service; whether it did.
fn to_service(address: &mut Value) -> Result<bool> {
    let port = address["port_value"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .context("an endpoint without a port_value")?;
    if address["address"] != "127.0.0.1" {
        bail!("endpoint {}:{port} is not on 127.0.0.1", address["address"]);
    }
    if let Some((_, service)) = SERVICES.iter().find(|(p, _)| *p == port) {
        address["address"] = json!(service);
        return Ok(true);
    }
    ensure!(
        LOCAL_PORTS.contains(&port),
        "endpoint 127.0.0.1:{port} is neither a compose service (SERVICES in \
         tests/src/compose.rs) nor left local (LOCAL_PORTS)"
    );
    Ok(false)
}
