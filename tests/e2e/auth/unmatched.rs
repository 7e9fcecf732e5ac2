//! Requests that match no operation (`unmatched_requests: authenticate`)
//! are still held to the delegation rules, and a case variant of an
//! operation's path is that operation, not an unmatched request.

use ctxgate_demo::MintOptions;
use ctxgate_e2e::Request;
use serde_json::{Value, json};

use crate::support::*;

/// The demo configuration, letting any valid token through on paths that
/// match no operation.
fn authenticating(keys: &TestKeys) -> Value {
    let mut config = inline_config(keys);
    config["unmatched_requests"] = json!("authenticate");
    config
}

#[test]
fn delegation_rules_apply_to_requests_that_match_no_operation() {
    let keys = TestKeys::generate();
    let gate = Gate::start(authenticating(&keys));
    let unmatched = "/v1/reports/weekly";
    let token = |act: Value, rights: Value| {
        let mut extra = serde_json::Map::new();
        extra.insert("act".into(), act);
        if !rights.is_null() {
            extra.insert("delegation_rights".into(), rights);
        }
        keys.token(&MintOptions {
            extra_claims: extra,
            ..with_scopes(&["read:projects/*"])
        })
    };
    let one = json!({"sub": "agent-1"});
    let two = json!({"sub": "agent-1", "act": {"sub": "agent-2"}});
    let rights = |can_delegate: bool, depth: u32| json!({"can_delegate": can_delegate, "max_delegation_depth": depth, "delegatable_scopes": ["read:projects/*"]});

    // Any valid token passes here, its own or delegated within the rules.
    // A token without scopes has an empty scope list: the upstream gets no
    // `x-context-scopes` at all (on both engines: Envoy's module ABI cannot
    // send an empty header), and never the client's own copy.
    let seen = forwarded(
        &gate.send(
            Request::get(unmatched)
                .bearer(&keys.scoped(&[]))
                .header("x-context-scopes", "admin:*"),
        ),
    );
    assert_eq!(seen.header("x-context-scopes"), None);
    assert_eq!(seen.header("x-context-tenant").as_deref(), Some(TENANT));
    let seen = forwarded(&gate.get(unmatched, &token(one.clone(), rights(true, 2))));
    assert_eq!(
        seen.header("x-context-actor-chain").as_deref(),
        Some("agent-1")
    );
    // A subject that may not delegate, or a chain longer than allowed, is
    // refused on unmatched paths as on matched ones.
    for (what, token, reason) in [
        (
            "no delegation rights",
            token(one.clone(), Value::Null),
            "delegation_not_allowed",
        ),
        (
            "can_delegate false",
            token(one.clone(), rights(false, 2)),
            "delegation_not_allowed",
        ),
        (
            "two actors, one allowed",
            token(two.clone(), rights(true, 1)),
            "delegation_too_deep",
        ),
    ] {
        let response = gate.get(unmatched, &token);
        assert_eq!(response.status, 403, "{what}: {}", response.text());
        forbidden(&response, reason);
    }
    assert_eq!(gate.wait_metric("denied.delegation_too_deep", 1), 1);
    assert_eq!(gate.metric("denied.delegation_not_allowed"), 2);
    gate.assert_vm_healthy();
}

#[test]
fn a_case_variant_of_an_operation_path_is_that_operation_not_an_unmatched_request() {
    let keys = TestKeys::generate();
    let gate = Gate::start(authenticating(&keys));
    let token = keys.scoped(&["read:projects/public"]);

    // A case variant of the read operation's path is the read operation:
    // it cannot reach a context the token may not read by passing for "a
    // request that matches no operation". It is refused here, and the
    // upstream never sees it (`denied` checks the reply is the filter's).
    for path in [
        "/V1/CONTEXTS/projects/secret",
        "/V1/contexts/projects/secret",
        "/v1/contexts/projects/secret",
    ] {
        insufficient_scope(&gate.get(path, &token), "read:projects/secret");
    }
    // Spelled as configured or not, the scopes decide, and the upstream
    // receives the literals as configured.
    for path in [
        "/v1/contexts/projects/public",
        "/V1/CONTEXTS/projects/public",
        "/v1/Contexts/projects/public",
    ] {
        let seen = forwarded(&gate.get(path, &token));
        assert_eq!(seen.path(), "/v1/contexts/projects/public", "{path}");
        assert_eq!(seen.header("x-context-operation").as_deref(), Some("read"));
    }
    // A path that really is unmatched still just needs a valid token.
    forwarded(&gate.get("/v2/status", &token));
    assert_eq!(gate.wait_metric("denied.insufficient_scope", 3), 3);
    gate.assert_vm_healthy();
}
