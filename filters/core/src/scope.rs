//! Hierarchical context scopes such as `write:projects/engineering/*`.
//!
//! A scope `ACTION:PATH` grants ACTION and every lower action
//! (admin > write > read) on PATH and on its whole subtree. A `*` segment
//! matches exactly one segment, so `read:projects/*` grants everything below
//! `projects` but not `projects` itself. Matching is per segment, never per
//! character: `projects/eng` grants nothing under `projects/engineering`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::path::{ContextPath, canonical_segments};

/// What an operation does to a context, ordered by privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read a context.
    Read,
    /// Write a context (implies read).
    Write,
    /// Administer a context, e.g. delete it (implies write and read).
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, ScopeError> {
        match s {
            "read" => Ok(Action::Read),
            "write" => Ok(Action::Write),
            "admin" => Ok(Action::Admin),
            _ => Err(ScopeError::UnknownAction),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    MissingColon,
    UnknownAction,
    EmptyPath,
    InvalidPath,
    PartialWildcard,
    /// Whitespace, `%`, `;`, `\`, a control character or a dot segment:
    /// a scope that different readers could read differently.
    Ambiguous,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScopeError::MissingColon => "scope must look like ACTION:PATH",
            ScopeError::UnknownAction => "scope action must be read, write or admin",
            ScopeError::EmptyPath => "scope path is empty",
            ScopeError::InvalidPath => "scope path is not a valid context path",
            ScopeError::PartialWildcard => "'*' must be a whole path segment",
            ScopeError::Ambiguous => {
                "scope holds whitespace, '%', ';', '\\', a control character or a dot segment"
            }
        })
    }
}

impl std::error::Error for ScopeError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    AnyOne,
}

/// One parsed scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    action: Action,
    pattern: Vec<Segment>,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let ambiguous_char =
            |c: char| c.is_whitespace() || c.is_control() || matches!(c, '%' | ';' | '\\');
        if text.chars().any(ambiguous_char)
            || text
                .split([':', '/'])
                .any(|segment| segment == "." || segment == "..")
        {
            return Err(ScopeError::Ambiguous);
        }
        let (action, path) = text.split_once(':').ok_or(ScopeError::MissingColon)?;
        let action = action.parse()?;
        let segments = canonical_segments(path).map_err(|_| ScopeError::InvalidPath)?;
        if segments.is_empty() {
            return Err(ScopeError::EmptyPath);
        }
        let pattern = segments
            .into_iter()
            .map(|segment| match segment.as_str() {
                "*" => Ok(Segment::AnyOne),
                s if s.contains('*') => Err(ScopeError::PartialWildcard),
                s => Ok(Segment::Literal(s.to_lowercase())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Scope { action, pattern })
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// Does this scope allow `action` on `path`?
    pub fn grants(&self, action: Action, path: &ContextPath) -> bool {
        self.action >= action && self.covers(path)
    }

    /// What both scopes grant: the lesser action on the paths both cover
    /// (patterns are prefixes, so that is one pattern or nothing).
    fn intersect(&self, other: &Scope) -> Option<Scope> {
        let len = self.pattern.len().max(other.pattern.len());
        let mut pattern = Vec::with_capacity(len);
        for i in 0..len {
            let segment = match (self.pattern.get(i), other.pattern.get(i)) {
                (Some(Segment::AnyOne) | None, Some(s))
                | (Some(s), Some(Segment::AnyOne) | None) => s.clone(),
                (Some(a), Some(b)) if a == b => a.clone(),
                _ => return None,
            };
            pattern.push(segment);
        }
        Some(Scope {
            action: self.action.min(other.action),
            pattern,
        })
    }

    /// Is `path` this scope's path or below it?
    fn covers(&self, path: &ContextPath) -> bool {
        let segments = path.segments();
        segments.len() >= self.pattern.len()
            && self
                .pattern
                .iter()
                .zip(segments)
                .all(|(want, have)| match want {
                    Segment::AnyOne => true,
                    Segment::Literal(literal) => literal == have,
                })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.action)?;
        for (i, segment) in self.pattern.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match segment {
                Segment::AnyOne => f.write_str("*")?,
                Segment::Literal(s) => f.write_str(s)?,
            }
        }
        Ok(())
    }
}

/// The scopes a token carries. Unparseable entries grant nothing and are
/// counted so an operator can see a misbehaving issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
    rejected: usize,
}

impl ScopeSet {
    /// Parses the scopes of a token. A scope that is merely unknown (an
    /// action this gateway does not grant, no colon) is skipped and counted;
    /// an ambiguous one ([`ScopeError::Ambiguous`]) makes the whole set, and
    /// so the token, invalid: its issuer meant something we cannot know.
    pub fn parse<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::default();
        for text in texts {
            match Scope::parse(text) {
                Ok(scope) => set.scopes.push(scope),
                Err(ScopeError::Ambiguous) => return Err(ScopeError::Ambiguous),
                Err(_) => set.rejected += 1,
            }
        }
        Ok(set)
    }

    pub fn grants(&self, action: Action, path: &ContextPath) -> bool {
        self.scopes.iter().any(|s| s.grants(action, path))
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    pub fn rejected(&self) -> usize {
        self.rejected
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    /// What both sets grant: `a.grants(x) && b.grants(x)` exactly when
    /// `a.intersect(b).grants(x)` (for a service acting for a user).
    pub fn intersect(&self, other: &ScopeSet) -> ScopeSet {
        let mut scopes: Vec<Scope> = Vec::new();
        for a in &self.scopes {
            for b in &other.scopes {
                if let Some(both) = a.intersect(b)
                    && !scopes.contains(&both)
                {
                    scopes.push(both);
                }
            }
        }
        ScopeSet {
            scopes,
            rejected: 0,
        }
    }
}

/// The scope string a request needs, as reported in `WWW-Authenticate`.
pub fn required_scope(action: Action, path: &ContextPath) -> String {
    format!("{action}:{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> ContextPath {
        ContextPath::parse(p).unwrap()
    }

    fn grants(scope: &str, action: Action, p: &str) -> bool {
        Scope::parse(scope).unwrap().grants(action, &path(p))
    }

    #[test]
    fn a_scope_grants_its_path_and_subtree() {
        assert!(grants(
            "read:projects/engineering",
            Action::Read,
            "projects/engineering"
        ));
        assert!(grants(
            "read:projects/engineering",
            Action::Read,
            "projects/engineering/ai/x"
        ));
        assert!(!grants(
            "read:projects/engineering",
            Action::Read,
            "projects"
        ));
        assert!(!grants(
            "read:projects/engineering",
            Action::Read,
            "projects/marketing"
        ));
    }

    #[test]
    fn higher_actions_imply_lower_ones() {
        assert!(grants("admin:projects/a", Action::Read, "projects/a"));
        assert!(grants("admin:projects/a", Action::Write, "projects/a/b"));
        assert!(grants("write:projects/a", Action::Read, "projects/a"));
        assert!(!grants("write:projects/a", Action::Admin, "projects/a"));
        assert!(!grants("read:projects/a", Action::Write, "projects/a"));
    }

    #[test]
    fn trailing_star_grants_the_subtree_but_not_the_node() {
        assert!(grants(
            "read:projects/*",
            Action::Read,
            "projects/engineering"
        ));
        assert!(grants(
            "read:projects/*",
            Action::Read,
            "projects/engineering/deep/er"
        ));
        assert!(!grants("read:projects/*", Action::Read, "projects"));
    }

    #[test]
    fn inner_star_matches_exactly_one_segment() {
        let scope = "write:projects/*/docs";
        assert!(grants(scope, Action::Write, "projects/eng/docs"));
        assert!(grants(scope, Action::Write, "projects/eng/docs/readme"));
        assert!(!grants(scope, Action::Write, "projects/eng/wiki"));
        assert!(!grants(scope, Action::Write, "projects/docs"));
    }

    #[test]
    fn matching_is_per_segment_not_per_prefix() {
        assert!(!grants(
            "read:projects/eng",
            Action::Read,
            "projects/engineering"
        ));
        assert!(!grants("read:proj", Action::Read, "projects"));
    }

    #[test]
    fn scopes_are_canonicalized_like_paths() {
        assert!(grants(
            "read:Projects//Eng/",
            Action::Read,
            "projects/eng/x"
        ));
        assert_eq!(
            Scope::parse("read:projects/x/../y"),
            Err(ScopeError::Ambiguous)
        );
    }

    #[test]
    fn malformed_scopes_are_refused() {
        assert_eq!(Scope::parse("projects/a"), Err(ScopeError::MissingColon));
        assert_eq!(
            Scope::parse("delete:projects/a"),
            Err(ScopeError::UnknownAction)
        );
        assert_eq!(Scope::parse("read:"), Err(ScopeError::EmptyPath));
        assert_eq!(Scope::parse("read:/"), Err(ScopeError::EmptyPath));
        assert_eq!(Scope::parse("read:proj*"), Err(ScopeError::PartialWildcard));
        assert_eq!(Scope::parse("read:../x"), Err(ScopeError::Ambiguous));
    }

    #[test]
    fn ambiguous_scopes_are_refused() {
        for text in [
            "read:projects/a b",
            "read:projects%2Fsecret",
            "read:projects/a;x",
            "read:projects\\a",
            "read:projects/\u{7}",
            "read:projects/./a",
            "read:projects/a\t",
        ] {
            assert_eq!(Scope::parse(text), Err(ScopeError::Ambiguous), "{text:?}");
            assert_eq!(
                ScopeSet::parse(["read:projects/ok", text]),
                Err(ScopeError::Ambiguous)
            );
        }
    }

    #[test]
    fn scope_sets_ignore_garbage() {
        let set = ScopeSet::parse(["read:projects/a", "nonsense", "write:projects/b"]).unwrap();
        assert_eq!(set.rejected(), 1);
        assert!(set.grants(Action::Write, &path("projects/b/c")));
        assert!(!set.grants(Action::Write, &path("projects/a")));
    }

    #[test]
    fn intersections_grant_what_both_grant() {
        let user = ScopeSet::parse(["write:projects/*", "read:docs", "admin:ops/a"]).unwrap();
        let service =
            ScopeSet::parse(["read:projects/eng", "admin:*/a/b", "write:docs/x"]).unwrap();
        let both = user.intersect(&service);
        let mut texts: Vec<String> = both.iter().map(ToString::to_string).collect();
        texts.sort();
        assert_eq!(
            texts,
            [
                "admin:ops/a/b",
                "read:docs/a/b",
                "read:docs/x",
                "read:projects/eng",
                "write:projects/a/b"
            ]
            .map(String::from)
        );
        let paths = [
            "projects/eng/x",
            "projects/ops",
            "projects/a/b",
            "docs/x",
            "docs/y",
            "docs/a/b",
            "ops/a/b/c",
            "ops/a",
        ];
        for path in paths {
            let path = ContextPath::parse(path).unwrap();
            for action in [Action::Read, Action::Write, Action::Admin] {
                assert_eq!(
                    both.grants(action, &path),
                    user.grants(action, &path) && service.grants(action, &path),
                    "{action} {path}"
                );
            }
        }
        assert!(user.intersect(&ScopeSet::default()).is_empty());
    }
}
