//! The signature stage in the pipeline, against the in-memory host: what
//! reaches the proxy for signed, tampered, replayed and unsigned requests.

use hmac_sha256::{HMAC, Hash};
use serde_json::{Value, json};

use super::test_gateway::{Gateway, NOW_MS};
use super::*;
use crate::signature::sfv::encode_base64;

const KEY: &[u8] = b"a shared secret of thirty-two bytes or more";

fn section(extra: Value) -> Value {
    let mut s = json!({
        "keys": {"ingest": {"secret": encode_base64(KEY)}},
        "routes": [{"path": {"prefix": "/secure/"}}],
        "body_limit": 64,
    });
    if let (Some(s), Value::Object(e)) = (s.as_object_mut(), extra) {
        s.extend(e);
    }
    s
}

/// A request as the signer sends it.
struct Signed {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    nonce: String,
    created: u64,
}

impl Signed {
    fn new(path: &str, body: &[u8], nonce: &str) -> Signed {
        Signed {
            method: "POST",
            path: path.to_owned(),
            body: body.to_vec(),
            nonce: nonce.to_owned(),
            created: NOW_MS / 1000,
        }
    }

    /// The headers, signed over `path` and `body` as given here.
    fn headers(&self) -> Vec<(String, String)> {
        let digest = format!("sha-256=:{}:", encode_base64(&Hash::hash(&self.body)));
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let params = format!(
            "(\"@method\" \"@path\" \"@query\" \"content-digest\");created={};keyid=\"ingest\";nonce=\"{}\"",
            self.created, self.nonce
        );
        let base = format!(
            "\"@method\": {}\n\"@path\": {path}\n\"@query\": ?{query}\n\"content-digest\": {digest}\n\"@signature-params\": {params}",
            self.method
        );
        let mac = HMAC::mac(base.as_bytes(), KEY);
        vec![
            ("content-digest".into(), digest),
            ("signature-input".into(), format!("sig1={params}")),
            (
                "signature".into(),
                format!("sig1=:{}:", encode_base64(&mac)),
            ),
        ]
    }
}

fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

impl Gateway {
    fn signed(&mut self, request: &Signed) -> (StreamId, Flow, Option<Flow>) {
        let headers = request.headers();
        let body = (!request.body.is_empty()).then_some(request.body.as_slice());
        self.send(request.method, &request.path, &pairs(&headers), body)
    }

    fn flushed(&mut self, name: &str) -> i64 {
        self.host.now_ms += 1000;
        self.worker.on_tick(&mut self.host);
        self.host.metric(name)
    }
}

fn refused(code: &str) -> String {
    format!("ctxgate_signature_refused{{{code}}}")
}

#[test]
fn a_signed_request_goes_through_once_its_body_matches() {
    let mut gw = Gateway::new(json!({"signature": section(json!({}))}));
    let (id, headers, body) = gw.signed(&Signed::new("/secure/a?x=1", b"{\"a\":1}", "n1"));
    assert_eq!((headers, body), (Flow::Continue, Some(Flow::Continue)));
    assert_eq!(gw.details(id), None);
    assert_eq!(gw.flushed("ctxgate_signature.verified"), 1);
}

#[test]
fn a_changed_body_is_refused_after_the_headers() {
    let mut gw = Gateway::new(json!({"signature": section(json!({}))}));
    let signed = Signed::new("/secure/a", b"{\"a\":1}", "n1");
    let (id, headers, body) = gw.send(
        "POST",
        "/secure/a",
        &pairs(&signed.headers()),
        Some(b"{\"a\":2}"),
    );
    assert_eq!((headers, body), (Flow::Continue, Some(Flow::Pause)));
    assert_eq!(
        gw.details(id),
        Some((401, refused("content_digest_mismatch")))
    );
    assert_eq!(
        gw.flushed("ctxgate_signature.refused.content_digest_mismatch"),
        1
    );
}

#[test]
fn unsigned_replayed_or_redirected_requests_stop_at_the_headers() {
    let mut gw = Gateway::new(json!({"signature": section(json!({}))}));
    let (id, flow, _) = gw.send("GET", "/secure/a", &[], None);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.details(id), Some((401, refused("signature_missing"))));

    let request = Signed::new("/secure/a", b"", "once");
    let (id, flow, _) = gw.signed(&request);
    assert_eq!((flow, gw.details(id)), (Flow::Continue, None));
    let (id, flow, _) = gw.signed(&request);
    assert_eq!(flow, Flow::Pause);
    assert_eq!(gw.details(id), Some((401, refused("signature_replayed"))));

    // Signed for one path, sent to another.
    let other = Signed::new("/secure/a", b"", "fresh");
    let (id, _, _) = gw.send("POST", "/secure/b", &pairs(&other.headers()), None);
    assert_eq!(gw.details(id), Some((401, refused("signature_invalid"))));
    // The nonce of a refused signature was not used up.
    let (id, _, _) = gw.signed(&other);
    assert_eq!(gw.details(id), None);

    let mut stale = Signed::new("/secure/a", b"", "old");
    stale.created -= 301;
    let (id, _, _) = gw.signed(&stale);
    assert_eq!(gw.details(id), Some((401, refused("signature_stale"))));
}

#[test]
fn other_routes_are_not_held() {
    let mut gw = Gateway::new(json!({"signature": section(json!({}))}));
    let (id, flow, body) = gw.send("POST", "/open", &[], Some(b"anything"));
    assert_eq!((flow, body), (Flow::Continue, Some(Flow::Continue)));
    assert_eq!(gw.details(id), None);
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let mut gw = Gateway::new(json!({"signature": section(json!({}))}));
    let big = vec![b'x'; 65];
    let (id, flow, _) = gw.signed(&Signed::new("/secure/a", &big, "n"));
    assert_eq!(flow, Flow::Pause, "refused on its content-length");
    assert_eq!(gw.details(id), Some((413, refused("body_too_large"))));
    // Without a content-length: refused when the body passes the limit.
    let signed = Signed::new("/secure/a", &big, "m");
    let id = 99;
    let mut all: Vec<(&str, &str)> = vec![(":method", "POST"), (":path", "/secure/a")];
    let headers = signed.headers();
    all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    gw.host.open(id, &all);
    assert_eq!(
        gw.worker.on_request_headers(&mut gw.host, id, false),
        Flow::Continue
    );
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 40, false),
        Flow::Pause
    );
    assert_eq!(
        gw.worker.on_request_body(&mut gw.host, id, 65, false),
        Flow::Pause
    );
    assert_eq!(gw.details(id), Some((413, refused("body_too_large"))));
}

#[test]
fn a_full_nonce_store_refuses_rather_than_forgets() {
    let mut gw = Gateway::new(
        json!({"signature": section(json!({"nonces": {"buckets": 1, "per_bucket": 2}}))}),
    );
    for nonce in ["a", "b"] {
        let (id, _, _) = gw.signed(&Signed::new("/secure/a", b"", nonce));
        assert_eq!(gw.details(id), None);
    }
    let (id, _, _) = gw.signed(&Signed::new("/secure/a", b"", "c"));
    assert_eq!(gw.details(id), Some((503, refused("nonce_store_full"))));
    // Once the first two leave the window, there is room again.
    gw.host.now_ms += 302_000;
    let mut later = Signed::new("/secure/a", b"", "c");
    later.created = gw.host.now_ms / 1000;
    let (id, _, _) = gw.signed(&later);
    assert_eq!(gw.details(id), None);
}

#[test]
fn the_rate_limiter_still_counts_signed_requests_once() {
    let mut gw = Gateway::new(json!({
        "signature": section(json!({})),
        "ratelimit": {
            "tiers": {"anonymous": [{"name": "per_minute", "limit": 2, "window_seconds": 60}],
                      "standard": [{"name": "per_minute", "limit": 2, "window_seconds": 60}]},
            "slots": 16
        }
    }));
    let mut statuses = Vec::new();
    for nonce in ["1", "2", "3"] {
        let (id, _, _) = gw.signed(&Signed::new("/secure/a", b"{}", nonce));
        statuses.push(gw.details(id).map(|(s, _)| s));
    }
    assert_eq!(statuses, [None, None, Some(429)]);
}

/// Auth runs first and rewrites the request (here: it removes the token
/// parameter from the query); the signature is still verified against
/// the request as the client sent and signed it.
#[test]
fn the_signature_covers_the_request_as_received_not_as_auth_rewrote_it() {
    use crate::test_keys::{jwks, sign};
    use jwt_simple::prelude::ES256KeyPair;

    let key = ES256KeyPair::generate().with_key_id("k1");
    let now = NOW_MS / 1000;
    let token = sign(
        &key,
        json!({"iss": "https://idp.test", "sub": "svc", "aud": "api", "iat": now, "exp": now + 600,
               "tenant_id": "acme", "context_scopes": []}),
    );
    let mut gw = Gateway::new(json!({
        "auth": {
            "providers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                           "jwks": {"inline": jwks(&key)}}],
            "from_params": ["access_token"],
            "unmatched_requests": "authenticate",
        },
        "signature": section(json!({})),
    }));
    let path = format!("/secure/a?x=1&access_token={token}");
    let (id, flow, _) = gw.signed(&Signed::new(&path, b"", "n"));
    assert_eq!((flow, gw.details(id)), (Flow::Continue, None));
    assert_eq!(
        gw.host.header(id, ":path").as_deref(),
        Some("/secure/a?x=1"),
        "auth removed the token from what goes upstream"
    );
    // Without a token, auth refuses first (and the signature is not
    // consulted).
    let (id, _, _) = gw.signed(&Signed::new("/secure/a?x=1", b"", "m"));
    assert_eq!(gw.details(id).map(|(s, _)| s), Some(401));
    assert!(!gw.details(id).unwrap().1.starts_with("ctxgate_signature"));
}
