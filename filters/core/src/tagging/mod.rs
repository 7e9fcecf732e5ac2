//! Trusted routing tags.
//!
//! Istio VirtualServices (and Envoy route tables) route on request headers.
//! This filter computes tags from what the gateway knows for sure (the
//! verified identity, the operation, the request) and sets them as headers
//! after removing any header of the same name the client sent, so a route
//! match on `x-context-type: large-context` can only ever see a value the
//! gateway chose. Envoy re-selects the route after a filter changes request
//! headers, so the tags steer routing.
//!
//! Each tag's value comes from, in order: the first rule (in configuration
//! order) that matches and sets it; the tenant table; a claim of the
//! identity (`from_claims`); the default. `tenant` and `context_id` come
//! from the identity and the operation when nothing else set them,
//! `variant` from a stable hash of the tenant (or subject), and
//! `mcp_method` and `mcp_tool` from the call an MCP request's standard
//! headers declare (its body is held to agree with them).

pub mod config;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;

use crate::config::{ConfigError, check_header_name, parse_json};
use crate::contract::{Caller, MatchedOperation};
use crate::http::{BodySize, RequestHead};
use crate::matcher::{NamedMatcher, StringMatcher};
use crate::mcp::Declared;
use crate::operation::{OperationMap, OperationMatch};
use crate::path::{canonical_segments, split_path_query};
use config::{ConditionConfig, TaggingConfig, VariantConfig, VariantKey};

#[derive(Debug, Clone)]
enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Method(Vec<String>),
    Path(StringMatcher),
    Header(NamedMatcher),
    Claim(NamedMatcher),
    Operation(Vec<String>),
    Size {
        above: Option<u64>,
        below: Option<u64>,
    },
}

/// Deepest nesting of all/any/not accepted.
const MAX_DEPTH: usize = 16;

impl Condition {
    fn compile(
        field: &str,
        config: &ConditionConfig,
        depth: usize,
    ) -> Result<Condition, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(field, "conditions are nested too deeply"));
        }
        let list = |name: &str, items: &[ConditionConfig]| -> Result<Vec<Condition>, ConfigError> {
            if items.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    "must not be empty",
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, c)| Condition::compile(&format!("{field}.{name}[{i}]"), c, depth + 1))
                .collect()
        };
        Ok(match config {
            ConditionConfig::All(items) => Condition::All(list("all", items)?),
            ConditionConfig::Any(items) => Condition::Any(list("any", items)?),
            ConditionConfig::Not(inner) => Condition::Not(Box::new(Condition::compile(
                &format!("{field}.not"),
                inner,
                depth + 1,
            )?)),
            ConditionConfig::Method(methods) => {
                if methods.is_empty() {
                    return Err(ConfigError::new(
                        format!("{field}.method"),
                        "must not be empty",
                    ));
                }
                Condition::Method(methods.clone())
            }
            ConditionConfig::Path(m) => Condition::Path(m.clone()),
            ConditionConfig::Header(h) => {
                check_header_name(&format!("{field}.header.name"), &h.name)?;
                Condition::Header(h.clone())
            }
            ConditionConfig::Claim(c) => {
                if c.name.is_empty() {
                    return Err(ConfigError::new(
                        format!("{field}.claim.name"),
                        "must not be empty",
                    ));
                }
                Condition::Claim(c.clone())
            }
            ConditionConfig::Operation(names) => Condition::Operation(names.clone()),
            ConditionConfig::Size(s) => {
                if s.above.is_none() && s.below.is_none() {
                    return Err(ConfigError::new(
                        format!("{field}.size"),
                        "set above and/or below",
                    ));
                }
                Condition::Size {
                    above: s.above,
                    below: s.below,
                }
            }
        })
    }

    fn eval(&self, facts: &Facts<'_, '_>) -> bool {
        match self {
            Condition::All(items) => items.iter().all(|c| c.eval(facts)),
            Condition::Any(items) => items.iter().any(|c| c.eval(facts)),
            Condition::Not(inner) => !inner.eval(facts),
            Condition::Method(methods) => methods.iter().any(|m| m == facts.head.method),
            Condition::Path(m) => m.matches(facts.path()),
            Condition::Header(m) => m.matches_header(facts.head),
            Condition::Claim(m) => m.matches(facts.claim(&m.name)),
            Condition::Operation(names) => facts
                .operation
                .as_ref()
                .is_some_and(|op| names.contains(&op.name)),
            Condition::Size { above, below } => {
                let size = facts.size;
                above.is_none_or(|a| size > a) && below.is_none_or(|b| size < b)
            }
        }
    }
}

struct Rule {
    when: Option<Condition>,
    set: Vec<(String, String)>,
}

/// What the tagger knows about a request: its head (`'h`), and what the
/// auth stage established (`'a`, which the tags may borrow).
pub struct TagInput<'h, 'a> {
    pub head: RequestHead<'h>,
    pub identity: Option<&'a Caller>,
    pub operation: Option<&'a MatchedOperation>,
    /// The request headers ended the stream (no body).
    pub end_of_stream: bool,
    /// The MCP call the request's standard headers declare.
    pub mcp: Option<&'a Declared>,
}

struct Facts<'h, 'a> {
    head: &'h RequestHead<'h>,
    identity: Option<&'a Caller>,
    operation: Option<Cow<'a, MatchedOperation>>,
    /// Canonical path, `/`-joined: computed only if a rule asks for it.
    path: OnceCell<String>,
    size: u64,
}

impl Facts<'_, '_> {
    fn path(&self) -> &str {
        self.path.get_or_init(|| {
            let (raw_path, _) = split_path_query(self.head.path);
            canonical_segments(raw_path)
                .map_or_else(|_| raw_path.to_owned(), |s| format!("/{}", s.join("/")))
        })
    }

    fn claim(&self, name: &str) -> Option<&str> {
        claim_of(self.identity?, name)
    }
}

/// The tags of one request, and the header changes that carry them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags<'a> {
    /// Owned headers the client sent: removed before tagging.
    pub remove_headers: Vec<&'a str>,
    /// One per tag with a value, in the order of `headers`.
    pub values: Vec<Tag<'a>>,
}

/// A tag's value and the header that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag<'a> {
    pub name: &'a str,
    pub header: &'a str,
    pub value: Cow<'a, str>,
}

/// The value of each tag, first come first served (tags without a header
/// are never sent, so they take no slot).
struct Slots<'a> {
    headers: &'a [(String, String)],
    values: Vec<Option<Cow<'a, str>>>,
}

impl<'a> Slots<'a> {
    fn new(headers: &'a [(String, String)]) -> Slots<'a> {
        Slots {
            headers,
            values: vec![None; headers.len()],
        }
    }

    /// The slot of `tag`, if it is still empty.
    fn open(&mut self, tag: &str) -> Option<&mut Option<Cow<'a, str>>> {
        let i = self.headers.iter().position(|(t, _)| t == tag)?;
        self.values.get_mut(i).filter(|v| v.is_none())
    }

    fn offer(&mut self, tag: &str, value: impl FnOnce() -> Cow<'a, str>) {
        if let Some(slot) = self.open(tag) {
            *slot = Some(value());
        }
    }

    fn into_tags(self) -> Vec<Tag<'a>> {
        self.headers
            .iter()
            .zip(self.values)
            .filter_map(|((name, header), value)| {
                Some(Tag {
                    name,
                    header,
                    value: value?,
                })
            })
            .collect()
    }
}

pub struct Tagger {
    headers: Vec<(String, String)>,
    operations: Option<OperationMap>,
    unknown_size_bytes: u64,
    rules: Vec<Rule>,
    tenants: BTreeMap<String, BTreeMap<String, String>>,
    from_claims: BTreeMap<String, String>,
    defaults: BTreeMap<String, String>,
    variant: Option<Split>,
}

impl Tagger {
    pub fn from_json(json: &[u8]) -> Result<Tagger, ConfigError> {
        Tagger::new(parse_json(json)?)
    }

    pub fn new(config: TaggingConfig) -> Result<Tagger, ConfigError> {
        let mut headers: Vec<(String, String)> = Vec::new();
        for (tag, header) in &config.headers.0 {
            check_header_name(&format!("headers.{tag}"), header)?;
            if headers.iter().any(|(_, h)| h == header) {
                return Err(ConfigError::new(
                    format!("headers.{tag}"),
                    format!("'{header}' is used by two tags"),
                ));
            }
            headers.push((tag.clone(), header.clone()));
        }
        let known = |field: &str, tag: &str| -> Result<(), ConfigError> {
            if config.headers.0.contains_key(tag) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("tag '{tag}' has no header in headers"),
                ))
            }
        };
        let valid_value = |field: &str, value: &str| -> Result<(), ConfigError> {
            if crate::auth::identity::is_valid_label(value) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("'{value}' is not a valid header value"),
                ))
            }
        };
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let field = format!("rules[{i}]");
            if rule.set.is_empty() {
                return Err(ConfigError::new(
                    format!("{field}.set"),
                    "must set at least one tag",
                ));
            }
            for (tag, value) in &rule.set {
                known(&format!("{field}.set.{tag}"), tag)?;
                valid_value(&format!("{field}.set.{tag}"), value)?;
            }
            let when = rule
                .when
                .as_ref()
                .map(|c| Condition::compile(&format!("{field}.when"), c, 0))
                .transpose()?;
            rules.push(Rule {
                when,
                set: rule
                    .set
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        for (tenant, tags) in &config.tenants {
            for (tag, value) in tags {
                known(&format!("tenants.{tenant}.{tag}"), tag)?;
                valid_value(&format!("tenants.{tenant}.{tag}"), value)?;
            }
        }
        for tag in config.from_claims.keys() {
            known(&format!("from_claims.{tag}"), tag)?;
        }
        for (tag, value) in &config.defaults {
            known(&format!("defaults.{tag}"), tag)?;
            valid_value(&format!("defaults.{tag}"), value)?;
        }
        if let Some(v) = &config.variant {
            known("variant", "variant")?;
            if v.variants.is_empty()
                || v.variants.iter().map(|w| u64::from(w.weight)).sum::<u64>() == 0
            {
                return Err(ConfigError::new(
                    "variant.variants",
                    "give at least one variant with a positive weight",
                ));
            }
            for (i, w) in v.variants.iter().enumerate() {
                valid_value(&format!("variant.variants[{i}].name"), &w.name)?;
            }
        }
        // Only needed when the auth filter did not classify the request.
        let operations = (!config.operations.is_empty())
            .then(|| OperationMap::compile(&config.operations))
            .transpose()?;
        Ok(Tagger {
            headers,
            operations,
            unknown_size_bytes: config.unknown_size_bytes,
            rules,
            tenants: config.tenants,
            from_claims: config.from_claims,
            defaults: config.defaults,
            variant: config.variant.as_ref().map(Split::new),
        })
    }

    /// Computes the tags of a request.
    pub fn tag<'a>(&'a self, input: &TagInput<'_, 'a>) -> Tags<'a> {
        let head = &input.head;
        let operation = match input.operation {
            Some(op) => Some(Cow::Borrowed(op)),
            None => match self
                .operations
                .as_ref()
                .map(|m| m.lookup_raw(head.method, head.path))
            {
                Some(OperationMatch::Matched(op)) => Some(Cow::Owned(MatchedOperation::from(&op))),
                _ => None,
            },
        };
        let size = match BodySize::of(head, input.end_of_stream) {
            BodySize::Empty => 0,
            BodySize::Known(length) => length,
            BodySize::Unknown => self.unknown_size_bytes,
        };
        let facts = Facts {
            head,
            identity: input.identity,
            operation,
            path: OnceCell::new(),
            size,
        };

        let mut slots = Slots::new(&self.headers);
        for rule in &self.rules {
            if rule.when.as_ref().is_none_or(|c| c.eval(&facts)) {
                for (tag, value) in &rule.set {
                    slots.offer(tag, || Cow::Borrowed(value));
                }
            }
        }
        if let Some(identity) = input.identity {
            if let Some(tags) = self.tenants.get(&identity.tenant) {
                for (tag, value) in tags {
                    slots.offer(tag, || Cow::Borrowed(value));
                }
            }
            for (tag, claim) in &self.from_claims {
                if let Some(slot) = slots.open(tag)
                    && let Some(value) = claim_of(identity, claim)
                        .filter(|v| crate::auth::identity::is_valid_label(v))
                {
                    *slot = Some(Cow::Borrowed(value));
                }
            }
            slots.offer("tenant", || Cow::Borrowed(&identity.tenant));
            if let Some(variant) = &self.variant {
                let key = match variant.key {
                    VariantKey::Tenant => &identity.tenant,
                    VariantKey::Subject => &identity.subject,
                };
                slots.offer("variant", || Cow::Borrowed(variant.pick(key)));
            }
        }
        if let Some(call) = input.mcp {
            slots.offer("mcp_method", || Cow::Borrowed(&call.method));
            if let Some(tool) = &call.tool {
                slots.offer("mcp_tool", || Cow::Borrowed(tool));
            }
        }
        if let Some(op) = facts.operation.filter(|op| !op.context.is_empty()) {
            slots.offer("context_id", || match op {
                Cow::Borrowed(op) => Cow::Borrowed(&op.context),
                Cow::Owned(op) => Cow::Owned(op.context),
            });
        }
        for (tag, value) in &self.defaults {
            slots.offer(tag, || Cow::Borrowed(value));
        }

        let remove_headers = self
            .headers
            .iter()
            .filter(|(_, h)| head.has_header(h))
            .map(|(_, h)| h.as_str())
            .collect();
        Tags {
            remove_headers,
            values: slots.into_tags(),
        }
    }
}

/// A claim of the caller, by the name a `claim` condition or `from_claims`
/// gives it.
fn claim_of<'a>(identity: &'a Caller, name: &str) -> Option<&'a str> {
    match name {
        "tenant" => Some(&identity.tenant),
        "subject" => Some(&identity.subject),
        "tier" => Some(&identity.tier),
        "issuer" => Some(&identity.issuer),
        other => identity.claims.get(other).map(String::as_str),
    }
}

/// A weighted split of callers into variants, compiled: the hash key
/// derived from the salt once.
pub struct Split {
    key: VariantKey,
    /// SipHash-1-3 keys: the first 16 bytes of the salt's SHA-256.
    k0: u64,
    k1: u64,
    /// Each variant's name and weight, in config order.
    variants: Vec<(String, u64)>,
    total: u64,
}

impl Split {
    pub fn new(config: &VariantConfig) -> Split {
        let digest = hmac_sha256::Hash::hash(config.salt.as_bytes());
        let half = |at: usize| {
            let mut bytes = [0u8; 8];
            if let Some(part) = digest.get(at..at + 8) {
                bytes.copy_from_slice(part);
            }
            u64::from_le_bytes(bytes)
        };
        let variants: Vec<(String, u64)> = config
            .variants
            .iter()
            .map(|v| (v.name.clone(), u64::from(v.weight)))
            .collect();
        Split {
            key: config.key,
            k0: half(0),
            k1: half(8),
            total: variants.iter().map(|(_, w)| w).sum(),
            variants,
        }
    }

    /// The variant of `key` (a tenant or subject): its SipHash-1-3 under
    /// the salt's key, a point in the cumulative weights. Stable on every
    /// gateway and engine; a new salt reshuffles. A keyed PRF, not SHA-256
    /// per request: this runs on every tagged request.
    pub fn pick(&self, key: &str) -> &str {
        use std::hash::Hasher;
        let mut hasher = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(key.as_bytes());
        let mut point = hasher.finish() % self.total.max(1);
        for (name, weight) in &self.variants {
            if point < *weight {
                return name;
            }
            point -= weight;
        }
        self.variants.last().map_or("", |(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests;
