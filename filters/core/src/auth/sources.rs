//! Where a request's token comes from, and taking it out of the request.
//!
//! A token may be sent in a header (`Authorization: Bearer` by default), a
//! query parameter or a cookie, as configured. Each source has a role
//! ([`TokenRole`]): a user's token, or a calling service's token
//! (`x-service-token` by default once a provider has the service role).
//! A request may carry one token of each role (the layered pattern); two
//! different tokens for the same role are refused (which identity would the
//! upstream act for?); the same token in several places is one token. A token that was read is
//! removed from the request before it goes upstream, wherever it was,
//! unless `forward` (or its older spelling `forward_token`) is set.

use super::Allowed;
pub use super::config::TokenRole;
use super::denial::{Denial, Reason};
use crate::http::RequestHead;
use crate::query::Query;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header {
        name: String,
        prefix: Option<String>,
    },
    Query(String),
    Cookie(String),
}

/// A token source and the role of the tokens it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSource {
    pub role: TokenRole,
    pub source: TokenSource,
}

/// The tokens of a request, at most one per role.
#[derive(Default)]
pub struct FoundTokens {
    pub user: Option<FoundToken>,
    pub service: Option<FoundToken>,
}

impl FoundTokens {
    fn slot(&mut self, role: TokenRole) -> &mut Option<FoundToken> {
        match role {
            TokenRole::User => &mut self.user,
            TokenRole::Service => &mut self.service,
        }
    }
}

/// A request's token of one role and the sources it was found in.
pub struct FoundToken {
    pub token: String,
    sources: Vec<TokenSource>,
}

impl FoundToken {
    fn add_source(&mut self, source: &TokenSource) {
        if !self.sources.contains(source) {
            self.sources.push(source.clone());
        }
    }
}

/// `name=value` pairs of a `cookie` header.
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        pair.trim()
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
    })
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value.get(prefix.len()..))
        .flatten()
}

/// The query parameters the sources read.
pub fn query_parameters(sources: &[RoleSource]) -> impl Iterator<Item = &str> {
    sources.iter().filter_map(|s| match &s.source {
        TokenSource::Query(name) => Some(name.as_str()),
        _ => None,
    })
}

/// Finds the request's tokens, one per role at most, and every place each
/// was found. `query` is the parsed query, in which each token parameter
/// was checked to appear at most once. Finding none is not an error here:
/// which tokens a request needs depends on who else it authenticates as.
pub fn extract(
    sources: &[RoleSource],
    request: &RequestHead<'_>,
    query: &Query,
) -> Result<FoundTokens, Denial> {
    let mut all = FoundTokens::default();
    for RoleSource { role, source } in sources {
        let found = all.slot(*role);
        extract_one(source, *role, request, query, found)?;
    }
    Ok(all)
}

fn extract_one(
    source: &TokenSource,
    role: TokenRole,
    request: &RequestHead<'_>,
    query: &Query,
    found: &mut Option<FoundToken>,
) -> Result<(), Denial> {
    let mut offer = |token: &str, source: &TokenSource| -> Result<(), Denial> {
        if token.is_empty() {
            return Err(Denial::new(Reason::MalformedToken, "the token is empty"));
        }
        match found {
            Some(existing) if existing.token != token => Err(Denial::new(
                Reason::MultipleTokens,
                match role {
                    TokenRole::User => "the request carries more than one user token",
                    TokenRole::Service => "the request carries more than one service token",
                },
            )),
            Some(existing) => {
                existing.add_source(source);
                Ok(())
            }
            None => {
                *found = Some(FoundToken {
                    token: token.to_owned(),
                    sources: vec![source.clone()],
                });
                Ok(())
            }
        }
    };
    match source {
        TokenSource::Header { name, prefix } => {
            for value in request.header_values(name) {
                let Ok(value) = std::str::from_utf8(value) else {
                    return Err(Denial::new(
                        Reason::MalformedToken,
                        "the token header is not valid UTF-8",
                    ));
                };
                // Envoy joins repeated headers with commas; a JWT
                // never contains one, so each part is a candidate.
                for part in value.split(',') {
                    let token = match prefix {
                        None => Some(part.trim()),
                        Some(prefix) => {
                            strip_prefix_ignore_case(part.trim_start(), prefix).map(str::trim)
                        }
                    };
                    if let Some(token) = token {
                        offer(token, source)?;
                    }
                }
            }
        }
        TokenSource::Query(name) => {
            for value in query.values(name) {
                let token = std::str::from_utf8(value).map_err(|_| {
                    Denial::new(Reason::MalformedToken, "the token parameter is malformed")
                })?;
                offer(token, source)?;
            }
        }
        TokenSource::Cookie(name) => {
            for header in request.header_values("cookie") {
                let Ok(header) = std::str::from_utf8(header) else {
                    continue;
                };
                for (k, v) in cookie_pairs(header) {
                    if k == name {
                        offer(v.trim_matches('"'), source)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Takes the token out of the request: the upstream gets identity headers,
/// not the credential. Header sources are removed, query sources dropped
/// from `query` (which the caller forwards), cookies rewritten.
pub fn strip(
    found: &FoundToken,
    request: &RequestHead<'_>,
    query: &mut Query,
    allowed: &mut Allowed,
) {
    for source in &found.sources {
        match source {
            TokenSource::Header { name, .. } => allowed.remove_headers.push(name.clone()),
            TokenSource::Query(name) => query.remove(name),
            TokenSource::Cookie(name) => {
                let kept: Vec<String> = request
                    .header_values("cookie")
                    .filter_map(|v| std::str::from_utf8(v).ok())
                    .flat_map(cookie_pairs)
                    .filter(|(k, _)| k != name)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if kept.is_empty() {
                    allowed.remove_headers.push("cookie".to_owned());
                } else {
                    allowed
                        .set_headers
                        .push(("cookie".to_owned(), kept.join("; ")));
                }
            }
        }
    }
}
