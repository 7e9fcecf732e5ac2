//! Claims that cannot be read one way only make the token invalid.

use ctxgate_demo::MintOptions;
use ctxgate_e2e::Response;
use serde_json::{Value, json};

use crate::support::*;

/// A 401 `invalid_token` refusal for `invalid_scopes`, the challenge's
/// `error_description` the same as the body's message.
#[track_caller]
fn invalid_scopes(response: &Response) {
    invalid_token(response, "invalid_scopes");
}

#[test]
fn scopes_with_whitespace_percent_or_control_characters_invalidate_the_token() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let token = |scopes: Value| {
        let mut extra = serde_json::Map::new();
        extra.insert("context_scopes".into(), scopes);
        keys.token(&MintOptions {
            extra_claims: extra,
            ..MintOptions::default()
        })
    };
    forwarded(&gate.get(path, &token(json!(["read:projects/x"]))));
    forwarded(&gate.get(path, &token(json!("read:projects/x read:projects/y"))));

    // Each token also holds the scope the request needs: an ambiguous
    // scope next to it is not skipped, it makes the whole token invalid.
    let ambiguous = [
        json!(["read:projects/x", "read:projects/y z"]),
        json!(["read:projects/x", "read:projects/y\tz"]),
        json!(["read:projects/x", "read:projects%2Fsecret"]),
        json!(["read:projects/x", "read:projects/%2e%2e/secret"]),
        json!(["read:projects/x", "read:projects/y\u{7}"]),
        json!(["read:projects/x", "read:projects/y\u{0}"]),
        json!(["read:projects/x", "read:projects/y\u{85}"]),
        json!("read:projects/x read:projects/y\u{b}z"),
    ];
    for scopes in &ambiguous {
        let response = gate.get(path, &token(scopes.clone()));
        assert_eq!(response.status, 401, "{scopes}: {}", response.text());
        invalid_scopes(&response);
    }
    // Delegatable scopes are held to the same rule.
    let mut extra = serde_json::Map::new();
    extra.insert("act".into(), json!({"sub": "agent-1"}));
    extra.insert(
        "delegation_rights".into(),
        json!({"can_delegate": true, "max_delegation_depth": 1, "delegatable_scopes": ["read:projects%2Fx"]}),
    );
    let delegated = keys.token(&MintOptions {
        extra_claims: extra,
        ..with_scopes(&["read:projects/x"])
    });
    invalid_scopes(&gate.get(path, &delegated));
    assert_eq!(
        gate.wait_metric("denied.invalid_scopes", 9),
        ambiguous.len() as u64 + 1
    );
    gate.assert_vm_healthy();
}
