//! JSON Web Keys and JWT signature verification, on top of jwt-simple.
//!
//! jwt-simple does the cryptography and the time checks, except ECDSA
//! (ES256, ES384): its portable curves cost 330 µs a verification, so
//! those tokens are checked here, step for step as jwt-simple checks
//! them, with the signature on [`crate::ecdsa`]. This module adds what a
//! gateway needs around it:
//!
//! * JWK Set parsing into verifiers, one per (key, algorithm) pair. A key
//!   whose JWK names an `alg` only ever verifies that algorithm; a key type
//!   never verifies another type's algorithm, so an RSA public key can never
//!   be used as an HMAC secret (algorithm confusion).
//! * Header screening before any key is touched: `alg=none` and unknown
//!   algorithms, `crit`, key material or key URLs carried by the token
//!   (`jku`, `x5u`, `jwk`, `x5c`: never fetched, never trusted) and nested
//!   JWTs (`cty: JWT`) are refused.
//! * `kid` matching, and a typed error for every way a token can fail, so
//!   each failure has its own reason in responses and metrics.

use std::collections::HashSet;
use std::fmt;

use jwt_simple::JWTError;
use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ecdsa::{Curve, EcdsaKey};

/// Claims that are not registered JWT claims (`tenant_id`, `context_scopes`,
/// `act`, ...), kept as JSON so claim names are configurable.
pub type ExtraClaims = Map<String, Value>;
pub type TokenClaims = JWTClaims<ExtraClaims>;

/// The algorithms ctxgate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ];

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
        }
    }

    /// Shortest HMAC secret accepted: the hash output size (RFC 7518 3.2).
    fn min_hmac_secret(self) -> Option<usize> {
        match self {
            Algorithm::HS256 => Some(32),
            Algorithm::HS384 => Some(48),
            Algorithm::HS512 => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One usable (key, algorithm) pair.
enum Verifier {
    RS256(RS256PublicKey),
    RS384(RS384PublicKey),
    RS512(RS512PublicKey),
    PS256(PS256PublicKey),
    PS384(PS384PublicKey),
    PS512(PS512PublicKey),
    /// ES256 and ES384 ([`verify_ecdsa`]).
    Ecdsa(EcdsaKey),
    EdDSA(Ed25519PublicKey),
    HS256(HS256Key),
    HS384(HS384Key),
    HS512(HS512Key),
}

impl Verifier {
    fn algorithm(&self) -> Algorithm {
        match self {
            Verifier::RS256(_) => Algorithm::RS256,
            Verifier::RS384(_) => Algorithm::RS384,
            Verifier::RS512(_) => Algorithm::RS512,
            Verifier::PS256(_) => Algorithm::PS256,
            Verifier::PS384(_) => Algorithm::PS384,
            Verifier::PS512(_) => Algorithm::PS512,
            Verifier::Ecdsa(k) => match k.curve() {
                Curve::P256 => Algorithm::ES256,
                Curve::P384 => Algorithm::ES384,
            },
            Verifier::EdDSA(_) => Algorithm::EdDSA,
            Verifier::HS256(_) => Algorithm::HS256,
            Verifier::HS384(_) => Algorithm::HS384,
            Verifier::HS512(_) => Algorithm::HS512,
        }
    }

    fn verify(
        &self,
        token: &str,
        options: &VerificationOptions,
    ) -> Result<TokenClaims, TokenError> {
        let owned = || Some(options.clone());
        let verified = match self {
            Verifier::RS256(k) => k.verify_token(token, owned()),
            Verifier::RS384(k) => k.verify_token(token, owned()),
            Verifier::RS512(k) => k.verify_token(token, owned()),
            Verifier::PS256(k) => k.verify_token(token, owned()),
            Verifier::PS384(k) => k.verify_token(token, owned()),
            Verifier::PS512(k) => k.verify_token(token, owned()),
            Verifier::Ecdsa(key) => return verify_ecdsa(key, self.algorithm(), token, options),
            Verifier::EdDSA(k) => k.verify_token(token, owned()),
            Verifier::HS256(k) => k.verify_token(token, owned()),
            Verifier::HS384(k) => k.verify_token(token, owned()),
            Verifier::HS512(k) => k.verify_token(token, owned()),
        };
        verified.map_err(|e| TokenError::from_jwt_simple(&e))
    }
}

/// A header as jwt-simple reads it: the same members, the same types (as
/// serde reads a struct, a JSON array in member order is one too).
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    cty: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Vec<String>>,
    #[serde(default, rename = "x5c")]
    _x5c: Option<Vec<String>>,
    #[serde(default, rename = "jku")]
    _jku: Option<String>,
    #[serde(default, rename = "jwk")]
    _jwk: Option<String>,
    #[serde(default, rename = "x5u")]
    _x5u: Option<String>,
    #[serde(default, rename = "x5t")]
    _x5t: Option<String>,
    #[serde(default, rename = "x5t#S256")]
    _x5t_s256: Option<String>,
    #[serde(default)]
    salt: Option<String>,
}

/// Base64url without padding, as JOSE writes it.
pub(crate) fn decode_b64(part: &str) -> Option<Vec<u8>> {
    Base64UrlSafeNoPadding::decode_to_vec(part, None).ok()
}

/// Verifies an ES256 or ES384 token step for step as jwt-simple's
/// `verify_token` does (the same checks, in the same order, with the same
/// errors), with the signature checked by `key`.
fn verify_ecdsa(
    key: &EcdsaKey,
    alg: Algorithm,
    token: &str,
    options: &VerificationOptions,
) -> Result<TokenClaims, TokenError> {
    let malformed = |what: &str| TokenError::Malformed(what.into());
    let fail = |e: JWTError| TokenError::from_jwt_simple(&e.into());
    if options
        .max_token_length
        .is_some_and(|max| token.len() > max)
    {
        return Err(TokenError::TooLarge);
    }
    let (header_b64, claims_b64, signature_b64) = split_compact(token)?;
    if header_b64.len() > options.max_header_length.unwrap_or(MAX_HEADER_LENGTH) {
        return Err(TokenError::TooLarge);
    }
    let header: Header = decode_b64(header_b64)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| malformed("header is not a JWT header"))?;
    if header.crit.is_some_and(|crit| !crit.is_empty()) {
        return Err(fail(JWTError::UnknownCriticalExtension));
    }
    if let Some(required) = &options.required_signature_type {
        let typ = header.typ.ok_or(JWTError::RequiredSignatureTypeMismatch);
        if !typ.map_err(fail)?.eq_ignore_ascii_case(required) {
            return Err(fail(JWTError::RequiredSignatureTypeMismatch));
        }
    } else if let Some(typ) = &header.typ {
        let typ = typ.to_uppercase();
        if typ != "JWT" && !typ.ends_with("+JWT") {
            return Err(fail(JWTError::NotJWT));
        }
    }
    if let Some(required) = &options.required_content_type {
        let cty = header.cty.ok_or(JWTError::RequiredContentTypeMismatch);
        if !cty.map_err(fail)?.eq_ignore_ascii_case(required) {
            return Err(fail(JWTError::RequiredContentTypeMismatch));
        }
    }
    if header.alg != alg.name() {
        return Err(TokenError::AlgorithmMismatch);
    }
    if let Some(required) = &options.required_key_id {
        match &header.kid {
            Some(kid) if kid == required => {}
            Some(_) => return Err(fail(JWTError::KeyIdentifierMismatch)),
            None => return Err(fail(JWTError::MissingJWTKeyIdentifier)),
        }
    }
    if header.salt.is_some_and(|salt| decode_b64(&salt).is_none()) {
        return Err(malformed("salt is not base64url"));
    }
    let signature =
        decode_b64(signature_b64).ok_or_else(|| malformed("signature is not base64url"))?;
    let signed = token
        .get(..header_b64.len() + 1 + claims_b64.len())
        .ok_or_else(|| malformed("a JWT has exactly three dot-separated parts"))?;
    if !key.verify(signed.as_bytes(), &signature) {
        return Err(TokenError::BadSignature);
    }
    let claims: TokenClaims = decode_b64(claims_b64)
        .ok_or_else(|| malformed("payload is not base64url"))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| TokenError::Malformed(e.to_string()))
        })?;
    check_claims(&claims, options).map_err(fail)?;
    Ok(claims)
}

/// jwt-simple's longest header (base64url).
const MAX_HEADER_LENGTH: usize = 8192;

/// The claim checks jwt-simple makes after the signature, in its order.
fn check_claims(claims: &TokenClaims, options: &VerificationOptions) -> Result<(), JWTError> {
    let now = options
        .artificial_time
        .unwrap_or_else(Clock::now_since_epoch);
    let tolerance = options.time_tolerance.unwrap_or_default();
    let ensure = |ok: bool, error: JWTError| if ok { Ok(()) } else { Err(error) };
    if let Some(reject_before) = options.reject_before {
        let issued_at = claims.issued_at.ok_or(JWTError::OldTokenReused)?;
        ensure(issued_at >= reject_before, JWTError::OldTokenReused)?;
    }
    if !options.accept_future
        && let Some(issued_at) = claims.issued_at
    {
        ensure(issued_at <= now + tolerance, JWTError::ClockDrift)?;
    }
    if let Some(max_validity) = options.max_validity {
        let issued_at = claims.issued_at.ok_or(JWTError::TokenIsTooOld)?;
        ensure(
            now <= issued_at || now - issued_at <= max_validity,
            JWTError::TokenIsTooOld,
        )?;
    }
    if !options.accept_future
        && let Some(invalid_before) = claims.invalid_before
    {
        ensure(
            now + tolerance >= invalid_before,
            JWTError::TokenNotValidYet,
        )?;
    }
    if let Some(expires_at) = claims.expires_at {
        ensure(
            now >= tolerance && now - tolerance <= expires_at,
            JWTError::TokenHasExpired,
        )?;
    }
    if let Some(allowed) = &options.allowed_issuers {
        let issuer = claims
            .issuer
            .as_ref()
            .ok_or(JWTError::RequiredIssuerMissing)?;
        ensure(allowed.contains(issuer), JWTError::RequiredIssuerMismatch)?;
    }
    if let Some(required) = &options.required_subject {
        let subject = claims
            .subject
            .as_ref()
            .ok_or(JWTError::RequiredSubjectMissing)?;
        ensure(subject == required, JWTError::RequiredSubjectMismatch)?;
    }
    if let Some(required) = &options.required_nonce {
        let nonce = claims
            .nonce
            .as_ref()
            .ok_or(JWTError::RequiredNonceMissing)?;
        ensure(nonce == required, JWTError::RequiredNonceMismatch)?;
    }
    if let Some(allowed) = &options.allowed_audiences {
        let audiences = claims
            .audiences
            .as_ref()
            .ok_or(JWTError::RequiredAudienceMissing)?;
        ensure(
            audiences.contains(allowed),
            JWTError::RequiredAudienceMismatch,
        )?;
    }
    Ok(())
}

struct KeyEntry {
    kid: Option<String>,
    /// RFC 7638 JWK thumbprint (SHA-256): what identifies the key material,
    /// whatever `kid` it is published under.
    thumbprint: Thumbprint,
    verifiers: Vec<Verifier>,
}

/// An RFC 7638 JWK thumbprint.
pub type Thumbprint = [u8; 32];

/// A parsed JWK Set: the keys one provider trusts.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
    /// Set by the owner when the set is installed: a cached verification
    /// made with the same version needs no further check.
    version: u64,
}

/// Which key verified a token: its thumbprint and the version of the key
/// set it was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    pub thumbprint: Thumbprint,
    pub version: u64,
}

/// Whether a JWK Set may contain symmetric (`oct`) keys. An HMAC secret
/// served by a remote JWKS endpoint is a shared secret published over the
/// network: refused unless the provider opts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symmetric {
    Allow,
    Refuse,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.verifiers.len())))
            .finish()
    }
}

/// A JWK Set that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    NotJson(String),
    NoKeysArray,
    NoUsableKeys(Vec<String>),
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJson(e) => write!(f, "not a JSON document: {e}"),
            JwksError::NoKeysArray => f.write_str("no \"keys\" array"),
            JwksError::NoUsableKeys(problems) if problems.is_empty() => {
                f.write_str("the key set is empty")
            }
            JwksError::NoUsableKeys(problems) => {
                write!(f, "no usable key: {}", problems.join("; "))
            }
        }
    }
}

/// A parsed key set, with the keys that were skipped and why.
#[derive(Debug)]
pub struct ParsedJwks {
    pub keys: KeySet,
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parses a JWK Set (`{"keys": [...]}`). Keys that cannot be used
    /// (encryption keys, unknown types, weak secrets, bad encodings) are
    /// skipped and reported; a set with no usable key is an error.
    pub fn parse(json: &str) -> Result<ParsedJwks, JwksError> {
        KeySet::parse_with(json, Symmetric::Allow)
    }

    /// [`KeySet::parse`], skipping `oct` keys unless `symmetric` allows them.
    pub fn parse_with(json: &str, symmetric: Symmetric) -> Result<ParsedJwks, JwksError> {
        let document: Value =
            serde_json::from_str(json).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (index, jwk) in keys.iter().enumerate() {
            let label = jwk.get("kid").and_then(Value::as_str).map_or_else(
                || format!("keys[{index}]"),
                |kid| format!("keys[{index}] (kid {kid})"),
            );
            if symmetric == Symmetric::Refuse
                && jwk.get("kty").and_then(Value::as_str) == Some("oct")
            {
                skipped.push(format!(
                    "{label}: symmetric (oct) keys are not accepted from a remote key set"
                ));
                continue;
            }
            match parse_jwk(jwk) {
                Ok(entry) => set.keys.push(entry),
                Err(problem) => skipped.push(format!("{label}: {problem}")),
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys(skipped));
        }
        Ok(ParsedJwks { keys: set, skipped })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Sets the version recorded in the [`KeyRef`]s of verifications.
    pub fn with_version(mut self, version: u64) -> KeySet {
        self.version = version;
        self
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Does the set still hold the key that verified a token? A key removed
    /// (or replaced by other material under the same `kid`) stops vouching
    /// for every token it verified, with or without a `kid`.
    pub fn vouches_for(&self, key: &KeyRef) -> bool {
        key.version == self.version || self.holds(&key.thumbprint)
    }

    /// Is a key with this thumbprint in the set?
    pub fn holds(&self, thumbprint: &Thumbprint) -> bool {
        self.keys.iter().any(|k| k.thumbprint == *thumbprint)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `token` (whose header was screened into `header`) with the
    /// matching key: by `kid` when the token names one, else every key of
    /// the token's algorithm in turn.
    pub fn verify(
        &self,
        token: &str,
        header: &TokenHeader,
        options: &VerificationOptions,
    ) -> Result<(TokenClaims, KeyRef), VerifyError> {
        let mut candidates = self
            .keys
            .iter()
            .filter(|key| header.kid.is_none() || key.kid == header.kid)
            .peekable();
        if header.kid.is_some() && candidates.peek().is_none() {
            return Err(VerifyError {
                error: TokenError::UnknownKid,
                signature_checked: false,
            });
        }
        let mut last = VerifyError {
            error: TokenError::AlgorithmMismatch,
            signature_checked: false,
        };
        for key in candidates {
            for verifier in key.verifiers.iter().filter(|v| v.algorithm() == header.alg) {
                match verifier.verify(token, options) {
                    Ok(claims) => {
                        let key = KeyRef {
                            thumbprint: key.thumbprint,
                            version: self.version,
                        };
                        return Ok((claims, key));
                    }
                    Err(error) => {
                        last = VerifyError {
                            error,
                            signature_checked: true,
                        };
                        // A signature that does not verify with this key may
                        // verify with the next one; anything else is final.
                        if last.error != TokenError::BadSignature {
                            return Err(last);
                        }
                    }
                }
            }
        }
        Err(last)
    }
}

/// A failed verification, and whether it cost signature work (what makes a
/// refusal worth caching, and worth throttling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub error: TokenError,
    pub signature_checked: bool,
}

/// The RFC 7638 thumbprint of a JWK: SHA-256 of its required members, in
/// lexicographic order, as compact JSON.
fn thumbprint(jwk: &Value, kty: &str) -> Result<Thumbprint, String> {
    let members: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        other => return Err(format!("unsupported key type {other}")),
    };
    let mut canonical = String::from("{");
    for (i, member) in members.iter().enumerate() {
        let value = jwk
            .get(*member)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing \"{member}\""))?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push('"');
        canonical.push_str(member);
        canonical.push_str("\":");
        canonical.push_str(&Value::String(value.to_owned()).to_string());
    }
    canonical.push('}');
    Ok(hmac_sha256::Hash::hash(canonical.as_bytes()))
}

fn b64(jwk: &Value, member: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing \"{member}\""))?;
    Base64UrlSafeNoPadding::decode_to_vec(text, Some(b"="))
        .map_err(|_| format!("\"{member}\" is not base64url"))
        .and_then(|bytes| {
            if bytes.is_empty() {
                Err(format!("\"{member}\" is empty"))
            } else {
                Ok(bytes)
            }
        })
}

fn parse_jwk(jwk: &Value) -> Result<KeyEntry, String> {
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
    if let Some(usage) = jwk.get("use").and_then(Value::as_str)
        && usage != "sig"
    {
        return Err(format!("\"use\" is \"{usage}\", not \"sig\""));
    }
    let declared = match jwk.get("alg") {
        None => None,
        Some(Value::String(name)) => {
            Some(Algorithm::from_name(name).ok_or_else(|| format!("unsupported \"alg\" {name}"))?)
        }
        Some(_) => return Err("\"alg\" is not a string".into()),
    };
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing \"kty\"")?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    let family: &[Algorithm] = match (kty, crv) {
        ("RSA", _) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        ("EC", Some("P-256")) => &[Algorithm::ES256],
        ("EC", Some("P-384")) => &[Algorithm::ES384],
        ("OKP", Some("Ed25519")) => &[Algorithm::EdDSA],
        ("oct", _) => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        (kty, crv) => {
            return Err(format!(
                "unsupported key type {kty}{}",
                crv.map(|c| format!("/{c}")).unwrap_or_default()
            ));
        }
    };
    let algorithms: Vec<Algorithm> = match declared {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(alg) => return Err(format!("\"alg\" {alg} does not fit key type {kty}")),
        None => family.to_vec(),
    };
    let mut verifiers = Vec::new();
    let mut problems = Vec::new();
    for alg in algorithms {
        match build_verifier(jwk, alg) {
            Ok(v) => verifiers.push(v),
            Err(e) => problems.push(e),
        }
    }
    if verifiers.is_empty() {
        return Err(problems.join(", "));
    }
    Ok(KeyEntry {
        kid,
        thumbprint: thumbprint(jwk, kty)?,
        verifiers,
    })
}

fn build_verifier(jwk: &Value, alg: Algorithm) -> Result<Verifier, String> {
    let invalid = |e: jwt_simple::Error| format!("invalid {alg} key: {e}");
    let rsa = || -> Result<(Vec<u8>, Vec<u8>), String> { Ok((b64(jwk, "n")?, b64(jwk, "e")?)) };
    let ec = |size: usize| -> Result<Vec<u8>, String> {
        let (x, y) = (b64(jwk, "x")?, b64(jwk, "y")?);
        if x.len() != size || y.len() != size {
            return Err(format!("EC coordinates must be {size} bytes"));
        }
        let mut point = Vec::with_capacity(1 + 2 * size);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        Ok(point)
    };
    let secret = || -> Result<Vec<u8>, String> {
        let k = b64(jwk, "k")?;
        let min = alg.min_hmac_secret().unwrap_or(0);
        if k.len() < min {
            return Err(format!(
                "{alg} secret is {} bytes, at least {min} are required",
                k.len()
            ));
        }
        Ok(k)
    };
    Ok(match alg {
        Algorithm::RS256 => rsa()
            .and_then(|(n, e)| RS256PublicKey::from_components(&n, &e).map_err(invalid))
            .map(Verifier::RS256)?,
        Algorithm::RS384 => rsa()
            .and_then(|(n, e)| RS384PublicKey::from_components(&n, &e).map_err(invalid))
            .map(Verifier::RS384)?,
        Algorithm::RS512 => rsa()
            .and_then(|(n, e)| RS512PublicKey::from_components(&n, &e).map_err(invalid))
            .map(Verifier::RS512)?,
        Algorithm::PS256 => rsa()
            .and_then(|(n, e)| PS256PublicKey::from_components(&n, &e).map_err(invalid))
            .map(Verifier::PS256)?,
        Algorithm::PS384 => rsa()
            .and_then(|(n, e)| PS384PublicKey::from_components(&n, &e).map_err(invalid))
            .map(Verifier::PS384)?,
        Algorithm::PS512 => rsa()
            .and_then(|(n, e)| PS512PublicKey::from_components(&n, &e).map_err(invalid))
            .map(Verifier::PS512)?,
        Algorithm::ES256 => ec(32)
            .and_then(|p| {
                EcdsaKey::new(Curve::P256, &p).map_err(|e| format!("invalid {alg} key: {e}"))
            })
            .map(Verifier::Ecdsa)?,
        Algorithm::ES384 => ec(48)
            .and_then(|p| {
                EcdsaKey::new(Curve::P384, &p).map_err(|e| format!("invalid {alg} key: {e}"))
            })
            .map(Verifier::Ecdsa)?,
        Algorithm::EdDSA => {
            let x = b64(jwk, "x")?;
            Ed25519PublicKey::from_bytes(&x)
                .map(Verifier::EdDSA)
                .map_err(invalid)?
        }
        Algorithm::HS256 => Verifier::HS256(HS256Key::from_bytes(&secret()?)),
        Algorithm::HS384 => Verifier::HS384(HS384Key::from_bytes(&secret()?)),
        Algorithm::HS512 => Verifier::HS512(HS512Key::from_bytes(&secret()?)),
    })
}

/// Every way a token can fail verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed(String),
    TooLarge,
    UnsupportedAlgorithm(String),
    /// A header member ctxgate refuses (`crit`, `jku`, `x5u`, `jwk`, `x5c`,
    /// `cty: JWT`).
    ForbiddenHeader(&'static str),
    UnknownKid,
    AlgorithmMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    IssuerMismatch,
    AudienceNotAllowed,
    MissingClaim(&'static str),
    /// `exp` is further away than the provider allows.
    LifetimeTooLong,
    /// The token's tenant is not one its issuer may assert.
    TenantNotAllowed,
    /// A scope holds whitespace, `%`, `;`, `\`, a control character or a
    /// dot segment: it cannot be read one way only.
    InvalidScopes,
}

impl TokenError {
    fn from_jwt_simple(error: &jwt_simple::Error) -> TokenError {
        match error.downcast_ref::<JWTError>() {
            Some(JWTError::InvalidSignature | JWTError::InvalidAuthenticationTag) => {
                TokenError::BadSignature
            }
            Some(JWTError::TokenHasExpired) => TokenError::Expired,
            Some(JWTError::TokenNotValidYet | JWTError::ClockDrift) => TokenError::NotYetValid,
            Some(JWTError::RequiredIssuerMismatch | JWTError::RequiredIssuerMissing) => {
                TokenError::IssuerMismatch
            }
            Some(JWTError::RequiredAudienceMismatch | JWTError::RequiredAudienceMissing) => {
                TokenError::AudienceNotAllowed
            }
            Some(JWTError::TokenTooLong | JWTError::HeaderTooLarge) => TokenError::TooLarge,
            Some(JWTError::AlgorithmMismatch) => TokenError::AlgorithmMismatch,
            Some(JWTError::UnknownCriticalExtension) => TokenError::ForbiddenHeader("crit"),
            Some(JWTError::WeakKey) => TokenError::AlgorithmMismatch,
            Some(other) => TokenError::Malformed(other.to_string()),
            None => TokenError::Malformed(error.to_string()),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed(why) => write!(f, "malformed token: {why}"),
            TokenError::TooLarge => f.write_str("token is too large"),
            TokenError::UnsupportedAlgorithm(alg) => write!(f, "algorithm {alg} is not accepted"),
            TokenError::ForbiddenHeader(member) => {
                write!(f, "token header member {member} is not accepted")
            }
            TokenError::UnknownKid => f.write_str("no key matches the token's kid"),
            TokenError::AlgorithmMismatch => f.write_str("no key of the token's algorithm"),
            TokenError::BadSignature => f.write_str("signature verification failed"),
            TokenError::Expired => f.write_str("token has expired"),
            TokenError::NotYetValid => f.write_str("token is not valid yet"),
            TokenError::IssuerMismatch => f.write_str("issuer is not accepted"),
            TokenError::AudienceNotAllowed => f.write_str("audience is not allowed"),
            TokenError::MissingClaim(claim) => write!(f, "token has no {claim} claim"),
            TokenError::LifetimeTooLong => {
                f.write_str("token lives longer than the issuer is allowed to grant")
            }
            TokenError::TenantNotAllowed => {
                f.write_str("the token claims a tenant its issuer may not assert")
            }
            TokenError::InvalidScopes => f.write_str(
                "a scope holds whitespace, a percent sign, a semicolon, a backslash, \
                 a control character or a dot segment",
            ),
        }
    }
}

/// Times from here on (year 2242) are not times.
const MAX_TIME: f64 = 8_589_934_592.0;

/// The screened header of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// Splits a compact JWS into its three parts, checking the shape only.
fn split_compact(token: &str) -> Result<(&str, &str, &str), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "a JWT has exactly three dot-separated parts".into(),
        ));
    };
    let is_b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if header.is_empty()
        || payload.is_empty()
        || signature.is_empty()
        || ![header, payload, signature].iter().all(|p| is_b64url(p))
    {
        return Err(TokenError::Malformed(
            "JWT parts must be non-empty base64url".into(),
        ));
    }
    Ok((header, payload, signature))
}

fn decode_json_part(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = decode_b64(part)
        .ok_or_else(|| TokenError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed(format!(
            "{what} is not a JSON object"
        ))),
    }
}

/// Screens a token's header and reads its unverified issuer, which picks
/// the provider (and so the keys) that must then verify the signature.
pub fn inspect(
    token: &str,
    allowed: &HashSet<Algorithm>,
) -> Result<(TokenHeader, Option<String>), TokenError> {
    let (header_b64, payload_b64, _) = split_compact(token)?;
    if header_b64.len() > 4096 {
        return Err(TokenError::TooLarge);
    }
    let header = decode_json_part(header_b64, "header")?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Malformed("header has no alg".into()))?;
    let alg = Algorithm::from_name(alg_name)
        .filter(|a| allowed.contains(a))
        .ok_or_else(|| TokenError::UnsupportedAlgorithm(alg_name.chars().take(16).collect()))?;
    for member in ["crit", "jku", "x5u", "jwk", "x5c"] {
        if let Some((name, _)) = header.get_key_value(member) {
            return Err(TokenError::ForbiddenHeader(match name.as_str() {
                "crit" => "crit",
                "jku" => "jku",
                "x5u" => "x5u",
                "jwk" => "jwk",
                _ => "x5c",
            }));
        }
    }
    if header
        .get("cty")
        .and_then(Value::as_str)
        .is_some_and(|cty| cty.eq_ignore_ascii_case("JWT"))
    {
        return Err(TokenError::ForbiddenHeader("cty"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed("kid is not a string".into())),
    };
    let payload = decode_json_part(payload_b64, "payload")?;
    // jwt-simple reads times into a fixed-point type that a huge number
    // silently wraps: insist on plausible times before it sees them.
    for claim in ["exp", "nbf", "iat"] {
        match payload.get(claim) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_f64().is_some_and(|t| (0.0..MAX_TIME).contains(&t)) => {}
            Some(_) => {
                return Err(TokenError::Malformed(format!(
                    "{claim} is not a plausible time"
                )));
            }
        }
    }
    let issuer = payload
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((TokenHeader { alg, kid }, issuer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::reexports::ct_codecs::Encoder;

    fn enc(bytes: &[u8]) -> String {
        jwt_simple::reexports::ct_codecs::Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    fn all() -> HashSet<Algorithm> {
        Algorithm::ALL.into_iter().collect()
    }

    fn es256_jwks(kp: &ES256KeyPair, kid: &str) -> String {
        let point = kp.public_key().public_key().to_bytes_uncompressed();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": enc(&point[1..33]), "y": enc(&point[33..65]),
        }]})
        .to_string()
    }

    fn options(now: u64) -> VerificationOptions {
        VerificationOptions {
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            time_tolerance: Some(Duration::from_secs(60)),
            ..Default::default()
        }
    }

    fn token_with(kp: &ES256KeyPair, kid: &str, exp_in: u64) -> String {
        let claims = Claims::with_custom_claims(ExtraClaims::new(), Duration::from_secs(exp_in))
            .with_issuer("iss");
        ES256KeyPair::from_bytes(&kp.to_bytes())
            .unwrap()
            .with_key_id(kid)
            .sign(claims)
            .unwrap()
    }

    #[test]
    fn es256_round_trip_and_kid_matching() {
        let kp = ES256KeyPair::generate();
        let keys = KeySet::parse(&es256_jwks(&kp, "k1")).unwrap().keys;
        let token = token_with(&kp, "k1", 600);
        let (header, issuer) = inspect(&token, &all()).unwrap();
        assert_eq!(issuer.as_deref(), Some("iss"));
        let now = Clock::now_since_epoch().as_secs();
        assert!(keys.verify(&token, &header, &options(now)).is_ok());

        let other = token_with(&kp, "k2", 600);
        let (header, _) = inspect(&other, &all()).unwrap();
        assert_eq!(
            keys.verify(&other, &header, &options(now))
                .unwrap_err()
                .error,
            TokenError::UnknownKid
        );
    }

    #[test]
    fn expiry_respects_the_skew() {
        let kp = ES256KeyPair::generate();
        let keys = KeySet::parse(&es256_jwks(&kp, "k1")).unwrap().keys;
        let token = token_with(&kp, "k1", 100);
        let (header, _) = inspect(&token, &all()).unwrap();
        let now = Clock::now_since_epoch().as_secs();
        assert!(
            keys.verify(&token, &header, &options(now + 150)).is_ok(),
            "inside skew"
        );
        assert_eq!(
            keys.verify(&token, &header, &options(now + 170))
                .unwrap_err()
                .error,
            TokenError::Expired
        );
    }

    #[test]
    fn a_wrong_key_is_a_bad_signature() {
        let kp = ES256KeyPair::generate();
        let keys = KeySet::parse(&es256_jwks(&ES256KeyPair::generate(), "k1"))
            .unwrap()
            .keys;
        let token = token_with(&kp, "k1", 600);
        let (header, _) = inspect(&token, &all()).unwrap();
        let now = Clock::now_since_epoch().as_secs();
        assert_eq!(
            keys.verify(&token, &header, &options(now))
                .unwrap_err()
                .error,
            TokenError::BadSignature
        );
    }

    fn forge(header: serde_json::Value, payload: serde_json::Value) -> String {
        format!(
            "{}.{}.{}",
            enc(header.to_string().as_bytes()),
            enc(payload.to_string().as_bytes()),
            enc(b"sig")
        )
    }

    #[test]
    fn hostile_headers_are_refused_before_any_key() {
        let p = serde_json::json!({"iss": "x"});
        let inspect_err = |h| inspect(&forge(h, p.clone()), &all()).unwrap_err();
        assert!(matches!(
            inspect_err(serde_json::json!({"alg": "none"})),
            TokenError::UnsupportedAlgorithm(_)
        ));
        assert!(matches!(
            inspect_err(serde_json::json!({"alg": "ES256K"})),
            TokenError::UnsupportedAlgorithm(_)
        ));
        assert_eq!(
            inspect_err(serde_json::json!({"alg": "ES256", "crit": ["exp"]})),
            TokenError::ForbiddenHeader("crit")
        );
        assert_eq!(
            inspect_err(serde_json::json!({"alg": "ES256", "jku": "http://evil"})),
            TokenError::ForbiddenHeader("jku")
        );
        assert_eq!(
            inspect_err(serde_json::json!({"alg": "ES256", "x5u": "http://evil"})),
            TokenError::ForbiddenHeader("x5u")
        );
        assert_eq!(
            inspect_err(serde_json::json!({"alg": "ES256", "jwk": {}})),
            TokenError::ForbiddenHeader("jwk")
        );
        assert_eq!(
            inspect_err(serde_json::json!({"alg": "ES256", "cty": "jwt"})),
            TokenError::ForbiddenHeader("cty")
        );
        assert!(matches!(
            inspect_err(serde_json::json!({"alg": "ES256", "kid": 7})),
            TokenError::Malformed(_)
        ));
        let only_es: HashSet<_> = [Algorithm::ES256].into();
        assert!(matches!(
            inspect(
                &forge(serde_json::json!({"alg": "RS256"}), p.clone()),
                &only_es
            )
            .unwrap_err(),
            TokenError::UnsupportedAlgorithm(_)
        ));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.c d",
            "!!.b.c",
            "e30.e30.",
            "bm90anNvbg.e30.c2ln",
        ] {
            assert!(
                matches!(inspect(bad, &all()), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rsa_key_never_verifies_hmac() {
        // The classic confusion attack: sign HS256 with the RSA public key
        // bytes as the secret. An RSA JWK has no HMAC verifier at all.
        let kp = RS256KeyPair::generate(2048).unwrap();
        let c = kp.public_key().to_components();
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r", "n": enc(&c.n), "e": enc(&c.e)}]}).to_string();
        let keys = KeySet::parse(&jwks).unwrap().keys;
        let secret = kp.public_key().to_pem().unwrap();
        let claims = Claims::with_custom_claims(ExtraClaims::new(), Duration::from_secs(600));
        let token = HS256Key::from_bytes(secret.as_bytes())
            .with_key_id("r")
            .authenticate(claims)
            .unwrap();
        let (header, _) = inspect(&token, &all()).unwrap();
        let now = Clock::now_since_epoch().as_secs();
        assert_eq!(
            keys.verify(&token, &header, &options(now))
                .unwrap_err()
                .error,
            TokenError::AlgorithmMismatch
        );
    }

    #[test]
    fn jwk_alg_pins_the_algorithm() {
        let kp = RS256KeyPair::generate(2048).unwrap();
        let c = kp.public_key().to_components();
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r", "alg": "RS256", "n": enc(&c.n), "e": enc(&c.e)}]}).to_string();
        let keys = KeySet::parse(&jwks).unwrap().keys;
        let ps = PS256KeyPair::from_der(&kp.to_der().unwrap())
            .unwrap()
            .with_key_id("r");
        let claims = Claims::with_custom_claims(ExtraClaims::new(), Duration::from_secs(600));
        let token = ps.sign(claims).unwrap();
        let (header, _) = inspect(&token, &all()).unwrap();
        let now = Clock::now_since_epoch().as_secs();
        assert_eq!(
            keys.verify(&token, &header, &options(now))
                .unwrap_err()
                .error,
            TokenError::AlgorithmMismatch
        );
    }

    #[test]
    fn weak_hmac_secrets_and_odd_keys_are_skipped() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "short", "alg": "HS256", "k": enc(&[7u8; 16])},
            {"kty": "oct", "kid": "ok", "alg": "HS256", "k": enc(&[7u8; 32])},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "mismatch", "alg": "RS256", "k": enc(&[7u8; 64])},
        ]})
        .to_string();
        let parsed = KeySet::parse(&jwks).unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(parsed.skipped.len(), 4, "{:?}", parsed.skipped);
        assert!(parsed.skipped.iter().any(|s| s.contains("at least 32")));
        // An HS512-capable secret of 48 bytes only serves HS256 and HS384.
        let jwks = serde_json::json!({"keys": [{"kty": "oct", "k": enc(&[1u8; 48])}]}).to_string();
        assert_eq!(
            KeySet::parse(&jwks).unwrap().keys.keys[0].verifiers.len(),
            2
        );
    }

    #[test]
    fn unusable_sets_are_errors() {
        assert!(matches!(KeySet::parse("nope"), Err(JwksError::NotJson(_))));
        assert_eq!(KeySet::parse("{}").unwrap_err(), JwksError::NoKeysArray);
        assert_eq!(
            KeySet::parse(r#"{"keys": []}"#).unwrap_err(),
            JwksError::NoUsableKeys(vec![])
        );
    }

    /// A compact JWS over exactly `header` and `payload`, signed with `pair`.
    fn sign_raw(
        pair: &ES256KeyPair,
        header: &serde_json::Value,
        payload: &serde_json::Value,
    ) -> String {
        use p256::ecdsa::signature::Signer as _;
        let signed = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(payload.to_string().as_bytes())
        );
        let key = p256::ecdsa::SigningKey::from_slice(&pair.to_bytes()).unwrap();
        let signature: p256::ecdsa::Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", enc(&signature.to_bytes()))
    }

    /// The ECDSA path replaces jwt-simple's `verify_token`: every header,
    /// claim set, option and mangling below gets the same verdict from both
    /// (the same claims, or the same error; a malformed token's message may
    /// differ).
    #[test]
    fn ecdsa_tokens_are_judged_exactly_as_jwt_simple_judges_them() {
        use serde_json::json;
        let pair = ES256KeyPair::generate();
        let public = pair.public_key();
        let point = public.public_key().to_bytes_uncompressed();
        let key = EcdsaKey::new(Curve::P256, &point).unwrap();
        let now = 1_800_000_000u64;
        let headers = [
            json!({"alg": "ES256", "typ": "JWT"}),
            json!({"alg": "ES256"}),
            json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}),
            json!({"alg": "ES256", "typ": "JOSE"}),
            json!({"alg": "ES256", "typ": 1}),
            json!({"alg": "ES256", "kid": 5}),
            json!({"alg": "ES256", "crit": []}),
            json!({"alg": "ES256", "crit": ["exp"]}),
            json!({"alg": "ES256", "cty": "text"}),
            json!({"alg": "ES256", "salt": "!!"}),
            json!({"alg": "ES256", "salt": "c2FsdA"}),
            json!({"alg": "ES256", "x5t": "abc"}),
            json!({"alg": "ES384"}),
            json!({"alg": "HS256"}),
            json!({"typ": "JWT"}),
            json!(["ES256"]),
        ];
        let payloads = [
            json!({"iss": "a", "aud": "x", "exp": now + 60}),
            json!({"iss": "a", "aud": "x", "exp": now - 59}),
            json!({"iss": "a", "aud": "x", "exp": now - 61}),
            json!({"iss": "b", "aud": "x", "exp": now + 60}),
            json!({"aud": "x"}),
            json!({"iss": "a"}),
            json!({"iss": "a", "aud": ["y", "x"]}),
            json!({"iss": "a", "aud": ["y"]}),
            json!({"iss": "a", "aud": "x", "nbf": now + 30}),
            json!({"iss": "a", "aud": "x", "nbf": now + 90}),
            json!({"iss": "a", "aud": "x", "iat": now + 90}),
            json!({"iss": "a", "aud": "x", "iat": now - 3600}),
            json!({"iss": "a", "aud": "x", "iat": "soon"}),
            json!({"iss": "a", "aud": "x", "sub": "alice", "nonce": "n1", "tenant_id": "t"}),
            json!({"iss": "a", "aud": 7}),
            json!("claims"),
        ];
        let provider = VerificationOptions {
            allowed_issuers: Some(HashSet::from(["a".to_owned()])),
            allowed_audiences: Some(HashSet::from(["x".to_owned()])),
            time_tolerance: Some(Duration::from_secs(60)),
            max_token_length: Some(4096),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            ..Default::default()
        };
        let mut options = vec![
            provider.clone(),
            VerificationOptions {
                artificial_time: Some(UnixTimeStamp::from_secs(now)),
                ..Default::default()
            },
        ];
        for change in 0..9 {
            let mut o = provider.clone();
            match change {
                0 => o.required_subject = Some("alice".into()),
                1 => o.required_nonce = Some("n1".into()),
                2 => o.required_key_id = Some("k1".into()),
                3 => o.max_validity = Some(Duration::from_secs(600)),
                4 => o.reject_before = Some(UnixTimeStamp::from_secs(now - 60)),
                5 => o.accept_future = true,
                6 => o.required_signature_type = Some("at+JWT".into()),
                7 => o.required_content_type = Some("TEXT".into()),
                _ => o.max_token_length = Some(200),
            }
            options.push(o);
        }
        // Claims as JSON, with a set of audiences in order.
        let normal = |claims: TokenClaims| {
            let mut value = serde_json::to_value(&claims).unwrap();
            if let Some(serde_json::Value::Array(aud)) = value.get_mut("aud") {
                aud.sort_by_key(|a| a.to_string());
            }
            value
        };
        let mut compared = 0;
        for header in &headers {
            for payload in &payloads {
                let token = sign_raw(&pair, header, payload);
                let tampered = {
                    let (h, rest) = token.split_once('.').unwrap();
                    let (_, sig) = rest.split_once('.').unwrap();
                    format!(
                        "{h}.{}.{sig}",
                        enc(json!({"iss": "a", "aud": "x", "admin": true})
                            .to_string()
                            .as_bytes())
                    )
                };
                let truncated = token[..token.len() - 4].to_owned();
                let padded = format!("{token}A");
                for token in [&token, &tampered, &truncated, &padded] {
                    for o in &options {
                        let ours = verify_ecdsa(&key, Algorithm::ES256, token, o).map(normal);
                        let theirs = public
                            .verify_token::<ExtraClaims>(token, Some(o.clone()))
                            .map(normal)
                            .map_err(|e| TokenError::from_jwt_simple(&e));
                        let same = match (&ours, &theirs) {
                            (Err(TokenError::Malformed(_)), Err(TokenError::Malformed(_))) => true,
                            _ => ours == theirs,
                        };
                        assert!(
                            same,
                            "{header} {payload} {o:?}\nours:   {ours:?}\ntheirs: {theirs:?}"
                        );
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, headers.len() * payloads.len() * 4 * options.len());
    }
}
