//! One request as the stages see it: the header snapshot read once, the
//! changes the stages made (applied to the proxy in one batch), and what
//! the auth stage established about the caller.

use crate::contract::{Established, REQUEST_FILTER_STATE};
use crate::headers::Headers;
use crate::host::{Attribute, HeaderOp, Host, StreamId};
use crate::http::RequestHead;
use crate::mcp::Declared;
use crate::scope::ScopeSet;
use std::sync::Arc;

/// An entry of the request's headers, against the proxy's map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// As the proxy holds it.
    Proxy,
    /// The proxy holds this name with other values: a set.
    Changed,
    /// The proxy lacks this name: an add.
    Added,
}

pub struct Request {
    pub stream: StreamId,
    /// The request headers with every change so far applied.
    headers: Headers,
    method: String,
    path: String,
    /// Where each entry of `headers` stands against the proxy's map (same
    /// length and order as `headers`).
    origin: Vec<Origin>,
    /// Headers the proxy holds that were removed since it last saw them.
    removed: Vec<String>,
    /// The request headers ended the stream (no body).
    pub end_of_stream: bool,
    /// Identity and operation: from the auth stage of this pipeline, or
    /// read from filter state once if auth runs in another filter.
    established: Option<Established>,
    /// The whole request body, when the pipeline waited for it (MCP, a
    /// signed request).
    pub body: Option<Vec<u8>>,
    /// A later stage authorises this request from its body (an MCP
    /// endpoint), so auth only authenticates it.
    pub authorised_later: bool,
    /// The body decides (an MCP POST, a signed request): the longest body
    /// accepted. The body stages run once it is in.
    pub body_limit: Option<u64>,
    /// What the request costs, in read-equivalents, when a stage priced it
    /// from the body (MCP); the rate limiter's own pricing otherwise.
    pub price: Option<u64>,
    /// The MCP call the standard headers declare (`Mcp-Method`,
    /// `Mcp-Name`), for routing tags: the body is checked against it.
    pub mcp_declared: Option<Declared>,
    /// The downstream address, once read (a stage keying on it, the
    /// audit record).
    client_address: Option<Option<String>>,
    /// This request is one the worker times (`metrics.timing_every`).
    pub timed: bool,
}

impl Request {
    pub fn new(stream: StreamId, headers: Headers, end_of_stream: bool) -> Request {
        let pseudo = |name: &str| {
            headers
                .values(name)
                .next()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        Request {
            stream,
            origin: {
                // Room for what the stages add.
                let mut origin = Vec::with_capacity(headers.len() + 16);
                origin.resize(headers.len(), Origin::Proxy);
                origin
            },
            headers,
            method,
            path,
            removed: Vec::new(),
            end_of_stream,
            established: None,
            body: None,
            authorised_later: false,
            body_limit: None,
            price: None,
            mcp_declared: None,
            client_address: None,
            timed: false,
        }
    }

    pub fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            path: &self.path,
            headers: &self.headers,
        }
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.contains(name)
    }

    /// Removes a header, if the request has it (nothing is asked of the
    /// proxy for a header that is not there, or that it never saw).
    pub fn remove(&mut self, name: &str) {
        let mut proxy_holds = false;
        let mut i = 0;
        while i < self.headers.len() {
            if self.headers.is_named(i, name) {
                proxy_holds |= self.origin.get(i) != Some(&Origin::Added);
                self.drop_entry(i);
            } else {
                i += 1;
            }
        }
        if proxy_holds && !self.removed.iter().any(|n| n == name) {
            self.removed.push(name.to_owned());
        }
    }

    /// Drops entry `i` of the headers and its origin.
    fn drop_entry(&mut self, i: usize) {
        self.headers.remove(i);
        if i < self.origin.len() {
            self.origin.remove(i);
        }
    }

    /// Sets a header, replacing every value it had. An empty value removes
    /// it: Envoy's dynamic-module ABI cannot send an empty header (a set
    /// with an empty value removes it, an add does nothing), so both
    /// engines forward no header rather than each its own guess.
    pub fn set(&mut self, name: &str, value: &str) {
        if value.is_empty() {
            self.remove(name);
            return;
        }
        let (first, more) = {
            let mut named = self.headers.positions(name);
            (named.next(), named.next().is_some())
        };
        match first {
            Some(i) => {
                if !more && self.headers.value(i) == Some(value.as_bytes()) {
                    return;
                }
                self.headers.set_value(i, value.as_bytes());
                if let Some(origin @ Origin::Proxy) = self.origin.get_mut(i) {
                    *origin = Origin::Changed;
                }
                if more {
                    // One value is left: drop the later ones (the set
                    // replaces them at the proxy too).
                    let mut j = self.headers.len();
                    while j > i + 1 {
                        j -= 1;
                        if self.headers.is_named(j, name) {
                            self.drop_entry(j);
                        }
                    }
                }
            }
            None => {
                // Removed and set again: the proxy still holds it.
                let origin = match self.removed.iter().position(|n| n == name) {
                    Some(r) => {
                        self.removed.swap_remove(r);
                        Origin::Changed
                    }
                    None => Origin::Added,
                };
                self.headers.push(name, value.as_bytes());
                self.origin.push(origin);
            }
        }
        match name {
            ":path" => value.clone_into(&mut self.path),
            ":method" => value.clone_into(&mut self.method),
            _ => {}
        }
    }

    /// Hands the collected changes to the proxy, if there are any.
    pub fn apply_changes(&mut self, host: &mut dyn Host) {
        if self.removed.is_empty() && self.origin.iter().all(|o| *o == Origin::Proxy) {
            return;
        }
        let changes = self.pending_changes();
        host.change_request_headers(self.stream, &changes, &self.headers);
        self.origin.fill(Origin::Proxy);
        self.removed.clear();
    }

    /// Changes not yet applied, one per changed header, what it became: in
    /// header order, removals last.
    pub fn pending_changes(&self) -> Vec<HeaderOp<'_>> {
        let changed = self.origin.iter().filter(|o| **o != Origin::Proxy).count();
        let mut changes = Vec::with_capacity(changed + self.removed.len());
        for (i, origin) in self.origin.iter().enumerate() {
            let op = match origin {
                Origin::Proxy => continue,
                Origin::Changed => HeaderOp::Set,
                Origin::Added => HeaderOp::Add,
            };
            if let Some((name, value)) = self.headers.get(i) {
                changes.push(op(name, value));
            }
        }
        changes.extend(self.removed.iter().map(|name| HeaderOp::Remove(name)));
        changes
    }

    /// A proxy attribute of this request. Route and cluster depend on the
    /// headers, so pending changes are applied first, as they would be for
    /// a separate filter (Envoy 1.40 still answers with the route matched
    /// before them: see [`Attribute::depends_on_headers`]).
    pub fn attribute(&mut self, host: &mut dyn Host, attribute: Attribute) -> Option<String> {
        if attribute == Attribute::ClientAddress {
            return self.client_address(host).map(str::to_owned);
        }
        if attribute.depends_on_headers() {
            self.apply_changes(host);
        }
        host.attribute(self.stream, attribute)
    }

    /// The downstream address (`ip:port`), read from the proxy once.
    pub fn client_address(&mut self, host: &dyn Host) -> Option<&str> {
        let stream = self.stream;
        self.client_address
            .get_or_insert_with(|| host.attribute(stream, Attribute::ClientAddress))
            .as_deref()
    }

    /// The downstream address, if [`Request::client_address`] read it.
    pub fn client_address_read(&self) -> Option<&str> {
        self.client_address.as_ref()?.as_deref()
    }

    /// What the auth stage of this pipeline established.
    pub fn set_established(&mut self, established: Established) {
        self.established = Some(established);
    }

    /// The caller's scopes, if this pipeline's auth stage verified a token.
    pub fn established_scopes(&self) -> Option<Arc<ScopeSet>> {
        self.established.as_ref()?.scopes.clone()
    }

    /// What the stages established so far, to amend (the MCP stage names
    /// the operation once it has read the body).
    pub fn established_mut(&mut self, host: &mut dyn Host) -> &mut Established {
        let stream = self.stream;
        self.established.get_or_insert_with(|| {
            Established::parse(host.filter_state(stream, REQUEST_FILTER_STATE).as_deref())
        })
    }

    /// What is known so far, without asking the proxy.
    pub fn established_ref(&self) -> Option<&Established> {
        self.established.as_ref()
    }

    /// Identity and operation: from this pipeline's auth stage, or from the
    /// filter state an auth filter earlier in the chain wrote.
    pub fn established(&mut self, host: &mut dyn Host) -> &Established {
        let stream = self.stream;
        self.established.get_or_insert_with(|| {
            Established::parse(host.filter_state(stream, REQUEST_FILTER_STATE).as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request::new(
            1,
            [
                (":method", "GET"),
                (":path", "/a"),
                ("x-a", "1"),
                ("x-a", "2"),
            ]
            .into_iter()
            .collect(),
            true,
        )
    }

    #[test]
    fn removing_an_absent_header_asks_nothing() {
        let mut r = request();
        r.remove("x-absent");
        assert!(r.pending_changes().is_empty());
        r.remove("x-a");
        assert_eq!(r.pending_changes(), [HeaderOp::Remove("x-a")]);
        assert!(!r.has_header("x-a"));
    }

    #[test]
    fn set_replaces_every_value_and_updates_the_head() {
        let mut r = request();
        r.set("x-a", "3");
        r.set(":path", "/b");
        assert_eq!(r.head().header_values("x-a").collect::<Vec<_>>(), [b"3"]);
        assert_eq!(r.head().path, "/b");
        r.set("x-a", "3");
        assert_eq!(
            r.pending_changes().len(),
            2,
            "setting the same value is no change"
        );
    }

    #[test]
    fn a_header_changed_twice_is_one_change_to_its_final_value() {
        let mut r = request();
        r.set("x-b", "1");
        r.remove("x-b");
        r.remove("x-a");
        r.set("x-a", "4");
        r.set("x-c", "1");
        r.set("x-c", "2");
        assert_eq!(
            r.pending_changes(),
            [HeaderOp::Set("x-a", b"4"), HeaderOp::Add("x-c", b"2")],
            "x-b was added and removed: nothing to ask"
        );
    }

    #[test]
    fn a_header_removed_set_and_removed_again_is_one_removal() {
        let mut r = request();
        r.remove("x-a");
        r.set("x-a", "5");
        assert_eq!(r.pending_changes(), [HeaderOp::Set("x-a", b"5")]);
        r.remove("x-a");
        assert_eq!(r.pending_changes(), [HeaderOp::Remove("x-a")]);
        let mut host = crate::mock::MockHost::default();
        r.apply_changes(&mut host);
        assert!(r.pending_changes().is_empty());
    }

    #[test]
    fn an_empty_value_removes_the_header() {
        let mut r = request();
        r.set("x-a", "");
        r.set("x-new", "");
        assert!(!r.has_header("x-a") && !r.has_header("x-new"));
        assert_eq!(r.pending_changes(), [HeaderOp::Remove("x-a")]);
    }

    #[test]
    fn a_header_the_proxy_lacks_is_added_and_one_it_holds_is_set() {
        let mut r = request();
        r.set("x-new", "1");
        r.set("x-a", "9");
        assert_eq!(
            r.pending_changes(),
            [HeaderOp::Set("x-a", b"9"), HeaderOp::Add("x-new", b"1")]
        );
        let mut host = crate::mock::MockHost::default();
        r.apply_changes(&mut host);
        // Once applied, the proxy holds x-new: a later change sets it.
        r.set("x-new", "2");
        r.remove("x-a");
        assert_eq!(
            r.pending_changes(),
            [HeaderOp::Set("x-new", b"2"), HeaderOp::Remove("x-a")]
        );
    }
}
