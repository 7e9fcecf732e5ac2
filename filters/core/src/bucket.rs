//! Leaky buckets in a bounded table of shared-data slots.
//!
//! Every worker VM of one Envoy must see the same bucket for a key, so
//! buckets live in proxy-wasm shared data. Shared data never evicts and has
//! no delete, so a table is fixed: `slots` keys, created once, each holding
//! up to `ways` entries. A key (a tenant, a client address, ...) hashes to
//! one slot with a keyed hash whose key is a per-deployment random secret
//! ([`crate::shared::load_secret`]): a client cannot aim its keys at a
//! tenant's slot. Memory is bounded by `slots x ways` whatever the number
//! of keys.
//!
//! An entry holds, per limit, the *level* of the bucket: how much has been
//! consumed and not yet leaked away (in thousandths, so slow rates leak
//! exactly), and when it last leaked. A level belongs to (key, limit id),
//! where the id is a hash of the limit's name: when the set of limits that
//! applies to a key changes (a tier change, another token of the same
//! tenant, a configuration push), each limit keeps its own level. A new
//! capacity never refills a bucket; it only changes how much more fits.
//!
//! When a new key needs room in a full slot, an entry is replaced: first
//! one whose levels have all leaked to zero (nothing is lost), else the
//! least recently used. Refused requests count as use, so a client cannot
//! make its drained bucket the eviction victim by hammering it. An entry
//! also carries the global (RLS) view used by hierarchical limiting: the
//! last count learned from the RLS plus what this Envoy admitted since, the
//! global limit, the end of the RLS window, and the consumption not yet
//! reported. Entries with unreported consumption are replaced last.
//!
//! Every change is one compare-and-swap of the slot value, retried a
//! bounded number of times: concurrent updates are never lost, and when the
//! retries run out nothing is written and the caller is told so. A slot
//! that does not decode is reported, never overwritten.

use crate::record::{self, Kind, RecordError};
use crate::shared::{Change, Secret, SharedStore, Update, update};

/// Milli-units per unit.
pub const MILLI: u64 = 1000;
/// Format version of a bucket slot.
const VERSION: u8 = 1;
/// Levels kept per key: limits of the current set plus recently used ones.
const MAX_LIMITS_PER_KEY: usize = 8;
/// A refused request refreshes the entry's last use at most this often
/// (each refresh is a shared-data write).
const REFUSED_TOUCH_MS: u64 = 1000;

/// The identity of a limit within a key's entry: a hash of its name.
pub fn limit_id(name: &str) -> u32 {
    // FNV-1a: stable across builds and module versions, which is what
    // matters here (ids are not secret: they only tell a key's limits
    // apart).
    name.bytes().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One limit as applied right now (after any adaptive multiplier): a
/// bucket of `capacity` milli-units leaking `refill` milli-units every
/// `period_ms`, continuously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    pub id: u32,
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

    /// The level after leaking from `updated_ms` to `now_ms`, and the new
    /// leak timestamp: time that did not yet leak a whole milli-unit is
    /// carried, not lost.
    fn leaked(&self, level: u64, updated_ms: u64, now_ms: u64) -> (u64, u64) {
        if self.refill == 0 || self.period_ms == 0 {
            return (level, updated_ms.max(now_ms));
        }
        let elapsed = now_ms.saturating_sub(updated_ms);
        let drained = u128::from(elapsed) * u128::from(self.refill) / u128::from(self.period_ms);
        if drained >= u128::from(level) {
            return (0, updated_ms.max(now_ms));
        }
        let used_ms = drained * u128::from(self.period_ms) / u128::from(self.refill);
        let stamp = updated_ms.saturating_add(u64::try_from(used_ms).unwrap_or(u64::MAX));
        (level - u64::try_from(drained).unwrap_or(0), stamp)
    }

    /// Milliseconds until `level` has leaked down to `target`.
    fn ms_until(&self, level: u64, target: u64) -> u64 {
        if level <= target {
            return 0;
        }
        if self.refill == 0 {
            return u64::MAX;
        }
        let ms = (u128::from(level - target) * u128::from(self.period_ms))
            .div_ceil(u128::from(self.refill));
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LimitState {
    id: u32,
    level: u64,
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
    /// Length of the RLS window, ms.
    pub window_ms: u64,
    /// Consumption admitted locally and not yet reported to the RLS.
    pub unreported: u64,
}

impl GlobalView {
    /// Is the view current at `now_ms`?
    pub fn is_known(&self, now_ms: u64) -> bool {
        self.limit > 0 && now_ms < self.reset_ms
    }

    /// Units left under the global limit, if known.
    pub fn remaining(&self, now_ms: u64) -> Option<u64> {
        self.is_known(now_ms)
            .then(|| self.limit.saturating_sub(self.used))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: u64,
    last_used_ms: u64,
    /// When every level of the entry will have leaked to zero.
    idle_at_ms: u64,
    global: GlobalView,
    limits: Vec<LimitState>,
}

impl Entry {
    fn fresh(key: u64, now_ms: u64) -> Entry {
        Entry {
            key,
            last_used_ms: now_ms,
            idle_at_ms: now_ms,
            global: GlobalView::default(),
            limits: Vec::new(),
        }
    }

    fn is_idle(&self, now_ms: u64) -> bool {
        now_ms >= self.idle_at_ms && self.global.unreported == 0
    }
}

/// Decodes a slot.
fn decode_slot(bytes: &[u8]) -> Result<Vec<Entry>, RecordError> {
    let mut r = record::reader(bytes, Kind::BucketSlot, VERSION)?;
    let count = r.u8()?;
    let mut entries = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let key = r.u64()?;
        let last_used_ms = r.u64()?;
        let idle_at_ms = r.u64()?;
        let global = GlobalView {
            used: r.u64()?,
            limit: r.u64()?,
            reset_ms: r.u64()?,
            window_ms: r.u64()?,
            unreported: r.u64()?,
        };
        let n = r.u8()?;
        if usize::from(n) > MAX_LIMITS_PER_KEY {
            return Err(RecordError::Malformed);
        }
        let mut limits = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            limits.push(LimitState {
                id: r.u32()?,
                level: r.u64()?,
                updated_ms: r.u64()?,
            });
        }
        entries.push(Entry {
            key,
            last_used_ms,
            idle_at_ms,
            global,
            limits,
        });
    }
    r.end()?;
    Ok(entries)
}

fn encode_slot(entries: &[Entry]) -> Vec<u8> {
    let mut w = record::writer(Kind::BucketSlot, VERSION, entries.len() * 80 + 1);
    w.u8(u8::try_from(entries.len()).unwrap_or(u8::MAX));
    for e in entries.iter().take(usize::from(u8::MAX)) {
        w.u64(e.key)
            .u64(e.last_used_ms)
            .u64(e.idle_at_ms)
            .u64(e.global.used)
            .u64(e.global.limit)
            .u64(e.global.reset_ms)
            .u64(e.global.window_ms)
            .u64(e.global.unreported);
        let limits = e.limits.iter().take(MAX_LIMITS_PER_KEY);
        w.u8(u8::try_from(limits.len()).unwrap_or(0));
        for l in limits {
            w.u32(l.id).u64(l.level).u64(l.updated_ms);
        }
    }
    w.finish()
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
    /// The limit with the fewest units left (after this request, when it
    /// was admitted).
    pub tightest: Tightest,
    /// The global view after this request.
    pub global: GlobalView,
    /// An entry of another key was replaced to make room.
    pub evicted: bool,
    /// Unreported consumption of a replaced entry, lost with it (only when
    /// every entry of the slot had some).
    pub lost_unreported: u64,
}

/// The most constrained limit: its index in the request's specs, whole
/// units left, capacity in whole units, and seconds until the bucket is
/// empty again (or, when refused, until the request would fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tightest {
    pub index: usize,
    pub remaining: u64,
    pub capacity: u64,
    pub reset_seconds: u64,
}

/// How a request should change the global view when it is admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GlobalAccounting {
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

/// A table of buckets.
pub struct BucketTable {
    prefix: String,
    slots: u32,
    ways: usize,
    attempts: u32,
    secret: Secret,
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
    /// The slot key is missing (it is created at configure time) or the
    /// host refused the write.
    Unavailable,
    /// The slot holds something that does not decode; it was left alone.
    Invalid(RecordError),
}

impl BucketTable {
    /// A table of `slots` shared-data keys named `<prefix>.slot.<n>`.
    /// `prefix` must not depend on the configuration (so a configuration
    /// push keeps every level) but must be unique per plugin.
    pub fn new(prefix: &str, slots: u32, ways: u32, attempts: u32, secret: Secret) -> BucketTable {
        BucketTable {
            prefix: format!("{prefix}.slot."),
            slots: slots.max(1),
            ways: usize::try_from(ways.clamp(1, u32::from(u8::MAX))).unwrap_or(1),
            attempts,
            secret,
        }
    }

    /// Creates every slot key. Call from `on_configure`, before serving.
    pub fn init_shared(&self, store: &dyn SharedStore) {
        let empty = encode_slot(&[]);
        for slot in 0..self.slots {
            store.ensure(&self.slot_key(slot), &empty);
        }
    }

    /// The 64-bit identity of a bucket key, keyed with the table's secret.
    pub fn hash_key(&self, key: &str) -> u64 {
        self.secret.hash(key.as_bytes())
    }

    fn slot_key(&self, slot: u32) -> String {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(slot);
        let mut key = String::with_capacity(self.prefix.len() + digits.len());
        key.push_str(&self.prefix);
        key.push_str(digits);
        key
    }

    fn slot_of(&self, hash: u64) -> String {
        self.slot_key(u32::try_from(hash % u64::from(self.slots)).unwrap_or(0))
    }

    /// Leaks and, if every limit has room, adds `cost` to the bucket of
    /// `hash`, applying `global` to the global view.
    pub fn take(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        specs: &[LimitSpec],
        cost: u64,
        global: GlobalAccounting,
        now_ms: u64,
    ) -> TakeOutcome {
        let outcome = update(store, &self.slot_of(hash), self.attempts, |value| {
            let mut entries = match decode_slot(value) {
                Ok(entries) => entries,
                Err(e) => return Change::Keep(Err(e)),
            };
            let mut evicted = false;
            let mut lost_unreported = 0;
            let position = match entries.iter().position(|e| e.key == hash) {
                Some(i) => i,
                None => {
                    if entries.len() >= self.ways
                        && let Some(victim) = victim(&entries, now_ms)
                    {
                        lost_unreported = entries.get(victim).map_or(0, |e| e.global.unreported);
                        entries.remove(victim);
                        evicted = true;
                    }
                    entries.push(Entry::fresh(hash, now_ms));
                    entries.len() - 1
                }
            };
            let Some(entry) = entries.get_mut(position) else {
                return Change::Keep(Err(RecordError::Malformed));
            };
            let (take, claimed) = consume(entry, specs, cost, global, now_ms);
            let take = Take {
                evicted,
                lost_unreported,
                ..take
            };
            let touch = now_ms >= entry.last_used_ms.saturating_add(REFUSED_TOUCH_MS);
            if take.allowed || evicted || touch {
                entry.last_used_ms = entry.last_used_ms.max(now_ms);
                Change::Write(encode_slot(&entries), Ok((take, claimed)))
            } else {
                Change::Keep(Ok((take, claimed)))
            }
        });
        match outcome {
            Update::Written(Ok((take, claimed))) | Update::Unchanged(Ok((take, claimed))) => {
                TakeOutcome::Done {
                    take,
                    claimed_unreported: claimed,
                }
            }
            Update::Written(Err(e)) | Update::Unchanged(Err(e)) => TakeOutcome::Invalid(e),
            Update::Failed => TakeOutcome::Unavailable,
            Update::Contended => TakeOutcome::Contended,
        }
    }

    /// Applies an RLS answer to the global view of `hash`: `answer.used` is
    /// the RLS count after the reported hits, then its limit, the end and
    /// length of its window. Consumption admitted locally while the call
    /// was in flight stays counted on top.
    pub fn learn_global(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        answer: GlobalView,
    ) -> Result<bool, RecordError> {
        self.modify(store, hash, |entry| {
            entry.global = GlobalView {
                used: answer.used.saturating_add(entry.global.unreported),
                unreported: entry.global.unreported,
                ..answer
            };
            Some(true)
        })
        .map(|r| r.unwrap_or(false))
    }

    /// Takes (zeroes) the unreported consumption of `hash`, to report it.
    pub fn claim_unreported(&self, store: &dyn SharedStore, hash: u64) -> Result<u64, RecordError> {
        self.modify(store, hash, |entry| {
            let claimed = entry.global.unreported;
            entry.global.unreported = 0;
            (claimed > 0).then_some(claimed)
        })
        .map(|r| r.unwrap_or(0))
    }

    /// Runs `change` on the entry of `hash`; it returns `None` to write
    /// nothing. `Ok(None)` when there is no such entry or nothing changed.
    fn modify<T>(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        mut change: impl FnMut(&mut Entry) -> Option<T>,
    ) -> Result<Option<T>, RecordError> {
        let outcome = update(store, &self.slot_of(hash), self.attempts, |value| {
            let mut entries = match decode_slot(value) {
                Ok(entries) => entries,
                Err(e) => return Change::Keep(Err(e)),
            };
            let Some(entry) = entries.iter_mut().find(|e| e.key == hash) else {
                return Change::Keep(Ok(None));
            };
            match change(entry) {
                Some(answer) => Change::Write(encode_slot(&entries), Ok(Some(answer))),
                None => Change::Keep(Ok(None)),
            }
        });
        match outcome {
            Update::Written(result) | Update::Unchanged(result) => result,
            Update::Contended | Update::Failed => Ok(None),
        }
    }

    /// Would `cost` fit in the bucket of `hash` right now? The answer and
    /// the tightest limit, without writing anything.
    pub fn probe(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        specs: &[LimitSpec],
        cost: u64,
        now_ms: u64,
    ) -> Result<(bool, Tightest), RecordError> {
        let Some((value, _)) = store.get(&self.slot_of(hash)) else {
            return Ok((true, Tightest::default()));
        };
        let entries = decode_slot(&value)?;
        let mut entry = entries
            .into_iter()
            .find(|e| e.key == hash)
            .unwrap_or_else(|| Entry::fresh(hash, now_ms));
        let (take, _) = consume(&mut entry, specs, cost, GlobalAccounting::None, now_ms);
        Ok((take.allowed, take.tightest))
    }

    /// Units left of each limit of `hash` right now (tests, diagnostics).
    /// `None` if the key has no entry.
    pub fn peek(
        &self,
        store: &dyn SharedStore,
        hash: u64,
        specs: &[LimitSpec],
        now_ms: u64,
    ) -> Option<Vec<u64>> {
        let (value, _) = store.get(&self.slot_of(hash))?;
        let entries = decode_slot(&value).ok()?;
        let entry = entries.iter().find(|e| e.key == hash)?;
        Some(
            specs
                .iter()
                .map(|spec| {
                    let level = entry
                        .limits
                        .iter()
                        .find(|l| l.id == spec.id)
                        .map_or(0, |l| spec.leaked(l.level, l.updated_ms, now_ms).0);
                    spec.capacity.saturating_sub(level) / MILLI
                })
                .collect(),
        )
    }

    /// The global view of `hash`, without changing anything.
    pub fn global_view(&self, store: &dyn SharedStore, hash: u64) -> Option<GlobalView> {
        let (value, _) = store.get(&self.slot_of(hash))?;
        decode_slot(&value)
            .ok()?
            .into_iter()
            .find(|e| e.key == hash)
            .map(|e| e.global)
    }

    pub fn slot_count(&self) -> u32 {
        self.slots
    }
}

/// The entry to replace in a full slot: an idle one if any, else the least
/// recently used one without unreported consumption, else the least
/// recently used.
fn victim(entries: &[Entry], now_ms: u64) -> Option<usize> {
    let lru = |filter: &dyn Fn(&Entry) -> bool| {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| filter(e))
            .min_by_key(|(_, e)| e.last_used_ms)
            .map(|(i, _)| i)
    };
    lru(&|e| e.is_idle(now_ms))
        .or_else(|| lru(&|e| e.global.unreported == 0))
        .or_else(|| lru(&|_| true))
}

/// The bucket arithmetic for one request.
fn consume(
    entry: &mut Entry,
    specs: &[LimitSpec],
    cost: u64,
    global: GlobalAccounting,
    now_ms: u64,
) -> (Take, u64) {
    // The RLS already said this key is over its limit for the rest of the
    // window: refuse here instead of asking it again for every request.
    let global_exhausted = matches!(global, GlobalAccounting::Hierarchical { .. })
        && entry.global.is_known(now_ms)
        && entry.global.used >= entry.global.limit;
    let mut allowed = !global_exhausted;
    // (level, stamp) of each spec after leaking.
    let mut levels = Vec::with_capacity(specs.len());
    for spec in specs {
        let (level, stamp) = entry
            .limits
            .iter()
            .find(|l| l.id == spec.id)
            .map_or((0, now_ms), |l| spec.leaked(l.level, l.updated_ms, now_ms));
        if level.saturating_add(spec.need(cost)) > spec.capacity {
            allowed = false;
        }
        levels.push((level, stamp));
    }
    if allowed {
        for ((level, stamp), spec) in levels.iter_mut().zip(specs) {
            *level = level.saturating_add(spec.need(cost));
            let state = LimitState {
                id: spec.id,
                level: *level,
                updated_ms: *stamp,
            };
            match entry.limits.iter_mut().find(|l| l.id == spec.id) {
                Some(existing) => *existing = state,
                None => entry.limits.push(state),
            }
            let idle = stamp.saturating_add(spec.ms_until(*level, 0));
            entry.idle_at_ms = entry.idle_at_ms.max(idle);
        }
        if entry.limits.len() > MAX_LIMITS_PER_KEY {
            // Forget the levels of limits that no longer apply, least
            // recently updated first.
            entry.limits.sort_by_key(|l| {
                (
                    std::cmp::Reverse(specs.iter().any(|s| s.id == l.id)),
                    std::cmp::Reverse(l.updated_ms),
                )
            });
            entry.limits.truncate(MAX_LIMITS_PER_KEY);
        }
    }
    // The tightest limit: the fewest units left (refused: the longest wait).
    let mut tightest = Tightest::default();
    let mut best: Option<u64> = None;
    for (index, (spec, (level, _))) in specs.iter().zip(&levels).enumerate() {
        let left = spec.capacity.saturating_sub(*level);
        let wait_ms = if allowed {
            spec.ms_until(*level, 0)
        } else {
            spec.ms_until(*level, spec.capacity.saturating_sub(spec.need(cost)))
        };
        let rank = if allowed { left } else { u64::MAX - wait_ms };
        if best.is_none_or(|b| rank < b) {
            best = Some(rank);
            tightest = Tightest {
                index,
                remaining: left / MILLI,
                capacity: spec.capacity / MILLI,
                reset_seconds: wait_ms.div_ceil(1000),
            };
        }
    }
    let mut claimed = 0;
    let mut ask_rls = false;
    if allowed {
        let accounting = match global {
            GlobalAccounting::Hierarchical {
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
                    GlobalAccounting::CountLocally
                } else {
                    GlobalAccounting::ClaimUnreported
                }
            }
            other => other,
        };
        match accounting {
            GlobalAccounting::CountLocally => {
                entry.global.used = entry.global.used.saturating_add(cost);
                entry.global.unreported = entry.global.unreported.saturating_add(cost);
            }
            GlobalAccounting::ClaimUnreported => {
                claimed = entry.global.unreported;
                entry.global.unreported = 0;
                ask_rls = true;
            }
            GlobalAccounting::None | GlobalAccounting::Hierarchical { .. } => {}
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
            lost_unreported: 0,
        },
        claimed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn spec(name: &str, capacity: u64, per_second: u64) -> LimitSpec {
        LimitSpec {
            id: limit_id(name),
            capacity: capacity * MILLI,
            refill: per_second * MILLI,
            period_ms: 1000,
            counts_cost: true,
        }
    }

    fn table(store: &MemoryStore, slots: u32, ways: u32) -> BucketTable {
        let t = BucketTable::new("t", slots, ways, 8, Secret::from_bytes([7; 16]));
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
        match t.take(s, t.hash_key(key), specs, cost, GlobalAccounting::None, now) {
            TakeOutcome::Done { take, .. } => take,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bucket_fills_by_cost_and_leaks() {
        let store = MemoryStore::default();
        let t = table(&store, 4, 2);
        let specs = [spec("m", 10, 1)];
        assert!(take(&t, &store, "acme", &specs, 10, 0).allowed);
        let refused = take(&t, &store, "acme", &specs, 1, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.tightest.reset_seconds, 1);
        assert!(
            !take(&t, &store, "acme", &specs, 2, 1_000).allowed,
            "one unit leaked after 1 s"
        );
        assert!(take(&t, &store, "acme", &specs, 1, 1_000).allowed);
        let later = take(&t, &store, "acme", &specs, 1, 60_000);
        assert_eq!(later.tightest.remaining, 9, "empty, then this request");
    }

    #[test]
    fn slow_rates_leak_exactly() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 1);
        // 10 per hour: 2.777... milli-units per second.
        let specs = [LimitSpec {
            id: 1,
            capacity: 10 * MILLI,
            refill: 10 * MILLI,
            period_ms: 3_600_000,
            counts_cost: true,
        }];
        assert!(take(&t, &store, "k", &specs, 10, 0).allowed);
        // Frequent refused checks (which touch the entry) must not lose
        // partial leaks.
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
            ..spec("r", 3, 0)
        };
        let specs = [spec("c", 100, 0), per_request];
        for _ in 0..3 {
            assert!(take(&t, &store, "k", &specs, 10, 0).allowed);
        }
        let refused = take(&t, &store, "k", &specs, 10, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.tightest.index, 1);
        assert_eq!(
            t.peek(&store, t.hash_key("k"), &specs, 0),
            Some(vec![70, 0])
        );
    }

    #[test]
    fn a_changed_set_of_limits_never_refills_a_bucket() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 1);
        let minute = spec("per_minute", 10, 0);
        let hour = spec("per_hour", 100, 0);
        for _ in 0..10 {
            assert!(take(&t, &store, "acme", &[minute, hour], 1, 0).allowed);
        }
        // Another token of the same tenant brings only the hourly limit:
        // its level is kept (90 left) and the minute level is remembered.
        assert_eq!(
            take(&t, &store, "acme", &[hour], 1, 0).tightest.remaining,
            89
        );
        assert!(!take(&t, &store, "acme", &[minute, hour], 1, 0).allowed);
        // A bigger capacity (tier upgrade) adds room, not a refill.
        let bigger = spec("per_minute", 15, 0);
        let upgraded = take(&t, &store, "acme", &[bigger], 1, 0);
        assert!(upgraded.allowed);
        assert_eq!(upgraded.tightest.remaining, 4);
        // A smaller one (downgrade) leaves no room at all.
        assert!(!take(&t, &store, "acme", &[spec("per_minute", 5, 0)], 1, 0).allowed);
    }

    #[test]
    fn idle_entries_are_replaced_first_then_the_least_recently_used() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 2);
        let specs = [spec("m", 5, 1)];
        assert!(take(&t, &store, "a", &specs, 5, 1).allowed);
        assert!(take(&t, &store, "b", &specs, 1, 2).allowed);
        // At 2000 ms, b has leaked empty (idle) but a has not: b goes,
        // although a was used less recently.
        let c = take(&t, &store, "c", &specs, 5, 2_000);
        assert!(c.allowed && c.evicted);
        assert!(
            !take(&t, &store, "a", &specs, 5, 2_001).allowed,
            "a is still there, with its level"
        );
    }

    #[test]
    fn refused_requests_count_as_use() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 2);
        let specs = [spec("m", 5, 0)];
        assert!(take(&t, &store, "drained", &specs, 5, 0).allowed);
        assert!(take(&t, &store, "other", &specs, 1, 1_000).allowed);
        // The drained client keeps knocking: its entry stays the most
        // recently used, so a newcomer replaces the other one.
        assert!(!take(&t, &store, "drained", &specs, 1, 5_000).allowed);
        assert!(take(&t, &store, "newcomer", &specs, 1, 6_000).evicted);
        assert!(!take(&t, &store, "drained", &specs, 1, 7_000).allowed);
    }

    #[test]
    fn many_keys_never_grow_the_store() {
        let store = MemoryStore::default();
        let t = table(&store, 64, 4);
        for i in 0..100_000 {
            take(
                &t,
                &store,
                &format!("tenant-{i}"),
                &[spec("m", 10, 1)],
                1,
                i,
            );
        }
        assert_eq!(store.len(), 64);
    }

    #[test]
    fn slots_depend_on_the_secret() {
        let a = BucketTable::new("t", 4096, 4, 8, Secret::from_bytes([1; 16]));
        let b = BucketTable::new("t", 4096, 4, 8, Secret::from_bytes([2; 16]));
        let same = (0..100)
            .filter(|i| {
                let key = format!("tenant-{i}");
                a.slot_of(a.hash_key(&key)) == b.slot_of(b.hash_key(&key))
            })
            .count();
        assert!(same < 5, "{same} of 100 keys share a slot across secrets");
    }

    #[test]
    fn global_view_tracks_local_admissions_and_claims() {
        let store = MemoryStore::default();
        let t = table(&store, 2, 2);
        let h = t.hash_key("acme");
        let specs = [spec("m", 100, 0)];
        for _ in 0..3 {
            t.take(&store, h, &specs, 2, GlobalAccounting::CountLocally, 0);
        }
        let view = t.global_view(&store, h).unwrap();
        assert_eq!((view.used, view.unreported), (6, 6));
        let TakeOutcome::Done {
            claimed_unreported, ..
        } = t.take(&store, h, &specs, 1, GlobalAccounting::ClaimUnreported, 0)
        else {
            panic!()
        };
        assert_eq!(claimed_unreported, 6);
        t.take(&store, h, &specs, 4, GlobalAccounting::CountLocally, 0);
        let answer = GlobalView {
            used: 50,
            limit: 100,
            reset_ms: 60_000,
            window_ms: 60_000,
            unreported: 0,
        };
        assert_eq!(t.learn_global(&store, h, answer), Ok(true));
        let view = t.global_view(&store, h).unwrap();
        assert_eq!((view.used, view.limit, view.unreported), (54, 100, 4));
        assert!(view.is_known(59_999) && !view.is_known(60_000));
        assert_eq!(view.remaining(0), Some(46));
        assert_eq!(t.claim_unreported(&store, h), Ok(4));
        assert_eq!(t.claim_unreported(&store, h), Ok(0));
    }

    #[test]
    fn entries_with_unreported_usage_are_replaced_last() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 2);
        let specs = [spec("m", 100, 0)];
        let a = t.hash_key("a");
        t.take(&store, a, &specs, 3, GlobalAccounting::CountLocally, 0);
        take(&t, &store, "b", &specs, 1, 10);
        let c = take(&t, &store, "c", &specs, 1, 20);
        assert!(c.evicted && c.lost_unreported == 0);
        assert_eq!(t.global_view(&store, a).unwrap().unreported, 3);
    }

    #[test]
    fn a_slot_that_does_not_decode_is_reported_and_left_alone() {
        let store = MemoryStore::default();
        let t = table(&store, 1, 2);
        store.set("t.slot.0", b"\x01\x02garbage", None).unwrap();
        let outcome = t.take(&store, 1, &[spec("m", 1, 0)], 1, GlobalAccounting::None, 0);
        assert_eq!(outcome, TakeOutcome::Invalid(RecordError::NotARecord));
        assert_eq!(store.get("t.slot.0").unwrap().0, b"\x01\x02garbage");
        // A slot from a newer format version is not overwritten either.
        let mut newer = encode_slot(&[]);
        newer[2] = 9;
        store.set("t.slot.0", &newer, None).unwrap();
        assert_eq!(
            t.take(&store, 1, &[spec("m", 1, 0)], 1, GlobalAccounting::None, 0),
            TakeOutcome::Invalid(RecordError::UnknownVersion(9))
        );
    }

    #[test]
    fn contention_is_reported_not_hidden() {
        struct Hostile(MemoryStore);
        impl SharedStore for Hostile {
            fn get(&self, key: &str) -> Option<(Vec<u8>, crate::shared::Cas)> {
                let value = self.0.get(key);
                // Someone else writes between every read and write.
                if let Some((v, _)) = &value {
                    let _ = self.0.set(key, v, None);
                }
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
        let t = BucketTable::new("t", 1, 1, 3, Secret::from_bytes([0; 16]));
        t.init_shared(&store);
        let outcome = t.take(&store, 1, &[spec("m", 1, 0)], 1, GlobalAccounting::None, 0);
        assert_eq!(outcome, TakeOutcome::Contended);
    }

    #[test]
    fn slot_records_round_trip() {
        let entries = vec![Entry {
            key: 42,
            last_used_ms: 1,
            idle_at_ms: 2,
            global: GlobalView {
                used: 3,
                limit: 4,
                reset_ms: 5,
                window_ms: 10,
                unreported: 6,
            },
            limits: vec![LimitState {
                id: 7,
                level: 8,
                updated_ms: 9,
            }],
        }];
        assert_eq!(decode_slot(&encode_slot(&entries)), Ok(entries));
        let mut truncated = encode_slot(&[]);
        truncated.push(0);
        assert_eq!(decode_slot(&truncated), Err(RecordError::Malformed));
    }
}
