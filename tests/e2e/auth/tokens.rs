//! Token verification: algorithms, time, issuer and audience, signatures,
//! hostile headers, malformed and oversized tokens, and where tokens are
//! looked for.

use ctxgate_demo::{MintAlg, MintOptions};
use ctxgate_e2e::Request;
use serde_json::json;

use crate::support::*;

#[test]
fn it_accepts_every_algorithm_and_forwards_the_verified_identity() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));

    let mut tokens: Vec<(String, String)> = MintAlg::ALL
        .into_iter()
        .map(|alg| {
            let opts = MintOptions {
                alg,
                ..with_scopes(&["read:projects/x"])
            };
            (alg.name().to_owned(), keys.token(&opts))
        })
        .collect();
    for alg in ExtraAlg::ALL {
        let token = keys.token_extra(alg, &with_scopes(&["read:projects/x"]));
        tokens.push((format!("{alg:?}"), token));
    }
    for (alg, token) in &tokens {
        let response = gate.get("/v1/contexts/projects/x", token);
        assert_eq!(response.status, 200, "{alg}: {}", response.text());
        let seen = forwarded(&response);
        assert_eq!(
            seen.identity(),
            default_identity("read:projects/x", "read", "projects/x"),
            "{alg}"
        );
        assert_eq!(seen.header("authorization"), None, "{alg}: token forwarded");
        assert_eq!(seen.path(), "/v1/contexts/projects/x");
    }
    assert_eq!(gate.wait_metric("allowed", 9), 9);
    assert_eq!(gate.metric("cache.miss"), 9);

    // Claims shape the identity: tier from rate_limits, scopes canonical.
    let token = keys.token(&MintOptions {
        sub: "svc@example.com".into(),
        tenant: Some("globex-eu.1".into()),
        scopes: vec!["write:Projects//X/".into(), "bogus".into(), "read:a".into()],
        extra_claims: json!({"rate_limits": {"tier": "premium"}})
            .as_object()
            .unwrap()
            .clone(),
        ..MintOptions::default()
    });
    let seen = forwarded(&gate.call("PUT", "/v1/contexts/projects/x/y", &token));
    assert_eq!(
        seen.identity(),
        identity(&[
            ("x-context-tenant", "globex-eu.1"),
            ("x-context-subject", "svc@example.com"),
            ("x-context-tier", "premium"),
            ("x-context-scopes", "write:projects/x read:a"),
            ("x-context-issuer", ISSUER),
            ("x-context-operation", "write"),
            ("x-context-path", "projects/x/y"),
        ])
    );

    // The scheme is case-insensitive.
    let token = keys.scoped(&["read:projects/x"]);
    let response = gate.send(
        Request::get("/v1/contexts/projects/x").header("authorization", &format!("bEaReR {token}")),
    );
    forwarded(&response);
    gate.assert_vm_healthy();
}

#[test]
fn it_applies_the_clock_skew_to_expiry_and_not_before() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let token = |exp_in: i64, nbf_in: Option<i64>| {
        keys.token(&MintOptions {
            exp_in,
            nbf_in,
            ..with_scopes(&["read:projects/x"])
        })
    };

    // The default skew is 60 s.
    forwarded(&gate.get(path, &token(-30, None)));
    invalid_token(&gate.get(path, &token(-90, None)), "token_expired");
    forwarded(&gate.get(path, &token(3600, Some(30))));
    invalid_token(
        &gate.get(path, &token(3600, Some(90))),
        "token_not_yet_valid",
    );

    // A refused token stays refused when replayed (from the cache).
    let expired = token(-90, None);
    for _ in 0..3 {
        invalid_token(&gate.get(path, &expired), "token_expired");
    }

    // A token without exp is refused: expiry is required by default.
    let mut claims = keys.claims(&with_scopes(&["read:projects/x"]));
    claims.remove("exp");
    let header = ctxgate_demo::mint::header(&MintOptions::default());
    let no_exp = keys.sign_raw(&header, &claims.into(), MintAlg::ES256);
    invalid_token(&gate.get(path, &no_exp), "missing_claim");

    assert_eq!(gate.wait_metric("denied.token_expired", 4), 4);
    assert_eq!(gate.metric("denied.token_not_yet_valid"), 1);
    assert_eq!(gate.metric("denied.missing_claim"), 1);
    assert_eq!(gate.metric("allowed"), 2);
    gate.assert_vm_healthy();
}

#[test]
fn it_refuses_tokens_of_other_issuers_and_audiences() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let token = |iss: &str, aud: &[&str]| {
        keys.token(&MintOptions {
            iss: iss.to_owned(),
            aud: aud.iter().map(|a| (*a).to_owned()).collect(),
            ..with_scopes(&["read:projects/x"])
        })
    };

    for iss in [
        "https://evil.example",
        "https://idp.ctxgate.local/",
        "HTTPS://IDP.CTXGATE.LOCAL",
    ] {
        invalid_token(&gate.get(path, &token(iss, &[AUDIENCE])), "unknown_issuer");
    }
    let wrong_audience = denied(
        &gate.get(path, &token(ISSUER, &["other-api"])),
        403,
        "audience_not_allowed",
    );
    assert_eq!(wrong_audience.attribute("scope"), None);
    denied(
        &gate.get(path, &token(ISSUER, &[])),
        403,
        "audience_not_allowed",
    );
    // One matching audience among several is enough.
    forwarded(&gate.get(path, &token(ISSUER, &["other-api", AUDIENCE])));

    // A token without a tenant identifies nobody.
    let no_tenant = keys.token(&MintOptions {
        tenant: None,
        ..with_scopes(&["read:projects/x"])
    });
    invalid_token(&gate.get(path, &no_tenant), "missing_claim");

    assert_eq!(gate.wait_metric("denied.unknown_issuer", 3), 3);
    assert_eq!(gate.metric("denied.audience_not_allowed"), 2);
    gate.assert_vm_healthy();
}

#[test]
fn it_refuses_forged_signatures_and_algorithm_confusion() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let good = keys.scoped(&["read:projects/x"]);
    let (header, payload) = ctxgate_demo::mint::decode_unverified(&good).unwrap();
    let signing_input = |header: &serde_json::Value| {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        )
    };

    // Payload swapped after signing: more scopes, same signature.
    let signature = good.rsplit('.').next().unwrap();
    let mut elevated = payload.clone();
    elevated["context_scopes"] = json!(["admin:projects/*"]);
    let tampered = format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(elevated.to_string().as_bytes())
    );
    invalid_token(&gate.get(path, &tampered), "bad_signature");

    // Signed by a key nobody trusts, under a trusted kid.
    let stranger = TestKeys::generate();
    for alg in [
        MintAlg::ES256,
        MintAlg::RS256,
        MintAlg::EdDSA,
        MintAlg::HS256,
    ] {
        let opts = MintOptions {
            alg,
            ..with_scopes(&["read:projects/x"])
        };
        invalid_token(&gate.get(path, &stranger.token(&opts)), "bad_signature");
    }

    // alg none, with and without a signature.
    let none = json!({"alg": "none", "typ": "JWT"});
    invalid_token(
        &gate.get(path, &format!("{}.", signing_input(&none))),
        "malformed_token",
    );
    invalid_token(
        &gate.get(path, &assemble(&none, &payload, b"x")),
        "unsupported_algorithm",
    );
    for alg in ["None", "NONE", "ES256K", "HS1", ""] {
        let token = assemble(&json!({"alg": alg}), &payload, b"signature");
        invalid_token(&gate.get(path, &token), "unsupported_algorithm");
    }

    // HS256 signed with the RSA public key as the secret, under the RSA
    // key's kid: an RSA key never verifies an HMAC.
    let rsa_public = keys.demo.rs256_public();
    let secrets = [
        rsa_public.to_pem().unwrap().into_bytes(),
        rsa_public.to_der().unwrap(),
        keys.demo.jwks_json().as_bytes().to_vec(),
    ];
    for secret in &secrets {
        for kid in [Some(ctxgate_demo::keys::KID_RS256), Some(KID_RSA_ANY), None] {
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let tag = jwt_simple::prelude::HS256Key::from_bytes(secret);
            let input = signing_input(&header);
            let mac = jwt_simple::prelude::MACLike::authentication_tag(&tag, input.as_bytes());
            let token = format!("{input}.{}", b64(&mac));
            let expected = if kid.is_some() {
                "algorithm_mismatch"
            } else {
                // No kid: every HMAC key is tried, none matches.
                "bad_signature"
            };
            invalid_token(&gate.get(path, &token), expected);
        }
    }

    // The header says RS256, the ES256 key signed, under the EC key's kid.
    let mismatched = keys.sign_raw(
        &json!({"alg": "RS256", "kid": ctxgate_demo::keys::KID_ES256}),
        &payload,
        MintAlg::ES256,
    );
    invalid_token(&gate.get(path, &mismatched), "algorithm_mismatch");
    // The JWK pins RS256: a PS256 token under that kid is refused even
    // though the key itself could verify it.
    let pinned = keys.sign_raw(
        &json!({"alg": "PS256", "kid": ctxgate_demo::keys::KID_RS256}),
        &payload,
        MintAlg::RS256,
    );
    invalid_token(&gate.get(path, &pinned), "algorithm_mismatch");

    // A kid nobody published.
    let unknown = keys.token(&MintOptions {
        kid: Some("rotated-away".into()),
        ..with_scopes(&["read:projects/x"])
    });
    invalid_token(&gate.get(path, &unknown), "unknown_kid");

    // The genuine token still works after all that.
    forwarded(&gate.get(path, &good));
    assert_eq!(gate.wait_metric("denied.bad_signature", 8), 8);
    assert_eq!(gate.metric("denied.algorithm_mismatch"), 8);
    assert_eq!(gate.metric("denied.unknown_kid"), 1);
    assert_eq!(gate.metric("denied.unsupported_algorithm"), 6);
    gate.assert_vm_healthy();
}

#[test]
fn it_refuses_tokens_with_dangerous_header_members() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";
    let payload = serde_json::Value::Object(keys.claims(&with_scopes(&["read:projects/x"])));
    let kid = ctxgate_demo::keys::KID_ES256;
    let members = [
        ("crit", json!(["exp"])),
        ("jku", json!("https://evil.example/jwks.json")),
        ("x5u", json!("https://evil.example/cert.pem")),
        ("jwk", json!({"kty": "oct", "k": b64(&[7; 32])})),
        ("x5c", json!(["MIIB"])),
        ("cty", json!("JWT")),
        ("cty", json!("jwt")),
    ];
    for (member, value) in members {
        let mut header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        header[member] = value;
        // Validly signed by a trusted key: only the header member is wrong.
        let token = keys.sign_raw(&header, &payload, MintAlg::ES256);
        invalid_token(&gate.get(path, &token), "forbidden_header");
    }
    // A kid that is not a string.
    let token = keys.sign_raw(&json!({"alg": "ES256", "kid": 7}), &payload, MintAlg::ES256);
    invalid_token(&gate.get(path, &token), "malformed_token");
    // Harmless members are fine.
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "cty": "json", "x-extra": 1});
    forwarded(&gate.get(path, &keys.sign_raw(&header, &payload, MintAlg::ES256)));

    assert_eq!(gate.wait_metric("denied.forbidden_header", 7), 7);
    gate.assert_vm_healthy();
}

/// A valid ES256 token of exactly `len` bytes, padded with a claim.
fn token_of_length(keys: &TestKeys, len: usize) -> String {
    let claims = keys.claims(&with_scopes(&["read:projects/x"]));
    let b64_len = |n: usize| (4 * n).div_ceil(3);
    for header_pad in 0..4 {
        let header = json!({"alg": "ES256", "kid": ctxgate_demo::keys::KID_ES256, "p": "x".repeat(header_pad)});
        let header_len = b64_len(header.to_string().len());
        for pad in 0..len {
            let mut payload = claims.clone();
            payload.insert("pad".into(), json!("a".repeat(pad)));
            let payload = serde_json::Value::Object(payload);
            // ES256 signatures are 64 bytes.
            let total = header_len + 1 + b64_len(payload.to_string().len()) + 1 + b64_len(64);
            if total == len {
                let token = keys.sign_raw(&header, &payload, MintAlg::ES256);
                assert_eq!(token.len(), len);
                return token;
            }
            if total > len {
                break;
            }
        }
    }
    panic!("no token of {len} bytes");
}

#[test]
fn it_refuses_missing_malformed_and_oversized_tokens() {
    let keys = TestKeys::generate();
    let gate = Gate::start(inline_config(&keys));
    let path = "/v1/contexts/projects/x";

    // No token at all: a bare challenge, no error attribute (RFC 6750 3.1).
    let response = gate.send(Request::get(path));
    let missing = denied(&response, 401, "missing_token");
    assert_eq!(
        response.header("www-authenticate"),
        Some(format!("Bearer realm=\"{REALM}\"").as_str())
    );
    assert_eq!(missing.body["error"], "unauthorized");
    // Other schemes, or the scheme alone, are no bearer token either.
    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer    ",
        "Token abc",
        "Bearerabc",
    ] {
        let response = gate.send(Request::get(path).header("authorization", value));
        let refusal = denied(&response, 401, "missing_token");
        assert_eq!(refusal.attribute("error"), None, "{value}");
    }

    let valid = keys.scoped(&["read:projects/x"]);
    let (header_b64, rest) = valid.split_once('.').unwrap();
    let (payload_b64, signature_b64) = rest.split_once('.').unwrap();
    let malformed = [
        "garbage".to_owned(),
        "a.b".to_owned(),
        format!("{header_b64}.{payload_b64}"),
        format!("{valid}.{signature_b64}"),
        "!!!.###.$$$".to_owned(),
        format!("{header_b64}=.{payload_b64}.{signature_b64}"),
        format!("{header_b64}.{payload_b64}+/.{signature_b64}"),
        format!("{}.{payload_b64}.{signature_b64}", b64(b"not json")),
        format!("{}.{payload_b64}.{signature_b64}", b64(b"[\"ES256\"]")),
        format!("{}.{payload_b64}.{signature_b64}", b64(b"{}")),
        format!("{header_b64}.{}.{signature_b64}", b64(b"{\"iss\":")),
        format!("{header_b64}.{}.{signature_b64}", b64(b"[1,2]")),
        format!("{header_b64}..{signature_b64}"),
        format!("{header_b64}.{payload_b64}."),
        format!("a{header_b64}.{payload_b64}.{signature_b64}"),
        "a b c".to_owned(),
    ];
    for token in &malformed {
        invalid_token(&gate.get(path, token), "malformed_token");
    }

    // The size limit (8192 bytes by default) is checked before anything.
    forwarded(&gate.get(path, &token_of_length(&keys, 8192)));
    invalid_token(
        &gate.get(path, &token_of_length(&keys, 8193)),
        "token_too_large",
    );
    invalid_token(&gate.get(path, &"a".repeat(50_000)), "token_too_large");

    assert_eq!(gate.wait_metric("denied.missing_token", 6), 6);
    assert_eq!(
        gate.metric("denied.malformed_token"),
        malformed.len() as u64
    );
    assert_eq!(gate.metric("denied.token_too_large"), 2);
    gate.assert_vm_healthy();
}

#[test]
fn it_finds_tokens_in_every_configured_source_and_refuses_two_different_ones() {
    let keys = TestKeys::generate();
    let mut config = inline_config(&keys);
    config["token_sources"] = json!([
        {"header": "authorization", "prefix": "Bearer "},
        {"header": "x-api-token"},
        {"query": "access_token"},
        {"cookie": "session"},
    ]);
    let gate = Gate::start(config);
    let path = "/v1/contexts/projects/x";
    let token = keys.scoped(&["read:projects/x"]);
    let other = keys.scoped(&["admin:projects/x"]);

    // Each source on its own.
    forwarded(&gate.send(Request::get(path).header("x-api-token", &token)));
    forwarded(&gate.send(Request::get(format!("{path}?access_token={token}"))));
    forwarded(
        &gate.send(Request::get(path).header("cookie", &format!("theme=dark; session={token}"))),
    );
    // The same token in several places is one token.
    forwarded(
        &gate.send(
            Request::get(format!("{path}?access_token={token}"))
                .header("authorization", &bearer(&token))
                .header("cookie", &format!("session=\"{token}\"")),
        ),
    );
    // Two different tokens: which one counts would be ambiguous.
    let two = [
        Request::get(format!("{path}?access_token={other}"))
            .header("authorization", &bearer(&token)),
        Request::get(path)
            .header("x-api-token", &other)
            .header("authorization", &bearer(&token)),
        Request::get(path)
            .header("cookie", &format!("session={other}"))
            .header("x-api-token", &token),
        Request::get(path)
            .header("cookie", &format!("session={token}"))
            .header("cookie", &format!("session={other}")),
    ];
    for request in &two {
        invalid_request(&gate.send(request.clone()), "multiple_tokens");
    }
    assert_eq!(gate.wait_metric("denied.multiple_tokens", 4), 4);
    // The token parameter twice, under any spelling: which one would the
    // upstream read? Refused before any token is looked at.
    for query in [
        format!("access_token={token}&access_token={other}"),
        format!("access_token={token}&ACCESS_TOKEN={other}"),
        format!("access_token={token};%61ccess_token={other}"),
    ] {
        invalid_request(
            &gate.send(Request::get(format!("{path}?{query}"))),
            "repeated_parameter",
        );
    }
    // Clients send a second token most often as a second Authorization
    // header. Envoy joins repeated Authorization headers into one value
    // ("Bearer a,Bearer b") before the filter sees them.
    let response = gate.send(
        Request::get(path)
            .header("authorization", &bearer(&token))
            .header("authorization", &bearer(&other)),
    );
    invalid_request(&response, "multiple_tokens");
    // The same token twice is still one token.
    let response = gate.send(
        Request::get(path)
            .header("authorization", &bearer(&token))
            .header("authorization", &bearer(&token)),
    );
    forwarded(&response);
    gate.assert_vm_healthy();
}
