//! The setup these suites share: the demo operation map, public paths
//! limited to reading methods, and a caller who may read one project and
//! write one folder of it. Everything else (other projects, siblings,
//! parents, `/v1/admin`) is what the tests try to reach.

use ctxgate_e2e::{EnvoyConfig, Response};
use serde_json::{Value, json};

use crate::support::*;

/// The caller's scopes: `projects/public` and below for reading,
/// `projects/public/drafts` and below for writing.
pub const SCOPES: [&str; 2] = ["read:projects/public", "write:projects/public/drafts"];

/// `x-context-scopes` as the filter forwards [`SCOPES`].
pub const SCOPES_HEADER: &str = "read:projects/public write:projects/public/drafts";

/// The demo plugin configuration (demo operation map, every key of `keys`
/// trusted), with the public paths of this suite: `/.well-known` and below
/// for GET and HEAD, `/health/context` for GET.
///
/// Only fields the previous filter accepted too, so a run against older
/// modules shows what they did with the request, not a config error.
pub fn gate_config(keys: &TestKeys) -> Value {
    let mut config = inline_config(keys);
    config["public_paths"] = json!([
        {"prefix": "/.well-known", "methods": ["GET", "HEAD"]},
        {"exact": "/health/context", "methods": ["GET"]},
    ]);
    config
}

/// A token with [`SCOPES`].
pub fn caller(keys: &TestKeys) -> String {
    keys.scoped(&SCOPES)
}

/// [`Gate::start_with`] with [`gate_config`].
pub fn start(keys: &TestKeys, adjust: impl FnOnce(EnvoyConfig) -> EnvoyConfig) -> Gate {
    Gate::start_with(gate_config(keys), adjust)
}

/// Who answered, for assertion messages and histograms: the upstream
/// (`upstream`), the auth filter (its reason code) or Envoy itself.
pub fn answered_by(response: &Response) -> String {
    if response.header("x-upstream").is_some() {
        return "upstream".to_owned();
    }
    let reason = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|body| body["reason"].as_str().map(str::to_owned));
    match reason {
        Some(reason) => reason,
        None => format!("envoy {}", response.status),
    }
}

/// Asserts that Envoy itself refused the request with `status` (no filter
/// reason, no upstream).
#[track_caller]
pub fn refused_by_envoy(response: &Response, status: u16) {
    assert_eq!(
        (response.status, answered_by(response)),
        (status, format!("envoy {status}")),
        "headers {:?} body {:?}",
        response.headers,
        response.text()
    );
}
