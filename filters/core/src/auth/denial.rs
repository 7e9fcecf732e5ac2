//! Why a request was refused, and the RFC 6750 reply that says so.
//!
//! Every refusal has one stable reason code. The same string is the
//! `reason` in the JSON body, the suffix of the `ctxgate_auth.denied.*`
//! metric and the `ctxgate_auth_denied{...}` response details in Envoy's
//! access log, so a dashboard, a log search and a client bug report all
//! name the same thing.

use serde_json::json;

use crate::http::RequestHead;
use crate::jwt::TokenError;
use crate::reply::LocalReply;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingToken,
    MultipleTokens,
    MalformedToken,
    TokenTooLarge,
    UnsupportedAlgorithm,
    ForbiddenHeader,
    UnknownIssuer,
    UnknownKid,
    AlgorithmMismatch,
    BadSignature,
    TokenExpired,
    TokenNotYetValid,
    MissingClaim,
    LifetimeTooLong,
    AudienceNotAllowed,
    KeysUnavailable,
    InsufficientScope,
    DelegationNotAllowed,
    DelegationTooDeep,
    DelegationScopeNotDelegable,
    UnknownOperation,
    InvalidPath,
    InvalidContext,
    PathParameter,
    InvalidQuery,
    RepeatedParameter,
    MethodOverride,
    PreflightBody,
    TenantNotAllowed,
    TenantMismatch,
    InvalidScopes,
    VerificationThrottled,
    MissingClientCertificate,
    UnknownServiceCertificate,
    MissingServiceToken,
    ServiceTokenMismatch,
    TokenRoleMismatch,
    OnBehalfOfNotAllowed,
}

impl Reason {
    pub const ALL: [Reason; 38] = [
        Reason::MissingToken,
        Reason::MultipleTokens,
        Reason::MalformedToken,
        Reason::TokenTooLarge,
        Reason::UnsupportedAlgorithm,
        Reason::ForbiddenHeader,
        Reason::UnknownIssuer,
        Reason::UnknownKid,
        Reason::AlgorithmMismatch,
        Reason::BadSignature,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::MissingClaim,
        Reason::LifetimeTooLong,
        Reason::AudienceNotAllowed,
        Reason::KeysUnavailable,
        Reason::InsufficientScope,
        Reason::DelegationNotAllowed,
        Reason::DelegationTooDeep,
        Reason::DelegationScopeNotDelegable,
        Reason::UnknownOperation,
        Reason::InvalidPath,
        Reason::InvalidContext,
        Reason::PathParameter,
        Reason::InvalidQuery,
        Reason::RepeatedParameter,
        Reason::MethodOverride,
        Reason::PreflightBody,
        Reason::TenantNotAllowed,
        Reason::TenantMismatch,
        Reason::InvalidScopes,
        Reason::VerificationThrottled,
        Reason::MissingClientCertificate,
        Reason::UnknownServiceCertificate,
        Reason::MissingServiceToken,
        Reason::ServiceTokenMismatch,
        Reason::TokenRoleMismatch,
        Reason::OnBehalfOfNotAllowed,
    ];

    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MultipleTokens => "multiple_tokens",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::ForbiddenHeader => "forbidden_header",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKid => "unknown_kid",
            Reason::AlgorithmMismatch => "algorithm_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::MissingClaim => "missing_claim",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::AudienceNotAllowed => "audience_not_allowed",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::DelegationNotAllowed => "delegation_not_allowed",
            Reason::DelegationTooDeep => "delegation_too_deep",
            Reason::DelegationScopeNotDelegable => "delegation_scope_not_delegable",
            Reason::UnknownOperation => "unknown_operation",
            Reason::InvalidPath => "invalid_path",
            Reason::InvalidContext => "invalid_context",
            Reason::PathParameter => "path_parameter",
            Reason::InvalidQuery => "invalid_query",
            Reason::RepeatedParameter => "repeated_parameter",
            Reason::MethodOverride => "method_override",
            Reason::PreflightBody => "preflight_with_body",
            Reason::TenantNotAllowed => "tenant_not_allowed",
            Reason::TenantMismatch => "tenant_mismatch",
            Reason::InvalidScopes => "invalid_scopes",
            Reason::VerificationThrottled => "verification_throttled",
            Reason::MissingClientCertificate => "missing_client_certificate",
            Reason::UnknownServiceCertificate => "unknown_service_certificate",
            Reason::MissingServiceToken => "missing_service_token",
            Reason::ServiceTokenMismatch => "service_token_mismatch",
            Reason::TokenRoleMismatch => "token_role_mismatch",
            Reason::OnBehalfOfNotAllowed => "on_behalf_of_not_allowed",
        }
    }

    /// Is this a malformed or ambiguous request (400), refused before any
    /// token is looked at?
    fn is_bad_request(self) -> bool {
        matches!(
            self,
            Reason::MultipleTokens
                | Reason::InvalidPath
                | Reason::InvalidContext
                | Reason::PathParameter
                | Reason::InvalidQuery
                | Reason::RepeatedParameter
                | Reason::MethodOverride
                | Reason::PreflightBody
        )
    }

    pub fn status(self) -> u16 {
        match self {
            r if r.is_bad_request() => 400,
            Reason::AudienceNotAllowed
            | Reason::InsufficientScope
            | Reason::DelegationNotAllowed
            | Reason::DelegationTooDeep
            | Reason::DelegationScopeNotDelegable
            | Reason::UnknownOperation
            | Reason::TenantMismatch
            | Reason::MissingClientCertificate
            | Reason::UnknownServiceCertificate
            | Reason::ServiceTokenMismatch
            | Reason::OnBehalfOfNotAllowed => 403,
            Reason::VerificationThrottled => 429,
            Reason::KeysUnavailable => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 error code, if the challenge carries one (a request
    /// without any token gets a bare challenge).
    fn oauth_error(self) -> Option<&'static str> {
        match self {
            Reason::MissingToken | Reason::KeysUnavailable | Reason::VerificationThrottled => None,
            r if r.is_bad_request() => Some("invalid_request"),
            Reason::InsufficientScope
            | Reason::DelegationNotAllowed
            | Reason::DelegationTooDeep
            | Reason::DelegationScopeNotDelegable
            | Reason::UnknownOperation
            | Reason::TenantMismatch
            | Reason::OnBehalfOfNotAllowed => Some("insufficient_scope"),
            // Not about a bearer token: the connection's certificate.
            Reason::MissingClientCertificate | Reason::UnknownServiceCertificate => None,
            Reason::MissingServiceToken => None,
            _ => Some("invalid_token"),
        }
    }

    /// Is a token refused for this reason refused again if presented again
    /// a few seconds later? Refusals that depend on the clock or on the
    /// keys we have right now are not cached.
    pub fn is_cacheable(self) -> bool {
        !matches!(
            self,
            Reason::KeysUnavailable | Reason::TokenNotYetValid | Reason::UnknownKid
        )
    }
}

impl From<&TokenError> for Reason {
    fn from(error: &TokenError) -> Reason {
        match error {
            TokenError::Malformed(_) => Reason::MalformedToken,
            TokenError::TooLarge => Reason::TokenTooLarge,
            TokenError::UnsupportedAlgorithm(_) => Reason::UnsupportedAlgorithm,
            TokenError::ForbiddenHeader(_) => Reason::ForbiddenHeader,
            TokenError::UnknownKid => Reason::UnknownKid,
            TokenError::AlgorithmMismatch => Reason::AlgorithmMismatch,
            TokenError::BadSignature => Reason::BadSignature,
            TokenError::Expired => Reason::TokenExpired,
            TokenError::NotYetValid => Reason::TokenNotYetValid,
            TokenError::IssuerMismatch => Reason::UnknownIssuer,
            TokenError::AudienceNotAllowed => Reason::AudienceNotAllowed,
            TokenError::MissingClaim(_) => Reason::MissingClaim,
            TokenError::LifetimeTooLong => Reason::LifetimeTooLong,
            TokenError::TenantNotAllowed => Reason::TenantNotAllowed,
            TokenError::InvalidScopes => Reason::InvalidScopes,
        }
    }
}

/// A refusal: the reason, a human description, and for scope failures the
/// scope that would have been needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub description: String,
    pub required_scope: Option<String>,
    /// Seconds, for a 429.
    pub retry_after: u64,
}

impl Denial {
    pub fn new(reason: Reason, description: impl Into<String>) -> Denial {
        Denial {
            reason,
            description: description.into(),
            required_scope: None,
            retry_after: 0,
        }
    }

    pub fn from_token_error(error: &TokenError) -> Denial {
        Denial::new(Reason::from(error), error.to_string())
    }

    pub fn scope(reason: Reason, description: impl Into<String>, scope: String) -> Denial {
        Denial {
            reason,
            description: description.into(),
            required_scope: Some(scope),
            retry_after: 0,
        }
    }

    /// The reply: RFC 6750 challenge, JSON body, gRPC status for gRPC.
    pub fn reply(&self, realm: &str, request: &RequestHead<'_>) -> LocalReply {
        let mut headers = Vec::new();
        let status = self.reason.status();
        if status == 401 || status == 403 || status == 400 {
            headers.push(("www-authenticate".to_owned(), self.challenge(realm)));
        }
        match status {
            503 => headers.push(("retry-after".to_owned(), "1".to_owned())),
            429 => headers.push((
                "retry-after".to_owned(),
                self.retry_after.max(1).to_string(),
            )),
            _ => {}
        }
        let fallback = match status {
            503 => "temporarily_unavailable",
            429 => "too_many_requests",
            // A certificate problem, not a bearer token's.
            403 => "access_denied",
            _ => "unauthorized",
        };
        let body = json!({
            "error": self.reason.oauth_error().unwrap_or(fallback),
            "reason": self.reason.code(),
            "message": self.description,
        });
        let details = format!("ctxgate_auth_denied{{{}}}", self.reason.code());
        LocalReply::json_error(request, status, &body, headers, details)
    }

    fn challenge(&self, realm: &str) -> String {
        let mut challenge = format!("Bearer realm=\"{}\"", quoted(realm));
        if let Some(error) = self.reason.oauth_error() {
            challenge.push_str(&format!(
                ", error=\"{error}\", error_description=\"{}\"",
                quoted(&self.description)
            ));
        }
        if let Some(scope) = &self.required_scope {
            challenge.push_str(&format!(", scope=\"{}\"", quoted(scope)));
        }
        challenge
    }
}

/// RFC 6750 allows only %x20-21 / %x23-5B / %x5D-7E inside these quoted
/// strings; anything else is replaced.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| {
            if (' '..='~').contains(&c) && c != '"' && c != '\\' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a str, headers: &'a crate::headers::Headers) -> RequestHead<'a> {
        RequestHead {
            method,
            path: "/",
            headers,
        }
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let reply = Denial::new(Reason::MissingToken, "no token")
            .reply("ctxgate", &head("GET", &crate::headers::NO_HEADERS));
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers[0],
            ("www-authenticate".into(), "Bearer realm=\"ctxgate\"".into())
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["reason"], "missing_token");
        assert_eq!(reply.details, "ctxgate_auth_denied{missing_token}");
    }

    #[test]
    fn scope_failures_name_the_scope() {
        let d = Denial::scope(
            Reason::InsufficientScope,
            "needs write",
            "write:projects/a".into(),
        );
        let reply = d.reply("r", &head("GET", &crate::headers::NO_HEADERS));
        assert_eq!(reply.status, 403);
        assert_eq!(Reason::PathParameter.status(), 400);
        assert_eq!(Reason::VerificationThrottled.status(), 429);
        assert_eq!(Reason::TenantNotAllowed.status(), 401);
        assert_eq!(Reason::TenantMismatch.status(), 403);
        assert_eq!(
            reply.headers[0].1,
            "Bearer realm=\"r\", error=\"insufficient_scope\", error_description=\"needs write\", scope=\"write:projects/a\""
        );
    }

    #[test]
    fn head_has_no_body_and_grpc_gets_a_status() {
        let d = Denial::new(Reason::TokenExpired, "expired \"x\"\n");
        assert!(
            d.reply("r", &head("HEAD", &crate::headers::NO_HEADERS))
                .body
                .is_empty()
        );
        assert!(
            d.reply("r", &head("GET", &crate::headers::NO_HEADERS))
                .headers[0]
                .1
                .contains("error_description=\"expired ?x??\"")
        );
        let grpc: crate::headers::Headers = [("content-type", "application/grpc+proto")]
            .into_iter()
            .collect();
        assert_eq!(d.reply("r", &head("POST", &grpc)).grpc_status, Some(16));
        let forbidden = Denial::new(Reason::InsufficientScope, "x");
        assert_eq!(
            forbidden.reply("r", &head("POST", &grpc)).grpc_status,
            Some(7)
        );
    }

    #[test]
    fn certificate_refusals_are_not_about_a_bearer_token() {
        let reply = Denial::new(Reason::UnknownServiceCertificate, "unknown")
            .reply("ctxgate", &head("GET", &crate::headers::NO_HEADERS));
        assert_eq!(reply.status, 403);
        assert_eq!(
            reply.headers[0],
            ("www-authenticate".into(), "Bearer realm=\"ctxgate\"".into())
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "access_denied");
        assert_eq!(
            reply.details,
            "ctxgate_auth_denied{unknown_service_certificate}"
        );
        let reply = Denial::new(Reason::MissingServiceToken, "none")
            .reply("r", &head("GET", &crate::headers::NO_HEADERS));
        assert_eq!(reply.status, 401);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    #[test]
    fn codes_are_unique() {
        let codes: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Reason::ALL.len());
    }
}
