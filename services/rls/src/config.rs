//! Limits in envoyproxy/ratelimit's YAML format, and the descriptor matching
//! that goes with it.
//!
//! One file describes one domain:
//!
//! ```yaml
//! domain: ctxgate
//! descriptors:
//!   - key: tenant                  # any tenant: 6000 per minute each
//!     rate_limit: { unit: minute, requests_per_unit: 6000 }
//!   - key: tenant
//!     value: acme                  # exact value beats key-only
//!     rate_limit: { unit: minute, requests_per_unit: 20000, name: acme }
//!     descriptors:                 # [tenant=acme, operation=search]
//!       - key: operation
//!         value: search
//!         rate_limit: { unit: second, requests_per_unit: 50 }
//!   - key: internal
//!     rate_limit: { unlimited: true }
//! ```
//!
//! The accepted keys are envoyproxy/ratelimit's: `domain`, `descriptors`,
//! `key`, `value`, `rate_limit` (`unit`, `requests_per_unit`, `name`,
//! `unlimited`), `shadow_mode` and `detailed_metric` (accepted, ignored: it
//! only shapes envoyproxy/ratelimit's stats). Units are `second`, `minute`,
//! `hour`, `day`, `week`, `month` (30 days) and `year` (365 days), in any
//! case. A `value` ending in `*` matches every value with that prefix.
//!
//! Loading is strict so that a mistake stops the service at start instead of
//! silently not limiting: unknown keys, wrong types, an empty `key`, a
//! duplicate key/value at one level, an unknown unit, a unit beside
//! `unlimited: true`, a missing or non-positive `requests_per_unit`, and the
//! same domain in two files are all refused, each with the file, line and
//! column. Two deliberate differences from envoyproxy/ratelimit:
//! `requests_per_unit: 0` is refused (there it blocks everything, which is
//! almost always a typo), and `replaces` is refused because ctxgate-rls does
//! not implement it.
//!
//! # Matching
//!
//! Exactly envoyproxy/ratelimit's `GetLimit`: the entries of a request
//! descriptor are walked level by level down the tree. At each level the
//! node for `key` + `value` is taken if there is one, else a `value: prefix*`
//! node whose prefix matches, else the key-only node; no node ends the walk.
//! A limit applies only if it sits on the node reached by the descriptor's
//! *last* entry: the request descriptor must be exactly as deep as the
//! configured node. So with `tenant` (limited) → `operation` (limited), the
//! descriptor `[tenant=x]` gets the tenant limit, `[tenant=x, operation=y]`
//! the operation limit, and `[tenant=x, operation=y, extra=z]` no limit at
//! all. Envoy sends each rate-limit action as its own descriptor, so a
//! per-tenant and a per-tenant-and-operation limit are two descriptors in
//! one request.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// Every domain the service knows, each from its own file.
#[derive(Debug, Default)]
pub struct Limits {
    domains: BTreeMap<String, Domain>,
}

/// One domain's descriptor tree.
#[derive(Debug)]
pub struct Domain {
    name: String,
    file: PathBuf,
    root: Level,
}

/// The configured nodes at one depth of the tree.
#[derive(Debug, Default)]
struct Level {
    /// key → value → node.
    exact: HashMap<String, HashMap<String, Node>>,
    /// `(key, prefix)` for `value: prefix*`, in file order: the first match wins.
    prefixed: Vec<(String, String, Node)>,
    key_only: HashMap<String, Node>,
}

#[derive(Debug)]
struct Node {
    rule: Option<Rule>,
    children: Level,
}

/// What a configured node with a `rate_limit` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// envoyproxy/ratelimit's name for the node, e.g. `ctxgate.tenant_acme.operation`:
    /// used in logs.
    pub full_key: String,
    /// A name unique to the node that the counters are stored under. It
    /// depends only on the node's place in the tree, so every replica loading
    /// the same file counts under the same name, and reordering the file does
    /// not reset counts.
    pub namespace: String,
    pub policy: Policy,
    /// Where the node starts in its file.
    pub line: usize,
}

/// What a descriptor node does with the hits it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// `unlimited: true`: always OK, nothing counted.
    Unlimited,
    Limit(RateLimit),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    /// `rate_limit.name`, echoed in `current_limit.name`.
    pub name: String,
    /// `shadow_mode: true`: counted and reported, but never OVER_LIMIT.
    pub shadow_mode: bool,
}

/// A fixed window length, aligned to the Unix epoch like envoyproxy/ratelimit's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The window length in seconds (a month is 30 days, a year 365, as in
    /// envoyproxy/ratelimit).
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    fn parse(text: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|unit| unit.name().eq_ignore_ascii_case(text))
    }
}

/// Why a config could not be loaded, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the file as a whole.
    pub line: usize,
    /// 1-based; 0 when the error is about the file as a whole.
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.reason
            )
        }
    }
}

impl std::error::Error for LimitsError {}

impl Limits {
    /// Loads `path`: one YAML file, or every `*.yaml` / `*.yml` file directly
    /// in a directory (like envoyproxy/ratelimit's runtime directory), one
    /// domain per file.
    pub fn load(path: &Path) -> Result<Limits, LimitsError> {
        let whole = |reason: String| LimitsError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            let entries =
                std::fs::read_dir(path).map_err(|e| whole(format!("cannot list: {e}")))?;
            for entry in entries {
                let entry = entry.map_err(|e| whole(format!("cannot list: {e}")))?;
                let file = entry.path();
                let is_yaml = file
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml");
                if is_yaml && file.is_file() {
                    files.push(file);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(whole("no *.yaml or *.yml file in this directory".into()));
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut limits = Limits::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| LimitsError {
                file: file.clone(),
                line: 0,
                column: 0,
                reason: format!("cannot read: {e}"),
            })?;
            limits.add(Domain::parse(&file, &text)?)?;
        }
        Ok(limits)
    }

    /// Adds one parsed domain; refuses a domain already loaded from another file.
    pub fn add(&mut self, domain: Domain) -> Result<(), LimitsError> {
        if let Some(first) = self.domains.get(&domain.name) {
            return Err(LimitsError {
                file: domain.file.clone(),
                line: 0,
                column: 0,
                reason: format!(
                    "domain '{}' is already defined in {}: one file per domain",
                    domain.name,
                    first.file.display()
                ),
            });
        }
        self.domains.insert(domain.name.clone(), domain);
        Ok(())
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    /// Every configured node that has a `rate_limit`, unlimited ones included.
    pub fn rules(&self) -> Vec<&Rule> {
        self.domains.values().flat_map(Domain::rules).collect()
    }
}

impl Level {
    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.exact
            .values()
            .flat_map(HashMap::values)
            .chain(self.prefixed.iter().map(|(_, _, node)| node))
            .chain(self.key_only.values())
    }

    fn collect_rules<'a>(&'a self, into: &mut Vec<&'a Rule>) {
        for node in self.nodes() {
            if let Some(rule) = &node.rule {
                into.push(rule);
            }
            node.children.collect_rules(into);
        }
    }

    fn find(&self, key: &str, value: &str) -> Option<&Node> {
        if let Some(node) = self.exact.get(key).and_then(|values| values.get(value)) {
            return Some(node);
        }
        let prefixed = self
            .prefixed
            .iter()
            .find(|(k, prefix, _)| k == key && value.starts_with(prefix.as_str()))
            .map(|(_, _, node)| node);
        prefixed.or_else(|| self.key_only.get(key))
    }
}

impl Domain {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// This domain's nodes that have a `rate_limit`, unlimited ones included.
    pub fn rules(&self) -> Vec<&Rule> {
        let mut rules = Vec::new();
        self.root.collect_rules(&mut rules);
        rules
    }

    /// The rule for a request descriptor's entries, as envoyproxy/ratelimit
    /// finds it (see the module doc), or `None` when no limit applies.
    pub fn find<'e>(&self, entries: impl IntoIterator<Item = (&'e str, &'e str)>) -> Option<&Rule> {
        let mut entries = entries.into_iter().peekable();
        let mut level = &self.root;
        while let Some((key, value)) = entries.next() {
            let node = level.find(key, value)?;
            if entries.peek().is_none() {
                return node.rule.as_ref();
            }
            level = &node.children;
        }
        None
    }

    /// Parses one file's text; `file` is only used in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Domain, LimitsError> {
        let parser = Parser { file };
        let docs = MarkedYaml::load_from_str(text).map_err(|e| LimitsError {
            file: file.to_path_buf(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            reason: format!("invalid YAML: {}", e.info()),
        })?;
        let mut docs = docs.into_iter();
        let Some(doc) = docs.next() else {
            return Err(parser.whole("the file is empty: it needs `domain` and `descriptors`"));
        };
        if let Some(extra) = docs.next() {
            return Err(parser.at(
                &extra,
                "a second YAML document: put each domain in its own file",
            ));
        }
        let map = parser.mapping(&doc, "the top level")?;
        let mut name = None;
        let mut descriptors = None;
        for (k_node, k, v) in map {
            match k.as_str() {
                "domain" => name = Some((parser.string(v, "domain")?, v)),
                "descriptors" => descriptors = Some(v),
                other => return Err(parser.unknown_key(k_node, other, "the top level", TOP_KEYS)),
            }
        }
        let Some((name, name_node)) = name else {
            return Err(parser.at(&doc, "missing `domain`"));
        };
        if name.is_empty() {
            return Err(parser.at(name_node, "`domain` is empty"));
        }
        let mut root = Level::default();
        if let Some(list) = descriptors {
            parser.level(list, &name, &mut Vec::new(), &mut root)?;
        }
        Ok(Domain {
            name,
            file: file.to_path_buf(),
            root,
        })
    }
}

const TOP_KEYS: &str = "domain, descriptors";
const DESCRIPTOR_KEYS: &str = "key, value, rate_limit, descriptors, shadow_mode, detailed_metric";
const RATE_LIMIT_KEYS: &str = "unit, requests_per_unit, name, unlimited";

struct Parser<'f> {
    file: &'f Path,
}

type Mapping<'n, 'i> = Vec<(&'n MarkedYaml<'i>, String, &'n MarkedYaml<'i>)>;

impl Parser<'_> {
    fn whole(&self, reason: &str) -> LimitsError {
        LimitsError {
            file: self.file.to_path_buf(),
            line: 0,
            column: 0,
            reason: reason.to_owned(),
        }
    }

    fn at(&self, node: &MarkedYaml<'_>, reason: impl Into<String>) -> LimitsError {
        LimitsError {
            file: self.file.to_path_buf(),
            line: node.span.start.line(),
            column: node.span.start.col() + 1,
            reason: reason.into(),
        }
    }

    fn unknown_key(
        &self,
        node: &MarkedYaml<'_>,
        key: &str,
        place: &str,
        allowed: &str,
    ) -> LimitsError {
        self.at(
            node,
            format!("unknown key '{key}' in {place} (allowed: {allowed})"),
        )
    }

    /// A mapping's entries as (key node, key text, value node), in file order.
    fn mapping<'n, 'i>(
        &self,
        node: &'n MarkedYaml<'i>,
        what: &str,
    ) -> Result<Mapping<'n, 'i>, LimitsError> {
        let YamlData::Mapping(map) = &node.data else {
            return Err(self.at(node, format!("{what} must be a mapping of keys to values")));
        };
        let mut out = Vec::with_capacity(map.len());
        for (k, v) in map {
            match &k.data {
                YamlData::Value(Scalar::String(s)) => out.push((k, s.to_string(), v)),
                _ => return Err(self.at(k, format!("keys in {what} must be plain words"))),
            }
        }
        Ok(out)
    }

    /// A scalar read as text; numbers and booleans are accepted as written
    /// (`value: 42` is the string "42", as in envoyproxy/ratelimit).
    fn string(&self, node: &MarkedYaml<'_>, what: &str) -> Result<String, LimitsError> {
        match &node.data {
            YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
            YamlData::Value(Scalar::Integer(i)) => Ok(i.to_string()),
            YamlData::Value(Scalar::Boolean(b)) => Ok(b.to_string()),
            YamlData::Value(Scalar::Null) => Ok(String::new()),
            YamlData::Value(Scalar::FloatingPoint(_)) => Err(self.at(
                node,
                format!("`{what}` looks like a number with a fraction: quote it"),
            )),
            _ => Err(self.at(node, format!("`{what}` must be a string"))),
        }
    }

    fn boolean(&self, node: &MarkedYaml<'_>, what: &str) -> Result<bool, LimitsError> {
        match &node.data {
            YamlData::Value(Scalar::Boolean(b)) => Ok(*b),
            _ => Err(self.at(node, format!("`{what}` must be true or false"))),
        }
    }

    /// One `descriptors:` list into `level`; `path` holds the parent nodes'
    /// names (`key` or `key=value`).
    fn level(
        &self,
        list: &MarkedYaml<'_>,
        domain: &str,
        path: &mut Vec<(String, Option<String>)>,
        level: &mut Level,
    ) -> Result<(), LimitsError> {
        let items = match &list.data {
            YamlData::Sequence(items) => items.as_slice(),
            YamlData::Value(Scalar::Null) => &[],
            _ => return Err(self.at(list, "`descriptors` must be a list")),
        };
        for item in items {
            self.descriptor(item, domain, path, level)?;
        }
        Ok(())
    }

    fn descriptor(
        &self,
        item: &MarkedYaml<'_>,
        domain: &str,
        path: &mut Vec<(String, Option<String>)>,
        level: &mut Level,
    ) -> Result<(), LimitsError> {
        let map = self.mapping(item, "a descriptor")?;
        let mut key = None;
        let mut value = None;
        let mut rate_limit = None;
        let mut children = None;
        let mut shadow_mode = false;
        for (k_node, k, v) in &map {
            match k.as_str() {
                "key" => key = Some(self.string(v, "key")?),
                "value" => value = Some(self.string(v, "value")?),
                "rate_limit" => rate_limit = Some(*v),
                "descriptors" => children = Some(*v),
                "shadow_mode" => shadow_mode = self.boolean(v, "shadow_mode")?,
                "detailed_metric" => {
                    self.boolean(v, "detailed_metric")?;
                }
                other => {
                    return Err(self.unknown_key(k_node, other, "a descriptor", DESCRIPTOR_KEYS));
                }
            }
        }
        let key = match key {
            Some(key) if !key.is_empty() => key,
            Some(_) => return Err(self.at(item, "descriptor has an empty `key`")),
            None => return Err(self.at(item, "descriptor has no `key`")),
        };
        // As in envoyproxy/ratelimit, an empty value is the same as none.
        let value = value.filter(|v| !v.is_empty());

        let taken = match &value {
            Some(v) => match v.strip_suffix('*') {
                Some(prefix) => level
                    .prefixed
                    .iter()
                    .any(|(k, p, _)| *k == key && p == prefix),
                None => level
                    .exact
                    .get(&key)
                    .is_some_and(|values| values.contains_key(v)),
            },
            None => level.key_only.contains_key(&key),
        };
        if taken {
            let what = match &value {
                Some(v) => format!("key '{key}' with value '{v}'"),
                None => format!("key '{key}' without a value"),
            };
            return Err(self.at(
                item,
                format!(
                    "duplicate descriptor: {what} is already defined at this level{}",
                    describe_parent(path)
                ),
            ));
        }

        path.push((key.clone(), value.clone()));
        let rule = match rate_limit {
            Some(node) => Some(self.rule(node, item, domain, path, shadow_mode)?),
            None => None,
        };
        let mut node = Node {
            rule,
            children: Level::default(),
        };
        if let Some(list) = children {
            self.level(list, domain, path, &mut node.children)?;
        }
        path.pop();

        match value {
            Some(v) => match v.strip_suffix('*') {
                Some(prefix) => level.prefixed.push((key, prefix.to_owned(), node)),
                None => {
                    level.exact.entry(key).or_default().insert(v, node);
                }
            },
            None => {
                level.key_only.insert(key, node);
            }
        }
        Ok(())
    }

    fn rule(
        &self,
        node: &MarkedYaml<'_>,
        descriptor: &MarkedYaml<'_>,
        domain: &str,
        path: &[(String, Option<String>)],
        shadow_mode: bool,
    ) -> Result<Rule, LimitsError> {
        let map = self.mapping(node, "`rate_limit`")?;
        let mut unit = None;
        let mut requests = None;
        let mut name = String::new();
        let mut unlimited = false;
        for (k_node, k, v) in &map {
            match k.as_str() {
                "unit" => unit = Some((self.string(v, "unit")?, *v)),
                "requests_per_unit" => requests = Some(*v),
                "name" => name = self.string(v, "name")?,
                "unlimited" => unlimited = self.boolean(v, "unlimited")?,
                "replaces" => {
                    return Err(self.at(
                        k_node,
                        "`replaces` is not supported by ctxgate-rls: remove it, or use envoyproxy/ratelimit",
                    ));
                }
                other => {
                    return Err(self.unknown_key(k_node, other, "`rate_limit`", RATE_LIMIT_KEYS));
                }
            }
        }
        let policy = if unlimited {
            if let Some((_, unit_node)) = unit {
                return Err(self.at(
                    unit_node,
                    "`unit` must not be set together with `unlimited: true`",
                ));
            }
            Policy::Unlimited
        } else {
            let unit = match unit {
                Some((text, unit_node)) => Unit::parse(&text).ok_or_else(|| {
                    self.at(
                        unit_node,
                        format!(
                            "unknown unit '{text}' (expected one of: second, minute, hour, day, week, month, year)"
                        ),
                    )
                })?,
                None => return Err(self.at(node, "`rate_limit` has no `unit`")),
            };
            let Some(requests) = requests else {
                return Err(self.at(node, "`rate_limit` has no `requests_per_unit`"));
            };
            let requests_per_unit = match &requests.data {
                YamlData::Value(Scalar::Integer(n)) if *n >= 1 => {
                    u32::try_from(*n).map_err(|_| {
                        self.at(
                            requests,
                            format!(
                                "`requests_per_unit` {n} is too large (at most {})",
                                u32::MAX
                            ),
                        )
                    })?
                }
                YamlData::Value(Scalar::Integer(n)) => {
                    return Err(self.at(
                        requests,
                        format!("`requests_per_unit` must be at least 1, not {n}"),
                    ));
                }
                _ => {
                    return Err(self.at(requests, "`requests_per_unit` must be a whole number"));
                }
            };
            Policy::Limit(RateLimit {
                requests_per_unit,
                unit,
                name,
                shadow_mode,
            })
        };
        Ok(Rule {
            full_key: full_key(domain, path),
            namespace: namespace(domain, path),
            policy,
            line: descriptor.span.start.line(),
        })
    }
}

fn describe_parent(path: &[(String, Option<String>)]) -> String {
    if path.is_empty() {
        return String::new();
    }
    let names: Vec<String> = path
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    format!(" (under {})", names.join(" → "))
}

/// envoyproxy/ratelimit's stats key: `domain.key_value.key`.
fn full_key(domain: &str, path: &[(String, Option<String>)]) -> String {
    let mut out = domain.to_owned();
    for (k, v) in path {
        out.push('.');
        out.push_str(k);
        if let Some(v) = v {
            out.push('_');
            out.push_str(v);
        }
    }
    out
}

/// An unambiguous storage name for a node: `domain/key=value/key`, with the
/// separators (and Redis's hash-tag braces) percent-escaped inside names.
fn namespace(domain: &str, path: &[(String, Option<String>)]) -> String {
    let mut out = String::from("ctxgate-rls/");
    escape_into(&mut out, domain);
    for (k, v) in path {
        out.push('/');
        escape_into(&mut out, k);
        if let Some(v) = v {
            out.push('=');
            escape_into(&mut out, v);
        }
    }
    out
}

pub(crate) fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '%' | '/' | '=' | '{' | '}' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Domain, LimitsError> {
        Domain::parse(Path::new("limits.yaml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const GOOD: &str = "\
domain: ctxgate
descriptors:
  - key: tenant
    rate_limit:
      unit: minute
      requests_per_unit: 6000
  - key: tenant
    value: acme
    rate_limit: { unit: MINUTE, requests_per_unit: 20000, name: acme-plan }
    descriptors:
      - key: operation
        value: search
        rate_limit: { unit: second, requests_per_unit: 50 }
      - key: operation
        shadow_mode: true
        rate_limit: { unit: hour, requests_per_unit: 7 }
  - key: tenant
    value: beta-*
    rate_limit: { unit: day, requests_per_unit: 3 }
  - key: internal
    rate_limit: { unlimited: true }
  - key: path
    detailed_metric: true
    descriptors:
      - key: method
        value: 42
        rate_limit: { unit: second, requests_per_unit: 1 }
";

    fn limit(rule: Option<&Rule>) -> Option<(u32, Unit)> {
        match &rule?.policy {
            Policy::Limit(l) => Some((l.requests_per_unit, l.unit)),
            Policy::Unlimited => None,
        }
    }

    #[test]
    fn the_shipped_example_loads() {
        let text = include_str!("../examples/ctxgate.yaml");
        let domain = parse(text).unwrap();
        assert_eq!(domain.name(), "ctxgate");
        assert_eq!(domain.rules().len(), 6);
        assert_eq!(
            limit(domain.find([("tenant", "t1")])),
            Some((6000, Unit::Minute))
        );
        assert_eq!(
            limit(domain.find([("tenant", "acme")])),
            Some((20000, Unit::Minute))
        );
        let search = [("tenant", "acme"), ("operation", "search")];
        assert_eq!(limit(domain.find(search)), Some((50, Unit::Second)));
        let other = [("tenant", "acme"), ("operation", "list")];
        assert_eq!(limit(domain.find(other)), Some((100000, Unit::Day)));
        assert_eq!(
            limit(domain.find([("tenant", "trial-7")])),
            Some((100, Unit::Hour))
        );
        assert_eq!(
            domain.find([("tenant", "internal")]).unwrap().policy,
            Policy::Unlimited
        );
    }

    #[test]
    fn good_file_loads_every_node() {
        let domain = parse(GOOD).unwrap();
        assert_eq!(domain.name(), "ctxgate");
        let mut limits = Limits::default();
        limits.add(domain).unwrap();
        let mut keys: Vec<_> = limits.rules().iter().map(|r| r.full_key.clone()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "ctxgate.internal",
                "ctxgate.path.method_42",
                "ctxgate.tenant",
                "ctxgate.tenant_acme",
                "ctxgate.tenant_acme.operation",
                "ctxgate.tenant_acme.operation_search",
                "ctxgate.tenant_beta-*",
            ]
        );
    }

    #[test]
    fn rules_carry_name_unit_shadow_mode_and_line() {
        let domain = parse(GOOD).unwrap();
        let acme = domain.find([("tenant", "acme")]).unwrap();
        assert_eq!(acme.line, 7);
        assert_eq!(
            acme.policy,
            Policy::Limit(RateLimit {
                requests_per_unit: 20000,
                unit: Unit::Minute,
                name: "acme-plan".into(),
                shadow_mode: false,
            })
        );
        let shadow = domain
            .find([("tenant", "acme"), ("operation", "delete")])
            .unwrap();
        assert!(
            matches!(&shadow.policy, Policy::Limit(l) if l.shadow_mode && l.unit == Unit::Hour)
        );
        assert_eq!(
            domain.find([("internal", "x")]).unwrap().policy,
            Policy::Unlimited
        );
    }

    #[test]
    fn exact_value_beats_prefix_beats_key_only() {
        let domain = parse(GOOD).unwrap();
        assert_eq!(
            limit(domain.find([("tenant", "acme")])),
            Some((20000, Unit::Minute))
        );
        assert_eq!(
            limit(domain.find([("tenant", "beta-1")])),
            Some((3, Unit::Day))
        );
        assert_eq!(
            limit(domain.find([("tenant", "other")])),
            Some((6000, Unit::Minute))
        );
        assert_eq!(
            limit(domain.find([("tenant", "")])),
            Some((6000, Unit::Minute))
        );
    }

    #[test]
    fn nested_descriptors_match_level_by_level() {
        let domain = parse(GOOD).unwrap();
        let acme_search = [("tenant", "acme"), ("operation", "search")];
        assert_eq!(limit(domain.find(acme_search)), Some((50, Unit::Second)));
        let acme_other = [("tenant", "acme"), ("operation", "list")];
        assert_eq!(limit(domain.find(acme_other)), Some((7, Unit::Hour)));
        let numeric = [("path", "/x"), ("method", "42")];
        assert_eq!(limit(domain.find(numeric)), Some((1, Unit::Second)));
    }

    #[test]
    fn a_limit_applies_only_at_the_descriptors_own_depth() {
        let domain = parse(GOOD).unwrap();
        // Deeper than the tree: envoyproxy/ratelimit applies nothing.
        let deeper = [("tenant", "acme"), ("operation", "search"), ("x", "y")];
        assert_eq!(domain.find(deeper), None);
        // The other tenants have no children: [tenant, operation] has no limit.
        assert_eq!(
            domain.find([("tenant", "zeta"), ("operation", "search")]),
            None
        );
        // `path` alone has no rate_limit of its own.
        assert_eq!(domain.find([("path", "/x")]), None);
        assert_eq!(domain.find([("unknown", "x")]), None);
        assert_eq!(domain.find([]), None);
    }

    #[test]
    fn namespaces_are_unique_and_escaped() {
        let domain = parse(GOOD).unwrap();
        let rule = domain
            .find([("tenant", "acme"), ("operation", "search")])
            .unwrap();
        assert_eq!(
            rule.namespace,
            "ctxgate-rls/ctxgate/tenant=acme/operation=search"
        );
        assert_eq!(
            namespace("a/b", &[("k=".into(), Some("{v}%".into()))]),
            "ctxgate-rls/a%2Fb/k%3D=%7Bv%7D%25"
        );
        // `key: a_b` and `key: a, value: b` do not collide (they do in envoyproxy/ratelimit).
        let both = "domain: d\ndescriptors:\n  - key: a_b\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: a\n    value: b\n    rate_limit: {unit: second, requests_per_unit: 2}\n";
        let domain = parse(both).unwrap();
        assert_ne!(
            domain.find([("a_b", "")]).unwrap().namespace,
            domain.find([("a", "b")]).unwrap().namespace
        );
    }

    #[test]
    fn refuses_unknown_unit_with_its_line() {
        let text = "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n      requests_per_unit: 1\n";
        assert_eq!(
            error(text),
            "limits.yaml:5:13: unknown unit 'fortnight' (expected one of: second, minute, hour, day, week, month, year)"
        );
    }

    #[test]
    fn refuses_missing_or_empty_key() {
        let text = "domain: d\ndescriptors:\n  - value: v\n    rate_limit: {unit: second, requests_per_unit: 1}\n";
        assert_eq!(error(text), "limits.yaml:3:5: descriptor has no `key`");
        let text = "domain: d\ndescriptors:\n  - key: ''\n";
        assert_eq!(
            error(text),
            "limits.yaml:3:5: descriptor has an empty `key`"
        );
    }

    #[test]
    fn refuses_duplicate_key_value_at_one_level() {
        let text = "\
domain: d
descriptors:
  - key: tenant
    descriptors:
      - key: op
        value: read
        rate_limit: {unit: second, requests_per_unit: 1}
      - key: op
        value: read
        rate_limit: {unit: second, requests_per_unit: 2}
";
        assert_eq!(
            error(text),
            "limits.yaml:8:9: duplicate descriptor: key 'op' with value 'read' is already defined at this level (under tenant)"
        );
        let text = "domain: d\ndescriptors:\n  - key: a\n  - key: a\n";
        assert_eq!(
            error(text),
            "limits.yaml:4:5: duplicate descriptor: key 'a' without a value is already defined at this level"
        );
        // The same key/value under different parents is fine.
        let text = "domain: d\ndescriptors:\n  - key: a\n    descriptors: [{key: x}]\n  - key: b\n    descriptors: [{key: x}]\n";
        parse(text).unwrap();
    }

    #[test]
    fn refuses_zero_negative_missing_and_huge_requests_per_unit() {
        let base = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: ";
        assert_eq!(
            error(&format!("{base}0}}\n")),
            "limits.yaml:4:51: `requests_per_unit` must be at least 1, not 0"
        );
        assert_eq!(
            error(&format!("{base}-5}}\n")),
            "limits.yaml:4:51: `requests_per_unit` must be at least 1, not -5"
        );
        assert_eq!(
            error(&format!("{base}4294967296}}\n")),
            "limits.yaml:4:51: `requests_per_unit` 4294967296 is too large (at most 4294967295)"
        );
        assert_eq!(
            error(&format!("{base}many}}\n")),
            "limits.yaml:4:51: `requests_per_unit` must be a whole number"
        );
        let text = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n";
        assert_eq!(
            error(text),
            "limits.yaml:4:17: `rate_limit` has no `requests_per_unit`"
        );
        let text = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 3}\n";
        assert_eq!(error(text), "limits.yaml:4:17: `rate_limit` has no `unit`");
    }

    #[test]
    fn refuses_unknown_keys_and_wrong_types() {
        let text = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n    shadowmode: true\n";
        assert_eq!(
            error(text),
            "limits.yaml:5:5: unknown key 'shadowmode' in a descriptor (allowed: key, value, rate_limit, descriptors, shadow_mode, detailed_metric)"
        );
        let text = "domain: d\nlimits: []\n";
        assert_eq!(
            error(text),
            "limits.yaml:2:1: unknown key 'limits' in the top level (allowed: domain, descriptors)"
        );
        let text = "domain: d\ndescriptors:\n  key: k\n";
        assert_eq!(error(text), "limits.yaml:3:3: `descriptors` must be a list");
        let text = "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: maybe\n";
        assert_eq!(
            error(text),
            "limits.yaml:4:18: `shadow_mode` must be true or false"
        );
        let text = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: x}]}\n";
        assert!(error(text).starts_with("limits.yaml:4:54: `replaces` is not supported"));
    }

    #[test]
    fn refuses_unit_beside_unlimited() {
        let text = "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n";
        assert_eq!(
            error(text),
            "limits.yaml:6:13: `unit` must not be set together with `unlimited: true`"
        );
    }

    #[test]
    fn refuses_missing_domain_bad_yaml_and_empty_files() {
        assert_eq!(
            error("descriptors: []\n"),
            "limits.yaml:1:1: missing `domain`"
        );
        assert_eq!(error("domain: ''\n"), "limits.yaml:1:9: `domain` is empty");
        assert_eq!(
            error(""),
            "limits.yaml: the file is empty: it needs `domain` and `descriptors`"
        );
        assert_eq!(
            error("- a\n- b\n"),
            "limits.yaml:1:1: the top level must be a mapping of keys to values"
        );
        let bad = error("domain: d\ndescriptors:\n  - key: [unclosed\n");
        assert!(bad.starts_with("limits.yaml:"), "{bad}");
        assert!(bad.contains("invalid YAML"), "{bad}");
        let dup = error("domain: d\ndomain: e\n");
        assert!(dup.starts_with("limits.yaml:2:"), "{dup}");
    }

    #[test]
    fn loads_a_directory_and_refuses_a_domain_twice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.yml"), "domain: other\ndescriptors: []\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let limits = Limits::load(dir.path()).unwrap();
        let names: Vec<_> = limits.domains().map(Domain::name).collect();
        assert_eq!(names, ["ctxgate", "other"]);

        std::fs::write(dir.path().join("c.yaml"), "domain: other\n").unwrap();
        let err = Limits::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("c.yaml: domain 'other' is already defined in ")
                || err.contains("c.yaml: domain 'other' is already defined in"),
            "{err}"
        );
        assert!(err.contains("b.yml"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = Limits::load(empty.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("no *.yaml or *.yml file in this directory"),
            "{err}"
        );
        let err = Limits::load(&dir.path().join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.yaml: cannot read"), "{err}");
    }
}
