//! What every auth test needs: keys and tokens, the demo plugin
//! configuration, an Envoy in front of the demo echo upstream, and
//! assertions on the filter's refusals and on what the upstream received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_demo::{DemoKeys, MintAlg, MintOptions};
use ctxgate_e2e::{Cluster, Envoy, EnvoyConfig, Request, Response, Route, WasmFilter};
use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

pub const ISSUER: &str = ctxgate_demo::mint::DEMO_ISSUER;
pub const AUDIENCE: &str = ctxgate_demo::mint::DEMO_AUDIENCE;
pub const TENANT: &str = "acme";
pub const SUBJECT: &str = "user-1";
/// Not the default realm, so the tests see that the configured one is used.
pub const REALM: &str = "ctxgate-e2e";
pub const PROVIDER: &str = "demo";

/// The demo RSA key again, without an `alg` pin, so it also verifies
/// RS384/RS512/PS256/... (the demo JWK pins `RS256`).
pub const KID_RSA_ANY: &str = "rsa-any";
/// A P-384 key for ES384.
pub const KID_ES384: &str = "es384";
/// The demo HMAC secret as a JWK pinned to HS256, as a demo deployment would
/// configure it inline (never in a published JWK Set).
pub const KID_HS256: &str = ctxgate_demo::keys::KID_HS256;
/// A 64-byte secret without an `alg` pin: HS256, HS384 and HS512.
pub const KID_HMAC_ANY: &str = "hmac-any";

/// Algorithms the demo minting does not cover, signed here with jwt-simple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraAlg {
    PS256,
    RS384,
    ES384,
    HS384,
    HS512,
}

impl ExtraAlg {
    pub const ALL: [ExtraAlg; 5] = [
        ExtraAlg::PS256,
        ExtraAlg::RS384,
        ExtraAlg::ES384,
        ExtraAlg::HS384,
        ExtraAlg::HS512,
    ];
}

pub fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

/// A test's keys: the demo key set (generated into a temp dir, so tests
/// never share keys), plus keys for the algorithms the demo set lacks.
pub struct TestKeys {
    pub demo: DemoKeys,
    pub es384: ES384KeyPair,
    pub hmac_any: Vec<u8>,
    _dir: TempDir,
}

impl TestKeys {
    pub fn generate() -> TestKeys {
        let dir = tempfile::Builder::new()
            .prefix("ctxgate-keys-")
            .tempdir()
            .unwrap();
        let demo = DemoKeys::load_or_generate(&dir.path().join("keys")).unwrap();
        TestKeys {
            demo,
            es384: ES384KeyPair::generate().with_key_id(KID_ES384),
            hmac_any: [
                HS256Key::generate().to_bytes(),
                HS256Key::generate().to_bytes(),
            ]
            .concat(),
            _dir: dir,
        }
    }

    /// The demo `jwks.json` (RS256, ES256, EdDSA public keys).
    pub fn demo_jwks(&self) -> Value {
        self.demo.jwks().unwrap()
    }

    /// Every key of this set: the demo JWK Set, the demo HMAC secret pinned
    /// to HS256, the RSA key unpinned, a P-384 key and an unpinned secret.
    pub fn jwks(&self) -> Value {
        let mut jwks = self.demo_jwks();
        let keys = jwks["keys"].as_array_mut().unwrap();
        let rsa = keys
            .iter()
            .find(|k| k["kid"] == ctxgate_demo::keys::KID_RS256)
            .unwrap()
            .clone();
        keys.push(json!({"kty": "RSA", "kid": KID_RSA_ANY, "n": rsa["n"], "e": rsa["e"]}));
        let mut es384: Value = serde_json::from_str(&self.es384.public_key().to_jwk()).unwrap();
        es384["kid"] = json!(KID_ES384);
        keys.push(es384);
        keys.push(json!({
            "kty": "oct", "kid": KID_HS256, "alg": "HS256", "use": "sig",
            "k": self.demo.hs256_secret_b64(),
        }));
        keys.push(json!({"kty": "oct", "kid": KID_HMAC_ANY, "k": b64(&self.hmac_any)}));
        jwks
    }

    /// The claims [`ctxgate_demo::mint`] would sign for `opts`, plus a
    /// unique `jti` so that no two tokens minted by a test are equal (equal
    /// tokens would be answered from the filter's cache).
    pub fn claims(&self, opts: &MintOptions) -> Map<String, Value> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut claims = ctxgate_demo::mint::claims(opts, ctxgate_demo::mint::now()).unwrap();
        claims
            .entry("jti")
            .or_insert_with(|| json!(format!("e2e-{}", SEQ.fetch_add(1, Ordering::Relaxed))));
        claims
    }

    /// A token minted with the demo key for `opts.alg`.
    pub fn token(&self, opts: &MintOptions) -> String {
        let header = ctxgate_demo::mint::header(opts);
        self.sign_raw(&header, &Value::Object(self.claims(opts)), opts.alg)
    }

    /// A default token (ES256, tenant acme, one hour) with these scopes.
    pub fn scoped(&self, scopes: &[&str]) -> String {
        self.token(&with_scopes(scopes))
    }

    /// Signs any header and payload with the demo key for `alg`.
    pub fn sign_raw(&self, header: &Value, payload: &Value, alg: MintAlg) -> String {
        ctxgate_demo::mint::try_mint_raw(&self.demo, header, payload, alg).unwrap()
    }

    /// A token for `opts` signed with one of the extra algorithms.
    pub fn token_extra(&self, alg: ExtraAlg, opts: &MintOptions) -> String {
        let claims: JWTClaims<Map<String, Value>> =
            serde_json::from_value(Value::Object(self.claims(opts))).unwrap();
        let rsa_der = self.demo.rs256().to_der().unwrap();
        match alg {
            ExtraAlg::PS256 => PS256KeyPair::from_der(&rsa_der)
                .unwrap()
                .with_key_id(KID_RSA_ANY)
                .sign(claims),
            ExtraAlg::RS384 => RS384KeyPair::from_der(&rsa_der)
                .unwrap()
                .with_key_id(KID_RSA_ANY)
                .sign(claims),
            ExtraAlg::ES384 => self.es384.sign(claims),
            ExtraAlg::HS384 => HS384Key::from_bytes(&self.hmac_any)
                .with_key_id(KID_HMAC_ANY)
                .authenticate(claims),
            ExtraAlg::HS512 => HS512Key::from_bytes(&self.hmac_any)
                .with_key_id(KID_HMAC_ANY)
                .authenticate(claims),
        }
        .unwrap()
    }
}

/// Default mint options with these scopes.
pub fn with_scopes(scopes: &[&str]) -> MintOptions {
    MintOptions {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..MintOptions::default()
    }
}

/// The header and payload of a token with `header` and `payload` replaced
/// verbatim, and `signature` as its third part.
pub fn assemble(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(signature)
    )
}

/// The demo API's operation map.
pub fn demo_operations() -> Value {
    json!([
        {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
        {"name": "write", "methods": ["PUT", "POST", "PATCH"], "path": "/v1/contexts/{context}", "action": "write"},
        {"name": "delete", "methods": ["DELETE"], "path": "/v1/contexts/{context}", "action": "admin"},
        {"name": "complex_query", "methods": ["POST"], "path": "/v1/query", "context_param": "context", "action": "read"},
        {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"},
    ])
}

/// The demo provider with `jwks` as its key source
/// (`{"inline": ...}` or `{"remote": ...}`).
pub fn provider(jwks: Value) -> Value {
    json!({
        "name": PROVIDER,
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks": jwks,
    })
}

/// The demo plugin configuration with one provider.
pub fn plugin_config(provider: Value) -> Value {
    json!({
        "realm": REALM,
        "providers": [provider],
        "operations": demo_operations(),
        "public_paths": [
            {"exact": "/health/context", "methods": ["GET", "HEAD"]},
            {"prefix": "/.well-known"},
        ],
    })
}

/// The demo configuration trusting every key of `keys` inline.
pub fn inline_config(keys: &TestKeys) -> Value {
    plugin_config(provider(json!({ "inline": keys.jwks() })))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Envoy with the auth filter in front of the demo echo upstream
/// (cluster `upstream`, every path).
pub struct Gate {
    pub envoy: Envoy,
    _upstream: ShutdownHandle,
}

impl Gate {
    /// Two workers, the auth filter configured with `plugin_config`.
    pub fn start(plugin_config: Value) -> Gate {
        Gate::start_with(plugin_config, |config| config)
    }

    /// Like [`Gate::start`], with the Envoy configuration adjusted (more
    /// workers, extra clusters...).
    pub fn start_with(
        plugin_config: Value,
        adjust: impl FnOnce(EnvoyConfig) -> EnvoyConfig,
    ) -> Gate {
        let (upstream_addr, upstream) =
            ctxgate_demo::spawn_in_thread("127.0.0.1:0", "standard").unwrap();
        let config = EnvoyConfig::new()
            .filter(WasmFilter::single("auth", plugin_config))
            .route(Route::prefix("/").cluster("upstream"))
            .cluster(Cluster::new("upstream", [upstream_addr]));
        let envoy = Envoy::start(&adjust(config));
        Gate {
            envoy,
            _upstream: upstream,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.envoy.listener_addr()
    }

    /// Sends `request`. A 5xx fails the test on the spot: refusals are
    /// 4xx and the upstream answers 200. The one exception is the filter's
    /// 503 `keys_unavailable` while a remote JWK Set is not fetched yet.
    #[track_caller]
    pub fn send(&self, request: Request) -> Response {
        let response = request.send(self.addr());
        let keys_unavailable = response.status == 503
            && response.header("content-type") == Some("application/json")
            && response.json()["reason"] == "keys_unavailable";
        assert!(
            response.status < 500 || keys_unavailable,
            "server error {}: headers {:?} body {:?}",
            response.status,
            response.headers,
            response.text()
        );
        response
    }

    /// `method path` with `Authorization: Bearer <token>`.
    #[track_caller]
    pub fn call(&self, method: &str, path: &str, token: &str) -> Response {
        self.send(Request::new(method, path).header("authorization", &bearer(token)))
    }

    #[track_caller]
    pub fn get(&self, path: &str, token: &str) -> Response {
        self.call("GET", path, token)
    }

    /// A counter the filter defines, e.g. `metric("denied.token_expired")`
    /// for `ctxgate_auth.denied.token_expired`.
    pub fn metric(&self, name: &str) -> u64 {
        self.envoy.wasm_metric(&format!("ctxgate_auth.{name}"))
    }

    /// Waits (up to 5 s) for a filter counter to reach `value` and returns
    /// its last value; counters are bumped before the reply is sent, so this
    /// rarely waits at all.
    pub fn wait_metric(&self, name: &str, value: u64) -> u64 {
        self.envoy
            .wait_for_metric(&format!("ctxgate_auth.{name}"), value)
    }

    /// No wasm VM of this Envoy panicked, trapped or failed.
    #[track_caller]
    pub fn assert_vm_healthy(&self) {
        assert_vm_healthy(&self.envoy);
    }
}

/// Log lines Envoy 1.40 writes when a wasm VM panics, traps or fails.
const VM_FAILURE_MARKERS: [&str; 5] = [
    "panicked",
    "Wasm VM failed",
    "failed to load",
    "Uncaught RuntimeError",
    "Plugin configured to fail closed",
];

#[track_caller]
pub fn assert_vm_healthy(envoy: &Envoy) {
    let log = envoy.log();
    for marker in VM_FAILURE_MARKERS {
        let line = log.lines().find(|line| line.contains(marker));
        assert!(line.is_none(), "wasm VM failure in Envoy log: {line:?}");
    }
}

/// The headers through which the filter tells the upstream who is calling.
pub const IDENTITY_HEADERS: [&str; 9] = [
    "x-context-tenant",
    "x-context-subject",
    "x-context-tier",
    "x-context-scopes",
    "x-context-issuer",
    "x-context-actor-chain",
    "x-context-operation",
    "x-context-path",
    "x-context-service",
];

/// An expected set of identity headers, for comparing with
/// [`Forwarded::identity`].
pub fn identity(headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// The identity headers of the demo default token (tenant acme, user-1,
/// standard tier) for `operation` on `context` with these scopes.
pub fn default_identity(scopes: &str, operation: &str, context: &str) -> BTreeMap<String, String> {
    identity(&[
        ("x-context-tenant", TENANT),
        ("x-context-subject", SUBJECT),
        ("x-context-tier", "standard"),
        ("x-context-scopes", scopes),
        ("x-context-issuer", ISSUER),
        ("x-context-operation", operation),
        ("x-context-path", context),
    ])
}

/// What the echo upstream reports having received.
pub struct Forwarded(pub Value);

impl Forwarded {
    /// Every identity header the upstream received (each exactly once).
    #[track_caller]
    pub fn identity(&self) -> BTreeMap<String, String> {
        IDENTITY_HEADERS
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), self.header(name)?)))
            .collect()
    }

    /// The request path and query as received.
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }

    /// Every value of header `name`.
    pub fn headers_all(&self, name: &str) -> Vec<String> {
        match &self.0["headers"][name] {
            Value::Null => Vec::new(),
            Value::String(value) => vec![value.clone()],
            Value::Array(values) => values
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect(),
            other => panic!("unexpected echo header value {other}"),
        }
    }

    /// The single value of header `name`; fails if it was sent twice.
    #[track_caller]
    pub fn header(&self, name: &str) -> Option<String> {
        let mut values = self.headers_all(name);
        assert!(values.len() <= 1, "{name} forwarded twice: {values:?}");
        values.pop()
    }
}

/// Asserts the request reached the echo upstream and returns what it saw.
#[track_caller]
pub fn forwarded(response: &Response) -> Forwarded {
    assert_eq!(
        response.status,
        200,
        "expected the upstream's 200; headers {:?} body {:?}",
        response.headers,
        response.text()
    );
    assert_eq!(response.header("x-upstream"), Some("standard"));
    Forwarded(response.json())
}

/// The attributes of a `WWW-Authenticate: Bearer ...` challenge, in order.
/// Fails unless it is exactly `Bearer k="v", k="v", ...`.
#[track_caller]
pub fn parse_challenge(value: &str) -> Vec<(String, String)> {
    let mut rest = value
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {value:?}"));
    let mut attributes = Vec::new();
    loop {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("malformed challenge {value:?}"));
        let end = after
            .find('"')
            .unwrap_or_else(|| panic!("unterminated value in {value:?}"));
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "bad attribute name {name:?} in {value:?}"
        );
        attributes.push((name.to_owned(), after[..end].to_owned()));
        rest = &after[end + 1..];
        if rest.is_empty() {
            return attributes;
        }
        rest = rest
            .strip_prefix(", ")
            .unwrap_or_else(|| panic!("attributes not separated by \", \" in {value:?}"));
    }
}

/// A refusal by the filter, checked for its common shape.
pub struct Denied {
    pub body: Value,
    /// Challenge attributes (`realm`, `error`, ...); empty for 503.
    pub challenge: Vec<(String, String)>,
}

impl Denied {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.challenge
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Asserts a refusal by the filter: `status`, the JSON body
/// `{"error", "reason", "message"}` with this reason, and a
/// `WWW-Authenticate` challenge for the configured realm (400/401/403).
#[track_caller]
pub fn denied(response: &Response, status: u16, reason: &str) -> Denied {
    assert_eq!(
        (response.status, response.header("x-upstream")),
        (status, None),
        "expected a {status} {reason} from the filter; headers {:?} body {:?}",
        response.headers,
        response.text()
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message", "reason"], "body {body}");
    assert_eq!(body["reason"], reason, "body {body}");
    assert!(
        !body["message"].as_str().unwrap().is_empty(),
        "empty message: {body}"
    );
    let challenges = response.headers_all("www-authenticate");
    let challenge = if status == 503 {
        assert!(
            challenges.is_empty(),
            "503 with a challenge: {challenges:?}"
        );
        Vec::new()
    } else {
        assert_eq!(challenges.len(), 1, "one challenge: {challenges:?}");
        let challenge = parse_challenge(challenges[0]);
        assert_eq!(challenge[0], ("realm".to_owned(), REALM.to_owned()));
        challenge
    };
    let denied = Denied { body, challenge };
    if let Some(error) = denied.attribute("error") {
        assert_eq!(denied.body["error"], error, "body and challenge disagree");
        assert_eq!(
            denied.attribute("error_description"),
            denied.body["message"].as_str(),
            "the description is the message"
        );
    }
    denied
}

/// A 401 `error="invalid_token"` refusal with this reason.
#[track_caller]
pub fn invalid_token(response: &Response, reason: &str) -> Denied {
    let denied = denied(response, 401, reason);
    assert_eq!(denied.attribute("error"), Some("invalid_token"));
    assert_eq!(denied.attribute("scope"), None);
    denied
}

/// A 400 `error="invalid_request"` refusal with this reason.
#[track_caller]
pub fn invalid_request(response: &Response, reason: &str) -> Denied {
    let denied = denied(response, 400, reason);
    assert_eq!(denied.attribute("error"), Some("invalid_request"));
    denied
}

/// A 403 `error="insufficient_scope"` refusal naming the scope needed.
#[track_caller]
pub fn insufficient_scope(response: &Response, scope: &str) -> Denied {
    let denied = denied(response, 403, "insufficient_scope");
    assert_eq!(denied.attribute("error"), Some("insufficient_scope"));
    assert_eq!(denied.attribute("scope"), Some(scope));
    denied
}

/// A 403 `error="insufficient_scope"` refusal with this reason (delegation
/// refusals, unknown operations).
#[track_caller]
pub fn forbidden(response: &Response, reason: &str) -> Denied {
    let denied = denied(response, 403, reason);
    assert_eq!(denied.attribute("error"), Some("insufficient_scope"));
    denied
}
