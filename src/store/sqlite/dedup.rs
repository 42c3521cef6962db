//! The duplicate check's memory: which body hashes were stored within the dedup window.
//!
//! Looking each notification up in an index on its (random) hash would make every commit
//! rewrite one index page per event; instead the writer remembers the window's hashes, loaded
//! from the store at start, and the store keeps only an append-only (time, hash) index. The
//! memory is bounded: past [`DEDUP_MEMORY`] entries the oldest are forgotten, and a hash not
//! found in memory is then looked up in the store for the forgotten stretch of the window —
//! slower, never wrong.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::model::Millis;

/// Hashes remembered at most (16 bytes each in a table of twice as many slots, and 24 in the
/// expiry queue: about 28 MB when full); beyond it lookups go to the store.
pub const DEDUP_MEMORY: usize = 500_000;

/// The first 8 bytes of a SHA-256, as stored in `events.hash64`.
pub fn hash64(hash: &[u8; 32]) -> i64 {
    i64::from_le_bytes(hash[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

pub struct DedupMemory {
    window: Duration,
    capacity: usize,
    /// hash64 → seq of the newest event with that hash. An entry lives exactly as long as its
    /// entry in `order`, so it is always within the window.
    seen: HashMap<i64, i64>,
    /// (received_at, hash64, seq) in arrival order, for expiry.
    order: VecDeque<(i64, i64, i64)>,
    /// Entries received up to this time were forgotten for lack of room.
    forgotten_until: Option<Millis>,
}

/// What memory says of a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recall {
    /// Stored as this seq within the window (to be confirmed against the full hash).
    Seen { seq: i64 },
    /// Not stored within the window.
    Unseen,
    /// Not in memory, but memory forgot part of the window: look in the store between these
    /// times.
    Unsure { from: Millis, until: Millis },
}

impl DedupMemory {
    pub fn new(window: Duration, capacity: usize) -> DedupMemory {
        // Allocated whole up front: growing a map of hundreds of thousands of entries rehashes
        // them all at once and stalls the writer (and every request waiting on it) for tens of
        // milliseconds. Pages are only touched as entries arrive.
        DedupMemory {
            window,
            capacity,
            seen: HashMap::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            forgotten_until: None,
        }
    }

    /// What is known of `hash64` for a notification received at `now`.
    pub fn recall(&mut self, hash64: i64, now: Millis) -> Recall {
        let window_start = now.minus(self.window);
        self.expire(window_start);
        if let Some(seq) = self.seen.get(&hash64) {
            return Recall::Seen { seq: *seq };
        }
        match self.forgotten_until {
            Some(until) if until > window_start => Recall::Unsure {
                from: window_start,
                until,
            },
            _ => Recall::Unseen,
        }
    }

    pub fn remember(&mut self, hash64: i64, seq: i64, received_at: Millis) {
        while self.order.len() >= self.capacity {
            let Some((time, hash, old_seq)) = self.order.pop_front() else {
                break;
            };
            self.forget_entry(hash, old_seq);
            self.forgotten_until = Some(Millis(time));
        }
        self.seen.insert(hash64, seq);
        self.order.push_back((received_at.0, hash64, seq));
    }

    /// Undoes `remember` for events whose transaction did not commit.
    pub fn forget(&mut self, seqs: &[(i64, i64)]) {
        for (hash, seq) in seqs {
            self.forget_entry(*hash, *seq);
        }
        self.order
            .retain(|(_, _, seq)| !seqs.iter().any(|(_, forgotten)| forgotten == seq));
    }

    fn forget_entry(&mut self, hash64: i64, seq: i64) {
        if self.seen.get(&hash64) == Some(&seq) {
            self.seen.remove(&hash64);
        }
    }

    fn expire(&mut self, window_start: Millis) {
        while let Some(&(time, hash, seq)) = self.order.front() {
            if time > window_start.0 {
                break;
            }
            self.order.pop_front();
            self.forget_entry(hash, seq);
        }
        if self
            .forgotten_until
            .is_some_and(|until| until <= window_start)
        {
            self.forgotten_until = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_hash_is_seen_within_the_window_of_its_copy_and_not_after() {
        let mut memory = DedupMemory::new(HOUR, 10);
        let start = Millis(10_000_000);
        assert_eq!(memory.recall(7, start), Recall::Unseen);
        memory.remember(7, 1, start);
        assert_eq!(
            memory.recall(7, Millis(start.0 + 3_599_000)),
            Recall::Seen { seq: 1 }
        );
        assert_eq!(
            memory.recall(7, Millis(start.0 + 3_600_000)),
            Recall::Unseen
        );
    }

    #[test]
    fn forgetting_for_lack_of_room_makes_memory_unsure_until_the_window_passes() {
        let mut memory = DedupMemory::new(HOUR, 2);
        let start = Millis(10_000_000);
        memory.remember(1, 1, start);
        memory.remember(2, 2, Millis(start.0 + 10));
        memory.remember(3, 3, Millis(start.0 + 20));
        let now = Millis(start.0 + 30);
        assert_eq!(
            memory.recall(1, now),
            Recall::Unsure {
                from: now.minus(HOUR),
                until: start
            }
        );
        assert_eq!(memory.recall(3, now), Recall::Seen { seq: 3 });
        assert_eq!(
            memory.recall(9, Millis(start.0 + 3_600_000)),
            Recall::Unseen
        );
    }

    #[test]
    fn a_batch_that_did_not_commit_is_forgotten() {
        let mut memory = DedupMemory::new(HOUR, 10);
        let now = Millis(10_000_000);
        memory.remember(5, 8, now);
        memory.forget(&[(5, 8)]);
        assert_eq!(memory.recall(5, now), Recall::Unseen);
    }
}
