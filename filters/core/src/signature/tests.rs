use super::sfv::{Member, encode_base64, parse_dictionary};
use super::*;
use crate::config::parse_json;

/// RFC 9421 appendix B.1.5, `test-shared-secret`.
const RFC_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

/// The tests edit headers as pairs; each head gets its own list, leaked
/// (a test's worth of bytes) so that it can be borrowed freely.
fn head<'a>(method: &'a str, path: &'a str, headers: &[(String, Vec<u8>)]) -> RequestHead<'a> {
    RequestHead {
        method,
        path,
        headers: Box::leak(Box::new(headers.iter().cloned().collect())),
    }
}

fn h(name: &str, value: &str) -> (String, Vec<u8>) {
    (name.to_owned(), value.as_bytes().to_vec())
}

#[test]
fn rfc_9421_b_2_5_hmac_sha256() {
    let headers = vec![
        h(":authority", "example.com"),
        h("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        h("content-type", "application/json"),
    ];
    let head = head("POST", "/foo?param=Value&Pet=dog", &headers);
    let input = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    let members = parse_dictionary(input).unwrap();
    let [(_, Member::InnerList(items, params))] = members.as_slice() else {
        panic!("{members:?}")
    };
    let components: Vec<Component> = items.iter().map(|i| Component::parse(i).unwrap()).collect();
    let base = signature_base(&head, items, &components, params).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
         \"@authority\": example.com\n\
         \"content-type\": application/json\n\
         \"@signature-params\": (\"date\" \"@authority\" \"content-type\")\
         ;created=1618884473;keyid=\"test-shared-secret\""
    );
    let key = sfv::decode_base64(RFC_SECRET).unwrap();
    assert_eq!(
        encode_base64(&HMAC::mac(base.as_bytes(), &key)),
        "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="
    );
}

#[test]
fn derived_components_follow_section_2_2() {
    let headers = vec![h(":authority", "Example.COM"), h(":scheme", "HTTPS")];
    let value = |c: Component, path: &str| c.value(&head("GET", path, &headers)).unwrap();
    assert_eq!(value(Component::Path, "/a/b?x=1"), "/a/b");
    assert_eq!(value(Component::Path, "?x"), "/");
    assert_eq!(value(Component::Query, "/a?x=1&y"), "?x=1&y");
    assert_eq!(value(Component::Query, "/a"), "?");
    assert_eq!(value(Component::Query, "/a?"), "?");
    assert_eq!(value(Component::Authority, "/"), "example.com");
    assert_eq!(
        value(Component::TargetUri, "/a?b"),
        "https://example.com/a?b"
    );
    assert_eq!(value(Component::RequestTarget, "/a?b"), "/a?b");
    let lines = vec![h("x-list", " a "), h("x-list", "b")];
    assert_eq!(
        Component::Field("x-list".into())
            .value(&head("GET", "/", &lines))
            .unwrap(),
        "a, b"
    );
    let bad = vec![h("x-nl", "a\nb")];
    assert_eq!(
        Component::Field("x-nl".into())
            .value(&head("GET", "/", &bad))
            .unwrap_err()
            .reason,
        Reason::Malformed
    );
}

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-ctxgate";
const NOW_MS: u64 = 1_700_000_000_000;
const EMPTY_DIGEST: &str = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:";

fn verifier() -> Verifier {
    let config: SignatureConfig = parse_json(
        format!(
            r#"{{"keys": {{"svc": {{"secret": "{}"}}}},
                "routes": [{{"path": {{"prefix": "/signed/"}}}},
                           {{"path": {{"exact": "/post-only"}}, "methods": ["POST"]}}]}}"#,
            encode_base64(KEY)
        )
        .as_bytes(),
    )
    .unwrap();
    Verifier::new(config).unwrap()
}

/// A request signed as a client would: `input` is the inner list and its
/// parameters, `mutate` changes the request after signing.
fn signed(
    method: &str,
    path: &str,
    body: &[u8],
    input: &str,
    key: &[u8],
) -> (String, String, Vec<(String, Vec<u8>)>) {
    let digest = format!("sha-256=:{}:", encode_base64(&Hash::hash(body)));
    let mut headers = vec![h(":authority", "gw"), h("content-digest", &digest)];
    let members = parse_dictionary(&format!("s={input}")).unwrap();
    let [(_, Member::InnerList(items, params))] = members.as_slice() else {
        panic!()
    };
    // Inputs the verifier refuses are still "signed" (over nothing).
    let components: Vec<Component> = items
        .iter()
        .filter_map(|i| Component::parse(i).ok())
        .collect();
    let base = signature_base(&head(method, path, &headers), items, &components, params)
        .unwrap_or_default();
    let mac = HMAC::mac(base.as_bytes(), key);
    headers.push(h("signature-input", &format!("s={input}")));
    headers.push(h("signature", &format!("s=:{}:", encode_base64(&mac))));
    (method.to_owned(), path.to_owned(), headers)
}

fn standard_input(created: u64, nonce: &str) -> String {
    format!(
        r#"("@method" "@path" "@query" "content-digest");created={created};keyid="svc";nonce="{nonce}";alg="hmac-sha256""#
    )
}

fn verify(
    v: &Verifier,
    req: &(String, String, Vec<(String, Vec<u8>)>),
) -> Result<Verified, Reason> {
    v.verify(&head(&req.0, &req.1, &req.2), NOW_MS)
        .map_err(|r| r.reason)
}

fn now_s() -> u64 {
    NOW_MS / 1000
}

#[test]
fn a_good_signature_verifies_and_its_body_is_checked() {
    let v = verifier();
    let req = signed(
        "POST",
        "/signed/x?a=1",
        b"{}",
        &standard_input(now_s(), "n1"),
        KEY,
    );
    let verified = verify(&v, &req).unwrap();
    assert_eq!(verified.keyid, "svc");
    assert_eq!(verified.nonce, "n1");
    assert_eq!(verified.nonce_expires_ms, (now_s() + 301) * 1000);
    assert_eq!(verified.check_body(b"{}"), Ok(()));
    assert_eq!(
        verified.check_body(b"{ }").unwrap_err().reason,
        Reason::DigestMismatch
    );
}

#[test]
fn routes_select_by_path_and_method() {
    let v = verifier();
    let applies = |m: &str, p: &str| v.applies(&head(m, p, &[]));
    assert!(applies("GET", "/signed/a?q"));
    assert!(!applies("GET", "/other"));
    assert!(applies("POST", "/post-only"));
    assert!(!applies("GET", "/post-only"));
}

#[test]
fn any_change_to_a_covered_component_fails() {
    let v = verifier();
    let req = signed(
        "POST",
        "/signed/x?a=1",
        b"{}",
        &standard_input(now_s(), "n"),
        KEY,
    );
    let mut other = req.clone();
    other.1 = "/signed/y?a=1".into();
    assert_eq!(verify(&v, &other), Err(Reason::Invalid));
    other.1 = "/signed/x?a=2".into();
    assert_eq!(verify(&v, &other), Err(Reason::Invalid));
    other.1 = "/signed/x".into();
    assert_eq!(verify(&v, &other), Err(Reason::Invalid));
    let mut other = req.clone();
    other.0 = "PUT".into();
    assert_eq!(verify(&v, &other), Err(Reason::Invalid));
    let mut other = req.clone();
    if let Some(d) = other.2.iter_mut().find(|(n, _)| n == "content-digest") {
        d.1 = EMPTY_DIGEST.as_bytes().to_vec();
    }
    assert_eq!(verify(&v, &other), Err(Reason::Invalid));
    let wrong_key = signed(
        "POST",
        "/signed/x?a=1",
        b"{}",
        &standard_input(now_s(), "n"),
        b"another key, just as long as the first one",
    );
    assert_eq!(verify(&v, &wrong_key), Err(Reason::Invalid));
}

#[test]
fn the_window_and_the_parameters_are_enforced() {
    let v = verifier();
    let at = |created: u64| {
        verify(
            &v,
            &signed("GET", "/signed/x", b"", &standard_input(created, "n"), KEY),
        )
    };
    assert!(at(now_s() - 300).is_ok());
    assert_eq!(at(now_s() - 301), Err(Reason::Stale));
    assert!(at(now_s() + 5).is_ok());
    assert_eq!(at(now_s() + 6), Err(Reason::Stale));

    let with = |input: &str| verify(&v, &signed("GET", "/signed/x", b"", input, KEY));
    let created = now_s();
    assert_eq!(
        with(&format!(
            r#"("@method" "@path" "@query");created={created};keyid="svc";nonce="n""#
        )),
        Err(Reason::Incomplete)
    );
    assert_eq!(
        with(&format!(
            r#"("@method" "@path" "@query" "content-digest");created={created};keyid="svc""#
        )),
        Err(Reason::Incomplete)
    );
    assert_eq!(
        with(&format!(
            r#"("@method" "@path" "@query" "content-digest");created={created};keyid="other";nonce="n""#
        )),
        Err(Reason::UnknownKey)
    );
    assert_eq!(
        with(&format!(
            r#"("@method" "@path" "@query" "content-digest");created={created};keyid="svc";nonce="n";alg="rsa-pss-sha512""#
        )),
        Err(Reason::Algorithm)
    );
    assert_eq!(
        with(&format!(
            r#"("@method" "@path" "@query" "content-digest");created={created};keyid="svc";nonce="n";expires={created}"#
        )),
        Err(Reason::Stale)
    );
    assert!(
        with(&format!(r#"("content-digest" "@query" "@path" "@method" "@authority");created={created};keyid="svc";nonce="n";tag="t""#))
            .is_ok(),
        "any order, more components, a tag"
    );
    for malformed in [
        format!(
            r#"("@method" "@path" "@query" "content-digest" "@method");created={created};keyid="svc";nonce="n""#
        ),
        format!(
            r#"("@method" "@path" "@query" "content-digest");created={created};keyid="svc";nonce="n";foo=1"#
        ),
        format!(
            r#"("@method" "@path" "@query" "content-digest");created="{created}";keyid="svc";nonce="n""#
        ),
        format!(
            r#"("@method" "@path" "@query" "content-digest" "@status");created={created};keyid="svc";nonce="n""#
        ),
        format!(
            r#"("@method" "@path" "@query" "content-digest" "x";bs);created={created};keyid="svc";nonce="n""#
        ),
        format!(
            r#"("@method" "@path" "@query" "content-digest");created={created};keyid="svc";nonce="""#
        ),
    ] {
        assert_eq!(with(&malformed), Err(Reason::Malformed), "{malformed}");
    }
}

#[test]
fn ambiguous_or_missing_fields_are_refused() {
    let v = verifier();
    let req = signed("GET", "/signed/x", b"", &standard_input(now_s(), "n"), KEY);
    let without = |names: &[&str]| {
        let mut r = req.clone();
        r.2.retain(|(n, _)| !names.contains(&n.as_str()));
        r
    };
    assert_eq!(
        verify(&v, &without(&["signature", "signature-input"])),
        Err(Reason::Missing)
    );
    assert_eq!(verify(&v, &without(&["signature"])), Err(Reason::Malformed));
    assert_eq!(
        verify(&v, &without(&["content-digest"])),
        Err(Reason::Malformed),
        "a covered field that is absent"
    );
    let mut two = req.clone();
    two.2.push(h("signature", "t=:AAAA:"));
    assert_eq!(verify(&v, &two), Err(Reason::Malformed), "two signatures");
    let mut relabelled = req.clone();
    if let Some(s) = relabelled.2.iter_mut().find(|(n, _)| n == "signature") {
        s.1 = s.1.replacen(b"s=", b"t=", 1);
    }
    assert_eq!(verify(&v, &relabelled), Err(Reason::Malformed));
    let mut short = req.clone();
    if let Some(s) = short.2.iter_mut().find(|(n, _)| n == "signature") {
        s.1 = b"s=:AAAA:".to_vec();
    }
    assert_eq!(verify(&v, &short), Err(Reason::Invalid));
}

trait ReplaceN {
    fn replacen(&self, from: &[u8], to: &[u8], n: usize) -> Vec<u8>;
}

impl ReplaceN for Vec<u8> {
    fn replacen(&self, from: &[u8], to: &[u8], n: usize) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replacen(
                std::str::from_utf8(from).unwrap(),
                std::str::from_utf8(to).unwrap(),
                n,
            )
            .into_bytes()
    }
}

#[test]
fn content_digest_is_strict() {
    let digest = |value: &str| {
        let headers = vec![h("content-digest", value)];
        content_digest(&head("GET", "/", &headers)).map_err(|r| r.reason)
    };
    assert!(digest(EMPTY_DIGEST).is_ok());
    assert!(
        digest(&format!(
            "sha-512=:{}:, {EMPTY_DIGEST}",
            encode_base64(&[0; 64])
        ))
        .is_ok()
    );
    for bad in [
        "sha-512=:AAAA:",
        "sha-256=:AAAA:",
        "sha-256=abc",
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:;x=1",
        "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:, sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
    ] {
        assert_eq!(digest(bad), Err(Reason::DigestMalformed), "{bad}");
    }
}

#[test]
fn config_errors_name_the_field() {
    let error = |json: &str| {
        let config: SignatureConfig = parse_json(json.as_bytes()).unwrap();
        Verifier::new(config).unwrap_err().field
    };
    let routes = r#""routes": [{"path": {"prefix": "/"}}]"#;
    assert_eq!(error(&format!(r#"{{"keys": {{}}, {routes}}}"#)), "keys");
    assert_eq!(
        error(&format!(
            r#"{{"keys": {{"k": {{"secret": "c2hvcnQ="}}}}, {routes}}}"#
        )),
        "keys.k.secret"
    );
    assert_eq!(
        error(&format!(
            r#"{{"keys": {{"k": {{"secret": "not base64!"}}}}, {routes}}}"#
        )),
        "keys.k.secret"
    );
    let key = format!(r#""keys": {{"k": {{"secret": "{}"}}}}"#, encode_base64(KEY));
    assert_eq!(error(&format!(r#"{{{key}, "routes": []}}"#)), "routes");
    assert_eq!(
        error(&format!(r#"{{{key}, {routes}, "max_age_seconds": 0}}"#)),
        "max_age_seconds"
    );
    assert_eq!(
        error(&format!(
            r#"{{{key}, {routes}, "nonces": {{"buckets": 0}}}}"#
        )),
        "nonces.buckets"
    );
    assert_eq!(
        error(&format!(
            r#"{{{key}, "routes": [{{"path": {{"prefix": "/"}}, "methods": ["get"]}}]}}"#
        )),
        "routes[0].methods"
    );
}

/// What `http-message-signatures` 3.0.0 (PyPI) emitted for this request
/// (`tests/signature/sign.py`, key `x` * 40, created 1700000000): `alg`
/// before `nonce`, `content-digest` appended to the covered components.
#[test]
fn a_signature_from_the_python_library_verifies() {
    let config: SignatureConfig = parse_json(
        format!(
            r#"{{"keys": {{"svc": {{"secret": "{}"}}}}, "routes": [{{"path": {{"prefix": "/"}}}}]}}"#,
            encode_base64(&[b'x'; 40])
        )
        .as_bytes(),
    )
    .unwrap();
    let v = Verifier::new(config).unwrap();
    let headers = vec![
        h(
            "content-digest",
            "sha-256=:AVq9f1zFei3ZS3WQ8ErYCEJzkF7jPsXOvq5iJ2qX+GI=:",
        ),
        h(
            "signature-input",
            r#"pyhms=("@method" "@path" "@query" "content-digest");created=1700000000;keyid="svc";alg="hmac-sha256";nonce="n1""#,
        ),
        h(
            "signature",
            "pyhms=:znHS3moteCM00GDSZnlaBh0gCWwx/Ormm+vwNC+tG40=:",
        ),
    ];
    let verified = v
        .verify(
            &head("POST", "/secure/a?x=1&y=%20z", &headers),
            1_700_000_010_000,
        )
        .unwrap();
    assert_eq!(verified.check_body(br#"{"a":1}"#), Ok(()));
    assert_eq!(
        v.verify(
            &head("POST", "/secure/a?x=1&y=%20Z", &headers),
            1_700_000_010_000
        )
        .unwrap_err()
        .reason,
        Reason::Invalid
    );
}
