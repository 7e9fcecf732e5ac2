//! Service identity: client certificates mapped to principals, service
//! tokens (the `service` token role), and a service acting for a user.

use super::*;
use crate::host::Attribute;

const INTERNAL: &str = "https://internal.test";
const INGEST: &str = "spiffe://cluster.local/ns/ctx/sa/ingest";

/// Two providers (users, and the internal issuer of service tokens), one
/// service principal, and an operation only services may call.
fn services(extra: Value) -> Fixture {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let mut config = json!({
        "providers": [
            {"name": "test", "issuer": ISS, "audiences": ["context-api"], "tenants": ["acme"], "jwks": {"inline": jwks(&key)}},
            {"name": "internal", "issuer": INTERNAL, "role": "service", "tenant": "platform", "jwks": {"inline": jwks(&key)}}
        ],
        "services": [
            {"name": "ingest", "match": {"spiffe_id": INGEST}, "tenant": "acme", "scopes": ["write:projects/engineering", "read:projects/engineering"]}
        ],
        "operations": [
            {"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "ingest", "methods": ["POST"], "path": "/v1/ingest/{context}", "action": "write", "require_service": true}
        ]
    });
    if let (Some(target), Value::Object(extra)) = (config.as_object_mut(), extra) {
        target.extend(extra);
    }
    let auth = Auth::from_json(config.to_string().as_bytes(), "test", SECRET).unwrap();
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

/// What Envoy reports for a connection: `None` without a client
/// certificate, else its first URI SAN.
fn connection(uri_san: Option<&'static str>) -> impl Fn(Attribute) -> Option<String> {
    move |attribute| match attribute {
        Attribute::PeerMtls => Some(uri_san.is_some().to_string()),
        Attribute::PeerUriSan => uri_san.map(str::to_owned),
        Attribute::PeerSubject => uri_san.map(|_| "CN=x,O=ctxgate".to_owned()),
        _ => None,
    }
}

impl Fixture {
    fn service_token(&self, sub: &str) -> String {
        sign(
            &self.key,
            json!({"iss": INTERNAL, "sub": sub, "iat": NOW, "exp": NOW + 300}),
        )
    }

    fn call(
        &mut self,
        method: &str,
        path: &str,
        uri_san: Option<&'static str>,
        headers: &[(&str, &str)],
    ) -> Decision {
        let headers: crate::headers::Headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        let request = RequestHead {
            method,
            path,
            headers: &headers,
        };
        let peer = connection(uri_san);
        let env = RequestEnv {
            peer: &peer,
            ..env()
        };
        self.auth
            .check(&mut self.state, &self.store, &request, &env, NOW)
    }
}

#[test]
fn a_mapped_certificate_is_the_service_with_its_scopes() {
    let mut f = services(json!({}));
    let d = f.call(
        "PUT",
        "/v1/contexts/projects/engineering/a",
        Some(INGEST),
        &[],
    );
    let a = allowed(&d);
    assert_eq!(header(a, "x-context-service"), Some("ingest"));
    assert_eq!(header(a, "x-context-subject"), Some(INGEST));
    assert_eq!(header(a, "x-context-tenant"), Some("acme"));
    assert_eq!(header(a, "x-context-issuer"), Some("mtls"));
    assert_eq!(
        header(a, "x-context-scopes"),
        Some("write:projects/engineering read:projects/engineering")
    );
    let caller = a.established.identity.as_deref().unwrap();
    assert_eq!(caller.service.as_deref(), Some("ingest"));
    assert!(!caller.on_behalf_of);
    assert!(String::from_utf8_lossy(&a.filter_state).contains(r#""service":"ingest""#));
    // Outside its scopes: refused like a token would be.
    let d = f.call("PUT", "/v1/contexts/projects/ops", Some(INGEST), &[]);
    assert_eq!(denied(&d), Reason::InsufficientScope);
    // Operations that require a service take it.
    let d = f.call("POST", "/v1/ingest/projects/engineering", Some(INGEST), &[]);
    allowed(&d);
}

#[test]
fn operations_requiring_a_service_refuse_everyone_else_distinctly() {
    let mut f = services(json!({}));
    let path = "/v1/ingest/projects/engineering";
    let d = f.call("POST", path, None, &[]);
    assert_eq!(denied(&d), Reason::MissingClientCertificate);
    assert_eq!(Reason::MissingClientCertificate.status(), 403);
    let d = f.call(
        "POST",
        path,
        Some("spiffe://cluster.local/ns/ctx/sa/other"),
        &[],
    );
    assert_eq!(denied(&d), Reason::UnknownServiceCertificate);
    assert_eq!(Reason::UnknownServiceCertificate.status(), 403);
    // A user token does not make a service; nor does a service token
    // without the certificate.
    let user = f.token(json!({"context_scopes": ["admin:projects/*"]}));
    let d = f.call(
        "POST",
        path,
        None,
        &[("authorization", &format!("Bearer {user}"))],
    );
    assert_eq!(denied(&d), Reason::MissingClientCertificate);
    let service = f.service_token(INGEST);
    let d = f.call("POST", path, None, &[("x-service-token", &service)]);
    assert_eq!(denied(&d), Reason::MissingClientCertificate);
    // An unknown certificate on an operation that does not require a
    // service is ignored: the user's token decides.
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        Some("spiffe://cluster.local/ns/ctx/sa/other"),
        &[("authorization", &format!("Bearer {user}"))],
    );
    assert_eq!(header(allowed(&d), "x-context-subject"), Some("alice"));
}

#[test]
fn a_service_token_must_name_the_certificate() {
    let required = json!({"services": [
        {"name": "ingest", "match": {"spiffe_id": INGEST}, "tenant": "acme", "scopes": ["write:projects/*"], "require_token": true}
    ]});
    let mut f = services(required);
    let path = "/v1/ingest/projects/engineering";
    let d = f.call("POST", path, Some(INGEST), &[]);
    assert_eq!(denied(&d), Reason::MissingServiceToken);
    assert_eq!(Reason::MissingServiceToken.status(), 401);
    let other = f.service_token("spiffe://cluster.local/ns/ctx/sa/other");
    let d = f.call("POST", path, Some(INGEST), &[("x-service-token", &other)]);
    assert_eq!(denied(&d), Reason::ServiceTokenMismatch);
    assert_eq!(Reason::ServiceTokenMismatch.status(), 403);
    let good = f.service_token(INGEST);
    let d = f.call("POST", path, Some(INGEST), &[("x-service-token", &good)]);
    let a = allowed(&d);
    assert_eq!(header(a, "x-context-service"), Some("ingest"));
    assert_eq!(header(a, "x-context-tenant"), Some("acme"));
    // The service token is taken out of the request.
    assert!(a.remove_headers.contains(&"x-service-token".to_owned()));
    // Not required, but sent: it must still match.
    let mut f = services(json!({}));
    let other = f.service_token("spiffe://cluster.local/ns/ctx/sa/other");
    let d = f.call("POST", path, Some(INGEST), &[("x-service-token", &other)]);
    assert_eq!(denied(&d), Reason::ServiceTokenMismatch);
}

#[test]
fn tokens_verify_only_in_their_role() {
    let mut f = services(json!({}));
    let user = f.token(json!({}));
    let service = f.service_token(INGEST);
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("x-service-token", &user)],
    );
    assert_eq!(denied(&d), Reason::TokenRoleMismatch);
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("authorization", &format!("Bearer {service}"))],
    );
    assert_eq!(denied(&d), Reason::TokenRoleMismatch);
    // Twice, from the token cache this time: the same answer.
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("authorization", &format!("Bearer {service}"))],
    );
    assert_eq!(denied(&d), Reason::TokenRoleMismatch);
    assert_eq!(d.cache, CacheUse::Hit);
    // Two user tokens compete; one of each role does not.
    let other = f.token(json!({"sub": "bob"}));
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("authorization", &format!("Bearer {user}, Bearer {other}"))],
    );
    assert_eq!(denied(&d), Reason::MultipleTokens);
    let other_service = f.service_token("spiffe://x/y");
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("x-service-token", &format!("{service}, {other_service}"))],
    );
    assert_eq!(denied(&d), Reason::MultipleTokens);
    // A service token alone: the token's subject, tenant and scopes.
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("x-service-token", &service)],
    );
    assert_eq!(denied(&d), Reason::InsufficientScope);
    let scoped = sign(
        &f.key,
        json!({"iss": INTERNAL, "sub": INGEST, "iat": NOW, "exp": NOW + 300, "context_scopes": ["read:projects/*"]}),
    );
    let d = f.call(
        "GET",
        "/v1/contexts/projects/a",
        None,
        &[("x-service-token", &scoped)],
    );
    let a = allowed(&d);
    assert_eq!(header(a, "x-context-service"), Some(INGEST));
    assert_eq!(header(a, "x-context-tenant"), Some("platform"));
}

#[test]
fn a_service_calls_for_a_user_who_lets_it() {
    let mut f = services(json!({}));
    let delegating = json!({
        "context_scopes": ["write:projects/*", "admin:ops"],
        "may_act": {"sub": INGEST},
        "delegation_rights": {"can_delegate": true, "max_delegation_depth": 2, "delegatable_scopes": ["write:projects/*"]},
        "act": {"sub": "agent-7"}
    });
    let user = f.token(delegating.clone());
    let service = f.service_token(INGEST);
    let headers = [
        ("authorization", format!("Bearer {user}")),
        ("x-service-token", service.clone()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Layered: certificate, service token and user token together.
    let d = f.call(
        "PUT",
        "/v1/contexts/projects/engineering/x",
        Some(INGEST),
        &headers,
    );
    let a = allowed(&d);
    assert_eq!(header(a, "x-context-subject"), Some("alice"));
    assert_eq!(header(a, "x-context-tenant"), Some("acme"));
    assert_eq!(header(a, "x-context-service"), Some("ingest"));
    assert_eq!(header(a, "x-context-issuer"), Some(ISS));
    assert_eq!(
        header(a, "x-context-actor-chain"),
        Some("spiffe://cluster.local/ns/ctx/sa/ingest,agent-7")
    );
    // What both grant: the service's engineering scopes within the user's.
    assert_eq!(
        header(a, "x-context-scopes"),
        Some("write:projects/engineering read:projects/engineering")
    );
    let caller = a.established.identity.as_deref().unwrap();
    assert!(caller.on_behalf_of);
    assert_eq!(caller.subject, "alice");
    assert_eq!(caller.actors, [INGEST, "agent-7"]);
    let both = ["authorization", "x-service-token"].map(String::from);
    assert!(both.iter().all(|h| a.remove_headers.contains(h)));
    // The certificate alone with the user token does it too.
    let d = f.call(
        "PUT",
        "/v1/contexts/projects/engineering/x",
        Some(INGEST),
        &headers[..1],
    );
    assert_eq!(header(allowed(&d), "x-context-service"), Some("ingest"));
    // Within the user's scopes but not the service's: refused.
    let d = f.call("PUT", "/v1/contexts/projects/ops/x", Some(INGEST), &headers);
    assert_eq!(denied(&d), Reason::InsufficientScope);
    // Within both but not delegable by the user: refused.
    let wide = json!({"services": [
        {"name": "ingest", "match": {"spiffe_id": INGEST}, "tenant": "acme", "scopes": ["admin:*"]}
    ]});
    let mut g = services(wide);
    let user = g.token(delegating);
    let d = g.call(
        "PUT",
        "/v1/contexts/ops/x",
        Some(INGEST),
        &[("authorization", &format!("Bearer {user}"))],
    );
    assert_eq!(denied(&d), Reason::DelegationScopeNotDelegable);

    // A user who does not name the service in may_act: refused, with a
    // reason of its own.
    let stranger = f.token(json!({
        "delegation_rights": {"can_delegate": true, "max_delegation_depth": 2, "delegatable_scopes": ["write:projects/*"]},
        "may_act": [{"sub": "spiffe://cluster.local/ns/ctx/sa/other"}]
    }));
    let d = f.call(
        "PUT",
        "/v1/contexts/projects/engineering/x",
        Some(INGEST),
        &[("authorization", &format!("Bearer {stranger}"))],
    );
    assert_eq!(denied(&d), Reason::OnBehalfOfNotAllowed);
    assert_eq!(Reason::OnBehalfOfNotAllowed.status(), 403);
    // Named, but without delegation rights: the delegation rules refuse.
    let no_rights = f.token(json!({"may_act": {"sub": INGEST}}));
    let d = f.call(
        "PUT",
        "/v1/contexts/projects/engineering/x",
        Some(INGEST),
        &[("authorization", &format!("Bearer {no_rights}"))],
    );
    assert_eq!(denied(&d), Reason::DelegationNotAllowed);
}

#[test]
fn service_configuration_errors_name_their_field() {
    let key = ES256KeyPair::generate();
    let err = |extra: Value| {
        Auth::from_json(config(&key, extra).to_string().as_bytes(), "t", SECRET)
            .err()
            .unwrap()
            .field
    };
    assert_eq!(
        err(
            json!({"operations": [{"name": "i", "methods": ["POST"], "path": "/i/{context}", "action": "write", "require_service": true}]})
        ),
        "services"
    );
    assert_eq!(
        err(
            json!({"services": [{"name": "s", "match": {"dns_san": "s.svc"}, "tenant": "acme", "require_token": true}]})
        ),
        "services[0].require_token"
    );
    assert_eq!(
        err(
            json!({"services": [{"name": "s", "match": {"dns_san": "s.svc"}, "tenant": "acme", "scopes": ["fly:a"]}]})
        ),
        "services[0].scopes"
    );
    // The default service source exists only with a service provider.
    let user_only = crate::config::parse_json::<config::AuthConfig>(
        config(&key, json!({})).to_string().as_bytes(),
    )
    .unwrap();
    assert!(
        user_only
            .role_sources()
            .iter()
            .all(|s| s.role == config::TokenRole::User)
    );
}
