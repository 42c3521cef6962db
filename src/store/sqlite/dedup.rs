//! The duplicate check's memory: which body hashes were stored within the dedup window.
//!
//! Looking each notification up in an index on its (random) hash would make every commit
//! rewrite one index page per event; instead the writer remembers the window's hashes, loaded
//! from the store at start, and the store keeps only an append-only (time, hash) index. The
//! memory is bounded: past [`DEDUP_MEMORY`] entries the oldest are forgotten, and a hash not
//! found in memory is then looked up in the store for the forgotten stretch of the window —
//! slower, never wrong.
//!
//! To stay small, memory keys its table by a 32-bit fingerprint of the hash and keeps the low
//! 32 bits of the seq: what it recalls is a candidate that the store confirms by seq and full
//! hash. The few hashes whose fingerprint is already taken when they are remembered go to a
//! side table keyed by the whole hash, so a candidate that the store does not confirm means
//! that memory holds no copy.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::model::Millis;

/// Hashes remembered at most: all that a table of 2^20 slots holds without growing (9 bytes a
/// slot with its control byte), plus 16 bytes each in the expiry queue: about 24 MB when full.
/// That covers 255 notifications a second sustained over the default one-hour window; beyond
/// it, lookups go to the store and the intake slows down.
pub const DEDUP_MEMORY: usize = (1 << 20) / 8 * 7;

/// The first 8 bytes of a SHA-256, as stored in `events.hash64`.
pub fn hash64(hash: &[u8; 32]) -> i64 {
    i64::from_le_bytes(hash[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

pub struct DedupMemory {
    window: Duration,
    capacity: usize,
    /// fingerprint → low 32 bits of the seq of the event that holds it. A fingerprint is set
    /// only while vacant, so every entry outside `by_hash` holds its own.
    by_fingerprint: HashMap<u32, u32>,
    /// hash64 → seq of events whose fingerprint was taken when they were remembered.
    by_hash: HashMap<i64, i64>,
    /// (received_at, hash64) in arrival order, for expiry.
    order: VecDeque<(i64, i64)>,
    /// The newest seq remembered, to widen the 32-bit seqs of `by_fingerprint` again.
    newest_seq: i64,
    /// Entries received up to this time were forgotten for lack of room.
    forgotten_until: Option<Millis>,
}

/// What memory says of a hash: where the store should look for a stored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recall {
    /// A copy within the window is likely stored as this seq; the store confirms it.
    pub candidate: Option<i64>,
    /// Events received after `window_start` count as copies.
    pub window_start: Millis,
    /// Memory forgot this stretch of the window (from, until]: look in the store there.
    pub forgotten: Option<(Millis, Millis)>,
}

impl DedupMemory {
    pub fn new(window: Duration, capacity: usize) -> DedupMemory {
        // Allocated whole up front: growing a table of hundreds of thousands of entries
        // rehashes them all at once and stalls the writer (and every request waiting on it)
        // for tens of milliseconds. Pages are only touched as entries arrive.
        DedupMemory {
            window,
            capacity,
            by_fingerprint: HashMap::with_capacity(capacity),
            by_hash: HashMap::new(),
            order: VecDeque::with_capacity(capacity),
            newest_seq: 0,
            forgotten_until: None,
        }
    }

    /// What is known of `hash64` for a notification received at `now`.
    pub fn recall(&mut self, hash64: i64, now: Millis) -> Recall {
        let window_start = now.minus(self.window);
        self.expire(window_start);
        let candidate = self.by_hash.get(&hash64).copied().or_else(|| {
            self.by_fingerprint
                .get(&fingerprint(hash64))
                .map(|low| self.widen(*low))
        });
        let forgotten = self
            .forgotten_until
            .filter(|until| *until > window_start)
            .map(|until| (window_start, until));
        Recall {
            candidate,
            window_start,
            forgotten,
        }
    }

    pub fn remember(&mut self, hash64: i64, seq: i64, received_at: Millis) {
        while self.order.len() >= self.capacity {
            let Some((time, hash)) = self.order.pop_front() else {
                break;
            };
            self.forget_entry(hash);
            self.forgotten_until = Some(Millis(time));
        }
        match self.by_fingerprint.entry(fingerprint(hash64)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(seq as u32);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.by_hash.insert(hash64, seq);
            }
        }
        self.newest_seq = self.newest_seq.max(seq);
        self.order.push_back((received_at.0, hash64));
    }

    /// Undoes `remember` for events whose transaction did not commit.
    pub fn forget(&mut self, hashes: &[i64]) {
        for hash in hashes {
            self.forget_entry(*hash);
        }
        self.order
            .retain(|(_, hash)| !hashes.iter().any(|forgotten| forgotten == hash));
    }

    /// Drops the entry of `hash64`: from the side table if it is there, else it holds its
    /// fingerprint.
    fn forget_entry(&mut self, hash64: i64) {
        if self.by_hash.remove(&hash64).is_none() {
            self.by_fingerprint.remove(&fingerprint(hash64));
        }
    }

    /// The full seq whose low 32 bits are `low`: remembered seqs span far fewer than 2^32.
    fn widen(&self, low: u32) -> i64 {
        self.newest_seq - i64::from((self.newest_seq as u32).wrapping_sub(low))
    }

    fn expire(&mut self, window_start: Millis) {
        while let Some(&(time, hash)) = self.order.front() {
            if time > window_start.0 {
                break;
            }
            self.order.pop_front();
            self.forget_entry(hash);
        }
        if self
            .forgotten_until
            .is_some_and(|until| until <= window_start)
        {
            self.forgotten_until = None;
        }
    }
}

/// The high 32 bits of the hash (independent of the low bits that hashing the table uses).
fn fingerprint(hash64: i64) -> u32 {
    (hash64 as u64 >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const START: Millis = Millis(10_000_000);

    fn at(offset_ms: i64) -> Millis {
        Millis(START.0 + offset_ms)
    }

    /// A hash64 with the given fingerprint (high half) and low half.
    fn hash(fingerprint: u32, low: u32) -> i64 {
        ((u64::from(fingerprint) << 32) | u64::from(low)) as i64
    }

    #[test]
    fn a_hash_is_recalled_within_the_window_of_its_copy_and_not_after() {
        let mut memory = DedupMemory::new(HOUR, 10);
        assert_eq!(memory.recall(7, START).candidate, None);
        memory.remember(7, 1, START);
        let within = memory.recall(7, at(3_599_000));
        assert_eq!(within.candidate, Some(1));
        assert_eq!(within.window_start, at(3_599_000).minus(HOUR));
        assert_eq!(memory.recall(7, at(3_600_000)).candidate, None);
    }

    #[test]
    fn forgetting_for_lack_of_room_sends_lookups_to_the_store_until_the_window_passes() {
        let mut memory = DedupMemory::new(HOUR, 2);
        memory.remember(hash(1, 0), 1, START);
        memory.remember(hash(2, 0), 2, at(10));
        memory.remember(hash(3, 0), 3, at(20));
        let now = at(30);
        let forgotten = memory.recall(hash(1, 0), now);
        assert_eq!(forgotten.candidate, None);
        assert_eq!(forgotten.forgotten, Some((now.minus(HOUR), START)));
        assert_eq!(memory.recall(hash(3, 0), now).candidate, Some(3));
        assert_eq!(memory.recall(hash(9, 0), at(3_600_000)).forgotten, None);
    }

    #[test]
    fn a_batch_that_did_not_commit_is_forgotten() {
        let mut memory = DedupMemory::new(HOUR, 10);
        memory.remember(5, 8, START);
        memory.forget(&[5]);
        assert_eq!(memory.recall(5, START).candidate, None);
        assert!(memory.order.is_empty());
    }

    #[test]
    fn hashes_that_share_a_fingerprint_are_each_recalled_as_their_own_seq() {
        let mut memory = DedupMemory::new(HOUR, 10);
        memory.remember(hash(42, 1), 1, START);
        memory.remember(hash(42, 2), 2, at(10));
        assert_eq!(memory.recall(hash(42, 1), at(20)).candidate, Some(1));
        assert_eq!(memory.recall(hash(42, 2), at(20)).candidate, Some(2));
        // The first expires; the second is still recalled, and a third takes the fingerprint.
        assert_eq!(memory.recall(hash(42, 2), at(3_600_000)).candidate, Some(2));
        memory.remember(hash(42, 3), 3, at(3_600_001));
        assert_eq!(memory.recall(hash(42, 3), at(3_600_002)).candidate, Some(3));
        assert_eq!(memory.recall(hash(42, 2), at(3_600_002)).candidate, Some(2));
        assert_eq!(memory.recall(hash(42, 2), at(3_600_010)).candidate, Some(3));
    }

    #[test]
    fn seqs_are_widened_back_across_a_32_bit_boundary() {
        let mut memory = DedupMemory::new(HOUR, 10);
        let before = (1_i64 << 32) - 1;
        memory.remember(hash(1, 0), before, START);
        memory.remember(hash(2, 0), before + 2, at(1));
        assert_eq!(memory.recall(hash(1, 0), at(2)).candidate, Some(before));
        assert_eq!(memory.recall(hash(2, 0), at(2)).candidate, Some(before + 2));
    }
}
