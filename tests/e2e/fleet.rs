//! The fleet under faults, short (`make fleet` runs every scenario, one
//! window each, against the targets; see `ctxgate_e2e::fleet`):
//! steady, one gateway cut off from the RLS network for 10 s, and one
//! gateway killed and restarted, in parallel in one window, with looser
//! bounds than the targets (this machine runs nine Envoys at once here).
//! Redis and RLS faults are measured at process level in every `make test`
//! (`rls_faults.rs`) and in containers by `make fleet`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use ctxgate_e2e::docker;
use ctxgate_e2e::fleet::{self, Bounds, Fault, Images, Plan};

#[test]
fn three_gateways_keep_one_limit_through_a_network_cut_and_a_killed_gateway() {
    let engine = docker::engine();
    let images = Images::build(&engine).unwrap();
    let faults = [
        Fault::None,
        Fault::GatewayDisconnected,
        Fault::GatewayKilled,
    ];
    let results = fleet::run_together(&engine, &images, &faults, Plan::full(), 0).unwrap();
    let bounds = Bounds {
        steady_percent: 2.0,
        fault_percent: 6.0,
        rls_percent: 25.0,
        resync: Duration::from_secs(3),
    };
    let mut failures = Vec::new();
    for m in &results {
        eprintln!("{}", m.line());
        failures.extend(fleet::judge(m, bounds));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
