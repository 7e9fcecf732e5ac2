//! The tagging filter's plugin configuration (JSON).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::matcher::{NamedMatcher, StringMatcher};
use crate::operation::OperationRule;

/// Trusted routing tags: headers the gateway sets, after removing any
/// header of the same name the client sent.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TaggingConfig {
    /// Header name of each tag (lower case, all distinct). Tags without a
    /// header are not set.
    #[serde(default)]
    pub headers: TagHeaders,
    /// Operation map used when the auth stage did not run (otherwise the
    /// operation comes from it).
    #[serde(default)]
    pub operations: Vec<OperationRule>,
    /// The size (bytes) `size` conditions see for a body of unknown length
    /// (chunked, or HTTP/2 without `content-length`), which is not known
    /// when the route is chosen. A size a client merely declares in a
    /// header is never used for routing.
    #[serde(default)]
    pub unknown_size_bytes: u64,
    /// Ordered rules: for each tag, the first matching rule that sets it
    /// wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Per-tenant tag values (`tenant -> tag -> value`), used when no rule
    /// set the tag.
    #[serde(default)]
    pub tenants: BTreeMap<String, BTreeMap<String, String>>,
    /// Tags taken from identity claims (`tag -> claim`), when no rule or
    /// tenant entry set them. Claims must be forwarded by the auth stage
    /// (`filter_state_claims`); `tier`, `tenant`, `subject` always are.
    #[serde(default)]
    pub from_claims: BTreeMap<String, String>,
    /// Value of each tag when nothing else set it (`tag -> value`).
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
    /// Weighted A/B split into the `variant` tag (default: none).
    #[serde(default)]
    pub variant: Option<VariantConfig>,
}

/// Tag name -> request header. The built-in tags are `tenant`, `type`,
/// `priority`, `region`, `context_id`, `variant`, `mcp_method` and
/// `mcp_tool`; rules may define more.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(transparent)]
pub struct TagHeaders(pub BTreeMap<String, String>);

impl Default for TagHeaders {
    fn default() -> Self {
        TagHeaders(
            [
                ("tenant", "x-context-tenant"),
                ("type", "x-context-type"),
                ("priority", "x-context-priority"),
                ("region", "x-context-region"),
                ("context_id", "x-context-id"),
                ("variant", "x-context-variant"),
                ("mcp_method", "x-mcp-method"),
                ("mcp_tool", "x-mcp-tool"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
    }
}

/// A tagging rule: when the condition holds, set these tags.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Optional name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// The condition; a rule without one always matches.
    #[serde(default)]
    pub when: Option<ConditionConfig>,
    /// Tags this rule sets (`tag -> value`); each tag needs a header in
    /// `headers`.
    pub set: BTreeMap<String, String>,
}

/// A condition: exactly one member set.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ConditionConfig {
    /// Every condition holds (at least one).
    All(Vec<ConditionConfig>),
    /// At least one condition holds (at least one).
    Any(Vec<ConditionConfig>),
    /// The condition does not hold.
    Not(Box<ConditionConfig>),
    /// The HTTP method is one of these.
    Method(Vec<String>),
    /// The canonical request path (`/` + the decoded segments joined by
    /// `/`) matches.
    Path(StringMatcher),
    /// A request header (lower-case name) is present, absent, or matches.
    Header(NamedMatcher),
    /// An identity claim matches: `tenant`, `subject`, `tier`, `issuer`,
    /// or a claim the auth stage forwards (`filter_state_claims`).
    Claim(NamedMatcher),
    /// The operation's name is one of these.
    Operation(Vec<String>),
    /// The request body's size in bytes: its `content-length`, 0 without a
    /// body, `unknown_size_bytes` when the length is not known yet.
    Size(SizeConfig),
}

/// Body-size bounds, exclusive; at least one.
#[derive(Debug, Clone, Copy, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct SizeConfig {
    /// The size is larger than this many bytes.
    #[serde(default)]
    pub above: Option<u64>,
    /// The size is smaller than this many bytes.
    #[serde(default)]
    pub below: Option<u64>,
}

/// A stable weighted split of callers into variants.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// What keeps a caller on one variant: `tenant` or `subject`.
    #[serde(default = "default_variant_key")]
    pub key: VariantKey,
    /// Hashed with the key: a new salt reshuffles callers for a new
    /// experiment.
    #[serde(default)]
    pub salt: String,
    /// The variants and their weights (at least one positive weight).
    pub variants: Vec<VariantWeight>,
}

fn default_variant_key() -> VariantKey {
    VariantKey::Tenant
}

/// What a variant assignment is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "snake_case")]
pub enum VariantKey {
    /// The verified tenant: a tenant always lands on one variant.
    Tenant,
    /// The token's subject.
    Subject,
}

/// One variant of a split.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct VariantWeight {
    /// The `variant` tag's value.
    pub name: String,
    /// Relative share of callers.
    pub weight: u32,
}
