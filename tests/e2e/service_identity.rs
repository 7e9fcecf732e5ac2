//! Service identity through a real Envoy (1.40, two workers): a TLS
//! listener that asks for client certificates without requiring them, the
//! test PKI's certificates made at test time, the ctxgate module's auth
//! stage mapping them to service principals, service tokens next to user
//! tokens, and a service calling on behalf of a user, in front of the demo
//! echo upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "auth/support.rs"]
mod support;

use std::time::Duration;

use ctxgate_demo::MintOptions;
use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{
    Cluster, Envoy, EnvoyConfig, Request, Response, Route, TestPki, TlsClient, WasmFilter,
    eventually,
};
use serde_json::{Value, json};
use support::{AUDIENCE, ISSUER, REALM, TestKeys, bearer, demo_operations, denied, forwarded};

const INGEST: &str = "spiffe://cluster.local/ns/ctx/sa/ingest";
const BATCH: &str = "spiffe://cluster.local/ns/ctx/sa/batch";
const STRANGER: &str = "spiffe://cluster.local/ns/ctx/sa/stranger";
/// The internal issuer of service tokens.
const INTERNAL: &str = "https://internal.e2e";
const INGEST_PATH: &str = "/v1/ingest/projects/engineering";

fn plugin_config(keys: &TestKeys) -> Value {
    let mut operations = demo_operations();
    operations.as_array_mut().unwrap().push(json!({
        "name": "ingest", "methods": ["POST"], "path": "/v1/ingest/{context}",
        "action": "write", "require_service": true
    }));
    json!({
        "realm": REALM,
        "providers": [
            {"name": "demo", "issuer": ISSUER, "audiences": [AUDIENCE], "tenants": ["acme"],
             "jwks": {"inline": keys.jwks()}},
            {"name": "internal", "issuer": INTERNAL, "role": "service", "tenant": "platform",
             "jwks": {"inline": keys.jwks()}}
        ],
        "services": [
            {"name": "ingest", "match": {"spiffe_id": INGEST}, "tenant": "acme",
             "scopes": ["write:projects/engineering"]},
            {"name": "batch", "match": {"spiffe_id": BATCH}, "tenant": "acme",
             "scopes": ["write:projects/*"], "require_token": true}
        ],
        "operations": operations,
    })
}

struct Gate {
    envoy: Envoy,
    pki: TestPki,
    keys: TestKeys,
    _upstream: ShutdownHandle,
}

impl Gate {
    fn start() -> Gate {
        let pki = TestPki::new();
        let keys = TestKeys::generate();
        let (upstream_addr, upstream) =
            ctxgate_demo::spawn_in_thread("127.0.0.1:0", "standard").unwrap();
        let envoy = Envoy::start(
            &EnvoyConfig::new()
                .concurrency(2)
                .downstream_tls(&pki, false)
                .access_log("%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n")
                .filter(WasmFilter::single("auth", plugin_config(&keys)))
                .route(Route::prefix("/").cluster("upstream"))
                .cluster(Cluster::new("upstream", [upstream_addr])),
        );
        Gate {
            envoy,
            pki,
            keys,
            _upstream: upstream,
        }
    }

    /// A TLS client presenting a certificate with this SPIFFE ID.
    fn service(&self, name: &str, spiffe_id: &str) -> TlsClient {
        let cert = self.pki.client(name, Some(spiffe_id), name);
        self.pki.tls_client().cert(&cert)
    }

    fn send(&self, client: &TlsClient, request: Request) -> Response {
        let response = request
            .timeout(Duration::from_secs(10))
            .send_tls(self.envoy.listener_addr(), client);
        assert!(
            response.status < 500,
            "server error {}: {:?}",
            response.status,
            response.text()
        );
        response
    }

    /// A user token (tenant acme, user-1) with these extra claims.
    fn user_token(&self, scopes: &[&str], extra: Value) -> String {
        let mut opts = support::with_scopes(scopes);
        opts.extra_claims = extra.as_object().cloned().unwrap_or_default();
        self.keys.token(&opts)
    }

    /// A service token of the internal issuer for `sub`.
    fn service_token(&self, sub: &str) -> String {
        self.keys.token(&MintOptions {
            sub: sub.into(),
            iss: INTERNAL.into(),
            tenant: None,
            aud: Vec::new(),
            exp_in: 300,
            ..MintOptions::default()
        })
    }

    fn wait_metric(&self, name: &str, value: u64) -> u64 {
        self.envoy
            .wait_for_metric(&format!("ctxgate_auth.{name}"), value)
    }
}

#[test]
fn service_identity_from_certificates_tokens_and_users() {
    let gate = Gate::start();
    let ingest = gate.service("ingest", INGEST);
    let batch = gate.service("batch", BATCH);
    let stranger = gate.service("stranger", STRANGER);
    let anonymous = gate.pki.tls_client();

    // A mapped certificate alone is the service, with its scopes: allowed
    // where they reach...
    let response = gate.send(
        &ingest,
        Request::new("PUT", "/v1/contexts/projects/engineering/notes")
            // a client's own copy of a trusted header never gets through
            .header("x-context-service", "forged"),
    );
    let seen = forwarded(&response);
    assert_eq!(seen.header("x-context-service").as_deref(), Some("ingest"));
    assert_eq!(seen.header("x-context-subject").as_deref(), Some(INGEST));
    assert_eq!(seen.header("x-context-tenant").as_deref(), Some("acme"));
    assert_eq!(seen.header("x-context-issuer").as_deref(), Some("mtls"));
    assert_eq!(
        seen.header("x-context-scopes").as_deref(),
        Some("write:projects/engineering")
    );
    assert_eq!(seen.header("x-context-operation").as_deref(), Some("write"));
    // ...refused where they do not.
    let response = gate.send(&ingest, Request::new("PUT", "/v1/contexts/projects/ops"));
    denied(&response, 403, "insufficient_scope");
    // The operation that requires a service takes the certificate.
    let response = gate.send(&ingest, Request::new("POST", INGEST_PATH));
    assert_eq!(
        forwarded(&response).header("x-context-service").as_deref(),
        Some("ingest")
    );

    // Refused, each for its own reason: no certificate (even with a valid
    // user token), an unknown certificate, a principal that needs a service
    // token without one, and a service token for another service.
    let user = gate.user_token(&["admin:projects/*"], json!({}));
    let response = gate.send(
        &anonymous,
        Request::new("POST", INGEST_PATH).header("authorization", &bearer(&user)),
    );
    let refusal = denied(&response, 403, "missing_client_certificate");
    // About the certificate, not a bearer token: a bare challenge.
    assert_eq!(refusal.body["error"], "access_denied");
    assert_eq!(refusal.attribute("error"), None);
    let response = gate.send(&stranger, Request::new("POST", INGEST_PATH));
    denied(&response, 403, "unknown_service_certificate");
    let response = gate.send(&batch, Request::new("POST", INGEST_PATH));
    denied(&response, 401, "missing_service_token");
    let response = gate.send(
        &batch,
        Request::new("POST", INGEST_PATH).header("x-service-token", &gate.service_token(INGEST)),
    );
    denied(&response, 403, "service_token_mismatch");
    // The right service token: in, and the token stays at the gateway.
    let response = gate.send(
        &batch,
        Request::new("POST", INGEST_PATH).header("x-service-token", &gate.service_token(BATCH)),
    );
    let seen = forwarded(&response);
    assert_eq!(seen.header("x-context-service").as_deref(), Some("batch"));
    assert_eq!(seen.header("x-service-token"), None);
    // A user token where a service token belongs is refused.
    let response = gate.send(
        &batch,
        Request::new("POST", INGEST_PATH).header("x-service-token", &user),
    );
    denied(&response, 401, "token_role_mismatch");

    // A user's token and a service token together (layered) are not
    // `multiple_tokens`; two user tokens still are.
    let delegating = gate.user_token(
        &["write:projects/*"],
        json!({
            "may_act": {"sub": BATCH},
            "delegation_rights": {"can_delegate": true, "max_delegation_depth": 1,
                                  "delegatable_scopes": ["write:projects/*"]}
        }),
    );
    let response = gate.send(
        &batch,
        Request::new("PUT", "/v1/contexts/projects/docs")
            .header("authorization", &bearer(&delegating))
            .header("x-service-token", &gate.service_token(BATCH)),
    );
    // The service called for the user: the upstream knows both.
    let seen = forwarded(&response);
    assert_eq!(seen.header("x-context-subject").as_deref(), Some("user-1"));
    assert_eq!(seen.header("x-context-tenant").as_deref(), Some("acme"));
    assert_eq!(seen.header("x-context-issuer").as_deref(), Some(ISSUER));
    assert_eq!(seen.header("x-context-service").as_deref(), Some("batch"));
    assert_eq!(seen.header("x-context-actor-chain").as_deref(), Some(BATCH));
    assert_eq!(
        seen.header("x-context-scopes").as_deref(),
        Some("write:projects/*")
    );
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-service-token"), None);
    let other = gate.user_token(&["read:projects/*"], json!({}));
    let response = gate.send(
        &batch,
        Request::new("PUT", "/v1/contexts/projects/docs")
            .header(
                "authorization",
                &format!("Bearer {delegating}, Bearer {other}"),
            )
            .header("x-service-token", &gate.service_token(BATCH)),
    );
    denied(&response, 400, "multiple_tokens");

    // The certificate alone with the user's token: ingest for the user,
    // within what both grant (the user's projects/*, ingest's engineering).
    let for_ingest = gate.user_token(
        &["write:projects/*"],
        json!({
            "may_act": [{"sub": INGEST}],
            "delegation_rights": {"can_delegate": true, "max_delegation_depth": 1,
                                  "delegatable_scopes": ["write:projects/*"]}
        }),
    );
    let response = gate.send(
        &ingest,
        Request::new("PUT", "/v1/contexts/projects/engineering/a")
            .header("authorization", &bearer(&for_ingest)),
    );
    let seen = forwarded(&response);
    assert_eq!(seen.header("x-context-subject").as_deref(), Some("user-1"));
    assert_eq!(seen.header("x-context-service").as_deref(), Some("ingest"));
    assert_eq!(
        seen.header("x-context-actor-chain").as_deref(),
        Some(INGEST)
    );
    assert_eq!(
        seen.header("x-context-scopes").as_deref(),
        Some("write:projects/engineering")
    );
    let response = gate.send(
        &ingest,
        Request::new("PUT", "/v1/contexts/projects/docs")
            .header("authorization", &bearer(&for_ingest)),
    );
    denied(&response, 403, "insufficient_scope");

    // A user who has not let the service act for them: refused.
    let response = gate.send(
        &ingest,
        Request::new("PUT", "/v1/contexts/projects/engineering/a")
            .header("authorization", &bearer(&delegating)),
    );
    denied(&response, 403, "on_behalf_of_not_allowed");
    let no_rights = gate.user_token(&["write:projects/*"], json!({}));
    let response = gate.send(
        &ingest,
        Request::new("PUT", "/v1/contexts/projects/engineering/a")
            .header("authorization", &bearer(&no_rights)),
    );
    denied(&response, 403, "on_behalf_of_not_allowed");

    // Each refusal has its metric and its response code details.
    for (reason, count) in [
        ("missing_client_certificate", 1),
        ("unknown_service_certificate", 1),
        ("missing_service_token", 1),
        ("service_token_mismatch", 1),
        ("token_role_mismatch", 1),
        ("multiple_tokens", 1),
        ("on_behalf_of_not_allowed", 2),
        ("insufficient_scope", 2),
    ] {
        assert_eq!(
            gate.wait_metric(&format!("denied.{reason}"), count),
            count,
            "{reason}"
        );
    }
    let logged = [
        "POST 403 ctxgate_auth_denied{missing_client_certificate}",
        "POST 403 ctxgate_auth_denied{unknown_service_certificate}",
        "POST 401 ctxgate_auth_denied{missing_service_token}",
        "POST 403 ctxgate_auth_denied{service_token_mismatch}",
        "PUT 403 ctxgate_auth_denied{on_behalf_of_not_allowed}",
    ];
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = gate.envoy.stdout();
            logged.iter().all(|line| log.lines().any(|l| l == *line))
        }),
        "access log:\n{}",
        gate.envoy.stdout()
    );
    support::assert_vm_healthy(&gate.envoy);
}
