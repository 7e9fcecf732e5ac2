//! `query`: query strings read one way only.

use ctxgate_core::path::percent_decode_bytes;
use ctxgate_core::query::{MAX_QUERY_BYTES, Query, QueryError};

use crate::path::abbreviate;

/// Names every input is asked about, besides the keys it holds.
const NAMES: &[&str] = &["context", "_method", "access_token", "a", ""];

/// Input: the part of `:path` after `?` (lossy UTF-8).
pub fn query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(query) = Query::parse(&text) else {
        return;
    };
    check_round_trip(&text, &query);
    let raw = abbreviate(&text);

    // `unique` and `values` against an independent reading of the pairs.
    let pairs = decoded_pairs(&text);
    let mut names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    for (key, _) in pairs.iter().take(8) {
        if let Ok(key) = std::str::from_utf8(key) {
            names.push(key.to_owned());
            names.push(key.to_ascii_uppercase());
        }
    }
    for name in &names {
        let matching: Vec<&Option<Vec<u8>>> = pairs
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
            .collect();
        let unique = query.unique(name);
        match matching.as_slice() {
            [] => assert_eq!(unique, Ok(None), "{raw}: unique({name:?})"),
            [value] => assert_eq!(
                unique,
                Ok(Some(value.as_deref().unwrap_or_default())),
                "{raw}: unique({name:?})"
            ),
            _ => assert_eq!(
                unique,
                Err(QueryError::Repeated(name.clone())),
                "{raw}: unique({name:?}) with {} pairs of that name",
                matching.len()
            ),
        }
        assert_eq!(
            query.values(name).count(),
            matching.len(),
            "{raw}: values({name:?})"
        );
    }

    // `set` leaves exactly one pair of that name, spelled as given. The
    // gateway only ever replaces a parameter it read (a context), and
    // refuses the request when the rewritten query no longer fits the
    // limit it reads queries with (`Target::forward`): the query it
    // forwards either parses again to itself or is never forwarded.
    let had_context = query.values("context").count() > 0;
    let mut changed = query.clone();
    changed.set("Context", b"projects/a b&c=%");
    assert_eq!(
        changed.unique("context"),
        Ok(Some(&b"projects/a b&c=%"[..])),
        "{raw}: after set"
    );
    if had_context {
        if changed.serialized_len() > MAX_QUERY_BYTES {
            assert_eq!(
                Query::parse(&changed.serialize()),
                Err(QueryError::TooLong),
                "{raw}: a rewritten query over the limit"
            );
        } else {
            check_round_trip(&text, &changed);
        }
    }
    changed.remove("CONTEXT");
    assert_eq!(changed.unique("context"), Ok(None), "{raw}: after remove");
}

fn check_round_trip(raw: &str, query: &Query) {
    let text = query.serialize();
    assert_eq!(
        query.serialized_len(),
        text.len(),
        "{}: serialized_len",
        abbreviate(raw)
    );
    match Query::parse(&text) {
        Ok(again) => {
            assert_eq!(
                &again, query,
                "{raw}: serialized as {text:?}, which parses to another query"
            );
            assert_eq!(
                again.serialize(),
                text,
                "{raw}: serialization is not a fixed point"
            );
        }
        Err(e) => panic!(
            "{}: serialized as {} ({} bytes), which does not parse: {e:?}",
            abbreviate(raw),
            abbreviate(&text),
            text.len()
        ),
    }
}

/// The (key, value) pairs of a query that `Query::parse` accepted, decoded
/// as its documentation says: split on `&` and `;`, `+` is a space, escapes
/// decoded once, empty parts skipped.
fn decoded_pairs(raw: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    raw.split(['&', ';'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = match part.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (part, None),
            };
            let decode = |s: &str| percent_decode_bytes(s.as_bytes(), true).unwrap_or_default();
            (decode(key), value.map(decode))
        })
        .collect()
}
