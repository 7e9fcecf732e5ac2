//! Component values and the signature base (RFC 9421 sections 2.1, 2.2
//! and 2.5) of a request.
//!
//! Supported components: the derived `@method`, `@target-uri`,
//! `@authority`, `@scheme`, `@request-target`, `@path` and `@query`, and
//! header fields by their lower-case name, all without component
//! parameters (`;sf`, `;key`, `;bs`, `;req`, `;tr`). Anything else is
//! refused as malformed: a verifier that skipped a component it does not
//! understand would vouch for what it never checked.

use super::refusal::{Reason, Refusal};
use super::sfv::{self, Bare, Item, Params};
use crate::http::RequestHead;

/// A covered component, by its identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Component {
    Method,
    TargetUri,
    Authority,
    Scheme,
    RequestTarget,
    Path,
    Query,
    /// A header field, lower case.
    Field(String),
}

impl Component {
    /// The component an inner-list item names.
    pub fn parse(item: &Item) -> Result<Component, Refusal> {
        let Bare::String(name) = &item.bare else {
            return Err(malformed("a covered component is not a string"));
        };
        if !item.params.is_empty() {
            return Err(malformed(format!(
                "component parameters are not supported (\"{}\")",
                quoted(name)
            )));
        }
        Ok(match name.as_str() {
            "@method" => Component::Method,
            "@target-uri" => Component::TargetUri,
            "@authority" => Component::Authority,
            "@scheme" => Component::Scheme,
            "@request-target" => Component::RequestTarget,
            "@path" => Component::Path,
            "@query" => Component::Query,
            field
                if !field.is_empty()
                    && field.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b"!#$%&'*+-.^_`|~".contains(&b)
                    }) =>
            {
                Component::Field(field.to_owned())
            }
            other => {
                return Err(malformed(format!(
                    "the component \"{}\" is not supported",
                    quoted(other)
                )));
            }
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Component::Method => "@method",
            Component::TargetUri => "@target-uri",
            Component::Authority => "@authority",
            Component::Scheme => "@scheme",
            Component::RequestTarget => "@request-target",
            Component::Path => "@path",
            Component::Query => "@query",
            Component::Field(name) => name,
        }
    }

    /// The component's value in `head` (RFC 9421 section 2.1 and 2.2).
    pub fn value(&self, head: &RequestHead<'_>) -> Result<String, Refusal> {
        let pseudo = |name: &'static str| head.header(name).unwrap_or("");
        let (path, query) = match head.path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (head.path, None),
        };
        let value = match self {
            Component::Method => head.method.to_owned(),
            Component::Authority => pseudo(":authority").to_ascii_lowercase(),
            Component::Scheme => pseudo(":scheme").to_ascii_lowercase(),
            Component::TargetUri => format!(
                "{}://{}{}",
                pseudo(":scheme").to_ascii_lowercase(),
                pseudo(":authority").to_ascii_lowercase(),
                head.path
            ),
            Component::RequestTarget => head.path.to_owned(),
            // An empty path is "/" (section 2.2.6).
            Component::Path if path.is_empty() => "/".to_owned(),
            Component::Path => path.to_owned(),
            // The query with its "?"; "?" alone without one (section 2.2.7).
            Component::Query => format!("?{}", query.unwrap_or("")),
            Component::Field(name) => {
                let mut lines = head.header_values(name).peekable();
                if lines.peek().is_none() {
                    return Err(malformed(format!(
                        "the covered field {name} is not in the request"
                    )));
                }
                let mut out = Vec::new();
                for (i, line) in lines.enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(line.trim_ascii());
                }
                String::from_utf8(out)
                    .map_err(|_| malformed(format!("the covered field {name} is not ASCII")))?
            }
        };
        // The base is ASCII lines: a value that could end a line or is not
        // printable would let one base stand for two requests.
        let printable = value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) || b == b'\t');
        if !printable {
            return Err(malformed(format!(
                "the value of {} is not printable ASCII",
                self.name()
            )));
        }
        Ok(value)
    }
}

/// The signature base of `components` with the signature parameters
/// `params` (section 2.5): one line per component, then
/// `"@signature-params"` with the inner list serialised again.
pub fn signature_base(
    head: &RequestHead<'_>,
    items: &[Item],
    components: &[Component],
    params: &Params,
) -> Result<String, Refusal> {
    let mut base = String::new();
    for component in components {
        let value = component.value(head)?;
        base.push('"');
        base.push_str(component.name());
        base.push_str("\": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&sfv::write_inner_list(items, params));
    Ok(base)
}

fn malformed(message: impl Into<String>) -> Refusal {
    Refusal::new(Reason::Malformed, message)
}

/// Client text in a refusal message, cut short.
pub fn quoted(text: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}
