//! A bounded table for the memory store: entries expire (at a Unix second),
//! and beyond `capacity` the least recently used entry is forgotten.
//!
//! Entries past their expiry read as absent. They are dropped when met, a
//! few at a time on every insert (oldest expiry first), and always before a
//! live entry would be, so an idle table shrinks without a sweeper thread
//! and a full one forgets live entries only when none has expired.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

/// Expired entries dropped per insert at most, to bound the work of one call.
const PURGE_PER_INSERT: usize = 8;

pub(super) struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Use tick → key, least recently used first.
    order: BTreeMap<u64, K>,
    /// (expiry, use tick) of every entry, soonest first.
    expiries: BTreeSet<(u64, u64)>,
    next_tick: u64,
    capacity: usize,
}

struct Entry<V> {
    value: V,
    /// Unix second from which the entry is gone.
    expires: u64,
    tick: u64,
}

/// When an entry expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// At this second, set when the entry is created and then kept (a
    /// counter: its lifetime runs from its first hit).
    SetOnCreation(u64),
    /// At this second, set again on every use (a chunk of marks: its
    /// lifetime runs from its last mark).
    SetOnUse(u64),
}

/// What making room for an insert cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evicted {
    /// Nothing live was dropped.
    Nothing,
    /// A live entry (not yet expired) was dropped to stay within capacity.
    Live,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// A table of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Lru<K, V> {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            expiries: BTreeSet::new(),
            next_tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The live value for `key`, marked as just used.
    pub fn get_mut(&mut self, key: &K, now: u64) -> Option<&mut V> {
        if self.entries.get(key)?.expires <= now {
            self.remove(key);
            return None;
        }
        let tick = self.tick();
        let entry = self.entries.get_mut(key)?;
        Self::retick(&mut self.order, &mut self.expiries, entry, tick);
        Some(&mut entry.value)
    }

    /// The live value for `key`, marked as just used; if there is none, a
    /// new one from `new()`, making room if the table is full.
    pub fn get_or_insert(
        &mut self,
        key: K,
        now: u64,
        expiry: Expiry,
        new: impl FnOnce() -> V,
    ) -> (&mut V, Evicted) {
        let mut evicted = Evicted::Nothing;
        if self.entries.get(&key).is_none_or(|e| e.expires <= now) {
            self.remove(&key);
            self.purge_expired(now, PURGE_PER_INSERT);
            if self.entries.len() >= self.capacity && !self.purge_expired(now, 1) {
                if let Some((_, oldest)) = self.order.first_key_value() {
                    let oldest = oldest.clone();
                    self.remove(&oldest);
                }
                evicted = Evicted::Live;
            }
        }
        let tick = self.tick();
        let entry = match self.entries.entry(key) {
            MapEntry::Occupied(occupied) => {
                let entry = occupied.into_mut();
                if let Expiry::SetOnUse(expires) = expiry {
                    self.expiries.remove(&(entry.expires, entry.tick));
                    entry.expires = expires;
                    self.expiries.insert((entry.expires, entry.tick));
                }
                Self::retick(&mut self.order, &mut self.expiries, entry, tick);
                entry
            }
            MapEntry::Vacant(vacant) => {
                let (Expiry::SetOnCreation(expires) | Expiry::SetOnUse(expires)) = expiry;
                self.order.insert(tick, vacant.key().clone());
                self.expiries.insert((expires, tick));
                vacant.insert(Entry {
                    value: new(),
                    expires,
                    tick,
                })
            }
        };
        (&mut entry.value, evicted)
    }

    /// Moves `entry` to use tick `tick` in both indexes.
    fn retick(
        order: &mut BTreeMap<u64, K>,
        expiries: &mut BTreeSet<(u64, u64)>,
        entry: &mut Entry<V>,
        tick: u64,
    ) {
        if let Some(key) = order.remove(&entry.tick) {
            order.insert(tick, key);
        }
        expiries.remove(&(entry.expires, entry.tick));
        expiries.insert((entry.expires, tick));
        entry.tick = tick;
    }

    fn remove(&mut self, key: &K) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.tick);
            self.expiries.remove(&(entry.expires, entry.tick));
        }
    }

    /// Drops up to `at_most` expired entries, soonest expiry first; tells
    /// whether it dropped any.
    fn purge_expired(&mut self, now: u64, at_most: usize) -> bool {
        let mut dropped = false;
        for _ in 0..at_most {
            let Some(&(expires, tick)) = self.expiries.first() else {
                break;
            };
            if expires > now {
                break;
            }
            self.expiries.remove(&(expires, tick));
            if let Some(key) = self.order.remove(&tick) {
                self.entries.remove(&key);
            }
            dropped = true;
        }
        dropped
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: usize) -> Lru<&'static str, u64> {
        Lru::new(capacity)
    }

    #[test]
    fn forgets_the_least_recently_used_beyond_capacity() {
        let mut lru = table(2);
        lru.get_or_insert("a", 0, Expiry::SetOnCreation(100), || 1);
        lru.get_or_insert("b", 0, Expiry::SetOnCreation(100), || 2);
        // Using "a" makes "b" the least recently used.
        assert_eq!(lru.get_mut(&"a", 0).copied(), Some(1));
        let (c, evicted) = lru.get_or_insert("c", 0, Expiry::SetOnCreation(100), || 3);
        assert_eq!((*c, evicted), (3, Evicted::Live));
        assert!(lru.get_mut(&"b", 0).is_none());
        assert_eq!(lru.get_mut(&"a", 0).copied(), Some(1));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn expired_entries_read_as_absent_and_make_room_first() {
        let mut lru = table(2);
        lru.get_or_insert("a", 0, Expiry::SetOnCreation(10), || 1);
        lru.get_or_insert("b", 0, Expiry::SetOnCreation(100), || 2);
        assert_eq!(lru.get_mut(&"a", 9).copied(), Some(1));
        assert!(lru.get_mut(&"a", 10).is_none());
        lru.get_or_insert("a", 10, Expiry::SetOnCreation(20), || 5);
        // "b" is older but live; "a" expired: inserting "c" drops "a" only.
        let (_, evicted) = lru.get_or_insert("c", 20, Expiry::SetOnCreation(100), || 3);
        assert_eq!(evicted, Evicted::Nothing);
        assert_eq!(lru.get_mut(&"b", 20).copied(), Some(2));
        // An expired entry is replaced by a fresh one, not revived.
        lru.get_or_insert("d", 100, Expiry::SetOnCreation(200), || 4);
        let (b, _) = lru.get_or_insert("b", 100, Expiry::SetOnCreation(200), || 7);
        assert_eq!(*b, 7);
    }

    #[test]
    fn keeps_at_least_one_entry() {
        let mut lru = table(0);
        lru.get_or_insert("a", 0, Expiry::SetOnCreation(10), || 1);
        assert_eq!(lru.get_mut(&"a", 0).copied(), Some(1));
    }
}
