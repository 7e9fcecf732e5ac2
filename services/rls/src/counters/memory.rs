//! The memory store: this process's counters and report marks, under one
//! lock, so that checking and marking a report id and adding its hits are one
//! step, as the Redis script is.

use std::sync::{Mutex, PoisonError};

use super::lru::{Evicted, Expiry, Lru};
use super::{Counted, Hit};
use crate::report::{CHUNK_IDS, Dedupe, ReportId};

/// u64 words in a chunk of marks.
const WORDS: usize = (CHUNK_IDS / 64) as usize;

pub(super) struct Memory {
    state: Mutex<State>,
    /// How long a chunk of marks outlives its last mark, in seconds.
    horizon: u64,
    max_chunks: usize,
}

struct State {
    /// Counter key → value (see [`super::counter_key`]).
    counters: Lru<String, u64>,
    /// (reporter, chunk) → one bit per report id.
    marks: Lru<(u64, u64), Box<[u64; WORDS]>>,
    /// Chunks of marks forgotten before their horizon because the table was
    /// full.
    marks_evicted_early: u64,
}

impl Memory {
    pub fn new(max_counters: u64, dedupe: Dedupe) -> Memory {
        Memory {
            state: Mutex::new(State {
                counters: Lru::new(usize::try_from(max_counters).unwrap_or(usize::MAX)),
                marks: Lru::new(dedupe.max_chunks),
                marks_evicted_early: 0,
            }),
            horizon: dedupe.horizon.as_secs(),
            max_chunks: dedupe.max_chunks,
        }
    }

    /// Marks `report` and adds `hits`, or, if `report` was already marked,
    /// only reads the counters. `now`: Unix seconds.
    pub fn apply(&self, report: Option<ReportId>, hits: &[Hit], now: u64) -> Counted {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let duplicate = report.is_some_and(|id| self.mark(&mut state, id, now));
        let values = hits
            .iter()
            .map(|hit| state.count(hit, duplicate, now))
            .collect();
        Counted { duplicate, values }
    }

    /// Chunks of marks forgotten before their horizon so far.
    #[cfg(test)]
    pub fn marks_evicted_early(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.marks_evicted_early
    }

    /// Sets the id's mark and tells whether it was already set.
    fn mark(&self, state: &mut State, id: ReportId, now: u64) -> bool {
        // Whole seconds: one more keeps a mark at least the horizon.
        let expires = now.saturating_add(self.horizon).saturating_add(1);
        let (chunk, evicted) = state.marks.get_or_insert(
            (id.reporter, id.chunk()),
            now,
            Expiry::SetOnUse(expires),
            || Box::new([0; WORDS]),
        );
        let mask = 1u64 << (id.bit() % 64);
        let seen = match usize::try_from(id.bit() / 64)
            .ok()
            .and_then(|word| chunk.get_mut(word))
        {
            Some(word) => {
                let seen = *word & mask != 0;
                *word |= mask;
                seen
            }
            None => false,
        };
        if evicted == Evicted::Live {
            state.marks_evicted_early += 1;
            let early = state.marks_evicted_early;
            if early.is_power_of_two() {
                tracing::warn!(
                    "{early} chunk(s) of report-id marks forgotten before the dedupe horizon \
                     (table full at {} chunks; raise --dedupe-max-chunks): a retry of one of \
                     their reports would be counted again",
                    self.max_chunks
                );
            }
        }
        seen
    }
}

impl State {
    /// Adds the hit's cost to its counter (unless `read_only` or the cost is
    /// 0) and returns the counter.
    fn count(&mut self, hit: &Hit, read_only: bool, now: u64) -> u64 {
        if read_only || hit.cost == 0 {
            return self.counters.get_mut(&hit.key, now).map_or(0, |c| *c);
        }
        let expires = Expiry::SetOnCreation(now.saturating_add(hit.ttl));
        let (counter, evicted) = self
            .counters
            .get_or_insert(hit.key.clone(), now, expires, || 0);
        *counter = counter.saturating_add(hit.cost);
        let value = *counter;
        if evicted == Evicted::Live {
            tracing::debug!(
                "counter table full ({} counters): the least recently used was forgotten",
                self.counters.len()
            );
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hit(key: &str, cost: u64) -> Hit {
        Hit {
            key: key.to_owned(),
            cost,
            ttl: 120,
        }
    }

    fn id(reporter: u64, seq: u64) -> Option<ReportId> {
        Some(ReportId { reporter, seq })
    }

    fn store(horizon: u64, max_chunks: usize) -> Memory {
        Memory::new(
            100,
            Dedupe {
                horizon: Duration::from_secs(horizon),
                max_chunks,
            },
        )
    }

    #[test]
    fn applies_a_report_once() {
        let memory = store(3600, 10);
        let hits = [hit("a", 5), hit("b", 1)];
        let first = memory.apply(id(1, 7), &hits, 1000);
        assert_eq!((first.duplicate, first.values), (false, vec![5, 1]));
        let again = memory.apply(id(1, 7), &hits, 1001);
        assert_eq!((again.duplicate, again.values), (true, vec![5, 1]));
        // Another id, another reporter with the same seq, no id at all: each counts.
        assert_eq!(memory.apply(id(1, 8), &hits, 1002).values, vec![10, 2]);
        assert_eq!(memory.apply(id(2, 7), &hits, 1002).values, vec![15, 3]);
        assert_eq!(memory.apply(None, &hits, 1002).values, vec![20, 4]);
        assert_eq!(memory.apply(None, &hits, 1002).values, vec![25, 5]);
        // A duplicate answers from the counters as they are now.
        assert_eq!(memory.apply(id(1, 7), &hits, 1003).values, vec![25, 5]);
    }

    #[test]
    fn cost_zero_only_reads() {
        let memory = store(3600, 10);
        assert_eq!(memory.apply(None, &[hit("a", 0)], 1000).values, vec![0]);
        assert_eq!(memory.apply(None, &[hit("a", 3)], 1000).values, vec![3]);
        assert_eq!(memory.apply(None, &[hit("a", 0)], 1000).values, vec![3]);
    }

    #[test]
    fn marks_last_the_horizon_and_then_expire() {
        let memory = store(10, 10);
        let hits = [hit("a", 1)];
        assert!(!memory.apply(id(1, 1), &hits, 1000).duplicate);
        // Remembered through 1010 (the mark may have been set at 1000.999).
        assert!(memory.apply(id(1, 1), &hits, 1010).duplicate);
        // Each mark in the chunk (a duplicate too) extends it, like EXPIRE
        // in Redis.
        assert!(!memory.apply(id(1, 2), &hits, 1010).duplicate);
        assert!(memory.apply(id(1, 1), &hits, 1020).duplicate);
        // Past the horizon of the chunk's last mark, a retry counts again.
        let late = memory.apply(id(1, 1), &hits, 1032);
        assert_eq!((late.duplicate, late.values), (false, vec![3]));
        assert_eq!(memory.marks_evicted_early(), 0);
    }

    #[test]
    fn counters_expire_after_their_ttl() {
        let memory = store(3600, 10);
        assert_eq!(memory.apply(None, &[hit("a", 2)], 1000).values, vec![2]);
        assert_eq!(memory.apply(None, &[hit("a", 2)], 1119).values, vec![4]);
        assert_eq!(memory.apply(None, &[hit("a", 2)], 1120).values, vec![2]);
    }

    #[test]
    fn a_full_mark_table_forgets_early_and_counts_it() {
        let memory = store(3600, 2);
        let hits = [hit("a", 1)];
        // Three chunks of reporter 1: 0, 1 and 2.
        memory.apply(id(1, 0), &hits, 1000);
        memory.apply(id(1, 4096), &hits, 1000);
        assert_eq!(memory.marks_evicted_early(), 0);
        memory.apply(id(1, 8192), &hits, 1000);
        assert_eq!(memory.marks_evicted_early(), 1);
        // Chunk 0 was forgotten: its retry counts again (a double count,
        // never a lost one); chunk 2 is still known.
        assert!(memory.apply(id(1, 8192), &hits, 1001).duplicate);
        let retry = memory.apply(id(1, 0), &hits, 1001);
        assert_eq!((retry.duplicate, retry.values), (false, vec![4]));
    }

    #[test]
    fn a_full_counter_table_forgets_the_least_recently_used() {
        let memory = Memory::new(2, Dedupe::default());
        memory.apply(None, &[hit("a", 1)], 1000);
        memory.apply(None, &[hit("b", 1)], 1000);
        memory.apply(None, &[hit("a", 1)], 1000);
        memory.apply(None, &[hit("c", 1)], 1000);
        let values = memory.apply(None, &[hit("a", 0), hit("b", 0), hit("c", 0)], 1000);
        assert_eq!(values.values, vec![2, 0, 1]);
    }
}
