//! Name patterns of the MCP configuration (`search_*`, `notifications/*`):
//! `*` stands for any run of characters, none included, `?` for exactly
//! one; every other character stands for itself, case included. A pattern
//! matches the whole name. Characters, not bytes: `?` matches `é`.
//!
//! Matching is the usual greedy scan that backtracks to the last `*`:
//! time proportional to name times pattern length at worst, never
//! exponential.

/// A compiled name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.chars().collect(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (mut p, mut n) = (0, 0);
        // After a `*`: the pattern position past it, and the name position
        // it has swallowed up to.
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match (self.pattern.get(p), name.get(n)) {
                (Some('*'), _) => {
                    star = Some((p + 1, n));
                    p += 1;
                }
                (Some('?'), _) => {
                    p += 1;
                    n += 1;
                }
                (Some(want), Some(have)) if want == have => {
                    p += 1;
                    n += 1;
                }
                _ => match star {
                    // Let the last `*` swallow one more character.
                    Some((after, swallowed)) => {
                        star = Some((after, swallowed + 1));
                        p = after;
                        n = swallowed + 1;
                    }
                    None => return false,
                },
            }
        }
        self.pattern
            .get(p..)
            .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).matches(name)
    }

    #[test]
    fn literal_names_match_exactly() {
        assert!(m("search_context", "search_context"));
        assert!(!m("search_context", "search_contexts"));
        assert!(!m("search_context", "Search_context"));
        assert!(!m("search", ""));
        assert!(m("", ""));
        assert!(!m("", "x"));
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(m("search_*", "search_context"));
        assert!(m("search_*", "search_"));
        assert!(!m("search_*", "search"));
        assert!(m("*", ""));
        assert!(m("*", "anything/at/all"));
        assert!(m("notifications/*", "notifications/initialized"));
        assert!(m("notifications/*", "notifications/resources/updated"));
        assert!(!m("notifications/*", "notification/x"));
        assert!(m("*_context", "read_context"));
        assert!(m("*a*b*c", "xxaxxbxxc"));
        assert!(!m("*a*b*c", "xxaxxcxxb"));
        assert!(m("a*b*a", "abba"));
        assert!(m("a?c", "abc"));
        assert!(m("a?c", "a\u{e9}c"));
        assert!(!m("a?c", "ac"));
        assert!(m("**a**", "a"));
        assert!(m("?*", "x"));
        assert!(!m("?*", ""));
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let name = "a".repeat(2000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!m(&pattern, &name));
    }
}
