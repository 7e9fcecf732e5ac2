//! Canonical request and context paths.
//!
//! Authorization decisions are only as good as the path they look at. A
//! client that can make the gateway see `projects/public` while the upstream
//! serves `projects/secret` owns every scope check. So every path is brought
//! to one canonical form before anything matches on it, and the upstream is
//! sent that canonical form (see [`canonical_path`]), never the raw one:
//!
//! * percent-escapes are decoded once (`%2F` becomes a separator, exactly as
//!   a lenient upstream would treat it); a `%` left after decoding means
//!   double encoding and is refused;
//! * empty segments (`//`) and `.` segments are dropped, `..` removes the
//!   previous segment and may never climb above the root;
//! * backslashes, control characters and invalid UTF-8 are refused, and so
//!   are `?` and `#` inside a segment (only `%3F`/`%23` can put them there:
//!   an upstream that decodes and parses again would cut the path there)
//!   and whitespace at either end of a segment (HTTP header values are
//!   trimmed, so `projects/%20` would reach the upstream's
//!   `x-context-path` as `projects/`, and frameworks trim segments);
//! * path parameters (`;` inside a segment, raw or encoded) are refused by
//!   default: Tomcat, Jetty and other servlet stacks drop `;...` from each
//!   segment before resolving dot segments, so `/public/..;/secret` is
//!   `/public/..;/secret` to a gateway that treats `;` as data but
//!   `/secret` to the upstream;
//! * characters that Unicode compatibility normalization (NFKC, which some
//!   upstream frameworks apply to decoded paths) or Windows best-fit
//!   conversion turns into a path delimiter are refused: `．．` is `..`
//!   to such an upstream;
//! * context paths are case-insensitive: they are lowercased.

use std::fmt;

use serde::Deserialize;

/// Longest path, in bytes after decoding, that is considered at all.
pub const MAX_PATH_BYTES: usize = 2048;
/// Deepest context hierarchy accepted.
pub const MAX_SEGMENTS: usize = 64;

/// Why a path was refused. Each variant is a distinct client mistake or
/// attack, so it is reported as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    TooLong,
    TooDeep,
    BadEscape,
    DoubleEncoded,
    InvalidUtf8,
    ForbiddenCharacter,
    EscapesRoot,
    Empty,
    /// `;` inside a segment (a path parameter), raw or encoded.
    Parameter,
    /// A character that compatibility normalization maps to a delimiter.
    Confusable,
    /// Whitespace at the start or end of a segment.
    SurroundingWhitespace,
}

impl PathError {
    /// A stable code for metrics and reason strings (`path_parameter`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            PathError::TooLong => "path_too_long",
            PathError::TooDeep => "path_too_deep",
            PathError::BadEscape => "bad_escape",
            PathError::DoubleEncoded => "double_encoded",
            PathError::InvalidUtf8 => "invalid_utf8",
            PathError::ForbiddenCharacter => "forbidden_character",
            PathError::EscapesRoot => "escapes_root",
            PathError::Empty => "empty_path",
            PathError::Parameter => "path_parameter",
            PathError::Confusable => "confusable_character",
            PathError::SurroundingWhitespace => "surrounding_whitespace",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::TooLong => "path is too long",
            PathError::TooDeep => "path has too many segments",
            PathError::BadEscape => "path has a malformed percent-escape",
            PathError::DoubleEncoded => "path is percent-encoded twice",
            PathError::InvalidUtf8 => "path is not valid UTF-8",
            PathError::ForbiddenCharacter => "path contains a forbidden character",
            PathError::EscapesRoot => "path climbs above the root with '..'",
            PathError::Empty => "context path is empty",
            PathError::Parameter => "path parameters (';' in a segment) are not accepted",
            PathError::Confusable => {
                "path contains a character that some servers read as '/', '\\', '.', ';', '%', '?' or '#'"
            }
            PathError::SurroundingWhitespace => {
                "a path segment starts or ends with whitespace"
            }
        })
    }
}

impl std::error::Error for PathError {}

/// What `;` inside a path segment means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Refuse the request (400): upstreams disagree on what `;` means.
    #[default]
    Reject,
    /// `;` is an ordinary character. It is forwarded encoded (`%3B`), which
    /// no upstream reads as a parameter delimiter.
    Allow,
}

/// Decodes `%XX` escapes once. Fails on a truncated or non-hex escape.
pub fn percent_decode(raw: &str) -> Result<Vec<u8>, PathError> {
    percent_decode_bytes(raw.as_bytes(), false)
}

/// Decodes `%XX` escapes once, and `+` as a space when `plus_is_space`
/// (HTML form encoding, used in query strings).
pub fn percent_decode_bytes(bytes: &[u8], plus_is_space: bool) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter().copied();
    while let Some(byte) = iter.next() {
        match byte {
            b'%' => {
                let hi = iter
                    .next()
                    .and_then(hex_value)
                    .ok_or(PathError::BadEscape)?;
                let lo = iter
                    .next()
                    .and_then(hex_value)
                    .ok_or(PathError::BadEscape)?;
                out.push(hi << 4 | lo);
            }
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
    }
    Ok(out)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(match nibble {
        0..=9 => b'0' + nibble,
        _ => b'A' + (nibble & 0xf) - 10,
    })
}

/// Appends `bytes` to `out`, percent-encoding every byte for which `keep`
/// is false (upper-case hex, as RFC 3986 recommends).
pub fn percent_encode_into(out: &mut String, bytes: &[u8], keep: impl Fn(u8) -> bool) {
    for &b in bytes {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
    }
}

/// Characters left unencoded in a forwarded path segment: RFC 3986's
/// `pchar` minus `;` (which is always encoded, see [`PathParameters`]).
fn segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)
}

/// Non-ASCII characters that become a path delimiter (`/ \ . ; % ? #`) under
/// Unicode NFKC normalization, plus the slash and backslash look-alikes that
/// Windows best-fit code-page conversion maps to `/` and `\`. The NFKC part
/// is checked against the Unicode tables by a unit test.
const CONFUSABLES: &[char] = &[
    '\u{037E}',
    '\u{2024}',
    '\u{2025}',
    '\u{2026}',
    '\u{2047}',
    '\u{2048}',
    '\u{2049}',
    '\u{2100}',
    '\u{2101}',
    '\u{2105}',
    '\u{2106}',
    '\u{2488}',
    '\u{2489}',
    '\u{248A}',
    '\u{248B}',
    '\u{248C}',
    '\u{248D}',
    '\u{248E}',
    '\u{248F}',
    '\u{2490}',
    '\u{2491}',
    '\u{2492}',
    '\u{2493}',
    '\u{2494}',
    '\u{2495}',
    '\u{2496}',
    '\u{2497}',
    '\u{2498}',
    '\u{2499}',
    '\u{249A}',
    '\u{249B}',
    '\u{33C2}',
    '\u{33C7}',
    '\u{33D8}',
    '\u{FE14}',
    '\u{FE16}',
    '\u{FE19}',
    '\u{FE30}',
    '\u{FE52}',
    '\u{FE54}',
    '\u{FE56}',
    '\u{FE5F}',
    '\u{FE68}',
    '\u{FE6A}',
    '\u{FF03}',
    '\u{FF05}',
    '\u{FF0E}',
    '\u{FF0F}',
    '\u{FF1B}',
    '\u{FF1F}',
    '\u{FF3C}',
    '\u{1F100}',
    // best-fit slashes and backslashes (not NFKC decompositions)
    '\u{2044}',
    '\u{2215}',
    '\u{2216}',
    '\u{29F5}',
    '\u{29F8}',
    '\u{29F9}',
];

fn is_confusable(c: char) -> bool {
    !c.is_ascii() && CONFUSABLES.contains(&c)
}

/// Splits a raw (still encoded) path into canonical segments: decoded, with
/// empty and dot segments resolved, path parameters refused. Case is
/// preserved; callers lowercase where the namespace is case-insensitive.
pub fn canonical_segments(raw: &str) -> Result<Vec<String>, PathError> {
    canonical_segments_with(raw, PathParameters::Reject)
}

/// [`canonical_segments`] with an explicit policy for path parameters.
pub fn canonical_segments_with(
    raw: &str,
    parameters: PathParameters,
) -> Result<Vec<String>, PathError> {
    if raw.len() > MAX_PATH_BYTES * 3 {
        return Err(PathError::TooLong);
    }
    let decoded = percent_decode(raw)?;
    if decoded.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        check_segment(segment, parameters)?;
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::EscapesRoot);
                }
            }
            other => {
                if segments.len() == MAX_SEGMENTS {
                    return Err(PathError::TooDeep);
                }
                segments.push(other.to_owned());
            }
        }
    }
    // The limit holds for the canonical form too (a path without a leading
    // `/` gains one), so whatever is accepted is accepted again once
    // forwarded.
    if rendered_len(&segments) > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    Ok(segments)
}

/// Decoded length of `/a/b/c` for these segments (at least 1, for `/`).
pub fn rendered_len<S: AsRef<str>>(segments: &[S]) -> usize {
    segments
        .iter()
        .map(|s| s.as_ref().len() + 1)
        .sum::<usize>()
        .max(1)
}

fn check_segment(segment: &str, parameters: PathParameters) -> Result<(), PathError> {
    if segment.trim() != segment {
        return Err(PathError::SurroundingWhitespace);
    }
    for c in segment.chars() {
        match c {
            '\\' | '?' | '#' => return Err(PathError::ForbiddenCharacter),
            '%' => return Err(PathError::DoubleEncoded),
            ';' if parameters == PathParameters::Reject => return Err(PathError::Parameter),
            c if c.is_control() => return Err(PathError::ForbiddenCharacter),
            c if is_confusable(c) => return Err(PathError::Confusable),
            _ => {}
        }
    }
    Ok(())
}

/// The canonical path for `segments`: `/` plus the segments, each
/// percent-encoded where RFC 3986 requires it (and `;` always). Decoding it
/// and canonicalizing again gives back the same segments.
pub fn canonical_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::with_capacity(
        segments
            .iter()
            .map(|s| s.as_ref().len() + 1)
            .sum::<usize>()
            .max(1),
    );
    for segment in segments {
        out.push('/');
        percent_encode_into(&mut out, segment.as_ref().as_bytes(), segment_char);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A canonical, lowercased, non-empty context path such as
/// `projects/engineering/ai-platform`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContextPath {
    segments: Vec<String>,
}

impl ContextPath {
    /// Canonicalizes a raw context path taken from a request.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        Self::from_segments(canonical_segments(raw)?)
    }

    /// Builds a context path from already canonical (decoded, dot-free)
    /// segments, lowercasing them.
    pub fn from_segments(segments: Vec<String>) -> Result<Self, PathError> {
        if segments.is_empty() {
            return Err(PathError::Empty);
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(PathError::TooDeep);
        }
        let segments: Vec<String> = segments.into_iter().map(|s| s.to_lowercase()).collect();
        // Lowercasing can make a character longer (`Ⱥ` is 2 bytes, `ⱥ` 3):
        // the limit holds for the lowercased form too.
        if rendered_len(&segments) > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(ContextPath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn depth(&self) -> usize {
        self.segments.len()
    }
}

impl fmt::Display for ContextPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(segment)?;
        }
        Ok(())
    }
}

/// Splits `:path` into its path and query parts (the fragment never reaches
/// a proxy, but is cut off defensively).
pub fn split_path_query(path: &str) -> (&str, &str) {
    let path = path.split('#').next().unwrap_or(path);
    match path.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, PathError> {
        ContextPath::parse(raw).map(|p| p.to_string())
    }

    #[test]
    fn plain_paths_are_kept() {
        assert_eq!(
            canon("projects/engineering").unwrap(),
            "projects/engineering"
        );
    }

    #[test]
    fn slashes_and_dots_collapse() {
        assert_eq!(
            canon("//projects/./engineering//").unwrap(),
            "projects/engineering"
        );
        assert_eq!(
            canon("projects/secret/../public").unwrap(),
            "projects/public"
        );
    }

    #[test]
    fn dot_dot_cannot_escape_the_root() {
        assert_eq!(canon("projects/../../etc"), Err(PathError::EscapesRoot));
        assert_eq!(canon("%2e%2e/x"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn encoded_slashes_become_separators() {
        assert_eq!(
            canon("projects%2Fengineering%2fsecret").unwrap(),
            "projects/engineering/secret"
        );
        assert_eq!(canon("projects/eng%2F..%2F..%2Fhr").unwrap(), "hr");
        assert_eq!(
            canon("projects%2F..%2F..%2Fhr"),
            Err(PathError::EscapesRoot)
        );
        assert_eq!(canon("projects/x%2F..%2Fhr").unwrap(), "projects/hr");
    }

    #[test]
    fn double_encoding_is_refused() {
        assert_eq!(canon("projects%252Fsecret"), Err(PathError::DoubleEncoded));
    }

    #[test]
    fn case_is_folded() {
        assert_eq!(
            canon("Projects/ENGINEERING").unwrap(),
            "projects/engineering"
        );
    }

    #[test]
    fn hostile_bytes_are_refused() {
        assert_eq!(
            canon("projects%5Csecret"),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(
            canon("projects\\secret"),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(canon("a%00b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(canon("a%ff"), Err(PathError::InvalidUtf8));
        assert_eq!(canon("a%zz"), Err(PathError::BadEscape));
        assert_eq!(canon("a%2"), Err(PathError::BadEscape));
        assert_eq!(canon("/./"), Err(PathError::Empty));
        // Only an encoded ? or # can be inside a segment: a reader that
        // decodes and parses again cuts the path there.
        assert_eq!(
            canon("projects/public/..%3Fx"),
            Err(PathError::ForbiddenCharacter)
        );
        assert_eq!(canon("projects/a%23b"), Err(PathError::ForbiddenCharacter));
    }

    #[test]
    fn segments_cannot_start_or_end_with_whitespace() {
        for raw in [
            "projects/%20",
            "projects/%20a",
            "projects/a%09",
            "projects/%C2%A0",
            "projects/%E3%80%80x",
        ] {
            assert_eq!(canon(raw), Err(PathError::SurroundingWhitespace), "{raw}");
        }
        assert_eq!(canon("projects/my%20notes").unwrap(), "projects/my notes");
    }

    #[test]
    fn path_parameters_are_refused_raw_or_encoded() {
        for raw in [
            "/public/..;/secret",
            "/public/..%3b/secret",
            "/public/..%3B/secret",
            "/public;jsessionid=1/x",
            "/a/b;",
            "/;/x",
        ] {
            assert_eq!(canonical_segments(raw), Err(PathError::Parameter), "{raw}");
        }
        let allowed = canonical_segments_with("/a;b/..;/c", PathParameters::Allow).unwrap();
        assert_eq!(allowed, ["a;b", "..;", "c"]);
        assert_eq!(canonical_path(&allowed), "/a%3Bb/..%3B/c");
    }

    #[test]
    fn delimiter_look_alikes_are_refused() {
        for raw in [
            "/public/\u{FF0E}\u{FF0E}/secret",
            "/public/%EF%BC%8E%EF%BC%8E/secret",
            "/a\u{FF0F}b",
            "/a\u{2215}b",
            "/a/\u{2025}/b",
            "/a\u{FE54}b",
        ] {
            assert_eq!(canonical_segments(raw), Err(PathError::Confusable), "{raw}");
        }
        // Other non-ASCII text is fine.
        assert_eq!(
            canonical_segments("/caf%C3%A9/\u{65e5}\u{672c}").unwrap(),
            ["caf\u{e9}", "\u{65e5}\u{672c}"]
        );
    }

    #[test]
    fn the_confusable_table_covers_every_nfkc_delimiter() {
        use unicode_normalization::UnicodeNormalization;
        for c in (0x80..=0x10FFFFu32).filter_map(char::from_u32) {
            let nfkc: String = std::iter::once(c).nfkc().collect();
            let delimiter = nfkc.chars().any(|d| "./\\;%?#".contains(d));
            assert_eq!(
                delimiter,
                CONFUSABLES.contains(&c)
                    && ![
                        '\u{2044}', '\u{2215}', '\u{2216}', '\u{29F5}', '\u{29F8}', '\u{29F9}'
                    ]
                    .contains(&c),
                "U+{:04X} normalizes to {nfkc:?}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn canonical_paths_round_trip() {
        for raw in [
            "/",
            "/a/b",
            "/a%20b/c%2Cd/e%5Bf%5D",
            "/caf%C3%A9",
            "/a+b/c=d/e:f@g",
            "/x/%7Eme",
        ] {
            let segments = canonical_segments(raw).unwrap();
            let path = canonical_path(&segments);
            assert_eq!(canonical_segments(&path).unwrap(), segments, "{raw}");
            assert_eq!(canonical_path(&canonical_segments(&path).unwrap()), path);
        }
        assert_eq!(
            canonical_path(&canonical_segments("/a//./b/../c%2fd").unwrap()),
            "/a/c/d"
        );
        assert_eq!(
            canonical_path(&canonical_segments("/a%20b/c%2C%5B%5D").unwrap()),
            "/a%20b/c,%5B%5D"
        );
        assert_eq!(canonical_path::<&str>(&[]), "/");
    }

    #[test]
    fn limits_hold_for_the_canonical_and_lowercased_forms() {
        // 2048 decoded bytes without a leading '/': 2049 once rendered.
        let unrooted = "a".repeat(MAX_PATH_BYTES);
        assert_eq!(canonical_segments(&unrooted), Err(PathError::TooLong));
        assert!(canonical_segments(&format!("/{}", "a".repeat(MAX_PATH_BYTES - 1))).is_ok());
        // Lowercasing grows U+023A from 2 to 3 bytes.
        let growing = "\u{23A}".repeat(1000);
        assert!(canonical_segments(&growing).is_ok());
        assert_eq!(ContextPath::parse(&growing), Err(PathError::TooLong));
    }

    #[test]
    fn limits_hold() {
        let deep = vec!["a"; MAX_SEGMENTS + 1].join("/");
        assert_eq!(canon(&deep), Err(PathError::TooDeep));
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        assert_eq!(canon(&long), Err(PathError::TooLong));
    }

    #[test]
    fn query_split() {
        assert_eq!(
            split_path_query("/v1/query?context=a%2Fb&x=1"),
            ("/v1/query", "context=a%2Fb&x=1")
        );
        assert_eq!(split_path_query("/x"), ("/x", ""));
    }
}
