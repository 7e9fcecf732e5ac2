//! The `stats_config` Istio puts in a proxy's Envoy bootstrap, built from
//! Istio's own files (kept unchanged in `istio/bootstrap/` beside this
//! file, see its README) for the annotations of one pod.
//!
//! pilot-agent renders the bootstrap from the Go template
//! `envoy_bootstrap.json` with options computed by `getStatsOptions`
//! (istio/istio `pkg/bootstrap/config.go`). Here the template's
//! `stats_config` block is cut out and
//! rendered by a small interpreter of the template actions it uses
//! (`range`, `if`, `end`, variables, `js`, `toJson`); the options are
//! computed as `getStatsOptions` does, from the pod's annotations
//! (`proxy.istio.io/config` and the `sidecar.istio.io/stats*` ones) and
//! the required inclusions Istio defines there. Anything the template
//! or the options use that this does not model is an error, not a guess.
//! The mesh-wide ProxyConfig (`meshConfig.defaultConfig`) is taken to be
//! Istio's default, which sets none of these options; the renderer gives
//! exactly the `stats_config` of Istio's own golden bootstrap for it
//! (`default_golden.json`).
//!
//! What pilot-agent does with `sidecar.istio.io/bootstrapOverride` is
//! left to Envoy, as in a pod: the override is passed to Envoy as
//! `--config-yaml` ([`IstioProxy::config_yaml`]), and Envoy merges it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

/// The annotation holding a pod's ProxyConfig overrides.
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
/// The annotation naming a pod's bootstrap override ConfigMap.
pub const BOOTSTRAP_OVERRIDE: &str = "sidecar.istio.io/bootstrapOverride";
/// The file of that ConfigMap the injector mounts and pilot-agent reads.
pub const OVERRIDE_FILE: &str = "custom_bootstrap.json";

/// The stats Istio's bootstrap gives one proxy.
pub struct IstioProxy {
    /// The bootstrap's `stats_config`, as pilot-agent renders it.
    pub stats_config: Value,
    /// The bootstrap override, if the pod names one: what pilot-agent
    /// passes to Envoy with `--config-yaml`.
    pub config_yaml: Option<Value>,
}

fn bootstrap_dir() -> PathBuf {
    super::manifests::repo_root().join("tests/e2e/istio/bootstrap")
}

fn read(name: &str) -> String {
    let path = bootstrap_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The proxy of a pod with these annotations; `config_map` finds the data
/// of a ConfigMap of the pod's namespace by name (the override's).
pub fn proxy(
    annotations: &Map<String, Value>,
    config_map: impl Fn(&str) -> Option<Map<String, Value>>,
) -> Result<IstioProxy, String> {
    let options = stats_options(annotations)?;
    let stats_config = render_stats_config(&read("envoy_bootstrap.json"), &options)?;
    let config_yaml = match annotations.get(BOOTSTRAP_OVERRIDE) {
        None => None,
        Some(name) => {
            let name = name
                .as_str()
                .ok_or("the override annotation is not a string")?;
            let data = config_map(name)
                .ok_or_else(|| format!("no ConfigMap {name} for {BOOTSTRAP_OVERRIDE}"))?;
            let text = data
                .get(OVERRIDE_FILE)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("ConfigMap {name} has no {OVERRIDE_FILE}"))?;
            // pilot-agent's readBootstrapToJSON: YAML or JSON, as JSON.
            let mut documents = super::yaml::documents(text)
                .map_err(|e| format!("ConfigMap {name}, {OVERRIDE_FILE}: {e}"))?;
            if documents.len() != 1 {
                return Err(format!(
                    "ConfigMap {name}, {OVERRIDE_FILE}: not one document"
                ));
            }
            Some(documents.remove(0))
        }
    };
    Ok(IstioProxy {
        stats_config,
        config_yaml,
    })
}

/// What every proxy's inclusion list gets, as istio/istio's
/// `pkg/bootstrap/config.go` (commit in `bootstrap/README.md`) defines
/// them: `requiredEnvoyStatsMatcherInclusionPrefixes`,
/// `rbacEnvoyStatsMatcherInclusionSuffix` (the required suffixes unless
/// the pod sets EXIT_ON_ZERO_ACTIVE_CONNECTIONS) and
/// `requiredEnvoyStatsMatcherInclusionRegexes`. Istio's golden bootstrap
/// (`default_golden.json`) pins them: the renderer must give its
/// `stats_config` exactly.
const REQUIRED_PREFIXES: &str = "cluster_manager,listener_manager,server,cluster.xds-grpc,wasm";
const RBAC_SUFFIXES: &str = "rbac.allowed,rbac.denied,shadow_allowed,shadow_denied";
const REQUIRED_REGEXES: &str = r"vhost\..*\.route\..*";

/// The template data `getStatsOptions` (istio/istio
/// `pkg/bootstrap/config.go`) computes, for a sidecar or gateway proxy.
fn stats_options(
    annotations: &Map<String, Value>,
) -> Result<BTreeMap<&'static str, Value>, String> {
    let proxy_config = match annotations.get(PROXY_CONFIG) {
        None => Value::Null,
        Some(text) => {
            let text = text
                .as_str()
                .ok_or("proxy.istio.io/config is not a string")?;
            let mut docs =
                super::yaml::documents(text).map_err(|e| format!("{PROXY_CONFIG}: {e}"))?;
            if docs.len() != 1 {
                return Err(format!("{PROXY_CONFIG}: not one document"));
            }
            docs.remove(0)
        }
    };
    let annotation = |name: &str| -> String {
        annotations
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    for unmodelled in [
        "sidecar.istio.io/statsHistogramBuckets",
        "sidecar.istio.io/statsFlushInterval",
        "sidecar.istio.io/statsEvictionInterval",
    ] {
        if annotations.contains_key(unmodelled) {
            return Err(format!("{unmodelled} is not modelled here"));
        }
    }
    let strings = |value: &Value| -> Option<Vec<String>> {
        value.as_array().map(|items| {
            items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
    };
    let matcher = &proxy_config["proxyStatsMatcher"];
    // parseOption: the annotation wins over ProxyConfig (they are not
    // merged), then the required ones are appended.
    let parse_option = |annotation: String, required: String, proxy_config: Option<Vec<String>>| {
        let mut option: Vec<String> = if !annotation.is_empty() {
            annotation.split(',').map(str::to_owned).collect()
        } else {
            proxy_config.unwrap_or_default()
        };
        if !required.is_empty() {
            option.extend(required.split(',').map(str::to_owned));
        }
        if option.iter().any(|o| o.contains("{pod_ip}")) {
            return Err("{pod_ip} patterns are not modelled here".to_owned());
        }
        Ok(option)
    };
    let prefixes = parse_option(
        annotation("sidecar.istio.io/statsInclusionPrefixes"),
        REQUIRED_PREFIXES.to_owned(),
        strings(&matcher["inclusionPrefixes"]),
    )?;
    // EXIT_ON_ZERO_ACTIVE_CONNECTIONS is off unless set on the pod: only
    // the RBAC suffixes are required.
    let suffixes = parse_option(
        annotation("sidecar.istio.io/statsInclusionSuffixes"),
        RBAC_SUFFIXES.to_owned(),
        strings(&matcher["inclusionSuffixes"]),
    )?;
    let regexps = parse_option(
        annotation("sidecar.istio.io/statsInclusionRegexps"),
        REQUIRED_REGEXES.to_owned(),
        strings(&matcher["inclusionRegexps"]),
    )?;
    let mut extra_stat_tags: Vec<String> = Vec::new();
    let from_annotation = annotation("sidecar.istio.io/extraStatTags");
    for tag in strings(&proxy_config["extraStatTags"])
        .unwrap_or_default()
        .into_iter()
        .chain(from_annotation.split(',').map(str::to_owned))
    {
        if !tag.is_empty() && !extra_stat_tags.contains(&tag) {
            extra_stat_tags.push(tag);
        }
    }
    let non_empty = |v: Vec<String>| if v.is_empty() { Value::Null } else { json!(v) };
    Ok(BTreeMap::from([
        ("inclusionPrefix", non_empty(prefixes)),
        ("inclusionSuffix", non_empty(suffixes)),
        ("inclusionRegexps", non_empty(regexps)),
        ("extraStatTags", non_empty(extra_stat_tags)),
        // Metadata discovery is for ambient (HBONE) proxies and waypoints.
        ("metadata_discovery", json!(false)),
        ("histogram_buckets", Value::Null),
    ]))
}

/// The template's `"stats_config": {...}` member, rendered, as JSON.
pub fn render_stats_config(
    template: &str,
    data: &BTreeMap<&'static str, Value>,
) -> Result<Value, String> {
    let key = "\"stats_config\": {";
    let start = template
        .find(key)
        .ok_or("the bootstrap template has no stats_config")?;
    let block = balanced_block(&template[start..], key.len() - 1)?;
    let nodes = parse(&mut tokens(block)?.into_iter(), false)?;
    let mut out = String::new();
    render(&nodes, data, &BTreeMap::new(), &mut out)?;
    let document: Value = serde_json::from_str(&format!("{{{out}}}"))
        .map_err(|e| format!("the rendered stats_config is not JSON ({e}):\n{out}"))?;
    Ok(document["stats_config"].clone())
}

/// `text` up to the brace closing the one at `open`, skipping JSON strings
/// and template actions.
fn balanced_block(text: &str, open: usize) -> Result<&str, String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        if text[i..].starts_with("{{") {
            let end = text[i..].find("}}").ok_or("an action is not closed")?;
            i += end + 2;
            continue;
        }
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if text[i..].starts_with("{{") {
                        i += text[i..].find("}}").ok_or("an action is not closed")? + 2;
                        continue;
                    }
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(&text[..=i]);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err("stats_config is not closed".into())
}

#[derive(Debug)]
enum Token {
    Text(String),
    Action(String),
}

/// Text and actions, with the `{{-` / `-}}` whitespace trimming applied.
fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut before = &rest[..start];
        if trim_next {
            before = before.trim_start();
        }
        let end = rest[start..].find("}}").ok_or("an action is not closed")? + start;
        let mut action = &rest[start + 2..end];
        if let Some(a) = action.strip_prefix("- ") {
            before = before.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        out.push(Token::Text(before.to_owned()));
        out.push(Token::Action(action.trim().to_owned()));
        rest = &rest[end + 2..];
    }
    out.push(Token::Text(if trim_next {
        rest.trim_start().to_owned()
    } else {
        rest.to_owned()
    }));
    Ok(out)
}

#[derive(Debug)]
enum Node {
    Text(String),
    /// `{{ $v }}`, `{{js $v}}`, `{{ toJson .field }}`
    Print {
        function: Option<String>,
        argument: String,
    },
    /// `{{ range $i, $v := .field }}`
    Range {
        variable: String,
        field: String,
        body: Vec<Node>,
    },
    /// `{{ if .field }}`
    If {
        field: String,
        body: Vec<Node>,
    },
}

fn parse(tokens: &mut impl Iterator<Item = Token>, nested: bool) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        let action = match token {
            Token::Text(text) => {
                nodes.push(Node::Text(text));
                continue;
            }
            Token::Action(action) => action,
        };
        let words: Vec<&str> = action.split_whitespace().collect();
        match words.as_slice() {
            ["end"] if nested => return Ok(nodes),
            ["range", _, variable, ":=", field] => nodes.push(Node::Range {
                variable: (*variable).to_owned(),
                field: field_name(field)?,
                body: parse(tokens, true)?,
            }),
            ["range", variable, ":=", field] => nodes.push(Node::Range {
                variable: (*variable).trim_end_matches(',').to_owned(),
                field: field_name(field)?,
                body: parse(tokens, true)?,
            }),
            ["if", field] => nodes.push(Node::If {
                field: field_name(field)?,
                body: parse(tokens, true)?,
            }),
            [argument] if argument.starts_with('$') => nodes.push(Node::Print {
                function: None,
                argument: (*argument).to_owned(),
            }),
            [function @ ("js" | "toJson"), argument] => nodes.push(Node::Print {
                function: Some((*function).to_owned()),
                argument: (*argument).to_owned(),
            }),
            _ => {
                return Err(format!(
                    "template action {{{{{action}}}}} is not modelled here"
                ));
            }
        }
    }
    if nested {
        Err("a range or if is not ended".into())
    } else {
        Ok(nodes)
    }
}

fn field_name(field: &str) -> Result<String, String> {
    field
        .strip_prefix('.')
        .filter(|f| !f.contains('.'))
        .map(str::to_owned)
        .ok_or_else(|| format!("{field} is not a top-level field"))
}

fn render(
    nodes: &[Node],
    data: &BTreeMap<&'static str, Value>,
    variables: &BTreeMap<String, Value>,
    out: &mut String,
) -> Result<(), String> {
    let field = |name: &str| -> Result<&Value, String> {
        data.get(name)
            .ok_or_else(|| format!("the template uses .{name}, which is not modelled here"))
    };
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Print { function, argument } => {
                let value = if let Some(name) = argument.strip_prefix('.') {
                    field(name)?.clone()
                } else {
                    variables
                        .get(argument)
                        .cloned()
                        .ok_or_else(|| format!("{argument} is not defined"))?
                };
                let text = match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match function.as_deref() {
                    None => out.push_str(&text),
                    Some("js") => out.push_str(&js_escape(&text)),
                    Some(_) => out.push_str(&value.to_string()),
                }
            }
            Node::Range {
                variable,
                field: name,
                body,
            } => {
                for item in field(name)?.as_array().into_iter().flatten() {
                    let mut scope = variables.clone();
                    scope.insert(variable.clone(), item.clone());
                    render(body, data, &scope, out)?;
                }
            }
            Node::If { field: name, body } => {
                let truthy = match field(name)? {
                    Value::Null | Value::Bool(false) => false,
                    Value::Array(items) => !items.is_empty(),
                    Value::String(s) => !s.is_empty(),
                    _ => true,
                };
                if truthy {
                    render(body, data, variables, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Go's `template.JSEscapeString`.
fn js_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '=' => out.push_str("\\u003D"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
