//! The `mcp` section of the plugin configuration (JSON), and its
//! validation.
//!
//! Parsing is strict, as everywhere: unknown fields are errors, and every
//! error names its field (`tools[2].context.pointer: ...`; the pipeline
//! puts the section in front: `mcp.tools[2]...`). The tool map's entries
//! (`tools`, `resources`, `free_methods`) are checked when compiled
//! ([`super::ToolMap::compile`]), the rest by [`McpConfig::validate`].

use serde::Deserialize;

use crate::config::ConfigError;
use crate::duration;
use crate::matcher::{Pattern, StringMatcher};
use crate::ratelimit::config::Band;
use crate::scope::Action;

/// MCP (Model Context Protocol: JSON-RPC 2.0 over Streamable HTTP)
/// endpoints: which paths they are, how their POST bodies are read, and
/// what each tool call, prompt and resource read needs and costs.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The request paths that are MCP endpoints, as string matchers on
    /// the path without its query: `[{"exact": "/mcp"}]` by default. At
    /// least one.
    #[serde(default = "defaults::paths")]
    pub paths: Vec<StringMatcher>,
    /// The longest POST body read, in bytes (1024 to 16777216); a longer
    /// one is refused with 413 unread.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// The tool map, in order: the first rule whose `name` matches a
    /// called tool decides what the call needs and costs. A tool no rule
    /// matches is refused (403 `mcp_unknown_tool`) and left out of
    /// `tools/list`.
    #[serde(default)]
    pub tools: Vec<ToolRule>,
    /// Resource URIs to context paths, in order: the first rule whose
    /// `uri_prefix` starts the URI decides. A `resources/read` needs
    /// `read` on the context path; a URI no rule covers is refused (403
    /// `mcp_unknown_resource`) and left out of `resources/list`.
    #[serde(default)]
    pub resources: Vec<ResourceRule>,
    /// Methods that need no scope and cost nothing, as name patterns (`*`
    /// any run of characters, `?` one). Every other method except
    /// `tools/call`, `prompts/get` and `resources/read` (which the maps
    /// above decide) needs `read` on `mcp/methods/<method>` and costs 1;
    /// `prompts/get` needs `read` on `mcp/prompts/<name>` and costs 1.
    #[serde(default = "defaults::free_methods")]
    pub free_methods: Vec<String>,
    /// The OAuth 2.0 protected resource metadata (RFC 9728) the gateway
    /// serves for the MCP server, so that clients find its authorization
    /// servers. Default: none served.
    #[serde(default)]
    pub resource_metadata: Option<ResourceMetadataConfig>,
    /// Sessions (`Mcp-Session-Id`, the 2025 revisions): how many the
    /// gateway keeps track of, and for how long.
    #[serde(default)]
    pub sessions: SessionsConfig,
}

/// One rule of the tool map.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// The tool's name, or a pattern of names: `*` stands for any run of
    /// characters, `?` for exactly one (`search_*`). Case-sensitive.
    pub name: String,
    /// What a call does to its context: `read`, `write` or `admin`.
    pub action: Action,
    /// Where the call's context path comes from: `{"pointer": "/path"}`
    /// (an argument), `{"fixed": "projects/x"}`, or `"tool"` (the path
    /// `mcp/tools/<name>`).
    pub context: ToolContext,
    /// What a call costs (default: 1, whatever its size).
    #[serde(default)]
    pub cost: CostConfig,
}

/// Where a tool call's context path comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ToolContext {
    /// An RFC 6901 JSON pointer into the call's `params.arguments`
    /// (`/path`, `/target/context`). The value there must be a string in
    /// canonical context-path form (`projects/engineering/x`: no empty or
    /// dot segments, no escapes); a call without it is refused (400
    /// `mcp_invalid_context`).
    Pointer(String),
    /// This context path, whatever the arguments.
    Fixed(String),
    /// The path `mcp/tools/<name>`, for tools that act on no context.
    Tool,
}

/// What a call or read costs, in read-equivalents: `base` times the
/// multiplier of the highest band the request body's size (in bytes) is
/// above.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// The cost of one call (0-10000).
    #[serde(default = "defaults::one")]
    pub base: u32,
    /// Multipliers by the body's size, as the rate limiter's
    /// `payload_bands`: a band applies above `above` bytes.
    #[serde(default)]
    pub bands: Vec<Band>,
}

impl Default for CostConfig {
    fn default() -> CostConfig {
        CostConfig {
            base: 1,
            bands: Vec::new(),
        }
    }
}

/// Resource URIs that map to context paths: a URI starting with
/// `uri_prefix` has the context path `context_prefix` followed by the rest
/// of the URI (percent-decoded once, in canonical form).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ResourceRule {
    /// The start of the URIs this rule covers (`ctx://`), compared byte
    /// for byte: a URI in another spelling (`CTX://`) is not covered.
    pub uri_prefix: String,
    /// The context path the rest of the URI is appended to: `""` (the rest
    /// is the whole path) or a canonical prefix such as `projects/`.
    #[serde(default)]
    pub context_prefix: String,
    /// What a read costs (default: 1, whatever its size).
    #[serde(default)]
    pub cost: CostConfig,
}

/// OAuth 2.0 protected resource metadata (RFC 9728) for the MCP server.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct ResourceMetadataConfig {
    /// The MCP server's canonical resource identifier (RFC 8707), which
    /// tokens are issued for: an absolute `https` (or `http`) URL without
    /// fragment, such as `https://mcp.example.com/mcp`.
    pub resource: String,
    /// The authorization servers (issuer URLs) clients get tokens from.
    /// At least one.
    pub authorization_servers: Vec<String>,
    /// The scopes clients may ask for (`read:projects/*`, ...).
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// How tokens may be sent (RFC 6750): `header`, `body`, `query`.
    #[serde(default = "defaults::bearer_methods_supported")]
    pub bearer_methods_supported: Vec<String>,
}

/// Sessions (`Mcp-Session-Id`) the gateway keeps track of.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Sessions kept per worker (1-1000000); beyond it the least recently
    /// used is forgotten.
    pub max_entries: usize,
    /// How long a session unused is kept (1 s to 7 days).
    #[serde(deserialize_with = "duration::seconds")]
    #[cfg_attr(feature = "schema", schemars(with = "duration::Seconds"))]
    pub ttl_seconds: u64,
}

impl Default for SessionsConfig {
    fn default() -> SessionsConfig {
        SessionsConfig {
            max_entries: 10_000,
            ttl_seconds: 3600,
        }
    }
}

mod defaults {
    use super::{Pattern, StringMatcher};

    pub fn paths() -> Vec<StringMatcher> {
        vec![StringMatcher::new(Pattern::Exact("/mcp".into()))]
    }
    pub fn max_body_bytes() -> u64 {
        1024 * 1024
    }
    pub fn one() -> u32 {
        1
    }
    pub fn free_methods() -> Vec<String> {
        [
            "initialize",
            "ping",
            "notifications/*",
            "tools/list",
            "resources/list",
            "resources/templates/list",
            "prompts/list",
            // 2026-07-28's replacement of `initialize`.
            "server/discover",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn bearer_methods_supported() -> Vec<String> {
        vec!["header".into()]
    }
}

/// The RFC 6750 ways of sending a bearer token.
const BEARER_METHODS: [&str; 3] = ["header", "body", "query"];

impl McpConfig {
    /// Checks what serde cannot, except the tool map (checked when
    /// compiled).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.paths.is_empty() {
            return Err(ConfigError::new("paths", "name at least one MCP endpoint"));
        }
        if let Some(i) = self.paths.iter().position(StringMatcher::is_empty_list) {
            return Err(ConfigError::new(
                format!("paths[{i}]"),
                "one_of: [] matches no path",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if let Some(metadata) = &self.resource_metadata {
            metadata.validate()?;
        }
        if !(1..=1_000_000).contains(&self.sessions.max_entries) {
            return Err(ConfigError::new(
                "sessions.max_entries",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=7 * 24 * 3600).contains(&self.sessions.ttl_seconds) {
            return Err(ConfigError::new(
                "sessions.ttl_seconds",
                "must be between 1 s and 7 days",
            ));
        }
        Ok(())
    }

    /// Is `path` (without its query) an MCP endpoint?
    pub fn is_endpoint(&self, path: &str) -> bool {
        self.paths.iter().any(|m| m.matches(path))
    }
}

impl ResourceMetadataConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let field = |f: &str| format!("resource_metadata.{f}");
        check_url(&field("resource"), &self.resource)?;
        if self.authorization_servers.is_empty() {
            return Err(ConfigError::new(
                field("authorization_servers"),
                "name at least one authorization server",
            ));
        }
        for (i, server) in self.authorization_servers.iter().enumerate() {
            check_url(&field(&format!("authorization_servers[{i}]")), server)?;
        }
        for (i, scope) in self.scopes_supported.iter().enumerate() {
            let token = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
            if scope.is_empty() || !scope.chars().all(token) {
                return Err(ConfigError::new(
                    field(&format!("scopes_supported[{i}]")),
                    "a scope is a non-empty run of printable ASCII without spaces, '\"' or '\\'",
                ));
            }
        }
        for (i, method) in self.bearer_methods_supported.iter().enumerate() {
            let f = field(&format!("bearer_methods_supported[{i}]"));
            if !BEARER_METHODS.contains(&method.as_str()) {
                return Err(ConfigError::new(f, "must be header, body or query"));
            }
            if self
                .bearer_methods_supported
                .iter()
                .take(i)
                .any(|m| m == method)
            {
                return Err(ConfigError::new(f, format!("'{method}' is listed twice")));
            }
        }
        Ok(())
    }

    /// The metadata document (`application/json`).
    pub fn document(&self) -> serde_json::Value {
        let mut document = serde_json::json!({
            "resource": self.resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": self.bearer_methods_supported,
        });
        if !self.scopes_supported.is_empty()
            && let Some(members) = document.as_object_mut()
        {
            members.insert(
                "scopes_supported".into(),
                serde_json::json!(self.scopes_supported),
            );
        }
        document
    }

    /// Where the document is served (RFC 9728 section 3.1):
    /// `/.well-known/oauth-protected-resource` followed by the resource's
    /// path and query, without a trailing `/` right after the host
    /// (`https://mcp.example.com/mcp` ->
    /// `/.well-known/oauth-protected-resource/mcp`).
    pub fn well_known_path(&self) -> String {
        let after_scheme = self.resource.split_once("://").map_or("", |(_, rest)| rest);
        let path = after_scheme
            .find(['/', '?'])
            .and_then(|start| after_scheme.get(start..))
            .unwrap_or("");
        let path = if path == "/" { "" } else { path };
        format!("/.well-known/oauth-protected-resource{path}")
    }
}

/// An absolute `https` or `http` URL without fragment or user
/// information, in printable ASCII, with a host.
fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(ConfigError::new(
            field,
            format!("'{url}' is not an absolute https or http URL"),
        ));
    };
    if !url.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ConfigError::new(
            field,
            "a URL is printable ASCII without spaces (percent-encode the rest)",
        ));
    }
    if url.contains('#') {
        return Err(ConfigError::new(field, "a URL here has no fragment ('#')"));
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(ConfigError::new(
            field,
            "a URL here has no user information ('@')",
        ));
    }
    match split_authority(authority) {
        Some((host, _)) if !host.is_empty() => Ok(()),
        Some(_) => Err(ConfigError::new(field, format!("'{url}' has no host"))),
        None => Err(ConfigError::new(
            field,
            format!("'{url}' has an invalid host or port"),
        )),
    }
}

/// `host[:port]` or `[v6]:port` into the host and the port, if any;
/// `None` when the port is not digits or a `[` is not closed.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (v6, after) = bracketed.split_once(']')?;
            if v6.is_empty() {
                return None;
            }
            match after {
                "" => (authority, None),
                after => (
                    authority.get(..v6.len() + 2)?,
                    Some(after.strip_prefix(':')?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => None,
        _ => Some((host, port)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{in_section, parse_json};

    fn config(value: serde_json::Value) -> Result<McpConfig, String> {
        let config: McpConfig =
            parse_json(value.to_string().as_bytes()).map_err(|e| e.to_string())?;
        config
            .validate()
            .map_err(in_section("mcp"))
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn error(value: serde_json::Value) -> String {
        config(value).unwrap_err()
    }

    fn metadata(extra: serde_json::Value) -> serde_json::Value {
        let mut m = json!({
            "resource": "https://mcp.example.com/mcp",
            "authorization_servers": ["https://auth.example.com"]
        });
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        json!({"resource_metadata": m})
    }

    #[test]
    fn defaults() {
        let c = config(json!({})).unwrap();
        assert!(c.is_endpoint("/mcp"));
        assert!(!c.is_endpoint("/mcp/"));
        assert!(!c.is_endpoint("/v1/mcp"));
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert!(c.tools.is_empty() && c.resources.is_empty());
        assert_eq!(
            c.free_methods,
            [
                "initialize",
                "ping",
                "notifications/*",
                "tools/list",
                "resources/list",
                "resources/templates/list",
                "prompts/list",
                "server/discover"
            ]
        );
        assert!(c.resource_metadata.is_none());
        assert_eq!(
            (c.sessions.max_entries, c.sessions.ttl_seconds),
            (10_000, 3600)
        );
    }

    #[test]
    fn a_full_section_parses() {
        let c = config(json!({
            "paths": [{"exact": "/mcp"}, {"prefix": "/tenants/", "ignore_case": true}],
            "max_body_bytes": 262144,
            "tools": [
                {"name": "search_*", "action": "read", "context": {"pointer": "/path"},
                 "cost": {"base": 2, "bands": [{"above": 65536, "multiplier": 3}]}},
                {"name": "admin_reindex", "action": "admin", "context": {"fixed": "projects"}},
                {"name": "server_time", "action": "read", "context": "tool"}
            ],
            "resources": [{"uri_prefix": "ctx://", "context_prefix": "projects/"}],
            "free_methods": ["initialize", "notifications/*"],
            "resource_metadata": {
                "resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://auth.example.com/realms/ctx"],
                "scopes_supported": ["read:projects/*", "write:projects/*"]
            },
            "sessions": {"max_entries": 500, "ttl_seconds": "30m"}
        }))
        .unwrap();
        assert!(c.is_endpoint("/TENANTS/a/mcp"));
        assert_eq!(c.tools[0].context, ToolContext::Pointer("/path".into()));
        assert_eq!(c.tools[2].context, ToolContext::Tool);
        assert_eq!(c.tools[0].cost.base, 2);
        assert_eq!(c.tools[1].cost, CostConfig::default());
        assert_eq!(c.sessions.ttl_seconds, 1800);
    }

    #[test]
    fn errors_name_the_field() {
        let e = error(json!({"paths": []}));
        assert!(e.starts_with("mcp.paths: "), "{e}");
        let e = error(json!({"paths": [{"exact": "/mcp"}, {"one_of": []}]}));
        assert!(e.starts_with("mcp.paths[1]: "), "{e}");
        let e = error(json!({"max_body_bytes": 100}));
        assert!(e.starts_with("mcp.max_body_bytes: "), "{e}");
        let e = error(json!({"sessions": {"max_entries": 0}}));
        assert!(e.starts_with("mcp.sessions.max_entries: "), "{e}");
        let e = error(json!({"sessions": {"ttl_seconds": "8d"}}));
        assert!(
            e.starts_with("sessions.ttl_seconds: invalid duration"),
            "{e}"
        );
        let e = error(json!({"sessions": {"ttl_seconds": "0s"}}));
        assert!(e.starts_with("mcp.sessions.ttl_seconds: "), "{e}");
        let e = error(json!({"tool": []}));
        assert!(e.starts_with("tool: unknown field `tool`"), "{e}");
        let e = error(
            json!({"tools": [{"name": "a", "action": "read", "context": "tool", "scope": "x"}]}),
        );
        assert!(e.starts_with("tools[0].scope: unknown field"), "{e}");
        let e = error(json!({"tools": [{"name": "a", "action": "read"}]}));
        assert!(e.contains("missing field `context`"), "{e}");
    }

    #[test]
    fn resource_metadata_is_checked() {
        assert!(config(metadata(json!({}))).is_ok());
        for (extra, field) in [
            (json!({"resource": "mcp.example.com/mcp"}), "resource"),
            (json!({"resource": "ftp://mcp.example.com/mcp"}), "resource"),
            (
                json!({"resource": "HTTPS://mcp.example.com/mcp"}),
                "resource",
            ),
            (
                json!({"resource": "https://mcp.example.com/mcp#top"}),
                "resource",
            ),
            (json!({"resource": "https:///mcp"}), "resource"),
            (
                json!({"resource": "https://user@mcp.example.com/mcp"}),
                "resource",
            ),
            (
                json!({"resource": "https://mcp.example.com:x/mcp"}),
                "resource",
            ),
            (
                json!({"resource": "https://mcp.example.com/my mcp"}),
                "resource",
            ),
            (json!({"resource": "https://[::1/mcp"}), "resource"),
            (
                json!({"authorization_servers": []}),
                "authorization_servers",
            ),
            (
                json!({"authorization_servers": ["https://a", "auth"]}),
                "authorization_servers[1]",
            ),
            (
                json!({"scopes_supported": ["read:x", "read x"]}),
                "scopes_supported[1]",
            ),
            (json!({"scopes_supported": [""]}), "scopes_supported[0]"),
            (
                json!({"bearer_methods_supported": ["cookie"]}),
                "bearer_methods_supported[0]",
            ),
            (
                json!({"bearer_methods_supported": ["header", "header"]}),
                "bearer_methods_supported[1]",
            ),
        ] {
            let e = error(metadata(extra.clone()));
            assert!(
                e.starts_with(&format!("mcp.resource_metadata.{field}: ")),
                "{extra}: {e}"
            );
        }
        for resource in [
            "http://127.0.0.1:10000/mcp",
            "https://[::1]:8443/mcp",
            "https://[::1]",
            "https://mcp.example.com",
            "https://mcp.example.com/mcp?tenant=a",
        ] {
            assert!(
                config(metadata(json!({"resource": resource}))).is_ok(),
                "{resource}"
            );
        }
    }

    /// Every field of the section is documented: the schema (and the
    /// README's reference made from it) describes each one.
    #[cfg(feature = "schema")]
    #[test]
    fn the_schema_describes_every_field() {
        let schema = schemars::generate::SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<McpConfig>();
        let schema = serde_json::to_value(&schema).unwrap();
        let mut objects = vec![&schema];
        objects.extend(schema["$defs"].as_object().unwrap().values());
        let mut fields = 0;
        for object in objects {
            for (name, property) in object["properties"].as_object().into_iter().flatten() {
                let described = property.get("description").is_some()
                    || property.get("$ref").is_some()
                    || property["allOf"].get(0).is_some();
                assert!(described, "{name} has no description: {property}");
                fields += 1;
            }
        }
        assert!(fields >= 20, "{fields}");
        assert_eq!(schema["properties"]["max_body_bytes"]["default"], 1_048_576);
        assert_eq!(
            schema["properties"]["paths"]["default"],
            json!([{"exact": "/mcp"}])
        );
        let context = serde_json::to_string(&schema["$defs"]["ToolContext"]).unwrap();
        for variant in ["pointer", "fixed", "tool"] {
            assert!(context.contains(variant), "{context}");
        }
    }

    #[test]
    fn the_metadata_document_and_where_it_is_served() {
        let c = config(metadata(json!({"scopes_supported": ["read:projects/*"]}))).unwrap();
        let m = c.resource_metadata.unwrap();
        assert_eq!(
            m.document(),
            json!({
                "resource": "https://mcp.example.com/mcp",
                "authorization_servers": ["https://auth.example.com"],
                "scopes_supported": ["read:projects/*"],
                "bearer_methods_supported": ["header"]
            })
        );
        assert_eq!(
            m.well_known_path(),
            "/.well-known/oauth-protected-resource/mcp"
        );
        let c = config(metadata(json!({}))).unwrap();
        let m = c.resource_metadata.unwrap();
        assert!(m.document().get("scopes_supported").is_none());
        let at = |resource: &str| {
            ResourceMetadataConfig {
                resource: resource.into(),
                ..m.clone()
            }
            .well_known_path()
        };
        assert_eq!(at("https://h"), "/.well-known/oauth-protected-resource");
        assert_eq!(at("https://h/"), "/.well-known/oauth-protected-resource");
        assert_eq!(
            at("https://h:8443/a/b"),
            "/.well-known/oauth-protected-resource/a/b"
        );
        assert_eq!(
            at("https://h?x=1"),
            "/.well-known/oauth-protected-resource?x=1"
        );
    }
}
