//! Canonical request and context paths.
//!
//! Authorization decisions are only as good as the path they look at. A
//! client that can make the gateway see `projects/public` while the upstream
//! serves `projects/secret` owns every scope check. So every path is brought
//! to one canonical form before anything matches on it:
//!
//! * percent-escapes are decoded once (`%2F` becomes a separator, exactly as
//!   a lenient upstream would treat it); a `%` left after decoding means
//!   double encoding and is refused;
//! * empty segments (`//`) and `.` segments are dropped, `..` removes the
//!   previous segment and may never climb above the root;
//! * backslashes, control characters and invalid UTF-8 are refused;
//! * context paths are case-insensitive: they are lowercased.

use std::fmt;

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
        })
    }
}

impl std::error::Error for PathError {}

/// Decodes `%XX` escapes once. Fails on a truncated or non-hex escape.
pub fn percent_decode(raw: &str) -> Result<Vec<u8>, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut iter = bytes.iter().copied();
    while let Some(byte) = iter.next() {
        if byte == b'%' {
            let hi = iter
                .next()
                .and_then(hex_value)
                .ok_or(PathError::BadEscape)?;
            let lo = iter
                .next()
                .and_then(hex_value)
                .ok_or(PathError::BadEscape)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(byte);
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

/// Splits a raw (still encoded) path into canonical segments: decoded, with
/// empty and dot segments resolved. Case is preserved; callers lowercase
/// where the namespace is case-insensitive.
pub fn canonical_segments(raw: &str) -> Result<Vec<String>, PathError> {
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
        if segment.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(PathError::ForbiddenCharacter);
        }
        if segment.contains('%') {
            return Err(PathError::DoubleEncoded);
        }
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
    Ok(segments)
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
        let segments = segments.into_iter().map(|s| s.to_lowercase()).collect();
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

/// All values of query parameter `name`, still percent-encoded.
pub fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
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
        let (_, q) = split_path_query("/v1/query?context=a&context=b");
        assert_eq!(
            query_values(q, "context").collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(split_path_query("/x"), ("/x", ""));
    }
}
