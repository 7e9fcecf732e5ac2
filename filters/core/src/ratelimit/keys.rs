//! Whose bucket pays: the key of a verified caller (tenant, and
//! optionally subject, operation and route), or of an anonymous client
//! (its address, in a table of its own), with the matching RLS descriptor;
//! and the second descriptor an MCP call carries to the RLS.

use super::config::KeyPart;
use super::decision::RequestFacts;
use super::limiter::RateLimiter;
use crate::contract::MatchedOperation;

/// Which table a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Tenants,
    Anonymous,
}

impl RateLimiter {
    /// The bucket table, key, RLS descriptor and a label for messages.
    pub(super) fn key(
        &self,
        facts: &RequestFacts<'_>,
        operation: Option<&MatchedOperation>,
    ) -> (Table, String, Vec<(String, String)>, String) {
        let Some(identity) = &facts.identity else {
            let client = self
                .anonymous
                .client
                .key_of(&facts.head, facts.client_address.as_deref());
            let descriptor = vec![("client".to_owned(), client.clone())];
            return (
                Table::Anonymous,
                format!("anon|{client}"),
                descriptor,
                format!("client {client}"),
            );
        };
        let mut key = String::new();
        let mut descriptor = Vec::new();
        for part in &self.key {
            let (name, value) = match part {
                KeyPart::Tenant => ("tenant", identity.tenant.as_str()),
                KeyPart::Subject => ("subject", identity.subject.as_str()),
                KeyPart::Operation => (
                    "operation",
                    operation.map_or("unknown", |o| o.name.as_str()),
                ),
                KeyPart::Route => ("route", facts.route.as_deref().unwrap_or("unknown")),
            };
            key.push_str(name);
            key.push('=');
            key.push_str(value);
            key.push('|');
            descriptor.push((name.to_owned(), value.to_owned()));
        }
        (
            Table::Tenants,
            key,
            descriptor,
            format!("tenant {}", identity.tenant),
        )
    }
}

/// The operation names the mcp stage gives MCP messages: `mcp:<method>`.
const MCP_OPERATION_PREFIX: &str = "mcp:";

impl RateLimiter {
    /// The RLS descriptor of a priced MCP call of a verified caller,
    /// `[tenant, mcp_method, mcp_tool]` (`mcp_tool` for `tools/call`),
    /// when global limiting counts MCP calls per tool (`mcp_descriptor`).
    pub(super) fn call_descriptor(
        &self,
        facts: &RequestFacts<'_>,
        operation: Option<&MatchedOperation>,
    ) -> Option<super::rls::Entries> {
        self.global.as_ref().filter(|g| g.mcp_descriptor)?;
        facts.price?;
        let identity = facts.identity.as_deref()?;
        let operation = operation?;
        let method = operation.name.strip_prefix(MCP_OPERATION_PREFIX)?;
        let mut descriptor = vec![
            ("tenant".to_owned(), identity.tenant.clone()),
            ("mcp_method".to_owned(), method.to_owned()),
        ];
        if method == "tools/call"
            && let Some(tool) = &operation.target
        {
            descriptor.push(("mcp_tool".to_owned(), tool.clone()));
        }
        Some(descriptor)
    }
}
