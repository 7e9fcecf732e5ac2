//! The MCP stage: requests to the MCP endpoints (`mcp.paths`), decided on
//! their JSON-RPC body ([`crate::mcp`]).
//!
//! At the headers (after auth authenticated the caller): a session id
//! must be bound to the caller, a token in the query string is refused,
//! `Authorization` is removed whatever auth's `forward` says (the token
//! never reaches the MCP server), and the call the standard headers
//! declare (`Mcp-Method`, `Mcp-Name`) is kept for routing tags. Proxy-Wasm
//! gives no body to a filter that holds the headers, so the headers go on
//! and the driver holds the body of a POST (at most `max_body_bytes`, else
//! 413). With the whole body this stage reads the messages, checks the
//! standard headers against them, resolves each through the tool map and
//! checks the caller's scopes; then it names the operation
//! (`mcp:tools/call`, the tool's action, context path and name) for the
//! rate limiter and filter state, and sets the price. A refusal resets the
//! upstream request, which never received a byte of the body.
//!
//! It also serves the RFC 9728 protected-resource metadata
//! (`resource_metadata`), without a token, and adds `resource_metadata`
//! to auth's `WWW-Authenticate` challenges on MCP endpoints.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `ctxgate_mcp.allowed` | counter | MCP POSTs let through (each message decided) |
//! | `ctxgate_mcp.refused.<reason>` | counter | refusals, one counter per reason code |
//! | `ctxgate_mcp.metadata` | counter | protected-resource metadata documents served |
//! | `ctxgate_mcp.listing_filtered` | counter | listing responses (or SSE chunks of them) narrowed to what the caller may use |

use super::request::Request;
use super::{Flow, Step};
use crate::config::ConfigError;
use crate::contract::MatchedOperation;
use crate::host::{Host, StreamId};
use crate::mcp::config::McpConfig;
use crate::mcp::{Id, Kind, SessionCheck, SessionTable, code, error_response};
use crate::mcp::{
    Limits, Listings, McpHeaders, Reason, Refusal, SseListingFilter, ToolMap, Viewer, filter_json,
    parse_body,
};
use crate::metrics::{Counter, Metrics};
use crate::path::split_path_query;
use crate::query::Query;
use crate::reply::LocalReply;
use crate::scope::ScopeSet;
use crate::shared::Secret;
use std::sync::Arc;

/// The `message` of another stage's JSON refusal body ("refused" if it
/// has none) and its other fields.
fn message_and_fields(body: &[u8]) -> (String, serde_json::Map<String, serde_json::Value>) {
    let mut fields = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    };
    let message = match fields.remove("message") {
        Some(serde_json::Value::String(message)) => message,
        _ => "refused".to_owned(),
    };
    (message, fields)
}

/// The longest SSE event held back while a listing stream is filtered.
const MAX_LISTING_EVENT_BYTES: usize = 1 << 20;

/// What the mcp stage keeps for one stream: the listings its response
/// answers, which are narrowed to what the caller may use.
#[derive(Default)]
pub struct McpStream {
    listing: Option<Listing>,
    /// The caller, for binding a session the server issues.
    principal: Option<u64>,
    /// The `Mcp-Session-Id` the request carried.
    session: Option<Vec<u8>>,
    /// Whom a later stage's refusal answers, once the body is decided.
    answering: Option<Answering>,
}

/// The message a refusal after the mcp stage answers: the first one's id
/// (`None` for a batch: null), or nobody (a notification or a client's
/// response waits for no answer).
struct Answering {
    id: Option<Id>,
    silent: bool,
}

/// The session header of the 2025 revisions.
const SESSION_HEADER: &str = "mcp-session-id";

struct Listing {
    listings: Listings,
    scopes: Arc<ScopeSet>,
    /// How the response is filtered, once its headers told.
    mode: Option<ListingMode>,
}

enum ListingMode {
    /// One JSON body: held until it is whole.
    Json,
    /// An event stream: filtered event by event as it passes.
    Sse(Box<SseListingFilter>),
}

/// The query parameter RFC 6750 defines for a token in the URI.
const QUERY_TOKEN_PARAM: &str = "access_token";

struct Counters {
    allowed: Counter,
    filtered: Counter,
    refused: Vec<(Reason, Counter)>,
    metadata: Counter,
}

/// The protected-resource metadata, ready to serve.
struct Metadata {
    /// Where it is served (`/.well-known/oauth-protected-resource/mcp`).
    path: String,
    /// Its absolute URL, for `WWW-Authenticate: Bearer resource_metadata=`.
    url: String,
    document: Vec<u8>,
}

pub struct McpStage {
    config: McpConfig,
    sessions: SessionTable,
    map: ToolMap,
    limits: Limits,
    metadata: Option<Metadata>,
    counters: Counters,
}

impl McpStage {
    pub fn new(
        config: McpConfig,
        namespace: &str,
        secret: Secret,
        host: &dyn Host,
        metrics: &mut Metrics,
    ) -> Result<McpStage, ConfigError> {
        config.validate()?;
        let map = ToolMap::compile(&config)?;
        let sessions = SessionTable::new(
            namespace,
            config.sessions.max_entries,
            config.sessions.ttl_seconds,
            secret,
        );
        sessions.init_shared(host.shared());
        let metadata = config.resource_metadata.as_ref().map(|m| {
            let path = m.well_known_path();
            let origin = m
                .resource
                .split_once("://")
                .map(|(scheme, rest)| {
                    let host = rest.split(['/', '?']).next().unwrap_or(rest);
                    format!("{scheme}://{host}")
                })
                .unwrap_or_default();
            Metadata {
                url: format!("{origin}{path}"),
                path,
                document: m.document().to_string().into_bytes(),
            }
        });
        let counters = Counters {
            allowed: metrics.counter("ctxgate_mcp.allowed"),
            filtered: metrics.counter("ctxgate_mcp.listing_filtered"),
            refused: Reason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        metrics.counter(&format!("ctxgate_mcp.refused.{}", r.code())),
                    )
                })
                .collect(),
            metadata: metrics.counter("ctxgate_mcp.metadata"),
        };
        Ok(McpStage {
            config,
            sessions,
            map,
            limits: Limits::default(),
            metadata,
            counters,
        })
    }

    /// Is `request` for an MCP endpoint?
    pub fn is_endpoint(&self, request: &Request) -> bool {
        let (path, _) = split_path_query(request.head().path);
        self.config.is_endpoint(path)
    }

    /// The protected-resource metadata, if `request` asks for it: served
    /// before any other stage runs (it needs no token).
    pub fn metadata_reply(&self, request: &Request, metrics: &mut Metrics) -> Option<LocalReply> {
        let metadata = self.metadata.as_ref()?;
        let head = request.head();
        let (path, _) = split_path_query(head.path);
        if path != metadata.path || !matches!(head.method, "GET" | "HEAD") {
            return None;
        }
        metrics.inc(self.counters.metadata);
        Some(LocalReply {
            status: 200,
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("cache-control".to_owned(), "max-age=300".to_owned()),
            ],
            body: metadata.document.clone(),
            grpc_status: None,
            details: "ctxgate_mcp_resource_metadata".to_owned(),
        })
    }

    /// The longest body the driver waits for before the stages run: a
    /// POST to an MCP endpoint.
    pub fn body_limit(&self, request: &Request) -> Option<u64> {
        (request.head().method == "POST" && self.is_endpoint(request))
            .then_some(self.config.max_body_bytes)
    }

    /// The refusal of a body longer than [`McpStage::body_limit`].
    pub fn too_large(&self, metrics: &mut Metrics) -> LocalReply {
        let refusal = Refusal::new(
            Reason::BodyTooLarge,
            format!(
                "the body is longer than {} bytes",
                self.config.max_body_bytes
            ),
        );
        self.refuse(refusal, metrics)
    }

    fn refuse(&self, refusal: Refusal, metrics: &mut Metrics) -> LocalReply {
        if let Some((_, counter)) = self
            .counters
            .refused
            .iter()
            .find(|(r, _)| *r == refusal.reason)
        {
            metrics.inc(*counter);
        }
        let mut reply = refusal.reply();
        if let Some(scope) = &refusal.required_scope {
            let mut challenge = format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                scope.replace(['"', '\\'], "")
            );
            if let Some(m) = &self.metadata {
                challenge.push_str(&format!(", resource_metadata=\"{}\"", m.url));
            }
            reply
                .headers
                .push(("www-authenticate".to_owned(), challenge));
        }
        reply
    }

    /// Auth's refusal of a request to an MCP endpoint: its challenge names
    /// the resource metadata, and the body becomes a JSON-RPC error.
    pub fn amend_refusal(&self, request: &Request, reply: &mut LocalReply) {
        if !self.is_endpoint(request) {
            return;
        }
        if let Some(m) = &self.metadata {
            for (name, value) in reply.headers.iter_mut() {
                if name.eq_ignore_ascii_case("www-authenticate") {
                    value.push_str(&format!(", resource_metadata=\"{}\"", m.url));
                }
            }
        }
        // Auth decides at the headers, before the body is in (Proxy-Wasm
        // delivers no body while the headers are held), so the request's
        // id cannot be read: null, as JSON-RPC prescribes then.
        let (message, _) = message_and_fields(&reply.body);
        let mut data = serde_json::Map::new();
        data.insert("status".to_owned(), reply.status.into());
        reply.body = error_response(None, code::INVALID_REQUEST, &message, data)
            .to_string()
            .into_bytes();
    }

    /// A refusal by a stage after this one (the rate limiter's 429) of a
    /// POST this stage decided: a JSON-RPC error with the request's id,
    /// the code -31000 minus the status, the refusing stage's message, and
    /// its other fields (`retry_after_seconds`, `limit`...) under `data`
    /// with `reason` and `status`; no body for a notification. Status,
    /// headers and response details are the stage's.
    pub fn amend_body_refusal(&self, stream: &McpStream, reply: &mut LocalReply) {
        let Some(answering) = &stream.answering else {
            return;
        };
        reply
            .headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        if answering.silent {
            reply.body.clear();
            return;
        }
        let (message, mut fields) = message_and_fields(&reply.body);
        if let Some(reason) = fields.remove("error") {
            fields.insert("reason".to_owned(), reason);
        }
        fields.insert("status".to_owned(), reply.status.into());
        let code = code::for_status(reply.status);
        reply.body = error_response(answering.id.as_ref(), code, &message, fields)
            .to_string()
            .into_bytes();
        reply
            .headers
            .push(("content-type".to_owned(), "application/json".to_owned()));
    }

    /// At the headers: a token in the query string is refused, and the
    /// caller's token never goes on to the MCP server.
    pub fn on_request(
        &mut self,
        host: &mut dyn Host,
        request: &mut Request,
        stream: &mut McpStream,
        metrics: &mut Metrics,
    ) -> Step {
        if !self.is_endpoint(request) {
            return Step::Next;
        }
        stream.principal = request
            .established(host)
            .identity
            .as_deref()
            .map(|caller| self.sessions.principal(&caller.tenant, &caller.subject));
        stream.session = request
            .head()
            .header(SESSION_HEADER)
            .map(|v| v.as_bytes().to_vec());
        if let (Some(session), Some(principal)) = (stream.session.as_deref(), stream.principal) {
            let reason = match self
                .sessions
                .check(host.shared(), session, principal, host.now_ms())
            {
                SessionCheck::Bound => None,
                SessionCheck::OtherPrincipal => Some(Reason::SessionOtherPrincipal),
                SessionCheck::Unknown | SessionCheck::Invalid => Some(Reason::SessionUnknown),
            };
            if let Some(reason) = reason {
                let refusal = Refusal::new(reason, "Session not found");
                return Step::Reply(self.refuse(refusal, metrics));
            }
        }
        let (_, query) = split_path_query(request.head().path);
        if Query::parse(query).is_ok_and(|q| q.values(QUERY_TOKEN_PARAM).next().is_some()) {
            let refusal = Refusal::new(
                Reason::QueryToken,
                "send the token in the Authorization header, not the query string",
            );
            return Step::Reply(self.refuse(refusal, metrics));
        }
        // No token passthrough, whatever auth's `forward` says.
        request.remove("authorization");
        request.mcp_declared = McpHeaders::from_head(&request.head()).declared();
        Step::Next
    }

    /// With the whole body of a POST: the messages are read, checked
    /// against the standard headers, resolved and authorised; the
    /// operation is named for the rate limiter and filter state, and the
    /// price set.
    pub fn on_body(
        &mut self,
        host: &mut dyn Host,
        request: &mut Request,
        stream: &mut McpStream,
        metrics: &mut Metrics,
    ) -> Step {
        let body = request.body.take().unwrap_or_default();
        let scopes = request.established_scopes().unwrap_or_default();
        let decided = {
            let head = request.head();
            let headers = McpHeaders::from_head(&head);
            parse_body(&body, &headers, &self.limits).and_then(|parsed| {
                let resolved = self.map.decide(&parsed, &headers, &scopes)?;
                let answering = match parsed.messages.first() {
                    Some(first) if !parsed.batch => Answering {
                        id: first.id.clone(),
                        silent: first.kind != Kind::Request,
                    },
                    _ => Answering {
                        id: None,
                        silent: false,
                    },
                };
                Ok((resolved, Listings::of(&parsed), answering))
            })
        };
        let body_bytes = body.len() as u64;
        request.body = Some(body);
        let (resolved, listings, answering) = match decided {
            Ok(decided) => decided,
            Err(refusal) => return Step::Reply(self.refuse(refusal, metrics)),
        };
        stream.answering = Some(answering);
        if !listings.is_empty() {
            stream.listing = Some(Listing {
                listings,
                scopes,
                mode: None,
            });
        }
        metrics.inc(self.counters.allowed);
        request.price = Some(
            resolved
                .iter()
                .map(|r| r.cost.units(body_bytes))
                .fold(0u64, u64::saturating_add),
        );
        // The first message names the operation (a batch's others are
        // priced, not named).
        if let Some(first) = resolved.first() {
            let operation = MatchedOperation {
                name: first.operation.clone(),
                action: first
                    .access
                    .as_ref()
                    .map(|a| a.action.as_str().to_owned())
                    .unwrap_or_default(),
                context: first
                    .access
                    .as_ref()
                    .map(|a| a.context.to_string())
                    .unwrap_or_default(),
                target: first.name.clone(),
            };
            let established = request.established_mut(host);
            established.operation = Some(Arc::new(operation));
            // Filter state for access logs and later filters, now with
            // the operation (auth wrote it without one at the headers).
            if let Some(caller) = established.identity.as_deref()
                && let Ok(caller_json) = serde_json::to_vec(caller)
            {
                let state = crate::contract::encode(&caller_json, established.operation.as_deref());
                host.set_filter_state(
                    request.stream,
                    crate::contract::REQUEST_FILTER_STATE,
                    &state,
                );
            }
        }
        Step::Next
    }

    /// The response to a listing: JSON is held until whole, an event
    /// stream is filtered as it passes; either way its length changes.
    pub fn on_response_headers(&self, host: &mut dyn Host, id: StreamId, stream: &mut McpStream) {
        // A session the server issued belongs to this caller from now on.
        if let Some(principal) = stream.principal
            && let Some(issued) = host.response_header(id, SESSION_HEADER)
            && stream.session.as_deref() != Some(issued.as_bytes())
        {
            let now = host.now_ms();
            self.sessions
                .bind(host.shared(), issued.as_bytes(), principal, now);
        }
        let Some(listing) = stream.listing.as_mut() else {
            return;
        };
        let media = host
            .response_header(id, "content-type")
            .and_then(|ct| ct.split(';').next().map(|m| m.trim().to_ascii_lowercase()));
        listing.mode = match media.as_deref() {
            Some("application/json") => Some(ListingMode::Json),
            Some("text/event-stream") => Some(ListingMode::Sse(Box::new(SseListingFilter::new(
                listing.listings.clone(),
                MAX_LISTING_EVENT_BYTES,
            )))),
            _ => None,
        };
        if listing.mode.is_some() {
            host.remove_response_header(id, "content-length");
        }
    }

    /// A chunk of the response body (`size` bytes held by the proxy).
    pub fn on_response_body(
        &self,
        host: &mut dyn Host,
        id: StreamId,
        stream: &mut McpStream,
        size: usize,
        end_of_stream: bool,
        metrics: &mut Metrics,
    ) -> Flow {
        let Some(listing) = stream.listing.as_mut() else {
            return Flow::Continue;
        };
        let viewer = Viewer {
            map: &self.map,
            scopes: &listing.scopes,
        };
        match listing.mode.as_mut() {
            None => Flow::Continue,
            Some(ListingMode::Json) => {
                if !end_of_stream {
                    return Flow::Pause;
                }
                let body = host.response_body(id, size);
                if let Some(filtered) = filter_json(&body, &listing.listings, &viewer) {
                    metrics.inc(self.counters.filtered);
                    host.set_response_body(id, size, &filtered);
                }
                Flow::Continue
            }
            Some(ListingMode::Sse(filter)) => {
                let chunk = host.response_body(id, size);
                let mut out = match filter.push(&chunk, &viewer) {
                    Ok(out) => out,
                    // An event too long to hold back whole cannot be
                    // filtered, and passing it would leak entries: the rest
                    // of the stream is dropped instead.
                    Err(_) => {
                        metrics.inc(self.counters.filtered);
                        host.set_response_body(id, size, b"");
                        return Flow::Continue;
                    }
                };
                if end_of_stream {
                    out.extend(filter.finish(&viewer));
                }
                if out != chunk {
                    metrics.inc(self.counters.filtered);
                    host.set_response_body(id, size, &out);
                }
                Flow::Continue
            }
        }
    }
}
