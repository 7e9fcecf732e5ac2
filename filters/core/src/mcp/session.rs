//! Session binding: an `Mcp-Session-Id` (the 2025 revisions' sessions)
//! belongs to the principal whose `initialize` the server answered with
//! it, and to no one else.
//!
//! The gateway records, when the server issues a session id, which
//! (tenant, subject) it was issued to, in shared data so that every worker
//! sees it. A request carrying a session id the gateway did not see issued
//! to this principal, another principal's or one it forgot, is refused
//! with 404, which tells an MCP client to start a new session (and tells a
//! client holding someone else's id nothing about whether it exists).
//!
//! The table is bounded: `max_entries` slots, one session each, picked by
//! a keyed hash of the session id (clients cannot aim at a slot). A new
//! session evicts whatever held its slot; the evicted session's next
//! request gets 404 and its client re-initialises. Entries expire `ttl`
//! after their last refresh (refreshed when less than half is left, so a
//! busy session costs a shared-data write at most twice per ttl).
//!
//! Record (kind `McpSession`, version 1): session hash (u64), principal
//! hash (u64), expiry in unix milliseconds (u64); all zero is an empty
//! slot.

use crate::record::{self, Kind, RecordError};
use crate::shared::{Change, Secret, SharedStore, Update, update};

const VERSION: u8 = 1;
const ATTEMPTS: u32 = 4;

/// The session table of one plugin.
pub struct SessionTable {
    prefix: String,
    slots: u32,
    ttl_ms: u64,
    secret: Secret,
}

/// What the table knows of a session id, for a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// Issued to this principal, and not expired.
    Bound,
    /// Issued to another principal.
    OtherPrincipal,
    /// Never seen issued, expired, or evicted.
    Unknown,
    /// The slot's record does not decode (counted by the caller; refused).
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Entry {
    session: u64,
    principal: u64,
    expires_ms: u64,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut w = record::writer(Kind::McpSession, VERSION, 24);
        w.u64(self.session).u64(self.principal).u64(self.expires_ms);
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Entry, RecordError> {
        let mut r = record::reader(bytes, Kind::McpSession, VERSION)?;
        let entry = Entry {
            session: r.u64()?,
            principal: r.u64()?,
            expires_ms: r.u64()?,
        };
        r.end()?;
        Ok(entry)
    }
}

impl SessionTable {
    /// `prefix`: the shared-data key prefix (the plugin's namespace).
    pub fn new(prefix: &str, max_entries: usize, ttl_seconds: u64, secret: Secret) -> SessionTable {
        SessionTable {
            prefix: format!("{prefix}.mcp_session."),
            slots: u32::try_from(max_entries.max(1)).unwrap_or(u32::MAX),
            ttl_ms: ttl_seconds.saturating_mul(1000),
            secret,
        }
    }

    /// Creates the slots (at configure time; existing ones are kept).
    pub fn init_shared(&self, store: &dyn SharedStore) {
        let empty = Entry::default().encode();
        for slot in 0..self.slots {
            store.ensure(&self.slot_key(slot), &empty);
        }
    }

    fn slot_key(&self, slot: u32) -> String {
        format!("{}{slot}", self.prefix)
    }

    fn session_hash(&self, session_id: &[u8]) -> u64 {
        // Zero marks an empty slot.
        self.secret.hash(session_id).max(1)
    }

    /// The keyed hash of a principal (tenant and subject).
    pub fn principal(&self, tenant: &str, subject: &str) -> u64 {
        let mut bytes = Vec::with_capacity(tenant.len() + subject.len() + 1);
        bytes.extend_from_slice(tenant.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(subject.as_bytes());
        self.secret.hash(&bytes).max(1)
    }

    fn slot_of(&self, session: u64) -> String {
        self.slot_key(u32::try_from(session % u64::from(self.slots)).unwrap_or(0))
    }

    /// Records that the server issued `session_id` to `principal`.
    /// Returns whether it was written (a lost race or a host failure is
    /// not retried further: the session's next request then gets 404 and
    /// its client starts a new one).
    pub fn bind(
        &self,
        store: &dyn SharedStore,
        session_id: &[u8],
        principal: u64,
        now_ms: u64,
    ) -> bool {
        let session = self.session_hash(session_id);
        let entry = Entry {
            session,
            principal,
            expires_ms: now_ms.saturating_add(self.ttl_ms),
        };
        let written = update(store, &self.slot_of(session), ATTEMPTS, |_| {
            Change::Write(entry.encode(), ())
        });
        matches!(written, Update::Written(()))
    }

    /// What the table says of `session_id` for `principal`; refreshes the
    /// expiry of a bound session past half its ttl.
    pub fn check(
        &self,
        store: &dyn SharedStore,
        session_id: &[u8],
        principal: u64,
        now_ms: u64,
    ) -> SessionCheck {
        let session = self.session_hash(session_id);
        let key = self.slot_of(session);
        let refreshed = now_ms.saturating_add(self.ttl_ms);
        let half = self.ttl_ms / 2;
        let outcome = update(store, &key, ATTEMPTS, |bytes| match Entry::decode(bytes) {
            Err(_) => Change::Keep(SessionCheck::Invalid),
            Ok(e) if e.session != session || e.expires_ms <= now_ms => {
                Change::Keep(SessionCheck::Unknown)
            }
            Ok(e) if e.principal != principal => Change::Keep(SessionCheck::OtherPrincipal),
            Ok(e) if e.expires_ms.saturating_sub(now_ms) < half => Change::Write(
                Entry {
                    expires_ms: refreshed,
                    ..e
                }
                .encode(),
                SessionCheck::Bound,
            ),
            Ok(_) => Change::Keep(SessionCheck::Bound),
        });
        match outcome {
            Update::Written(check) | Update::Unchanged(check) => check,
            // The record was read as bound but the refresh lost every race:
            // the session is still bound, only its expiry is unchanged.
            Update::Contended => SessionCheck::Bound,
            Update::Failed => SessionCheck::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn table(slots: usize) -> (SessionTable, MemoryStore) {
        let store = MemoryStore::default();
        let t = SessionTable::new("ctxgate/test", slots, 60, Secret::from_bytes([7; 16]));
        t.init_shared(&store);
        (t, store)
    }

    #[test]
    fn a_session_belongs_to_the_principal_it_was_issued_to() {
        let (t, store) = table(64);
        let alice = t.principal("acme", "alice");
        let mallory = t.principal("acme", "mallory");
        assert!(t.bind(&store, b"s-1", alice, 1_000));
        assert_eq!(t.check(&store, b"s-1", alice, 2_000), SessionCheck::Bound);
        assert_eq!(
            t.check(&store, b"s-1", mallory, 2_000),
            SessionCheck::OtherPrincipal
        );
        assert_eq!(t.check(&store, b"s-2", alice, 2_000), SessionCheck::Unknown);
        // Same subject, other tenant: another principal.
        assert_ne!(t.principal("globex", "alice"), alice);
    }

    #[test]
    fn sessions_expire_unless_used_and_use_refreshes_them() {
        let (t, store) = table(64);
        let alice = t.principal("acme", "alice");
        t.bind(&store, b"s", alice, 0);
        // 40 s into a 60 s ttl: less than half left, refreshed to 100 s.
        assert_eq!(t.check(&store, b"s", alice, 40_000), SessionCheck::Bound);
        assert_eq!(t.check(&store, b"s", alice, 90_000), SessionCheck::Bound);
        assert_eq!(t.check(&store, b"s", alice, 200_000), SessionCheck::Unknown);
    }

    #[test]
    fn the_table_is_bounded_a_new_session_evicts_its_slot() {
        let (t, store) = table(1);
        let alice = t.principal("acme", "alice");
        t.bind(&store, b"first", alice, 0);
        t.bind(&store, b"second", alice, 0);
        assert_eq!(t.check(&store, b"first", alice, 1), SessionCheck::Unknown);
        assert_eq!(t.check(&store, b"second", alice, 1), SessionCheck::Bound);
        assert_eq!(store.len(), 1, "one slot, nothing else written");
    }

    #[test]
    fn a_record_that_does_not_decode_is_refused_not_trusted() {
        let (t, store) = table(1);
        store
            .set("ctxgate/test.mcp_session.0", b"garbage", None)
            .unwrap();
        let alice = t.principal("acme", "alice");
        assert_eq!(t.check(&store, b"s", alice, 1), SessionCheck::Invalid);
    }
}
