//! What a message needs and costs ([`ToolMap::resolve`]), whether the
//! caller's scopes grant it ([`authorize`]), both for every message of a
//! body ([`ToolMap::decide`]), and which entries of a listing a caller may
//! see.
//!
//! A message resolves to an operation (`mcp:<method>`), the name it acts
//! on, the action and context path it needs, and its cost:
//!
//! * `tools/call`: the first tool rule matching the tool's name; a tool no
//!   rule names is refused (403 `mcp_unknown_tool`);
//! * `prompts/get`: `read` on `mcp/prompts/<name>`, cost 1;
//! * `resources/read`: `read` on the first resource rule's context prefix
//!   plus the rest of the URI; a URI no rule covers is refused (403
//!   `mcp_unknown_resource`);
//! * a free method: no scope needed, cost 0; a client's response to a
//!   server request likewise;
//! * any other method: `read` on `mcp/methods/<method>`, cost 1.
//!
//! The context path is the REST API's ([`crate::path`]), but stricter. A
//! REST request is forwarded with the canonical path the gateway decided
//! on; a tool's arguments reach the server as the client wrote them. So a
//! context taken from a message must already be canonical: `..`, `.` and
//! empty segments, a leading or trailing `/`, percent-escapes (encoded
//! separators above all) and everything `path.rs` refuses are refused with
//! 400 `mcp_invalid_context`, never resolved into another path. Only
//! letter case is folded, as context paths are case-insensitive. Resource
//! URIs are URIs: their rest is percent-decoded once, segment by segment,
//! and an encoded `/` is still refused.

use serde_json::Value;

use super::headers::{McpHeaders, check_headers};
use super::message::{Message, ParsedBody, Target};
use super::refusal::{Reason, Refusal, quoted};
use super::tools::{ContextSource, Cost, ToolMap};
use crate::path::{ContextPath, canonical_segments, percent_decode};
use crate::scope::{Action, ScopeSet, required_scope};

/// The operation of a client's response to a server request.
pub const RESPONSE_OPERATION: &str = "mcp:response";

const TOOLS: [&str; 2] = ["mcp", "tools"];
const PROMPTS: [&str; 2] = ["mcp", "prompts"];
const METHODS: [&str; 2] = ["mcp", "methods"];

/// What a message needs and costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// `mcp:<method>` (`mcp:tools/call`), or [`RESPONSE_OPERATION`].
    pub operation: String,
    /// The tool's or prompt's name, or the resource's URI.
    pub name: Option<String>,
    /// What the caller's scopes must grant; `None` for free methods and
    /// responses.
    pub access: Option<Access>,
    pub cost: Cost,
}

/// An action on a context path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub action: Action,
    pub context: ContextPath,
}

impl Access {
    /// The scope that grants exactly this (`read:projects/engineering/x`).
    pub fn required_scope(&self) -> String {
        required_scope(self.action, &self.context)
    }
}

/// How a raw context is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// Taken as is: a JSON string argument, a name.
    Literal,
    /// A URI's path: each segment percent-decoded once.
    Uri,
}

impl ToolMap {
    /// What `message` needs and costs. Refusals carry the message's id.
    pub fn resolve(&self, message: &Message) -> Result<Resolved, Refusal> {
        self.resolve_message(message).map_err(|r| r.about(message))
    }

    fn resolve_message(&self, message: &Message) -> Result<Resolved, Refusal> {
        let Some(method) = message.method.as_deref() else {
            return Ok(Resolved {
                operation: RESPONSE_OPERATION.into(),
                name: None,
                access: None,
                cost: Cost::FREE,
            });
        };
        let operation = format!("mcp:{method}");
        let resolved = |name: &str, action, context, cost| Resolved {
            operation: operation.clone(),
            name: Some(name.to_owned()),
            access: Some(Access { action, context }),
            cost,
        };
        match &message.target {
            Some(Target::Tool(name)) => {
                let rule = self.tool(name).ok_or_else(|| {
                    Refusal::new(
                        Reason::UnknownTool,
                        format!(
                            "the tool '{}' is not available through this gateway",
                            quoted(name)
                        ),
                    )
                })?;
                let context = match &rule.context {
                    ContextSource::Pointer(pointer) => {
                        let argument = message.arguments.as_ref().and_then(|a| pointer.lookup(a));
                        match argument {
                            Some(Value::String(raw)) => {
                                exact_context(&[] as &[&str], raw, Spelling::Literal)
                            }
                            Some(_) => Err(format!("the argument at {pointer} must be a string")),
                            None => Err(format!("the argument at {pointer} is missing")),
                        }
                    }
                    ContextSource::Fixed(path) => Ok(path.clone()),
                    ContextSource::Tool => exact_context(&TOOLS, name, Spelling::Literal),
                }
                .map_err(invalid_context)?;
                Ok(resolved(name, rule.action, context, rule.cost.clone()))
            }
            Some(Target::Prompt(name)) => {
                let context =
                    exact_context(&PROMPTS, name, Spelling::Literal).map_err(invalid_context)?;
                Ok(resolved(name, Action::Read, context, Cost::ONE))
            }
            Some(Target::Resource(uri)) => {
                let (rule, rest) = self.resource(uri).ok_or_else(|| {
                    Refusal::new(
                        Reason::UnknownResource,
                        format!(
                            "the resource '{}' is not available through this gateway",
                            quoted(uri)
                        ),
                    )
                })?;
                let context = exact_context(&rule.context_prefix, rest, Spelling::Uri)
                    .map_err(invalid_context)?;
                Ok(resolved(uri, Action::Read, context, rule.cost.clone()))
            }
            None if self.is_free(method) => Ok(Resolved {
                operation,
                name: None,
                access: None,
                cost: Cost::FREE,
            }),
            None => {
                let context =
                    exact_context(&METHODS, method, Spelling::Literal).map_err(invalid_context)?;
                Ok(Resolved {
                    operation,
                    name: None,
                    access: Some(Access {
                        action: Action::Read,
                        context,
                    }),
                    cost: Cost::ONE,
                })
            }
        }
    }

    /// Checks every message of `body` against `headers`, resolves it and
    /// authorizes it with `scopes`: what each needs and costs, in order,
    /// or the first refusal. A refusal inside a batch refuses the whole
    /// batch (one error, `id: null`).
    pub fn decide(
        &self,
        body: &ParsedBody,
        headers: &McpHeaders<'_>,
        scopes: &ScopeSet,
    ) -> Result<Vec<Resolved>, Refusal> {
        body.messages
            .iter()
            .map(|message| {
                check_headers(message, headers)?;
                let resolved = self.resolve(message)?;
                authorize(&resolved, scopes).map_err(|r| r.about(message))?;
                Ok(resolved)
            })
            .collect::<Result<Vec<_>, Refusal>>()
            .map_err(|r| if body.batch { r.whole_batch() } else { r })
    }

    /// May a caller with `scopes` call the tool `name`, with some
    /// arguments? For a rule with a fixed or per-tool context this is the
    /// scope check itself; for a rule that takes its context from an
    /// argument, any scope granting the rule's action somewhere.
    pub fn may_list_tool(&self, name: &str, scopes: &ScopeSet) -> bool {
        let Some(rule) = self.tool(name) else {
            return false;
        };
        match &rule.context {
            ContextSource::Fixed(path) => scopes.grants(rule.action, path),
            ContextSource::Tool => exact_context(&TOOLS, name, Spelling::Literal)
                .is_ok_and(|path| scopes.grants(rule.action, &path)),
            ContextSource::Pointer(_) => scopes.iter().any(|s| s.action() >= rule.action),
        }
    }

    /// May a caller with `scopes` get the prompt `name`?
    pub fn may_list_prompt(&self, name: &str, scopes: &ScopeSet) -> bool {
        exact_context(&PROMPTS, name, Spelling::Literal)
            .is_ok_and(|path| scopes.grants(Action::Read, &path))
    }

    /// May a caller with `scopes` read the resource `uri`?
    pub fn may_list_resource(&self, uri: &str, scopes: &ScopeSet) -> bool {
        self.resource(uri).is_some_and(|(rule, rest)| {
            exact_context(&rule.context_prefix, rest, Spelling::Uri)
                .is_ok_and(|path| scopes.grants(Action::Read, &path))
        })
    }
}

/// Refuses what `resolved` needs unless `scopes` grant it: 403
/// `insufficient_scope`, carrying the scope that would have been enough.
pub fn authorize(resolved: &Resolved, scopes: &ScopeSet) -> Result<(), Refusal> {
    match &resolved.access {
        Some(access) if !scopes.grants(access.action, &access.context) => {
            let scope = access.required_scope();
            let mut refusal = Refusal::new(
                Reason::InsufficientScope,
                format!("{} needs the scope {}", resolved.operation, quoted(&scope)),
            );
            refusal.required_scope = Some(scope);
            Err(refusal)
        }
        _ => Ok(()),
    }
}

fn invalid_context(detail: String) -> Refusal {
    Refusal::new(Reason::InvalidContext, detail)
}

/// The context path `prefix` + `raw`, where `raw` must already be in
/// canonical form (see the module documentation): canonicalizing it must
/// change nothing but letter case.
fn exact_context<S: AsRef<str>>(
    prefix: &[S],
    raw: &str,
    spelling: Spelling,
) -> Result<ContextPath, String> {
    if raw.is_empty() {
        return Err("the context path is empty".into());
    }
    let segments = canonical_segments(raw)
        .map_err(|e| format!("the context path '{}' is refused: {e}", quoted(raw)))?;
    let parts: Vec<&str> = raw.split('/').collect();
    let canonical = parts.len() == segments.len()
        && parts
            .iter()
            .zip(&segments)
            .all(|(part, segment)| match spelling {
                Spelling::Literal => part == segment,
                Spelling::Uri => {
                    percent_decode(part).is_ok_and(|bytes| bytes == segment.as_bytes())
                }
            });
    if !canonical {
        return Err(format!(
            "the context path '{}' is not in canonical form (such as projects/engineering/x: \
             no empty, '.' or '..' segments, no leading or trailing '/'{})",
            quoted(raw),
            match spelling {
                Spelling::Literal => ", no percent-escapes",
                Spelling::Uri => ", no encoded '/'",
            }
        ));
    }
    let all: Vec<String> = prefix
        .iter()
        .map(|s| s.as_ref().to_owned())
        .chain(segments)
        .collect();
    ContextPath::from_segments(all)
        .map_err(|e| format!("the context path '{}' is refused: {e}", quoted(raw)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::parse_json;
    use crate::mcp::config::McpConfig;
    use crate::mcp::headers::Header;
    use crate::mcp::message::{Id, Limits, parse_body};

    fn map(config: serde_json::Value) -> ToolMap {
        let config: McpConfig = parse_json(config.to_string().as_bytes()).unwrap();
        ToolMap::compile(&config).unwrap()
    }

    fn demo_map() -> ToolMap {
        map(json!({
            "tools": [
                {"name": "search_context", "action": "read", "context": {"pointer": "/path"}},
                {"name": "read_context", "action": "read", "context": {"pointer": "/path"}},
                {"name": "write_context", "action": "write", "context": {"pointer": "/path"},
                 "cost": {"base": 2, "bands": [{"above": 65536, "multiplier": 4}]}},
                {"name": "traverse_*", "action": "read", "context": {"pointer": "/target/path"},
                 "cost": {"base": 10}},
                {"name": "reindex", "action": "admin", "context": {"fixed": "projects"}},
                {"name": "ping_tool", "action": "read", "context": "tool"}
            ],
            "resources": [
                {"uri_prefix": "ctx://", "context_prefix": ""},
                {"uri_prefix": "docs://", "context_prefix": "projects/docs/"}
            ]
        }))
    }

    fn message(body: serde_json::Value) -> Message {
        let headers = McpHeaders {
            content_type: Header::Value(b"application/json"),
            ..McpHeaders::default()
        };
        parse_body(body.to_string().as_bytes(), &headers, &Limits::default())
            .unwrap()
            .messages
            .remove(0)
    }

    fn call(tool: &str, arguments: serde_json::Value) -> Message {
        message(json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": tool, "arguments": arguments}}))
    }

    fn scopes(list: &[&str]) -> ScopeSet {
        ScopeSet::parse(list.iter().copied()).unwrap()
    }

    fn context(resolved: &Resolved) -> String {
        resolved.access.as_ref().unwrap().context.to_string()
    }

    #[test]
    fn engineering_reader_may_search_engineering_only() {
        let map = demo_map();
        let reader = scopes(&["read:projects/engineering/*"]);
        let ok = call(
            "search_context",
            json!({"path": "projects/engineering/x", "query": "q"}),
        );
        let resolved = map.resolve(&ok).unwrap();
        assert_eq!(resolved.operation, "mcp:tools/call");
        assert_eq!(resolved.name.as_deref(), Some("search_context"));
        assert_eq!(context(&resolved), "projects/engineering/x");
        assert!(authorize(&resolved, &reader).is_ok());

        let sales = map
            .resolve(&call("search_context", json!({"path": "projects/sales/x"})))
            .unwrap();
        let refusal = authorize(&sales, &reader).unwrap_err();
        assert_eq!(refusal.reason, Reason::InsufficientScope);
        assert_eq!((refusal.status(), refusal.jsonrpc_code()), (403, -31403));
        assert_eq!(
            refusal.required_scope.as_deref(),
            Some("read:projects/sales/x")
        );

        let climbing = call(
            "search_context",
            json!({"path": "projects/engineering/../sales/x"}),
        );
        let refusal = map.resolve(&climbing).unwrap_err();
        assert_eq!(refusal.reason, Reason::InvalidContext);
        assert_eq!((refusal.status(), refusal.jsonrpc_code()), (400, -32602));
        assert_eq!(refusal.id, Some(Id::Number(9.into())));
    }

    #[test]
    fn contexts_must_already_be_canonical() {
        let map = demo_map();
        for path in [
            "projects/engineering/../sales/x",
            "projects/engineering/./x",
            "projects//engineering/x",
            "/projects/engineering/x",
            "projects/engineering/x/",
            "projects%2Fengineering/x",
            "projects/engineering%2F..%2F..%2Fsales/x",
            "projects/my%20notes",
            "projects/eng;x",
            "projects/eng\\x",
            "projects/\u{FF0E}\u{FF0E}/x",
            "projects/ x",
            "..",
            "",
        ] {
            let refusal = map
                .resolve(&call("read_context", json!({"path": path})))
                .unwrap_err();
            assert_eq!(refusal.reason, Reason::InvalidContext, "{path:?}");
        }
        // Letter case is folded, as everywhere for context paths.
        let upper = map
            .resolve(&call(
                "read_context",
                json!({"path": "Projects/Engineering/X"}),
            ))
            .unwrap();
        assert_eq!(context(&upper), "projects/engineering/x");
        let spaced = map
            .resolve(&call("read_context", json!({"path": "projects/my notes"})))
            .unwrap();
        assert_eq!(context(&spaced), "projects/my notes");
    }

    #[test]
    fn missing_or_non_string_arguments_are_invalid_contexts() {
        let map = demo_map();
        for arguments in [
            json!({}),
            json!({"path": 5}),
            json!({"path": null}),
            json!({"path": ["projects/a"]}),
        ] {
            let refusal = map
                .resolve(&call("read_context", arguments.clone()))
                .unwrap_err();
            assert_eq!(refusal.reason, Reason::InvalidContext, "{arguments}");
        }
        let no_arguments = message(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                          "params": {"name": "read_context"}}));
        assert_eq!(
            map.resolve(&no_arguments).unwrap_err().reason,
            Reason::InvalidContext
        );
        let nested = map
            .resolve(&call(
                "traverse_context",
                json!({"target": {"path": "projects/a"}, "depth": 3}),
            ))
            .unwrap();
        assert_eq!(context(&nested), "projects/a");
        assert_eq!(nested.cost.base, 10);
    }

    #[test]
    fn unknown_tools_are_forbidden() {
        let refusal = demo_map()
            .resolve(&call("delete_everything", json!({})))
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::UnknownTool);
        assert_eq!((refusal.status(), refusal.jsonrpc_code()), (403, -32602));
        assert_eq!(refusal.id, Some(Id::Number(9.into())));
    }

    #[test]
    fn fixed_and_per_tool_contexts() {
        let map = demo_map();
        let reindex = map
            .resolve(&call("reindex", json!({"path": "projects/anything"})))
            .unwrap();
        assert_eq!(
            reindex.access,
            Some(Access {
                action: Action::Admin,
                context: ContextPath::parse("projects").unwrap()
            })
        );
        let ping = map.resolve(&call("ping_tool", json!({}))).unwrap();
        assert_eq!(context(&ping), "mcp/tools/ping_tool");
        assert!(authorize(&ping, &scopes(&["read:mcp/tools/*"])).is_ok());
        assert!(authorize(&ping, &scopes(&["read:mcp/tools/other"])).is_err());
    }

    #[test]
    fn prompts_methods_and_free_methods() {
        let map = demo_map();
        let prompt = map
            .resolve(&message(
                json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get",
                                      "params": {"name": "summarize_context"}}),
            ))
            .unwrap();
        assert_eq!(
            prompt.access.as_ref().unwrap().required_scope(),
            "read:mcp/prompts/summarize_context"
        );
        assert_eq!(prompt.cost, Cost::ONE);
        let bad = message(json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/get",
                                 "params": {"name": "../../projects/x"}}));
        assert_eq!(
            map.resolve(&bad).unwrap_err().reason,
            Reason::InvalidContext
        );

        let complete = map
            .resolve(&message(
                json!({"jsonrpc": "2.0", "id": 1, "method": "completion/complete",
                                      "params": {}}),
            ))
            .unwrap();
        assert_eq!(complete.operation, "mcp:completion/complete");
        assert_eq!(
            complete.access.as_ref().unwrap().required_scope(),
            "read:mcp/methods/completion/complete"
        );
        assert_eq!(complete.cost, Cost::ONE);
        let level = map
            .resolve(&message(
                json!({"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel",
                                      "params": {"level": "info"}}),
            ))
            .unwrap();
        assert_eq!(context(&level), "mcp/methods/logging/setlevel");

        for method in [
            "initialize",
            "ping",
            "tools/list",
            "notifications/initialized",
            "server/discover",
        ] {
            let free = map
                .resolve(&message(
                    json!({"jsonrpc": "2.0", "id": 1, "method": method}),
                ))
                .unwrap();
            assert!(authorize(&free, &ScopeSet::default()).is_ok());
            assert_eq!((free.access, free.cost), (None, Cost::FREE), "{method}");
        }
        let response = map
            .resolve(&message(json!({"jsonrpc": "2.0", "id": 1, "result": {}})))
            .unwrap();
        assert_eq!(response.operation, RESPONSE_OPERATION);
        assert_eq!((response.access, response.cost), (None, Cost::FREE));
    }

    #[test]
    fn resources_map_to_context_paths() {
        let map = demo_map();
        let read = |uri: &str| {
            map.resolve(&message(
                json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                                         "params": {"uri": uri}}),
            ))
        };
        assert_eq!(
            context(&read("ctx://projects/engineering/roadmap").unwrap()),
            "projects/engineering/roadmap"
        );
        assert_eq!(
            context(&read("ctx://projects/my%20notes").unwrap()),
            "projects/my notes"
        );
        assert_eq!(
            context(&read("docs://guide/intro").unwrap()),
            "projects/docs/guide/intro"
        );
        for uri in [
            "docs://../secret",
            "docs://a/../../secret",
            "ctx://projects%2Fsecret",
            "ctx://projects/%2e%2e/x",
            "ctx://projects/a%252Fb",
            "ctx://projects/x?version=2",
            "ctx://",
            "docs://",
        ] {
            assert_eq!(
                read(uri).unwrap_err().reason,
                Reason::InvalidContext,
                "{uri}"
            );
        }
        let refusal = read("file:///etc/passwd").unwrap_err();
        assert_eq!(
            (refusal.reason, refusal.status()),
            (Reason::UnknownResource, 403)
        );
    }

    #[test]
    fn decide_checks_headers_then_the_map_then_scopes() {
        let map = demo_map();
        let body = ParsedBody {
            messages: vec![call(
                "search_context",
                json!({"path": "projects/engineering/x"}),
            )],
            batch: false,
        };
        let reader = scopes(&["read:projects/engineering/*"]);
        let plain = McpHeaders::default();
        assert_eq!(map.decide(&body, &plain, &reader).unwrap().len(), 1);
        let lying = McpHeaders {
            method: Header::Value(b"tools/list"),
            ..McpHeaders::default()
        };
        assert_eq!(
            map.decide(&body, &lying, &reader).unwrap_err().reason,
            Reason::HeaderMismatch
        );
        let refusal = map
            .decide(&body, &plain, &scopes(&["read:projects/sales/*"]))
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::InsufficientScope);
        assert_eq!(refusal.id, Some(Id::Number(9.into())));

        let batch = ParsedBody {
            messages: vec![
                message(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
                call("search_context", json!({"path": "projects/sales/x"})),
            ],
            batch: true,
        };
        let refusal = map.decide(&batch, &plain, &reader).unwrap_err();
        assert_eq!(
            (refusal.reason, refusal.id),
            (Reason::InsufficientScope, None)
        );
    }

    #[test]
    fn listings_show_what_the_caller_may_use() {
        let map = demo_map();
        let reader = scopes(&[
            "read:projects/engineering/*",
            "read:mcp/prompts/summarize_context",
        ]);
        assert!(map.may_list_tool("search_context", &reader));
        assert!(!map.may_list_tool("write_context", &reader));
        assert!(!map.may_list_tool("reindex", &reader));
        assert!(!map.may_list_tool("ping_tool", &reader));
        assert!(!map.may_list_tool("unknown", &reader));
        assert!(map.may_list_tool("write_context", &scopes(&["write:projects/x"])));
        assert!(map.may_list_tool("reindex", &scopes(&["admin:projects"])));
        assert!(!map.may_list_tool("search_context", &ScopeSet::default()));
        assert!(map.may_list_prompt("summarize_context", &reader));
        assert!(!map.may_list_prompt("other", &reader));
        assert!(map.may_list_resource("ctx://projects/engineering/roadmap", &reader));
        assert!(!map.may_list_resource("ctx://projects/sales/q3", &reader));
        assert!(!map.may_list_resource("ctx://projects/engineering/../sales/q3", &reader));
        assert!(!map.may_list_resource("file:///x", &reader));
    }
}
