//! Delivery's reads and writes: due actions per destination, attempt records, dead letters and
//! the `actionFailed` events they raise.

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::dedup::hash64;
use super::intake::EventNumbers;
use super::{SqliteStore, begin, database, execute_cached, query_row_cached};
use crate::action::Action;
use crate::destination::Destination;
use crate::model::{EventId, Millis};
use crate::store::rules::{self, InternalEvent};
use crate::store::{
    ActionClaim, ActionStatus, Attempt, Claimer, DeadLetter, DeliveryUpdate, PendingAction,
    StoreError,
};

impl SqliteStore {
    pub(super) fn read_due_destinations(
        &self,
        now: Millis,
    ) -> Result<Vec<Destination>, StoreError> {
        let reader = self.reader();
        reader
            .prepare_cached(
                "SELECT DISTINCT destination FROM actions WHERE status = 'pending' AND due_at <= ?1",
            )
            .and_then(|mut statement| statement.query_map([now.0], |row| row.get(0))?.collect())
            .map_err(database("finding due destinations"))
    }

    /// Answered from the partial index on pending actions' due times.
    pub(super) fn read_next_due(&self) -> Result<Option<Millis>, StoreError> {
        query_row_cached(
            &self.reader(),
            "SELECT min(due_at) FROM actions WHERE status = 'pending'",
            [],
            |row| Ok(row.get::<_, Option<i64>>(0)?.map(Millis)),
        )
        .map_err(database("reading the next due action"))
    }

    pub(super) fn read_oldest_pending(&self) -> Result<Option<Millis>, StoreError> {
        query_row_cached(
            &self.reader(),
            "SELECT min(created_at) FROM actions WHERE status = 'pending'",
            [],
            |row| Ok(row.get::<_, Option<i64>>(0)?.map(Millis)),
        )
        .map_err(database("reading the oldest pending action"))
    }

    /// Records delivery results within `transaction`; returns how many `actionFailed` events
    /// they raised.
    pub(super) fn deliveries_in(
        &self,
        transaction: &Transaction<'_>,
        updates: &[DeliveryUpdate],
        now: Millis,
    ) -> Result<usize, StoreError> {
        let mut raised = 0;
        for update in updates {
            match update {
                DeliveryUpdate::Sent {
                    claim,
                    attempt,
                    result,
                } => {
                    let updated = execute_cached(
                        transaction,
                        "UPDATE actions SET status = 'sent', attempts = ?2, sent_at = ?3, result = ?4,
                         last_error = NULL, claimed_by = NULL, lease_until = NULL
                         WHERE id = ?1 AND claimed_by = ?5",
                        params![claim.id, attempt.number, attempt.at.0, result, claim.by.as_str()],
                    )
                    .map_err(database("recording a sent action"))?;
                    record_attempt_if_held(transaction, claim, updated, attempt)?;
                }
                DeliveryUpdate::Retry {
                    claim,
                    attempt,
                    due_at,
                } => {
                    let updated = execute_cached(
                        transaction,
                        "UPDATE actions SET attempts = ?2, due_at = ?3, last_error = ?4,
                         claimed_by = NULL, lease_until = NULL WHERE id = ?1 AND claimed_by = ?5",
                        params![
                            claim.id,
                            attempt.number,
                            due_at.0,
                            attempt.error,
                            claim.by.as_str()
                        ],
                    )
                    .map_err(database("scheduling a retry"))?;
                    record_attempt_if_held(transaction, claim, updated, attempt)?;
                }
                DeliveryUpdate::Dead { claim, attempt } => {
                    if finish(transaction, claim, ActionStatus::Dead, attempt)? {
                        raised +=
                            usize::from(self.after_death(transaction, &claim.id, attempt, now)?);
                    }
                }
                DeliveryUpdate::Skipped { claim, attempt } => {
                    finish(transaction, claim, ActionStatus::Skipped, attempt)?;
                }
                DeliveryUpdate::InFlight { claim, at } => {
                    execute_cached(
                        transaction,
                        "UPDATE actions SET in_flight_at = ?2 WHERE id = ?1 AND claimed_by = ?3",
                        params![claim.id, at.0, claim.by.as_str()],
                    )
                    .map_err(database("marking an action in flight"))?;
                }
            }
        }
        Ok(raised)
    }

    /// Applies [`rules`] to a dead action: its budget unit back, and its `actionFailed` event.
    /// Returns whether an event was raised.
    fn after_death(
        &self,
        transaction: &Transaction<'_>,
        id: &str,
        attempt: &Attempt,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let found: Option<(String, String)> = transaction
            .query_row(
                "SELECT event_id, payload FROM actions WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(database("reading a dead action"))?;
        let Some((event_id, payload)) = found else {
            return Ok(false);
        };
        let event_id: EventId = event_id.parse().map_err(StoreError::Damaged)?;
        // By `seq`, the events' key: there is no index on the id.
        let source: Option<String> = transaction
            .query_row(
                "SELECT source FROM events WHERE seq = ?1",
                [event_id.seq()],
                |row| row.get(0),
            )
            .optional()
            .map_err(database("reading a dead action's event"))?;
        let action: Action = serde_json::from_str(&payload).map_err(|e| {
            StoreError::Damaged(format!("action {id} has an unreadable payload: {e}"))
        })?;
        if let Some((device_id, target_version)) = rules::budget_taken(&action) {
            give_budget_back(transaction, device_id, target_version)?;
        }
        let dead = rules::DeadAction {
            id,
            event_id,
            action: &action,
            // No event (pruned by hand?) tells nothing of its source: raise nothing.
            event_source: source.as_deref().unwrap_or("internal"),
        };
        let Some(raised) = rules::action_failed(&dead, attempt, now) else {
            return Ok(false);
        };
        insert_internal(transaction, &raised)?;
        Ok(true)
    }

    pub(super) fn read_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let reader = self.reader();
        reader
            .prepare_cached(
                "SELECT id, event_id, kind, destination, attempts, last_error, created_at FROM actions
                 WHERE status = 'dead' ORDER BY created_at, id",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        Ok(DeadLetter {
                            id: row.get(0)?,
                            event_id: row.get(1)?,
                            kind: row.get(2)?,
                            destination: row.get(3)?,
                            attempts: row.get(4)?,
                            last_error: row.get(5)?,
                            created_at: Millis(row.get(6)?).to_rfc3339(),
                        })
                    })?
                    .collect()
            })
            .map_err(database("listing dead letters"))
    }

    pub(super) fn write_requeue(&self, id: Option<&str>) -> Result<usize, StoreError> {
        let mut writer = self.writer();
        let transaction = begin(&mut writer)?;
        // A dead platform task gave its budget unit back; queued again, it takes it again.
        let payloads: Vec<String> = transaction
            .prepare(
                "SELECT payload FROM actions WHERE status = 'dead' AND (?1 IS NULL OR id = ?1)",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(params![id], |row| row.get(0))?
                    .collect()
            })
            .map_err(database("reading the dead letters to re-queue"))?;
        for payload in payloads {
            let action: Action = serde_json::from_str(&payload).map_err(|e| {
                StoreError::Damaged(format!("a dead letter has an unreadable payload: {e}"))
            })?;
            if let Some((device_id, target_version)) = rules::budget_taken(&action) {
                transaction
                    .execute(
                        "UPDATE upgrade_budget SET retries = retries + 1
                         WHERE device_id = ?1 AND target_version = ?2",
                        [device_id, target_version],
                    )
                    .map_err(database(
                        "taking the upgrade budget back for a re-queued task",
                    ))?;
            }
        }
        let requeued = transaction
            .execute(
                "UPDATE actions SET status = 'pending', attempts = 0, due_at = ?2
                 WHERE status = 'dead' AND (?1 IS NULL OR id = ?1)",
                params![id, Millis::now().0],
            )
            .map_err(database("re-queueing dead letters"))?;
        transaction
            .commit()
            .map_err(database("committing a re-queue"))?;
        Ok(requeued)
    }

    pub(super) fn write_drop(&self, id: &str) -> Result<bool, StoreError> {
        let mut writer = self.writer();
        let transaction = begin(&mut writer)?;
        let dropped = transaction
            .execute(
                "UPDATE actions SET status = 'dropped' WHERE status = 'dead' AND id = ?1",
                [id],
            )
            .map_err(database("dropping a dead letter"))?;
        transaction
            .commit()
            .map_err(database("committing a drop"))?;
        Ok(dropped == 1)
    }
}

/// Ends an action without sending it: `dead` or `skipped`, with the attempt's error. False
/// when the claim no longer holds (nothing is recorded then).
fn finish(
    transaction: &Transaction<'_>,
    claim: &ActionClaim,
    status: ActionStatus,
    attempt: &Attempt,
) -> Result<bool, StoreError> {
    let updated = execute_cached(
        transaction,
        "UPDATE actions SET status = ?2, attempts = ?3, last_error = ?4, claimed_by = NULL,
         lease_until = NULL WHERE id = ?1 AND claimed_by = ?5",
        params![
            claim.id,
            status,
            attempt.number,
            attempt.error,
            claim.by.as_str()
        ],
    )
    .map_err(database("ending an action"))?;
    record_attempt_if_held(transaction, claim, updated, attempt)?;
    Ok(updated == 1)
}

/// Records `attempt` if the update before it found the claim (`updated` rows); a claimer
/// whose lease ended and whose action another claimer took records nothing.
fn record_attempt_if_held(
    transaction: &Transaction<'_>,
    claim: &ActionClaim,
    updated: usize,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    if updated == 0 {
        tracing::warn!(action_id = %claim.id, claimer = %claim.by, "a delivery result came after its claim ended; another claimer has the action");
        return Ok(());
    }
    insert_attempt(transaction, &claim.id, attempt)
}

/// A dead platform task was never created, so its retry does not count against the device's
/// budget (never below zero, should the window have restarted meanwhile).
fn give_budget_back(
    transaction: &Transaction<'_>,
    device_id: &str,
    target_version: &str,
) -> Result<(), StoreError> {
    execute_cached(
        transaction,
        "UPDATE upgrade_budget SET retries = max(retries - 1, 0)
         WHERE device_id = ?1 AND target_version = ?2",
        [device_id, target_version],
    )
    .map_err(database("giving a retry back to the upgrade budget"))?;
    Ok(())
}

/// Stores an event the store raised itself.
pub(super) fn insert_internal(
    transaction: &Transaction<'_>,
    event: &InternalEvent,
) -> Result<(), StoreError> {
    let mut numbers = EventNumbers::start(transaction)?;
    let seq = numbers.take();
    numbers.finish(transaction)?;
    transaction
        .execute(
            "INSERT INTO events (seq, id, received_at, path, remote_addr, notify_type, device_id,
             body, body_hash, hash64, warnings, source)
             VALUES (?1, ?2, ?3, '', NULL, ?4, NULL, ?5, ?6, ?7, '[]', 'internal')",
            params![
                seq,
                EventId::from_parts(event.received_at, seq).to_string(),
                event.received_at.0,
                event.notify_type,
                event.body,
                &event.hash[..],
                hash64(&event.hash)
            ],
        )
        .map_err(database("raising an internal event"))?;
    Ok(())
}

/// The columns [`pending_row`] reads, in its order.
pub(super) const PENDING_COLUMNS: &str = "id, event_id, destination, payload, idempotency_key,
    created_at, attempts, in_flight_at, claimed_by";

/// A claimed action as read, before its payload is parsed.
pub(super) struct PendingRow {
    pub(super) id: String,
    event_id: String,
    destination: Destination,
    payload: String,
    idempotency_key: String,
    created_at: i64,
    attempts: u32,
    in_flight_at: Option<i64>,
    claimed_by: String,
}

pub(super) fn pending_row(row: &Row<'_>) -> rusqlite::Result<PendingRow> {
    Ok(PendingRow {
        id: row.get(0)?,
        event_id: row.get(1)?,
        destination: row.get(2)?,
        payload: row.get(3)?,
        idempotency_key: row.get(4)?,
        created_at: row.get(5)?,
        attempts: row.get(6)?,
        in_flight_at: row.get(7)?,
        claimed_by: row.get(8)?,
    })
}

impl PendingRow {
    pub(super) fn into_action(self) -> Result<PendingAction, StoreError> {
        let action: Action = serde_json::from_str(&self.payload).map_err(|e| {
            StoreError::Damaged(format!("action {} has an unreadable payload: {e}", self.id))
        })?;
        Ok(PendingAction {
            id: self.id,
            claimed_by: Claimer::named(&self.claimed_by),
            event_id: self.event_id,
            destination: self.destination,
            action,
            idempotency_key: self.idempotency_key,
            created_at: Millis(self.created_at),
            attempts: self.attempts,
            in_flight_since: self.in_flight_at.map(Millis),
        })
    }
}

fn insert_attempt(
    transaction: &Transaction<'_>,
    id: &str,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "INSERT INTO action_attempts (action_id, attempt, at, duration_ms, outcome, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                id,
                attempt.number,
                attempt.at.0,
                attempt.duration_ms as i64,
                attempt.outcome.as_str(),
                attempt.error
            ])
        })
        .map_err(database("recording an attempt"))?;
    Ok(())
}

/// The attempts of one action, oldest first.
pub(super) fn attempts_of(
    connection: &rusqlite::Connection,
    id: &str,
) -> Result<Vec<Attempt>, StoreError> {
    connection
        .prepare_cached(
            "SELECT attempt, at, duration_ms, outcome, error FROM action_attempts WHERE action_id = ?1
             ORDER BY attempt, at",
        )
        .and_then(|mut statement| {
            statement
                .query_map([id], |row| {
                    Ok(Attempt {
                        number: row.get(0)?,
                        at: Millis(row.get(1)?),
                        duration_ms: row.get::<_, i64>(2)? as u64,
                        outcome: row.get::<_, String>(3)?.parse().map_err(|e: String| {
                            rusqlite::Error::FromSqlConversionFailure(
                                3,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })?,
                        error: row.get(4)?,
                    })
                })?
                .collect()
        })
        .map_err(database("reading attempts"))
}
