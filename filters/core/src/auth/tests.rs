//! The auth decision, end to end in plain Rust: real tokens, real keys.

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use super::config::{AuthConfig, IdentityHeaders};
use super::denial::Reason;
use super::shared_cache::SharedEntry;
use super::*;
use crate::contract::Established;
use crate::http::RequestHead;
use crate::jwt::ExtraClaims;
use crate::test_keys::{b64, jwks, sign};

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://idp.test";
const SECRET: crate::shared::Secret = crate::shared::Secret::from_bytes([5; 16]);

fn client_address() -> Option<String> {
    Some("10.0.0.1:40000".into())
}

fn env() -> RequestEnv<'static> {
    RequestEnv {
        end_of_stream: true,
        client_address: &client_address,
        authorised_later: false,
        peer: &|_| None,
    }
}

struct Fixture {
    auth: Auth,
    state: AuthState,
    store: crate::shared::MemoryStore,
    key: ES256KeyPair,
}

fn config(key: &ES256KeyPair, extra: Value) -> Value {
    let mut config = json!({
        "providers": [{"name": "test", "issuer": ISS, "audiences": ["context-api"], "jwks": {"inline": jwks(key)}}],
        "operations": [
            {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT", "POST"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "delete", "methods": ["DELETE"], "path": "/v1/contexts/{context}", "action": "admin"},
            {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"}
        ],
        "public_paths": [{"exact": "/health/context", "methods": ["GET"]}, {"prefix": "/.well-known"}]
    });
    if let (Some(target), Value::Object(extra)) = (config.as_object_mut(), extra) {
        target.extend(extra);
    }
    config
}

fn fixture(extra: Value) -> Fixture {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let auth = Auth::from_json(config(&key, extra).to_string().as_bytes(), "test", SECRET).unwrap();
    let state = auth.new_state();
    let store = crate::shared::MemoryStore::default();
    auth.init_shared(&store);
    Fixture {
        auth,
        state,
        store,
        key,
    }
}

impl Fixture {
    fn token(&self, claims: Value) -> String {
        let mut base = json!({
            "iss": ISS, "sub": "alice", "aud": "context-api", "iat": NOW, "exp": NOW + 600,
            "tenant_id": "acme", "context_scopes": ["read:projects/*", "write:projects/engineering"]
        });
        if let (Some(target), Value::Object(extra)) = (base.as_object_mut(), claims) {
            for (k, v) in extra {
                if v.is_null() {
                    target.remove(&k);
                } else {
                    target.insert(k, v);
                }
            }
        }
        sign(&self.key, base)
    }

    fn check(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision {
        let headers: crate::headers::Headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        let request = RequestHead {
            method,
            path,
            headers: &headers,
        };
        self.auth
            .check(&mut self.state, &self.store, &request, &env(), NOW)
    }

    fn bearer(&mut self, method: &str, path: &str, token: &str) -> Decision {
        let auth = format!("Bearer {token}");
        self.check(method, path, &[("authorization", &auth)])
    }
}

fn denied(decision: &Decision) -> Reason {
    match &decision.outcome {
        Outcome::Deny(d) => d.reason,
        Outcome::Allow(_) => panic!("expected a denial, got {decision:?}"),
    }
}

fn allowed(decision: &Decision) -> &Allowed {
    match &decision.outcome {
        Outcome::Allow(a) => a,
        Outcome::Deny(d) => panic!("expected success, got {d:?}"),
    }
}

/// A header the request is forwarded with (the default header names).
fn header<'a>(a: &'a Allowed, name: &str) -> Option<&'a str> {
    static NAMES: std::sync::LazyLock<IdentityHeaders> =
        std::sync::LazyLock::new(IdentityHeaders::default);
    a.headers(&NAMES).find(|(n, _)| *n == name).map(|(_, v)| v)
}

#[test]
fn a_valid_token_is_allowed_and_described() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({"rate_limits": {"tier": "premium"}}));
    let d = f.bearer("GET", "/v1/contexts/projects/engineering/notes", &token);
    let a = allowed(&d);
    assert_eq!(header(a, "x-context-tenant"), Some("acme"));
    assert_eq!(header(a, "x-context-subject"), Some("alice"));
    assert_eq!(header(a, "x-context-tier"), Some("premium"));
    assert_eq!(header(a, "x-context-operation"), Some("read"));
    assert_eq!(
        header(a, "x-context-path"),
        Some("projects/engineering/notes")
    );
    assert_eq!(
        a.remove_headers,
        vec!["authorization"],
        "the token is not forwarded by default"
    );
    let established = Established::parse(Some(&a.filter_state));
    assert_eq!(established.identity.unwrap().tenant, "acme");
    assert_eq!(
        established.operation.unwrap().context,
        "projects/engineering/notes"
    );
    assert_eq!(d.cache, CacheUse::Miss);
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/engineering/notes", &token)
            .cache,
        CacheUse::Hit
    );
}

#[test]
fn spoofed_identity_headers_are_removed_everywhere() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({}));
    let auth = format!("Bearer {token}");
    let d = f.check(
        "GET",
        "/v1/contexts/projects/a",
        &[("authorization", &auth), ("x-context-tenant", "evil")],
    );
    assert_eq!(d.strip, vec!["x-context-tenant"]);
    assert_eq!(header(allowed(&d), "x-context-tenant"), Some("acme"));
    let d = f.check(
        "GET",
        "/health/context",
        &[("x-context-tenant", "evil"), ("x-context-subject", "root")],
    );
    allowed(&d);
    assert_eq!(d.strip, vec!["x-context-tenant", "x-context-subject"]);
    // Refusals strip them too: a forged tenant must not reach the access
    // log of a refused request.
    let d = f.check(
        "GET",
        "/v1/contexts/projects/a",
        &[("x-context-tenant", "evil")],
    );
    assert_eq!(denied(&d), Reason::MissingToken);
    assert_eq!(d.strip, vec!["x-context-tenant"]);
    let d = f.check("GET", "/v1/contexts/a;b", &[("x-context-tenant", "evil")]);
    assert_eq!(denied(&d), Reason::PathParameter);
    assert_eq!(d.strip, vec!["x-context-tenant"]);
}

#[test]
fn public_paths_and_preflight_need_no_token() {
    let mut f = fixture(json!({}));
    assert!(matches!(
        f.check("GET", "/health/context", &[]).outcome,
        Outcome::Allow(_)
    ));
    assert!(matches!(
        f.check("GET", "/.well-known/jwks.json", &[]).outcome,
        Outcome::Allow(_)
    ));
    assert_eq!(
        denied(&f.check("POST", "/health/context", &[])),
        Reason::MissingToken
    );
    assert_eq!(
        denied(&f.check("GET", "/health/context-admin", &[])),
        Reason::MissingToken
    );
    let preflight = [
        ("origin", "https://app"),
        ("access-control-request-method", "PUT"),
    ];
    assert!(matches!(
        f.check("OPTIONS", "/v1/contexts/x", &preflight).outcome,
        Outcome::Allow(_)
    ));
    assert_eq!(
        denied(&f.check("OPTIONS", "/v1/contexts/x", &[])),
        Reason::MissingToken
    );
}

fn forwarded_path(d: &Decision) -> Option<&str> {
    header(allowed(d), ":path")
}

#[test]
fn public_paths_are_matched_canonically_per_method_and_forwarded_canonically() {
    let mut f = fixture(json!({"public_paths": [
        {"exact": "/health/context", "methods": ["GET", "HEAD"]},
        {"prefix": "/.well-known", "methods": ["GET", "HEAD"]}
    ]}));
    // The servlet trick: `..;` is a dot segment to the upstream.
    assert_eq!(
        denied(&f.check("GET", "/.well-known/..;/v1/contexts/secret", &[])),
        Reason::PathParameter
    );
    assert_eq!(
        denied(&f.check("GET", "/.well-known/..%3B/v1/contexts/secret", &[])),
        Reason::PathParameter
    );
    // Dot segments resolve before matching: no way out of the prefix.
    assert_eq!(
        denied(&f.check("GET", "/.well-known/%2e%2e/v1/contexts/secret", &[])),
        Reason::MissingToken
    );
    assert_eq!(
        denied(&f.check("POST", "/.well-known/jwks.json", &[])),
        Reason::MissingToken,
        "GET and HEAD only"
    );
    let d = f.check("GET", "/.well-known//./jwks.json?x=%41", &[]);
    assert_eq!(forwarded_path(&d), Some("/.well-known/jwks.json?x=A"));
    let d = f.check("GET", "/.well-known/jwks.json", &[]);
    assert_eq!(forwarded_path(&d), None, "already canonical: untouched");
}

#[test]
fn the_upstream_receives_the_path_that_was_authorized() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({"context_scopes": ["read:projects/public"]}));
    let d = f.bearer("GET", "/V1/Contexts/./Projects/x/../Public/Doc", &token);
    assert_eq!(forwarded_path(&d), Some("/v1/contexts/projects/public/doc"));
    assert_eq!(
        denied(&f.bearer("GET", "/v1/contexts/projects/public/..;/secret", &token)),
        Reason::PathParameter
    );
    assert_eq!(
        denied(&f.bearer("GET", "/v1/contexts/projects/public%2F..%2Fsecret", &token)),
        Reason::InsufficientScope
    );
    let d = f.bearer("GET", "/v1/contexts/projects/public/a%20b?x=1;y=2", &token);
    assert_eq!(
        forwarded_path(&d),
        Some("/v1/contexts/projects/public/a%20b?x=1&y=2")
    );
    let d = f.bearer("GET", "/v1/contexts/projects/public", &token);
    assert_eq!(forwarded_path(&d), None);
}

#[test]
fn query_parameters_the_gateway_reads_are_unambiguous() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({"context_scopes": ["read:projects/public"]}));
    for query in [
        "context=projects/public&context=projects/secret",
        "context=projects/public&%63ontext=projects/secret",
        "context=projects/public&Context=projects/secret",
        "context=projects/public;context=projects/secret",
    ] {
        assert_eq!(
            denied(&f.bearer("POST", &format!("/v1/graph/traverse?{query}"), &token)),
            Reason::RepeatedParameter,
            "{query}"
        );
    }
    assert_eq!(
        denied(&f.bearer("POST", "/v1/graph/traverse?context=%zz", &token)),
        Reason::InvalidQuery
    );
    // A differently spelled key is read, and forwarded in the one spelling.
    let d = f.bearer(
        "POST",
        "/v1/graph/traverse?CONTEXT=Projects%2FPublic&depth=2",
        &token,
    );
    assert_eq!(
        forwarded_path(&d),
        Some("/v1/graph/traverse?context=projects/public&depth=2")
    );
}

#[test]
fn method_overrides_must_match_the_method() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({}));
    let auth = format!("Bearer {token}");
    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let d = f.check(
            "GET",
            "/v1/contexts/projects/a",
            &[("authorization", &auth), (header, "DELETE")],
        );
        assert_eq!(denied(&d), Reason::MethodOverride, "{header}");
        allowed(&f.check(
            "GET",
            "/v1/contexts/projects/a",
            &[("authorization", &auth), (header, "get")],
        ));
    }
    assert_eq!(
        denied(&f.bearer("POST", "/v1/contexts/projects/a?_method=DELETE", &token)),
        Reason::MethodOverride
    );
    assert_eq!(
        denied(&f.bearer("POST", "/v1/contexts/projects/a?_METHOD=DELETE", &token)),
        Reason::MethodOverride
    );
    // Public paths too: an override is refused before anything else.
    assert_eq!(
        denied(&f.check("GET", "/health/context", &[("x-http-method", "POST")])),
        Reason::MethodOverride
    );
    let mut custom =
        fixture(json!({"method_override_headers": ["x-verb"], "method_override_params": []}));
    let token = custom.token(json!({}));
    let auth = format!("Bearer {token}");
    assert_eq!(
        denied(&custom.check(
            "GET",
            "/v1/contexts/projects/a",
            &[("authorization", &auth), ("x-verb", "PUT")]
        )),
        Reason::MethodOverride
    );
    allowed(&custom.bearer("GET", "/v1/contexts/projects/a?_method=PUT", &token));
}

#[test]
fn preflights_with_a_body_are_refused_and_paths_are_canonicalized() {
    let mut f = fixture(json!({}));
    let preflight = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![
            ("origin", "https://app"),
            ("access-control-request-method", "PUT"),
        ];
        headers.extend_from_slice(extra);
        headers
    };
    assert_eq!(
        denied(&f.check(
            "OPTIONS",
            "/v1/contexts/x",
            &preflight(&[("content-length", "5")])
        )),
        Reason::PreflightBody
    );
    assert_eq!(
        denied(&f.check("OPTIONS", "/v1/contexts/x;y", &preflight(&[]))),
        Reason::PathParameter
    );
    let d = f.check("OPTIONS", "/v1//contexts/./x", &preflight(&[]));
    assert_eq!(forwarded_path(&d), Some("/v1/contexts/x"));
}

#[test]
fn token_sources_and_conflicts() {
    let mut f = fixture(json!({"token_sources": [
        {"header": "authorization", "prefix": "Bearer "},
        {"query": "access_token"},
        {"cookie": "ctx_token"}
    ]}));
    let token = f.token(json!({}));
    let other = f.token(json!({"sub": "bob"}));
    let path = format!("/v1/contexts/projects/a?access_token={token}");
    assert!(matches!(
        f.check("GET", &path, &[]).outcome,
        Outcome::Allow(_)
    ));
    let cookie = format!("theme=dark; ctx_token={token}");
    assert!(matches!(
        f.check("GET", "/v1/contexts/projects/a", &[("cookie", &cookie)])
            .outcome,
        Outcome::Allow(_)
    ));
    let same = format!("Bearer {token}");
    assert!(
        matches!(
            f.check("GET", &path, &[("authorization", &same)]).outcome,
            Outcome::Allow(_)
        ),
        "same token twice is fine"
    );
    let different = format!("Bearer {other}");
    assert_eq!(
        denied(&f.check("GET", &path, &[("authorization", &different)])),
        Reason::MultipleTokens
    );
    let auth1 = format!("Bearer {token}");
    let auth2 = format!("bearer {other}");
    assert_eq!(
        denied(&f.check(
            "GET",
            "/v1/contexts/projects/a",
            &[("authorization", &auth1), ("authorization", &auth2)]
        )),
        Reason::MultipleTokens
    );
    assert_eq!(
        denied(&f.check(
            "GET",
            "/v1/contexts/projects/a",
            &[("authorization", "Basic dXNlcjpwdw==")]
        )),
        Reason::MissingToken
    );
    assert_eq!(
        denied(&f.check(
            "GET",
            "/v1/contexts/projects/a",
            &[("authorization", "Bearer ")]
        )),
        Reason::MalformedToken
    );
}

#[test]
fn scope_rules_apply_per_operation() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({"context_scopes": ["read:projects/*", "write:projects/engineering", "admin:projects/engineering/ai-platform"]}));
    let ok = |f: &mut Fixture, m: &str, p: &str| {
        matches!(f.bearer(m, p, &token).outcome, Outcome::Allow(_))
    };
    assert!(ok(&mut f, "GET", "/v1/contexts/projects/marketing"));
    assert!(
        !ok(&mut f, "GET", "/v1/contexts/projects"),
        "PATH/* excludes PATH"
    );
    assert!(ok(&mut f, "PUT", "/v1/contexts/projects/engineering/x"));
    assert!(
        !ok(&mut f, "PUT", "/v1/contexts/projects/engineering-secret"),
        "per segment"
    );
    assert!(!ok(&mut f, "DELETE", "/v1/contexts/projects/engineering/x"));
    assert!(ok(
        &mut f,
        "DELETE",
        "/v1/contexts/projects/engineering/ai-platform/models"
    ));
    assert!(ok(
        &mut f,
        "POST",
        "/v1/graph/traverse?context=projects/marketing"
    ));
    assert!(!ok(
        &mut f,
        "PUT",
        "/v1/contexts/projects/x/../engineering/../marketing"
    ));
    assert!(ok(&mut f, "PUT", "/v1/contexts/Projects/ENGINEERING"));
    let d = f.bearer("PUT", "/v1/contexts/projects/marketing", &token);
    match &d.outcome {
        Outcome::Deny(denial) => {
            assert_eq!(denial.reason, Reason::InsufficientScope);
            assert_eq!(
                denial.required_scope.as_deref(),
                Some("write:projects/marketing")
            );
        }
        other => panic!("{other:?}"),
    }
    // Traversal leaves the operation's prefix: it matches nothing.
    assert_eq!(
        denied(&f.bearer("GET", "/v1/contexts/projects/%2e%2e/%2e%2e/x", &token)),
        Reason::UnknownOperation
    );
    assert_eq!(
        denied(&f.bearer("GET", "/v1/%2e%2e/%2e%2e/%2e%2e/x", &token)),
        Reason::InvalidPath
    );
    assert_eq!(
        denied(&f.bearer("POST", "/v1/graph/traverse", &token)),
        Reason::InvalidContext
    );
    assert_eq!(
        denied(&f.bearer("GET", "/v1/unknown", &token)),
        Reason::UnknownOperation
    );
}

#[test]
fn unmatched_requests_can_require_just_a_token() {
    let mut f = fixture(json!({"unmatched_requests": "authenticate"}));
    let token = f.token(json!({}));
    assert!(matches!(
        f.bearer("GET", "/v1/anything", &token).outcome,
        Outcome::Allow(_)
    ));
    assert_eq!(
        denied(&f.check("GET", "/v1/anything", &[])),
        Reason::MissingToken
    );
}

#[test]
fn token_failures_have_distinct_reasons() {
    let mut f = fixture(json!({}));
    let path = "/v1/contexts/projects/a";
    let cases = [
        (json!({"exp": NOW - 61}), Reason::TokenExpired),
        (json!({"nbf": NOW + 61}), Reason::TokenNotYetValid),
        (json!({"iss": "https://other"}), Reason::UnknownIssuer),
        (json!({"aud": "other-api"}), Reason::AudienceNotAllowed),
        (json!({"exp": null}), Reason::MissingClaim),
        (json!({"tenant_id": null}), Reason::MissingClaim),
        (json!({"sub": null}), Reason::MissingClaim),
    ];
    for (claims, reason) in cases {
        let token = f.token(claims.clone());
        assert_eq!(denied(&f.bearer("GET", path, &token)), reason, "{claims}");
    }
    for claims in [json!({"exp": NOW - 59}), json!({"nbf": NOW + 59})] {
        let token = f.token(claims.clone());
        assert!(
            matches!(f.bearer("GET", path, &token).outcome, Outcome::Allow(_)),
            "inside skew: {claims}"
        );
    }
    let token = f.token(json!({}));
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(matches!(
        denied(&f.bearer("GET", path, &tampered)),
        Reason::BadSignature | Reason::MalformedToken
    ));
    let big = "a".repeat(9000);
    assert_eq!(denied(&f.bearer("GET", path, &big)), Reason::TokenTooLarge);
    assert_eq!(
        denied(&f.bearer("GET", path, "not.a.jwt")),
        Reason::MalformedToken
    );
}

#[test]
fn refusals_are_cached_briefly() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({"aud": "other"}));
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &token).cache,
        CacheUse::Miss
    );
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &token).cache,
        CacheUse::Hit
    );
}

#[test]
fn cached_identities_expire_with_the_token() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({"exp": NOW + 5}));
    let headers: crate::headers::Headers = [(
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
    assert!(matches!(
        f.auth
            .check(&mut f.state, &f.store, &request, &env(), NOW)
            .outcome,
        Outcome::Allow(_)
    ));
    let later = f.auth.check(
        &mut f.state,
        &crate::shared::MemoryStore::default(),
        &request,
        &env(),
        NOW + 5 + 60 + 1,
    );
    assert_eq!(later.cache, CacheUse::Miss);
    assert_eq!(denied(&later), Reason::TokenExpired);
}

#[test]
fn delegation_rules() {
    let mut f = fixture(json!({}));
    let path = "/v1/contexts/projects/engineering/doc";
    let rights = json!({"can_delegate": true, "max_delegation_depth": 2, "delegatable_scopes": ["read:projects/engineering"]});
    let agent = json!({"sub": "agent-7"});
    let two = json!({"sub": "agent-7", "act": {"sub": "planner"}});
    let three = json!({"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}});

    let token = f.token(json!({"act": agent, "delegation_rights": rights}));
    let d = f.bearer("GET", path, &token);
    assert_eq!(
        header(allowed(&d), "x-context-actor-chain"),
        Some("agent-7")
    );
    let token = f.token(json!({"act": two, "delegation_rights": rights}));
    assert_eq!(
        header(
            allowed(&f.bearer("GET", path, &token)),
            "x-context-actor-chain"
        ),
        Some("agent-7,planner")
    );

    let token = f.token(json!({"act": three, "delegation_rights": rights}));
    assert_eq!(
        denied(&f.bearer("GET", path, &token)),
        Reason::DelegationTooDeep
    );
    let token = f.token(json!({"act": agent}));
    assert_eq!(
        denied(&f.bearer("GET", path, &token)),
        Reason::DelegationNotAllowed
    );
    let token = f.token(json!({"act": agent, "delegation_rights": {"can_delegate": false, "max_delegation_depth": 3, "delegatable_scopes": ["read:projects"]}}));
    assert_eq!(
        denied(&f.bearer("GET", path, &token)),
        Reason::DelegationNotAllowed
    );
    let token = f.token(json!({"act": agent, "delegation_rights": rights}));
    assert_eq!(
        denied(&f.bearer("PUT", path, &token)),
        Reason::DelegationScopeNotDelegable,
        "write is not delegatable"
    );
    assert_eq!(
        denied(&f.bearer("GET", "/v1/contexts/projects/marketing", &token)),
        Reason::DelegationScopeNotDelegable
    );
}

#[test]
fn configuration_errors_name_the_field() {
    let key = ES256KeyPair::generate();
    let err = |extra: Value| {
        Auth::from_json(config(&key, extra).to_string().as_bytes(), "test", SECRET)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(json!({"bogus": 1})).contains("unknown field `bogus`"));
    assert!(err(json!({"max_token_bytes": "big"})).starts_with("max_token_bytes:"));
    assert!(err(json!({"providers": []})).starts_with("providers:"));
    assert!(
        err(json!({"token_sources": [{"header": "a", "query": "b"}]}))
            .starts_with("token_sources[0]")
    );
    assert!(err(json!({"token_sources": []})).starts_with("token_sources:"));
    assert!(
        err(json!({"from_headers": [{"name": "Authorization"}]}))
            .starts_with("from_headers[0].name:")
    );
    assert!(err(json!({"from_params": ["a", ""]})).starts_with("from_params[1]:"));
    assert!(err(json!({"from_cookies": [""]})).starts_with("from_cookies[0]:"));
    assert!(
        err(json!({"from_headers": [{"name": "x", "prefix": "Bearer "}]}))
            .starts_with("from_headers[0].prefix: unknown field")
    );
    assert!(
        err(json!({"forward": true, "forward_token": true})).contains("duplicate field `forward`")
    );
    assert!(
        err(json!({"public_paths": [{"exact": "health"}]}))
            .starts_with("public_paths[0]: 'health' must start with '/'")
    );
    assert!(
        err(json!({"public_paths": [{"prefix": "/a", "suffix": "/b"}]}))
            .starts_with("public_paths[0]: set exactly one of")
    );
    assert!(
        err(json!({"providers": [{"name": "p", "issuer": "i", "clock_skew_seconds": "1.5s", "jwks": {"inline": {"keys": []}}}]}))
            .starts_with("providers[0].clock_skew_seconds: invalid duration \"1.5s\": is not a whole number of seconds")
    );
    assert!(
        err(json!({"identity_headers": {"tenant": "X-Tenant"}})).starts_with("identity_headers")
    );
    assert!(err(json!({"operations": [{"name": "r", "methods": ["GET"], "path": "/x", "action": "read"}]})).starts_with("operations[0]"));
    let weak = json!({"providers": [{"name": "h", "issuer": "i", "jwks": {"inline": {"keys": [{"kty": "oct", "alg": "HS256", "k": b64(&[1; 16])}]}}}]});
    let message = err(weak);
    assert!(
        message.starts_with("providers[0].jwks.inline") && message.contains("at least 32"),
        "{message}"
    );
    let dup = json!({"providers": [
        {"name": "a", "issuer": "i", "tenant": "t", "jwks": {"inline": jwks(&key)}},
        {"name": "b", "issuer": "i", "tenant": "t", "jwks": {"inline": jwks(&key)}}
    ]});
    assert!(err(dup).starts_with("providers[1].issuer"));
    let unbound = json!({"providers": [
        {"name": "a", "issuer": "i", "tenants": ["acme"], "jwks": {"inline": jwks(&key)}},
        {"name": "b", "issuer": "j", "jwks": {"inline": jwks(&key)}}
    ]});
    assert!(err(unbound).starts_with("providers[1].tenants"));
    assert!(
        err(json!({"method_override_headers": ["X-Bad"]}))
            .starts_with("method_override_headers[0]")
    );
    assert!(err(json!({"path_parameters": "strip"})).contains("path_parameters"));
    assert!(
        err(json!({"verification_throttle": {"client": {"ipv6_prefix": 200}}}))
            .starts_with("verification_throttle.client.ipv6_prefix")
    );
    assert!(err(json!({"providers": [{"name": "a", "issuer": "i", "jwks": {"remote": {"cluster": "c", "bogus": 1}}}]}))
        .contains("providers[0].jwks.remote"));
}

#[test]
fn several_providers_each_with_their_keys() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let hs = HS256Key::from_bytes(&[9u8; 32]).with_key_id("h1");
    let config = json!({
        "providers": [
            {"name": "es", "issuer": "https://es", "tenants": ["acme", "initech"], "jwks": {"inline": jwks(&key)}},
            {"name": "hs", "issuer": "https://hs", "tenant": "globex", "algorithms": ["HS256"],
             "jwks": {"inline": {"keys": [{"kty": "oct", "kid": "h1", "alg": "HS256", "k": b64(&[9u8; 32])}]}}}
        ],
        "unmatched_requests": "authenticate"
    });
    let auth = Auth::from_json(config.to_string().as_bytes(), "test", SECRET).unwrap();
    let mut state = auth.new_state();
    let claims = |iss: &str| {
        let custom: ExtraClaims = serde_json::from_value(json!({"tenant_id": "acme"})).unwrap();
        Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer(iss)
            .with_subject("s")
    };
    let check = |state: &mut AuthState, token: String| {
        let headers: crate::headers::Headers = [(
            "authorization".to_owned(),
            format!("Bearer {token}").into_bytes(),
        )]
        .into_iter()
        .collect();
        let request = RequestHead {
            method: "GET",
            path: "/x",
            headers: &headers,
        };
        auth.check(
            state,
            &crate::shared::MemoryStore::default(),
            &request,
            &env(),
            Clock::now_since_epoch().as_secs(),
        )
    };
    assert!(matches!(
        check(&mut state, key.sign(claims("https://es")).unwrap()).outcome,
        Outcome::Allow(_)
    ));
    // The HS provider pins its tenant: a token claiming another is refused.
    assert_eq!(
        denied(&check(
            &mut state,
            hs.authenticate(claims("https://hs")).unwrap()
        )),
        Reason::TenantNotAllowed
    );
    // The ES provider may assert acme and initech only.
    let globex = {
        let custom: ExtraClaims = serde_json::from_value(json!({"tenant_id": "globex"})).unwrap();
        Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer("https://es")
            .with_subject("s")
    };
    assert_eq!(
        denied(&check(&mut state, key.sign(globex).unwrap())),
        Reason::TenantNotAllowed
    );
    // A token signed by one provider's key but claiming the other issuer.
    assert_eq!(
        denied(&check(&mut state, key.sign(claims("https://hs")).unwrap())),
        Reason::UnsupportedAlgorithm
    );
}

#[test]
fn workers_share_verifications_through_shared_data() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({}));
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &token).cache,
        CacheUse::Miss
    );
    // A second worker: its own state, the same shared data.
    let mut other = f.auth.new_state();
    let headers: crate::headers::Headers = [(
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
    let d = f.auth.check(&mut other, &f.store, &request, &env(), NOW);
    assert_eq!(d.cache, CacheUse::SharedHit);
    assert_eq!(header(allowed(&d), "x-context-tenant"), Some("acme"));
    assert_eq!(
        f.auth
            .check(&mut other, &f.store, &request, &env(), NOW)
            .cache,
        CacheUse::Hit
    );
    // Refusals are not shared.
    let bad = f.token(json!({"aud": "other"}));
    assert_eq!(
        denied(&f.bearer("GET", "/v1/contexts/projects/a", &bad)),
        Reason::AudienceNotAllowed
    );
    let headers: crate::headers::Headers = [(
        "authorization".to_owned(),
        format!("Bearer {bad}").into_bytes(),
    )]
    .into_iter()
    .collect();
    let request = RequestHead {
        method: "GET",
        path: "/v1/contexts/projects/a",
        headers: &headers,
    };
    assert_eq!(
        f.auth
            .check(&mut other, &f.store, &request, &env(), NOW)
            .cache,
        CacheUse::Miss
    );
}

#[test]
fn a_query_the_rewritten_context_makes_too_long_is_refused_not_forwarded() {
    use crate::query::{MAX_QUERY_BYTES, Query};
    let mut f = fixture(json!({}));
    let token = f.token(json!({}));
    // `Ⱥ` (2 bytes) lowercases to `ⱥ` (3 bytes): the canonical context
    // the gateway forwards is longer than the one the client sent.
    let context = format!("context=projects/{}", "%C8%BA".repeat(10));
    let query = |pad: usize| format!("pad={}&{context}", "x".repeat(pad));
    let fits = MAX_QUERY_BYTES - Query::parse(&query(0)).unwrap().serialized_len();
    let path = |pad: usize| format!("/v1/graph/traverse?{}", query(pad));

    let d = f.bearer("POST", &path(fits - 30), &token);
    let forwarded = forwarded_path(&d).expect("the context is rewritten");
    assert!(forwarded.ends_with(&"%E2%B1%A5".repeat(10)), "{forwarded}");
    assert!(forwarded.len() - "/v1/graph/traverse?".len() <= MAX_QUERY_BYTES);
    // The client's query fits; the one the gateway would forward does not.
    assert!(Query::parse(&query(fits)).is_ok());
    assert_eq!(
        denied(&f.bearer("POST", &path(fits), &token)),
        Reason::InvalidQuery
    );
}

#[test]
fn shared_data_never_holds_the_token_or_a_part_of_it() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({}));
    assert!(
        allowed(&f.bearer("GET", "/v1/contexts/projects/a", &token))
            .identity
            .is_some()
    );
    let forged = format!("{}x", token.trim_end_matches(|c| c != '.'));
    f.bearer("GET", "/v1/contexts/projects/a", &forged);
    let entries = f.store.entries();
    assert!(
        entries.iter().any(|(k, _)| k.starts_with("test.cache.")),
        "the verification was shared"
    );
    for part in token.split('.').chain([token.as_str()]) {
        for (key, value) in &entries {
            assert!(!key.contains(part), "{key} holds a token part");
            assert!(
                !value.windows(part.len()).any(|w| w == part.as_bytes()),
                "{key}'s value holds a token part"
            );
        }
    }
}

#[test]
fn repeated_authorization_headers_joined_by_envoy_are_split() {
    let mut f = fixture(json!({}));
    let (a, b) = (f.token(json!({})), f.token(json!({"sub": "bob"})));
    let joined = format!("Bearer {a},Bearer {b}");
    assert_eq!(
        denied(&f.check(
            "GET",
            "/v1/contexts/projects/x",
            &[("authorization", &joined)]
        )),
        Reason::MultipleTokens
    );
    let same = format!("Bearer {a}, Bearer {a}");
    assert!(matches!(
        f.check(
            "GET",
            "/v1/contexts/projects/x",
            &[("authorization", &same)]
        )
        .outcome,
        Outcome::Allow(_)
    ));
}

#[test]
fn jwt_authn_token_sources_are_the_same_sources() {
    let parse = |extra: Value| -> AuthConfig {
        let key = ES256KeyPair::generate();
        crate::config::parse_json(config(&key, extra).to_string().as_bytes()).unwrap()
    };
    let envoy = parse(json!({
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-jwt"}],
        "from_params": ["access_token"],
        "from_cookies": ["ctx_token"]
    }));
    let ours = parse(json!({"token_sources": [
        {"header": "authorization", "prefix": "Bearer "},
        {"header": "x-jwt"},
        {"query": "access_token"},
        {"cookie": "ctx_token"}
    ]}));
    assert_eq!(envoy.all_token_sources(), ours.all_token_sources());
    // Both spellings together: all of them, token_sources first.
    let both = parse(json!({"token_sources": [{"query": "t"}], "from_cookies": ["c"]}));
    assert_eq!(
        both.all_token_sources(),
        [
            sources::TokenSource::Query("t".into()),
            sources::TokenSource::Cookie("c".into())
        ]
    );
    // None at all (or empty jwt_authn lists, as in jwt_authn): the default.
    let bearer = [sources::TokenSource::Header {
        name: "authorization".into(),
        prefix: Some("Bearer ".into()),
    }];
    assert_eq!(parse(json!({})).all_token_sources(), bearer);
    assert_eq!(
        parse(json!({"from_headers": [], "from_params": []})).all_token_sources(),
        bearer
    );

    let mut f = fixture(json!({
        "from_params": ["access_token"],
        "from_cookies": ["ctx_token"],
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}]
    }));
    let token = f.token(json!({}));
    let path = format!("/v1/contexts/projects/a?access_token={token}");
    let d = f.check("GET", &path, &[]);
    assert_eq!(
        header(allowed(&d), ":path"),
        Some("/v1/contexts/projects/a")
    );
    let cookie = format!("ctx_token={token}");
    assert!(matches!(
        f.check("GET", "/v1/contexts/projects/a", &[("cookie", &cookie)])
            .outcome,
        Outcome::Allow(_)
    ));
    let other = format!("Bearer {}", f.token(json!({"sub": "bob"})));
    assert_eq!(
        denied(&f.check("GET", &path, &[("authorization", &other)])),
        Reason::MultipleTokens
    );
}

#[test]
fn forward_keeps_the_token_under_either_spelling() {
    for (extra, kept) in [
        (json!({}), false),
        (json!({"forward": true}), true),
        (json!({"forward_token": true}), true),
        (json!({"forward": false}), false),
    ] {
        let mut f = fixture(extra.clone());
        let token = f.token(json!({}));
        let d = f.bearer("GET", "/v1/contexts/projects/a", &token);
        let removed = allowed(&d)
            .remove_headers
            .contains(&"authorization".to_owned());
        assert_eq!(removed, !kept, "{extra}");
    }
}

#[test]
fn tokens_are_taken_out_of_queries_and_cookies_too() {
    let mut f = fixture(json!({"token_sources": [{"query": "access_token"}, {"cookie": "ctx"}]}));
    let t = f.token(json!({}));
    let path = format!("/v1/contexts/projects/x?a=1&access_token={t}&b=2");
    let d = f.check("GET", &path, &[]);
    assert_eq!(
        header(allowed(&d), ":path"),
        Some("/v1/contexts/projects/x?a=1&b=2")
    );
    let cookie = format!("theme=dark; ctx={t}; lang=en");
    let d = f.check("GET", "/v1/contexts/projects/x", &[("cookie", &cookie)]);
    assert_eq!(header(allowed(&d), "cookie"), Some("theme=dark; lang=en"));
    let only = format!("ctx={t}");
    let d = f.check("GET", "/v1/contexts/projects/x", &[("cookie", &only)]);
    assert!(allowed(&d).remove_headers.contains(&"cookie".to_owned()));
}

#[test]
fn a_rotated_out_key_stops_vouching_for_cached_tokens() {
    let mut f = fixture(json!({}));
    let token = f.token(json!({}));
    assert!(matches!(
        f.bearer("GET", "/v1/contexts/projects/a", &token).outcome,
        Outcome::Allow(_)
    ));
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &token).cache,
        CacheUse::Hit
    );
    // The key set rotates: k1 is gone, another key takes its place.
    let other = ES256KeyPair::generate().with_key_id("k2");
    let mut jwks = jwks(&other);
    jwks["keys"][0]["kid"] = json!("k2");
    let keys = crate::jwt::KeySet::parse(&jwks.to_string()).unwrap().keys;
    f.state.install(0, keys);
    let d = f.bearer("GET", "/v1/contexts/projects/a", &token);
    assert_eq!(
        d.cache,
        CacheUse::Miss,
        "neither cache may answer for a removed key"
    );
    assert_eq!(denied(&d), Reason::UnknownKid);
}

#[test]
fn implausible_claims_are_refused() {
    let mut f = fixture(json!({}));
    let path = "/v1/contexts/projects/a";
    let t = f.token(json!({"exp": 1e300}));
    assert_eq!(denied(&f.bearer("GET", path, &t)), Reason::MalformedToken);
    let t = f.token(
        json!({"act": {"sub": "agent"}, "delegation_rights": [true, 5, ["read:projects/*"]]}),
    );
    assert_eq!(denied(&f.bearer("GET", path, &t)), Reason::MalformedToken);
    let t = f.token(json!({"rate_limits": "premium"}));
    assert_eq!(denied(&f.bearer("GET", path, &t)), Reason::MalformedToken);
}

#[test]
fn providers_can_cap_token_lifetimes() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = config(&key, json!({}));
    config["providers"][0]["max_lifetime_seconds"] = json!(3600);
    let auth = Auth::from_json(config.to_string().as_bytes(), "test", SECRET).unwrap();
    let mut f = Fixture {
        state: auth.new_state(),
        auth,
        store: crate::shared::MemoryStore::default(),
        key,
    };
    let long = f.token(json!({"exp": NOW + 7200}));
    assert_eq!(
        denied(&f.bearer("GET", "/v1/contexts/projects/a", &long)),
        Reason::LifetimeTooLong
    );
    let short = f.token(json!({"exp": NOW + 600}));
    assert!(matches!(
        f.bearer("GET", "/v1/contexts/projects/a", &short).outcome,
        Outcome::Allow(_)
    ));
}

fn other_worker(f: &Fixture, token: &str, now: u64) -> (AuthState, Decision) {
    let mut other = f.auth.new_state();
    let d = check_on(f, &mut other, token, now);
    (other, d)
}

fn check_on(f: &Fixture, state: &mut AuthState, token: &str, now: u64) -> Decision {
    let headers: crate::headers::Headers = [(
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
    f.auth.check(state, &f.store, &request, &env(), now)
}

#[test]
fn a_replaced_key_revokes_its_tokens_with_or_without_kid() {
    let mut f = fixture(json!({}));
    // A token without a kid, verified by trying every key.
    let without_kid = ES256KeyPair::from_bytes(&f.key.to_bytes()).unwrap();
    let with_kid_key = std::mem::replace(&mut f.key, without_kid);
    let no_kid = f.token(json!({}));
    f.key = with_kid_key;
    let with_kid = f.token(json!({}));
    let now = NOW;
    let mut state = f.auth.new_state();
    for token in [&no_kid, &with_kid] {
        allowed(&check_on(&f, &mut state, token, now));
        assert_eq!(check_on(&f, &mut state, token, now).cache, CacheUse::Hit);
    }
    // Other key material under the same kid: the cached verifications of
    // both tokens are worthless now.
    let replacement = ES256KeyPair::generate().with_key_id("k1");
    let keys = crate::jwt::KeySet::parse(&jwks(&replacement).to_string())
        .unwrap()
        .keys;
    state.install(0, keys);
    for token in [&no_kid, &with_kid] {
        let d = check_on(&f, &mut state, token, now);
        assert_eq!(
            d.cache,
            CacheUse::Miss,
            "no cache may answer for a replaced key"
        );
        assert_eq!(denied(&d), Reason::BadSignature);
    }
    // The shared cache neither: its entries name the old key's thumbprint.
    let mut fresh = f.auth.new_state();
    fresh.install(
        0,
        crate::jwt::KeySet::parse(&jwks(&replacement).to_string())
            .unwrap()
            .keys,
    );
    assert_eq!(
        check_on(&f, &mut fresh, &with_kid, now).cache,
        CacheUse::Miss
    );
}

#[test]
fn cheap_refusals_are_not_cached_and_cannot_push_good_entries_out() {
    let mut f = fixture(json!({"cache": {"max_entries": 4, "shared_slots": 0}}));
    let good = f.token(json!({}));
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &good).cache,
        CacheUse::Miss
    );
    for i in 0..50 {
        let garbage = format!("eyJhbGciOiJub25lIn0.e30.{i}");
        let d = f.bearer("GET", "/v1/contexts/projects/a", &garbage);
        assert_eq!(d.cache, CacheUse::Miss);
        let d = f.bearer("GET", "/v1/contexts/projects/a", &garbage);
        assert_eq!(d.cache, CacheUse::Miss, "a cheap refusal is not remembered");
    }
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &good).cache,
        CacheUse::Hit
    );
    assert_eq!(f.state.cache.len(), 1);
}

#[test]
fn a_shared_hit_never_extends_the_original_expiry() {
    let mut f = fixture(json!({"cache": {"max_ttl_seconds": 10}}));
    let token = f.token(json!({"exp": NOW + 3600}));
    assert_eq!(
        f.bearer("GET", "/v1/contexts/projects/a", &token).cache,
        CacheUse::Miss
    );
    // Another worker picks it up 8 s later: it may use it for 2 s more.
    let (mut other, d) = other_worker(&f, &token, NOW + 8);
    assert_eq!(d.cache, CacheUse::SharedHit);
    assert_eq!(
        check_on(&f, &mut other, &token, NOW + 9).cache,
        CacheUse::Hit
    );
    assert_eq!(
        check_on(&f, &mut other, &token, NOW + 11).cache,
        CacheUse::Miss,
        "past the first verification's max_ttl: verified again"
    );
}

#[test]
fn shared_entries_are_checked_again_before_they_are_believed() {
    let f = fixture(json!({}));
    let token = f.token(json!({}));
    let digest = cache::digest(&token);
    let keys = f.auth.new_state();
    let thumbprint = {
        // Whatever key verifies, its thumbprint is the one in the set.
        let Verified { identity, .. } = f
            .auth
            .verify_uncached(&keys, &token, NOW, &mut || Ok(()))
            .ok()
            .unwrap();
        identity.key.unwrap().thumbprint
    };
    let forge = |claims: Value| {
        let entry = SharedEntry {
            provider: 0,
            provider_tag: f.auth.providers[0].tag,
            valid_until: NOW + 600,
            thumbprint,
            payload: claims.to_string().into_bytes(),
        };
        f.auth.shared_cache.put(&f.store, &digest, &entry);
    };
    let base = json!({"iss": ISS, "sub": "mallory", "aud": "context-api", "exp": NOW + 600,
                      "tenant_id": "acme", "context_scopes": ["admin:projects/*"]});
    for (field, value) in [
        ("aud", json!("another-api")),
        ("iss", json!("https://elsewhere")),
        ("exp", json!(NOW - 3600)),
        ("nbf", json!(NOW + 3600)),
    ] {
        let mut claims = base.clone();
        claims[field] = value;
        forge(claims);
        let (_, d) = other_worker(&f, &token, NOW);
        assert_eq!(
            d.cache,
            CacheUse::Miss,
            "{field}: the forged entry is not believed"
        );
        // Verified for real instead: the genuine identity.
        assert_eq!(header(allowed(&d), "x-context-subject"), Some("alice"));
    }
    // An entry for another configuration's provider is not believed either.
    let entry = SharedEntry {
        provider: 0,
        provider_tag: 42,
        valid_until: NOW + 600,
        thumbprint,
        payload: base.to_string().into_bytes(),
    };
    f.auth.shared_cache.put(&f.store, &digest, &entry);
    assert_eq!(other_worker(&f, &token, NOW).1.cache, CacheUse::Miss);
}

#[test]
fn a_tenant_segment_must_name_the_verified_tenant() {
    let mut f = fixture(json!({"operations": [
        {"name": "read", "methods": ["GET"], "path": "/v1/tenants/{tenant}/contexts/{context}", "action": "read"}
    ]}));
    let token = f.token(json!({}));
    let d = f.bearer("GET", "/v1/tenants/acme/contexts/projects/a", &token);
    assert_eq!(header(allowed(&d), "x-context-tenant"), Some("acme"));
    assert_eq!(
        denied(&f.bearer("GET", "/v1/tenants/globex/contexts/projects/a", &token)),
        Reason::TenantMismatch
    );
    assert_eq!(
        denied(&f.bearer("GET", "/v1/tenants/ACME/contexts/projects/a", &token)),
        Reason::TenantMismatch
    );
}

#[test]
fn delegation_rules_apply_to_unmatched_requests_too() {
    let mut f = fixture(json!({"unmatched_requests": "authenticate"}));
    let delegated = f.token(json!({"act": {"sub": "agent"}}));
    assert_eq!(
        denied(&f.bearer("GET", "/v1/anything", &delegated)),
        Reason::DelegationNotAllowed
    );
    let deep = f.token(json!({
        "act": {"sub": "a", "act": {"sub": "b"}},
        "delegation_rights": {"can_delegate": true, "max_delegation_depth": 1}
    }));
    assert_eq!(
        denied(&f.bearer("GET", "/v1/anything", &deep)),
        Reason::DelegationTooDeep
    );
    let fine = f.token(json!({
        "act": {"sub": "a"},
        "delegation_rights": {"can_delegate": true, "max_delegation_depth": 1}
    }));
    allowed(&f.bearer("GET", "/v1/anything", &fine));
    // A case variant of a template cannot fall through to "unmatched".
    let narrow = f.token(json!({"context_scopes": ["read:projects/public"]}));
    assert_eq!(
        denied(&f.bearer("GET", "/V1/CONTEXTS/projects/secret", &narrow)),
        Reason::InsufficientScope
    );
}

#[test]
fn failed_verifications_are_throttled_per_client_before_signature_work() {
    let mut f = fixture(json!({"verification_throttle": {"failures": 3, "window_seconds": 60}}));
    let forged = {
        let other = ES256KeyPair::generate().with_key_id("k1");
        let custom: ExtraClaims = serde_json::from_value(json!({"tenant_id": "acme"})).unwrap();
        let claims = Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer(ISS)
            .with_subject("mallory")
            .with_audience("context-api");
        move |i: u64| {
            other
                .sign(claims.clone().with_jwt_id(i.to_string()))
                .unwrap()
        }
    };
    let now = Clock::now_since_epoch().as_secs();
    let mut check = |token: &str| {
        let headers: crate::headers::Headers = [(
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
        f.auth.check(&mut f.state, &f.store, &request, &env(), now)
    };
    for i in 0..3 {
        assert_eq!(denied(&check(&forged(i))), Reason::BadSignature);
    }
    let d = check(&forged(3));
    assert_eq!(denied(&d), Reason::VerificationThrottled);
    let Outcome::Deny(denial) = &d.outcome else {
        panic!()
    };
    let reply = denial.reply(
        "r",
        &RequestHead {
            method: "GET",
            path: "/",
            headers: &crate::headers::NO_HEADERS,
        },
    );
    assert_eq!(reply.status, 429);
    assert!(
        reply
            .headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v == "20")
    );
    // A good token from the same client is throttled too until the bucket
    // leaks: no signature work for this client at all.
    let good = {
        let custom: ExtraClaims = serde_json::from_value(
            json!({"tenant_id": "acme", "context_scopes": ["read:projects/*"]}),
        )
        .unwrap();
        let claims = Claims::with_custom_claims(custom, Duration::from_secs(600))
            .with_issuer(ISS)
            .with_subject("alice")
            .with_audience("context-api");
        f.key.sign(claims).unwrap()
    };
    assert_eq!(denied(&check(&good)), Reason::VerificationThrottled);
}

#[path = "service_tests.rs"]
mod service;
