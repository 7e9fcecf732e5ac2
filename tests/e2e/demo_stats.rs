//! The demo gateway's `stats_config` (envoy/demo.yaml), for suites whose
//! metric names and labels must match the demo's. Include with
//! `#[path]` beside the `yaml` module.

use ctxgate_e2e::repo_root;
use serde_json::Value;

use crate::yaml;

pub fn demo_stats_config() -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoy/demo.yaml")).unwrap();
    yaml::documents(&text).unwrap().remove(0)["stats_config"].clone()
}
