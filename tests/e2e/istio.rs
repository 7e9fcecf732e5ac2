//! The Istio manifests in `istio/`, checked the way a cluster and the ctxgate
//! module will read them, without a cluster:
//!
//! * every Istio object against the served version of its CRD in Istio's
//!   own bundle (the kinds istio/ uses, kept in the repository with their
//!   source and version: `istio/customresourcedefinitions.gen.yaml` beside
//!   this file, or `$CTXGATE_ISTIO_CRDS`): the JSON schema, strict about
//!   unknown fields as Kubernetes is, and the CRDs' CEL rules (see
//!   `istio/crd.rs`);
//! * Kubernetes built-ins (Deployment, Service, ConfigMap, ...): they parse
//!   and carry an apiVersion, a kind and valid metadata;
//! * the WasmPlugin's `pluginConfig` compiled by the module's own pipeline
//!   (`Worker::new`, on an in-memory host), as the plugin receives it from
//!   Istio, with its phase and its five stages;
//! * the references between files that a typo would break without any
//!   error from Kubernetes: Envoy cluster names, subsets, gateway, route
//!   names, matched header values, the MCP resource and its audience, the
//!   RLS limits;
//! * and broken copies of the real manifests, built in memory, to show that
//!   each of these checks fails when it should.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "istio/crd.rs"]
mod crd;
use ctxgate_e2e::demo;
#[path = "istio/manifests.rs"]
mod manifests;
use ctxgate_e2e::yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::LazyLock;

use crd::Crds;
use ctxgate_core::auth::config::{AuthConfig, JwksConfig};
use ctxgate_core::breaker::config::{BreakersConfig, OpenAction};
use ctxgate_core::config::{ConfigError, parse_json};
use ctxgate_core::mcp::Glob;
use ctxgate_core::mcp::config::McpConfig;
use ctxgate_core::mock::MockHost;
use ctxgate_core::pipeline::config::PipelineConfig;
use ctxgate_core::pipeline::{Seeds, Worker};
use ctxgate_core::ratelimit::config::{KeyPart, RateLimitConfig};
use ctxgate_core::tagging::config::TaggingConfig;
use manifests::{IstioCluster, Object, plugin_config_json, repo_root};
use serde_json::{Value, json};

/// The one WasmPlugin: the whole pipeline, dist/ctxgate.wasm.
const PLUGIN: &str = "ctxgate";

/// The pipeline's stages, in the order the module runs them; each is a
/// section of the plugin's configuration, and runs only if it is there.
const STAGES: [&str; 5] = ["auth", "mcp", "ratelimit", "tagging", "breaker"];

static CRDS: LazyLock<Crds> = LazyLock::new(|| {
    let path = std::env::var_os("CTXGATE_ISTIO_CRDS").map_or_else(
        || repo_root().join("tests/e2e/istio/customresourcedefinitions.gen.yaml"),
        PathBuf::from,
    );
    Crds::load(&path).unwrap_or_else(|e| panic!("{e}"))
});

static OBJECTS: LazyLock<Vec<Object>> = LazyLock::new(|| {
    let objects = manifests::load(&repo_root().join("istio")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!objects.is_empty(), "istio/ holds no manifest");
    objects
});

fn all(kind: &str) -> Vec<&'static Object> {
    OBJECTS.iter().filter(|o| o.kind() == kind).collect()
}

fn one(kind: &str, name: &str) -> &'static Object {
    let found: Vec<_> = all(kind).into_iter().filter(|o| o.name() == name).collect();
    match found.as_slice() {
        [o] => o,
        _ => panic!(
            "expected exactly one {kind} named {name} in istio/, found {}",
            found.len()
        ),
    }
}

fn plugin() -> &'static Object {
    one("WasmPlugin", PLUGIN)
}

/// A WasmPlugin's configuration as the module receives it (JSON text).
fn plugin_config(plugin: &Value) -> Vec<u8> {
    let config = &plugin["spec"]["pluginConfig"];
    assert!(config.is_object(), "the WasmPlugin has no pluginConfig");
    serde_json::to_vec(&plugin_config_json(config)).unwrap()
}

/// The name Istio gives a WasmPlugin in Envoy (`<namespace>.<name>`),
/// which the module reads as its plugin name: its shared data lives under
/// `ctxgate/<plugin name>`.
fn envoy_plugin_name(plugin: &Value) -> String {
    let metadata = &plugin["metadata"];
    format!(
        "{}.{}",
        metadata["namespace"].as_str().unwrap(),
        metadata["name"].as_str().unwrap()
    )
}

/// Compiles a WasmPlugin as the module does when the gateway configures
/// it: the whole configuration, every stage, on an in-memory host.
fn compile(plugin: &Value) -> Result<Worker, ConfigError> {
    let seeds = Seeds {
        secret: [1; 16],
        reporter: 1,
    };
    Worker::new(
        &plugin_config(plugin),
        &envoy_plugin_name(plugin),
        seeds,
        &mut MockHost::new(0),
    )
}

/// The configuration read by the pipeline's own types.
fn pipeline_config(plugin: &Value) -> PipelineConfig {
    parse_json(&plugin_config(plugin)).unwrap()
}

/// The stages a configuration runs, in the module's order.
fn stages(config: &PipelineConfig) -> Vec<&'static str> {
    let present = [
        config.auth.is_some(),
        config.mcp.is_some(),
        config.ratelimit.is_some(),
        config.tagging.is_some(),
        config.breaker.is_some(),
    ];
    STAGES
        .into_iter()
        .zip(present)
        .filter_map(|(stage, present)| present.then_some(stage))
        .collect()
}

fn auth_config() -> AuthConfig {
    pipeline_config(&plugin().value)
        .auth
        .expect("the plugin has an auth section")
}

fn mcp_config() -> McpConfig {
    pipeline_config(&plugin().value)
        .mcp
        .expect("the plugin has an mcp section")
}

fn ratelimit_config() -> RateLimitConfig {
    pipeline_config(&plugin().value)
        .ratelimit
        .expect("the plugin has a ratelimit section")
}

fn tagging_config() -> TaggingConfig {
    pipeline_config(&plugin().value)
        .tagging
        .expect("the plugin has a tagging section")
}

fn breakers_config() -> BreakersConfig {
    pipeline_config(&plugin().value)
        .breaker
        .expect("the plugin has a breaker section")
}

/// Every `http` entry of every VirtualService.
fn http_routes() -> Vec<(&'static Object, &'static Value)> {
    all("VirtualService")
        .into_iter()
        .flat_map(|vs| {
            vs.spec()["http"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |route| (vs, route))
        })
        .collect()
}

/// The Service behind `<name>.<namespace>.svc.cluster.local`, if istio/ has it.
fn service_for_host(host: &str) -> Option<&'static Object> {
    let (name, rest) = host.split_once('.')?;
    let namespace = rest.strip_suffix(".svc.cluster.local")?;
    all("Service")
        .into_iter()
        .find(|s| s.name() == name && s.namespace() == namespace)
}

/// Is an object exported (`exportTo`) to workloads of `namespace`?
fn visible_in(object: &Object, namespace: &str) -> bool {
    match object.spec()["exportTo"].as_array() {
        None => true,
        Some(to) => to.iter().any(|ns| {
            ns == "*" || ns == namespace || (ns == "." && object.namespace() == namespace)
        }),
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Can a tool named `name`, or (`prefix`) named starting with `name`, be
/// one the tool map accepts? A call of any other tool is refused by the mcp
/// stage, so a route for it is never taken.
fn tool_map_accepts(mcp: &McpConfig, name: &str, prefix: bool) -> bool {
    mcp.tools.iter().any(|rule| {
        if !prefix {
            return Glob::new(&rule.name).matches(name);
        }
        // The rule's literal start, up to its first wildcard.
        let literal: String = rule
            .name
            .chars()
            .take_while(|c| *c != '*' && *c != '?')
            .collect();
        if literal.len() == rule.name.len() {
            rule.name.starts_with(name)
        } else {
            literal.starts_with(name) || name.starts_with(&literal)
        }
    })
}

/// Is an `http` entry an MCP route: does one of its matches select an MCP
/// endpoint by its path (`uri: {exact: /mcp}`)?
fn is_mcp_route(mcp: &McpConfig, route: &Value) -> bool {
    route["match"].as_array().into_iter().flatten().any(|m| {
        m["uri"]["exact"]
            .as_str()
            .is_some_and(|u| mcp.is_endpoint(u))
    })
}

/// What is wrong with the MCP routes of a VirtualService's `http` list.
fn mcp_route_problems(routes: &[Value], mcp: &McpConfig, tool_header: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // The first route that takes any path: the context API's header routes
    // match MCP requests too (they carry context tags), so every MCP route
    // must come before it.
    let catch_all = routes.iter().position(|route| {
        route["match"]
            .as_array()
            .is_none_or(|ms| ms.iter().any(|m| m["uri"].is_null()))
    });
    let mut mcp_routes = 0;
    for (i, route) in routes.iter().enumerate() {
        let name = &route["name"];
        if is_mcp_route(mcp, route) {
            mcp_routes += 1;
            if catch_all.is_some_and(|c| c < i) {
                problems.push(format!(
                    "route {name} comes after route {}, which takes MCP requests first",
                    routes[catch_all.unwrap()]["name"]
                ));
            }
            // Responses may be SSE streams as long as the call.
            if !route["timeout"].is_null() {
                problems.push(format!(
                    "route {name} has a timeout: an MCP answer may stream for the whole call"
                ));
            }
        }
        for m in route["match"].as_array().into_iter().flatten() {
            let Some(condition) = m["headers"].get(tool_header) else {
                continue;
            };
            // The tag is only set on MCP endpoints.
            if !m["uri"]["exact"]
                .as_str()
                .is_some_and(|u| mcp.is_endpoint(u))
            {
                problems.push(format!(
                    "route {name} matches {tool_header} on a path that is no MCP endpoint"
                ));
            }
            let (value, prefix) = match (condition["exact"].as_str(), condition["prefix"].as_str())
            {
                (Some(exact), _) => (exact, false),
                (_, Some(prefix)) => (prefix, true),
                _ => {
                    problems.push(format!(
                        "route {name} matches {tool_header} other than by exact or prefix"
                    ));
                    continue;
                }
            };
            if !tool_map_accepts(mcp, value, prefix) {
                problems.push(format!(
                    "route {name} matches {tool_header}: {value}{}, a tool the mcp stage refuses",
                    if prefix { "*" } else { "" }
                ));
            }
        }
    }
    if mcp_routes == 0 {
        problems.push("no route for the MCP endpoints".into());
    }
    problems
}

/// What is wrong with the MCP resource of a plugin configuration: it must
/// be a token audience (RFC 8707: clients ask for tokens for it), its
/// authorization servers the token issuers, its path an MCP endpoint, and
/// its host one the VirtualServices serve.
fn mcp_resource_problems(config: &PipelineConfig, hosts: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let (Some(auth), Some(mcp)) = (&config.auth, &config.mcp) else {
        return vec!["no auth or no mcp section".into()];
    };
    let Some(metadata) = &mcp.resource_metadata else {
        return vec!["mcp.resource_metadata is not set".into()];
    };
    let resource = metadata.resource.as_str();
    if !auth
        .providers
        .iter()
        .any(|p| p.audiences.iter().any(|a| a == resource))
    {
        problems.push(format!(
            "the MCP resource {resource} is no provider's audience: tokens issued for it are refused"
        ));
    }
    for server in &metadata.authorization_servers {
        if !auth.providers.iter().any(|p| &p.issuer == server) {
            problems.push(format!(
                "authorization server {server} is no provider's issuer"
            ));
        }
    }
    let rest = resource.strip_prefix("https://").unwrap_or_else(|| {
        problems.push(format!("the MCP resource {resource} is not https"));
        ""
    });
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if !hosts.contains(&host) {
        problems.push(format!("no VirtualService serves {host}"));
    }
    if !mcp.is_endpoint(path) {
        problems.push(format!("{path} is not an MCP endpoint"));
    }
    problems
}

/// Every `host` of the VirtualServices.
fn virtual_service_hosts() -> Vec<&'static str> {
    all("VirtualService")
        .into_iter()
        .flat_map(|vs| strings(&vs.spec()["hosts"]))
        .collect()
}

/// The `mcp_method` and `mcp_tool` descriptor nodes of an RLS limits file
/// (envoyproxy/ratelimit format) that can never match what the plugin
/// sends: `[tenant, mcp_method, mcp_tool]`, mcp_tool only for tools/call
/// and only with a tool the mcp stage accepts.
fn rls_mcp_problems(limits: &Value, first_key: &str, mcp: &McpConfig) -> Vec<String> {
    fn walk(
        nodes: &Value,
        path: &mut Vec<(String, String)>,
        first_key: &str,
        mcp: &McpConfig,
        problems: &mut Vec<String>,
    ) {
        for node in nodes.as_array().into_iter().flatten() {
            let key = node["key"].as_str().unwrap_or_default().to_owned();
            let value = node["value"].as_str().unwrap_or_default().to_owned();
            let at = || {
                path.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain([format!("{key}={value}")])
                    .collect::<Vec<_>>()
                    .join(" -> ")
            };
            match key.as_str() {
                "mcp_method" => {
                    let under = path.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>();
                    if under != [first_key] {
                        problems.push(format!("{}: mcp_method not right under {first_key}", at()));
                    }
                    let free = mcp
                        .free_methods
                        .iter()
                        .any(|f| Glob::new(f).matches(&value));
                    if value.is_empty() || free {
                        problems.push(format!("{}: not a method the gateway prices", at()));
                    }
                }
                "mcp_tool" => {
                    let parent = path.last().map(|(k, v)| (k.as_str(), v.as_str()));
                    if parent != Some(("mcp_method", "tools/call")) {
                        problems.push(format!(
                            "{}: mcp_tool not under mcp_method=tools/call",
                            at()
                        ));
                    }
                    let (name, prefix) = match value.strip_suffix('*') {
                        Some(p) => (p, true),
                        None => (value.as_str(), false),
                    };
                    if value.is_empty() || !tool_map_accepts(mcp, name, prefix) {
                        problems.push(format!("{}: a tool the mcp stage refuses", at()));
                    }
                }
                _ => {}
            }
            path.push((key.clone(), value.clone()));
            walk(&node["descriptors"], path, first_key, mcp, problems);
            path.pop();
        }
    }
    let mut problems = Vec::new();
    walk(
        &limits["descriptors"],
        &mut Vec::new(),
        first_key,
        mcp,
        &mut problems,
    );
    problems
}

/// The limits files of the RLS ConfigMap, as JSON.
fn rls_limit_files() -> Vec<Value> {
    one("ConfigMap", "ctxgate-rls-limits").value["data"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|text| yaml::documents(text.as_str().unwrap()).unwrap())
        .collect()
}

fn first_key_part(ratelimit: &RateLimitConfig) -> &'static str {
    match ratelimit.key.first() {
        Some(KeyPart::Tenant) | None => "tenant",
        Some(KeyPart::Subject) => "subject",
        Some(KeyPart::Operation) => "operation",
        Some(KeyPart::Route) => "route",
    }
}

// ---------------------------------------------------------------------------
// The manifests as they are.

#[test]
fn every_istio_object_is_valid_against_its_crd() {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut cel_rules = 0;
    for object in OBJECTS.iter().filter(|o| o.is_istio()) {
        match CRDS.validate(&object.value) {
            Ok(checked) => {
                cel_rules += checked.cel_rules;
                *kinds.entry(object.kind()).or_default() += 1;
            }
            Err(errors) => failures.push(format!("{object}:\n    {}", errors.join("\n    "))),
        }
    }
    assert!(
        failures.is_empty(),
        "rejected by Istio's CRDs:\n{}",
        failures.join("\n")
    );
    for kind in [
        "WasmPlugin",
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Gateway",
        "AuthorizationPolicy",
        "Telemetry",
    ] {
        assert!(kinds.contains_key(kind), "istio/ has no {kind}");
    }
    eprintln!(
        "{} Istio objects valid against {} served CRD versions ({kinds:?}); {cel_rules} CEL rules held",
        kinds.values().sum::<usize>(),
        CRDS.versions()
    );
}

#[test]
fn kubernetes_objects_are_well_formed() {
    // Built-in kinds istio/ may use; a new one is added here deliberately.
    let builtins = [
        ("v1", "Namespace"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("policy/v1", "PodDisruptionBudget"),
    ];
    let meta = jsonschema::draft7::new(&crd::object_meta_schema()).unwrap();
    let namespaces: BTreeSet<&str> = all("Namespace").iter().map(|n| n.name()).collect();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for object in OBJECTS.iter() {
        let mut fail = |message: String| failures.push(format!("{object}: {message}"));
        if object.api_version().is_empty() || object.kind().is_empty() {
            fail("apiVersion and kind are required".into());
            continue;
        }
        for error in meta.iter_errors(&object.value["metadata"]) {
            fail(format!("metadata{}: {error}", error.instance_path()));
        }
        if object.is_istio() {
            if !CRDS.defines_group(object.group()) {
                fail(format!("no Istio CRD defines the group {}", object.group()));
            }
        } else if !builtins.contains(&(object.api_version(), object.kind())) {
            fail(format!(
                "{} {} is not a built-in kind this test knows",
                object.api_version(),
                object.kind()
            ));
        }
        if object.kind() == "Namespace" {
            continue;
        }
        // Explicit namespaces: `kubectl apply -f istio/` must not depend on
        // the current context's namespace.
        match object.namespace() {
            "istio-system" => {}
            ns if namespaces.contains(ns) => {}
            "" => fail("metadata.namespace is not set".into()),
            ns => fail(format!(
                "namespace {ns} is neither istio-system nor created in istio/"
            )),
        }
        if !seen.insert((object.kind(), object.namespace(), object.name())) {
            fail("defined twice".into());
        }
    }
    for deployment in all("Deployment") {
        let template = &deployment.spec()["template"];
        let labels = template["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let selector = deployment.spec()["selector"]["matchLabels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if selector.is_empty() || selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            failures.push(format!(
                "{deployment}: selector does not match the pod template's labels"
            ));
        }
        for container in template["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if container["image"].as_str().is_none_or(str::is_empty) {
                failures.push(format!("{deployment}: container without image"));
            }
        }
    }
    // Every Service selects pods of a Deployment, on ports they expose.
    for service in all("Service") {
        let selector = service.spec()["selector"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let backing = all("Deployment").into_iter().find(|d| {
            d.namespace() == service.namespace()
                && selector
                    .iter()
                    .all(|(k, v)| d.spec()["template"]["metadata"]["labels"][k] == *v)
        });
        let Some(deployment) = backing else {
            failures.push(format!(
                "{service}: no Deployment in istio/ has pods it selects"
            ));
            continue;
        };
        let container_ports: Vec<&Value> = deployment.spec()["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .collect();
        for port in service.spec()["ports"].as_array().into_iter().flatten() {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            let exposed = container_ports
                .iter()
                .any(|p| p["containerPort"] == *target || p["name"] == *target);
            if !exposed {
                failures.push(format!(
                    "{service}: targetPort {target} is not a port of {deployment}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn plugin_config_is_accepted_by_the_pipeline() {
    let plugin = plugin();
    if let Err(e) = compile(&plugin.value) {
        panic!("{plugin}: the module refuses its pluginConfig: {e}");
    }
    let spec = plugin.spec();
    // The image is tagged with the workspace version it is built from.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        spec["url"],
        format!("oci://ghcr.io/ctxgate/{PLUGIN}:{version}"),
        "{plugin}"
    );
    // The proxy-wasm root id, as in envoy/demo.yaml.
    assert_eq!(spec["pluginName"], PLUGIN, "{plugin}");
    // Routing trusts the headers this plugin owns: it may not be skipped.
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE", "{plugin}");
    assert_eq!(spec["type"], "HTTP", "{plugin}");
}

#[test]
fn the_plugin_runs_first_with_all_five_stages() {
    // The stages' order is the module's; what Istio orders is plugins. A
    // second WasmPlugin (one left over from the single-stage modules, say)
    // would run a stage twice, in a position Istio chooses by phase and
    // priority.
    let plugins: Vec<&str> = all("WasmPlugin").iter().map(|p| p.name()).collect();
    assert_eq!(plugins, [PLUGIN], "one WasmPlugin runs the whole pipeline");
    // Istio inserts AUTHN plugins before its own authn, authz and stats
    // filters: the token is verified and client-sent identity and routing
    // headers are replaced before any other filter sees the request.
    let plugin = plugin();
    assert_eq!(plugin.spec()["phase"], "AUTHN", "{plugin}");
    // A stage runs only if its section is there, and the module accepts a
    // configuration with any of them: without this, dropping a section
    // would silently leave the gateway without that stage.
    assert_eq!(stages(&pipeline_config(&plugin.value)), STAGES, "{plugin}");
}

#[test]
fn plugins_and_routes_are_on_the_same_gateway() {
    let gateways = all("Gateway");
    assert_eq!(gateways.len(), 1, "one Gateway for the context API");
    let gateway = gateways[0];
    let selector = &gateway.spec()["selector"];
    let plugin = plugin();
    // A WasmPlugin with a selector applies to workloads of its own
    // namespace (all namespaces from the root namespace, istio-system).
    assert_eq!(plugin.namespace(), gateway.namespace(), "{plugin}");
    assert_eq!(
        &plugin.spec()["selector"]["matchLabels"],
        selector,
        "{plugin}: not the Gateway's workload"
    );
    let served: Vec<&str> = gateway.spec()["servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| strings(&s["hosts"]))
        .collect();
    for vs in all("VirtualService") {
        let gateway_ref = format!("{}/{}", gateway.namespace(), gateway.name());
        assert_eq!(
            strings(&vs.spec()["gateways"]),
            [gateway_ref.as_str()],
            "{vs}"
        );
        for host in strings(&vs.spec()["hosts"]) {
            let bound = [
                format!("{}/{host}", vs.namespace()),
                format!("*/{host}"),
                host.to_owned(),
            ];
            assert!(
                served.iter().any(|s| bound.iter().any(|b| b == s)),
                "{vs}: the Gateway does not accept {host} from namespace {}",
                vs.namespace()
            );
        }
    }
}

#[test]
fn routes_use_subsets_their_destination_rules_define() {
    let mut used = BTreeSet::new();
    for (vs, route) in http_routes() {
        for destination in route["route"].as_array().unwrap() {
            let host = destination["destination"]["host"].as_str().unwrap();
            assert!(
                service_for_host(host).is_some() || host.ends_with(".svc.cluster.local"),
                "{vs}: destination {host} is not a cluster-local service name"
            );
            let Some(subset) = destination["destination"]["subset"].as_str() else {
                continue;
            };
            let defined = all("DestinationRule").into_iter().any(|dr| {
                dr.spec()["host"] == host
                    && visible_in(dr, "istio-system")
                    && dr.spec()["subsets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s["name"] == subset)
            });
            assert!(
                defined,
                "{vs}: no DestinationRule defines subset {subset} of {host}"
            );
            used.insert((host.to_owned(), subset.to_owned()));
        }
    }
    for dr in all("DestinationRule") {
        let host = dr.spec()["host"].as_str().unwrap();
        for subset in dr.spec()["subsets"].as_array().into_iter().flatten() {
            let name = subset["name"].as_str().unwrap();
            assert!(
                used.contains(&(host.to_owned(), name.to_owned())),
                "{dr}: subset {name} is routed to by no VirtualService"
            );
        }
    }
    // Breakers select by headers the tagging stage sets, and any route
    // they name exists (Envoy route name = http[].name).
    let tagging_headers: BTreeSet<String> = tagging_config().headers.0.into_values().collect();
    for breaker in breakers_config().breakers {
        for header in breaker
            .select
            .header
            .iter()
            .chain(breaker.select.any_header.iter().flatten())
        {
            assert!(
                tagging_headers.contains(&header.name),
                "breaker {} selects on {}, which the tagging stage does not set",
                breaker.name,
                header.name
            );
        }
    }
    let route_names: BTreeSet<&str> = http_routes()
        .iter()
        .filter_map(|(_, route)| route["name"].as_str())
        .collect();
    for breaker in breakers_config().breakers {
        for route in breaker.select.routes.iter().flatten() {
            assert!(
                route_names.contains(route.as_str()),
                "breaker {} selects route {route}, which no VirtualService names",
                breaker.name
            );
        }
        for cluster in breaker.select.clusters.iter().flatten() {
            IstioCluster::parse(cluster).unwrap();
        }
    }
}

#[test]
fn routing_matches_only_headers_the_plugins_set() {
    // Header -> the stage that sets it and the values it can give it
    // (None: any value, e.g. a tenant id from a verified token).
    let mut owned: BTreeMap<String, (&str, Option<BTreeSet<String>>)> = BTreeMap::new();
    for header in auth_config().identity_headers.all() {
        owned.insert(header.to_owned(), ("the auth stage", None));
    }
    let tagging = tagging_config();
    for (tag, header) in &tagging.headers.0 {
        // tenant and context_id come from the identity and the operation,
        // mcp_method and mcp_tool from the call the request declares (the
        // tools a route may name are checked against the mcp stage's map
        // in mcp_routes_come_first_and_name_tools_of_the_map).
        let free = ["tenant", "context_id", "mcp_method", "mcp_tool"].contains(&tag.as_str())
            || tagging.from_claims.contains_key(tag);
        let values = (!free).then(|| {
            let mut values: BTreeSet<String> = tagging
                .rules
                .iter()
                .filter_map(|r| r.set.get(tag).cloned())
                .chain(tagging.tenants.values().filter_map(|t| t.get(tag).cloned()))
                .chain(tagging.defaults.get(tag).cloned())
                .collect();
            if tag == "variant" {
                values.extend(
                    tagging
                        .variant
                        .iter()
                        .flat_map(|v| v.variants.iter().map(|w| w.name.clone())),
                );
            }
            values
        });
        // A header both stages set (x-context-tenant) keeps the wider set.
        owned
            .entry(header.clone())
            .or_insert(("the tagging stage", values));
    }
    for breaker in breakers_config().breakers {
        if let OpenAction::Fallback {
            request_header,
            request_value,
            ..
        } = breaker.on_open
        {
            let entry = owned
                .entry(request_header)
                .or_insert(("the breaker stage", Some(BTreeSet::new())));
            if let Some(values) = &mut entry.1 {
                values.insert(request_value);
            }
        }
    }
    let mut matched = 0;
    for (vs, route) in http_routes() {
        for rule in route["match"].as_array().into_iter().flatten() {
            for (header, condition) in rule["headers"].as_object().into_iter().flatten() {
                let Some((stage, values)) = owned.get(header) else {
                    panic!(
                        "{vs}: route {} matches {header}, which no ctxgate stage sets: a client could choose it",
                        route["name"]
                    );
                };
                matched += 1;
                let (Some(values), Some(exact)) = (values, condition["exact"].as_str()) else {
                    continue;
                };
                assert!(
                    values.contains(exact),
                    "{vs}: route {} matches {header}: {exact}, but {stage} only sets {values:?}",
                    route["name"]
                );
            }
        }
    }
    assert!(matched >= 4, "the routes match on the plugin's headers");
    // Consistent hashing keys on a header the gateway sets, too; or, for
    // a host only MCP routes reach, on the MCP session id, which the mcp
    // stage refuses unless the server issued it to this caller (so a client
    // cannot pick a pod with another's session).
    let mcp = mcp_config();
    for dr in all("DestinationRule") {
        let hash = &dr.spec()["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpHeaderName"];
        let Some(header) = hash.as_str() else {
            continue;
        };
        let routes_to_host: Vec<&Value> = http_routes()
            .into_iter()
            .filter(|(_, r)| {
                r["route"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|d| d["destination"]["host"] == dr.spec()["host"])
            })
            .map(|(_, r)| r)
            .collect();
        let mcp_only =
            !routes_to_host.is_empty() && routes_to_host.iter().all(|r| is_mcp_route(&mcp, r));
        assert!(
            owned.contains_key(header) || (header == "mcp-session-id" && mcp_only),
            "{dr}: hashes on {header}, which no ctxgate stage sets or checks"
        );
    }
    // A fallback breaker has a route to fall back to.
    for breaker in breakers_config().breakers {
        if let OpenAction::Fallback {
            request_header,
            request_value,
            ..
        } = &breaker.on_open
        {
            let routed = http_routes().iter().any(|(_, route)| {
                route["match"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["headers"][request_header]["exact"] == *request_value)
            });
            assert!(
                routed,
                "breaker {} falls back with {request_header}: {request_value}, which no route matches",
                breaker.name
            );
        }
    }
}

#[test]
fn plugin_clusters_are_services_of_the_mesh() {
    // The auth stage: the JWKS cluster is a ServiceEntry port the gateway
    // sees, spoken to in plain HTTP with TLS originated by a DestinationRule.
    let auth = auth_config();
    for provider in &auth.providers {
        let JwksConfig::Remote(remote) = &provider.jwks else {
            continue;
        };
        let cluster = IstioCluster::parse(&remote.cluster).unwrap();
        assert_eq!(cluster.subset, "", "provider {}", provider.name);
        let entry = all("ServiceEntry")
            .into_iter()
            .find(|se| {
                strings(&se.spec()["hosts"]).contains(&cluster.host.as_str())
                    && visible_in(se, "istio-system")
            })
            .unwrap_or_else(|| {
                panic!(
                    "no ServiceEntry visible to istio-system has host {}",
                    cluster.host
                )
            });
        let port = entry.spec()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["number"] == cluster.port)
            .unwrap_or_else(|| panic!("{entry}: no port {}", cluster.port));
        assert_eq!(
            port["protocol"], "HTTP",
            "{entry}: the module sends plain HTTP; TLS must be originated by Envoy"
        );
        let tls = all("DestinationRule")
            .into_iter()
            .find(|dr| dr.spec()["host"] == cluster.host.as_str() && visible_in(dr, "istio-system"))
            .map(|dr| &dr.spec()["trafficPolicy"]["tls"])
            .unwrap_or_else(|| panic!("no DestinationRule originates TLS to {}", cluster.host));
        assert_eq!(tls["mode"], "SIMPLE");
        assert_eq!(tls["sni"], cluster.host.as_str());
        assert_eq!(
            remote.authority.as_deref(),
            Some(cluster.host.as_str()),
            "the Host header of the JWKS fetch"
        );
        assert!(
            provider.issuer.contains(&cluster.host),
            "issuer {} is served elsewhere",
            provider.issuer
        );
    }

    // The ratelimit stage: the RLS cluster is a port of a Service istio/
    // defines, declared gRPC so Envoy speaks HTTP/2 to it.
    let global = ratelimit_config()
        .global
        .expect("the rate limiter has a global RLS");
    let cluster = IstioCluster::parse(&global.cluster).unwrap();
    let service = service_for_host(&cluster.host)
        .unwrap_or_else(|| panic!("no Service in istio/ for {}", cluster.host));
    let port = service.spec()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == cluster.port)
        .unwrap_or_else(|| panic!("{service}: no port {}", cluster.port));
    let grpc = port["appProtocol"] == "grpc"
        || port["name"]
            .as_str()
            .is_some_and(|n| n == "grpc" || n.starts_with("grpc-"));
    assert!(
        grpc,
        "{service}: port {} must be declared gRPC (HTTP/2)",
        cluster.port
    );
}

#[test]
fn rls_limits_load_in_ctxgate_rls() {
    let deployment = one("Deployment", "ctxgate-rls");
    let pod = &deployment.spec()["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    let arg = |flag: &str| {
        let i = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("ctxgate-rls without {flag}"));
        args[i + 1]
    };
    // The flags ctxgate-rls has (services/rls/src/bin/ctxgate-rls.rs).
    let listen_port: u16 = arg("--listen").rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(arg("--redis-url").starts_with("redis://"));
    assert_eq!(container["ports"][0]["containerPort"], listen_port);

    // The ConfigMap the --config directory is mounted from.
    let config_dir = arg("--config").trim_end_matches('/');
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str().unwrap().trim_end_matches('/') == config_dir)
        .unwrap_or_else(|| panic!("nothing is mounted at --config {config_dir}"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let config_map = one("ConfigMap", volume["configMap"]["name"].as_str().unwrap());

    // Lay the files out as the kubelet mounts a ConfigMap: each key a
    // symlink through `..data` to a timestamped directory.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
    for (key, text) in config_map.value["data"].as_object().unwrap() {
        std::fs::write(data.join(key), text.as_str().unwrap()).unwrap();
        std::os::unix::fs::symlink(PathBuf::from("..data").join(key), dir.path().join(key))
            .unwrap();
    }
    // ctxgate-rls itself must accept the mounted directory: start the
    // release binary on it (built by `make test-e2e`) and wait for its
    // "listening" line, or its refusal.
    let binary = ctxgate_e2e::repo_root().join("target/release/ctxgate-rls");
    assert!(
        binary.is_file(),
        "{} is missing: run `make test-e2e`",
        binary.display()
    );
    let mut rls = std::process::Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(rls.stderr.take().unwrap()),
        &mut first_line,
    )
    .unwrap();
    let _ = rls.kill();
    let _ = rls.wait();
    let ratelimit = ratelimit_config();
    let global = ratelimit.global.as_ref().unwrap();
    assert!(
        first_line.contains("listening") && first_line.contains(&global.domain),
        "{config_map}: ctxgate-rls did not start on it: {first_line}"
    );

    // The domain has limits for the descriptors the plugin sends: a
    // top-level entry for the first key part, and for anonymous clients.
    let mut keys = BTreeSet::new();
    for (_, text) in config_map.value["data"].as_object().unwrap() {
        for line in text.as_str().unwrap().lines() {
            if let Some(key) = line
                .trim_start()
                .strip_prefix("- key:")
                .or_else(|| line.trim_start().strip_prefix("key:"))
            {
                keys.insert(key.trim().to_owned());
            }
        }
    }
    let first = first_key_part(&ratelimit);
    for key in [first, "client"] {
        assert!(
            keys.contains(key),
            "{config_map}: no limit keyed by {key} for the plugin's descriptors"
        );
    }
}

#[test]
fn the_mcp_resource_is_a_token_audience_of_the_served_host() {
    let config = pipeline_config(&plugin().value);
    let problems = mcp_resource_problems(&config, &virtual_service_hosts());
    assert!(
        problems.is_empty(),
        "{plugin}: {problems:#?}",
        plugin = plugin()
    );
}

#[test]
fn mcp_routes_come_first_and_name_tools_of_the_map() {
    let mcp = mcp_config();
    let tool_header = tagging_config().headers.0["mcp_tool"].clone();
    let mut mcp_routes = 0;
    for vs in all("VirtualService") {
        let routes = vs.spec()["http"].as_array().unwrap();
        let problems = mcp_route_problems(routes, &mcp, &tool_header);
        assert!(problems.is_empty(), "{vs}: {problems:#?}");
        mcp_routes += routes.iter().filter(|r| is_mcp_route(&mcp, r)).count();
    }
    // A tool family has a route of its own, beside the default MCP route.
    assert!(mcp_routes >= 2, "the MCP routes: {mcp_routes}");
    // Every MCP route is guarded by a breaker that selects it by name, and
    // that breaker comes first: MCP requests also carry the context tags
    // the context API's breakers select on.
    let names: Vec<String> = http_routes()
        .iter()
        .filter(|(_, r)| is_mcp_route(&mcp, r))
        .map(|(_, r)| r["name"].as_str().unwrap().to_owned())
        .collect();
    let breakers = breakers_config().breakers;
    for name in &names {
        let guard = breakers.iter().position(|b| {
            b.select
                .routes
                .as_ref()
                .is_some_and(|routes| routes.contains(name))
        });
        assert_eq!(
            guard,
            Some(0),
            "MCP route {name}: not selected by the first breaker"
        );
    }
}

#[test]
fn rls_per_tool_limits_match_the_descriptors_the_plugin_sends() {
    let mcp = mcp_config();
    let ratelimit = ratelimit_config();
    let global = ratelimit.global.as_ref().unwrap();
    let first = first_key_part(&ratelimit);
    let mut mcp_nodes = 0;
    for limits in rls_limit_files() {
        let problems = rls_mcp_problems(&limits, first, &mcp);
        assert!(problems.is_empty(), "{problems:#?}");
        mcp_nodes += limits.to_string().matches("\"mcp_tool\"").count();
    }
    assert!(mcp_nodes > 0, "no per-tool limit in the RLS limits");
    assert!(
        global.mcp_descriptor,
        "per-tool limits, but the plugin sends no MCP descriptor"
    );
}

// ---------------------------------------------------------------------------
// Broken copies: each check can fail.

fn manifest(kind: &str, name: &str) -> Value {
    one(kind, name).value.clone()
}

/// Sets the field at a JSON pointer; its parent must exist.
fn set(value: &mut Value, pointer: &str, new: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = value
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} is not in the manifest"));
    match parent {
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = new,
        _ => parent[key] = new,
    }
}

/// The errors for a broken object; it must have some, one containing `expected`.
#[track_caller]
fn assert_rejected(object: &Value, expected: &str) {
    CRDS.assert_rejects(object, expected);
}

#[test]
fn a_misspelt_field_in_consistent_hash_is_rejected() {
    let mut dr = manifest("DestinationRule", "context-api");
    let hash = dr
        .pointer_mut("/spec/trafficPolicy/loadBalancer/consistentHash")
        .unwrap();
    let header = hash
        .as_object_mut()
        .unwrap()
        .remove("httpHeaderName")
        .unwrap();
    hash["httpHeader"] = header;
    assert_rejected(&dr, "httpHeader");
}

#[test]
fn a_wrong_type_is_rejected() {
    let mut dr = manifest("DestinationRule", "context-api");
    set(
        &mut dr,
        "/spec/trafficPolicy/loadBalancer/consistentHash/ringHash/minimumRingSize",
        json!("1024"),
    );
    assert_rejected(
        &dr,
        "/spec/trafficPolicy/loadBalancer/consistentHash/ringHash/minimumRingSize",
    );
    let mut dr = manifest("DestinationRule", "context-api");
    set(
        &mut dr,
        "/spec/trafficPolicy/connectionPool/http/http2MaxRequests",
        json!(1u64 << 31),
    );
    assert_rejected(
        &dr,
        "/spec/trafficPolicy/connectionPool/http/http2MaxRequests",
    );
}

#[test]
fn two_hash_keys_are_rejected() {
    // consistentHash takes one of httpHeaderName, httpCookie, useSourceIp,
    // httpQueryParameterName (a oneOf in the schema).
    let mut dr = manifest("DestinationRule", "context-api");
    set(
        &mut dr,
        "/spec/trafficPolicy/loadBalancer/consistentHash/useSourceIp",
        json!(true),
    );
    assert_rejected(&dr, "/spec/trafficPolicy/loadBalancer/consistentHash");
}

/// The index of the `http` entry named `name` of a VirtualService.
fn route_index(vs: &Value, name: &str) -> usize {
    vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

#[test]
fn an_invalid_route_match_is_rejected() {
    let high_memory = route_index(&manifest("VirtualService", "context-api"), "high_memory");
    let mut vs = manifest("VirtualService", "context-api");
    let matcher = vs
        .pointer_mut(&format!("/spec/http/{high_memory}/match/0"))
        .unwrap();
    let headers = matcher.as_object_mut().unwrap().remove("headers").unwrap();
    matcher["header"] = headers;
    assert_rejected(&vs, "header");

    let mut vs = manifest("VirtualService", "context-api");
    set(
        &mut vs,
        &format!("/spec/http/{high_memory}/match/0/headers/x-context-type/prefix"),
        json!("large"),
    );
    assert_rejected(
        &vs,
        &format!("/spec/http/{high_memory}/match/0/headers/x-context-type"),
    );
}

#[test]
fn broken_mcp_routes_are_caught() {
    let mcp = mcp_config();
    let tool_header = tagging_config().headers.0["mcp_tool"].clone();
    let vs = manifest("VirtualService", "context-api");
    let graph = route_index(&vs, "mcp_graph");
    let problems =
        |vs: &Value| mcp_route_problems(vs["spec"]["http"].as_array().unwrap(), &mcp, &tool_header);
    let expect = |vs: &Value, expected: &str| {
        let found = problems(vs);
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "expected a problem about {expected:?}, got {found:#?}"
        );
    };
    assert_eq!(problems(&vs), Vec::<String>::new());

    // The MCP routes last: the context API's header routes take MCP
    // requests first.
    let mut moved = vs.clone();
    let routes = moved["spec"]["http"].as_array_mut().unwrap();
    let mcp_routes: Vec<Value> = routes.drain(..2).collect();
    routes.extend(mcp_routes);
    expect(&moved, "which takes MCP requests first");

    // A tool family no tool of the map belongs to.
    let mut walk = vs.clone();
    set(
        &mut walk,
        &format!("/spec/http/{graph}/match/0/headers/{tool_header}/prefix"),
        json!("walk_"),
    );
    expect(&walk, "a tool the mcp stage refuses");
    let mut exact = vs.clone();
    set(
        &mut exact,
        &format!("/spec/http/{graph}/match/0/headers/{tool_header}"),
        json!({"exact": "traverse_graph"}),
    );
    expect(&exact, "traverse_graph, a tool the mcp stage refuses");

    // The tool tag on a path where the plugin never sets it.
    let mut anywhere = vs.clone();
    anywhere["spec"]["http"][graph]["match"][0]
        .as_object_mut()
        .unwrap()
        .remove("uri");
    expect(&anywhere, "on a path that is no MCP endpoint");

    // A route timeout would cut SSE answers.
    let mut timed = vs.clone();
    set(
        &mut timed,
        &format!("/spec/http/{graph}/timeout"),
        json!("15s"),
    );
    expect(&timed, "has a timeout");
    CRDS.validate(&timed).unwrap();
}

#[test]
fn an_mcp_resource_tokens_are_not_issued_for_is_caught() {
    let hosts = virtual_service_hosts();
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(
        &mut plugin,
        "/spec/pluginConfig/auth/providers/0/audiences",
        json!(["context-api"]),
    );
    // The module accepts it; only the check sees that MCP tokens would be
    // refused.
    assert!(compile(&plugin).is_ok());
    let problems = mcp_resource_problems(&pipeline_config(&plugin), &hosts);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("is no provider's audience")),
        "{problems:#?}"
    );

    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(
        &mut plugin,
        "/spec/pluginConfig/mcp/resource_metadata/resource",
        json!("https://mcp.ctxgate.example.com/mcp"),
    );
    assert!(compile(&plugin).is_ok());
    let problems = mcp_resource_problems(&pipeline_config(&plugin), &hosts);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("is no provider's audience"))
            && problems
                .iter()
                .any(|p| p.contains("no VirtualService serves mcp.ctxgate.example.com")),
        "{problems:#?}"
    );

    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(
        &mut plugin,
        "/spec/pluginConfig/mcp/resource_metadata/authorization_servers",
        json!(["https://idp.ctxgate.local"]),
    );
    let problems = mcp_resource_problems(&pipeline_config(&plugin), &hosts);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("is no provider's issuer")),
        "{problems:#?}"
    );
}

#[test]
fn per_tool_limits_the_plugin_never_matches_are_caught() {
    let mcp = mcp_config();
    let limits = rls_limit_files().remove(0);
    let tool = "/descriptors/0/descriptors/0/descriptors/0";
    assert_eq!(limits.pointer(&format!("{tool}/key")).unwrap(), "mcp_tool");

    let mut typo = limits.clone();
    set(&mut typo, &format!("{tool}/value"), json!("write_contexts"));
    let problems = rls_mcp_problems(&typo, "tenant", &mcp);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("a tool the mcp stage refuses")),
        "{problems:#?}"
    );

    let mut method = limits.clone();
    set(
        &mut method,
        "/descriptors/0/descriptors/0/value",
        json!("tools/list"),
    );
    let problems = rls_mcp_problems(&method, "tenant", &mcp);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not a method the gateway prices"))
            && problems
                .iter()
                .any(|p| p.contains("mcp_tool not under mcp_method=tools/call")),
        "{problems:#?}"
    );

    // Keyed by subject while the plugin's descriptors start with tenant.
    let problems = rls_mcp_problems(&limits, "subject", &mcp);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("mcp_method not right under subject")),
        "{problems:#?}"
    );
}

#[test]
fn a_timeout_without_unit_is_rejected_by_the_crd_rule() {
    for timeout in ["15", "15sec", "1.5.0s", ""] {
        let mut vs = manifest("VirtualService", "context-api");
        set(&mut vs, "/spec/http/0/timeout", json!(timeout));
        assert_rejected(&vs, "/spec/http/0/timeout");
    }
    let mut vs = manifest("VirtualService", "context-api");
    set(&mut vs, "/spec/http/0/timeout", json!("500us"));
    assert_rejected(&vs, "greater than 1ms");
    for timeout in ["1.5s", "300ms", "2h45m", "1m0.5s"] {
        let mut vs = manifest("VirtualService", "context-api");
        set(&mut vs, "/spec/http/0/timeout", json!(timeout));
        CRDS.validate(&vs)
            .unwrap_or_else(|e| panic!("{timeout}: {e:?}"));
    }
}

#[test]
fn broken_wasm_plugins_are_rejected() {
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(&mut plugin, "/spec/failStrategy", json!("FAIL_CLOSED"));
    assert_rejected(&plugin, "/spec/failStrategy");

    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(&mut plugin, "/spec/phase", json!("AUTHENTICATION"));
    assert_rejected(&plugin, "/spec/phase");

    // CEL rules of the CRD.
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    plugin["spec"]["targetRefs"] =
        json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "ctxgate"}]);
    assert_rejected(&plugin, "only one of targetRefs or selector can be set");

    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(
        &mut plugin,
        "/spec/url",
        json!("ftp://ghcr.io/ctxgate/ctxgate:0.1.0"),
    );
    assert_rejected(&plugin, "url must have schema one of");

    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(
        &mut plugin,
        "/spec/selector/matchLabels/istio",
        json!("ingress*"),
    );
    assert_rejected(&plugin, "wildcard not allowed");

    // x-kubernetes-list-type: map (env entries are keyed by name).
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    plugin["spec"]["vmConfig"] =
        json!({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]});
    assert_rejected(&plugin, "/spec/vmConfig/env/1: duplicate");
}

/// A broken copy Istio accepts (pluginConfig is free-form for it,
/// x-kubernetes-preserve-unknown-fields) and the module refuses, with an
/// error about `field` that mentions `expected`.
fn assert_refused_by_the_module(plugin: &Value, field: &str, expected: &str) {
    CRDS.validate(plugin).unwrap();
    let Err(error) = compile(plugin) else {
        panic!("the module accepted a broken pluginConfig (expected an error about {field})");
    };
    assert!(
        error.field.starts_with(field) && error.to_string().contains(expected),
        "expected an error about {field} ({expected}), got {error}"
    );
}

#[test]
fn a_misspelt_field_in_a_section_is_refused_by_the_module() {
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    let provider = plugin
        .pointer_mut("/spec/pluginConfig/auth/providers/0")
        .unwrap();
    let issuer = provider.as_object_mut().unwrap().remove("issuer").unwrap();
    provider["isuer"] = issuer;
    assert_refused_by_the_module(&plugin, "auth.providers[0]", "isuer");
}

#[test]
fn a_value_only_the_stage_checks_is_refused_by_the_module() {
    // Well-typed, so it parses; the breaker stage refuses it when the
    // pipeline compiles it. Parsing the sections alone would miss it.
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    set(
        &mut plugin,
        "/spec/pluginConfig/breaker/breakers/1/window_seconds",
        json!(7200),
    );
    assert_refused_by_the_module(
        &plugin,
        "breaker.breakers[1].window_seconds",
        "between 1 and 3600",
    );
}

#[test]
fn a_misspelt_section_is_refused_by_the_module() {
    // Were it ignored, the gateway would run without rate limits.
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    let config = plugin
        .pointer_mut("/spec/pluginConfig")
        .unwrap()
        .as_object_mut()
        .unwrap();
    let ratelimit = config.remove("ratelimit").unwrap();
    config.insert("rate_limit".into(), ratelimit);
    assert_refused_by_the_module(&plugin, "", "rate_limit");
}

#[test]
fn a_missing_section_is_accepted_by_the_module_but_not_by_the_stage_check() {
    // The module runs whatever stages it is given; only the check of the
    // plugin's stages notices that the breakers are gone.
    let mut plugin = manifest("WasmPlugin", PLUGIN);
    plugin["spec"]["pluginConfig"]
        .as_object_mut()
        .unwrap()
        .remove("breaker")
        .unwrap();
    CRDS.validate(&plugin).unwrap();
    assert!(compile(&plugin).is_ok());
    assert_ne!(stages(&pipeline_config(&plugin)), STAGES);
}

#[test]
fn metadata_and_unknown_top_level_fields_are_rejected() {
    let mut gateway = manifest("Gateway", "ctxgate-gateway");
    set(&mut gateway, "/metadata/name", json!("Ctxgate_Gateway"));
    assert_rejected(&gateway, "/metadata/name");

    let mut gateway = manifest("Gateway", "ctxgate-gateway");
    gateway["metadata"]["label"] = json!({"app": "ctxgate"});
    assert_rejected(&gateway, "label");

    let mut gateway = manifest("Gateway", "ctxgate-gateway");
    let spec = gateway.as_object_mut().unwrap().remove("spec").unwrap();
    gateway["sepc"] = spec;
    assert_rejected(&gateway, "sepc");

    let mut entry = manifest("ServiceEntry", "ctxgate-idp");
    set(&mut entry, "/spec/hosts/0", json!("*"));
    assert_rejected(&entry, "/spec/hosts/0");
}

#[test]
fn plugin_config_numbers_travel_as_protobuf_doubles() {
    assert_eq!(plugin_config_json(&json!({"a": 300})), json!({"a": 300}));
    assert_eq!(plugin_config_json(&json!([0.5, -2])), json!([0.5, -2]));
    // Past 2^53 a Struct cannot hold an integer exactly.
    assert_eq!(
        plugin_config_json(&json!((1u64 << 53) + 1)),
        json!(1u64 << 53)
    );
    assert!(crd::parse_go_duration("1h30m") == Some(5_400_000_000_000));
    assert!(crd::parse_go_duration("-1.5s") == Some(-1_500_000_000));
    assert!(crd::parse_go_duration("10").is_none());
}

/// The mesh configuration istio/50-telemetry.yaml relies on.
fn mesh_providers() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_root().join("istio/mesh/ctxgate-providers.yaml")).unwrap();
    let values = yaml::documents(&text).unwrap().remove(0);
    values["meshConfig"]["extensionProviders"]
        .as_array()
        .expect("meshConfig.extensionProviders")
        .clone()
}

#[test]
fn the_gateway_traces_and_logs_the_decision_fields_of_the_demo() {
    let telemetry = one("Telemetry", "ctxgate");
    let providers = mesh_providers();
    let provider = |name: &str| {
        providers
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| {
                panic!("no mesh provider {name} in istio/mesh/ctxgate-providers.yaml")
            })
    };
    // The Telemetry selects the gateway the plugin runs on.
    assert_eq!(
        telemetry.spec()["selector"],
        plugin().value["spec"]["selector"]
    );
    let tracing = &telemetry.spec()["tracing"][0];
    let otel = provider(tracing["providers"][0]["name"].as_str().unwrap());
    assert_eq!(otel["opentelemetry"]["http"]["path"], "/v1/traces");

    // Span tags: the demo's custom tags, tag for tag, from the same source.
    let demo_tags: BTreeMap<String, Value> = demo::demo_hcm_field("tracing")["custom_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let source = if let Some(h) = t.get("request_header") {
                json!({"header": {"name": h["name"]}})
            } else {
                json!({"formatter": {"value": t["value"]}})
            };
            (t["tag"].as_str().unwrap().to_owned(), source)
        })
        .collect();
    let istio_tags: BTreeMap<String, Value> = tracing["customTags"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        istio_tags, demo_tags,
        "span tags differ from envoy/demo.yaml"
    );

    // Access log: the demo's JSON fields.
    let log = provider(
        telemetry.spec()["accessLogging"][0]["providers"][0]["name"]
            .as_str()
            .unwrap(),
    );
    let labels = &log["envoyFileAccessLog"]["logFormat"]["labels"];
    let demo_access_log = demo::demo_hcm_field("access_log");
    let demo_fields = &demo_access_log[0]["typed_config"]["log_format"]["json_format"];
    assert!(demo_fields.is_object());
    assert_eq!(
        labels, demo_fields,
        "access-log fields differ from envoy/demo.yaml"
    );

    // The filter state both read is written by the plugin.
    assert!(pipeline_config(&plugin().value).filter_state);
}
