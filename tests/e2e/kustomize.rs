//! The kustomize bundle of deploy/kustomize/ (a base over istio/ and the
//! `ingress` and `sidecar` overlays), checked the way a cluster would take
//! it, without a cluster:
//!
//! * each overlay rendered by a real kustomize (`kubectl kustomize`), and
//!   every object of the output validated: Istio's kinds against Istio's
//!   CRDs (`istio/customresourcedefinitions.gen.yaml`), the
//!   prometheus-operator's PrometheusRule and PodMonitor against its CRDs
//!   (`prometheus-operator/customresourcedefinitions.gen.yaml`, or
//!   `$CTXGATE_MONITORING_CRDS`), built-in kinds by their metadata, and the
//!   WasmPlugin's `pluginConfig` compiled by the module's pipeline;
//! * the base references istio/ (istio/Kustomization lists every manifest)
//!   and the ingress overlay is istio/ as it is, plus its monitoring;
//! * the sidecar overlay: the plugin in the workloads' namespace, on the
//!   pods workload-patch.yaml labels, inbound only, without what only a
//!   gateway has;
//! * the PrometheusRule's rules are observability/alerts.yaml, to the
//!   character, and `promtool check rules` accepts them as rendered;
//! * and broken copies, to show each check fails when it should.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "istio/crd.rs"]
mod crd;
#[allow(dead_code)]
#[path = "istio/manifests.rs"]
mod manifests;
use ctxgate_e2e::yaml;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use crd::Crds;
use ctxgate_core::config::parse_json;
use ctxgate_core::mock::MockHost;
use ctxgate_core::pipeline::config::PipelineConfig;
use ctxgate_core::pipeline::{Seeds, Worker};
use manifests::{plugin_config_json, repo_root};
use serde_json::{Value, json};

static ISTIO_CRDS: LazyLock<Crds> = LazyLock::new(|| {
    crds(
        "CTXGATE_ISTIO_CRDS",
        "tests/e2e/istio/customresourcedefinitions.gen.yaml",
    )
});

static MONITORING_CRDS: LazyLock<Crds> = LazyLock::new(|| {
    crds(
        "CTXGATE_MONITORING_CRDS",
        "tests/e2e/prometheus-operator/customresourcedefinitions.gen.yaml",
    )
});

fn crds(variable: &str, default: &str) -> Crds {
    let path = std::env::var_os(variable).map_or_else(|| repo_root().join(default), PathBuf::from);
    Crds::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

const OVERLAYS: [&str; 2] = ["ingress", "sidecar"];

fn overlay_dir(overlay: &str) -> PathBuf {
    repo_root().join("deploy/kustomize/overlays").join(overlay)
}

/// The kustomize of `kubectl`, checked once: v5 or later (`sortOptions`).
static KUSTOMIZE: LazyLock<()> = LazyLock::new(|| {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl (with kustomize v5 or later) is needed to render the bundle: {e}")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .unwrap_or_else(|| panic!("kubectl names no kustomize version:\n{text}"));
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    assert!(
        major >= 5,
        "kubectl's kustomize is v{version}; the bundle needs v5 or later (kubectl 1.27+)"
    );
});

/// `kubectl kustomize <dir>`: the objects, in output order.
fn kustomize(dir: &Path) -> Result<Vec<Value>, String> {
    LazyLock::force(&KUSTOMIZE);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.trim().is_empty(),
        "kustomize warns about {}:\n{warnings}",
        dir.display()
    );
    yaml::documents(&String::from_utf8_lossy(&out.stdout))
}

fn render(overlay: &str) -> Vec<Value> {
    kustomize(&overlay_dir(overlay)).unwrap_or_else(|e| panic!("overlay {overlay}: {e}"))
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn only<'a>(objects: &'a [Value], kind_name: &str) -> &'a Value {
    match kind(objects, kind_name).as_slice() {
        [one] => one,
        found => panic!("expected one {kind_name}, found {}", found.len()),
    }
}

fn read_yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    yaml::documents(&text).unwrap().remove(0)
}

/// Everything wrong with one object of a rendered overlay, by its kind:
/// Istio's and the prometheus-operator's against their CRDs, built-ins by
/// their metadata.
fn object_problems(object: &Value) -> Vec<String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let checked = if group.ends_with(".istio.io") {
        ISTIO_CRDS.validate(object).map(|_| ())
    } else if group == "monitoring.coreos.com" {
        MONITORING_CRDS.validate(object).map(|_| ())
    } else {
        let builtins = [
            "v1/Namespace",
            "v1/Service",
            "v1/ServiceAccount",
            "v1/ConfigMap",
            "apps/v1/Deployment",
            "policy/v1/PodDisruptionBudget",
        ];
        let kind = format!(
            "{api_version}/{}",
            object["kind"].as_str().unwrap_or_default()
        );
        if builtins.contains(&kind.as_str()) {
            let meta = jsonschema::draft7::new(&crd::object_meta_schema()).unwrap();
            let errors: Vec<String> = meta
                .iter_errors(&object["metadata"])
                .map(|e| format!("metadata{}: {e}", e.instance_path()))
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors)
            }
        } else {
            Err(vec![format!("{kind} is not a kind this test knows")])
        }
    };
    checked.err().unwrap_or_default()
}

/// A WasmPlugin's configuration compiled as the module does when the proxy
/// configures it (Istio hands `pluginConfig` over as a protobuf Struct).
fn compile(plugin: &Value) -> Result<PipelineConfig, String> {
    let config = serde_json::to_vec(&plugin_config_json(&plugin["spec"]["pluginConfig"])).unwrap();
    let name = format!(
        "{}.{}",
        plugin["metadata"]["namespace"].as_str().unwrap(),
        plugin["metadata"]["name"].as_str().unwrap()
    );
    let seeds = Seeds {
        secret: [1; 16],
        reporter: 1,
    };
    Worker::new(&config, &name, seeds, &mut MockHost::new(0)).map_err(|e| e.to_string())?;
    parse_json(&config).map_err(|e| e.to_string())
}

/// The pipeline's stages a configuration runs, in the module's order.
fn stages(config: &PipelineConfig) -> Vec<&'static str> {
    [
        ("auth", config.auth.is_some()),
        ("mcp", config.mcp.is_some()),
        ("ratelimit", config.ratelimit.is_some()),
        ("tagging", config.tagging.is_some()),
        ("breaker", config.breaker.is_some()),
    ]
    .into_iter()
    .filter_map(|(stage, present)| present.then_some(stage))
    .collect()
}

fn name_of(object: &Value) -> String {
    format!(
        "{} {}/{}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

// ---------------------------------------------------------------------------
// The bundle as it is.

#[test]
fn istio_kustomization_lists_every_manifest_of_istio_in_order() {
    let kustomization = read_yaml("istio/Kustomization");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("istio"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.sort();
    assert_eq!(
        listed, files,
        "istio/Kustomization must list every manifest of istio/, in name order"
    );
    // kubectl apply -f istio/ skips it: no .yaml, .yml or .json extension.
    assert!(Path::new("istio/Kustomization").extension().is_none());
}

#[test]
fn every_object_of_each_overlay_is_valid_against_its_crd() {
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let mut failures = Vec::new();
        for object in &objects {
            for problem in object_problems(object) {
                failures.push(format!("{}: {problem}", name_of(object)));
            }
        }
        assert!(
            failures.is_empty(),
            "overlay {overlay}:\n{}",
            failures.join("\n")
        );
        for expected in ["WasmPlugin", "PrometheusRule", "PodMonitor", "ConfigMap"] {
            assert!(
                !kind(&objects, expected).is_empty(),
                "overlay {overlay} has no {expected}"
            );
        }
        let plugin = only(&objects, "WasmPlugin");
        compile(plugin).unwrap_or_else(|e| panic!("overlay {overlay}: the module refuses it: {e}"));
        println!("overlay {overlay}: {} objects valid", objects.len());
    }
}

#[test]
fn the_ingress_overlay_is_istio_as_it_is_with_its_monitoring() {
    let objects = render("ingress");
    let istio: Vec<Value> = manifests::load(&repo_root().join("istio"))
        .unwrap()
        .into_iter()
        .map(|o| o.value)
        .collect();
    let rest: Vec<Value> = objects
        .iter()
        .filter(|o| {
            o["apiVersion"].as_str().unwrap().split('/').next() != Some("monitoring.coreos.com")
        })
        .cloned()
        .collect();
    // Same objects, in istio/'s order (its install order).
    assert_eq!(rest, istio, "the ingress overlay changed istio/'s objects");

    // The gateway's pods: the label everything selects, and the override
    // ConfigMap in their namespace.
    let values = read_yaml("istio/mesh/ctxgate-gateway-values.yaml");
    let plugin = only(&objects, "WasmPlugin");
    let gateway = only(&objects, "Gateway");
    let monitor = only(&objects, "PodMonitor");
    let selector = &plugin["spec"]["selector"]["matchLabels"];
    assert_eq!(*selector, values["labels"], "the gateway's Helm values");
    assert_eq!(gateway["spec"]["selector"], *selector);
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], *selector);
    assert_eq!(
        monitor["metadata"]["namespace"],
        plugin["metadata"]["namespace"]
    );
    let override_name = &values["podAnnotations"]["sidecar.istio.io/bootstrapOverride"];
    let config_map = kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == *override_name)
        .unwrap_or_else(|| panic!("no ConfigMap {override_name}"));
    assert_eq!(
        config_map["metadata"]["namespace"],
        plugin["metadata"]["namespace"]
    );
    assert!(config_map["data"]["custom_bootstrap.json"].is_string());
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "http-envoy-prom"
    );
}

#[test]
fn the_sidecar_overlay_runs_the_plugin_inbound_in_the_workloads() {
    let objects = render("sidecar");
    let patch = read_yaml("deploy/kustomize/overlays/sidecar/workload-patch.yaml");
    let pod = &patch["spec"]["template"]["metadata"];
    let plugin = only(&objects, "WasmPlugin");
    let namespace = plugin["metadata"]["namespace"].as_str().unwrap();
    // In the workloads' namespace (a selector reaches pods of its own),
    // the one istio/ creates for them.
    assert_eq!(namespace, "ctxgate");
    assert!(
        kind(&objects, "Namespace")
            .iter()
            .any(|n| n["metadata"]["name"] == namespace)
    );
    // The pods the patch labels, inbound requests only.
    assert_eq!(plugin["spec"]["selector"]["matchLabels"], pod["labels"]);
    assert_eq!(plugin["spec"]["match"], json!([{"mode": "SERVER"}]));
    assert!(plugin["spec"]["targetRefs"].is_null());
    assert_eq!(plugin["spec"]["phase"], "AUTHN");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    let config = compile(plugin).unwrap();
    assert_eq!(stages(&config), ["auth", "mcp", "ratelimit", "tagging"]);
    // What only a gateway has.
    for gone in ["Gateway", "VirtualService"] {
        assert!(
            kind(&objects, gone).is_empty(),
            "the sidecar overlay has a {gone}"
        );
    }
    // Telemetry and monitoring select the same pods, in their namespace.
    for selecting in ["Telemetry", "PodMonitor"] {
        let object = only(&objects, selecting);
        assert_eq!(object["metadata"]["namespace"], namespace, "{selecting}");
        assert_eq!(
            object["spec"]["selector"]["matchLabels"], pod["labels"],
            "{selecting}"
        );
    }
    // The stats tags override, mounted from the pods' namespace, unchanged.
    let override_name = &pod["annotations"]["sidecar.istio.io/bootstrapOverride"];
    let config_map = kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == *override_name)
        .unwrap_or_else(|| panic!("no ConfigMap {override_name}"));
    assert_eq!(config_map["metadata"]["namespace"], namespace);
    let istio = render_istio();
    let original = kind(&istio, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == *override_name)
        .unwrap();
    assert_eq!(config_map["data"], original["data"]);
    // The JWKS cluster is visible to the workloads: the IdP egress is
    // exported to its own namespace only.
    let idp = only(&objects, "ServiceEntry");
    assert_eq!(idp["metadata"]["namespace"], namespace);
    assert_eq!(idp["spec"]["exportTo"], json!(["."]));
    let auth = config.auth.unwrap();
    let cluster = auth
        .providers
        .iter()
        .find_map(|p| match &p.jwks {
            ctxgate_core::auth::config::JwksConfig::Remote(r) => Some(r.cluster.clone()),
            _ => None,
        })
        .unwrap();
    let host = manifests::IstioCluster::parse(&cluster).unwrap().host;
    assert_eq!(idp["spec"]["hosts"], json!([host]));
    let tls = kind(&objects, "DestinationRule")
        .into_iter()
        .find(|d| d["spec"]["host"] == host.as_str())
        .unwrap();
    assert_eq!(tls["metadata"]["namespace"], namespace);
    // The RLS admits the workloads, not the gateway.
    let callers = kind(&objects, "AuthorizationPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "ctxgate-rls-callers")
        .unwrap();
    for principal in callers["spec"]["rules"][0]["from"][0]["source"]["principals"]
        .as_array()
        .unwrap()
    {
        assert!(
            principal
                .as_str()
                .unwrap()
                .starts_with(&format!("cluster.local/ns/{namespace}/sa/")),
            "{principal}"
        );
    }
}

/// istio/ rendered through its own kustomization.
fn render_istio() -> Vec<Value> {
    kustomize(&repo_root().join("istio")).unwrap()
}

/// observability/alerts.yaml as it appears under the PrometheusRule's
/// `spec:`: each line indented by two spaces.
fn indented_alerts() -> String {
    let alerts = std::fs::read_to_string(repo_root().join("observability/alerts.yaml")).unwrap();
    alerts
        .split_inclusive('\n')
        .map(|line| {
            if line.trim().is_empty() {
                line.to_owned()
            } else {
                format!("  {line}")
            }
        })
        .collect()
}

#[test]
fn the_prometheus_rule_is_alerts_yaml() {
    let path = "deploy/kustomize/base/prometheusrule.yaml";
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let (_, spec) = text
        .split_once("\nspec:\n")
        .unwrap_or_else(|| panic!("{path} has no `spec:` line"));
    if spec != indented_alerts() {
        let expected = std::env::temp_dir().join("ctxgate-prometheusrule-spec.yaml");
        std::fs::write(&expected, indented_alerts()).unwrap();
        panic!(
            "{path}: the rules under `spec:` are not observability/alerts.yaml \
             (indented by two spaces, comments included): replace everything \
             below `spec:` with {}",
            expected.display()
        );
    }
    // And so, parsed, the same groups.
    let rule = read_yaml(path);
    let alerts = read_yaml("observability/alerts.yaml");
    assert_eq!(rule["spec"], alerts);
    // As every overlay renders it.
    for overlay in OVERLAYS {
        let objects = render(overlay);
        assert_eq!(
            only(&objects, "PrometheusRule")["spec"],
            alerts,
            "{overlay}"
        );
    }
}

/// `promtool check rules` on a rules file; its report, or why it refused.
fn promtool_check(rules: &Value) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    // JSON is YAML.
    std::fs::write(&file, serde_json::to_string_pretty(rules).unwrap()).unwrap();
    ctxgate_e2e::promtool(&["check", "rules"], &file)
}

#[test]
fn promtool_accepts_the_rules_of_each_rendered_prometheus_rule() {
    let alerts = read_yaml("observability/alerts.yaml");
    let count: usize = alerts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    for overlay in OVERLAYS {
        let objects = render(overlay);
        let spec = &only(&objects, "PrometheusRule")["spec"];
        let report = promtool_check(spec).unwrap_or_else(|e| panic!("{overlay}: {e}"));
        assert!(
            report.contains(&format!("SUCCESS: {count} rules found")),
            "{overlay}: {report}"
        );
    }
    // A broken expression is refused.
    let mut broken = alerts.clone();
    broken["groups"][0]["rules"][0]["expr"] =
        json!("sum by (instance (rate(ctxgate_requests[1m]))");
    let report = promtool_check(&broken).unwrap_err();
    assert!(report.contains("parse error"), "{report}");
}

// ---------------------------------------------------------------------------
// Broken copies: each check can fail.

#[track_caller]
fn assert_monitoring_rejected(object: &Value, expected: &str) {
    MONITORING_CRDS.assert_rejects(object, expected);
}

#[test]
fn broken_monitoring_objects_are_rejected() {
    let objects = render("ingress");
    let monitor = only(&objects, "PodMonitor").clone();
    let mut misspelt = monitor.clone();
    let endpoints = misspelt["spec"]
        .as_object_mut()
        .unwrap()
        .remove("podMetricsEndpoints")
        .unwrap();
    misspelt["spec"]["podMetricsEndpoint"] = endpoints;
    assert_monitoring_rejected(&misspelt, "podMetricsEndpoint");
    let mut scheme = monitor.clone();
    scheme["spec"]["podMetricsEndpoints"][0]["scheme"] = json!("tcp");
    assert_monitoring_rejected(&scheme, "/spec/podMetricsEndpoints/0/scheme");

    let rule = only(&objects, "PrometheusRule").clone();
    let mut duration = rule.clone();
    duration["spec"]["groups"][0]["rules"][0]["for"] = json!("2 minutes");
    assert_monitoring_rejected(&duration, "/spec/groups/0/rules/0/for");
    // A pattern with Go's case-insensitive flag (`^(?i)(abort|warn)?$`).
    let mut strategy = rule.clone();
    strategy["spec"]["groups"][0]["partial_response_strategy"] = json!("Abort");
    MONITORING_CRDS.validate(&strategy).unwrap();
    strategy["spec"]["groups"][0]["partial_response_strategy"] = json!("retry");
    assert_monitoring_rejected(&strategy, "/spec/groups/0/partial_response_strategy");
    let mut unnamed = rule;
    unnamed["spec"]["groups"][0]
        .as_object_mut()
        .unwrap()
        .remove("name");
    assert_monitoring_rejected(&unnamed, "name");
}

#[test]
fn a_broken_overlay_is_caught() {
    // A patch of a field the WasmPlugin does not have: kustomize refuses.
    let dir = tempfile::tempdir().unwrap();
    let base = repo_root().join("deploy/kustomize/base");
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "resources:\n- {}\npatches:\n- target: {{kind: WasmPlugin}}\n  patch: |-\n    - op: remove\n      path: /spec/nothing\n",
            base.display()
        ),
    )
    .unwrap();
    assert!(kustomize(dir.path()).is_err());

    // A phase Istio does not know: the CRD refuses it.
    let mut plugin = only(&render("sidecar"), "WasmPlugin").clone();
    plugin["spec"]["phase"] = json!("INBOUND");
    assert!(
        object_problems(&plugin)
            .iter()
            .any(|p| p.contains("/spec/phase")),
        "{:?}",
        object_problems(&plugin)
    );
    // A match mode Istio does not know.
    let mut plugin = only(&render("sidecar"), "WasmPlugin").clone();
    plugin["spec"]["match"] = json!([{"mode": "INBOUND"}]);
    assert!(!object_problems(&plugin).is_empty());
    // A kind the bundle does not know.
    assert!(
        !object_problems(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}))
            .is_empty()
    );
}
