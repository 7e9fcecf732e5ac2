//! Writes the seed corpora: `corpus/<target>/seed-<name>`.
//!
//! Run after changing a seed (the outputs are committed; signatures are
//! randomized, so tokens differ from run to run):
//!
//!     cargo test --manifest-path fuzz/Cargo.toml --test seeds -- --ignored
//!
//! Seeds are the inputs this round of hardening is about (path parameters,
//! encoded and fullwidth dots, double encoding, repeated parameters under
//! other spellings, method overrides, hostile token headers), valid
//! tokens signed by the fixture keys so that mutations explore near-valid
//! tokens, the real plugin configurations, and shared-data records of
//! every kind written by the public APIs, with damaged variants.

use std::path::PathBuf;

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use ctxgate_core::auth::cache::digest;
use ctxgate_core::auth::jwks_sync::JwksSync;
use ctxgate_core::auth::{Auth, Outcome, RequestEnv};
use ctxgate_core::breaker::Breakers;
use ctxgate_core::bucket::{BucketTable, GlobalAccounting, GlobalView, LimitSpec, MILLI, limit_id};
use ctxgate_core::http::RequestHead;
use ctxgate_core::ratelimit::adaptive::Adaptive;
use ctxgate_core::ratelimit::config::AdaptiveConfig;
use ctxgate_core::shared::{MemoryStore, SharedStore, load_secret};

use ctxgate_fuzz::fixtures::{
    self, AUDIENCE, HMAC_SECRET, ISSUER, NOW, SECRET, claims, es256_key, forge, rsa_key,
};

struct Seeds {
    target: &'static str,
    written: usize,
}

impl Seeds {
    fn new(target: &'static str) -> Seeds {
        let dir = Self::dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        // Regenerate: drop the old seeds, keep what libFuzzer added.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        Seeds { target, written: 0 }
    }

    fn dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
    }

    fn add(&mut self, name: &str, data: impl AsRef<[u8]>) {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = Self::dir(self.target).join(format!("seed-{name}"));
        assert!(!path.exists(), "two seeds named {name}");
        std::fs::write(path, data).unwrap();
        self.written += 1;
    }
}

#[test]
#[ignore = "writes corpus/: run by hand after changing a seed"]
fn write_seeds() {
    let tokens = tokens();
    path_seeds();
    query_seeds();
    operation_seeds();
    let mut seeds = Seeds::new("token_inspect");
    for (name, token) in &tokens {
        seeds.add(name, token);
    }
    let mut seeds = Seeds::new("token_verify");
    for (name, token) in &tokens {
        seeds.add(name, token);
    }
    auth_request_seeds(&tokens);
    config_seeds();
    record_seeds();
    mcp_request_seeds();
    mcp_listing_seeds();
}

#[test]
#[ignore = "writes corpus/: run by hand after changing an MCP seed"]
fn write_mcp_seeds() {
    mcp_request_seeds();
    mcp_listing_seeds();
}

fn path_seeds() {
    let mut s = Seeds::new("path");
    for (name, raw) in [
        ("root", "/"),
        ("plain", "/v1/contexts/projects/engineering"),
        ("slashes-and-dots", "//projects/./engineering//"),
        ("dot-dot", "/projects/secret/../public"),
        ("escapes-root", "projects/../../etc"),
        ("encoded-dot-dot", "%2e%2e/x"),
        ("encoded-dot-dot-upper", "/public/%2E%2E/secret"),
        ("encoded-slashes", "/projects%2Fengineering%2fsecret"),
        ("encoded-climb", "projects/eng%2F..%2F..%2Fhr"),
        ("double-encoded-slash", "/projects%252Fsecret"),
        ("double-encoded-dot", "/public/%252e%252e/secret"),
        ("encoded-backslash", "projects%5Csecret"),
        ("backslash", "projects\\secret"),
        ("nul", "a%00b"),
        ("invalid-utf8", "a%ff"),
        ("bad-escape", "a%zz"),
        ("truncated-escape", "a%2"),
        ("dot-dot-semicolon", "/public/..;/secret"),
        ("dot-dot-encoded-semicolon", "/public/..%3b/secret"),
        ("dot-dot-encoded-semicolon-upper", "/public/..%3B/secret"),
        ("jsessionid", "/public;jsessionid=1/x"),
        ("parameters-everywhere", "/a;b/..;/c"),
        ("fullwidth-dots", "/public/\u{FF0E}\u{FF0E}/secret"),
        (
            "fullwidth-dots-encoded",
            "/public/%EF%BC%8E%EF%BC%8E/secret",
        ),
        ("fullwidth-slash", "/a\u{FF0F}b"),
        ("division-slash", "/a\u{2215}b"),
        ("two-dot-leader", "/a/\u{2025}/b"),
        ("small-semicolon", "/a\u{FE54}b"),
        ("non-ascii", "/caf%C3%A9/\u{65e5}\u{672c}"),
        ("reserved-encoded", "/a%20b/c%3Fd/%23e"),
        ("sub-delims", "/a+b/c=d/e:f@g"),
        ("tilde", "/x/%7Eme"),
        ("mixed-case", "/V1/Contexts/Projects"),
        ("dotted-capital-i", "/\u{130}stanbul/\u{23A}"),
        ("query-and-fragment", "/a/b?x=1#frag"),
    ] {
        s.add(name, raw);
    }
    s.add("too-deep", vec!["a"; 65].join("/"));
    s.add("longest", format!("/{}", "a".repeat(2047)));
    s.add("too-long", format!("/{}", "a".repeat(2048)));
    s.add("longest-spaces", format!("/{}", " ".repeat(2047)));
    s.add("longest-without-slash", "b".repeat(2048));
    s.add("lowercase-grows", format!("/{}", "\u{23A}".repeat(1000)));
}

fn query_seeds() {
    let mut s = Seeds::new("query");
    for (name, raw) in [
        ("repeated-context", "context=a&context=b"),
        ("repeated-context-encoded-key", "context=a&%63ontext=b"),
        ("repeated-context-capitalized", "context=a&Context=b"),
        ("repeated-context-semicolon", "context=a;context=b"),
        ("repeated-context-bare", "context=a&CONTEXT"),
        ("fully-encoded-key", "%63%6F%6E%74%65%78%74=a&context=b"),
        ("encoded-value", "x=1&Context=a%2Fb"),
        ("plus-and-escapes", "a=x+y%2By%2520"),
        ("plus-in-key", "a+b=1"),
        ("bad-escape", "a=%zz"),
        ("truncated-escape-key", "a%2=1"),
        ("double-encoded-key", "%2563ontext=1"),
        ("method-override", "_method=DELETE"),
        ("method-override-repeated", "_METHOD=delete&_method=GET"),
        (
            "canonical-mix",
            "b=1;a=x+y&&c&d=%3D%26%3B%2B%23&e=caf%C3%A9&f=a/b?c",
        ),
        ("encoded-equals-in-key", "k%3Dx=1"),
        ("context-climb", "context=projects%2F..%2Fsecret"),
        ("context-dots", "context=%2e%2e"),
        ("context-fullwidth", "context=%EF%BC%8E%EF%BC%8E"),
        ("context-semicolon", "context=..%3b"),
        ("access-token", "access_token=a.b.c&x=1"),
        ("empty-key", "=x"),
        ("separators-only", "&&;;"),
    ] {
        s.add(name, raw);
    }
    s.add("many-pairs", "a&".repeat(257));
    s.add("spaces-near-limit", "+".repeat(3000));
    s.add("longest", format!("a={}", "b".repeat(8190)));
}

fn operation_seeds() {
    let mut s = Seeds::new("operation");
    for (name, input) in [
        ("read", "GET\n/v1/contexts/projects/eng"),
        ("head", "HEAD\n/v1/contexts/a"),
        ("patch", "PATCH\n/v1/contexts/a"),
        ("delete", "DELETE\n/v1/contexts/a"),
        (
            "query-context",
            "POST\n/v1/query?x=1&context=projects%2Feng",
        ),
        ("graph-context", "POST\n/v1/graph/traverse?context=a/b"),
        ("dots-and-case", "GET\n/v1//contexts/./Projects/x/../Eng"),
        ("climb-out", "GET\n/v1/contexts/../admin/x"),
        ("escapes-root", "GET\n/../x"),
        ("repeated-context", "POST\n/v1/query?context=a&context=b"),
        (
            "repeated-context-encoded",
            "POST\n/v1/query?context=a&%63ontext=b",
        ),
        ("double-encoded-context", "POST\n/v1/query?context=a%252Fb"),
        ("context-upper", "POST\n/v1/query?CONTEXT=Projects%2FEng"),
        ("literals-upper", "GET\n/V1/Contexts/Projects/ENG"),
        ("encoded-context", "GET\n/v1/contexts/a%20b/c%3Fd"),
        ("dot-dot-semicolon", "GET\n/v1/contexts/public/..;/secret"),
        ("fullwidth-dots", "GET\n/v1/contexts/\u{FF0E}\u{FF0E}/x"),
        (
            "fullwidth-dots-query",
            "POST\n/v1/query?context=%EF%BC%8E%EF%BC%8E",
        ),
        ("semicolon-query", "POST\n/v1/query?context=..%3b"),
        ("dotted-capital-i", "GET\n/v1/contexts/\u{130}"),
        (
            "method-override",
            "POST\n/v1/query?_method=DELETE&context=a",
        ),
        ("jsessionid", "GET\n/v1/contexts/projects;jsessionid=1"),
        ("no-method", "/v1/contexts/a"),
    ] {
        s.add(name, input);
    }
    s.add(
        "lowercase-grows",
        format!("GET\n/v1/contexts/{}", "\u{23A}".repeat(1000)),
    );
}

/// Signed tokens (valid and not) and forged ones.
fn tokens() -> Vec<(String, String)> {
    let es = es256_key();
    let hs256 = HS256Key::from_bytes(HMAC_SECRET).with_key_id("hs");
    let hs384 = HS384Key::from_bytes(HMAC_SECRET).with_key_id("hs");
    let hs512 = HS512Key::from_bytes(HMAC_SECRET).with_key_id("hs");
    let rs = rsa_key();
    let ps = PS256KeyPair::from_der(&rs.to_der().unwrap())
        .unwrap()
        .with_key_id("rsa");
    let rs512 = RS512KeyPair::from_der(&rs.to_der().unwrap()).unwrap();
    let no_kid = ES256KeyPair::from_bytes(&es.to_bytes()).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, token: String| out.push((name.to_owned(), token));
    add("es256", es.sign(claims(json!({}))).unwrap());
    add("es256-no-kid", no_kid.sign(claims(json!({}))).unwrap());
    add("hs256", hs256.authenticate(claims(json!({}))).unwrap());
    add("hs384", hs384.authenticate(claims(json!({}))).unwrap());
    add("hs512", hs512.authenticate(claims(json!({}))).unwrap());
    add("rs256", rs.sign(claims(json!({}))).unwrap());
    add("rs512-no-kid", rs512.sign(claims(json!({}))).unwrap());
    add("ps256", ps.sign(claims(json!({}))).unwrap());
    for (name, changes) in [
        ("wrong-issuer", json!({"iss": "https://evil.example"})),
        ("no-issuer", json!({"iss": null})),
        ("wrong-audience", json!({"aud": "other-api"})),
        ("audience-list", json!({"aud": ["other-api", AUDIENCE]})),
        ("expired", json!({"exp": NOW - 3600})),
        ("no-expiry", json!({"exp": null})),
        ("not-yet-valid", json!({"nbf": NOW + 3600})),
        ("huge-expiry", json!({"exp": 1e20})),
        ("expiry-string", json!({"exp": "tomorrow"})),
        ("negative-issued-at", json!({"iat": -1})),
        (
            "scopes-with-spaces",
            json!({"context_scopes": "read:projects/a read:projects/b"}),
        ),
        (
            "scope-holding-a-space",
            json!({"context_scopes": ["read:projects/a b"]}),
        ),
        (
            "scope-encoded-slash",
            json!({"context_scopes": ["read:projects%2Fsecret"]}),
        ),
        (
            "scope-dot-dot",
            json!({"context_scopes": ["read:projects/../secret"]}),
        ),
        (
            "scope-semicolon",
            json!({"context_scopes": ["read:projects/a;b"]}),
        ),
        ("other-tenant", json!({"tenant_id": "globex"})),
        (
            "delegated",
            json!({"act": {"sub": "agent"}, "may_act": {"sub": "agent"}}),
        ),
        ("premium-tier", json!({"rate_limits": {"tier": "premium"}})),
    ] {
        add(&format!("es256-{name}"), es.sign(claims(changes)).unwrap());
    }
    // The classic confusion: HMAC keyed with the RSA public key, kid rsa.
    let pem = rs.public_key().to_pem().unwrap();
    add(
        "hs256-keyed-with-rsa-public-key",
        HS256Key::from_bytes(pem.as_bytes())
            .with_key_id("rsa")
            .authenticate(claims(json!({})))
            .unwrap(),
    );
    add(
        "hs256-wrong-secret",
        HS256Key::from_bytes(&[7; 32])
            .with_key_id("hs")
            .authenticate(claims(json!({})))
            .unwrap(),
    );
    let payload = serde_json::to_value(claims(json!({})).custom).unwrap();
    for (name, header) in [
        ("alg-none", json!({"alg": "none"})),
        ("alg-none-upper", json!({"alg": "NONE", "kid": "es"})),
        ("alg-unknown", json!({"alg": "ES256K"})),
        (
            "crit",
            json!({"alg": "ES256", "kid": "es", "crit": ["exp"]}),
        ),
        (
            "jku",
            json!({"alg": "RS256", "jku": "https://evil.example/jwks.json"}),
        ),
        (
            "x5u",
            json!({"alg": "RS256", "x5u": "https://evil.example/cert.pem"}),
        ),
        ("jwk", json!({"alg": "ES256", "jwk": {"kty": "EC"}})),
        ("x5c", json!({"alg": "RS256", "x5c": ["MIIB"]})),
        ("nested-jwt", json!({"alg": "ES256", "cty": "JWT"})),
        ("kid-number", json!({"alg": "ES256", "kid": 7})),
        ("unknown-kid", json!({"alg": "ES256", "kid": "nope"})),
    ] {
        add(&format!("forged-{name}"), forge(&header, &payload));
    }
    // Headers whose JSON reads differently to different parsers.
    let b64 = fixtures::b64;
    let raw = |header: &str| {
        format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(payload.to_string().as_bytes()),
            b64(b"sig")
        )
    };
    add(
        "forged-duplicate-alg",
        raw(r#"{"alg":"ES256","alg":"none"}"#),
    );
    add(
        "forged-escaped-crit",
        raw(r#"{"alg":"ES256","\u0063rit":["exp"]}"#),
    );
    add(
        "forged-escaped-alg",
        raw(r#"{"\u0061lg":"HS256","kid":"hs"}"#),
    );
    for name in ["empty", "one-part", "four-parts", "empty-part", "space"] {
        let token = match name {
            "empty" => String::new(),
            "one-part" => "abc".into(),
            "four-parts" => "a.b.c.d".into(),
            "empty-part" => "e30..c2ln".into(),
            _ => "e30.e30.c2ln d".into(),
        };
        add(&format!("malformed-{name}"), token);
    }
    out
}

fn auth_request_seeds(tokens: &[(String, String)]) {
    let mut s = Seeds::new("auth_request");
    let token = |name: &str| {
        tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let bearer = |name: &str| format!("authorization: Bearer {}", token(name));
    let valid = bearer("es256");
    let requests: Vec<(&str, String)> = vec![
        ("read", format!("GET\n/v1/contexts/projects/engineering/notes\n{valid}")),
        ("read-hs256", format!("GET\n/v1/contexts/projects/a\n{}", bearer("hs256"))),
        ("read-rs256", format!("GET\n/v1/contexts/projects/a\n{}", bearer("rs256"))),
        ("read-ps256", format!("HEAD\n/v1/contexts/projects/a\n{}", bearer("ps256"))),
        ("write", format!("PUT\n/v1/contexts/projects/engineering\n{valid}")),
        ("write-refused", format!("PUT\n/v1/contexts/projects/marketing\n{valid}")),
        ("delete-refused", format!("DELETE\n/v1/contexts/projects/a\n{valid}")),
        ("no-token", "GET\n/v1/contexts/projects/a".into()),
        ("public", "GET\n/health/context".into()),
        ("public-wrong-method", "POST\n/health/context".into()),
        ("public-prefix", "GET\n/.well-known/jwks.json".into()),
        ("public-prefix-messy", "GET\n/.well-known//./jwks.json?x=%41".into()),
        ("public-escape-semicolon", "GET\n/.well-known/..;/v1/contexts/secret".into()),
        ("public-escape-encoded-semicolon", "GET\n/.well-known/..%3B/v1/contexts/secret".into()),
        ("public-escape-encoded-dots", "GET\n/.well-known/%2e%2e/v1/contexts/secret".into()),
        ("public-escape-fullwidth", "GET\n/.well-known/\u{FF0E}\u{FF0E}/v1/contexts/secret".into()),
        ("public-escape-fullwidth-encoded", "GET\n/.well-known/%EF%BC%8E%EF%BC%8E/v1/contexts/secret".into()),
        ("public-jsessionid", "GET\n/health/context;jsessionid=1".into()),
        ("preflight", "OPTIONS\n/v1/contexts/x\norigin: https://app.example\naccess-control-request-method: PUT".into()),
        ("preflight-with-body", "OPTIONS\n/v1/contexts/x\norigin: https://app.example\naccess-control-request-method: PUT\ncontent-length: 5".into()),
        ("preflight-messy-path", "OPTIONS\n/v1//contexts/./x\norigin: a\naccess-control-request-method: GET".into()),
        ("semicolon-climb", format!("GET\n/v1/contexts/projects/public/..;/secret\n{valid}")),
        ("encoded-climb", format!("GET\n/v1/contexts/projects/public%2F..%2Fsecret\n{valid}")),
        ("messy-path", format!("GET\n/V1/Contexts/./Projects/x/../Public/Doc\n{valid}")),
        ("double-encoded", format!("GET\n/v1/contexts/projects%252Fsecret\n{valid}")),
        ("fullwidth-dots", format!("GET\n/v1/contexts/projects/\u{FF0E}\u{FF0E}/secret\n{valid}")),
        ("encoded-fullwidth-dots", format!("GET\n/v1/contexts/projects/%EF%BC%8E%EF%BC%8E/secret\n{valid}")),
        ("query-context", format!("POST\n/v1/graph/traverse?context=projects/a\n{valid}")),
        ("query-context-repeated-encoded", format!("POST\n/v1/graph/traverse?context=projects/a&%63ontext=projects/secret\n{valid}")),
        ("query-context-repeated-capitalized", format!("POST\n/v1/graph/traverse?context=projects/a&Context=projects/secret\n{valid}")),
        ("query-context-repeated-semicolon", format!("POST\n/v1/graph/traverse?context=projects/a;context=projects/secret\n{valid}")),
        ("query-context-upper", format!("POST\n/v1/graph/traverse?CONTEXT=Projects%2FA&x=a+b\n{valid}")),
        ("method-override-param", format!("POST\n/v1/contexts/projects/a?_method=DELETE\n{valid}")),
        ("method-override-param-upper", format!("POST\n/v1/contexts/projects/a?_METHOD=DELETE\n{valid}")),
        ("method-override-same", format!("GET\n/v1/contexts/projects/a?_method=GET\n{valid}")),
        ("method-override-header", format!("POST\n/v1/contexts/projects/engineering\nx-http-method-override: DELETE\n{valid}")),
        ("method-override-header-joined", format!("POST\n/v1/contexts/projects/engineering\nx-http-method: POST, DELETE\n{valid}")),
        ("token-in-query", format!("GET\n/v1/contexts/projects/a?a=1&access_token={}&b=2", token("es256"))),
        ("token-in-cookie", format!("GET\n/v1/contexts/projects/a\ncookie: theme=dark; session={}", token("es256"))),
        ("two-tokens", format!("GET\n/v1/contexts/projects/a?access_token={}\n{valid}", token("hs256"))),
        ("same-token-twice", format!("GET\n/v1/contexts/projects/a?access_token={}\n{valid}", token("es256"))),
        ("joined-authorization", format!("GET\n/v1/contexts/projects/a\nauthorization: Bearer {}, Bearer {}", token("es256"), token("hs256"))),
        ("spoofed-identity", format!("GET\n/v1/contexts/projects/a\nx-context-tenant: evil\nx-context-subject: root\n{valid}")),
        ("spoofed-identity-public", "GET\n/health/context\nx-context-tenant: evil\nx-context-scopes: admin:*".into()),
        ("tenant-path", format!("GET\n/v1/tenants/acme/contexts/projects/a\n{valid}")),
        ("tenant-path-other", format!("GET\n/v1/tenants/globex/contexts/projects/a\n{valid}")),
        ("tenant-path-case", format!("GET\n/v1/tenants/ACME/contexts/projects/a\n{valid}")),
        ("forwarded-for", format!("GET\n/v1/contexts/projects/a\nx-forwarded-for: 1.2.3.4, 5.6.7.8\n{}", bearer("hs256-wrong-secret"))),
    ];
    for (name, request) in requests {
        s.add(name, request);
    }
    for (name, _) in tokens {
        if name != "es256" {
            s.add(
                &format!("token-{name}"),
                format!("GET\n/v1/contexts/projects/a\n{}", bearer(name)),
            );
        }
    }
}

/// The JSON blocks of `envoy/demo.yaml` (`value: |` block scalars).
fn demo_configs() -> Vec<String> {
    let yaml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo.yaml"),
    )
    .unwrap();
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "value: |" {
            continue;
        }
        let indent = |l: &str| l.len() - l.trim_start().len();
        let Some(first) = lines.get(i + 1) else {
            continue;
        };
        let depth = indent(first);
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) >= depth)
            .map(|l| l.get(depth..).unwrap_or(""))
            .collect();
        let text = block.join("\n");
        serde_json::from_str::<Value>(&text).unwrap();
        out.push(text);
    }
    out
}

fn config_seeds() {
    let mut s = Seeds::new("config");
    let demo = demo_configs();
    assert_eq!(demo.len(), 4, "demo.yaml has four plugin configurations");
    for (name, config) in [
        "demo-auth",
        "demo-ratelimit",
        "demo-tagging",
        "demo-breaker",
    ]
    .iter()
    .zip(&demo)
    {
        s.add(name, config);
    }
    let configs = [
        ("auth-fixture", fixtures::auth_config()),
        (
            "auth-remote",
            json!({"providers": [{"name": "idp", "issuer": ISSUER, "jwks": {"remote": {
                "cluster": "idp", "path": "/jwks", "authority": "idp.example", "timeout_ms": 1000,
                "refresh_interval_seconds": 60, "retry_interval_seconds": 1,
                "min_refresh_interval_seconds": 5, "allow_symmetric_keys": true}}}]}),
        ),
        (
            "auth-lenient",
            json!({
                "providers": [
                    {"name": "a", "issuer": "https://a", "tenants": ["acme"], "algorithms": ["ES256"],
                     "max_lifetime_seconds": 3600, "require_expiration": false, "jwks": {"inline": {"keys": [fixtures::es256_jwk()]}}},
                    {"name": "b", "issuer": "https://b", "tenant": "globex", "scopes_claim": "scope",
                     "tenant_claim": "org", "jwks": {"inline": {"keys": [fixtures::hmac_jwk()]}}}
                ],
                "path_parameters": "allow", "unmatched_requests": "authenticate",
                "allow_cors_preflight": false, "forward_token": true, "max_token_bytes": 100,
                "method_override_headers": [], "method_override_params": ["_method", "method"],
                "filter_state_claims": ["data_region"], "max_delegation_depth": 0,
                "cache": {"max_entries": 0, "shared_slots": 0, "failure_ttl_seconds": 0, "max_ttl_seconds": 0},
                "verification_throttle": {"failures": 0},
                "identity_headers": {"tenant": "x-tenant"}
            }),
        ),
        (
            "ratelimit-tests",
            json!({
                "tiers": {
                    "anonymous": [{"name": "per_minute", "limit": 5, "window_seconds": 60}],
                    "standard": [{"name": "per_minute", "limit": 100, "window_seconds": 60}],
                    "premium": [{"name": "per_minute", "limit": 1000, "window_seconds": 60}]
                },
                "slots": 64,
                "depth_bands": [{"above": 1, "multiplier": 3}],
                "header_factor": {"header": "x-context-fanout", "bands": [{"above": 100, "multiplier": 2}]}
            }),
        ),
        (
            "tagging-tests",
            json!({
                "rules": [
                    {"name": "large", "when": {"size": {"above": 1048576}}, "set": {"type": "large-context"}},
                    {"name": "graph", "when": {"operation": ["graph_traversal"]}, "set": {"type": "graph", "priority": "high"}},
                    {"name": "premium", "when": {"claim": {"name": "tier", "exact": "premium"}}, "set": {"priority": "high"}},
                    {"name": "batch", "when": {"all": [{"method": ["POST"]}, {"path": {"prefix": "/v1/batch"}}]}, "set": {"priority": "low"}},
                    {"name": "internal", "when": {"header": {"name": "x-debug", "regex": "on|yes"}}, "set": {"type": "debug"}}
                ],
                "tenants": {"globex": {"region": "us-east"}},
                "from_claims": {"region": "data_region"},
                "defaults": {"type": "standard", "priority": "normal", "region": "us"},
                "unknown_size_bytes": 10_000_000,
                "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
                "variant": {"salt": "exp-7", "variants": [{"name": "a", "weight": 70}, {"name": "b", "weight": 30}]}
            }),
        ),
        (
            "breaker-tests",
            json!({"breakers": [
                {"name": "context_repository", "error_threshold_percent": 50, "window_seconds": 10,
                 "min_requests": 4, "reset_timeout_ms": 1000, "half_open_probes": 2,
                 "failure_statuses": [500, 503],
                 "select": {"routes": ["r"], "clusters": ["c"], "any_header": [{"name": "x-a", "values": ["1"]}]}},
                {"name": "fallback", "on_open": {"action": "fallback", "request_header": "x-fallback",
                 "request_value": "1", "response_header": "x-degraded", "response_value": "1"}}
            ], "cas_attempts": 4}),
        ),
    ];
    for (name, config) in configs {
        s.add(name, config.to_string());
    }
    s.add("not-json", "{\"providers\": [");
    s.add("empty-object", "{}");
}

fn record_seeds() {
    let mut s = Seeds::new("records");
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, value: Vec<u8>| records.push((name.to_owned(), value));

    // Bucket slots.
    let store = MemoryStore::default();
    let table = BucketTable::new("fuzz.rl", 1, 2, 4, SECRET);
    table.init_shared(&store);
    let slot = |store: &MemoryStore| store.get("fuzz.rl.slot.0").unwrap().0;
    add("bucket-empty", slot(&store));
    let spec = |name: &str| LimitSpec {
        id: limit_id(name),
        capacity: 60 * MILLI,
        refill: 60 * MILLI,
        period_ms: 60_000,
        counts_cost: true,
    };
    let specs: Vec<LimitSpec> = (0..8).map(|i| spec(&format!("limit-{i}"))).collect();
    let acme = table.hash_key("acme");
    table.take(
        &store,
        acme,
        &specs[..1],
        3,
        GlobalAccounting::CountLocally,
        NOW * 1000,
    );
    add("bucket-one-entry", slot(&store));
    let answer = GlobalView {
        used: 40,
        limit: 100,
        reset_ms: NOW * 1000 + 60_000,
        window_ms: 60_000,
        unreported: 0,
    };
    table.learn_global(&store, acme, answer).unwrap();
    table.take(
        &store,
        table.hash_key("globex"),
        &specs,
        1,
        GlobalAccounting::None,
        NOW * 1000,
    );
    add("bucket-two-entries-eight-limits", slot(&store));

    // A shared token-cache entry, written by a real verification.
    let (auth, store) = fixtures::auth();
    let token = es256_key().sign(claims(json!({}))).unwrap();
    let headers: ctxgate_core::headers::Headers = [(
        "authorization".to_owned(),
        format!("Bearer {token}").into_bytes(),
    )]
    .into_iter()
    .collect();
    let request = RequestHead {
        method: "GET",
        path: "/v1/contexts/projects/a",
        headers: &headers,
    };
    let address = || None;
    let env = RequestEnv {
        end_of_stream: true,
        client_address: &address,
        authorised_later: false,
        peer: &|_| None,
    };
    let decision = auth.check(&mut auth.new_state(), &store, &request, &env, NOW);
    assert!(
        matches!(decision.outcome, Outcome::Allow(_)),
        "{decision:?}"
    );
    let d = digest(&token);
    let slot = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) % 4;
    add(
        "token-cache-entry",
        store.get(&format!("fuzz.cache.{slot}")).unwrap().0,
    );

    // JWKS schedule and key set.
    let remote = json!({"providers": [{"name": "idp", "issuer": ISSUER, "jwks": {"remote": {
        "cluster": "idp", "timeout_ms": 1000, "refresh_interval_seconds": 60,
        "retry_interval_seconds": 1, "allow_symmetric_keys": true}}}]});
    let remote = Auth::from_json(remote.to_string().as_bytes(), "fuzz", SECRET).unwrap();
    let store = RecordingStore::default();
    let mut sync = JwksSync::new(&remote);
    sync.init_shared(&store);
    let (schedule_key, keys_key) = store.keys_ending(".schedule", ".keys");
    let get = |key: &str| store.0.get(key).unwrap().0;
    add("jwks-schedule-initial", get(&schedule_key));
    add("jwks-keys-empty", get(&keys_key));
    sync.tick(&store, NOW * 1000);
    add("jwks-schedule-claimed", get(&schedule_key));
    sync.fetch_completed(0, &store, NOW * 1000, Err("refused".into()));
    add("jwks-schedule-backing-off", get(&schedule_key));
    sync.tick(&store, NOW * 1000 + 10_000);
    let body = fixtures::jwks().to_string().into_bytes();
    sync.fetch_completed(0, &store, NOW * 1000 + 10_000, Ok((200, body)));
    add("jwks-schedule-refreshed", get(&schedule_key));
    add("jwks-keys-fixture", get(&keys_key));

    // Adaptive registry and worker record.
    let store = MemoryStore::default();
    let config = AdaptiveConfig {
        latency_threshold_ms: 100,
        latency_multiplier: 0.5,
        ewma_alpha: 0.5,
        max_in_flight: 10,
        publish_interval_ms: 100,
    };
    let mut a = Adaptive::new(config, "fuzz", &store);
    a.started();
    a.started();
    a.finished(Some(250));
    a.publish_and_combine(&store, NOW * 1000);
    add(
        "adaptive-registry",
        store.get("fuzz.adaptive.workers").unwrap().0,
    );
    add("adaptive-worker", store.get("fuzz.adaptive.0").unwrap().0);

    // A breaker closed, open, half-open.
    let breakers = Breakers::from_json(
        br#"{"breakers": [{"name": "b", "error_threshold_percent": 50, "window_seconds": 10,
             "min_requests": 2, "reset_timeout_ms": 1000, "half_open_probes": 2}]}"#,
        "fuzz",
    )
    .unwrap();
    let b = &breakers.breakers[0];
    let store = MemoryStore::default();
    b.init_shared(&store);
    let record = |store: &MemoryStore| store.get("fuzz.breaker.b").unwrap().0;
    add("breaker-closed", record(&store));
    let head = RequestHead {
        method: "GET",
        path: "/",
        headers: &ctxgate_core::headers::NO_HEADERS,
    };
    let now = NOW * 1000;
    for _ in 0..2 {
        let (admission, _) = b.admit(&store, &head, now);
        b.record(&store, &admission, Some(true), now);
    }
    add("breaker-open", record(&store));
    let (_probe, _) = b.admit(&store, &head, now + 1000);
    add("breaker-half-open", record(&store));

    // The secret.
    let store = MemoryStore::default();
    load_secret(&store, "fuzz.secret", [3; 16]).unwrap();
    add("secret", store.get("fuzz.secret").unwrap().0);

    for (name, value) in &records {
        s.add(name, value);
        // Damaged variants: truncated, a newer version, another kind.
        s.add(&format!("{name}-truncated"), &value[..value.len() - 1]);
        let mut newer = value.clone();
        newer[2] = 2;
        s.add(&format!("{name}-version-2"), newer);
        let mut other = value.clone();
        other[1] = if other[1] == 1 { 7 } else { 1 };
        s.add(&format!("{name}-other-kind"), other);
    }
    s.add("empty", b"");
    s.add("magic-only", [0xC7]);
    s.add("not-a-record", b"1700000000 0 0");
    s.add("jwks-keys-bare-json", fixtures::jwks().to_string());
}

/// A store that remembers the keys written to it.
#[derive(Default)]
struct RecordingStore(MemoryStore, std::cell::RefCell<Vec<String>>);

impl SharedStore for RecordingStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, ctxgate_core::shared::Cas)> {
        self.0.get(key)
    }
    fn set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<ctxgate_core::shared::Cas>,
    ) -> Result<(), ctxgate_core::shared::SetError> {
        self.1.borrow_mut().push(key.to_owned());
        self.0.set(key, value, cas)
    }
}

impl RecordingStore {
    fn keys_ending(&self, a: &str, b: &str) -> (String, String) {
        let keys = self.1.borrow();
        let find = |suffix: &str| keys.iter().find(|k| k.ends_with(suffix)).unwrap().clone();
        (find(a), find(b))
    }
}

/// An `mcp_request` input: the flag bytes (see `src/mcp_request.rs`),
/// `Mcp-Method` and `Mcp-Name` lines, the body. `method` and `name` are
/// (presence bits, value): 0 absent, 1 once, 3 repeated; `content_type`
/// and `version` index the target's tables (0: `application/json`;
/// 0 absent, 1 2025-03-26, 2 2025-06-18, 4 2026-07-28).
fn mcp(
    method: (u8, &[u8]),
    name: (u8, &[u8]),
    content_type: u8,
    version: u8,
    body: &str,
) -> Vec<u8> {
    let mut out = vec![method.0 | (name.0 << 2) | (content_type << 4), version];
    out.extend_from_slice(method.1);
    out.push(b'\n');
    out.extend_from_slice(name.1);
    out.push(b'\n');
    out.extend_from_slice(body.as_bytes());
    out
}

fn mcp_request_seeds() {
    let mut s = Seeds::new("mcp_request");
    let none: (u8, &[u8]) = (0, b"");
    let call = |tool: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": tool, "arguments": arguments}})
        .to_string()
    };
    let call_2026 = |tool: &str, path: &str| {
        json!({"jsonrpc": "2.0", "id": "c-1", "method": "tools/call",
               "params": {"name": tool, "arguments": {"path": path},
                          "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
        .to_string()
    };
    let one = |id: Value, method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    };
    let v2025 = 2;
    let plain = [
        ("call-search", call("search_context", json!({"path": "projects/engineering/x", "query": "q"}))),
        ("call-search-other-project", call("search_context", json!({"path": "projects/sales/x"}))),
        ("call-search-climbing", call("search_context", json!({"path": "projects/engineering/../sales/x"}))),
        ("call-search-uppercase", call("search_context", json!({"path": "Projects/Engineering/X"}))),
        ("call-search-encoded-slash", call("search_context", json!({"path": "projects%2Fengineering/x"}))),
        ("call-search-missing-path", call("search_context", json!({}))),
        ("call-traverse", call("traverse_x", json!({"target": {"path": "projects/engineering/a"}}))),
        ("call-traverse-two-chars", call("traverse_xy", json!({"target": {"path": "projects/engineering/a"}}))),
        ("call-write-drafts", call("write_context", json!({"path": "projects/docs/drafts/a"}))),
        ("call-write-docs", call("write_context", json!({"path": "projects/docs/a"}))),
        ("call-reindex", call("reindex", json!({}))),
        ("call-ping-tool", call("ping_tool", json!({}))),
        ("call-status", call("status", json!({"path": "ignored"}))),
        ("call-unknown-tool", call("delete_everything", json!({}))),
        ("call-arguments-array", one(json!(7), "tools/call", json!({"name": "search_x", "arguments": ["a"]}))),
        ("prompt-allowed", one(json!(1), "prompts/get", json!({"name": "summarize_context"}))),
        ("prompt-other", one(json!(1), "prompts/get", json!({"name": "draft_notes"}))),
        ("prompt-climbing", one(json!(1), "prompts/get", json!({"name": "../../projects/x"}))),
        ("resource-ctx", one(json!(1), "resources/read", json!({"uri": "ctx://projects/engineering/roadmap"}))),
        ("resource-docs", one(json!(1), "resources/read", json!({"uri": "docs://guide/intro"}))),
        ("resource-encoded-space", one(json!(1), "resources/read", json!({"uri": "ctx://projects/engineering/my%20notes"}))),
        ("resource-encoded-slash", one(json!(1), "resources/read", json!({"uri": "ctx://projects%2Fengineering/x"}))),
        ("resource-unknown", one(json!(1), "resources/read", json!({"uri": "file:///etc/passwd"}))),
        ("method-completion", one(json!(1), "completion/complete", json!({}))),
        ("method-logging", one(json!(1), "logging/setLevel", json!({"level": "info"}))),
        ("initialize", one(json!(0), "initialize", json!({"protocolVersion": "2025-06-18"}))),
        ("tools-list", one(json!("l"), "tools/list", json!({}))),
        ("notification", json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string()),
        ("notification-refused", json!({"jsonrpc": "2.0", "method": "logging/message"}).to_string()),
        ("notification-invalid", r#"{"jsonrpc":"2.0","method":"notifications/x","params":1}"#.into()),
        ("response", json!({"jsonrpc": "2.0", "id": "s-1", "result": {"roots": []}}).to_string()),
        ("response-error", json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -1, "message": "no"}}).to_string()),
        ("id-null", r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.into()),
        ("id-float", r#"{"jsonrpc":"2.0","id":1.0,"method":"ping"}"#.into()),
        ("id-huge", r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"ping"}"#.into()),
        ("jsonrpc-1", r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.into()),
        ("duplicate-key", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list"}"#.into()),
        ("duplicate-key-escaped", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_a","\u006eame":"reindex"}}"#.into()),
        ("duplicate-key-deep", r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_a","arguments":{"path":"projects/engineering/a","deep":[{"k":1,"k":2}]}}}"#.into()),
        ("trailing-data", r#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#.into()),
        ("not-json", "{\"jsonrpc\": ".into()),
        ("deep-61", format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search_x","arguments":{{"path":"projects/engineering/x","a":{}{}}}}}}}"#, "[".repeat(61), "]".repeat(61))),
        ("deep-62", format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search_x","arguments":{{"path":"projects/engineering/x","a":{}{}}}}}}}"#, "[".repeat(62), "]".repeat(62))),
        ("deep-10000", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
    ];
    for (name, body) in &plain {
        s.add(name, mcp(none, none, 0, v2025, body));
    }
    // Batches: only without a version or in 2025-03-26.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "search_context", "arguments": {"path": "projects/engineering/x"}}},
        {"jsonrpc": "2.0", "id": 1, "result": {}}
    ])
    .to_string();
    s.add("batch-no-version", mcp(none, none, 0, 0, &batch));
    s.add("batch-2025-03-26", mcp(none, none, 0, 1, &batch));
    s.add("batch-2025-06-18", mcp(none, none, 0, v2025, &batch));
    s.add("batch-max-2", mcp(none, none, 0, 1 | 0x20, &batch));
    s.add("batch-empty", mcp(none, none, 0, 0, "[]"));
    s.add("batch-of-numbers", mcp(none, none, 0, 0, "[1, 2]"));
    s.add(
        "batch-duplicate-ids",
        mcp(none, none, 0, 0, r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#),
    );
    s.add(
        "batch-refused-scope",
        mcp(
            none,
            none,
            0,
            0,
            &format!(
                "[{},{}]",
                one(json!(1), "ping", json!({})),
                call("search_x", json!({"path": "projects/sales"}))
            ),
        ),
    );
    // The 2026-07-28 standard headers.
    let v2026 = 4;
    let body = call_2026("search_context", "projects/engineering/x");
    let method: (u8, &[u8]) = (1, b"tools/call");
    s.add(
        "headers-match",
        mcp(method, (1, b"search_context"), 0, v2026, &body),
    );
    s.add(
        "headers-base64-name",
        mcp(
            method,
            (1, b"=?base64?c2VhcmNoX2NvbnRleHQ=?="),
            0,
            v2026,
            &body,
        ),
    );
    s.add(
        "headers-base64-noncanonical",
        mcp(
            method,
            (1, b"=?base64?c2VhcmNoX2NvbnRleHR=?="),
            0,
            v2026,
            &body,
        ),
    );
    s.add(
        "headers-base64-empty",
        mcp(method, (1, b"=?base64??="), 0, v2026, &body),
    );
    s.add(
        "headers-method-mismatch",
        mcp((1, b"tools/list"), none, 0, v2026, &body),
    );
    s.add(
        "headers-name-mismatch",
        mcp(method, (1, b"search_other"), 0, v2026, &body),
    );
    s.add(
        "headers-method-repeated",
        mcp((3, b"tools/call"), none, 0, v2026, &body),
    );
    s.add(
        "headers-name-repeated",
        mcp(method, (3, b"search_context"), 0, v2026, &body),
    );
    s.add(
        "headers-version-mismatch",
        mcp(method, none, 0, v2025, &body),
    );
    let mut repeated_version = mcp(method, none, 0, v2026, &body);
    repeated_version[0] |= 0x80;
    s.add("headers-version-repeated", repeated_version);
    s.add(
        "headers-name-for-ping",
        mcp(
            (1, b"ping"),
            (1, b"x"),
            0,
            v2026,
            &one(json!(1), "ping", json!({})),
        ),
    );
    let accented = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "search_\u{e9}", "arguments": {"path": "projects/engineering/x"}}})
    .to_string();
    s.add(
        "headers-base64-accented",
        mcp(method, (1, b"=?base64?c2VhcmNoX8Op?="), 0, v2025, &accented),
    );
    s.add(
        "headers-raw-accented",
        mcp(method, (1, "search_\u{e9}".as_bytes()), 0, v2025, &accented),
    );
    let accented_notification =
        json!({"jsonrpc": "2.0", "method": "notifications/caf\u{e9}"}).to_string();
    s.add(
        "headers-method-not-printable",
        mcp(
            (1, "notifications/caf\u{e9}".as_bytes()),
            none,
            0,
            v2025,
            &accented_notification,
        ),
    );
    s.add(
        "headers-resource-name",
        mcp(
            (1, b"resources/read"),
            (1, b"ctx://projects/engineering/roadmap"),
            0,
            v2025,
            &one(
                json!(1),
                "resources/read",
                json!({"uri": "ctx://projects/engineering/roadmap"}),
            ),
        ),
    );
    // Content types, bodies that are not UTF-8, depth limits.
    let ping = one(json!(1), "ping", json!({}));
    s.add("content-type-charset", mcp(none, none, 2, v2025, &ping));
    s.add("content-type-absent", mcp(none, none, 4, v2025, &ping));
    s.add(
        "content-type-event-stream",
        mcp(none, none, 5, v2025, &ping),
    );
    s.add(
        "content-type-repeated",
        mcp(none, none, 0, v2025 | 0x40, &ping),
    );
    s.add(
        "depth-limit-3",
        mcp(none, none, 0, v2025 | 0x08, &plain[0].1),
    );
    let mut latin1 = mcp(none, none, 0, v2025, r#"{"jsonrpc":"2.0","id":"caf"#);
    latin1.extend_from_slice(b"\xe9\",\"method\":\"ping\"}");
    s.add("body-latin1", latin1);
}

fn mcp_listing_seeds() {
    let mut s = Seeds::new("mcp_listing");
    let tool = |name: &str| {
        json!({"name": name, "description": format!("{name} over the context store"),
               "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}})
    };
    let tools = |id: Value| {
        json!({"jsonrpc": "2.0", "id": id, "result": {
            "tools": [tool("search_context"), tool("write_context"), tool("reindex"),
                      tool("ping_tool"), tool("status"), tool("traverse_a"), tool("traverse_ab"),
                      tool("unmapped_tool"), {"title": "no name"}, {"name": 5}],
            "nextCursor": "eyJwYWdlIjoyfQ=="
        }})
    };
    let prompts = json!({"jsonrpc": "2.0", "id": 2, "result": {"prompts": [
        {"name": "summarize_context", "arguments": [{"name": "path"}]},
        {"name": "Summarize_Context"},
        {"name": "draft_release_notes"}
    ]}});
    let resources = json!({"jsonrpc": "2.0", "id": 3, "result": {"resources": [
        {"uri": "ctx://projects/engineering/roadmap", "name": "roadmap"},
        {"uri": "ctx://projects/sales/pipeline", "name": "pipeline"},
        {"uri": "docs://guide/intro", "name": "intro"},
        {"uri": "ctx://projects/engineering/../sales/pipeline", "name": "sneaky"},
        {"uri": "file:///etc/hosts", "name": "hosts"}
    ]}});
    // Two chunk sizes, then the body.
    let add = |s: &mut Seeds, name: &str, sizes: [u8; 2], body: &[u8]| {
        let mut input = sizes.to_vec();
        input.extend_from_slice(body);
        s.add(name, input);
    };
    let json_seeds = [
        ("tools-list", tools(json!(1)).to_string()),
        ("tools-list-string-id", tools(json!("t")).to_string()),
        ("tools-list-other-id", tools(json!(99)).to_string()),
        ("tools-list-ping-id", tools(json!(4)).to_string()),
        ("tools-list-allowed-only", json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [tool("search_x"), tool("status")]}}).to_string()),
        ("tools-list-pretty", serde_json::to_string_pretty(&tools(json!(1))).unwrap()),
        ("prompts-list", prompts.to_string()),
        ("resources-list", resources.to_string()),
        ("resources-list-string-id", resources.to_string().replace("\"id\":3", "\"id\":\"r\"")),
        ("batch", json!([tools(json!(1)), prompts, resources, {"jsonrpc": "2.0", "id": 4, "result": {}}]).to_string()),
        ("duplicate-tools", r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"reindex"}],"tools":[]}}"#.into()),
        ("duplicate-entry-name", r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"reindex","name":"search_x"}]}}"#.into()),
        ("duplicate-id", r#"{"jsonrpc":"2.0","id":99,"id":1,"result":{"tools":[{"name":"reindex"}]}}"#.into()),
        ("error", json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "boom"}}).to_string()),
        ("id-float", r#"{"jsonrpc":"2.0","id":1.0,"result":{"tools":[{"name":"reindex"}]}}"#.into()),
        ("not-json", "{\"jsonrpc\": \"2.0\", \"id\": 1, \"result\": {\"tools\": [".into()),
        ("deep-120", format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"reindex","x":{}{}}}]}}}}"#, "[".repeat(116), "]".repeat(116))),
        ("deep-121", format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"tools":[{{"name":"reindex","x":{}{}}}]}}}}"#, "[".repeat(117), "]".repeat(117))),
    ];
    for (name, body) in &json_seeds {
        add(&mut s, &format!("json-{name}"), [5, 17], body.as_bytes());
    }
    let mut latin1 =
        br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"reindex"},{"name":"search_"#
            .to_vec();
    latin1.extend_from_slice(b"\xe9\"}]}}");
    add(&mut s, "json-latin1-name", [0, 3], &latin1);

    // SSE streams, as the SDKs send them.
    let notification = json!({"jsonrpc": "2.0", "method": "notifications/message",
                              "params": {"level": "info", "data": "listing tools"}});
    let crlf = format!(
        "event: message\r\nid: 7d3f-0\r\ndata: {notification}\r\n\r\n: ping\r\n\r\nevent: message\r\nid: 7d3f-1\r\ndata: {}\r\n\r\n",
        tools(json!(1))
    );
    add(&mut s, "sse-crlf", [0, 1], crlf.as_bytes());
    add(&mut s, "sse-crlf-split-mid-line", [7, 40], crlf.as_bytes());
    add(&mut s, "sse-crlf-split-in-crlf", [0, 23], crlf.as_bytes());
    let pretty = serde_json::to_string_pretty(&tools(json!("t"))).unwrap();
    let data: String = pretty.lines().map(|l| format!("data: {l}\n")).collect();
    add(
        &mut s,
        "sse-multi-line-data",
        [3, 9],
        format!("retry: 3000\n\nid: 1\nevent: message\n{data}\n").as_bytes(),
    );
    let cr = format!("data: {}\r\rdata: {}\r\r", prompts, resources);
    add(&mut s, "sse-cr-only", [1, 2], cr.as_bytes());
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(format!("data: {}\n\n", tools(json!(1))).as_bytes());
    add(&mut s, "sse-bom", [1, 1], &bom);
    add(
        &mut s,
        "sse-unterminated",
        [4, 11],
        format!("data: {}", tools(json!(1))).as_bytes(),
    );
    add(&mut s, "sse-two-data-fields", [2, 5], b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata:\"result\":{\"tools\":[{\"name\":\"reindex\"}]}}\nid: 9\n\n");
    add(
        &mut s,
        "sse-data-without-colon",
        [0, 8],
        b"data\ndata\n\nevent: x\n\n",
    );
    add(
        &mut s,
        "sse-not-a-listing",
        [6, 6],
        format!("data: {notification}\n\ndata: {}\n\n", tools(json!(99))).as_bytes(),
    );
    add(&mut s, "empty", [0, 0], b"");
}
