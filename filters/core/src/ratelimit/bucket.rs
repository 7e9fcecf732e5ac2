//! Token buckets in a bounded table of shared-data slots.
//!
//! Every worker VM of one Envoy must see the same bucket for a tenant, so
//! buckets live in proxy-wasm shared data. Shared data never evicts and has
//! no delete, so the table is fixed: `slots` keys, created once, each
//! holding up to `ways` buckets. A key (tenant, ...) hashes to one slot. A
//! new key in a full slot replaces the least recently used bucket there;
//! the replaced key starts again from a full bucket if it returns. Memory is
//! therefore bounded by `slots x ways` whatever the number of tenants, and
//! a tenant can only be "forgotten" (over-admitted by at most one burst)
//! when more than `ways` busy keys share its slot.
//!
//! A bucket holds, per limit, the tokens left (in thousandths, so slow
//! refill rates accumulate exactly) and when they were last refilled. It
//! also carries the global (RLS) view used by hierarchical limiting: the
//! last count learned from the RLS plus what this Envoy admitted since, the
//! global limit, the end of the RLS window, and the consumption not yet
//! reported to the RLS.
//!
//! Every change is one compare-and-swap of the slot value, retried a
//! bounded number of times: concurrent updates are never lost, and when the
//! retries run out nothing is written and the caller is told so.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::shared::{Change, SharedStore, Update, update};

/// Milli-tokens per token.
pub const MILLI: u64 = 1000;

/// One limit as applied right now (after any adaptive multiplier): a
/// bucket of `capacity` milli-tokens refilled with `refill` milli-tokens
/// every `period_ms`, continuously. The refill is kept as a fraction so
/// slow rates (10 per hour) accumulate exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    pub capacity: u64,
    pub refill: u64,
    pub period_ms: u64,
    /// Does this limit count the request's cost (true) or 1 per request?
    pub counts_cost: bool,
}

impl LimitSpec {
    fn need(&self, cost: u64) -> u64 {
        if self.counts_cost {
            cost.saturating_mul(MILLI)
        } else {
            MILLI
        }
    }

    /// Tokens after refilling from `updated_ms` to `now_ms`, and the new
    /// refill timestamp: time that did not yet add a whole milli-token is
    /// carried, not lost.
    fn refilled(&self, tokens: u64, updated_ms: u64, now_ms: u64) -> (u64, u64) {
        let elapsed = now_ms.saturating_sub(updated_ms);
        if self.refill == 0 || self.period_ms == 0 {
            return (tokens.min(self.capacity), now_ms);
        }
        let added = u128::from(elapsed) * u128::from(self.refill) / u128::from(self.period_ms);
        let total = u128::from(tokens) + added;
        if total >= u128::from(self.capacity) {
            return (self.capacity, now_ms);
        }
        let used_ms = added * u128::from(self.period_ms) / u128::from(self.refill);
        let carried = updated_ms
            .saturating_add(u64::try_from(used_ms).unwrap_or(u64::MAX))
            .min(now_ms);
        (u64::try_from(total).unwrap_or(u64::MAX), carried)
    }

    /// Seconds until `needed` milli-tokens are available, from `tokens`.
    fn seconds_until(&self, tokens: u64, needed: u64) -> u64 {
        if tokens >= needed {
            return 0;
        }
        if self.refill == 0 {
            return u64::MAX;
        }
        let ms = (u128::from(needed - tokens) * u128::from(self.period_ms))
            .div_ceil(u128::from(self.refill));
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LimitState {
    tokens: u64,
    updated_ms: u64,
}

/// The RLS's view of a key, as known to this Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalView {
    /// Last count reported by the RLS, plus what this Envoy admitted since.
    pub used: u64,
    /// The RLS limit (0: not known yet).
    pub limit: u64,
    /// End of the RLS window, unix ms.
    pub reset_ms: u64,
    /// Consumption admitted locally and not yet reported to the RLS.
    pub unreported: u64,
}

impl GlobalView {
    /// Is the view current at `now_ms`?
    pub fn is_known(&self, now_ms: u64) -> bool {
        self.limit > 0 && now_ms < self.reset_ms
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: u64,
    limits: Vec<LimitState>,
    global: GlobalView,
    last_used_ms: u64,
}

const ENTRY_FIXED: usize = 8 + 1 + 8 + 32;

impl Entry {
    fn fresh(key: u64, specs: &[LimitSpec], now_ms: u64) -> Entry {
        Entry {
            key,
            limits: specs
                .iter()
                .map(|s| LimitState {
                    tokens: s.capacity,
                    updated_ms: now_ms,
                })
                .collect(),
            global: GlobalView::default(),
            last_used_ms: now_ms,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key.to_le_bytes());
        out.push(u8::try_from(self.limits.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.last_used_ms.to_le_bytes());
        for v in [
            self.global.used,
            self.global.limit,
            self.global.reset_ms,
            self.global.unreported,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for l in &self.limits {
            out.extend_from_slice(&l.tokens.to_le_bytes());
            out.extend_from_slice(&l.updated_ms.to_le_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_le_bytes(head.try_into().ok()?))
    }

    fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }
}

/// Decodes a slot. A slot that does not decode (never written, or written
/// by an incompatible version) reads as empty.
fn decode_slot(bytes: &[u8]) -> Vec<Entry> {
    let mut reader = Reader(bytes);
    let mut entries = Vec::new();
    while !reader.0.is_empty() {
        let Some(entry) = decode_entry(&mut reader) else {
            return Vec::new();
        };
        entries.push(entry);
    }
    entries
}

fn decode_entry(r: &mut Reader<'_>) -> Option<Entry> {
    let key = r.u64()?;
    let n = r.u8()?;
    let last_used_ms = r.u64()?;
    let global = GlobalView {
        used: r.u64()?,
        limit: r.u64()?,
        reset_ms: r.u64()?,
        unreported: r.u64()?,
    };
    let limits = (0..n)
        .map(|_| {
            Some(LimitState {
                tokens: r.u64()?,
                updated_ms: r.u64()?,
            })
        })
        .collect::<Option<_>>()?;
    Some(Entry {
        key,
        limits,
        global,
        last_used_ms,
    })
}

fn encode_slot(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * (ENTRY_FIXED + 32));
    for e in entries {
        e.encode(&mut out);
    }
    out
}

/// What a request may do, as decided on the local buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub allowed: bool,
    /// Admitted locally, but the RLS must decide (global limiting).
    pub ask_rls: bool,
    /// Refused because the RLS reported the key over its limit for the
    /// rest of its window (hierarchical mode).
    pub global_exhausted: bool,
    /// The most constrained limit: index, remaining whole tokens, capacity
    /// in whole tokens, seconds until full again (or, when refused, until
    /// the request would fit).
    pub tightest: Tightest,
    /// The global view after this request.
    pub global: GlobalView,
    /// A bucket of another key was replaced to make room.
    pub evicted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tightest {
    pub index: usize,
    pub remaining: u64,
    pub capacity: u64,
    pub reset_seconds: u64,
}

/// How a request should change the global view when it is admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GlobalAction {
    /// No global limiting.
    None,
    /// Admitted by the local bucket: count it as used and unreported.
    CountLocally,
    /// The RLS decides: hand over (zero) the unreported consumption so the
    /// caller can send it with this request's hits.
    ClaimUnreported,
    /// Decide here, atomically with the bucket update: count locally while
    /// the known global usage stays below `threshold` of the RLS limit and
    /// this Envoy's unreported consumption within `budget_share` of it
    /// (so several gateways together cannot pass the limit between two
    /// RLS answers); else claim for the RLS.
    Hierarchical { threshold: f64, budget_share: f64 },
}

/// The table of buckets.
pub struct BucketTable {
    prefix: String,
    slots: u32,
    ways: usize,
    attempts: u32,
}

/// Outcome of [`BucketTable::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    Done {
        take: Take,
        claimed_unreported: u64,
    },
    /// Every CAS attempt lost; nothing was written.
    Contended,
    /// The slot key is missing (it is created at configure time).
    Unavailable,
}

impl BucketTable {
    pub fn new(namespace: &str, slots: u32, ways: u32, attempts: u32) -> BucketTable {
        BucketTable {
            prefix: format!("ctxgate_rl.{namespace}.slot."),
            slots: slots.max(1),
            ways: usize::try_from(ways.max(1)).unwrap_or(1),
            attempts,
        }
    }

    /// Creates every slot key. Call from `on_configure`, before serving.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        for slot in 0..self.slots {
            store.ensure(&self.slot_key(slot), b"");
        }
    }

    /// Stable 64-bit identity of a bucket key.
    pub fn hash_key(key: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    fn slot_key(&self, slot: u32) -> String {
        format!("{}{slot}", self.prefix)
    }

    fn slot_of(&self, hash: u64) -> String {
        // The low bits pick the slot; the whole hash identifies the entry.
        self.slot_key(u32::try_from(hash % u64::from(self.slots)).unwrap_or(0))
    }

    /// Refills and, if every limit has room, consumes `cost` from the
    /// bucket of `hash`, applying `global` to the global view.
    pub fn take(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        specs: &[LimitSpec],
        cost: u64,
        global: GlobalAction,
        now_ms: u64,
    ) -> TakeOutcome {
        let outcome = update(store, &self.slot_of(hash), self.attempts, |value| {
            let mut entries = decode_slot(value);
            let mut evicted = false;
            let position = match entries.iter().position(|e| e.key == hash) {
                Some(i) => i,
                None => {
                    if entries.len() >= self.ways {
                        // Replace the least recently used bucket.
                        if let Some(lru) = entries
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, e)| e.last_used_ms)
                            .map(|(i, _)| i)
                        {
                            entries.remove(lru);
                            evicted = true;
                        }
                    }
                    entries.push(Entry::fresh(hash, specs, now_ms));
                    entries.len() - 1
                }
            };
            let Some(entry) = entries.get_mut(position) else {
                return Change::Keep(None);
            };
            if entry.limits.len() != specs.len() {
                // The key's limits changed shape (tier change): start over.
                *entry = Entry {
                    global: entry.global,
                    ..Entry::fresh(hash, specs, now_ms)
                };
            }
            let (take, claimed) = consume(entry, specs, cost, global, now_ms);
            let take = Take { evicted, ..take };
            if take.allowed || evicted {
                entry.last_used_ms = now_ms;
                Change::Write(encode_slot(&entries), Some((take, claimed)))
            } else {
                // A refused request changes nothing: refill is computed
                // lazily from the stored timestamps.
                Change::Keep(Some((take, claimed)))
            }
        });
        match outcome {
            Update::Written(Some((take, claimed))) | Update::Unchanged(Some((take, claimed))) => {
                TakeOutcome::Done {
                    take,
                    claimed_unreported: claimed,
                }
            }
            Update::Written(None) | Update::Unchanged(None) | Update::Failed => {
                TakeOutcome::Unavailable
            }
            Update::Contended => TakeOutcome::Contended,
        }
    }

    /// Applies an RLS answer to the global view of `hash`: `rls_used` is the
    /// RLS count after the reported hits, `limit` its limit, `reset_ms` the
    /// end of its window. Consumption admitted locally while the call was in
    /// flight stays counted on top.
    pub fn learn_global(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        rls_used: u64,
        limit: u64,
        reset_ms: u64,
    ) -> bool {
        let outcome = update(store, &self.slot_of(hash), self.attempts, |value| {
            let mut entries = decode_slot(value);
            let Some(entry) = entries.iter_mut().find(|e| e.key == hash) else {
                return Change::Keep(false);
            };
            entry.global.used = rls_used.saturating_add(entry.global.unreported);
            entry.global.limit = limit;
            entry.global.reset_ms = reset_ms;
            Change::Write(encode_slot(&entries), true)
        });
        outcome == Update::Written(true)
    }

    /// Takes (zeroes) the unreported consumption of `hash`, to report it.
    pub fn claim_unreported(&self, store: &dyn SharedStore, hash: u64) -> u64 {
        let outcome = update(store, &self.slot_of(hash), self.attempts, |value| {
            let mut entries = decode_slot(value);
            match entries.iter_mut().find(|e| e.key == hash) {
                Some(entry) if entry.global.unreported > 0 => {
                    let claimed = entry.global.unreported;
                    entry.global.unreported = 0;
                    Change::Write(encode_slot(&entries), claimed)
                }
                _ => Change::Keep(0),
            }
        });
        match outcome {
            Update::Written(n) => n,
            _ => 0,
        }
    }

    /// Gives back consumption that could not be reported (RLS failed), so
    /// the next report carries it.
    pub fn return_unreported(&self, store: &dyn SharedStore, hash: u64, amount: u64) {
        if amount == 0 {
            return;
        }
        let _ = update(store, &self.slot_of(hash), self.attempts, |value| {
            let mut entries = decode_slot(value);
            match entries.iter_mut().find(|e| e.key == hash) {
                Some(entry) => {
                    entry.global.unreported = entry.global.unreported.saturating_add(amount);
                    Change::Write(encode_slot(&entries), ())
                }
                None => Change::Keep(()),
            }
        });
    }

    /// Remaining whole tokens of each limit of `hash` right now (tests,
    /// diagnostics). `None` if the key has no bucket.
    pub fn peek(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        specs: &[LimitSpec],
        now_ms: u64,
    ) -> Option<Vec<u64>> {
        let (value, _) = store.get(&self.slot_of(hash))?;
        let entries = decode_slot(&value);
        let entry = entries.iter().find(|e| e.key == hash)?;
        Some(
            entry
                .limits
                .iter()
                .zip(specs)
                .map(|(state, spec)| {
                    spec.refilled(state.tokens, state.updated_ms, now_ms).0 / MILLI
                })
                .collect(),
        )
    }

    pub fn slot_count(&self) -> u32 {
        self.slots
    }
}

/// The bucket arithmetic for one request.
fn consume(
    entry: &mut Entry,
    specs: &[LimitSpec],
    cost: u64,
    global: GlobalAction,
    now_ms: u64,
) -> (Take, u64) {
    // The RLS already said this key is over its limit for the rest of the
    // window: refuse here instead of asking it again for every request.
    let global_exhausted = matches!(global, GlobalAction::Hierarchical { .. })
        && entry.global.is_known(now_ms)
        && entry.global.used >= entry.global.limit;
    let mut allowed = !global_exhausted;
    let mut refilled = Vec::with_capacity(specs.len());
    let mut stamps = Vec::with_capacity(specs.len());
    for (state, spec) in entry.limits.iter().zip(specs) {
        let (tokens, updated_ms) = spec.refilled(state.tokens, state.updated_ms, now_ms);
        if tokens < spec.need(cost) {
            allowed = false;
        }
        refilled.push(tokens);
        stamps.push(updated_ms);
    }
    if allowed {
        for (((state, spec), tokens), updated_ms) in entry
            .limits
            .iter_mut()
            .zip(specs)
            .zip(refilled.iter_mut())
            .zip(&stamps)
        {
            *tokens -= spec.need(cost);
            *state = LimitState {
                tokens: *tokens,
                updated_ms: *updated_ms,
            };
        }
    }
    // The tightest limit: the smallest fraction left (refused: the longest wait).
    let mut tightest = Tightest::default();
    let mut best: Option<(u128, u128)> = None;
    for (index, (spec, tokens)) in specs.iter().zip(&refilled).enumerate() {
        let reset_seconds = if allowed {
            spec.seconds_until(*tokens, spec.capacity)
        } else {
            spec.seconds_until(*tokens, spec.need(cost))
        };
        let candidate = Tightest {
            index,
            remaining: tokens / MILLI,
            capacity: spec.capacity / MILLI,
            reset_seconds,
        };
        // Compare tokens/capacity as cross products; refused requests rank
        // by how long they must wait.
        let rank = if allowed {
            (
                u128::from(*tokens) * 1_000_000 / u128::from(spec.capacity.max(1)),
                0,
            )
        } else {
            (u128::MAX - u128::from(reset_seconds), 0)
        };
        if best.is_none_or(|b| rank < b) {
            best = Some(rank);
            tightest = candidate;
        }
    }
    let mut claimed = 0;
    let mut ask_rls = false;
    if allowed {
        let action = match global {
            GlobalAction::Hierarchical {
                threshold,
                budget_share,
            } => {
                let view = &entry.global;
                let limit = view.limit as f64;
                let local = view.is_known(now_ms)
                    && (view.used.saturating_add(cost) as f64) < threshold * limit
                    // (+1e-6: 0.2 x 100 is 19.999... in floating point.)
                    && (view.unreported.saturating_add(cost) as f64) <= (budget_share * limit + 1e-6).floor().max(1.0);
                if local {
                    GlobalAction::CountLocally
                } else {
                    GlobalAction::ClaimUnreported
                }
            }
            other => other,
        };
        match action {
            GlobalAction::CountLocally => {
                entry.global.used = entry.global.used.saturating_add(cost);
                entry.global.unreported = entry.global.unreported.saturating_add(cost);
            }
            GlobalAction::ClaimUnreported => {
                claimed = entry.global.unreported;
                entry.global.unreported = 0;
                ask_rls = true;
            }
            GlobalAction::None | GlobalAction::Hierarchical { .. } => {}
        }
    }
    (
        Take {
            allowed,
            ask_rls,
            global_exhausted,
            tightest,
            global: entry.global,
            evicted: false,
        },
        claimed,
    )
}

/// The global view of `hash` without changing anything.
pub fn global_view(table: &BucketTable, store: &dyn SharedStore, hash: u64) -> Option<GlobalView> {
    let (value, _) = store.get(&table.slot_of(hash))?;
    decode_slot(&value)
        .into_iter()
        .find(|e| e.key == hash)
        .map(|e| e.global)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn spec(capacity: u64, per_second: u64) -> LimitSpec {
        LimitSpec {
            capacity: capacity * MILLI,
            refill: per_second * MILLI,
            period_ms: 1000,
            counts_cost: true,
        }
    }

    fn table(store: &MemoryStore, slots: u32, ways: u32) -> BucketTable {
        let t = BucketTable::new("t", slots, ways, 8);
        t.init_shared(store);
        t
    }

    fn take(
        t: &BucketTable,
        s: &MemoryStore,
        key: &str,
        specs: &[LimitSpec],
        cost: u64,
        now: u64,
    ) -> Take {
        match t.take(
            s,
            BucketTable::hash_key(key),
            specs,
            cost,
            GlobalAction::None,
            now,
        ) {
            TakeOutcome::Done { take, .. } => take,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bucket_drains_by_cost_and_refills() {
        let store = MemoryStore::default();
        let t = table(&store, 4, 2);
        let specs = [spec(10, 1)];
        assert!(take(&t, &store, "acme", &specs, 10, 0).allowed);
        let refused = take(&t, &store, "acme", &specs, 1, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.tightest.reset_seconds, 1);
        assert!(
            !take(&t, &store, "acme", &specs, 2, 1_000).allowed,
            "one token after 1 s"
        );
        assert!(take(&t, &store, "acme", &specs, 1, 1_000).allowed);
        let later = take(&t, &store, "acme", &specs, 1, 60_000);
        assert_eq!(later.tightest.remaining, 9, "capped at capacity");
    }

    #[test]
    fn slow_refill_rates_accumulate_exactly() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 1);
        // 10 per hour: 2.777... milli-tokens per second.
        let specs = [LimitSpec {
            capacity: 10 * MILLI,
            refill: 10 * MILLI,
            period_ms: 3_600_000,
            counts_cost: true,
        }];
        assert!(take(&t, &store, "k", &specs, 10, 0).allowed);
        // Frequent refused checks must not lose partial refills.
        for now in (0..359_000).step_by(100) {
            assert!(!take(&t, &store, "k", &specs, 1, now).allowed);
        }
        assert!(take(&t, &store, "k", &specs, 1, 360_000).allowed);
        assert!(!take(&t, &store, "k", &specs, 1, 360_100).allowed);
        assert!(take(&t, &store, "k", &specs, 1, 720_000).allowed);
    }

    #[test]
    fn every_limit_must_have_room_and_requests_count_one() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 1);
        let per_request = LimitSpec {
            counts_cost: false,
            ..spec(3, 0)
        };
        let specs = [spec(100, 0), per_request];
        for _ in 0..3 {
            assert!(take(&t, &store, "k", &specs, 10, 0).allowed);
        }
        let refused = take(&t, &store, "k", &specs, 10, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.tightest.index, 1);
        assert_eq!(
            t.peek(&store, BucketTable::hash_key("k"), &specs, 0),
            Some(vec![70, 0])
        );
    }

    #[test]
    fn full_slots_replace_the_least_recently_used_bucket() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 2);
        let specs = [spec(5, 0)];
        assert!(take(&t, &store, "a", &specs, 5, 1).allowed);
        assert!(take(&t, &store, "b", &specs, 5, 2).allowed);
        let c = take(&t, &store, "c", &specs, 5, 3);
        assert!(c.allowed && c.evicted);
        assert!(
            !take(&t, &store, "b", &specs, 1, 4).allowed,
            "b is still there and empty"
        );
        assert!(
            take(&t, &store, "a", &specs, 1, 5).allowed,
            "a was replaced and starts full"
        );
    }

    #[test]
    fn many_keys_never_grow_the_store() {
        let store = MemoryStore::default();
        let t = table(&store, 64, 4);
        for i in 0..100_000 {
            take(&t, &store, &format!("tenant-{i}"), &[spec(10, 1)], 1, i);
        }
        assert_eq!(store.len(), 64);
    }

    #[test]
    fn global_view_tracks_local_admissions_and_claims() {
        let store = MemoryStore::default();
        let t = table(&store, 2, 2);
        let h = BucketTable::hash_key("acme");
        let specs = [spec(100, 0)];
        for _ in 0..3 {
            t.take(&store, h, &specs, 2, GlobalAction::CountLocally, 0);
        }
        let view = global_view(&t, &store, h).unwrap();
        assert_eq!((view.used, view.unreported), (6, 6));
        let TakeOutcome::Done {
            claimed_unreported, ..
        } = t.take(&store, h, &specs, 1, GlobalAction::ClaimUnreported, 0)
        else {
            panic!()
        };
        assert_eq!(claimed_unreported, 6);
        t.take(&store, h, &specs, 4, GlobalAction::CountLocally, 0);
        assert!(t.learn_global(&store, h, 50, 100, 60_000));
        let view = global_view(&t, &store, h).unwrap();
        assert_eq!((view.used, view.limit, view.unreported), (54, 100, 4));
        assert!(view.is_known(59_999) && !view.is_known(60_000));
        assert_eq!(t.claim_unreported(&store, h), 4);
        t.return_unreported(&store, h, 4);
        assert_eq!(global_view(&t, &store, h).unwrap().unreported, 4);
    }

    #[test]
    fn garbage_in_a_slot_reads_as_empty() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 2);
        store
            .set("ctxgate_rl.t.slot.0", b"\x01\x02garbage", None)
            .unwrap();
        assert!(take(&t, &store, "k", &[spec(1, 0)], 1, 0).allowed);
    }

    #[test]
    fn contention_is_reported_not_hidden() {
        struct Hostile(MemoryStore);
        impl SharedStore for Hostile {
            fn get(&self, key: &str) -> Option<(Vec<u8>, crate::shared::Cas)> {
                let value = self.0.get(key);
                // Someone else writes between every read and write.
                let _ = self.0.set(key, b"", None);
                value
            }
            fn set(
                &self,
                key: &str,
                value: &[u8],
                cas: Option<crate::shared::Cas>,
            ) -> Result<(), crate::shared::SetError> {
                self.0.set(key, value, cas)
            }
        }
        let store = Hostile(MemoryStore::default());
        let t = BucketTable::new("t", 1, 1, 3);
        t.init_shared(&store);
        let outcome = t.take(&store, 1, &[spec(1, 0)], 1, GlobalAction::None, 0);
        assert_eq!(outcome, TakeOutcome::Contended);
    }
}
