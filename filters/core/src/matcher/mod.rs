//! String matching in the plugin configuration, in the vocabulary of
//! Envoy's `type.matcher.v3.StringMatcher`.
//!
//! Wherever the configuration tests a string (a path, a header, a claim),
//! it is written the way an Envoy route or RBAC policy writes it: exactly
//! one of `exact`, `prefix`, `suffix`, `contains`,
//! `safe_regex: {regex: ...}`, plus `ignore_case`. Two spellings ctxgate
//! had before stay valid: a bare `regex: ...` (the same as `safe_regex`)
//! and `one_of: [...]` (the value is one of a list; Envoy would need a
//! regex for it).
//!
//! As in Envoy, a regex must match the whole value (it is anchored), uses
//! RE2's syntax (the `regex` crate's, which has no backtracking, so no
//! pattern can take time exponential in the input), and `ignore_case`
//! folds ASCII letters only. Unlike Envoy, `ignore_case: true` with a regex
//! is an error rather than silently ignored: start the regex with `(?i-u)`
//! (the `regex` crate is built without Unicode case folding, so `(?i)` alone
//! is refused when the regex is compiled).
//!
//! A matcher is compiled while the configuration is parsed, so a bad
//! regex fails the plugin with the field's path (`rules[2].when.path.regex:
//! regex parse error ...`).

mod de;
mod named;
#[cfg(feature = "schema")]
pub(crate) mod schema;
#[cfg(test)]
mod tests;

pub(crate) use de::{Fields, Key, ONE_PATTERN};
pub use named::{NamedMatcher, NamedTest};

use regex::Regex;

/// The pattern members of a string matcher, exactly one of which is given
/// (`regex` is the older spelling of `safe_regex`). The one list every
/// parser, error message and schema of a matcher is built from.
pub(crate) const PATTERNS: [&str; 7] = [
    "exact",
    "prefix",
    "suffix",
    "contains",
    "safe_regex",
    "regex",
    "one_of",
];

/// `a` then `b`, as one array (`N` must be their total length), for
/// member lists built from [`PATTERNS`] at compile time. Only used in
/// `const` items, so a wrong `N` fails the build, never a request.
#[allow(clippy::indexing_slicing)]
pub(crate) const fn concat<const A: usize, const B: usize, const N: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; N] {
    assert!(A + B == N, "concat: N must be A + B");
    let mut out = [""; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// Longest regex (in bytes) accepted, and the compiled-size cap: regexes
/// are operator-written, but a runaway pattern must fail at load.
pub const MAX_REGEX_BYTES: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A string test: Envoy's `StringMatcher`.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    pub pattern: Pattern,
    /// Compare ASCII letters case-insensitively (not for regexes).
    pub ignore_case: bool,
}

/// What a [`StringMatcher`] compares the value with.
#[derive(Debug, Clone)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Matches the whole value.
    SafeRegex(AnchoredRegex),
    /// The value is one of these (ctxgate's; not in Envoy).
    OneOf(Vec<String>),
}

/// A compiled regex that must match the whole value.
#[derive(Debug, Clone)]
pub struct AnchoredRegex {
    /// As configured (without the anchors).
    pub source: String,
    regex: Regex,
}

impl AnchoredRegex {
    /// Compiles `source`, anchored at both ends as Envoy's `safe_regex` is.
    pub fn new(source: &str) -> Result<AnchoredRegex, String> {
        if source.len() > MAX_REGEX_BYTES {
            return Err(format!("is longer than {MAX_REGEX_BYTES} bytes"));
        }
        regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(|regex| AnchoredRegex {
                source: source.to_owned(),
                regex,
            })
            .map_err(|e| e.to_string())
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl StringMatcher {
    pub fn new(pattern: Pattern) -> StringMatcher {
        StringMatcher {
            pattern,
            ignore_case: false,
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        let eq = |a: &[u8], b: &str| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b.as_bytes())
            } else {
                a == b.as_bytes()
            }
        };
        let bytes = value.as_bytes();
        match &self.pattern {
            Pattern::Exact(p) => eq(bytes, p),
            Pattern::Prefix(p) => bytes.get(..p.len()).is_some_and(|head| eq(head, p)),
            Pattern::Suffix(p) => bytes
                .len()
                .checked_sub(p.len())
                .and_then(|start| bytes.get(start..))
                .is_some_and(|tail| eq(tail, p)),
            Pattern::Contains(p) if p.is_empty() => true,
            Pattern::Contains(p) => bytes.windows(p.len()).any(|w| eq(w, p)),
            Pattern::SafeRegex(r) => r.is_match(value),
            Pattern::OneOf(values) => values.iter().any(|v| eq(bytes, v)),
        }
    }

    /// `one_of: []`, which matches nothing.
    pub fn is_empty_list(&self) -> bool {
        matches!(&self.pattern, Pattern::OneOf(values) if values.is_empty())
    }
}
