//! `path`: canonical request and context paths.

use ctxgate_core::path::{
    ContextPath, PathParameters, canonical_path, canonical_segments_with, split_path_query,
};

/// Input: a raw `:path` (lossy UTF-8), canonicalized under both policies
/// for `;`, and as a context path.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let raw = text.as_ref();
    let strict = canonical_segments_with(raw, PathParameters::Reject);
    let lenient = canonical_segments_with(raw, PathParameters::Allow);
    let shown = abbreviate(raw);
    if let Ok(segments) = &strict {
        check_canonical(&shown, segments, PathParameters::Reject);
        // The strict policy only ever refuses more.
        assert_eq!(
            lenient.as_ref(),
            Ok(segments),
            "{shown}: accepted with ';' refused but not with ';' allowed"
        );
    }
    if let Ok(segments) = &lenient {
        check_canonical(&shown, segments, PathParameters::Allow);
    }
    if let Ok(context) = ContextPath::parse(raw) {
        check_context(&shown, &context);
    }
    // The path part never holds the query or fragment delimiters.
    let (path, query) = split_path_query(raw);
    assert!(!path.contains(['?', '#']), "{shown}: path part {path:?}");
    assert!(!query.contains('#'), "{shown}: query part {query:?}");
}

fn check_canonical(raw: &str, segments: &[String], policy: PathParameters) {
    for segment in segments {
        assert!(
            !matches!(segment.as_str(), "" | "." | ".."),
            "{raw} ({policy:?}): segment {segment:?} survived canonicalization"
        );
        assert!(
            !segment
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '%') || c.is_control()),
            "{raw} ({policy:?}): segment {segment:?} holds a delimiter or control character"
        );
        if policy == PathParameters::Reject {
            assert!(
                !segment.contains(';'),
                "{raw}: segment {segment:?} holds ';' although path parameters are refused"
            );
        }
    }
    let rendered = canonical_path(segments);
    assert!(rendered.starts_with('/'), "{raw}: rendered {rendered:?}");
    match canonical_segments_with(&rendered, policy) {
        Ok(again) => {
            assert_eq!(
                again, segments,
                "{raw} ({policy:?}): canonical path {rendered:?} canonicalizes to other segments"
            );
            assert_eq!(
                canonical_path(&again),
                rendered,
                "{raw} ({policy:?}): canonical path is not a fixed point"
            );
        }
        Err(e) => panic!(
            "{raw} ({policy:?}): the canonical path {} ({} bytes) of accepted segments is refused: {e:?}",
            abbreviate(&rendered),
            rendered.len()
        ),
    }
}

fn check_context(raw: &str, context: &ContextPath) {
    assert!(context.depth() > 0, "{raw}: empty context accepted");
    for segment in context.segments() {
        assert_eq!(
            &segment.to_lowercase(),
            segment,
            "{raw}: context segment {segment:?} is not lowercase"
        );
        assert!(
            !matches!(segment.as_str(), "" | "." | ".."),
            "{raw}: context segment {segment:?}"
        );
    }
    let text = context.to_string();
    match ContextPath::parse(&text) {
        Ok(again) => assert_eq!(
            &again, context,
            "{raw}: context {text:?} parses to another context"
        ),
        Err(e) => panic!(
            "{raw}: context {} ({} bytes) does not parse again: {e:?}",
            abbreviate(&text),
            text.len()
        ),
    }
}

/// Long inputs make unreadable panic messages: keep both ends.
pub(crate) fn abbreviate(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 160 {
        return format!("{text:?}");
    }
    let head: String = chars.iter().take(80).collect();
    let tail: String = chars.iter().skip(chars.len() - 40).collect();
    format!("{head:?}...{tail:?}")
}
