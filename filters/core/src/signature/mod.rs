//! HTTP Message Signatures (RFC 9421) with `hmac-sha256`, and
//! `Content-Digest` (RFC 9530), for the routes that require them.
//!
//! A request on a signed route carries exactly one signature: one member
//! in `Signature-Input` and the same label in `Signature`. Several
//! signatures, or a label in one field only, are refused as ambiguous
//! (400): the gateway verifies one signature and must know which.
//!
//! The signature must cover `@method`, `@path`, `@query` and
//! `content-digest`, and carry the parameters `created`, `keyid` and
//! `nonce`; `alg`, if given, must be `hmac-sha256` (the key decides the
//! algorithm, section 3.3.7). `Content-Digest` is required on every
//! signed request, with a body or without: a request without a body
//! states the digest of the empty body (`sha-256=:47DEQpj8HBSa+/TImW+5
//! JCeuQeRkm5NMpJWZG3hSuFU=:`). One rule, no case where a signature
//! vouches for a body nobody checked.
//!
//! Verification runs in two steps, so that the headers of a request that
//! does not verify never reach the upstream:
//!
//! 1. at the headers ([`Verifier::verify`]): parse, check coverage and
//!    parameters, the key, the time window, and the HMAC of the signature
//!    base, compared in constant time; the stage then claims the nonce.
//!    The `Content-Digest` field is part of the base, so it is
//!    authenticated here;
//! 2. with the body ([`Verified::check_body`]): the body's SHA-256 is
//!    compared, in constant time, with the authenticated digest.
//!
//! The time window: `created` no older than `max_age_seconds` and no more
//! than `max_skew_seconds` ahead; `expires`, if given, still ahead. A
//! nonce is remembered as long as its signature could be accepted
//! (`created + max_age_seconds`), so a replay inside the window finds it
//! and one outside is stale.

pub mod base;
pub mod config;
pub mod refusal;
pub mod sfv;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use hmac_sha256::{HMAC, Hash};

use crate::config::ConfigError;
use crate::http::RequestHead;
use base::{Component, quoted, signature_base};
use config::{SignatureConfig, SignedRoute};
use refusal::{Reason, Refusal};
use sfv::{Bare, Member};

/// The only algorithm verified.
pub const ALGORITHM: &str = "hmac-sha256";

/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 256;

/// What every signature must cover.
const REQUIRED: [&str; 4] = ["@method", "@path", "@query", "content-digest"];

/// The signature parameters RFC 9421 defines (section 2.3); any other is
/// refused rather than ignored.
const PARAMETERS: [&str; 6] = ["created", "expires", "nonce", "alg", "keyid", "tag"];

/// The compiled `signature` section.
pub struct Verifier {
    keys: BTreeMap<String, Vec<u8>>,
    routes: Vec<SignedRoute>,
    pub max_age_seconds: u64,
    pub max_skew_seconds: u64,
    pub body_limit: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A signature that verified at the headers: what is left to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub keyid: String,
    pub nonce: String,
    /// When the nonce may be forgotten (Unix ms).
    pub nonce_expires_ms: u64,
    /// The body's SHA-256 as the signed `Content-Digest` states it.
    pub sha256: [u8; 32],
}

impl Verified {
    /// The body against the signed digest.
    pub fn check_body(&self, body: &[u8]) -> Result<(), Refusal> {
        if Hash::verify(body, &self.sha256) {
            Ok(())
        } else {
            Err(Refusal::new(
                Reason::DigestMismatch,
                "the body does not match its Content-Digest",
            ))
        }
    }
}

impl Verifier {
    pub fn new(config: SignatureConfig) -> Result<Verifier, ConfigError> {
        let keys = config.validate()?;
        Ok(Verifier {
            keys,
            routes: config.routes,
            max_age_seconds: config.max_age_seconds,
            max_skew_seconds: config.max_skew_seconds,
            body_limit: config.body_limit,
        })
    }

    /// Whether `head` is on a route that must be signed.
    pub fn applies(&self, head: &RequestHead<'_>) -> bool {
        let path = head.path.split_once('?').map_or(head.path, |(p, _)| p);
        self.routes.iter().any(|r| {
            r.path.matches(path)
                && r.methods
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|m| m == head.method))
        })
    }

    /// Step 1: everything but the body (see the module documentation).
    pub fn verify(&self, head: &RequestHead<'_>, now_ms: u64) -> Result<Verified, Refusal> {
        let input = combined(head, "signature-input")?;
        let signature = combined(head, "signature")?;
        let (input, signature) = match (input, signature) {
            (None, None) => {
                return Err(Refusal::new(
                    Reason::Missing,
                    "this route requires an HTTP message signature (Signature-Input, Signature)",
                ));
            }
            (Some(i), Some(s)) => (i, s),
            _ => return Err(malformed("Signature-Input and Signature come together")),
        };
        let input = sfv::parse_dictionary(&input)
            .map_err(|e| malformed(format!("Signature-Input: {e}")))?;
        let signature =
            sfv::parse_dictionary(&signature).map_err(|e| malformed(format!("Signature: {e}")))?;
        let ([(label, Member::InnerList(items, params))], [(signed_label, signed)]) =
            (input.as_slice(), signature.as_slice())
        else {
            return Err(malformed(
                "exactly one signature is verified: one inner list in Signature-Input, \
                 one member in Signature",
            ));
        };
        if label != signed_label {
            return Err(malformed(format!(
                "Signature has no member labelled \"{}\"",
                quoted(label)
            )));
        }
        let Member::Item(sfv::Item {
            bare: Bare::Bytes(mac),
            params: mac_params,
        }) = signed
        else {
            return Err(malformed("the Signature member is not a byte sequence"));
        };
        if !mac_params.is_empty() {
            return Err(malformed("the Signature member has parameters"));
        }

        let mut components: Vec<Component> = Vec::with_capacity(items.len());
        for item in items {
            let component = Component::parse(item)?;
            if components.contains(&component) {
                return Err(malformed(format!(
                    "the component {} is covered twice",
                    component.name()
                )));
            }
            components.push(component);
        }
        let p = Parameters::read(params)?;

        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|r| !components.iter().any(|c| c.name() == *r))
            .collect();
        if !missing.is_empty() {
            return Err(Refusal::new(
                Reason::Incomplete,
                format!("the signature must cover {}", missing.join(", ")),
            ));
        }
        let (Some(created), Some(keyid), Some(nonce)) = (p.created, p.keyid, p.nonce) else {
            return Err(Refusal::new(
                Reason::Incomplete,
                "the signature must carry created, keyid and nonce",
            ));
        };
        if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
            return Err(malformed(format!(
                "the nonce must be 1 to {MAX_NONCE_BYTES} bytes"
            )));
        }
        if let Some(alg) = p.alg
            && alg != ALGORITHM
        {
            return Err(Refusal::new(
                Reason::Algorithm,
                format!("alg \"{}\" is not {ALGORITHM}", quoted(alg)),
            ));
        }
        let Some(key) = self.keys.get(keyid) else {
            return Err(Refusal::new(
                Reason::UnknownKey,
                format!("no key has the id \"{}\"", quoted(keyid)),
            ));
        };

        let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let max_age = i64::try_from(self.max_age_seconds).unwrap_or(i64::MAX);
        let skew = i64::try_from(self.max_skew_seconds).unwrap_or(i64::MAX);
        if now.saturating_sub(created) > max_age {
            return Err(Refusal::new(
                Reason::Stale,
                format!("created is more than {max_age} s ago"),
            ));
        }
        if created.saturating_sub(now) > skew {
            return Err(Refusal::new(
                Reason::Stale,
                format!("created is more than {skew} s ahead"),
            ));
        }
        if p.expires.is_some_and(|expires| expires <= now) {
            return Err(Refusal::new(Reason::Stale, "the signature has expired"));
        }

        let base = signature_base(head, items, &components, params)?;
        let valid = <&[u8; 32]>::try_from(mac.as_slice())
            .is_ok_and(|mac| HMAC::verify(base.as_bytes(), key, mac));
        if !valid {
            return Err(Refusal::new(
                Reason::Invalid,
                "the signature does not verify",
            ));
        }
        let sha256 = content_digest(head)?;
        // Remembered until the signature leaves its window (in whole
        // seconds, so the second `created` names is counted in full).
        let nonce_expires_ms = u64::try_from(created.saturating_add(max_age).saturating_add(1))
            .unwrap_or(0)
            .saturating_mul(1000);
        Ok(Verified {
            keyid: keyid.to_owned(),
            nonce: nonce.to_owned(),
            nonce_expires_ms,
            sha256,
        })
    }
}

/// The signature parameters, each at most once (the parser refuses a
/// repeated one), of the type RFC 9421 gives it.
#[derive(Default)]
struct Parameters<'a> {
    created: Option<i64>,
    expires: Option<i64>,
    nonce: Option<&'a str>,
    alg: Option<&'a str>,
    keyid: Option<&'a str>,
}

impl<'a> Parameters<'a> {
    fn read(params: &'a sfv::Params) -> Result<Parameters<'a>, Refusal> {
        let mut p = Parameters::default();
        for (name, value) in params {
            match (name.as_str(), value) {
                ("created", Bare::Integer(t)) => p.created = Some(*t),
                ("expires", Bare::Integer(t)) => p.expires = Some(*t),
                ("nonce", Bare::String(s)) => p.nonce = Some(s),
                ("alg", Bare::String(s)) => p.alg = Some(s),
                ("keyid", Bare::String(s)) => p.keyid = Some(s),
                ("tag", Bare::String(_)) => {}
                (name, _) if PARAMETERS.contains(&name) => {
                    return Err(malformed(format!(
                        "the signature parameter {name} has the wrong type"
                    )));
                }
                (name, _) => {
                    return Err(malformed(format!(
                        "the signature parameter {} is not defined by RFC 9421",
                        quoted(name)
                    )));
                }
            }
        }
        Ok(p)
    }
}

/// The field's lines joined with ", " (RFC 9110 section 5.3); `None` if
/// the request has none.
fn combined(head: &RequestHead<'_>, name: &'static str) -> Result<Option<String>, Refusal> {
    let mut lines = head.header_values(name).peekable();
    if lines.peek().is_none() {
        return Ok(None);
    }
    let mut out = String::new();
    for (i, line) in lines.enumerate() {
        let line =
            std::str::from_utf8(line).map_err(|_| malformed(format!("{name} is not ASCII")))?;
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(line);
        if out.len() > sfv::MAX_FIELD_BYTES {
            return Err(malformed(format!("{name} is too long")));
        }
    }
    Ok(Some(out))
}

/// The `sha-256` member of `Content-Digest` (RFC 9530). Other algorithms
/// may be listed too and are not checked; `sha-256` must be there.
pub fn content_digest(head: &RequestHead<'_>) -> Result<[u8; 32], Refusal> {
    let bad = |message: String| Refusal::new(Reason::DigestMalformed, message);
    let text = combined(head, "content-digest")
        .map_err(|r| bad(r.message))?
        .ok_or_else(|| bad("the request has no Content-Digest".into()))?;
    let members = sfv::parse_dictionary(&text).map_err(|e| bad(format!("Content-Digest: {e}")))?;
    let mut sha256 = None;
    for (algorithm, member) in &members {
        let Member::Item(sfv::Item {
            bare: Bare::Bytes(digest),
            params,
        }) = member
        else {
            return Err(bad(format!(
                "Content-Digest member {algorithm} is not a byte sequence"
            )));
        };
        if !params.is_empty() {
            return Err(bad(format!(
                "Content-Digest member {algorithm} has parameters"
            )));
        }
        if algorithm == "sha-256" {
            let digest = <[u8; 32]>::try_from(digest.as_slice())
                .map_err(|_| bad("the sha-256 digest is not 32 bytes".into()))?;
            sha256 = Some(digest);
        }
    }
    sha256.ok_or_else(|| bad("Content-Digest has no sha-256 member".into()))
}

fn malformed(message: impl Into<String>) -> Refusal {
    Refusal::new(Reason::Malformed, message)
}
