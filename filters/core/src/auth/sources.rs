//! Where a request's token comes from, and taking it out of the request.
//!
//! A token may be sent in a header (`Authorization: Bearer` by default), a
//! query parameter or a cookie, as configured. Two different tokens in one
//! request are refused (which identity would the upstream act for?); the
//! same token in several places is one token. A token that was read is
//! removed from the request before it goes upstream, wherever it was,
//! unless `forward` (or its older spelling `forward_token`) is set.

use super::Allowed;
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

/// The request's token and the sources it was found in.
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
pub fn query_parameters(sources: &[TokenSource]) -> impl Iterator<Item = &str> {
    sources.iter().filter_map(|s| match s {
        TokenSource::Query(name) => Some(name.as_str()),
        _ => None,
    })
}

/// Finds the request's token, and every place it was found. `query` is the
/// parsed query, in which each token parameter was checked to appear at
/// most once.
pub fn extract(
    sources: &[TokenSource],
    request: &RequestHead<'_>,
    query: &Query,
) -> Result<FoundToken, Denial> {
    let mut found: Option<FoundToken> = None;
    let mut offer = |token: &str, source: &TokenSource| -> Result<(), Denial> {
        if token.is_empty() {
            return Err(Denial::new(Reason::MalformedToken, "the token is empty"));
        }
        match &mut found {
            Some(existing) if existing.token != token => Err(Denial::new(
                Reason::MultipleTokens,
                "the request carries more than one token",
            )),
            Some(existing) => {
                existing.add_source(source);
                Ok(())
            }
            None => {
                found = Some(FoundToken {
                    token: token.to_owned(),
                    sources: vec![source.clone()],
                });
                Ok(())
            }
        }
    };
    for source in sources {
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
    }
    found.ok_or_else(|| Denial::new(Reason::MissingToken, "a bearer token is required"))
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
