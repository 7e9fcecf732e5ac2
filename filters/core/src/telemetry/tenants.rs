//! Which tenants get a `tenant` label of their own, with a hard bound.
//!
//! Envoy keeps every stat a module defines until it restarts, so a label
//! minted for a tenant is a series forever. A tenant is labelled when the
//! configuration names it (`metrics.tenants`), or once it is a heavy
//! hitter: among the busiest in a bounded Space-Saving summary of this
//! worker's traffic, with a guaranteed share of at least
//! `metrics.top_tenant_share` of the requests counted in the window. At
//! most `metrics.top_tenants` heavy hitters are ever labelled per proxy
//! (first come, first labelled); every other tenant is `other`.
//!
//! The heavy hitters are shared by the workers through one shared-data
//! record (the list of labelled tenants), written with compare-and-swap
//! only when a tenant is promoted and read on every metrics flush, so
//! every worker labels a promoted tenant within one flush interval, and
//! the bound holds for the whole proxy, not per worker.
//!
//! A flood of distinct tenants never gets a label: each has a count of
//! one, and a newcomer in a full summary inherits the evicted minimum as
//! its possible error, so its guaranteed count stays zero.

use std::collections::{HashMap, HashSet};

use crate::record::{self, Kind, RecordError};
use crate::shared::SharedStore;
use crate::shared::{Change, Update, update};

/// The label of every tenant without one of its own.
pub const OTHER: &str = "other";

/// Tenants tracked per top-K slot: the summary holds this many times
/// `top_tenants` candidates, and at least twice the reciprocal of the
/// share (a summary of m candidates keeps every tenant with more than
/// 1/m of the requests, so one with the share stays in it).
const CANDIDATES_PER_SLOT: usize = 4;

/// Requests after which the summary's counts are halved, so that the
/// heavy hitters are those of recent traffic.
const WINDOW_REQUESTS: u64 = 1 << 16;

/// Requests a tenant must have had for sure (its count less its possible
/// error) before it is labelled: no label on the strength of a handful.
const MIN_REQUESTS: u64 = 100;

/// Longest tenant id that gets a label (longer ones are `other`).
const MAX_LABEL_LEN: usize = 64;

/// The smallest share accepted (the summary's size grows as its inverse).
pub const MIN_SHARE: f64 = 0.001;

const VERSION: u8 = 1;

/// Attempts at the compare-and-swap that promotes a tenant.
const PROMOTE_ATTEMPTS: u32 = 4;

/// One candidate of the Space-Saving summary.
#[derive(Debug, Clone, Copy)]
struct Count {
    count: u64,
    /// How much of `count` may belong to tenants evicted before it.
    error: u64,
}

pub struct TenantLabels {
    named: HashSet<String>,
    /// Heavy hitters labelled on this proxy, as last read or promoted.
    promoted: HashSet<String>,
    limit: usize,
    /// Guaranteed share (per million) needed for a label.
    share_ppm: u64,
    summary: HashMap<String, Count>,
    capacity: usize,
    /// Requests counted in the summary's window.
    seen: u64,
    key: String,
}

impl TenantLabels {
    /// `key`: the shared-data key of the labelled list. Creates it (call
    /// at configure time, see [`crate::shared`]).
    pub fn new(
        named: &[String],
        top_tenants: usize,
        share: f64,
        key: String,
        store: &dyn SharedStore,
    ) -> TenantLabels {
        store.ensure(&key, &encode(&[]));
        // A share in [0, 1] (validated with the configuration).
        let share_ppm = (share.clamp(0.0, 1.0) * 1e6).round() as u64;
        let mut labels = TenantLabels {
            named: named.iter().cloned().collect(),
            promoted: HashSet::new(),
            limit: top_tenants,
            share_ppm,
            summary: HashMap::new(),
            capacity: top_tenants
                .saturating_mul(CANDIDATES_PER_SLOT)
                .max((2.0 / share.max(MIN_SHARE)).ceil() as usize),
            seen: 0,
            key,
        };
        labels.refresh(store);
        labels
    }

    /// The label of `tenant` for this request, counting the request.
    pub fn label<'a>(&mut self, tenant: &'a str, store: &dyn SharedStore) -> &'a str {
        if tenant.is_empty() || tenant.len() > MAX_LABEL_LEN {
            return OTHER;
        }
        if self.named.contains(tenant) || self.promoted.contains(tenant) {
            return tenant;
        }
        if self.limit == 0 || self.promoted.len() >= self.limit {
            return OTHER;
        }
        if self.count(tenant) && self.promote(tenant, store) {
            return tenant;
        }
        OTHER
    }

    /// Counts one request of `tenant`; returns whether it now qualifies
    /// as a heavy hitter.
    fn count(&mut self, tenant: &str) -> bool {
        self.seen += 1;
        if self.seen > WINDOW_REQUESTS {
            self.age();
        }
        let entry = match self.summary.get_mut(tenant) {
            Some(entry) => {
                entry.count += 1;
                *entry
            }
            None => {
                let mut inherited = 0;
                if self.summary.len() >= self.capacity {
                    // Space-Saving: the newcomer replaces the least counted
                    // candidate and may have had up to its count.
                    let least = self
                        .summary
                        .iter()
                        .min_by_key(|(_, c)| c.count)
                        .map(|(t, c)| (t.clone(), c.count));
                    if let Some((evicted, count)) = least {
                        self.summary.remove(&evicted);
                        inherited = count;
                    }
                }
                let entry = Count {
                    count: inherited + 1,
                    error: inherited,
                };
                self.summary.insert(tenant.to_owned(), entry);
                entry
            }
        };
        let guaranteed = entry.count - entry.error;
        guaranteed.saturating_mul(1_000_000) >= self.share_ppm.saturating_mul(self.seen)
            && guaranteed >= MIN_REQUESTS
    }

    /// Halves every count: the window moves on.
    fn age(&mut self) {
        self.seen /= 2;
        for c in self.summary.values_mut() {
            c.count /= 2;
            c.error /= 2;
        }
        self.summary.retain(|_, c| c.count > 0);
    }

    /// Adds `tenant` to the proxy's labelled list if there is room.
    fn promote(&mut self, tenant: &str, store: &dyn SharedStore) -> bool {
        let limit = self.limit;
        let result = update(store, &self.key, PROMOTE_ATTEMPTS, |value| {
            let Ok(mut list) = decode(value) else {
                return Change::Keep(None);
            };
            if list.iter().any(|t| t == tenant) || list.len() >= limit {
                return Change::Keep(Some(list));
            }
            list.push(tenant.to_owned());
            Change::Write(encode(&list), Some(list))
        });
        if let Update::Written(Some(list)) | Update::Unchanged(Some(list)) = result {
            self.promoted = list.into_iter().collect();
        }
        self.summary.remove(tenant);
        self.promoted.contains(tenant)
    }

    /// Learns what other workers promoted (once per metrics flush).
    pub fn refresh(&mut self, store: &dyn SharedStore) {
        if let Some((value, _)) = store.get(&self.key)
            && let Ok(list) = decode(&value)
        {
            self.promoted = list.into_iter().take(self.limit).collect();
        }
    }

    /// Most distinct labels this proxy can ever use: the named tenants,
    /// the heavy hitters and `other`.
    pub fn bound(&self) -> usize {
        self.named.len() + self.limit + 1
    }
}

/// The labelled list: a count, then each tenant (short bytes).
fn encode(tenants: &[String]) -> Vec<u8> {
    let size = tenants.iter().map(|t| t.len() + 1).sum::<usize>() + 2;
    let mut w = record::writer(Kind::TenantLabels, VERSION, size);
    w.u16(u16::try_from(tenants.len()).unwrap_or(u16::MAX));
    for t in tenants {
        // Labels are at most MAX_LABEL_LEN bytes.
        let _ = w.short_bytes(t.as_bytes());
    }
    w.finish()
}

fn decode(bytes: &[u8]) -> Result<Vec<String>, RecordError> {
    let mut r = record::reader(bytes, Kind::TenantLabels, VERSION)?;
    let n = r.u16()?;
    let mut out = Vec::with_capacity(usize::from(n).min(1024));
    for _ in 0..n {
        let t = r.short_bytes()?;
        out.push(String::from_utf8(t.to_vec()).map_err(|_| RecordError::Malformed)?);
    }
    r.end()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemoryStore;

    fn labels(store: &MemoryStore, top: usize) -> TenantLabels {
        TenantLabels::new(&["acme".into()], top, 0.01, "k".into(), store)
    }

    #[test]
    fn named_tenants_always_and_a_flood_never() {
        let store = MemoryStore::default();
        let mut l = labels(&store, 5);
        assert_eq!(l.label("acme", &store), "acme");
        for i in 0..100_000 {
            assert_eq!(l.label(&format!("t{i}"), &store), OTHER, "tenant {i}");
        }
        assert!(l.summary.len() <= l.capacity, "the summary is bounded");
        assert_eq!(l.bound(), 7);
    }

    #[test]
    fn a_heavy_hitter_is_labelled_among_a_flood_and_the_bound_holds() {
        let store = MemoryStore::default();
        let mut l = labels(&store, 2);
        let mut labelled = HashSet::new();
        for i in 0..50_000 {
            // Three heavy tenants (5% each) in a flood of new ones.
            let tenant = match i % 20 {
                0 => "heavy-a".to_owned(),
                1 => "heavy-b".to_owned(),
                2 => "heavy-c".to_owned(),
                _ => format!("flood-{i}"),
            };
            labelled.insert(l.label(&tenant, &store).to_owned());
        }
        assert!(labelled.contains(OTHER));
        assert_eq!(
            labelled.len(),
            3,
            "two heavy hitters and other: {labelled:?}"
        );
        assert!(
            labelled
                .iter()
                .all(|t| t == OTHER || t.starts_with("heavy-"))
        );
    }

    #[test]
    fn workers_share_the_promotions_and_the_limit() {
        let store = MemoryStore::default();
        let (mut one, mut two) = (labels(&store, 1), labels(&store, 1));
        for _ in 0..MIN_REQUESTS - 1 {
            assert_eq!(one.label("big", &store), OTHER, "not yet");
        }
        assert_eq!(one.label("big", &store), "big");
        for _ in 0..2 * MIN_REQUESTS {
            assert_eq!(two.label("huge", &store), OTHER, "the one slot is taken");
        }
        two.refresh(&store);
        assert_eq!(two.label("big", &store), "big", "learnt on refresh");
    }

    #[test]
    fn an_unreadable_list_labels_no_heavy_hitter() {
        let store = MemoryStore::default();
        let mut l = labels(&store, 3);
        store.set("k", b"garbage", None).unwrap();
        for _ in 0..2 * MIN_REQUESTS {
            assert_eq!(l.label("big", &store), OTHER);
        }
        assert_eq!(l.label("acme", &store), "acme");
        assert_eq!(
            decode(&encode(&["x".into(), "y".into()])).unwrap(),
            ["x", "y"]
        );
    }
}
