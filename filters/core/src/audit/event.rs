//! One audit event per stage decision, and the message that carries one
//! request's events from a worker to the singleton.
//!
//! The request path does as little as it can: a stage's decision is noted
//! as a [`Decision`] (stage, allow/deny, reason, time), and the events are
//! written once, when the request is done, with what the request carries
//! (request id, client, identity, operation) filled in then.

use serde::Serialize;

use crate::contract::Established;

/// One stage's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub stage: &'static str,
    pub allowed: bool,
    /// The refusal's `details` (a `ctxgate_...` reason), or `allowed`.
    pub reason: String,
    /// The refusal's status.
    pub status: Option<u16>,
    pub time_ms: u64,
}

/// What the request carried, for every event of it.
pub struct RequestFacts<'a> {
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    /// Path without the query (a query may carry a token).
    pub path: &'a str,
    pub client: Option<&'a str>,
    pub established: Option<&'a Established>,
    /// The bearer token's digest ([`token_digest`]), never the token.
    pub token: Option<&'a str>,
}

/// An audit event as written to the trail (JSON).
#[derive(Serialize)]
struct Event<'a> {
    time_ms: u64,
    request_id: Option<&'a str>,
    stage: &'a str,
    decision: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    tenant: Option<&'a str>,
    subject: Option<&'a str>,
    /// The acting service (the token's current actor), if any.
    service: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    actors: &'a [String],
    operation: Option<&'a str>,
    context: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    client: Option<&'a str>,
    token: Option<&'a str>,
}

/// The first 16 hex digits of the token's SHA-256: enough to tell tokens
/// apart in a trail, useless to replay.
pub fn token_digest(token: &[u8]) -> String {
    let hash = hmac_sha256::Hash::hash(token);
    hex(hash.get(..8).unwrap_or_default())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// Subjects as keyed hashes (HMAC-SHA256, hex), remembered per worker:
/// most requests come from subjects seen a moment ago.
pub struct Pseudonymizer {
    key: Vec<u8>,
    seen: std::collections::HashMap<String, String>,
}

/// Subjects remembered before the memory is cleared.
const PSEUDONYMS_KEPT: usize = 4096;

impl Pseudonymizer {
    pub fn new(key: &[u8]) -> Pseudonymizer {
        Pseudonymizer {
            key: key.to_vec(),
            seen: std::collections::HashMap::new(),
        }
    }

    pub fn pseudonym(&mut self, subject: &str) -> &str {
        if !self.seen.contains_key(subject) {
            if self.seen.len() >= PSEUDONYMS_KEPT {
                self.seen.clear();
            }
            let mac = hmac_sha256::HMAC::mac(subject.as_bytes(), &self.key);
            self.seen.insert(subject.to_owned(), hex(&mac));
        }
        self.seen.get(subject).map_or("", String::as_str)
    }
}

/// Format version of a queue message.
const MESSAGE_VERSION: u8 = 1;

/// The events of one request, and what the worker lost before them.
pub struct Message {
    bytes: Vec<u8>,
    events: u64,
}

impl Message {
    /// `dropped`: events this worker dropped since its last message.
    pub fn new(reporter: u64, dropped: u64) -> Message {
        let mut bytes = Vec::with_capacity(1024);
        bytes.push(MESSAGE_VERSION);
        bytes.extend_from_slice(&reporter.to_le_bytes());
        bytes.extend_from_slice(&dropped.to_le_bytes());
        Message { bytes, events: 0 }
    }

    /// Appends one event per decision.
    pub fn add(
        &mut self,
        decisions: &[Decision],
        facts: &RequestFacts<'_>,
        pseudonymizer: Option<&mut Pseudonymizer>,
    ) {
        let identity = facts.established.and_then(|e| e.identity.as_deref());
        let operation = facts.established.and_then(|e| e.operation.as_deref());
        let subject = match (identity, pseudonymizer) {
            (Some(caller), Some(p)) => Some(p.pseudonym(&caller.subject).to_owned()),
            (Some(caller), None) => Some(caller.subject.clone()),
            (None, _) => None,
        };
        for d in decisions {
            let event = Event {
                time_ms: d.time_ms,
                request_id: facts.request_id,
                stage: d.stage,
                decision: if d.allowed { "allow" } else { "deny" },
                reason: &d.reason,
                status: d.status,
                tenant: identity.map(|c| c.tenant.as_str()),
                subject: subject.as_deref(),
                service: identity.and_then(|c| c.actors.first()).map(String::as_str),
                actors: identity.map_or(&[], |c| c.actors.as_slice()),
                operation: operation.map(|o| o.name.as_str()),
                context: operation.map(|o| o.context.as_str()),
                method: facts.method,
                path: facts.path,
                client: facts.client,
                token: facts.token,
            };
            let start = self.bytes.len();
            self.bytes.extend_from_slice(&[0; 4]);
            if serde_json::to_writer(&mut self.bytes, &event).is_err() {
                self.bytes.truncate(start);
                continue;
            }
            let len = u32::try_from(self.bytes.len() - start - 4).unwrap_or(u32::MAX);
            if let Some(slot) = self.bytes.get_mut(start..start + 4) {
                slot.copy_from_slice(&len.to_le_bytes());
            }
            self.events += 1;
        }
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A message as the singleton reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    pub reporter: u64,
    pub dropped: u64,
    /// Each event's JSON, as the worker wrote it.
    pub events: Vec<Vec<u8>>,
}

/// Reads a queue message; `None` if it is not one (never from a worker
/// of this module).
pub fn parse_message(bytes: &[u8]) -> Option<Received> {
    let (&version, rest) = bytes.split_first()?;
    if version != MESSAGE_VERSION {
        return None;
    }
    let reporter = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let dropped = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
    let mut rest = rest.get(16..)?;
    let mut events = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        events.push(rest.get(4..4 + len)?.to_vec());
        rest = rest.get(4 + len..)?;
    }
    Some(Received {
        reporter,
        dropped,
        events,
    })
}
