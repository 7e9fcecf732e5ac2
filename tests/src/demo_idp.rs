//! The demo identity provider, as the e2e suites of the filters behind
//! auth use it: one demo key set per test binary, HS256 tokens (cheap to
//! verify, so tests spend their time on the filter under test), and the
//! auth provider configuration that trusts them.

use std::sync::OnceLock;

use ctxgate_demo::mint::{DEMO_AUDIENCE, DEMO_ISSUER};
use ctxgate_demo::{DemoKeys, MintAlg, MintOptions};
use serde_json::{Value, json};

/// The demo key set, generated once per test binary into a temp dir that
/// is removed again (the keys stay in memory).
pub fn demo_keys() -> &'static DemoKeys {
    static KEYS: OnceLock<DemoKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-keys-")
            .tempdir()
            .unwrap();
        DemoKeys::load_or_generate(&dir.path().join("keys")).unwrap()
    })
}

/// An HS256 token of `subject` at `tenant` with every right on
/// `projects/*`, plus `extra` claims (`rate_limits`, `data_region`, ...).
pub fn hs256_token(tenant: &str, subject: &str, extra: &Value) -> String {
    let opts = MintOptions {
        sub: subject.to_owned(),
        tenant: Some(tenant.to_owned()),
        scopes: vec!["admin:projects/*".to_owned()],
        alg: MintAlg::HS256,
        extra_claims: extra.as_object().cloned().unwrap_or_default(),
        ..MintOptions::default()
    };
    ctxgate_demo::mint(demo_keys(), &opts).unwrap()
}

/// An auth `providers` entry named `demo` that trusts [`hs256_token`]s: the
/// demo HMAC secret inline, the demo issuer and audience.
pub fn hs256_provider() -> Value {
    json!({
        "name": "demo",
        "issuer": DEMO_ISSUER,
        "audiences": [DEMO_AUDIENCE],
        "jwks": {"inline": {"keys": [{
            "kty": "oct",
            "kid": ctxgate_demo::keys::KID_HS256,
            "alg": "HS256",
            "k": demo_keys().hs256_secret_b64(),
        }]}},
    })
}
