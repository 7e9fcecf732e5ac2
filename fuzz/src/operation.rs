//! `operation`: the demo operation map.

use std::cell::OnceCell;

use ctxgate_core::operation::{OperationMap, OperationMatch, OperationRule, demo_rules};
use ctxgate_core::path::{ContextPath, canonical_path, canonical_segments, split_path_query};

thread_local! {
    static MAP: OnceCell<(Vec<OperationRule>, OperationMap)> = const { OnceCell::new() };
}

/// Input: `METHOD\n:path` (lossy UTF-8; no newline means an empty method).
pub fn operation(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (method, raw_path) = text.split_once('\n').unwrap_or(("", &text));
    MAP.with(|cell| {
        let (rules, map) = cell.get_or_init(|| {
            let rules = demo_rules();
            let map = OperationMap::compile(&rules).expect("the demo rules compile");
            (rules, map)
        });
        check(rules, map, method, raw_path);
    });
}

fn check(rules: &[OperationRule], map: &OperationMap, method: &str, raw: &str) {
    let outcome = map.lookup_raw(method, raw);
    let (path, _) = split_path_query(raw);
    let raw_path = crate::path::abbreviate(raw);
    let segments = canonical_segments(path);
    if let Err(e) = &segments {
        assert_eq!(
            outcome,
            OperationMatch::InvalidPath(e.clone()),
            "{method} {raw_path}"
        );
        return;
    }
    let OperationMatch::Matched(op) = outcome else {
        return;
    };
    let rule = rules
        .iter()
        .find(|r| r.name == op.name)
        .unwrap_or_else(|| panic!("{method} {raw_path}: matched unknown rule {}", op.name));
    assert!(
        rule.methods.iter().any(|m| m == method),
        "{method} {raw_path}: {} does not accept {method}",
        op.name
    );
    assert_eq!(rule.action, op.action, "{method} {raw_path}");

    // The forwarded path is canonical.
    match canonical_segments(&op.path) {
        Ok(again) => assert_eq!(
            canonical_path(&again),
            op.path,
            "{method} {raw_path}: forwarded path {:?} is not canonical",
            op.path
        ),
        Err(e) => panic!(
            "{method} {raw_path}: forwarded path {} ({} bytes) does not canonicalize: {e:?}",
            crate::path::abbreviate(&op.path),
            op.path.len()
        ),
    }
    // The context is canonical and lowercase.
    for segment in op.context.segments() {
        assert!(
            !matches!(segment.as_str(), "" | "." | ".."),
            "{method} {raw_path}: context segment {segment:?}"
        );
        assert_eq!(
            &segment.to_lowercase(),
            segment,
            "{method} {raw_path}: context segment {segment:?} is not lowercase"
        );
        assert!(
            !segment
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '%' | ';') || c.is_control()),
            "{method} {raw_path}: context segment {segment:?}"
        );
    }
    let context = op.context.to_string();
    match ContextPath::parse(&context) {
        Ok(again) => assert_eq!(
            again, op.context,
            "{method} {raw_path}: context {context:?} parses to another context"
        ),
        Err(e) => panic!(
            "{method} {raw_path}: context {} ({} bytes) does not parse back: {e:?}",
            crate::path::abbreviate(&context),
            context.len()
        ),
    }
    match op.context_param {
        // A context from the path: the forwarded path ends with it.
        None => {
            let suffix = canonical_path(op.context.segments());
            assert!(
                op.path.ends_with(&suffix),
                "{method} {raw_path}: forwarded path {:?} does not end with the context {suffix:?}",
                op.path
            );
        }
        Some(param) => assert_eq!(
            rule.context_param.as_deref(),
            Some(param),
            "{method} {raw_path}"
        ),
    }
    // The template's literals are forwarded as configured, never as sent.
    let template: Vec<&str> = rule
        .path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "{context}")
        .collect();
    let forwarded = canonical_segments(&op.path).unwrap_or_default();
    for (want, have) in template.iter().zip(&forwarded) {
        if !want.starts_with('{') && *want != "*" {
            assert_eq!(want, have, "{method} {raw_path}: literal forwarded as sent");
        }
    }
}
