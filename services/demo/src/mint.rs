//! Token minting for the demo and the e2e tests.
//!
//! Tokens are assembled by hand (`base64url(header) . base64url(payload)`,
//! then signed with the key's raw primitive) instead of through jwt-simple's
//! `Claims` builder, because tests need what a well-behaved issuer never
//! produces: tokens that are already expired, headers with `crit` or `jku`,
//! an `alg` that does not match the key, or claims of the wrong type.
//! [`mint`] covers the ordinary case from [`MintOptions`]; [`mint_raw`] signs
//! any header and payload.
//!
//! Signatures are the standard JWS ones (RFC 7518): RSASSA-PKCS1-v1_5 with
//! SHA-256, ECDSA P-256 with SHA-256 as fixed-size `r || s`, pure Ed25519, and
//! HMAC-SHA-256. Tokens minted with the default headers verify with
//! jwt-simple.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use jwt_simple::algorithms::MACLike;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use serde_json::{Map, Value};

use crate::keys::{DemoKeys, KID_EDDSA, KID_ES256, KID_HS256, KID_RS256};

/// Which demo key signs the token.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MintAlg {
    RS256,
    #[default]
    ES256,
    EdDSA,
    HS256,
}

impl MintAlg {
    /// Every algorithm, in a stable order.
    pub const ALL: [MintAlg; 4] = [
        MintAlg::RS256,
        MintAlg::ES256,
        MintAlg::EdDSA,
        MintAlg::HS256,
    ];

    /// The JOSE `alg` name (`RS256`, `ES256`, `EdDSA`, `HS256`).
    pub fn name(self) -> &'static str {
        match self {
            MintAlg::RS256 => "RS256",
            MintAlg::ES256 => "ES256",
            MintAlg::EdDSA => "EdDSA",
            MintAlg::HS256 => "HS256",
        }
    }

    /// The `kid` of the demo key for this algorithm.
    pub fn default_kid(self) -> &'static str {
        match self {
            MintAlg::RS256 => KID_RS256,
            MintAlg::ES256 => KID_ES256,
            MintAlg::EdDSA => KID_EDDSA,
            MintAlg::HS256 => KID_HS256,
        }
    }
}

impl fmt::Display for MintAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for MintAlg {
    type Err = String;

    /// Accepts the JOSE names, case-insensitively (`es256`, `EdDSA`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MintAlg::ALL
            .into_iter()
            .find(|alg| alg.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown algorithm {s:?}; expected one of RS256, ES256, EdDSA, HS256")
            })
    }
}

/// Issuer of the demo tokens, as the demo gateway's provider expects it.
pub const DEMO_ISSUER: &str = "https://idp.ctxgate.local";
/// Audience of the demo tokens, as the demo gateway's provider expects it.
pub const DEMO_AUDIENCE: &str = "context-api";

/// What to put in a minted token. [`Default`] matches the CLI defaults:
/// `sub` `user-1`, tenant `acme`, audience `context-api`, issuer
/// `https://idp.ctxgate.local`, ES256, valid for one hour, no scopes.
#[derive(Clone, Debug, PartialEq)]
pub struct MintOptions {
    pub sub: String,
    /// `tenant_id` claim; omitted when `None`.
    pub tenant: Option<String>,
    /// `context_scopes` claim; always present, possibly empty.
    pub scopes: Vec<String>,
    /// `aud`: omitted if empty, a string if one, an array if several.
    pub aud: Vec<String>,
    pub iss: String,
    pub alg: MintAlg,
    /// `exp = now + exp_in`; negative values mint an already expired token.
    pub exp_in: i64,
    /// `nbf = now + nbf_in` when set.
    pub nbf_in: Option<i64>,
    /// Header `kid`: `None` uses the key's kid, `Some("")` omits the member.
    pub kid: Option<String>,
    /// Merged over the standard claims last, so it can override any of them.
    pub extra_claims: Map<String, Value>,
}

impl Default for MintOptions {
    fn default() -> Self {
        MintOptions {
            sub: "user-1".to_string(),
            tenant: Some("acme".to_string()),
            scopes: Vec::new(),
            aud: vec![DEMO_AUDIENCE.to_string()],
            iss: DEMO_ISSUER.to_string(),
            alg: MintAlg::ES256,
            exp_in: 3600,
            nbf_in: None,
            kid: None,
            extra_claims: Map::new(),
        }
    }
}

/// Current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The JOSE header [`mint`] uses: `alg`, `typ: JWT` and `kid` unless
/// `opts.kid` is `Some("")`.
pub fn header(opts: &MintOptions) -> Value {
    let mut header = Map::new();
    header.insert("alg".into(), opts.alg.name().into());
    header.insert("typ".into(), "JWT".into());
    let kid = opts.kid.as_deref().unwrap_or(opts.alg.default_kid());
    if !kid.is_empty() {
        header.insert("kid".into(), kid.into());
    }
    Value::Object(header)
}

/// The payload [`mint`] signs, with times relative to `now` (Unix seconds).
/// Useful to start from the ordinary claims, edit them and call [`mint_raw`].
pub fn claims(opts: &MintOptions, now: i64) -> Result<Map<String, Value>> {
    let at = |offset: i64, what: &str| {
        now.checked_add(offset)
            .ok_or_else(|| anyhow!("{what} offset {offset} overflows the timestamp"))
    };
    let mut claims = Map::new();
    claims.insert("iss".into(), opts.iss.clone().into());
    claims.insert("sub".into(), opts.sub.clone().into());
    match opts.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.to_vec().into());
        }
    }
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), at(opts.exp_in, "exp")?.into());
    if let Some(nbf_in) = opts.nbf_in {
        claims.insert("nbf".into(), at(nbf_in, "nbf")?.into());
    }
    if let Some(tenant) = &opts.tenant {
        claims.insert("tenant_id".into(), tenant.clone().into());
    }
    claims.insert("context_scopes".into(), opts.scopes.clone().into());
    for (name, value) in &opts.extra_claims {
        claims.insert(name.clone(), value.clone());
    }
    Ok(claims)
}

/// Mints a compact JWS from `opts`, signed with the demo key for `opts.alg`.
pub fn mint(keys: &DemoKeys, opts: &MintOptions) -> Result<String> {
    let payload = Value::Object(claims(opts, now())?);
    try_mint_raw(keys, &header(opts), &payload, opts.alg)
}

/// Signs an arbitrary header and payload with the demo key for `alg`. The
/// header is used verbatim: its `alg` need not match the key (tests use this
/// for mismatches, `crit`, `jku`, `cty: JWT`, ...). Neither value has to be
/// an object.
///
/// Signing with a loaded demo key does not fail in practice; if it ever did,
/// the token gets an empty signature, which every verifier rejects. Use
/// [`try_mint_raw`] to see the error instead.
pub fn mint_raw(
    keys: &DemoKeys,
    header_json: &Value,
    payload_json: &Value,
    alg: MintAlg,
) -> String {
    match try_mint_raw(keys, header_json, payload_json, alg) {
        Ok(token) => token,
        Err(_) => format!(
            "{}.{}.",
            b64_json(header_json).unwrap_or_default(),
            b64_json(payload_json).unwrap_or_default()
        ),
    }
}

/// [`mint_raw`], reporting signing errors.
pub fn try_mint_raw(
    keys: &DemoKeys,
    header_json: &Value,
    payload_json: &Value,
    alg: MintAlg,
) -> Result<String> {
    let mut token = format!("{}.{}", b64_json(header_json)?, b64_json(payload_json)?);
    let signature = sign(keys, alg, token.as_bytes())?;
    token.push('.');
    token.push_str(&b64(&signature)?);
    Ok(token)
}

/// Signs a JWS signing input with the demo key for `alg` and returns the raw
/// signature bytes (JWS encoding, before base64url).
pub fn sign(keys: &DemoKeys, alg: MintAlg, signing_input: &[u8]) -> Result<Vec<u8>> {
    match alg {
        MintAlg::RS256 => sign_rs256(keys, signing_input).context("RS256 signing failed"),
        MintAlg::ES256 => {
            use p256::ecdsa::signature::Signer as _;
            let key: &p256::ecdsa::SigningKey = keys.es256_inner().as_ref();
            let signature: p256::ecdsa::Signature = key
                .try_sign(signing_input)
                .map_err(|e| anyhow!("ES256 signing failed: {e}"))?;
            Ok(signature.to_bytes().to_vec())
        }
        MintAlg::EdDSA => Ok(keys
            .eddsa_inner()
            .as_ref()
            .sk
            .sign(signing_input, None)
            .to_vec()),
        MintAlg::HS256 => Ok(keys.hs256().authentication_tag(signing_input)),
    }
}

fn sign_rs256(keys: &DemoKeys, signing_input: &[u8]) -> Result<Vec<u8>> {
    use superboring::hash::MessageDigest;
    use superboring::pkey::PKey;
    use superboring::rsa::Padding;
    use superboring::sign::Signer;

    let rsa: &superboring::rsa::Rsa<superboring::pkey::Private> = keys.rs256_inner().as_ref();
    let pkey = PKey::from_rsa(rsa.clone())?;
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey)?;
    signer.set_rsa_padding(Padding::PKCS1)?;
    signer.update(signing_input)?;
    Ok(signer.sign_to_vec()?)
}

fn b64(bytes: &[u8]) -> Result<String> {
    Base64UrlSafeNoPadding::encode_to_string(bytes).map_err(|e| anyhow!("base64url: {e}"))
}

fn b64_json(value: &Value) -> Result<String> {
    b64(serde_json::to_string(value)?.as_bytes())
}

/// Parses a `--claims` argument: it must be a JSON object.
pub fn parse_claims_object(text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text).context("claims are not valid JSON")? {
        Value::Object(map) => Ok(map),
        other => bail!(
            "claims must be a JSON object like '{{\"act\":{{\"sub\":\"agent-1\"}}}}', got {}",
            json_kind(&other)
        ),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Splits a compact JWS and decodes its header and payload without checking
/// the signature. For tests and debugging only.
pub fn decode_unverified(token: &str) -> Result<(Value, Value)> {
    use jwt_simple::reexports::ct_codecs::Decoder;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a compact JWS (want three dot-separated parts)");
    };
    let decode = |part: &str, what: &str| -> Result<Value> {
        let bytes = Base64UrlSafeNoPadding::decode_to_vec(part, None)
            .map_err(|e| anyhow!("{what} is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what} is not JSON"))
    };
    Ok((decode(h, "header")?, decode(p, "payload")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::shared_keys;
    use jwt_simple::prelude::*;
    use jwt_simple::reexports::ct_codecs::Decoder;
    use serde_json::json;

    type Claims = JWTClaims<Map<String, Value>>;

    fn b64d(v: &Value) -> Vec<u8> {
        Base64UrlSafeNoPadding::decode_to_vec(v.as_str().unwrap(), None).unwrap()
    }

    /// Verifies with keys rebuilt from `jwks.json` components, as a relying
    /// party would.
    fn verify(keys: &DemoKeys, alg: MintAlg, token: &str) -> Result<Claims, jwt_simple::Error> {
        let jwks: Value = serde_json::from_str(keys.jwks_json()).unwrap();
        let jwk = |kid: &str| {
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == kid)
                .unwrap()
                .clone()
        };
        let opts = Some(VerificationOptions::default());
        match alg {
            MintAlg::RS256 => {
                let k = jwk(KID_RS256);
                RS256PublicKey::from_components(&b64d(&k["n"]), &b64d(&k["e"]))
                    .unwrap()
                    .verify_token(token, opts)
            }
            MintAlg::ES256 => {
                let k = jwk(KID_ES256);
                let mut point = vec![0x04];
                point.extend(b64d(&k["x"]));
                point.extend(b64d(&k["y"]));
                ES256PublicKey::from_bytes(&point)
                    .unwrap()
                    .verify_token(token, opts)
            }
            MintAlg::EdDSA => {
                let k = jwk(KID_EDDSA);
                Ed25519PublicKey::from_bytes(&b64d(&k["x"]))
                    .unwrap()
                    .verify_token(token, opts)
            }
            MintAlg::HS256 => HS256Key::from_bytes(keys.hs256_secret()).verify_token(token, opts),
        }
    }

    #[test]
    fn minted_tokens_verify_with_jwks_keys() {
        let keys = shared_keys();
        for alg in MintAlg::ALL {
            let opts = MintOptions {
                alg,
                scopes: vec!["read:projects/*".into(), "write:projects/p1".into()],
                ..MintOptions::default()
            };
            let token = mint(keys, &opts).unwrap();
            let claims = verify(keys, alg, &token).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(claims.subject.as_deref(), Some("user-1"));
            assert_eq!(claims.issuer.as_deref(), Some("https://idp.ctxgate.local"));
            assert_eq!(claims.custom["tenant_id"], "acme");
            assert_eq!(
                claims.custom["context_scopes"],
                json!(["read:projects/*", "write:projects/p1"])
            );

            let (header, payload) = decode_unverified(&token).unwrap();
            assert_eq!(
                header,
                json!({ "alg": alg.name(), "typ": "JWT", "kid": alg.default_kid() })
            );
            assert_eq!(payload["aud"], "context-api", "one audience is a string");
            let iat = payload["iat"].as_i64().unwrap();
            assert_eq!(payload["exp"].as_i64().unwrap(), iat + 3600);
            assert!(payload.get("nbf").is_none());

            // Another key of the same family must not verify it.
            let other = if alg == MintAlg::HS256 {
                HS256Key::generate().verify_token::<Map<String, Value>>(&token, None)
            } else {
                Ed25519KeyPair::generate()
                    .public_key()
                    .verify_token::<Map<String, Value>>(&token, None)
            };
            assert!(other.is_err(), "{alg}");
        }
    }

    #[test]
    fn negative_exp_is_already_expired() {
        let keys = shared_keys();
        let opts = MintOptions {
            exp_in: -60,
            nbf_in: Some(-120),
            ..MintOptions::default()
        };
        let token = mint(keys, &opts).unwrap();
        let (_, payload) = decode_unverified(&token).unwrap();
        let exp = payload["exp"].as_i64().unwrap();
        assert!(exp < now(), "exp {exp} must be in the past");
        assert_eq!(payload["nbf"].as_i64().unwrap(), exp - 60);
        // Beyond jwt-simple's default 15-minute leeway it is rejected.
        let long_expired = mint(
            keys,
            &MintOptions {
                exp_in: -3600,
                ..MintOptions::default()
            },
        )
        .unwrap();
        assert!(verify(keys, MintAlg::ES256, &long_expired).is_err());
    }

    #[test]
    fn extra_claims_override_and_audiences() {
        let keys = shared_keys();
        let extra = parse_claims_object(
            r#"{"sub":"agent-7","tenant_id":"globex","exp":123,
                "act":{"sub":"user-1"},"delegation_rights":["read:*"],
                "rate_limits":{"rpm":10}}"#,
        )
        .unwrap();
        let opts = MintOptions {
            aud: vec!["a".into(), "b".into()],
            tenant: None,
            extra_claims: extra,
            ..MintOptions::default()
        };
        let (_, payload) = decode_unverified(&mint(keys, &opts).unwrap()).unwrap();
        assert_eq!(payload["sub"], "agent-7");
        assert_eq!(payload["tenant_id"], "globex");
        assert_eq!(payload["exp"], 123);
        assert_eq!(payload["act"], json!({ "sub": "user-1" }));
        assert_eq!(payload["delegation_rights"], json!(["read:*"]));
        assert_eq!(payload["rate_limits"], json!({ "rpm": 10 }));
        assert_eq!(payload["aud"], json!(["a", "b"]));

        let opts = MintOptions {
            aud: vec![],
            tenant: None,
            ..MintOptions::default()
        };
        let (_, payload) = decode_unverified(&mint(keys, &opts).unwrap()).unwrap();
        assert!(payload.get("aud").is_none());
        assert!(payload.get("tenant_id").is_none());
        assert_eq!(payload["context_scopes"], json!([]));
    }

    #[test]
    fn kid_override_and_omission() {
        let keys = shared_keys();
        let token = |kid: Option<&str>, alg| {
            let opts = MintOptions {
                kid: kid.map(String::from),
                alg,
                ..MintOptions::default()
            };
            decode_unverified(&mint(keys, &opts).unwrap()).unwrap().0
        };
        assert_eq!(token(None, MintAlg::HS256)["kid"], "demo-hs256");
        assert_eq!(token(Some("rotated"), MintAlg::EdDSA)["kid"], "rotated");
        assert!(token(Some(""), MintAlg::RS256).get("kid").is_none());
    }

    #[test]
    fn mint_raw_signs_odd_headers() {
        let keys = shared_keys();
        let payload = Value::Object(claims(&MintOptions::default(), now()).unwrap());
        // alg says RS256 but the ES256 key signs: the signature is a valid
        // ES256 signature over exactly these bytes.
        let header = json!({ "alg": "RS256", "kid": "demo-es256", "crit": ["exp"],
                             "jku": "https://evil.example/jwks.json", "cty": "JWT" });
        let token = mint_raw(keys, &header, &payload, MintAlg::ES256);
        let (h, p) = decode_unverified(&token).unwrap();
        assert_eq!(h, header);
        assert_eq!(p, payload);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
        assert_eq!(sig.len(), 64);
        use p256::ecdsa::signature::Verifier;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&keys.es256().public_key().to_bytes())
            .unwrap();
        vk.verify(
            input.as_bytes(),
            &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
        )
        .unwrap();

        // With an ordinary header, mint_raw output verifies for every alg.
        for alg in MintAlg::ALL {
            let opts = MintOptions {
                alg,
                ..MintOptions::default()
            };
            let token = mint_raw(keys, &super::header(&opts), &payload, alg);
            verify(keys, alg, &token).unwrap();
        }
    }

    #[test]
    fn alg_names_parse() {
        for alg in MintAlg::ALL {
            assert_eq!(alg.name().parse::<MintAlg>().unwrap(), alg);
            assert_eq!(alg.name().to_lowercase().parse::<MintAlg>().unwrap(), alg);
        }
        assert!("none".parse::<MintAlg>().is_err());
        assert!(parse_claims_object("[1]").is_err());
        assert!(parse_claims_object("{").is_err());
    }
}
