//! Script state: `seen` keys, `count` windows, the upgrade retry budget, and digest items.
//!
//! A run reads committed state through [`StateView`] and writes only to [`StateChanges`], an
//! overlay that the worker commits in the same transaction as the event's outcome. Reads
//! always go through [`Effective`], which lays the overlay over the committed state, so a
//! later event of the same batch (or a later plugin of the same event) sees earlier changes.
//!
//! Counters and budgets are written as deltas, so two workers incrementing one key cannot lose
//! an update. Every committed value a run read is kept in [`StateChanges::reads`]; the store
//! checks them when it commits and refuses the batch if another claimer changed one meanwhile,
//! so that a decision made from state (a key unseen, a threshold reached, budget left) stays
//! right with any number of claimers: the refused batch runs again on the new state.

use std::collections::HashMap;
use std::time::Duration;

use super::Millis;

/// Why state could not be read; the run is abandoned and retried, never guessed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading script state failed: {0}")]
pub struct StateError(pub String);

/// Committed state.
pub trait StateView {
    /// When `key` was last recorded by `seen`.
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError>;
    /// A counter's value and the start of its window.
    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError>;
    /// Retries used for a device and target version, and the start of the budget window.
    fn budget(
        &self,
        device_id: &str,
        target_version: &str,
    ) -> Result<Option<(i64, Millis)>, StateError>;
}

/// A `seen` key recorded by a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenRecord {
    pub recorded_at: Millis,
    /// For pruning only: when the ttl given at recording runs out.
    pub expires_at: Millis,
}

/// Increments of one counter by a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountDelta {
    pub delta: i64,
    /// Set when the committed window had ended (or there was none): the increment starts a
    /// new window at this time.
    pub new_window: Option<Millis>,
    pub window: Duration,
}

/// Budget units taken by a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetDelta {
    pub delta: i64,
    pub new_window: Option<Millis>,
}

#[derive(Debug, Clone, Default)]
pub struct StateChanges {
    pub seen: HashMap<String, SeenRecord>,
    pub counts: HashMap<String, CountDelta>,
    pub budgets: HashMap<(String, String), BudgetDelta>,
    /// Items added to digests. Additions need no read: the store adds them to the digest
    /// that is open when the batch commits, or opens one.
    pub digests: HashMap<DigestKey, DigestAddition>,
    /// The committed values the run read, each as first read: the commit holds only if they
    /// are unchanged.
    pub reads: HashMap<StateKey, Option<CommittedValue>>,
    /// What each change replaced, newest last, so that a failed plugin's changes can be undone
    /// without copying the whole overlay before every run.
    undo: Vec<Undo>,
}

/// The most items a digest keeps; its total counts every item.
pub const DIGEST_ITEMS: usize = 1_000;

/// A digest: one plugin's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DigestKey {
    pub plugin: String,
    pub key: String,
}

/// Items a run added to one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestAddition {
    /// When the run added its first item: a digest this opens ends at `opened_at + window`.
    pub opened_at: Millis,
    pub window: Duration,
    /// The first [`DIGEST_ITEMS`] items, each as JSON text, in the order added.
    pub items: Vec<String>,
    /// Every item added, kept or not.
    pub total: i64,
}

impl DigestAddition {
    /// When a digest opened by this addition ends.
    pub fn ends_at(&self) -> Millis {
        let window = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        Millis(self.opened_at.0.saturating_add(window))
    }
}

/// One piece of committed state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StateKey {
    Seen(String),
    Counter(String),
    Budget {
        device_id: String,
        target_version: String,
    },
}

/// A committed value: a counter's or budget's value and window start; for a `seen` key, 0 and
/// when it was recorded.
pub type CommittedValue = (i64, Millis);

impl StateKey {
    /// Reads this key's committed value from `view`.
    pub fn read(&self, view: &dyn StateView) -> Result<Option<CommittedValue>, StateError> {
        match self {
            StateKey::Seen(key) => Ok(view.seen_at(key)?.map(|at| (0, at))),
            StateKey::Counter(key) => view.counter(key),
            StateKey::Budget {
                device_id,
                target_version,
            } => view.budget(device_id, target_version),
        }
    }
}

#[derive(Debug, Clone)]
enum Undo {
    Seen(String, Option<SeenRecord>),
    Count(String, Option<CountDelta>),
    Budget((String, String), Option<BudgetDelta>),
    /// The digest's item count and total before an addition (0: it had none).
    Digest(DigestKey, usize, i64),
}

/// A point to which changes can be rolled back.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint(usize);

impl StateChanges {
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
            && self.counts.is_empty()
            && self.budgets.is_empty()
            && self.digests.is_empty()
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint(self.undo.len())
    }

    /// Undoes every change made since `checkpoint`.
    pub fn rollback(&mut self, checkpoint: Checkpoint) {
        while self.undo.len() > checkpoint.0 {
            match self.undo.pop().expect("the length was checked") {
                Undo::Seen(key, old) => restore(&mut self.seen, key, old),
                Undo::Count(key, old) => restore(&mut self.counts, key, old),
                Undo::Budget(key, old) => restore(&mut self.budgets, key, old),
                Undo::Digest(key, 0, 0) => {
                    self.digests.remove(&key);
                }
                Undo::Digest(key, items, total) => {
                    if let Some(addition) = self.digests.get_mut(&key) {
                        addition.items.truncate(items);
                        addition.total = total;
                    }
                }
            }
        }
    }

    /// Forgets the undo history: the changes so far are final.
    pub fn settle(&mut self) {
        self.undo.clear();
    }

    fn set_seen(&mut self, key: &str, record: SeenRecord) {
        let old = self.seen.insert(key.to_owned(), record);
        self.undo.push(Undo::Seen(key.to_owned(), old));
    }

    fn set_count(&mut self, key: &str, delta: CountDelta) {
        let old = self.counts.insert(key.to_owned(), delta);
        self.undo.push(Undo::Count(key.to_owned(), old));
    }

    fn set_budget(&mut self, key: (String, String), delta: BudgetDelta) {
        let old = self.budgets.insert(key.clone(), delta);
        self.undo.push(Undo::Budget(key, old));
    }
}

impl StateChanges {
    /// `digest(key, window, item)`: adds `item` (JSON text) to the plugin's digest `key`; the
    /// window counts only for the addition that opens the digest.
    pub fn add_to_digest(&mut self, key: DigestKey, window: Duration, item: String, now: Millis) {
        let addition = self
            .digests
            .entry(key.clone())
            .or_insert_with(|| DigestAddition {
                opened_at: now,
                window,
                items: Vec::new(),
                total: 0,
            });
        self.undo
            .push(Undo::Digest(key, addition.items.len(), addition.total));
        if addition.items.len() < DIGEST_ITEMS {
            addition.items.push(item);
        }
        addition.total += 1;
    }
}

fn restore<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, old: Option<V>) {
    match old {
        Some(old) => map.insert(key, old),
        None => map.remove(&key),
    };
}

/// Committed state with uncommitted changes laid over it.
pub struct Effective<'a> {
    pub committed: &'a dyn StateView,
    pub changes: &'a mut StateChanges,
    pub now: Millis,
}

fn budget_key(device_id: &str, target_version: &str) -> StateKey {
    StateKey::Budget {
        device_id: device_id.to_owned(),
        target_version: target_version.to_owned(),
    }
}

fn live(start: Millis, window: Duration, now: Millis) -> bool {
    start > now.minus(window)
}

impl Effective<'_> {
    /// Reads `key`'s committed value, and keeps the first value read for the commit's check.
    fn read_committed(&mut self, key: StateKey) -> Result<Option<CommittedValue>, StateError> {
        if let Some(read) = self.changes.reads.get(&key) {
            return Ok(*read);
        }
        let value = key.read(self.committed)?;
        self.changes.reads.insert(key, value);
        Ok(value)
    }

    /// `seen(key, ttl)`: true if `key` was recorded within `ttl`; otherwise records it. A hit
    /// does not extend the ttl.
    pub fn seen(&mut self, key: &str, ttl: Duration) -> Result<bool, StateError> {
        let recorded = match self.changes.seen.get(key) {
            Some(record) => Some(record.recorded_at),
            None => self
                .read_committed(StateKey::Seen(key.to_owned()))?
                .map(|(_, at)| at),
        };
        if recorded.is_some_and(|at| live(at, ttl, self.now)) {
            return Ok(true);
        }
        let expires_at = Millis(self.now.0.saturating_add(ttl.as_millis() as i64));
        self.changes.set_seen(
            key,
            SeenRecord {
                recorded_at: self.now,
                expires_at,
            },
        );
        Ok(false)
    }

    /// `count(key, window)`: increments and returns the count in a fixed window that starts at
    /// its first increment.
    pub fn count(&mut self, key: &str, window: Duration) -> Result<i64, StateError> {
        let committed = self
            .read_committed(StateKey::Counter(key.to_owned()))?
            .filter(|(_, start)| live(*start, window, self.now));
        let pending =
            self.changes
                .counts
                .get(key)
                .copied()
                .filter(|delta| match delta.new_window {
                    Some(start) => live(start, window, self.now),
                    None => committed.is_some(),
                });
        let delta = match pending {
            Some(pending) => CountDelta {
                delta: pending.delta + 1,
                ..pending
            },
            None => CountDelta {
                delta: 1,
                new_window: committed.is_none().then_some(self.now),
                window,
            },
        };
        self.changes.set_count(key, delta);
        let base = if delta.new_window.is_some() {
            0
        } else {
            committed.map_or(0, |(value, _)| value)
        };
        Ok(base + delta.delta)
    }

    /// Retries used for `(device_id, target_version)` within `window`.
    pub fn budget_used(
        &mut self,
        device_id: &str,
        target_version: &str,
        window: Duration,
    ) -> Result<i64, StateError> {
        let committed = self
            .read_committed(budget_key(device_id, target_version))?
            .filter(|(_, start)| live(*start, window, self.now));
        let key = (device_id.to_owned(), target_version.to_owned());
        Ok(match self.changes.budgets.get(&key) {
            Some(BudgetDelta {
                delta,
                new_window: Some(_),
            }) => *delta,
            Some(BudgetDelta {
                delta,
                new_window: None,
            }) => committed.map_or(0, |(used, _)| used) + delta,
            None => committed.map_or(0, |(used, _)| used),
        })
    }

    /// Takes one unit of the budget.
    pub fn take_budget(
        &mut self,
        device_id: &str,
        target_version: &str,
        window: Duration,
    ) -> Result<(), StateError> {
        let committed_live = self
            .read_committed(budget_key(device_id, target_version))?
            .is_some_and(|(_, start)| live(start, window, self.now));
        let key = (device_id.to_owned(), target_version.to_owned());
        let delta = match self.changes.budgets.get(&key) {
            Some(pending) => BudgetDelta {
                delta: pending.delta + 1,
                ..*pending
            },
            None => BudgetDelta {
                delta: 1,
                new_window: (!committed_live).then_some(self.now),
            },
        };
        self.changes.set_budget(key, delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Committed {
        seen: HashMap<String, Millis>,
        counters: HashMap<String, (i64, Millis)>,
    }

    impl StateView for Committed {
        fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
            Ok(self.seen.get(key).copied())
        }
        fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
            Ok(self.counters.get(key).copied())
        }
        fn budget(&self, device_id: &str, _: &str) -> Result<Option<(i64, Millis)>, StateError> {
            // "d" started its window 10 s before the tests' `now`, "e" 100 s before.
            let start = if device_id == "d" { 990_000 } else { 900_000 };
            Ok(Some((2, Millis(start))))
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// The state as a run at t = 1,000 s sees it.
    fn effective<'a>(committed: &'a Committed, changes: &'a mut StateChanges) -> Effective<'a> {
        Effective {
            committed,
            changes,
            now: Millis(1_000_000),
        }
    }

    #[test]
    fn seen_records_once_and_does_not_extend() {
        let committed = Committed::default();
        let mut changes = StateChanges::default();
        let mut state = effective(&committed, &mut changes);
        assert!(!state.seen("k", MINUTE).unwrap());
        assert!(state.seen("k", MINUTE).unwrap());
        state.now = Millis(1_000_000 + 61_000);
        assert!(
            !state.seen("k", MINUTE).unwrap(),
            "a hit must not have extended the ttl"
        );
    }

    #[test]
    fn counts_add_to_a_live_committed_window_and_restart_an_ended_one() {
        let mut committed = Committed::default();
        committed
            .counters
            .insert("live".into(), (5, Millis(990_000)));
        committed
            .counters
            .insert("old".into(), (5, Millis(100_000)));
        let mut changes = StateChanges::default();
        let mut state = effective(&committed, &mut changes);
        assert_eq!(state.count("live", MINUTE).unwrap(), 6);
        assert_eq!(state.count("live", MINUTE).unwrap(), 7);
        assert_eq!(state.count("old", MINUTE).unwrap(), 1);
        assert_eq!(state.count("new", MINUTE).unwrap(), 1);
        assert_eq!(
            changes.counts["live"],
            CountDelta {
                delta: 2,
                new_window: None,
                window: MINUTE
            }
        );
        assert_eq!(changes.counts["old"].new_window, Some(Millis(1_000_000)));
    }

    #[test]
    fn rollback_undoes_only_what_came_after_the_checkpoint() {
        let committed = Committed::default();
        let mut changes = StateChanges::default();
        let mut state = effective(&committed, &mut changes);
        state.count("k", MINUTE).unwrap();
        let checkpoint = state.changes.checkpoint();
        state.count("k", MINUTE).unwrap();
        state.seen("s", MINUTE).unwrap();
        state.take_budget("d", "1.5", MINUTE).unwrap();
        state.changes.rollback(checkpoint);
        assert_eq!(changes.counts["k"].delta, 1);
        assert!(changes.seen.is_empty() && changes.budgets.is_empty());
    }

    #[test]
    fn digest_additions_keep_the_first_items_count_all_and_roll_back() {
        let mut changes = StateChanges::default();
        let key = DigestKey {
            plugin: "p.rhai".into(),
            key: "k".into(),
        };
        let add = |changes: &mut StateChanges, n: usize| {
            changes.add_to_digest(key.clone(), MINUTE, n.to_string(), Millis(n as i64))
        };
        for n in 0..DIGEST_ITEMS + 5 {
            add(&mut changes, n);
        }
        let checkpoint = changes.checkpoint();
        add(&mut changes, 9_999);
        changes.rollback(checkpoint);
        let addition = &changes.digests[&key];
        assert_eq!(addition.items.len(), DIGEST_ITEMS);
        assert_eq!(addition.total, DIGEST_ITEMS as i64 + 5);
        assert_eq!(
            (addition.items[0].as_str(), addition.opened_at),
            ("0", Millis(0))
        );
        assert_eq!(addition.ends_at(), Millis(60_000));
        changes.rollback(Checkpoint(0));
        assert!(
            changes.is_empty(),
            "undoing the first addition removes the digest"
        );
    }

    #[test]
    fn budgets_count_committed_and_pending_units() {
        let committed = Committed::default();
        let mut changes = StateChanges::default();
        let mut state = effective(&committed, &mut changes);
        assert_eq!(state.budget_used("d", "1.5", MINUTE).unwrap(), 2);
        state.take_budget("d", "1.5", MINUTE).unwrap();
        assert_eq!(state.budget_used("d", "1.5", MINUTE).unwrap(), 3);
        assert_eq!(
            state.budget_used("e", "1.5", MINUTE).unwrap(),
            0,
            "its window has ended"
        );
        state.take_budget("e", "1.5", MINUTE).unwrap();
        assert_eq!(state.budget_used("e", "1.5", MINUTE).unwrap(), 1);
        assert_eq!(
            changes.budgets[&("e".to_owned(), "1.5".to_owned())].new_window,
            Some(Millis(1_000_000))
        );
    }
}
