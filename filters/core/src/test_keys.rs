//! Keys and tokens the unit tests share: one ES256 key as a JWK Set, and
//! tokens signed with it carrying exactly the payload a test gives.

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{Value, json};

use crate::jwt::ExtraClaims;

/// Base64url without padding, as JOSE writes it.
pub fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

/// `key`'s public half as a JWK Set (`kid` `k1`).
pub fn jwks(key: &ES256KeyPair) -> Value {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]})
}

/// A token with exactly `payload` as its claims, signed with `key`.
pub fn sign(key: &ES256KeyPair, payload: Value) -> String {
    let custom: ExtraClaims = serde_json::from_value(payload).unwrap();
    // Registered claims pass through the custom map unchanged when
    // signing: jwt-simple flattens it into the payload.
    let claims = JWTClaims {
        issued_at: None,
        expires_at: None,
        invalid_before: None,
        issuer: None,
        subject: None,
        audiences: None,
        jwt_id: None,
        nonce: None,
        custom,
    };
    key.sign(claims).unwrap()
}
