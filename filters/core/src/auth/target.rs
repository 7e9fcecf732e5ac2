//! The request target, read one way only, and what the upstream receives.
//!
//! The gateway decides on the canonical path and the decoded query (see
//! [`crate::path`] and [`crate::query`]); whatever a lenient upstream could
//! read differently is refused with 400, and the upstream is sent the
//! canonical form the decision was made on: `:path` is rewritten whenever
//! the client's spelling differs. The same holds for the method: headers
//! and parameters that make frameworks treat a POST as a DELETE are refused
//! when they name another method than `:method`.

use super::Allowed;
use super::denial::{Denial, Reason};
use crate::http::RequestHead;
use crate::path::{PathError, PathParameters, canonical_segments_with, split_path_query};
use crate::query::{MAX_QUERY_BYTES, Query, QueryError};

/// The canonical request target.
pub struct Target {
    pub segments: Vec<String>,
    pub query: Query,
}

impl Target {
    /// Canonicalizes `:path`. Every parameter in `read_params` (those the
    /// gateway decides on) must appear at most once, under any spelling.
    pub fn read<'p>(
        request: &RequestHead<'_>,
        parameters: PathParameters,
        read_params: impl IntoIterator<Item = &'p str>,
    ) -> Result<Target, Denial> {
        let (path, query) = split_path_query(request.path);
        let segments = canonical_segments_with(path, parameters).map_err(|e| {
            let reason = if e == PathError::Parameter {
                Reason::PathParameter
            } else {
                Reason::InvalidPath
            };
            Denial::new(reason, e.to_string())
        })?;
        let query = Query::parse(query).map_err(query_denial)?;
        for name in read_params {
            query.unique(name).map_err(query_denial)?;
        }
        Ok(Target { segments, query })
    }

    /// Sets `:path` to `path` plus the canonical query when that differs
    /// from what the client sent. Refused if the query, rewritten, no
    /// longer fits the limit the gateway reads queries with (a context
    /// lowercased can grow).
    pub fn forward(
        &self,
        request: &RequestHead<'_>,
        path: &str,
        allowed: &mut Allowed,
    ) -> Result<(), Denial> {
        if self.query.serialized_len() > MAX_QUERY_BYTES {
            return Err(query_denial(QueryError::TooLong));
        }
        let query = self.query.serialize();
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        if target != request.path {
            allowed.set_headers.push((":path".to_owned(), target));
        }
        Ok(())
    }
}

pub fn query_denial(e: QueryError) -> Denial {
    let reason = match e {
        QueryError::Repeated(_) => Reason::RepeatedParameter,
        _ => Reason::InvalidQuery,
    };
    Denial::new(reason, e.to_string())
}

/// Refuses a method override (header or query parameter) that names
/// another method than `:method`.
pub fn check_method_override(
    request: &RequestHead<'_>,
    query: &Query,
    headers: &[String],
    params: &[String],
) -> Result<(), Denial> {
    let differs = |value: &[u8]| {
        !value
            .trim_ascii()
            .eq_ignore_ascii_case(request.method.as_bytes())
    };
    for name in headers {
        for value in request.header_values(name) {
            // Envoy joins repeated headers with commas.
            if value.split(|b| *b == b',').any(differs) {
                return Err(Denial::new(
                    Reason::MethodOverride,
                    format!("{name} names another method than the request's"),
                ));
            }
        }
    }
    for name in params {
        if let Some(value) = query.unique(name).map_err(query_denial)?
            && differs(value)
        {
            return Err(Denial::new(
                Reason::MethodOverride,
                format!("the {name} parameter names another method than the request's"),
            ));
        }
    }
    Ok(())
}

/// A CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(request: &RequestHead<'_>) -> bool {
    request.method == "OPTIONS"
        && request.has_header("origin")
        && request.has_header("access-control-request-method")
}

/// Does a body follow the headers?
pub fn has_body(request: &RequestHead<'_>, end_of_stream: bool) -> bool {
    if request.has_header("transfer-encoding") {
        return true;
    }
    match request.header("content-length") {
        Some(length) => length.trim() != "0",
        None => !end_of_stream,
    }
}
