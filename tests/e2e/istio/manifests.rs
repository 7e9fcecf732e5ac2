//! The objects of `istio/`, and what Istio makes of some of their fields.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Number, Value};

/// One object of one YAML document of a manifest file.
#[derive(Clone)]
pub struct Object {
    /// `istio/41-context-api-virtualservice.yaml`
    pub file: String,
    /// 1-based document number in the file.
    pub document: usize,
    pub value: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    /// The API group (`networking.istio.io`; empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version()
            .split_once('/')
            .map_or("", |(group, _)| group)
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    pub fn spec(&self) -> &Value {
        &self.value["spec"]
    }

    pub fn is_istio(&self) -> bool {
        self.group().ends_with(".istio.io")
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}): {} {}/{}",
            self.file,
            self.document,
            self.kind(),
            self.namespace(),
            self.name()
        )
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Every object of every `*.yaml` / `*.yml` file directly in `dir`, in file
/// order (the order `kubectl apply -f istio/` applies them).
pub fn load(dir: &Path) -> Result<Vec<Object>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let root = repo_root();
    let mut objects = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
        let documents = super::yaml::documents(&text).map_err(|e| format!("{file}: {e}"))?;
        if documents.is_empty() {
            return Err(format!("{file}: no object"));
        }
        for (i, value) in documents.into_iter().enumerate() {
            objects.push(Object {
                file: file.clone(),
                document: i + 1,
                value,
            });
        }
    }
    Ok(objects)
}

/// The JSON a WasmPlugin's filter receives for its `pluginConfig`.
///
/// `pluginConfig` is a `google.protobuf.Struct`: every number is a double,
/// and Istio hands the plugin the Struct's canonical JSON, in which a whole
/// number below 1e21 is written without a fraction (`300`, not `300.0`).
/// So an integer field survives the trip up to 2^53, and a fraction or a
/// huge number reaches the filter as what the Struct made of it.
pub fn plugin_config_json(config: &Value) -> Value {
    match config {
        Value::Number(n) => {
            let double = n.as_f64().unwrap_or(f64::NAN);
            let whole = double.fract() == 0.0 && double.abs() < 1e21;
            if whole && double.abs() <= 9_007_199_254_740_992.0 {
                // Exact in an f64, so exact as an i64.
                Value::from(double as i64)
            } else {
                Number::from_f64(double).map_or(Value::Null, Value::Number)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(plugin_config_json).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), plugin_config_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// An Envoy cluster name as Istio builds it: `outbound|443||idp.example.com`,
/// `outbound|8080|high-memory|context-api.ctxgate.svc.cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioCluster {
    pub port: u16,
    pub subset: String,
    pub host: String,
}

impl IstioCluster {
    pub fn parse(name: &str) -> Result<IstioCluster, String> {
        let parts: Vec<&str> = name.split('|').collect();
        match parts.as_slice() {
            ["outbound", port, subset, host] if !host.is_empty() => Ok(IstioCluster {
                port: port
                    .parse()
                    .map_err(|_| format!("{name:?}: {port:?} is not a port"))?,
                subset: (*subset).to_owned(),
                host: (*host).to_owned(),
            }),
            _ => Err(format!(
                "{name:?} is not an Istio outbound cluster (outbound|<port>|<subset>|<host>)"
            )),
        }
    }
}
