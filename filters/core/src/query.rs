//! Query strings, read the way the most lenient upstream would read them.
//!
//! Upstream frameworks disagree on what a query string says: some split
//! pairs on `;` as well as `&`, most decode `+` as a space and percent-escapes
//! in keys, some match keys case-insensitively, and on a repeated key some
//! take the first value, others the last. A gateway that compares raw keys
//! can authorize `context=projects/public` while the upstream acts on a
//! second `%63ontext=projects/secret`.
//!
//! So a query is parsed into decoded pairs (split on `&` and `;`, `+` as a
//! space, escapes decoded once), keys are compared after decoding and ASCII
//! case folding, a parameter the gateway reads must appear at most once under
//! any spelling, and the query the upstream receives is this parsed form
//! serialized again ([`Query::serialize`]): the upstream sees exactly the
//! pairs the gateway decided on, in one unambiguous spelling.

use std::fmt;

use crate::path::{percent_decode_bytes, percent_encode_into};

/// Longest query, in bytes, that is considered at all: as received, and
/// once serialized again (a `+` becomes `%20`).
pub const MAX_QUERY_BYTES: usize = 8192;
/// Most pairs in one query.
pub const MAX_PAIRS: usize = 256;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    TooLong,
    TooManyPairs,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A key still holding `%` after decoding (encoded twice).
    DoubleEncodedKey,
    /// A parameter the gateway reads appears more than once.
    Repeated(String),
}

impl QueryError {
    /// A stable code for metrics and reason strings.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::TooLong => "query_too_long",
            QueryError::TooManyPairs => "query_too_many_pairs",
            QueryError::BadEscape => "query_bad_escape",
            QueryError::DoubleEncodedKey => "query_double_encoded",
            QueryError::Repeated(_) => "repeated_parameter",
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::TooLong => write!(f, "the query is longer than {MAX_QUERY_BYTES} bytes"),
            QueryError::TooManyPairs => write!(f, "the query has more than {MAX_PAIRS} parameters"),
            QueryError::BadEscape => f.write_str("the query has a malformed percent-escape"),
            QueryError::DoubleEncodedKey => {
                f.write_str("a query parameter name is percent-encoded twice")
            }
            QueryError::Repeated(name) => {
                write!(f, "the parameter '{name}' is given more than once")
            }
        }
    }
}

impl std::error::Error for QueryError {}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    key: Vec<u8>,
    /// `None` for a bare key (`?flag`).
    value: Option<Vec<u8>>,
}

/// A decoded query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<Pair>,
}

impl Query {
    /// Parses the part of `:path` after `?` (without the `?`).
    pub fn parse(raw: &str) -> Result<Query, QueryError> {
        if raw.len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong);
        }
        let mut pairs = Vec::new();
        for part in raw.split(['&', ';']) {
            if part.is_empty() {
                continue;
            }
            if pairs.len() == MAX_PAIRS {
                return Err(QueryError::TooManyPairs);
            }
            let (key, value) = match part.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (part, None),
            };
            let key = decode(key)?;
            if key.contains(&b'%') {
                return Err(QueryError::DoubleEncodedKey);
            }
            let value = value.map(decode).transpose()?;
            pairs.push(Pair { key, value });
        }
        let query = Query { pairs };
        if query.serialized_len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong);
        }
        Ok(query)
    }

    /// The length of [`Query::serialize`], without building it.
    pub fn serialized_len(&self) -> usize {
        let encoded = |bytes: &[u8], keep: fn(u8) -> bool| {
            bytes
                .iter()
                .map(|&b| if keep(b) { 1 } else { 3 })
                .sum::<usize>()
        };
        let pairs: usize = self
            .pairs
            .iter()
            .map(|p| {
                encoded(&p.key, key_char)
                    + p.value.as_ref().map_or(0, |v| 1 + encoded(v, value_char))
            })
            .sum();
        pairs + self.pairs.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The one value of parameter `name` (matched on the decoded key, ASCII
    /// case-insensitively), `None` if absent. A bare key has the empty value.
    /// Refused if the parameter appears more than once under any spelling.
    pub fn unique(&self, name: &str) -> Result<Option<&[u8]>, QueryError> {
        let mut found = None;
        for pair in self.pairs.iter().filter(|p| same_key(&p.key, name)) {
            if found.is_some() {
                return Err(QueryError::Repeated(name.to_owned()));
            }
            found = Some(pair.value.as_deref().unwrap_or_default());
        }
        Ok(found)
    }

    /// Every value of parameter `name`, in order (for parameters that may
    /// legitimately repeat, such as token sources checked for agreement).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs
            .iter()
            .filter(move |p| same_key(&p.key, name))
            .map(|p| p.value.as_deref().unwrap_or_default())
    }

    /// Removes parameter `name` under any spelling.
    pub fn remove(&mut self, name: &str) {
        self.pairs.retain(|p| !same_key(&p.key, name));
    }

    /// Sets the one value of parameter `name`, spelled exactly `name`
    /// (an upstream matching keys case-sensitively finds it too).
    pub fn set(&mut self, name: &str, value: &[u8]) {
        // Pairs before the first match do not match, so removing the
        // matches leaves the first one's position unchanged.
        let position = self.pairs.iter().position(|p| same_key(&p.key, name));
        self.remove(name);
        let pair = Pair {
            key: name.as_bytes().to_vec(),
            value: Some(value.to_vec()),
        };
        match position {
            Some(index) if index <= self.pairs.len() => self.pairs.insert(index, pair),
            _ => self.pairs.push(pair),
        }
    }

    /// The query in canonical form: pairs joined by `&`, keys and values
    /// percent-encoded wherever a reader could split or decode them
    /// differently (`& ; = + % #`, spaces, non-ASCII and control bytes).
    /// Empty when there are no pairs.
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        for (i, pair) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            percent_encode_into(&mut out, &pair.key, key_char);
            if let Some(value) = &pair.value {
                out.push('=');
                percent_encode_into(&mut out, value, value_char);
            }
        }
        out
    }
}

fn decode(raw: &str) -> Result<Vec<u8>, QueryError> {
    percent_decode_bytes(raw.as_bytes(), true).map_err(|_| QueryError::BadEscape)
}

fn same_key(key: &[u8], name: &str) -> bool {
    key.eq_ignore_ascii_case(name.as_bytes())
}

/// Left unencoded in a value: unreserved, and the sub-delimiters and
/// separators no reader splits a value on.
fn value_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$'()*,:@/?=".contains(&b)
}

fn key_char(b: u8) -> bool {
    b != b'=' && value_char(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(raw).unwrap()
    }

    #[test]
    fn keys_are_compared_decoded_and_case_folded() {
        for raw in [
            "context=a&context=b",
            "context=a&%63ontext=b",
            "context=a&Context=b",
            "context=a;context=b",
            "context=a&CONTEXT",
            "%63%6F%6E%74%65%78%74=a&context=b",
        ] {
            assert_eq!(
                q(raw).unique("context"),
                Err(QueryError::Repeated("context".into())),
                "{raw}"
            );
        }
        assert_eq!(
            q("x=1&Context=a%2Fb").unique("context"),
            Ok(Some(&b"a/b"[..]))
        );
        assert_eq!(q("x=1").unique("context"), Ok(None));
        assert_eq!(q("context").unique("context"), Ok(Some(&b""[..])));
    }

    #[test]
    fn plus_is_a_space_and_escapes_decode_once() {
        assert_eq!(q("a=x+y%2By%2520").unique("a"), Ok(Some(&b"x y+y%20"[..])));
        assert_eq!(q("a+b=1").unique("a b"), Ok(Some(&b"1"[..])));
    }

    #[test]
    fn malformed_queries_are_refused() {
        assert_eq!(Query::parse("a=%zz"), Err(QueryError::BadEscape));
        assert_eq!(Query::parse("a%2=1"), Err(QueryError::BadEscape));
        assert_eq!(
            Query::parse("%2563ontext=1"),
            Err(QueryError::DoubleEncodedKey)
        );
        assert_eq!(
            Query::parse(&"a&".repeat(MAX_PAIRS + 1)),
            Err(QueryError::TooManyPairs)
        );
        assert_eq!(
            Query::parse(&"a".repeat(MAX_QUERY_BYTES + 1)),
            Err(QueryError::TooLong)
        );
    }

    #[test]
    fn serialization_is_canonical_and_stable() {
        let query = q("b=1;a=x+y&&c&d=%3D%26%3B%2B%23&e=caf%C3%A9&f=a/b?c");
        let text = query.serialize();
        assert_eq!(text, "b=1&a=x%20y&c&d==%26%3B%2B%23&e=caf%C3%A9&f=a/b?c");
        assert_eq!(Query::parse(&text).unwrap(), query);
        assert_eq!(Query::parse(&text).unwrap().serialize(), text);
        assert_eq!(q("").serialize(), "");
        assert_eq!(q("k%3Dx=1").serialize(), "k%3Dx=1");
    }

    #[test]
    fn the_limit_holds_for_the_serialized_form() {
        // 3000 '+' are 3000 bytes received but 9000 forwarded as %20.
        let spaces = format!("q={}", "+".repeat(3000));
        assert_eq!(Query::parse(&spaces), Err(QueryError::TooLong));
        let query = q("a=x+y&b&c=%C3%A9&d=/?");
        assert_eq!(query.serialized_len(), query.serialize().len());
    }

    #[test]
    fn set_and_remove_use_the_canonical_spelling() {
        let mut query = q("Context=a&x=1");
        query.set("context", b"projects/a");
        assert_eq!(query.serialize(), "context=projects/a&x=1");
        query.remove("CONTEXT");
        assert_eq!(query.serialize(), "x=1");
        query.set("context", b"b");
        assert_eq!(query.serialize(), "x=1&context=b");
    }
}
