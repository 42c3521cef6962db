//! Writes of the receiving stage: appending a batch of notifications (with duplicate
//! detection) and rejected bodies, and retention pruning.

use rusqlite::{OptionalExtension, Transaction, params};

use super::dedup::{DedupMemory, hash64};
use std::sync::MutexGuard;

use super::{SqliteStore, begin, database, execute_cached, lock, query_row_cached};
use crate::model::{EventId, Millis};
use crate::store::{Appended, NewEvent, Pruned, RejectedBody, StoreError};

impl SqliteStore {
    /// Appends within `transaction` and returns each event's outcome. The hashes the dedup
    /// memory remembers meanwhile are pushed to `remembered`, for the caller to forget if the
    /// transaction does not commit.
    pub(super) fn append_in(
        &self,
        transaction: &Transaction<'_>,
        events: &[NewEvent],
        rejected: &[RejectedBody],
        remembered: &mut Vec<i64>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut outcomes = Vec::with_capacity(events.len());
        if !events.is_empty() {
            let mut loaded = self.dedup_memory(transaction)?;
            let memory = loaded.as_mut().expect("dedup_memory loads the memory");
            let mut numbers = EventNumbers::start(transaction)?;
            for event in events {
                let hash = hash64(&event.hash);
                let outcome = match first_copy(transaction, memory, hash, event)? {
                    Some(id) => Appended::Duplicate(id),
                    None => {
                        let seq = numbers.take();
                        let id = EventId::from_parts(event.received_at, seq);
                        insert_event(transaction, seq, id, hash, event)?;
                        memory.remember(hash, seq, event.received_at);
                        remembered.push(hash);
                        Appended::Accepted(id)
                    }
                };
                outcomes.push(outcome);
            }
            numbers.finish(transaction)?;
        }
        if !rejected.is_empty() {
            self.keep_rejected(transaction, rejected)?;
        }
        Ok(outcomes)
    }

    /// Forgets hashes remembered by a transaction that did not commit.
    pub(super) fn forget_hashes(&self, remembered: &[i64]) {
        if let Some(memory) = lock(&self.dedup).as_mut() {
            memory.forget(remembered);
        }
    }

    /// The dedup memory, loaded from the store on first use.
    fn dedup_memory(
        &self,
        connection: &rusqlite::Connection,
    ) -> Result<MutexGuard<'_, Option<DedupMemory>>, StoreError> {
        let mut memory = lock(&self.dedup);
        if memory.is_none() {
            *memory = Some(load_memory(
                connection,
                self.dedup_window,
                self.dedup_capacity,
            )?);
        }
        Ok(memory)
    }

    /// Inserts rejected bodies and drops the oldest beyond `rejected_max_count`.
    fn keep_rejected(
        &self,
        transaction: &Transaction<'_>,
        rejected: &[RejectedBody],
    ) -> Result<(), StoreError> {
        let mut statement = transaction
            .prepare_cached(
                "INSERT INTO rejected (received_at, path, remote_addr, reason, content_type, body,
                 body_len) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(database("keeping a rejected body"))?;
        for body in rejected {
            statement
                .execute(params![
                    body.received_at.0,
                    body.path,
                    body.remote_addr,
                    body.reason,
                    body.content_type,
                    body.body,
                    body.body_len as i64,
                ])
                .map_err(database("keeping a rejected body"))?;
        }
        let keep = i64::try_from(self.rejected_max_count).unwrap_or(i64::MAX);
        transaction
            .execute(
                "DELETE FROM rejected WHERE seq <= (SELECT max(seq) FROM rejected) - ?1",
                [keep],
            )
            .map_err(database("bounding rejected bodies"))?;
        Ok(())
    }

    /// Deletes up to `limit` finished events received before `before` whose actions are all
    /// settled (with those actions and plugin runs), expired script state, and old rejected
    /// bodies.
    pub(super) fn prune_before(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        let mut writer = self.writer();
        let transaction = begin(&mut writer)?;
        let ids: Vec<(i64, String)> = {
            let mut statement = transaction
                .prepare_cached(
                    "SELECT seq, id FROM events WHERE received_at < ?1 AND status != 'pending'
                     AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.event_id = events.id
                                     AND a.status IN ('pending', 'dead'))
                     LIMIT ?2",
                )
                .map_err(database("finding prunable events"))?;
            let rows = statement
                .query_map(params![before.0, limit as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .map_err(database("finding prunable events"))?;
            rows.collect::<Result<_, _>>()
                .map_err(database("finding prunable events"))?
        };
        for (seq, id) in &ids {
            transaction
                .execute(
                    "DELETE FROM action_attempts WHERE action_id IN
                     (SELECT id FROM actions WHERE event_id = ?1)",
                    [id],
                )
                .and_then(|_| transaction.execute("DELETE FROM actions WHERE event_id = ?1", [id]))
                .and_then(|_| transaction.execute("DELETE FROM events WHERE seq = ?1", [seq]))
                .map_err(database("pruning an event"))?;
        }
        let now = Millis::now().0;
        for expired in [
            "DELETE FROM seen WHERE expires_at <= ?1",
            "DELETE FROM counters WHERE expires_at <= ?1",
        ] {
            transaction
                .execute(expired, [now])
                .map_err(database("pruning expired script state"))?;
        }
        let rejected = transaction
            .execute(
                "DELETE FROM rejected WHERE seq IN
                 (SELECT seq FROM rejected WHERE received_at < ?1 LIMIT ?2)",
                params![before.0, limit as i64],
            )
            .map_err(database("pruning rejected bodies"))?;
        transaction
            .commit()
            .map_err(database("committing a prune"))?;
        Ok(Pruned {
            events: ids.len(),
            rejected,
        })
    }
}

/// The numbers (seqs) of new events, taken from the store's counter inside the write
/// transaction, so no other writer (a CLI command in another process) takes them meanwhile;
/// the counter only goes up, so a number is never given twice.
pub(super) struct EventNumbers {
    next: i64,
}

impl EventNumbers {
    pub(super) fn start(transaction: &Transaction<'_>) -> Result<EventNumbers, StoreError> {
        let next = query_row_cached(transaction, "SELECT next FROM event_numbers", [], |row| {
            row.get(0)
        })
        .map_err(database("numbering events"))?;
        Ok(EventNumbers { next })
    }

    pub(super) fn take(&mut self) -> i64 {
        self.next += 1;
        self.next - 1
    }

    /// Stores where the numbering goes on.
    pub(super) fn finish(self, transaction: &Transaction<'_>) -> Result<(), StoreError> {
        execute_cached(
            transaction,
            "UPDATE event_numbers SET next = ?1",
            [self.next],
        )
        .map_err(database("numbering events"))?;
        Ok(())
    }
}

/// Loads the hashes stored within the window, oldest first.
fn load_memory(
    connection: &rusqlite::Connection,
    window: std::time::Duration,
    capacity: usize,
) -> Result<DedupMemory, StoreError> {
    let mut memory = DedupMemory::new(window, capacity);
    let window_start = Millis::now().minus(window);
    let mut statement = connection
        .prepare(
            "SELECT seq, received_at, hash64 FROM events WHERE received_at > ?1
             ORDER BY received_at, seq",
        )
        .map_err(database("loading recent hashes"))?;
    let rows = statement
        .query_map([window_start.0], |row| {
            Ok((row.get(0)?, Millis(row.get(1)?), row.get(2)?))
        })
        .map_err(database("loading recent hashes"))?;
    for row in rows {
        let (seq, received_at, hash): (i64, Millis, i64) =
            row.map_err(database("loading recent hashes"))?;
        memory.remember(hash, seq, received_at);
    }
    Ok(memory)
}

/// The id of the copy of `event` stored within the dedup window, if any. Duplicates are never
/// stored, so the newest stored copy is the first copy of the current window. Memory answers
/// most lookups with a candidate that the store confirms.
fn first_copy(
    transaction: &Transaction<'_>,
    memory: &mut DedupMemory,
    hash: i64,
    event: &NewEvent,
) -> Result<Option<EventId>, StoreError> {
    let recall = memory.recall(hash, event.received_at);
    if let Some(seq) = recall.candidate {
        let confirmed = candidate_copy(transaction, seq, recall.window_start, hash, event)?;
        if confirmed.is_some() {
            return Ok(confirmed);
        }
    }
    match recall.forgotten {
        Some(stretch) => stored_copy(transaction, stretch, hash, event),
        None => Ok(None),
    }
}

/// The event stored as `seq`, if it is a copy of `event` received after `window_start`: one
/// lookup by the table's key, so that a re-pushed notification costs no more than a new one.
fn candidate_copy(
    transaction: &Transaction<'_>,
    seq: i64,
    window_start: Millis,
    hash: i64,
    event: &NewEvent,
) -> Result<Option<EventId>, StoreError> {
    let received_at: Option<i64> = transaction
        .prepare_cached(
            "SELECT received_at FROM events
             WHERE seq = ?1 AND received_at > ?2 AND hash64 = ?3 AND body_hash = ?4",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![seq, window_start.0, hash, &event.hash[..]], |row| {
                    row.get(0)
                })
                .optional()
        })
        .map_err(database("confirming a duplicate"))?;
    Ok(received_at.map(|at| EventId::from_parts(Millis(at), seq)))
}

/// The newest copy of `event` received in (from, until], found through the (time, hash) index.
fn stored_copy(
    transaction: &Transaction<'_>,
    (from, until): (Millis, Millis),
    hash: i64,
    event: &NewEvent,
) -> Result<Option<EventId>, StoreError> {
    let found: Option<(i64, i64)> = transaction
        .prepare_cached(
            "SELECT seq, received_at FROM events
             WHERE received_at > ?1 AND received_at <= ?2 AND hash64 = ?3 AND body_hash = ?4
             ORDER BY received_at DESC LIMIT 1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![from.0, until.0, hash, &event.hash[..]], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .map_err(database("looking for duplicates"))?;
    Ok(found.map(|(seq, received_at)| EventId::from_parts(Millis(received_at), seq)))
}

fn insert_event(
    transaction: &Transaction<'_>,
    seq: i64,
    id: EventId,
    hash: i64,
    event: &NewEvent,
) -> Result<(), StoreError> {
    let warnings =
        serde_json::to_string(&event.warnings).expect("problems serialise to a JSON array");
    transaction
        .prepare_cached(
            "INSERT INTO events (seq, id, received_at, path, remote_addr, notify_type, device_id,
             body, body_hash, hash64, warnings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                seq,
                id.to_string(),
                event.received_at.0,
                event.path,
                event.remote_addr,
                event.notify_type,
                event.device_id,
                event.body,
                &event.hash[..],
                hash,
                warnings,
            ])
        })
        .map_err(database("storing an event"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::store::Store;

    fn store(dir: &Path, capacity: usize) -> SqliteStore {
        let text = format!("[store]\npath = \"{}\"\n", dir.join("s.db").display());
        let config = Config::parse(&text, Path::new("t.toml"), Vec::new()).unwrap();
        let mut store = SqliteStore::open(&config.store).unwrap();
        store.dedup_capacity = capacity;
        store
    }

    fn event(device: &str) -> NewEvent {
        let body = format!(r#"{{"notifyType":"deviceAdded","deviceId":"{device}"}}"#);
        let parsed = crate::notification::parse(body.as_bytes()).unwrap();
        NewEvent {
            received_at: Millis::now(),
            path: "/p".into(),
            remote_addr: None,
            notify_type: parsed.notify_type,
            device_id: parsed.device_id,
            body: body.into_bytes(),
            hash: parsed.hash,
            warnings: Vec::new(),
        }
    }

    fn accepted(appended: Appended) -> EventId {
        match appended {
            Appended::Accepted(id) => id,
            Appended::Duplicate(id) => panic!("{id} should have been new"),
        }
    }

    #[test]
    fn duplicates_are_found_past_the_memory_bound_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let small = store(dir.path(), 2);
        let batch = [event("a"), event("b"), event("c")];
        let ids: Vec<EventId> = small
            .append(&batch, &[])
            .unwrap()
            .into_iter()
            .map(accepted)
            .collect();
        // "a" was forgotten for lack of room: the store answers for it.
        let again = small
            .append(&[event("a"), event("c"), event("d")], &[])
            .unwrap();
        assert_eq!(again[0], Appended::Duplicate(ids[0]));
        assert_eq!(again[1], Appended::Duplicate(ids[2]));
        assert!(matches!(again[2], Appended::Accepted(_)));
        drop(small);
        let restarted = store(dir.path(), 100);
        let after = restarted.append(&[event("b")], &[]).unwrap();
        assert_eq!(after[0], Appended::Duplicate(ids[1]));
    }

    #[test]
    fn bodies_whose_hashes_share_a_fingerprint_are_each_their_own_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 100);
        // Bytes 4..8 of the hash are the memory's fingerprint; give two bodies the same ones.
        let with_fingerprint = |device| {
            let mut event = event(device);
            event.hash[4..8].copy_from_slice(&[9, 9, 9, 9]);
            event
        };
        let ids: Vec<EventId> = store
            .append(&[with_fingerprint("a"), with_fingerprint("b")], &[])
            .unwrap()
            .into_iter()
            .map(accepted)
            .collect();
        let again = store
            .append(
                &[
                    with_fingerprint("b"),
                    with_fingerprint("a"),
                    with_fingerprint("c"),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(again[0], Appended::Duplicate(ids[1]));
        assert_eq!(again[1], Appended::Duplicate(ids[0]));
        assert!(matches!(again[2], Appended::Accepted(_)));
    }

    #[test]
    fn a_failing_part_of_a_write_group_fails_alone() {
        use crate::model::EventStatus;
        use crate::model::state::StateChanges;
        use crate::store::{EventOutcome, OutcomeBatch, WriteGroup};

        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let first = accepted(store.append(&[event("first")], &[]).unwrap().remove(0));
        // Recording an outcome updates its event; make that fail on the writer connection.
        store
            .writer()
            .execute_batch(
                "CREATE TEMP TRIGGER no_outcomes BEFORE UPDATE ON events
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        let outcome = EventOutcome {
            event_id: first,
            status: EventStatus::Handled,
            error: None,
            plugins: Vec::new(),
            actions: Vec::new(),
            replayed_from: None,
            claimed_by: None,
        };
        let changes = StateChanges::default();
        let written = store.write_group(&WriteGroup {
            events: &[event("second")],
            outcomes: &[OutcomeBatch {
                outcomes: &[outcome],
                changes: &changes,
            }],
            ..WriteGroup::empty(Millis::now())
        });

        let second = accepted(written.appended.unwrap().remove(0));
        assert!(written.outcomes[0].is_err());
        assert!(
            store.event(second).unwrap().is_some(),
            "the append committed"
        );
        let first = store.event(first).unwrap().unwrap();
        assert_eq!(first.summary.status, EventStatus::Pending.as_str());
    }

    #[test]
    fn pruning_removes_old_finished_events_only() {
        use crate::model::EventStatus;
        use crate::model::state::StateChanges;
        use crate::store::{EventFilter, EventOutcome};

        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let long_ago = Millis::now().minus(std::time::Duration::from_secs(40 * 86_400));
        let old = |device| NewEvent {
            received_at: long_ago,
            ..event(device)
        };
        let ids: Vec<EventId> = store
            .append(&[old("handled"), old("pending"), event("recent")], &[])
            .unwrap()
            .into_iter()
            .map(accepted)
            .collect();
        let handled = |id| EventOutcome {
            event_id: id,
            status: EventStatus::Handled,
            error: None,
            plugins: Vec::new(),
            actions: Vec::new(),
            replayed_from: None,
            claimed_by: None,
        };
        let outcomes = [handled(ids[0]), handled(ids[2])];
        store
            .record_outcomes(&outcomes, &StateChanges::default(), Millis::now())
            .unwrap();

        let cutoff = Millis::now().minus(std::time::Duration::from_secs(30 * 86_400));
        let pruned = store.prune(cutoff, 100).unwrap();
        assert_eq!(pruned.events, 1);
        let left: Vec<String> = store
            .list_events(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .filter_map(|event| event.device_id)
            .collect();
        assert_eq!(
            left,
            ["recent", "pending"],
            "the old pending event is never pruned"
        );
    }

    #[test]
    fn ids_follow_arrival_and_find_their_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let ids: Vec<EventId> = store
            .append(&[event("x"), event("y")], &[])
            .unwrap()
            .into_iter()
            .map(accepted)
            .collect();
        assert!(ids[0] < ids[1]);
        assert_eq!(ids[1].seq(), ids[0].seq() + 1);
        let found = store.event(ids[1]).unwrap().unwrap();
        assert_eq!(found.summary.device_id.as_deref(), Some("y"));
        let forged = EventId::from_parts(Millis(1), ids[1].seq());
        assert!(
            store.event(forged).unwrap().is_none(),
            "the time part must match too"
        );
    }
}
