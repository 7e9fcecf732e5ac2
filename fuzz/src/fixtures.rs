//! Fixed key material, clock and configurations shared by the targets and
//! by the seed generator (`tests/seeds.rs`).
//!
//! Everything here is deterministic so that a crash found once reproduces
//! from its input alone. The keys are fuzz-only: they sign the seed tokens
//! in `corpus/` and are trusted nowhere else.

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{Value, json};

use ctxgate_core::auth::Auth;
use ctxgate_core::shared::{MemoryStore, Secret};

/// The clock every target runs at (unix seconds; 2027-01-15).
pub const NOW: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://idp.fuzz";
pub const AUDIENCE: &str = "context-api";
pub const SKEW_SECONDS: u64 = 60;
pub const SECRET: Secret = Secret::from_bytes([0; 16]);

/// The P-256 private scalar of the `es` key.
const ES256_SCALAR: [u8; 32] = [0x5a; 32];
/// The `hs` key: 64 bytes, so HS256, HS384 and HS512 all accept it.
pub const HMAC_SECRET: &[u8; 64] =
    b"fuzz-only HMAC secret: sixty-four bytes, trusted nowhere else!!!";
/// The `rsa` key, a private JWK (2048 bits).
const RSA_JWK: &str = include_str!("rsa-2048.jwk.json");

pub fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap_or_default()
}

pub fn es256_key() -> ES256KeyPair {
    ES256KeyPair::from_bytes(&ES256_SCALAR)
        .expect("fixed P-256 scalar")
        .with_key_id("es")
}

pub fn rsa_key() -> RS256KeyPair {
    RS256KeyPair::from_jwk(RSA_JWK)
        .expect("fixed RSA JWK")
        .with_key_id("rsa")
}

pub fn es256_jwk() -> Value {
    let point = es256_key()
        .public_key()
        .public_key()
        .to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "kid": "es", "alg": "ES256", "use": "sig",
           "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

pub fn hmac_jwk() -> Value {
    json!({"kty": "oct", "kid": "hs", "k": b64(HMAC_SECRET)})
}

/// No `alg`: the key verifies every RSA algorithm (RS* and PS*).
pub fn rsa_jwk() -> Value {
    let c = rsa_key().public_key().to_components();
    json!({"kty": "RSA", "kid": "rsa", "n": b64(&c.n), "e": b64(&c.e)})
}

/// The JWK Set the token targets verify with: an ES256 key, an HMAC secret
/// and an RSA key.
pub fn jwks() -> Value {
    json!({"keys": [es256_jwk(), hmac_jwk(), rsa_jwk()]})
}

/// The options a provider configured with [`ISSUER`] and [`AUDIENCE`]
/// verifies with, at [`NOW`].
pub fn verification_options() -> VerificationOptions {
    VerificationOptions {
        allowed_issuers: Some([ISSUER.to_owned()].into()),
        allowed_audiences: Some([AUDIENCE.to_owned()].into()),
        time_tolerance: Some(Duration::from_secs(SKEW_SECONDS)),
        max_token_length: Some(8192),
        artificial_time: Some(UnixTimeStamp::from_secs(NOW)),
        ..VerificationOptions::default()
    }
}

/// The auth configuration `auth_request` runs against: the unit tests'
/// fixture (filters/core/src/auth/tests.rs) with the fuzz keys, and small
/// shared-data tables so a fresh store per input stays cheap.
pub fn auth_config() -> Value {
    json!({
        "providers": [{"name": "test", "issuer": ISSUER, "audiences": [AUDIENCE],
                       "clock_skew_seconds": SKEW_SECONDS, "jwks": {"inline": jwks()}}],
        "token_sources": [
            {"header": "authorization", "prefix": "Bearer "},
            {"query": "access_token"},
            {"cookie": "session"}
        ],
        "operations": [
            {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT", "POST"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "delete", "methods": ["DELETE"], "path": "/v1/contexts/{context}", "action": "admin"},
            {"name": "tenant_read", "methods": ["GET"], "path": "/v1/tenants/{tenant}/contexts/{context}", "action": "read"},
            {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"}
        ],
        "public_paths": [{"exact": "/health/context", "methods": ["GET"]}, {"prefix": "/.well-known"}],
        "cache": {"shared_slots": 4},
        "verification_throttle": {"failures": 3, "slots": 4}
    })
}

/// The compiled [`auth_config`], with a fresh store set up for it.
pub fn auth() -> (Auth, MemoryStore) {
    let auth = Auth::from_json(auth_config().to_string().as_bytes(), "fuzz", SECRET)
        .expect("the fixture configuration compiles");
    let store = MemoryStore::default();
    auth.init_shared(&store);
    (auth, store)
}

/// Claims of a token [`auth`] accepts for reads under `projects/`; entries
/// of `changes` replace (or, when null, remove) claims.
pub fn claims(changes: Value) -> JWTClaims<serde_json::Map<String, Value>> {
    let mut base = json!({
        "iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": NOW, "exp": NOW + 600,
        "tenant_id": "acme", "context_scopes": ["read:projects/*", "write:projects/engineering"]
    });
    if let (Some(target), Value::Object(changes)) = (base.as_object_mut(), changes) {
        for (k, v) in changes {
            if v.is_null() {
                target.remove(&k);
            } else {
                target.insert(k, v);
            }
        }
    }
    // Registered claims pass through the custom map unchanged when signing:
    // jwt-simple flattens it into the payload.
    JWTClaims {
        issued_at: None,
        expires_at: None,
        invalid_before: None,
        issuer: None,
        subject: None,
        audiences: None,
        jwt_id: None,
        nonce: None,
        custom: serde_json::from_value(base).unwrap_or_default(),
    }
}

/// A compact JWS with any header and payload and a junk signature: for
/// tokens no signer would produce (`alg: none`, `crit`, `jku`, ...).
pub fn forge(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(b"not a signature")
    )
}

/// The MCP tool map of the `mcp_request` and `mcp_listing` targets: glob
/// names, pointer, fixed and per-tool contexts, two resource rules.
pub fn mcp_config() -> Value {
    json!({
        "tools": [
            {"name": "search_*", "action": "read", "context": {"pointer": "/path"}},
            {"name": "traverse_?", "action": "read", "context": {"pointer": "/target/path"},
             "cost": {"base": 10}},
            {"name": "write_context", "action": "write", "context": {"pointer": "/path"},
             "cost": {"base": 2, "bands": [{"above": 1024, "multiplier": 4}]}},
            {"name": "reindex", "action": "admin", "context": {"fixed": "projects"}},
            {"name": "ping_tool", "action": "read", "context": "tool"},
            {"name": "status", "action": "read", "context": {"fixed": "projects/engineering/status"}}
        ],
        "resources": [
            {"uri_prefix": "ctx://", "context_prefix": ""},
            {"uri_prefix": "docs://", "context_prefix": "projects/docs/"}
        ]
    })
}

pub fn mcp_map() -> ctxgate_core::mcp::ToolMap {
    let config: ctxgate_core::mcp::config::McpConfig =
        ctxgate_core::config::parse_json(mcp_config().to_string().as_bytes())
            .expect("the MCP fixture configuration parses");
    ctxgate_core::mcp::ToolMap::compile(&config).expect("the MCP fixture tool map compiles")
}

/// The caller's scopes in the MCP targets, as (action, pattern) pairs
/// (`*` is any one segment), for the targets' independent oracles.
pub const MCP_SCOPES: [&str; 6] = [
    "read:projects/engineering/*",
    "read:projects/docs",
    "write:projects/docs/drafts",
    "read:mcp/tools/*",
    "read:mcp/prompts/summarize_context",
    "read:mcp/methods/completion/complete",
];

pub fn mcp_scopes() -> ctxgate_core::scope::ScopeSet {
    ctxgate_core::scope::ScopeSet::parse(MCP_SCOPES).expect("the MCP fixture scopes parse")
}
