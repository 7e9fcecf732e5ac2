//! The tagging filter's plugin configuration (JSON).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::operation::OperationRule;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaggingConfig {
    /// Header name of each tag. Tags without a header are not set.
    #[serde(default)]
    pub headers: TagHeaders,
    /// Operation map used when the auth filter did not run before this one.
    #[serde(default)]
    pub operations: Vec<OperationRule>,
    /// The size `size` conditions see for a body of unknown length
    /// (chunked, or HTTP/2 without `content-length`), which is not known
    /// when the route is chosen. A size a client merely declares in a
    /// header is never used for routing.
    #[serde(default)]
    pub unknown_size_bytes: u64,
    /// Ordered rules: for each tag, the first matching rule that sets it wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Per-tenant tag values, used when no rule set the tag.
    #[serde(default)]
    pub tenants: BTreeMap<String, BTreeMap<String, String>>,
    /// Tags taken from identity claims (`tag -> claim`), when no rule or
    /// tenant entry set them. Claims must be forwarded by the auth filter
    /// (`filter_state_claims`); `tier`, `tenant`, `subject` always are.
    #[serde(default)]
    pub from_claims: BTreeMap<String, String>,
    /// Value of each tag when nothing else set it.
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
    /// Weighted A/B split into the `variant` tag.
    #[serde(default)]
    pub variant: Option<VariantConfig>,
}

/// Tag name -> request header. The built-in tags are `tenant`, `type`,
/// `priority`, `region`, `context_id` and `variant`; rules may define more.
#[derive(Debug, Clone, Deserialize)]
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
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Optional name, for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// The condition; a rule without one always matches.
    #[serde(default)]
    pub when: Option<ConditionConfig>,
    /// Tags this rule sets (tag -> value).
    pub set: BTreeMap<String, String>,
}

/// A condition: exactly one member set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ConditionConfig {
    All(Vec<ConditionConfig>),
    Any(Vec<ConditionConfig>),
    Not(Box<ConditionConfig>),
    /// HTTP method is one of these.
    Method(Vec<String>),
    /// Canonical request path.
    Path(StringMatchConfig),
    Header(HeaderConditionConfig),
    Claim(ClaimConditionConfig),
    /// Operation name is one of these.
    Operation(Vec<String>),
    /// Request body size in bytes: its `content-length`, 0 without a body,
    /// `unknown_size_bytes` when the length is not known yet.
    Size(SizeConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// Value is one of these.
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
}

/// A header test: `present`, or one of the string matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderConditionConfig {
    pub name: String,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
}

/// A claim test (`tenant`, `subject`, `tier`, `issuer`, or a claim the
/// auth filter forwards): one of the string matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConditionConfig {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeConfig {
    #[serde(default)]
    pub above: Option<u64>,
    #[serde(default)]
    pub below: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// What keeps a caller on one variant: `tenant` or `subject`.
    #[serde(default = "default_variant_key")]
    pub key: VariantKey,
    /// Changes the assignment for a new experiment.
    #[serde(default)]
    pub salt: String,
    pub variants: Vec<VariantWeight>,
}

fn default_variant_key() -> VariantKey {
    VariantKey::Tenant
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantKey {
    Tenant,
    Subject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantWeight {
    pub name: String,
    pub weight: u32,
}
