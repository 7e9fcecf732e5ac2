//! The compiled tool map: the `tools`, `resources` and `free_methods` of
//! the configuration, checked and ready to match. Built once per
//! configuration push; what a message resolves to is in
//! [`super::decide`].

use std::fmt;

use serde_json::{Map, Value};

use super::config::{CostConfig, McpConfig, ToolContext};
use super::glob::Glob;
use crate::config::ConfigError;
use crate::path::{ContextPath, canonical_segments};
use crate::ratelimit::band;
use crate::ratelimit::config::{Band, check_bands};
use crate::scope::Action;

/// The methods the maps decide, which `free_methods` may not name.
const MAPPED_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// Highest base cost of a rule.
const MAX_BASE_COST: u32 = 10_000;

/// The compiled `tools`, `resources` and `free_methods`.
#[derive(Debug, Clone)]
pub struct ToolMap {
    pub(super) tools: Vec<ToolEntry>,
    pub(super) resources: Vec<ResourceEntry>,
    pub(super) free_methods: Vec<Glob>,
}

#[derive(Debug, Clone)]
pub(super) struct ToolEntry {
    pub name: Glob,
    pub action: Action,
    pub context: ContextSource,
    pub cost: Cost,
}

/// Where a tool call's context path comes from, compiled.
#[derive(Debug, Clone)]
pub(super) enum ContextSource {
    Pointer(ArgumentPointer),
    Fixed(ContextPath),
    Tool,
}

#[derive(Debug, Clone)]
pub(super) struct ResourceEntry {
    pub uri_prefix: String,
    /// Canonical, lowercased segments.
    pub context_prefix: Vec<String>,
    pub cost: Cost,
}

/// What a message costs, in read-equivalents: `base` times the highest
/// band the body's size is above.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub base: u32,
    pub bands: Vec<Band>,
}

impl Cost {
    /// Free methods and client responses.
    pub const FREE: Cost = Cost {
        base: 0,
        bands: Vec::new(),
    };
    /// Prompts and the methods no map names.
    pub const ONE: Cost = Cost {
        base: 1,
        bands: Vec::new(),
    };

    /// The cost of a message whose body is `body_bytes` long.
    pub fn units(&self, body_bytes: u64) -> u64 {
        u64::from(self.base).saturating_mul(band(&self.bands, body_bytes))
    }

    fn compile(field: &str, config: &CostConfig) -> Result<Cost, ConfigError> {
        if config.base > MAX_BASE_COST {
            return Err(ConfigError::new(
                format!("{field}.base"),
                format!("must be between 0 and {MAX_BASE_COST}"),
            ));
        }
        check_bands(&format!("{field}.bands"), &config.bands)?;
        Ok(Cost {
            base: config.base,
            bands: config.bands.clone(),
        })
    }
}

/// An RFC 6901 JSON pointer into a tool call's `arguments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArgumentPointer {
    /// As configured, for messages.
    text: String,
    /// Unescaped reference tokens; at least one.
    tokens: Vec<String>,
}

impl ArgumentPointer {
    /// Parses `/a/b~1c` (`~1` is `/`, `~0` is `~`). The pointer to the
    /// whole `arguments` (`""`) is refused: it is never a string.
    pub fn parse(text: &str) -> Result<ArgumentPointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a JSON pointer starts with '/' (RFC 6901), e.g. \"/path\"".into());
        };
        let tokens = rest
            .split('/')
            .map(|token| {
                let mut out = String::with_capacity(token.len());
                let mut chars = token.chars();
                while let Some(c) = chars.next() {
                    if c != '~' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err("'~' is followed by 0 or 1 in a JSON pointer".into()),
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ArgumentPointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The value the pointer names in `arguments`, if there is one.
    pub fn lookup<'a>(&self, arguments: &'a Map<String, Value>) -> Option<&'a Value> {
        let mut tokens = self.tokens.iter();
        let mut value = arguments.get(tokens.next()?)?;
        for token in tokens {
            value = match value {
                Value::Object(members) => members.get(token)?,
                Value::Array(items) => items.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

impl fmt::Display for ArgumentPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An array index as RFC 6901 writes it: `0`, or digits without a
/// leading zero (`-`, past the end, is never a value).
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

impl ToolMap {
    /// Compiles the `tools`, `resources` and `free_methods` of `config`,
    /// with an error naming the field for anything unusable.
    pub fn compile(config: &McpConfig) -> Result<ToolMap, ConfigError> {
        let tools = config
            .tools
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let field = |f: &str| format!("tools[{i}].{f}");
                if rule.name.is_empty() || rule.name.chars().any(char::is_control) {
                    return Err(ConfigError::new(
                        field("name"),
                        "must be a non-empty name or pattern without control characters",
                    ));
                }
                let context = match &rule.context {
                    ToolContext::Pointer(pointer) => ArgumentPointer::parse(pointer)
                        .map(ContextSource::Pointer)
                        .map_err(|e| ConfigError::new(field("context.pointer"), e))?,
                    ToolContext::Fixed(path) => ContextPath::parse(path)
                        .map(ContextSource::Fixed)
                        .map_err(|e| ConfigError::new(field("context.fixed"), e.to_string()))?,
                    ToolContext::Tool => ContextSource::Tool,
                };
                Ok(ToolEntry {
                    name: Glob::new(&rule.name),
                    action: rule.action,
                    context,
                    cost: Cost::compile(&field("cost"), &rule.cost)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let resources = config
            .resources
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let field = |f: &str| format!("resources[{i}].{f}");
                if rule
                    .uri_prefix
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ConfigError::new(
                        field("uri_prefix"),
                        "must not contain whitespace or control characters",
                    ));
                }
                Ok(ResourceEntry {
                    uri_prefix: rule.uri_prefix.clone(),
                    context_prefix: context_prefix(&rule.context_prefix)
                        .map_err(|e| ConfigError::new(field("context_prefix"), e))?,
                    cost: Cost::compile(&field("cost"), &rule.cost)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let free_methods = config
            .free_methods
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                let field = format!("free_methods[{i}]");
                if pattern.is_empty() {
                    return Err(ConfigError::new(field, "must not be empty"));
                }
                let glob = Glob::new(pattern);
                if let Some(mapped) = MAPPED_METHODS.iter().find(|m| glob.matches(m)) {
                    return Err(ConfigError::new(
                        field,
                        format!("'{pattern}' covers {mapped}, which the tool map decides"),
                    ));
                }
                Ok(glob)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ToolMap {
            tools,
            resources,
            free_methods,
        })
    }

    /// The first rule naming `tool`.
    pub(super) fn tool(&self, tool: &str) -> Option<&ToolEntry> {
        self.tools.iter().find(|rule| rule.name.matches(tool))
    }

    /// The first rule covering `uri`, and the rest of the URI after its
    /// prefix.
    pub(super) fn resource<'u>(&self, uri: &'u str) -> Option<(&ResourceEntry, &'u str)> {
        self.resources.iter().find_map(|rule| {
            uri.strip_prefix(rule.uri_prefix.as_str())
                .map(|rest| (rule, rest))
        })
    }

    pub(super) fn is_free(&self, method: &str) -> bool {
        self.free_methods.iter().any(|glob| glob.matches(method))
    }
}

/// A resource rule's context prefix: `""`, or canonical segments with an
/// optional trailing `/` (`projects/`).
fn context_prefix(prefix: &str) -> Result<Vec<String>, String> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() && prefix.is_empty() {
        return Ok(Vec::new());
    }
    let segments = canonical_segments(trimmed).map_err(|e| e.to_string())?;
    if segments.is_empty() || segments.join("/") != trimmed {
        return Err(format!(
            "'{prefix}' is not a canonical context path (such as \"projects/\")"
        ));
    }
    Ok(segments.iter().map(|s| s.to_lowercase()).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{in_section, parse_json};

    fn compile(config: serde_json::Value) -> Result<ToolMap, String> {
        let config: McpConfig =
            parse_json(config.to_string().as_bytes()).map_err(|e| e.to_string())?;
        ToolMap::compile(&config)
            .map_err(in_section("mcp"))
            .map_err(|e| e.to_string())
    }

    fn error(config: serde_json::Value) -> String {
        compile(config).unwrap_err()
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let args = json!({"path": "p", "a/b": "slash", "m~n": "tilde",
                          "nested": {"list": ["x", {"deep": "y"}]}, "": "empty"});
        let args = args.as_object().unwrap();
        let look = |p: &str| ArgumentPointer::parse(p).unwrap().lookup(args).cloned();
        assert_eq!(look("/path"), Some(json!("p")));
        assert_eq!(look("/a~1b"), Some(json!("slash")));
        assert_eq!(look("/m~0n"), Some(json!("tilde")));
        assert_eq!(look("/nested/list/0"), Some(json!("x")));
        assert_eq!(look("/nested/list/1/deep"), Some(json!("y")));
        assert_eq!(look("/"), Some(json!("empty")));
        for missing in [
            "/nested/list/01",
            "/nested/list/-",
            "/nested/list/2",
            "/path/x",
            "/nope",
        ] {
            assert_eq!(look(missing), None, "{missing}");
        }
        for bad in ["", "path", "/a~2", "/a~"] {
            assert!(ArgumentPointer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let tool = |context: serde_json::Value| {
            json!({"tools": [
                {"name": "a", "action": "read", "context": "tool"},
                {"name": "b", "action": "read", "context": "tool"},
                {"name": "c", "action": "write", "context": context}
            ]})
        };
        assert!(
            error(tool(json!({"pointer": "path"})))
                .starts_with("mcp.tools[2].context.pointer: a JSON pointer starts with '/'")
        );
        assert!(
            error(tool(json!({"pointer": "/a~x"})))
                .starts_with("mcp.tools[2].context.pointer: '~' is followed by 0 or 1")
        );
        assert!(
            error(tool(json!({"fixed": "projects/../.."})))
                .starts_with("mcp.tools[2].context.fixed: ")
        );
        assert!(error(tool(json!({"fixed": ""}))).starts_with("mcp.tools[2].context.fixed: "));
        // Unknown shapes fail while parsing, with the path too.
        let e = error(tool(json!({"argument": "/path"})));
        assert!(
            e.starts_with("tools[2].context: unknown variant `argument`"),
            "{e}"
        );
        let e = error(tool(json!("tools")));
        assert!(
            e.starts_with("tools[2].context: unknown variant `tools`"),
            "{e}"
        );
        let e = error(json!({"tools": [{"name": "", "action": "read", "context": "tool"}]}));
        assert!(e.starts_with("mcp.tools[0].name: "), "{e}");
        let e = error(json!({"tools": [{"name": "a", "action": "delete", "context": "tool"}]}));
        assert!(
            e.starts_with("tools[0].action: unknown variant `delete`"),
            "{e}"
        );
        let e = error(
            json!({"tools": [{"name": "a", "action": "read", "context": "tool",
                                         "cost": {"base": 10001}}]}),
        );
        assert!(e.starts_with("mcp.tools[0].cost.base: "), "{e}");
        let e = error(
            json!({"tools": [{"name": "a", "action": "read", "context": "tool",
                                         "cost": {"bands": [{"above": 10, "multiplier": 0}]}}]}),
        );
        assert!(
            e.starts_with("mcp.tools[0].cost.bands[0].multiplier: "),
            "{e}"
        );
        let e = error(json!({"resources": [{"uri_prefix": "ctx://", "context_prefix": "a/../b"}]}));
        assert!(e.starts_with("mcp.resources[0].context_prefix: "), "{e}");
        let e = error(json!({"resources": [{"uri_prefix": "ctx://", "context_prefix": "/a"}]}));
        assert!(e.starts_with("mcp.resources[0].context_prefix: "), "{e}");
        let e = error(json!({"free_methods": ["ping", "tools/*"]}));
        assert_eq!(
            e,
            "mcp.free_methods[1]: 'tools/*' covers tools/call, which the tool map decides"
        );
        let e = error(json!({"free_methods": ["*"]}));
        assert!(e.starts_with("mcp.free_methods[0]: "), "{e}");
    }

    #[test]
    fn first_matching_rule_wins() {
        let map = compile(json!({"tools": [
            {"name": "search_admin", "action": "admin", "context": "tool"},
            {"name": "search_*", "action": "read", "context": {"pointer": "/path"}},
            {"name": "*", "action": "write", "context": {"fixed": "projects/misc"}}
        ]}))
        .unwrap();
        assert_eq!(map.tool("search_admin").unwrap().action, Action::Admin);
        assert_eq!(map.tool("search_context").unwrap().action, Action::Read);
        assert_eq!(map.tool("write_context").unwrap().action, Action::Write);
        let empty = compile(json!({})).unwrap();
        assert!(empty.tool("anything").is_none());
    }

    #[test]
    fn resources_and_free_methods() {
        let map = compile(json!({"resources": [
            {"uri_prefix": "ctx://public/", "context_prefix": "public/"},
            {"uri_prefix": "ctx://", "context_prefix": ""}
        ]}))
        .unwrap();
        let (rule, rest) = map.resource("ctx://public/docs/a").unwrap();
        assert_eq!(
            (rule.context_prefix.clone(), rest),
            (vec!["public".to_owned()], "docs/a")
        );
        let (rule, rest) = map.resource("ctx://projects/x").unwrap();
        assert_eq!((rule.context_prefix.len(), rest), (0, "projects/x"));
        assert!(map.resource("CTX://projects/x").is_none());
        assert!(map.resource("file:///etc/passwd").is_none());
        for free in [
            "initialize",
            "ping",
            "notifications/initialized",
            "notifications/cancelled",
            "tools/list",
            "resources/list",
            "resources/templates/list",
            "prompts/list",
            "server/discover",
        ] {
            assert!(map.is_free(free), "{free}");
        }
        for paid in [
            "tools/call",
            "completion/complete",
            "logging/setLevel",
            "Ping",
            "ping/x",
        ] {
            assert!(!map.is_free(paid), "{paid}");
        }
    }

    #[test]
    fn costs_apply_the_highest_band() {
        let cost = Cost {
            base: 3,
            bands: vec![
                Band {
                    above: 1000,
                    multiplier: 2,
                },
                Band {
                    above: 10_000,
                    multiplier: 5,
                },
            ],
        };
        assert_eq!(cost.units(10), 3);
        assert_eq!(cost.units(1000), 3);
        assert_eq!(cost.units(1001), 6);
        assert_eq!(cost.units(20_000), 15);
        assert_eq!(Cost::FREE.units(u64::MAX), 0);
    }
}
