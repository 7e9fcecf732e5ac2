//! `token_inspect` and `token_verify`: JWT header screening and signature
//! verification.

use std::cell::OnceCell;
use std::collections::HashSet;

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use serde_json::{Map, Value};

use ctxgate_core::jwt::{Algorithm, ExtraClaims, KeySet, TokenError, inspect};

use crate::fixtures::{self, AUDIENCE, ISSUER, NOW, SKEW_SECONDS};

/// Input: a compact JWS (lossy UTF-8).
pub fn token_inspect(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let all: HashSet<Algorithm> = Algorithm::ALL.into_iter().collect();
    let Ok((header, issuer)) = inspect(&token, &all) else {
        // Refused with every algorithm allowed: refused with any one.
        for alg in Algorithm::ALL {
            assert!(
                inspect(&token, &[alg].into()).is_err(),
                "{token:?}: refused with all algorithms, accepted with {alg}"
            );
        }
        return;
    };

    // An independent reading of what was accepted.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token:?}: accepted without three parts");
    for part in &parts {
        assert!(
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token:?}: accepted a part that is not base64url: {part:?}"
        );
    }
    let head = json_object(parts[0]).unwrap_or_else(|| panic!("{token:?}: header not an object"));
    let payload =
        json_object(parts[1]).unwrap_or_else(|| panic!("{token:?}: payload not an object"));
    assert_eq!(
        head.get("alg").and_then(Value::as_str),
        Some(header.alg.name()),
        "{token:?}: screened algorithm differs from the header's"
    );
    for member in ["crit", "jku", "x5u", "jwk", "x5c"] {
        assert!(
            !head.contains_key(member),
            "{token:?}: header member {member} accepted"
        );
    }
    assert!(
        !head
            .get("cty")
            .and_then(Value::as_str)
            .is_some_and(|cty| cty.eq_ignore_ascii_case("jwt")),
        "{token:?}: nested JWT accepted"
    );
    assert_eq!(
        head.get("kid").and_then(Value::as_str),
        header.kid.as_deref(),
        "{token:?}: kid"
    );
    assert_eq!(
        payload.get("iss").and_then(Value::as_str),
        issuer.as_deref(),
        "{token:?}: issuer"
    );
    for claim in ["exp", "nbf", "iat"] {
        match payload.get(claim) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                let t = n.as_f64().unwrap_or(f64::NAN);
                assert!(
                    (0.0..8_589_934_592.0).contains(&t),
                    "{token:?}: implausible {claim} {n} accepted"
                );
            }
            Some(other) => panic!("{token:?}: {claim} {other} accepted"),
        }
    }
    // The set of allowed algorithms is honoured.
    for alg in Algorithm::ALL {
        match inspect(&token, &[alg].into()) {
            Ok((h, _)) => assert_eq!(h.alg, alg, "{token:?}"),
            Err(TokenError::UnsupportedAlgorithm(_)) => assert_ne!(
                header.alg, alg,
                "{token:?}: refused with only its own algorithm allowed"
            ),
            Err(e) => panic!("{token:?}: with only {alg} allowed: {e:?}"),
        }
    }
}

fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = Base64UrlSafeNoPadding::decode_to_vec(part, None).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The fixed key set, each key also alone, and each key as jwt-simple's own
/// verifier (for a second opinion on every accepted signature).
struct Keys {
    all: KeySet,
    es: KeySet,
    hs: KeySet,
    rsa: KeySet,
    es256: ES256PublicKey,
    rsa_n: Vec<u8>,
    rsa_e: Vec<u8>,
}

thread_local! {
    static KEYS: OnceCell<Keys> = const { OnceCell::new() };
}

fn key_set(json: Value) -> KeySet {
    KeySet::parse(&json.to_string())
        .expect("the fixture keys parse")
        .keys
}

fn keys() -> Keys {
    let rsa = fixtures::rsa_key().public_key().to_components();
    Keys {
        all: key_set(fixtures::jwks()),
        es: key_set(serde_json::json!({"keys": [fixtures::es256_jwk()]})),
        hs: key_set(serde_json::json!({"keys": [fixtures::hmac_jwk()]})),
        rsa: key_set(serde_json::json!({"keys": [fixtures::rsa_jwk()]})),
        es256: fixtures::es256_key().public_key(),
        rsa_n: rsa.n,
        rsa_e: rsa.e,
    }
}

/// Input: a compact JWS (lossy UTF-8), screened by `inspect` and verified
/// with the fixed key set at the fixed clock.
pub fn token_verify(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let all: HashSet<Algorithm> = Algorithm::ALL.into_iter().collect();
    let Ok((header, issuer)) = inspect(&token, &all) else {
        return;
    };
    let options = fixtures::verification_options();
    KEYS.with(|cell| {
        let keys = cell.get_or_init(keys);
        let Ok((claims, key)) = keys.all.verify(&token, &header, &options) else {
            return;
        };
        // What the options require.
        assert_eq!(
            claims.issuer.as_deref(),
            Some(ISSUER),
            "{token:?}: verified with another issuer"
        );
        assert_eq!(
            issuer.as_deref(),
            Some(ISSUER),
            "{token:?}: the unverified issuer that chose the keys differs from the verified one"
        );
        let audiences: HashSet<String> = [AUDIENCE.to_owned()].into();
        assert!(
            claims
                .audiences
                .as_ref()
                .is_some_and(|a| a.contains(&audiences)),
            "{token:?}: verified without the required audience: {:?}",
            claims.audiences
        );
        if let Some(exp) = claims.expires_at {
            assert!(
                exp.as_secs().saturating_add(SKEW_SECONDS) >= NOW,
                "{token:?}: expired token verified"
            );
        }
        if let Some(nbf) = claims.invalid_before {
            assert!(
                nbf.as_secs() <= NOW + SKEW_SECONDS,
                "{token:?}: not-yet-valid token verified"
            );
        }
        // The key that verified is of the token's algorithm (no algorithm
        // confusion), and the one its kid names.
        let (family, kid) = match header.alg {
            Algorithm::ES256 => (&keys.es, "es"),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => (&keys.hs, "hs"),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (&keys.rsa, "rsa"),
            other => panic!("{token:?}: verified as {other}, for which the set has no key"),
        };
        assert!(
            family.holds(&key.thumbprint),
            "{token:?}: {} token verified by a key of another type",
            header.alg
        );
        if let Some(named) = &header.kid {
            assert_eq!(
                named, kid,
                "{token:?}: verified by a key its kid does not name"
            );
        }
        assert!(
            library_verifies(keys, &token, header.alg, &options),
            "{token:?}: jwt-simple's own {} verifier refuses a token the key set accepted",
            header.alg
        );
    });
}

fn library_verifies(
    keys: &Keys,
    token: &str,
    alg: Algorithm,
    options: &VerificationOptions,
) -> bool {
    let o = Some(options.clone());
    let (n, e) = (&keys.rsa_n, &keys.rsa_e);
    let hmac = fixtures::HMAC_SECRET;
    match alg {
        Algorithm::ES256 => keys.es256.verify_token::<ExtraClaims>(token, o).is_ok(),
        Algorithm::HS256 => HS256Key::from_bytes(hmac)
            .verify_token::<ExtraClaims>(token, o)
            .is_ok(),
        Algorithm::HS384 => HS384Key::from_bytes(hmac)
            .verify_token::<ExtraClaims>(token, o)
            .is_ok(),
        Algorithm::HS512 => HS512Key::from_bytes(hmac)
            .verify_token::<ExtraClaims>(token, o)
            .is_ok(),
        Algorithm::RS256 => RS256PublicKey::from_components(n, e)
            .is_ok_and(|k| k.verify_token::<ExtraClaims>(token, o).is_ok()),
        Algorithm::RS384 => RS384PublicKey::from_components(n, e)
            .is_ok_and(|k| k.verify_token::<ExtraClaims>(token, o).is_ok()),
        Algorithm::RS512 => RS512PublicKey::from_components(n, e)
            .is_ok_and(|k| k.verify_token::<ExtraClaims>(token, o).is_ok()),
        Algorithm::PS256 => PS256PublicKey::from_components(n, e)
            .is_ok_and(|k| k.verify_token::<ExtraClaims>(token, o).is_ok()),
        Algorithm::PS384 => PS384PublicKey::from_components(n, e)
            .is_ok_and(|k| k.verify_token::<ExtraClaims>(token, o).is_ok()),
        Algorithm::PS512 => PS512PublicKey::from_components(n, e)
            .is_ok_and(|k| k.verify_token::<ExtraClaims>(token, o).is_ok()),
        Algorithm::ES384 | Algorithm::EdDSA => false,
    }
}
