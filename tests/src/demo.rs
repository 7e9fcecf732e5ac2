//! The demo gateway's observability settings (envoy/demo.yaml): its
//! `stats_config`, and its HTTP connection manager's `access_log` and
//! `tracing`, for suites whose metric names, log fields and span tags must
//! match the demo's.

use serde_json::Value;

use crate::{repo_root, yaml};

/// envoy/demo.yaml, as JSON.
pub fn demo() -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoy/demo.yaml")).unwrap();
    yaml::documents(&text).unwrap().remove(0)
}

pub fn demo_stats_config() -> Value {
    demo()["stats_config"].clone()
}

/// A field of the demo listener's HTTP connection manager.
pub fn demo_hcm_field(name: &str) -> Value {
    demo()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        [name]
        .clone()
}
