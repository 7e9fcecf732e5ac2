//! The operation map: which API call a request is, and which context it
//! touches.
//!
//! `GET /v1/contexts/projects/eng` is the operation `read` on the context
//! `projects/eng`; `POST /v1/graph/traverse?context=projects/eng` is
//! `graph_traversal` on the same context. The auth filter asks whether the
//! token's scopes allow the operation's action on that context; the rate
//! limiter charges by the operation's cost. Both use this one map.
//!
//! Path templates are literal segments (matched ASCII case-insensitively,
//! so `/V1/Contexts/x` cannot slip past the map as an unmatched request),
//! `*` (any one segment), `{tenant}` (one segment that must name the
//! verified tenant) and a final `{context}` that captures the rest of the
//! path (one or more segments). Alternatively `context_param` takes the
//! context from a query parameter. Templates match the canonical request
//! path (see [`crate::path`]), so `/v1//contexts/./x` and `/v1/contexts/x`
//! are the same request.
//!
//! A match also says what the upstream must receive ([`Operation::path`]):
//! the template's literals as configured, the context canonical and
//! lowercased. The auth filter forwards that path, so the upstream acts on
//! exactly the context that was authorized.

use std::fmt;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::path::{
    ContextPath, MAX_PATH_BYTES, PathError, canonical_path, canonical_segments, rendered_len,
    split_path_query,
};
use crate::query::{Query, QueryError};
use crate::scope::Action;

/// One entry of the operation map, as written in the plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct OperationRule {
    /// Operation name, e.g. `read`, `write`, `complex_query`,
    /// `graph_traversal`. The rate limiter prices operations by this name.
    pub name: String,
    /// HTTP methods, upper case (`GET`, `HEAD`, ...).
    pub methods: Vec<String>,
    /// Path template, e.g. `/v1/contexts/{context}`,
    /// `/v1/tenants/{tenant}/contexts/{context}` or `/v1/query`: literal
    /// segments (matched case-insensitively, forwarded as written here),
    /// `*` (any one segment), `{tenant}` (one segment that must be the
    /// verified tenant, else 403 `tenant_mismatch`) and a final `{context}`
    /// capturing the rest of the path.
    pub path: String,
    /// Query parameter holding the context path, for templates without
    /// `{context}` (e.g. `context` for `/v1/query?context=projects/a`). It
    /// must appear exactly once under any spelling, and is forwarded as
    /// `<context_param>=<canonical context>`.
    #[serde(default)]
    pub context_param: Option<String>,
    /// The scope action the operation needs on its context: `read`,
    /// `write` or `admin`.
    pub action: Action,
    /// Only a calling service may do this: the request must come over a
    /// connection whose client certificate maps to one of the auth stage's
    /// `services` (403 `missing_client_certificate` or
    /// `unknown_service_certificate` otherwise), alone or acting for a user.
    #[serde(default)]
    pub require_service: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    /// As configured, and lowercased for matching.
    Literal {
        spelling: String,
        lower: String,
    },
    AnyOne,
    Tenant,
}

#[derive(Debug, Clone)]
enum ContextSource {
    /// The path segments after the template's literal part.
    Tail,
    /// A query parameter.
    Query(String),
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    methods: Vec<String>,
    prefix: Vec<TemplateSegment>,
    context: ContextSource,
    action: Action,
    require_service: bool,
}

/// The matched operation of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<'a> {
    pub name: &'a str,
    pub action: Action,
    pub context: ContextPath,
    /// The `{tenant}` segment of the path, when the template has one. It
    /// must equal the verified tenant.
    pub tenant: Option<String>,
    /// The canonical path the upstream must receive (without the query).
    pub path: String,
    /// The query parameter that carried the context, if any: the upstream
    /// must receive the canonical context there.
    pub context_param: Option<&'a str>,
    /// The rule's `require_service`.
    pub require_service: bool,
}

/// Outcome of looking a request up in the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationMatch<'a> {
    Matched(Operation<'a>),
    /// The request path itself could not be canonicalized.
    InvalidPath(PathError),
    /// The query string could not be read unambiguously.
    InvalidQuery(QueryError),
    /// A rule matched but its context is missing, repeated or invalid.
    InvalidContext {
        operation: &'a str,
        problem: ContextProblem,
    },
    NoMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextProblem {
    Missing,
    Repeated,
    Invalid(PathError),
}

impl fmt::Display for ContextProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextProblem::Missing => f.write_str("the context parameter is missing"),
            ContextProblem::Repeated => {
                f.write_str("the context parameter is given more than once")
            }
            ContextProblem::Invalid(e) => write!(f, "invalid context path: {e}"),
        }
    }
}

/// The compiled operation map.
#[derive(Debug, Clone, Default)]
pub struct OperationMap {
    rules: Vec<CompiledRule>,
}

impl OperationMap {
    pub fn compile(rules: &[OperationRule]) -> Result<OperationMap, ConfigError> {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                compile_rule(rule)
                    .map_err(|message| ConfigError::new(format!("operations[{index}]"), message))
            })
            .collect::<Result<_, _>>()?;
        Ok(OperationMap { rules: compiled })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The query parameters the map reads (each must appear at most once).
    pub fn parameters(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| match &r.context {
            ContextSource::Query(param) => Some(param.as_str()),
            ContextSource::Tail => None,
        })
    }

    /// Finds the first rule matching `method`, the canonical segments of the
    /// path (computed once by the caller and reused by other matchers)
    /// and the parsed query.
    pub fn lookup<'a>(
        &'a self,
        method: &str,
        path_segments: &[String],
        query: &Query,
    ) -> OperationMatch<'a> {
        for rule in &self.rules {
            if !rule.methods.iter().any(|m| m == method) {
                continue;
            }
            let Some((head, tail)) = match_prefix(&rule.prefix, path_segments) else {
                continue;
            };
            let context = match &rule.context {
                ContextSource::Tail => {
                    if tail.is_empty() {
                        continue;
                    }
                    ContextPath::from_segments(tail.to_vec()).map_err(ContextProblem::Invalid)
                }
                ContextSource::Query(param) => {
                    if !tail.is_empty() {
                        continue;
                    }
                    context_from_query(query, param)
                }
            };
            let context = match context {
                Ok(context) => context,
                Err(problem) => {
                    return OperationMatch::InvalidContext {
                        operation: &rule.name,
                        problem,
                    };
                }
            };
            let mut forwarded: Vec<&str> = Vec::with_capacity(path_segments.len());
            let mut tenant = None;
            for (want, have) in rule.prefix.iter().zip(head) {
                match want {
                    TemplateSegment::Literal { spelling, .. } => forwarded.push(spelling),
                    TemplateSegment::AnyOne => forwarded.push(have),
                    TemplateSegment::Tenant => {
                        tenant = Some(have.clone());
                        forwarded.push(have);
                    }
                }
            }
            let context_param = match &rule.context {
                ContextSource::Tail => {
                    forwarded.extend(context.segments().iter().map(String::as_str));
                    None
                }
                ContextSource::Query(param) => Some(param.as_str()),
            };
            // Template literals can be longer than what they matched
            // (case-insensitively): the forwarded path keeps to the limit.
            if rendered_len(&forwarded) > MAX_PATH_BYTES {
                return OperationMatch::InvalidPath(PathError::TooLong);
            }
            return OperationMatch::Matched(Operation {
                name: &rule.name,
                action: rule.action,
                path: canonical_path(&forwarded),
                context,
                tenant,
                context_param,
                require_service: rule.require_service,
            });
        }
        OperationMatch::NoMatch
    }

    /// Convenience for callers holding only the raw `:path`.
    pub fn lookup_raw<'a>(&'a self, method: &str, raw_path: &str) -> OperationMatch<'a> {
        let (path, query) = split_path_query(raw_path);
        let segments = match canonical_segments(path) {
            Ok(segments) => segments,
            Err(e) => return OperationMatch::InvalidPath(e),
        };
        match Query::parse(query) {
            Ok(query) => self.lookup(method, &segments, &query),
            Err(e) => OperationMatch::InvalidQuery(e),
        }
    }
}

/// The segments matched by the template prefix and the rest.
fn match_prefix<'s>(
    prefix: &[TemplateSegment],
    segments: &'s [String],
) -> Option<(&'s [String], &'s [String])> {
    if segments.len() < prefix.len() {
        return None;
    }
    let (head, tail) = segments.split_at(prefix.len());
    let matches = prefix.iter().zip(head).all(|(want, have)| match want {
        TemplateSegment::AnyOne | TemplateSegment::Tenant => true,
        TemplateSegment::Literal { lower, .. } if have.is_ascii() => {
            have.eq_ignore_ascii_case(lower)
        }
        TemplateSegment::Literal { lower, .. } => have.to_lowercase() == *lower,
    });
    matches.then_some((head, tail))
}

fn context_from_query(query: &Query, param: &str) -> Result<ContextPath, ContextProblem> {
    let value = query
        .unique(param)
        .map_err(|_| ContextProblem::Repeated)?
        .ok_or(ContextProblem::Missing)?;
    // The query value is decoded already; the path is canonicalized without
    // decoding further (a `%` left over is refused as double encoding).
    let value =
        std::str::from_utf8(value).map_err(|_| ContextProblem::Invalid(PathError::InvalidUtf8))?;
    if value.contains('%') {
        return Err(ContextProblem::Invalid(PathError::DoubleEncoded));
    }
    ContextPath::parse(value).map_err(ContextProblem::Invalid)
}

fn compile_rule(rule: &OperationRule) -> Result<CompiledRule, String> {
    if rule.name.is_empty() {
        return Err("name: must not be empty".into());
    }
    if rule.methods.is_empty() {
        return Err("methods: at least one method is required".into());
    }
    for method in &rule.methods {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "methods: '{method}' must be an upper-case HTTP method"
            ));
        }
    }
    if !rule.path.starts_with('/') {
        return Err(format!("path: '{}' must start with '/'", rule.path));
    }
    let raw_segments: Vec<&str> = rule.path.split('/').filter(|s| !s.is_empty()).collect();
    let mut prefix = Vec::new();
    let mut has_tail = false;
    for (i, segment) in raw_segments.iter().enumerate() {
        match *segment {
            "{context}" if i + 1 == raw_segments.len() => has_tail = true,
            "{context}" => return Err("path: {context} must be the last segment".into()),
            "{tenant}" if prefix.contains(&TemplateSegment::Tenant) => {
                return Err("path: {tenant} may appear only once".into());
            }
            "{tenant}" => prefix.push(TemplateSegment::Tenant),
            "*" => prefix.push(TemplateSegment::AnyOne),
            "." | ".." => return Err(format!("path: '{segment}' segments are not allowed")),
            s if s.contains(['{', '}', '*', '%', '?', ';', '\\']) => {
                return Err(format!(
                    "path: segment '{s}' may not contain '{{', '}}', '*', '%', '?', ';' or '\\'"
                ));
            }
            s => prefix.push(TemplateSegment::Literal {
                spelling: s.to_owned(),
                lower: s.to_lowercase(),
            }),
        }
    }
    let context = match (has_tail, &rule.context_param) {
        (true, None) => ContextSource::Tail,
        (false, Some(param)) if !param.is_empty() => ContextSource::Query(param.clone()),
        (true, Some(_)) => {
            return Err("context_param: not allowed with a {context} path segment".into());
        }
        (false, _) => {
            return Err("path: needs a final {context} segment, or set context_param".into());
        }
    };
    Ok(CompiledRule {
        name: rule.name.clone(),
        methods: rule.methods.clone(),
        prefix,
        context,
        action: rule.action,
        require_service: rule.require_service,
    })
}

/// The demo API's operation map, used by `make run` and the tests.
pub fn demo_rules() -> Vec<OperationRule> {
    let rule =
        |name: &str, methods: &[&str], path: &str, param: Option<&str>, action| OperationRule {
            name: name.into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path: path.into(),
            context_param: param.map(str::to_owned),
            action,
            require_service: false,
        };
    vec![
        rule(
            "read",
            &["GET", "HEAD"],
            "/v1/contexts/{context}",
            None,
            Action::Read,
        ),
        rule(
            "write",
            &["PUT", "POST", "PATCH"],
            "/v1/contexts/{context}",
            None,
            Action::Write,
        ),
        rule(
            "delete",
            &["DELETE"],
            "/v1/contexts/{context}",
            None,
            Action::Admin,
        ),
        rule(
            "complex_query",
            &["POST"],
            "/v1/query",
            Some("context"),
            Action::Read,
        ),
        rule(
            "graph_traversal",
            &["POST"],
            "/v1/graph/traverse",
            Some("context"),
            Action::Read,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> OperationMap {
        OperationMap::compile(&demo_rules()).unwrap()
    }

    fn matched(map: &OperationMap, method: &str, path: &str) -> (String, Action, String) {
        match map.lookup_raw(method, path) {
            OperationMatch::Matched(op) => (op.name.to_owned(), op.action, op.context.to_string()),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn demo_api_maps_to_operations() {
        let map = demo();
        assert_eq!(
            matched(&map, "GET", "/v1/contexts/projects/eng"),
            ("read".into(), Action::Read, "projects/eng".into())
        );
        assert_eq!(matched(&map, "HEAD", "/v1/contexts/a").0, "read");
        assert_eq!(matched(&map, "PATCH", "/v1/contexts/a").1, Action::Write);
        assert_eq!(matched(&map, "DELETE", "/v1/contexts/a").1, Action::Admin);
        assert_eq!(
            matched(&map, "POST", "/v1/query?x=1&context=projects%2Feng"),
            ("complex_query".into(), Action::Read, "projects/eng".into())
        );
        assert_eq!(
            matched(&map, "POST", "/v1/graph/traverse?context=a/b").0,
            "graph_traversal"
        );
    }

    #[test]
    fn paths_are_canonicalized_before_matching() {
        let map = demo();
        assert_eq!(
            matched(&map, "GET", "/v1//contexts/./Projects/x/../Eng").2,
            "projects/eng"
        );
        assert_eq!(
            map.lookup_raw("GET", "/v1/contexts/../admin/x"),
            OperationMatch::NoMatch
        );
        assert_eq!(
            map.lookup_raw("GET", "/../x"),
            OperationMatch::InvalidPath(PathError::EscapesRoot)
        );
    }

    #[test]
    fn contexts_must_be_present_and_unique() {
        let map = demo();
        assert_eq!(
            map.lookup_raw("GET", "/v1/contexts"),
            OperationMatch::NoMatch
        );
        assert_eq!(
            map.lookup_raw("GET", "/v1/contexts/"),
            OperationMatch::NoMatch
        );
        assert_eq!(
            map.lookup_raw("POST", "/v1/query"),
            OperationMatch::InvalidContext {
                operation: "complex_query",
                problem: ContextProblem::Missing
            }
        );
        assert_eq!(
            map.lookup_raw("POST", "/v1/query?context=a&context=b"),
            OperationMatch::InvalidContext {
                operation: "complex_query",
                problem: ContextProblem::Repeated
            }
        );
        assert_eq!(
            map.lookup_raw("POST", "/v1/query?context=a%252Fb"),
            OperationMatch::InvalidContext {
                operation: "complex_query",
                problem: ContextProblem::Invalid(PathError::DoubleEncoded)
            }
        );
    }

    #[test]
    fn unknown_methods_and_paths_do_not_match() {
        let map = demo();
        assert_eq!(
            map.lookup_raw("OPTIONS", "/v1/contexts/a"),
            OperationMatch::NoMatch
        );
        assert_eq!(
            map.lookup_raw("GET", "/v2/contexts/a"),
            OperationMatch::NoMatch
        );
        assert_eq!(
            map.lookup_raw("POST", "/v1/query/extra?context=a"),
            OperationMatch::NoMatch
        );
    }

    #[test]
    fn bad_rules_are_reported_with_their_index() {
        let mut rules = demo_rules();
        rules.push(OperationRule {
            name: "x".into(),
            methods: vec!["get".into()],
            path: "/a/{context}".into(),
            context_param: None,
            action: Action::Read,
            require_service: false,
        });
        let err = OperationMap::compile(&rules).unwrap_err();
        assert_eq!(err.field, "operations[5]");
        assert!(err.to_string().contains("methods"), "{err}");

        let bad = |path: &str, param: Option<&str>| {
            OperationMap::compile(&[OperationRule {
                name: "x".into(),
                methods: vec!["GET".into()],
                path: path.into(),
                context_param: param.map(Into::into),
                action: Action::Read,
                require_service: false,
            }])
            .unwrap_err()
            .message
        };
        assert!(bad("/a/{context}/b", None).contains("last segment"));
        assert!(bad("/a", None).contains("context_param"));
        assert!(bad("/a/{context}", Some("c")).contains("context_param"));
        assert!(bad("a/{context}", None).contains("start with"));
        assert!(bad("/a*/{context}", None).contains("may not contain"));
    }

    fn forwarded(map: &OperationMap, method: &str, path: &str) -> String {
        match map.lookup_raw(method, path) {
            OperationMatch::Matched(op) => op.path,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn literals_match_case_insensitively_and_are_forwarded_as_configured() {
        let map = demo();
        assert_eq!(
            matched(&map, "GET", "/V1/Contexts/Projects/ENG"),
            ("read".into(), Action::Read, "projects/eng".into())
        );
        assert_eq!(
            forwarded(&map, "GET", "/V1//CONTEXTS/./Projects/x/../Eng"),
            "/v1/contexts/projects/eng"
        );
        assert_eq!(
            forwarded(&map, "GET", "/v1/contexts/a%20b/c%2Cd"),
            "/v1/contexts/a%20b/c,d"
        );
        assert_eq!(forwarded(&map, "POST", "/V1/Query?context=A"), "/v1/query");
    }

    #[test]
    fn a_repeated_context_parameter_under_any_spelling_is_refused() {
        let map = demo();
        for query in [
            "context=a&context=b",
            "context=a&%63ontext=b",
            "context=a&Context=b",
            "context=a;context=b",
        ] {
            assert_eq!(
                map.lookup_raw("POST", &format!("/v1/query?{query}")),
                OperationMatch::InvalidContext {
                    operation: "complex_query",
                    problem: ContextProblem::Repeated
                },
                "{query}"
            );
        }
        assert!(matches!(
            map.lookup_raw("POST", "/v1/query?context=%zz"),
            OperationMatch::InvalidQuery(QueryError::BadEscape)
        ));
        assert_eq!(
            matched(&map, "POST", "/v1/query?CONTEXT=Projects%2FEng").2,
            "projects/eng"
        );
        let mut names: Vec<&str> = map.parameters().collect();
        names.dedup();
        assert_eq!(names, ["context"]);
    }

    #[test]
    fn tenant_segments_are_captured() {
        let map = OperationMap::compile(&[OperationRule {
            name: "read".into(),
            methods: vec!["GET".into()],
            path: "/v1/tenants/{tenant}/contexts/{context}".into(),
            context_param: None,
            action: Action::Read,
            require_service: false,
        }])
        .unwrap();
        let OperationMatch::Matched(op) =
            map.lookup_raw("GET", "/V1/tenants/acme/Contexts/Projects/A")
        else {
            panic!()
        };
        assert_eq!(op.tenant.as_deref(), Some("acme"));
        assert_eq!(op.path, "/v1/tenants/acme/contexts/projects/a");
        let twice = OperationMap::compile(&[OperationRule {
            name: "x".into(),
            methods: vec!["GET".into()],
            path: "/{tenant}/{tenant}/{context}".into(),
            context_param: None,
            action: Action::Read,
            require_service: false,
        }]);
        assert!(twice.unwrap_err().message.contains("only once"));
    }

    #[test]
    fn star_segments_match_one_segment() {
        let map = OperationMap::compile(&[OperationRule {
            name: "tenant_read".into(),
            methods: vec!["GET".into()],
            path: "/t/*/contexts/{context}".into(),
            context_param: None,
            action: Action::Read,
            require_service: false,
        }])
        .unwrap();
        assert_eq!(matched(&map, "GET", "/t/acme/contexts/a/b").2, "a/b");
        assert_eq!(
            map.lookup_raw("GET", "/t/contexts/a"),
            OperationMatch::NoMatch
        );
    }
}
