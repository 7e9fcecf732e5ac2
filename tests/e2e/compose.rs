//! The docker-compose stack (`deploy/compose/docker-compose.yaml`), run for
//! real: the same compose file users run, with its image parameters pointed
//! at images built here `FROM scratch` (nothing can be pulled): Envoy from
//! the PyPI wheel the other suites run, Debian's redis-server, and the
//! services image `make compose` builds. The Envoy configuration is the one
//! `make compose` generates from `envoy/demo.yaml`.
//!
//! The engine is the one that answers, or a private dockerd started for
//! this test ([`ctxgate_e2e::docker`]); the stack runs on the network
//! Compose creates for its project, and `down -v` must leave no container,
//! network or volume of it behind.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ctxgate_demo::keys::DemoKeys;
use ctxgate_demo::mint::{self, MintOptions};
use ctxgate_e2e::docker::{self, Engine};
use ctxgate_e2e::{Request, Response, compose, eventually, free_port, images, repo_root};
use serde_json::{Value, json};

/// A compose project of the stack, brought down (`down -v`) when dropped.
struct Stack {
    engine: Arc<Engine>,
    project: String,
    env: Vec<(&'static str, String)>,
    listener: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    keys: DemoKeys,
    images: Vec<String>,
}

impl Stack {
    fn up() -> Stack {
        let engine = docker::engine();
        let root = repo_root();
        let tag = std::process::id();
        let services_image = format!("ctxgate-test/services:{tag}");
        let envoy_image = format!("ctxgate-test/envoy:{tag}");
        let redis_image = format!("ctxgate-test/redis:{tag}");
        images::services(&engine, &root.join("target/release"), &services_image).unwrap();
        images::envoy(&engine, &images::envoy_executable().unwrap(), &envoy_image).unwrap();
        images::redis(&engine, &images::redis_dir().unwrap(), &redis_image).unwrap();

        let dir = tempfile::Builder::new()
            .prefix("ctxgate-compose-")
            .tempdir()
            .unwrap();
        let keys = DemoKeys::load_or_generate(&dir.path().join("keys")).unwrap();
        let envoy_config = dir.path().join("envoy.json");
        compose::write_envoy_config(&root, &envoy_config).unwrap();
        // Mounted into containers whose users are not ours.
        for file in [&envoy_config, &keys.jwks_path()] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }

        let listener = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let path = |p: &Path| p.display().to_string();
        let stack = Stack {
            project: format!("ctxgate-e2e-{tag}"),
            env: vec![
                ("ENVOY_IMAGE", envoy_image.clone()),
                ("REDIS_IMAGE", redis_image.clone()),
                ("CTXGATE_IMAGE", services_image.clone()),
                ("CTXGATE_ENVOY_CONFIG", path(&envoy_config)),
                ("CTXGATE_WASM", path(&ctxgate_e2e::wasm_module("ctxgate"))),
                ("CTXGATE_JWKS", path(&keys.jwks_path())),
                (
                    "CTXGATE_RATELIMIT",
                    path(&root.join("envoy/ratelimit.yaml")),
                ),
                ("CTXGATE_PORT", listener.port().to_string()),
                ("CTXGATE_ADMIN_PORT", admin.port().to_string()),
            ],
            engine,
            listener,
            admin,
            _dir: dir,
            keys,
            images: vec![services_image, envoy_image, redis_image],
        };
        stack.run(&["up", "--detach", "--no-build"]);
        // Ready: Envoy's listener is up and the auth stage has the keys
        // (it fetches them from that listener, the demo's IdP).
        let token = stack.token("acme", &["read:projects/*"]);
        let ready = eventually(Duration::from_secs(60), || {
            get(stack.admin, "/ready").is_some_and(|r| r.status == 200)
                && Request::get("/v1/contexts/projects/ready")
                    .bearer(&token)
                    .timeout(Duration::from_secs(5))
                    .try_send(stack.listener)
                    .is_ok_and(|r| r.status == 200)
        });
        assert!(ready, "the stack did not get ready:\n{}", stack.logs());
        stack
    }

    fn compose(&self) -> Command {
        let mut command = self.engine.compose(&self.project, &compose::compose_file());
        command.envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        self.engine.run(self.compose().args(args))
    }

    fn logs(&self) -> String {
        let out = self
            .compose()
            .args(["logs", "--no-color", "--tail", "40"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn token(&self, tenant: &str, scopes: &[&str]) -> String {
        mint::mint(
            &self.keys,
            &MintOptions {
                tenant: Some(tenant.to_owned()),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..MintOptions::default()
            },
        )
        .unwrap()
    }

    /// The gateway's Prometheus exposition, as `series -> value`.
    fn prometheus(&self) -> HashMap<String, f64> {
        let text = Request::get("/stats/prometheus").send(self.admin).text();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose logs:\n{}", self.logs());
        }
        let _ = self
            .compose()
            .args(["down", "--volumes", "--remove-orphans"])
            .output();
        for image in &self.images {
            let _ = self
                .engine
                .docker()
                .args(["image", "rm", "--force", image])
                .output();
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<Response> {
    Request::get(path)
        .timeout(Duration::from_secs(5))
        .try_send(addr)
        .ok()
}

fn echoed(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

/// Label pairs a series must carry.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// Sum of the series of `metric` whose labels include every `labels` pair.
fn sum(series: &HashMap<String, f64>, metric: &str, labels: Labels) -> f64 {
    series
        .iter()
        .filter(|(name, _)| {
            name.split_once('{').map_or(name.as_str(), |(n, _)| n) == metric
                && labels
                    .iter()
                    .all(|(k, v)| name.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value)
        .sum()
}

#[test]
fn the_demo_stack_serves_the_demo_flow_in_compose() {
    let stack = Stack::up();
    let addr = stack.listener;
    let reader = stack.token("acme", &["read:projects/*", "write:projects/engineering"]);

    // A minted token: 200, routed to a standard pool, with the identity
    // the gateway decided on.
    let ok = Request::get("/v1/contexts/projects/engineering/notes")
        .bearer(&reader)
        .send(addr);
    assert_eq!(ok.status, 200, "{}", ok.text());
    let echo = echoed(&ok);
    let upstream = echo["upstream"].as_str().unwrap_or_default();
    assert!(
        upstream.starts_with("standard-"),
        "routed to {upstream}: {echo}"
    );
    assert_eq!(echo["headers"]["x-context-tenant"], json!("acme"), "{echo}");

    // A scope the token lacks: 403; no token: 401.
    let denied = Request::new("DELETE", "/v1/contexts/projects/engineering")
        .bearer(&reader)
        .send(addr);
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(
        Request::get("/v1/contexts/projects/engineering")
            .send(addr)
            .status,
        401
    );

    // Graph traversals cost 10 read-equivalents: a standard tenant's 600 a
    // minute run out within 61 of them. The global limit is counted by
    // ctxgate-rls in Redis.
    let traverser = stack.token("initech", &["read:projects/*"]);
    let statuses: Vec<u16> = (0..70)
        .map(|_| {
            Request::post("/v1/graph/traverse?context=projects/engineering")
                .bearer(&traverser)
                .send(addr)
                .status
        })
        .collect();
    let throttled = statuses.iter().position(|s| *s == 429);
    assert!(
        throttled.is_some_and(|i| (50..=61).contains(&i))
            && statuses.iter().all(|s| *s == 200 || *s == 429),
        "statuses: {statuses:?}"
    );

    // The repository's breaker: 20 requests at 100 % upstream errors open
    // it, then requests go to the cache pool (its fallback).
    let mut failed = 0;
    for _ in 0..20 {
        let response = Request::get("/v1/contexts/projects/engineering/roadmap")
            .bearer(&reader)
            .header("x-demo-status", "503")
            .send(addr);
        failed += u32::from(response.status == 503);
    }
    assert_eq!(failed, 20);
    let fallback = Request::get("/v1/contexts/projects/engineering/roadmap")
        .bearer(&reader)
        .send(addr);
    assert_eq!(fallback.status, 200, "{}", fallback.text());
    assert_eq!(
        echoed(&fallback)["upstream"],
        json!("cache"),
        "{}",
        fallback.text()
    );

    // What an operator sees, in /stats/prometheus (the module flushes its
    // counters to Envoy every second).
    let wanted: [(&str, Labels, f64); 4] = [
        ("ctxgate_requests", &[("decision", "allow")], 50.0),
        ("ctxgate_requests", &[("decision", "deny")], 2.0),
        ("ctxgate_requests", &[("decision", "throttle")], 1.0),
        (
            "ctxgate_breaker_opened",
            &[("breaker", "context_repository")],
            1.0,
        ),
    ];
    let mut missing = Vec::new();
    let seen = eventually(Duration::from_secs(10), || {
        let metrics = stack.prometheus();
        missing = wanted
            .iter()
            .filter(|(name, labels, least)| sum(&metrics, name, labels) < *least)
            .map(|(name, labels, least)| format!("{name}{labels:?} >= {least}"))
            .collect();
        missing.is_empty()
    });
    assert!(seen, "not in /stats/prometheus: {missing:?}");

    // The RLS counted in Redis: its counters are there.
    let keys = stack.run(&["exec", "-T", "redis", "redis-cli", "--scan"]);
    assert!(!keys.trim().is_empty(), "no counters in Redis");

    // The audit trail: every decision above, delivered and intact.
    let verified = eventually(Duration::from_secs(10), || {
        let out = stack
            .compose()
            .args([
                "exec",
                "-T",
                "audit",
                "ctxgate-audit",
                "verify",
                "/var/lib/ctxgate-audit/audit.jsonl",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && events(&text) >= 90
    });
    assert!(verified, "audit trail:\n{}", stack.logs());

    // Every container is on the project's own network, and only there.
    let ids = stack.run(&["ps", "--quiet"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 10, "containers: {ids:?}");
    for id in ids {
        let networks = stack.engine.docker_run(&[
            "inspect",
            "--format",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            id,
        ]);
        let own = format!("{}_default", stack.project);
        assert_eq!(
            networks.split_whitespace().collect::<Vec<_>>(),
            [own.as_str()],
            "{id}"
        );
    }

    let engine = Arc::clone(&stack.engine);
    let project = stack.project.clone();
    drop(stack);
    let left = engine.project_leftovers(&project);
    assert!(left.is_empty(), "left behind by `down --volumes`: {left:?}");
    // A private daemon stops with its last user: nothing of it stays.
    if let Some(pid) = engine.daemon_pid() {
        drop(engine);
        assert!(
            !ctxgate_e2e::process_alive(pid),
            "the private dockerd {pid} still runs"
        );
    }
}

/// The events count of `ctxgate-audit verify`'s `ok: ...` line.
fn events(verify: &str) -> u64 {
    let Some(line) = verify.lines().find(|l| l.starts_with("ok:")) else {
        return 0;
    };
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words
        .windows(2)
        .find(|w| w[1] == "events")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

/// The generated Envoy configuration names only services the compose file
/// runs, and every loopback endpoint of the demo is either one of them or
/// left local on purpose: no Docker needed to see the two drift apart.
#[test]
fn every_endpoint_of_the_generated_config_is_a_service_of_the_compose_file() {
    let root = repo_root();
    let services =
        compose::compose_services(&std::fs::read_to_string(compose::compose_file()).unwrap())
            .unwrap();
    let config =
        compose::envoy_config(&std::fs::read_to_string(root.join("envoy/demo.yaml")).unwrap())
            .unwrap();
    let mut named = Vec::new();
    for cluster in config["static_resources"]["clusters"].as_array().unwrap() {
        for locality in cluster["load_assignment"]["endpoints"].as_array().unwrap() {
            for endpoint in locality["lb_endpoints"].as_array().unwrap() {
                let address = &endpoint["endpoint"]["address"]["socket_address"];
                let host = address["address"].as_str().unwrap();
                if host != "127.0.0.1" {
                    assert_eq!(cluster["type"], "STRICT_DNS", "{}", cluster["name"]);
                    named.push(host.to_owned());
                }
            }
        }
    }
    let missing: Vec<&String> = named.iter().filter(|h| !services.contains(*h)).collect();
    assert!(
        missing.is_empty(),
        "not services of the compose file: {missing:?}"
    );
    // Every service the mapping knows is used by the demo.
    for (_, service) in compose::SERVICES {
        assert!(
            named.iter().any(|h| h == service),
            "{service} is named by no endpoint"
        );
    }
    assert_eq!(
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"],
        "0.0.0.0"
    );
}
