//! Why a request on a signed route was refused: one stable code per
//! reason, used as the metric label (`ctxgate_signature.refused.<code>`),
//! the JSON body's `reason` and the suffix of Envoy's response details
//! (`ctxgate_signature_refused{signature_stale}`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `Signature-Input` and no `Signature`.
    Missing,
    /// The signature fields do not parse, are ambiguous (several
    /// signatures, a label in one field only, a parameter twice) or use
    /// what the verifier does not support.
    Malformed,
    /// The signature does not cover what the gateway requires, or lacks
    /// `created`, `keyid` or `nonce`.
    Incomplete,
    /// `alg` names another algorithm than `hmac-sha256`.
    Algorithm,
    /// `keyid` names no configured key.
    UnknownKey,
    /// `created` is older than the window or further in the future than
    /// the skew allows, or `expires` has passed.
    Stale,
    /// The signature is not the HMAC of the signature base under the key.
    Invalid,
    /// The nonce was used by a signature still in its window.
    Replayed,
    /// `Content-Digest` does not parse or has no `sha-256` member.
    DigestMalformed,
    /// The body's SHA-256 is not the one `Content-Digest` states.
    DigestMismatch,
    /// The body is longer than `body_limit`.
    BodyTooLarge,
    /// The nonce store has no room for the nonce (fail closed).
    NonceStoreFull,
    /// The nonce store could not be read or written (fail closed).
    NonceStoreUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Incomplete,
        Reason::Algorithm,
        Reason::UnknownKey,
        Reason::Stale,
        Reason::Invalid,
        Reason::Replayed,
        Reason::DigestMalformed,
        Reason::DigestMismatch,
        Reason::BodyTooLarge,
        Reason::NonceStoreFull,
        Reason::NonceStoreUnavailable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Missing => "signature_missing",
            Reason::Malformed => "signature_malformed",
            Reason::Incomplete => "signature_incomplete",
            Reason::Algorithm => "signature_algorithm",
            Reason::UnknownKey => "signature_unknown_key",
            Reason::Stale => "signature_stale",
            Reason::Invalid => "signature_invalid",
            Reason::Replayed => "signature_replayed",
            Reason::DigestMalformed => "content_digest_malformed",
            Reason::DigestMismatch => "content_digest_mismatch",
            Reason::BodyTooLarge => "body_too_large",
            Reason::NonceStoreFull => "nonce_store_full",
            Reason::NonceStoreUnavailable => "nonce_store_unavailable",
        }
    }

    /// 400 for fields that cannot be read, 401 for a signature that is
    /// absent or does not verify, 413 for a body too long to check, 503
    /// when the nonce store cannot vouch for the nonce.
    pub fn status(self) -> u16 {
        match self {
            Reason::Malformed | Reason::DigestMalformed => 400,
            Reason::Missing
            | Reason::Incomplete
            | Reason::Algorithm
            | Reason::UnknownKey
            | Reason::Stale
            | Reason::Invalid
            | Reason::Replayed
            | Reason::DigestMismatch => 401,
            Reason::BodyTooLarge => 413,
            Reason::NonceStoreFull | Reason::NonceStoreUnavailable => 503,
        }
    }

    /// Envoy's response code details.
    pub fn details(self) -> String {
        format!("ctxgate_signature_refused{{{}}}", self.code())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A refusal: why, and one sentence for the client and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_fit_envoy_details() {
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
        for reason in Reason::ALL {
            assert!(!reason.details().contains(char::is_whitespace));
        }
    }
}
