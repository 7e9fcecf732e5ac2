//! Tenants are bound: with more than one issuer, each may assert only the
//! tenants it serves, and a `{tenant}` path segment must be the verified
//! tenant.

use ctxgate_demo::MintOptions;
use ctxgate_e2e::{Envoy, EnvoyConfig, Route, WasmFilter};
use serde_json::{Value, json};

use crate::support::*;

const PARTNER_ISSUER: &str = "https://idp.partner.example";
const PATH: &str = "/v1/contexts/projects/x";

/// A second issuer with keys of its own.
struct Partner {
    keys: TestKeys,
}

impl Partner {
    fn new() -> Partner {
        Partner {
            keys: TestKeys::generate(),
        }
    }

    /// The provider entry, with `binding` (`tenant` or `tenants`) merged in.
    fn provider(&self, binding: Value) -> Value {
        let mut provider = json!({
            "name": "partner",
            "issuer": PARTNER_ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"inline": self.keys.demo_jwks()},
        });
        merge(&mut provider, binding);
        provider
    }

    /// A token of this issuer claiming `tenant` (none: no claim).
    fn token(&self, tenant: Option<&str>) -> String {
        self.keys.token(&MintOptions {
            iss: PARTNER_ISSUER.into(),
            tenant: tenant.map(str::to_owned),
            ..with_scopes(&["read:projects/x"])
        })
    }
}

fn merge(target: &mut Value, fields: Value) {
    for (name, value) in fields.as_object().unwrap() {
        target[name] = value.clone();
    }
}

/// The demo configuration with the demo provider bound by `demo` and the
/// partner provider.
fn two_providers(keys: &TestKeys, demo: Value, partner: Value) -> Value {
    let mut demo_provider = provider(json!({ "inline": keys.jwks() }));
    merge(&mut demo_provider, demo);
    let mut config = inline_config(keys);
    config["providers"] = json!([demo_provider, partner]);
    config
}

/// A demo-issuer token claiming `tenant`.
fn demo_token(keys: &TestKeys, tenant: &str) -> String {
    keys.token(&MintOptions {
        tenant: Some(tenant.into()),
        ..with_scopes(&["read:projects/x"])
    })
}

#[track_caller]
fn tenant_of(gate: &Gate, token: &str) -> String {
    forwarded(&gate.get(PATH, token))
        .header("x-context-tenant")
        .unwrap()
}

#[test]
fn an_issuer_pinned_to_a_tenant_refuses_tokens_claiming_another() {
    let keys = TestKeys::generate();
    let partner = Partner::new();
    let gate = Gate::start(two_providers(
        &keys,
        json!({"tenant": TENANT}),
        partner.provider(json!({"tenant": "globex"})),
    ));
    assert_eq!(tenant_of(&gate, &demo_token(&keys, TENANT)), TENANT);
    assert_eq!(tenant_of(&gate, &partner.token(None)), "globex");
    assert_eq!(tenant_of(&gate, &partner.token(Some("globex"))), "globex");
    // A signature from one issuer never speaks for another's tenant.
    for token in [demo_token(&keys, "globex"), partner.token(Some(TENANT))] {
        let refusal = invalid_token(&gate.get(PATH, &token), "tenant_not_allowed");
        assert_eq!(
            refusal.body["message"],
            "the token claims a tenant its issuer may not assert"
        );
    }
    assert_eq!(gate.wait_metric("denied.tenant_not_allowed", 2), 2);
    gate.assert_vm_healthy();
}

#[test]
fn each_issuer_asserts_only_the_tenants_it_lists() {
    let keys = TestKeys::generate();
    let partner = Partner::new();
    let gate = Gate::start(two_providers(
        &keys,
        json!({"tenants": [TENANT, "initech"]}),
        partner.provider(json!({"tenants": ["globex"]})),
    ));
    assert_eq!(tenant_of(&gate, &demo_token(&keys, TENANT)), TENANT);
    assert_eq!(tenant_of(&gate, &demo_token(&keys, "initech")), "initech");
    assert_eq!(tenant_of(&gate, &partner.token(Some("globex"))), "globex");
    for token in [
        demo_token(&keys, "globex"),
        demo_token(&keys, "umbrella"),
        partner.token(Some(TENANT)),
    ] {
        invalid_token(&gate.get(PATH, &token), "tenant_not_allowed");
    }
    // A listing issuer pins nothing: a token without a tenant names none.
    invalid_token(&gate.get(PATH, &partner.token(None)), "missing_claim");
    assert_eq!(gate.wait_metric("denied.tenant_not_allowed", 3), 3);
    gate.assert_vm_healthy();
}

#[test]
fn two_issuers_without_a_tenant_binding_refuse_to_start_and_name_the_field() {
    let keys = TestKeys::generate();
    let partner = Partner::new();
    let cases = [
        (
            two_providers(&keys, json!({}), partner.provider(json!({}))),
            "providers[0].tenants",
        ),
        (
            two_providers(
                &keys,
                json!({"tenant": TENANT}),
                partner.provider(json!({})),
            ),
            "providers[1].tenants",
        ),
    ];
    for (config, field) in cases {
        let log = Envoy::start_expect_failure(
            &EnvoyConfig::new()
                .filter(WasmFilter::single("auth", config))
                .route(Route::prefix("/").direct(200, "unreachable")),
        );
        let expected = format!(
            "invalid configuration: auth.{field}: with more than one provider, each must list the \
             tenants it may assert (tenants) or pin one (tenant)"
        );
        assert!(log.contains(&expected), "{expected:?} not in:\n{log}");
    }
}

#[test]
fn a_tenant_segment_of_the_path_must_name_the_verified_tenant() {
    let keys = TestKeys::generate();
    let mut config = inline_config(&keys);
    config["operations"].as_array_mut().unwrap().push(json!({
        "name": "tenant_read", "methods": ["GET"],
        "path": "/v1/tenants/{tenant}/contexts/{context}", "action": "read",
    }));
    let gate = Gate::start(config);
    let token = keys.scoped(&["read:projects/*"]);

    let seen = forwarded(&gate.get("/v1/tenants/acme/contexts/projects/x", &token));
    assert_eq!(seen.path(), "/v1/tenants/acme/contexts/projects/x");
    assert_eq!(
        seen.header("x-context-operation").as_deref(),
        Some("tenant_read")
    );
    assert_eq!(seen.header("x-context-tenant").as_deref(), Some(TENANT));
    // Another tenant's path, however it is spelled.
    for path in [
        "/v1/tenants/globex/contexts/projects/x",
        "/V1/Tenants/globex/contexts/projects/x",
        "/v1/tenants/acme/../globex/contexts/projects/x",
    ] {
        let refusal = forbidden(&gate.get(path, &token), "tenant_mismatch");
        assert_eq!(
            refusal.body["message"],
            "the path names another tenant than the token's"
        );
    }
    assert_eq!(gate.wait_metric("denied.tenant_mismatch", 3), 3);
    gate.assert_vm_healthy();
}
