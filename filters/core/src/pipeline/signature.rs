//! The signature stage: HTTP Message Signatures (RFC 9421, `hmac-sha256`)
//! and `Content-Digest` (RFC 9530) on the routes that require them (see
//! [`crate::signature`] for what is verified).
//!
//! The signature is verified against the request as the client sent it:
//! the driver hands the stage the request before any stage runs
//! ([`SignatureStage::keep_received`]), and the stage keeps a copy of its
//! headers when its route must be signed, because auth (which runs first,
//! so that a refused request's access log shows no client-sent identity
//! headers) rewrites `:path` to its canonical form and removes token
//! headers and parameters.
//!
//! At the headers the signature is verified and its nonce claimed in the
//! host's nonce store (shared by every worker), so neither an unsigned
//! request nor a replay reaches the upstream; the driver then holds the
//! body (up to `body_limit`) and the stage checks it against the signed
//! digest before the body stages after it (mcp, ratelimit) read it.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_signature.verified` | counter | requests whose signature and body verified |
//! | `ctxgate_signature.refused.<reason>` | counter | requests refused, by reason (`signature_missing`, ...; see the README) |

use serde_json::json;

use super::Step;
use super::request::Request;
use crate::config::ConfigError;
use crate::headers::Headers;
use crate::host::{Host, NonceRefusal, NonceSpace};
use crate::http::RequestHead;
use crate::metrics::{Counter, Metrics};
use crate::reply::LocalReply;
use crate::shared::Secret;
use crate::signature::config::SignatureConfig;
use crate::signature::refusal::{Reason, Refusal};
use crate::signature::{Verified, Verifier};

/// What the stage keeps for one request.
#[derive(Default)]
pub struct SignatureStream {
    /// The request as received, if it must be signed.
    received: Option<Received>,
    /// Verified at the headers: the body is checked against it.
    verified: Option<Verified>,
}

/// The request headers as the client sent them.
struct Received {
    method: String,
    path: String,
    headers: Headers,
}

impl Received {
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
        }
    }
}

pub struct SignatureStage {
    verifier: Verifier,
    space: NonceSpace,
    /// Keys the nonce hashes, so that clients cannot aim nonces at one
    /// bucket.
    secret: Secret,
    verified: Counter,
    refused: Vec<(Reason, Counter)>,
}

impl SignatureStage {
    pub fn new(
        config: SignatureConfig,
        namespace: &str,
        secret: Secret,
        host: &dyn Host,
        metrics: &mut Metrics,
    ) -> Result<SignatureStage, ConfigError> {
        let space = NonceSpace {
            name: format!("{namespace}.signature"),
            buckets: config.nonces.buckets,
            per_bucket: config.nonces.per_bucket,
        };
        let verifier = Verifier::new(config)?;
        host.nonces().prepare(&space);
        Ok(SignatureStage {
            verifier,
            space,
            secret,
            verified: metrics.counter("ctxgate_signature.verified"),
            refused: Reason::ALL
                .into_iter()
                .map(|r| {
                    (
                        r,
                        metrics.counter(&format!("ctxgate_signature.refused.{}", r.code())),
                    )
                })
                .collect(),
        })
    }

    /// The longest body read, if `request` must be signed.
    pub fn body_limit(&self, request: &Request) -> Option<u64> {
        self.verifier
            .applies(&request.head())
            .then_some(self.verifier.body_limit)
    }

    /// The refusal of a body longer than [`SignatureStage::body_limit`].
    pub fn too_large(&self, request: &Request, metrics: &mut Metrics) -> LocalReply {
        let refusal = Refusal::new(
            Reason::BodyTooLarge,
            format!("the body is longer than {} bytes", self.verifier.body_limit),
        );
        self.refuse(request, refusal, metrics)
    }

    /// Called with the request before any stage ran: keeps its headers if
    /// it must be signed.
    pub fn keep_received(&self, request: &Request, stream: &mut SignatureStream) {
        let head = request.head();
        if self.verifier.applies(&head) {
            stream.received = Some(Received {
                method: head.method.to_owned(),
                path: head.path.to_owned(),
                headers: head.headers.clone(),
            });
        }
    }

    pub fn on_request(
        &self,
        host: &mut dyn Host,
        request: &mut Request,
        stream: &mut SignatureStream,
        metrics: &mut Metrics,
    ) -> Step {
        let Some(received) = stream.received.take() else {
            return Step::Next;
        };
        let now_ms = host.now_ms();
        let verified = match self.verifier.verify(&received.head(), now_ms) {
            Ok(verified) => verified,
            Err(refusal) => return Step::Reply(self.refuse(request, refusal, metrics)),
        };
        let nonce = self
            .secret
            .hash(&[verified.keyid.as_bytes(), &[0], verified.nonce.as_bytes()].concat());
        let claimed = host
            .nonces()
            .claim(&self.space, nonce, now_ms, verified.nonce_expires_ms);
        if let Err(e) = claimed {
            let refusal = match e {
                NonceRefusal::Replayed => Refusal::new(
                    Reason::Replayed,
                    "the nonce was used by a signature still in its window",
                ),
                NonceRefusal::Full => Refusal::new(
                    Reason::NonceStoreFull,
                    "the nonce store has no room: try again later",
                ),
                NonceRefusal::Unavailable => Refusal::new(
                    Reason::NonceStoreUnavailable,
                    "the nonce store cannot be read",
                ),
            };
            return Step::Reply(self.refuse(request, refusal, metrics));
        }
        stream.verified = Some(verified);
        Step::Next
    }

    /// The whole body (the driver held it): checked against the signed
    /// digest.
    pub fn on_body(
        &self,
        request: &mut Request,
        stream: &mut SignatureStream,
        metrics: &mut Metrics,
    ) -> Step {
        let Some(verified) = stream.verified.take() else {
            return Step::Next;
        };
        let body = request.body.as_deref().unwrap_or_default();
        match verified.check_body(body) {
            Ok(()) => {
                metrics.inc(self.verified);
                log::debug!(
                    "signature: verified keyid={} ({} body bytes)",
                    verified.keyid,
                    body.len()
                );
                Step::Next
            }
            Err(refusal) => Step::Reply(self.refuse(request, refusal, metrics)),
        }
    }

    fn refuse(&self, request: &Request, refusal: Refusal, metrics: &mut Metrics) -> LocalReply {
        if let Some((_, counter)) = self.refused.iter().find(|(r, _)| *r == refusal.reason) {
            metrics.inc(*counter);
        }
        log::debug!("signature: refused: {refusal}");
        let reason = refusal.reason;
        let body = json!({
            "error": reason.code(),
            "reason": reason.code(),
            "message": refusal.message,
        });
        let mut headers = Vec::new();
        if reason.status() == 503 {
            headers.push(("retry-after".to_owned(), "1".to_owned()));
        }
        LocalReply::json_error(
            &request.head(),
            reason.status(),
            &body,
            headers,
            reason.details(),
        )
    }
}
