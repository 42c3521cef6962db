//! Writes of the receiving stage: appending a batch of notifications (with duplicate
//! detection) and rejected bodies, and retention pruning.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};

use super::{SqliteStore, begin, database};
use crate::model::{EventId, Millis};
use crate::store::{Appended, NewEvent, Pruned, RejectedBody, StoreError};

impl SqliteStore {
    pub(super) fn append_batch(
        &self,
        events: &[NewEvent],
        rejected: &[RejectedBody],
    ) -> Result<Vec<Appended>, StoreError> {
        let mut writer = self.writer();
        let transaction = begin(&mut writer)?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut in_batch: HashMap<[u8; 32], EventId> = HashMap::new();
        for event in events {
            let first = match in_batch.get(&event.hash) {
                Some(id) => Some(*id),
                None => self.first_copy(&transaction, event)?,
            };
            let outcome = match first {
                Some(id) => Appended::Duplicate(id),
                None => {
                    let id = EventId(self.next_id());
                    insert_event(&transaction, id, event)?;
                    in_batch.insert(event.hash, id);
                    Appended::Accepted(id)
                }
            };
            outcomes.push(outcome);
        }
        if !rejected.is_empty() {
            self.keep_rejected(&transaction, rejected)?;
        }
        transaction.commit().map_err(database("committing"))?;
        Ok(outcomes)
    }

    /// The id of the copy of `event` stored within the dedup window, if any. Duplicates are
    /// never stored, so the newest stored copy is the first copy of the current window.
    fn first_copy(
        &self,
        transaction: &Transaction<'_>,
        event: &NewEvent,
    ) -> Result<Option<EventId>, StoreError> {
        let window_start = event.received_at.minus(self.dedup_window);
        let mut statement = transaction
            .prepare_cached(
                "SELECT id FROM events WHERE body_hash = ?1 AND received_at > ?2
                 ORDER BY received_at DESC LIMIT 1",
            )
            .map_err(database("looking for duplicates"))?;
        let id: Option<String> = statement
            .query_row(params![&event.hash[..], window_start.0], |row| row.get(0))
            .optional()
            .map_err(database("looking for duplicates"))?;
        id.map(|id| id.parse().map_err(StoreError::Damaged))
            .transpose()
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
        let ids: Vec<String> = {
            let mut statement = transaction
                .prepare_cached(
                    "SELECT id FROM events WHERE received_at < ?1 AND status != 'pending'
                     AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.event_id = events.id
                                     AND a.status IN ('pending', 'in_flight', 'dead'))
                     LIMIT ?2",
                )
                .map_err(database("finding prunable events"))?;
            let rows = statement
                .query_map(params![before.0, limit as i64], |row| row.get(0))
                .map_err(database("finding prunable events"))?;
            rows.collect::<Result<_, _>>()
                .map_err(database("finding prunable events"))?
        };
        for id in &ids {
            for table in [
                "DELETE FROM actions WHERE event_id = ?1",
                "DELETE FROM plugin_runs WHERE event_id = ?1",
                "DELETE FROM events WHERE id = ?1",
            ] {
                transaction
                    .execute(table, [id])
                    .map_err(database("pruning an event"))?;
            }
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

fn insert_event(
    transaction: &Transaction<'_>,
    id: EventId,
    event: &NewEvent,
) -> Result<(), StoreError> {
    let warnings =
        serde_json::to_string(&event.warnings).expect("problems serialise to a JSON array");
    transaction
        .prepare_cached(
            "INSERT INTO events (id, received_at, path, remote_addr, notify_type, device_id, body,
             body_hash, warnings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                id.to_string(),
                event.received_at.0,
                event.path,
                event.remote_addr,
                event.notify_type,
                event.device_id,
                event.body,
                &event.hash[..],
                warnings,
            ])
        })
        .map_err(database("storing an event"))?;
    Ok(())
}
