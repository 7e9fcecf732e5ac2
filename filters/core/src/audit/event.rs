//! One audit event per stage decision, and the message that carries one
//! request's events from a worker to the singleton.
//!
//! The request path does as little as it can: a stage's decision is noted
//! as a [`Decision`] (stage, allow/deny, reason, time), and the events are
//! written once, when the request is done, with what the request carries
//! (request id, client, identity, operation) filled in then.

use super::json::{push_field, push_str, push_u64};
use crate::contract::Established;

/// One stage's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub stage: &'static str,
    pub time_ms: u64,
    /// The refusal's status and `details` (a `ctxgate_...` reason), if
    /// the stage refused.
    pub refusal: Option<(u16, String)>,
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

/// One request's record as written to the trail (JSON, see [`Record::write`]):
/// what the request carried, once, and one entry per stage decision (an
/// event). Absent facts are left out.
struct Record<'a> {
    /// The first decision's time.
    time_ms: u64,
    request_id: Option<&'a str>,
    tenant: Option<&'a str>,
    subject: Option<&'a str>,
    /// The acting service, if any.
    service: Option<&'a str>,
    actors: &'a [String],
    operation: Option<&'a str>,
    context: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    client: Option<&'a str>,
    token: Option<&'a str>,
    decisions: &'a [Decision],
}

impl Record<'_> {
    /// Appends the record as one JSON object, keys in the order of the
    /// fields. Each decision is an array: `[stage, "allow", ms]` or
    /// `[stage, "deny", ms, status, reason]`, `ms` counted from the
    /// record's `time_ms`. Written by hand: on the request path this is
    /// a third of what serde_json costs.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time_ms\":");
        push_u64(out, self.time_ms);
        push_field(out, b",\"request_id\":", self.request_id);
        push_field(out, b",\"tenant\":", self.tenant);
        push_field(out, b",\"subject\":", self.subject);
        push_field(out, b",\"service\":", self.service);
        if !self.actors.is_empty() {
            out.extend_from_slice(b",\"actors\":[");
            for (i, actor) in self.actors.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_str(out, actor);
            }
            out.push(b']');
        }
        push_field(out, b",\"operation\":", self.operation);
        push_field(out, b",\"context\":", self.context);
        // Empty for a head refused as incomplete: left out, like any
        // fact the request did not have.
        push_field(
            out,
            b",\"method\":",
            Some(self.method).filter(|m| !m.is_empty()),
        );
        push_field(
            out,
            b",\"path\":",
            Some(self.path).filter(|p| !p.is_empty()),
        );
        push_field(out, b",\"client\":", self.client);
        push_field(out, b",\"token\":", self.token);
        out.extend_from_slice(b",\"decisions\":[");
        for (i, d) in self.decisions.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
            push_str(out, d.stage);
            out.extend_from_slice(match d.refusal {
                Some(_) => b",\"deny\",",
                None => b",\"allow\",",
            });
            push_u64(out, d.time_ms.saturating_sub(self.time_ms));
            if let Some((status, reason)) = &d.refusal {
                out.push(b',');
                push_u64(out, u64::from(*status));
                out.push(b',');
                push_str(out, reason);
            }
            out.push(b']');
        }
        out.extend_from_slice(b"]}");
    }
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

/// Subjects as keyed hashes (HMAC-SHA256 truncated to 128 bits, hex),
/// remembered per worker: most requests come from subjects seen a moment
/// ago.
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
            self.seen
                .insert(subject.to_owned(), hex(mac.get(..16).unwrap_or_default()));
        }
        self.seen.get(subject).map_or("", String::as_str)
    }
}

/// Format version of a queue message.
const MESSAGE_VERSION: u8 = 3;

/// Records of one worker, and what it lost before them. Layout: version
/// (1 byte), reporter (u64 LE), dropped (u64 LE), then per record: its
/// events (u64 LE), its length (u32 LE), its JSON.
pub struct Message {
    reporter: u64,
    bytes: Vec<u8>,
    records: usize,
    events: u64,
}

/// Bytes before the first record.
const HEADER: usize = 1 + 8 + 8;

impl Message {
    pub fn new(reporter: u64) -> Message {
        let mut message = Message {
            reporter,
            bytes: Vec::new(),
            records: 0,
            events: 0,
        };
        message.clear();
        message
    }

    /// Empties the message, keeping its memory: the next records are
    /// written into the same buffer, still in cache.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.push(MESSAGE_VERSION);
        self.bytes.extend_from_slice(&self.reporter.to_le_bytes());
        self.bytes.extend_from_slice(&0u64.to_le_bytes());
        self.records = 0;
        self.events = 0;
    }

    /// Sets how many events the worker dropped before these records.
    pub fn set_dropped(&mut self, dropped: u64) {
        if let Some(slot) = self.bytes.get_mut(9..17) {
            slot.copy_from_slice(&dropped.to_le_bytes());
        }
    }

    /// Appends one request's record.
    pub fn add(
        &mut self,
        decisions: &[Decision],
        facts: &RequestFacts<'_>,
        pseudonymizer: Option<&mut Pseudonymizer>,
    ) {
        let identity = facts.established.and_then(|e| e.identity.as_deref());
        let operation = facts.established.and_then(|e| e.operation.as_deref());
        let subject = match (identity, pseudonymizer) {
            (Some(caller), Some(p)) => Some(p.pseudonym(&caller.subject)),
            (Some(caller), None) => Some(caller.subject.as_str()),
            (None, _) => None,
        };
        let start_ms = decisions.first().map_or(0, |d| d.time_ms);
        let record = Record {
            time_ms: start_ms,
            request_id: facts.request_id,
            tenant: identity.map(|c| c.tenant.as_str()),
            subject,
            // The calling service (certificate or service token), else the
            // token's current actor (RFC 8693 delegation).
            service: identity
                .and_then(|c| c.service.as_ref().or(c.actors.first()))
                .map(String::as_str),
            actors: identity.map_or(&[], |c| c.actors.as_slice()),
            operation: operation.map(|o| o.name.as_str()),
            context: operation.map(|o| o.context.as_str()),
            method: facts.method,
            path: facts.path,
            client: facts.client,
            token: facts.token,
            decisions,
        };
        let events = decisions.len() as u64;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&events.to_le_bytes());
        self.bytes.extend_from_slice(&[0; 4]);
        record.write(&mut self.bytes);
        let len = u32::try_from(self.bytes.len() - start - 12).unwrap_or(u32::MAX);
        if let Some(slot) = self.bytes.get_mut(start + 8..start + 12) {
            slot.copy_from_slice(&len.to_le_bytes());
        }
        self.records += 1;
        self.events = self.events.saturating_add(events);
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// A message as the singleton reads it, borrowing the message's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Received<'a> {
    pub reporter: u64,
    pub dropped: u64,
    /// Each record's events and JSON, as the worker wrote it.
    pub records: Vec<(u64, &'a [u8])>,
}

impl Received<'_> {
    pub fn events(&self) -> u64 {
        self.records.iter().map(|(n, _)| *n).sum()
    }
}

/// Reads a queue message; `None` if it is not one (never from a worker
/// of this module).
pub fn parse_message(bytes: &[u8]) -> Option<Received<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != MESSAGE_VERSION {
        return None;
    }
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let (reporter, dropped) = (u64_at(rest, 0)?, u64_at(rest, 8)?);
    let mut rest = bytes.get(HEADER..)?;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let events = u64_at(rest, 0)?;
        let len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        records.push((events, rest.get(12..12 + len)?));
        rest = rest.get(12 + len..)?;
    }
    Some(Received {
        reporter,
        dropped,
        records,
    })
}
