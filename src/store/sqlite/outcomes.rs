//! What the script stage reads and writes: pending events, committed script state, and the
//! outcome transaction (event status, plugin runs, actions, state changes) that must be atomic.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{SqliteStore, database};
use crate::action::Action;
use crate::model::Millis;
use crate::model::state::{StateChanges, StateError, StateView};
use crate::store::{EventOutcome, OutcomeBatch, StoreError, check_reads};

impl SqliteStore {
    /// Records a script batch within `transaction`: outcomes, their actions, state changes.
    pub(super) fn outcomes_in(
        &self,
        transaction: &Transaction<'_>,
        batch: &OutcomeBatch<'_>,
        now: Millis,
    ) -> Result<(), StoreError> {
        check_reads(batch.changes, &InTransaction(transaction))?;
        for outcome in batch.outcomes {
            record_event_outcome(transaction, outcome, now)?;
            for action in &outcome.actions {
                insert_action(transaction, self.next_id(), outcome, action, now)?;
            }
        }
        apply_state_changes(transaction, batch.changes, now)?;
        super::digests::add_items(transaction, batch.changes)
    }
}

/// Records the outcome and the plugin runs in one update; a replay keeps the event's status
/// and appends its runs to the earlier ones.
fn record_event_outcome(
    transaction: &Transaction<'_>,
    outcome: &EventOutcome,
    now: Millis,
) -> Result<(), StoreError> {
    let plugins = serde_json::to_string(&outcome.plugins).expect("plugin runs serialise");
    let seq = outcome.event_id.seq();
    let updated = match outcome.replayed_from {
        // Only while the event is pending and its claim (if it was run under one) holds.
        None => release_claim(transaction, seq, outcome).and_then(|held| match held {
            false => Ok(0),
            true => transaction
                .prepare_cached(
                    "UPDATE events SET status = ?2, error = ?3, handled_at = ?4, plugins = ?5
                     WHERE seq = ?1 AND status = 'pending'",
                )
                .and_then(|mut statement| {
                    statement.execute(params![seq, outcome.status.as_str(), outcome.error, now.0, plugins])
                }),
        }),
        Some(_) => transaction
            .prepare_cached(
                "UPDATE events SET plugins = (SELECT json_group_array(json(value)) FROM
                 (SELECT value FROM json_each(events.plugins) UNION ALL SELECT value FROM json_each(?2)))
                 WHERE seq = ?1",
            )
            .and_then(|mut statement| statement.execute(params![seq, plugins])),
    };
    match updated.map_err(database("recording an event's outcome"))? {
        0 if outcome.replayed_from.is_none() => Err(StoreError::ClaimLost(outcome.event_id)),
        _ => Ok(()),
    }
}

/// Ends the event's claim; false if the outcome was run under a claim that no longer holds.
fn release_claim(
    transaction: &Transaction<'_>,
    seq: i64,
    outcome: &EventOutcome,
) -> rusqlite::Result<bool> {
    let claim = outcome.claimed_by.as_ref().map(|by| by.as_str());
    let released = transaction
        .prepare_cached(
            "DELETE FROM event_claims WHERE seq = ?1 AND (?2 IS NULL OR claimed_by = ?2)",
        )?
        .execute(params![seq, claim])?;
    Ok(released == 1 || claim.is_none())
}

fn insert_action(
    transaction: &Transaction<'_>,
    id: ulid::Ulid,
    outcome: &EventOutcome,
    action: &Action,
    now: Millis,
) -> Result<(), StoreError> {
    let id = id.to_string();
    let payload = serde_json::to_string(action).expect("actions serialise to JSON");
    transaction
        .prepare_cached(
            "INSERT INTO actions (id, event_id, plugin, kind, destination, payload, idempotency_key,
             created_at, status, due_at, replayed_from)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?1, ?7, 'pending', ?7, ?8)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                id,
                outcome.event_id.to_string(),
                action.plugin,
                action.kind(),
                action.destination(),
                payload,
                now.0,
                outcome.replayed_from.map(|from| from.to_string()),
            ])
        })
        .map_err(database("queueing an action"))?;
    Ok(())
}

/// Applies counters and budgets as deltas, so concurrent writers cannot lose an update.
fn apply_state_changes(
    transaction: &Transaction<'_>,
    changes: &StateChanges,
    now: Millis,
) -> Result<(), StoreError> {
    for (key, record) in &changes.seen {
        transaction
            .prepare_cached(
                "INSERT INTO seen (key, recorded_at, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET recorded_at = excluded.recorded_at,
                 expires_at = excluded.expires_at",
            )
            .and_then(|mut statement| {
                statement.execute(params![key, record.recorded_at.0, record.expires_at.0])
            })
            .map_err(database("recording seen keys"))?;
    }
    for (key, count) in &changes.counts {
        let start = count.new_window.unwrap_or(now);
        let expires = start.0.saturating_add(count.window.as_millis() as i64);
        transaction
            .prepare_cached(
                "INSERT INTO counters (key, value, window_start, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET
                 value = CASE WHEN ?5 OR counters.expires_at <= ?6 THEN excluded.value
                              ELSE counters.value + excluded.value END,
                 window_start = CASE WHEN ?5 OR counters.expires_at <= ?6 THEN excluded.window_start
                                     ELSE counters.window_start END,
                 expires_at = CASE WHEN ?5 OR counters.expires_at <= ?6 THEN excluded.expires_at
                                   ELSE counters.expires_at END",
            )
            .and_then(|mut statement| {
                statement.execute(params![key, count.delta, start.0, expires, count.new_window.is_some(), now.0])
            })
            .map_err(database("recording counters"))?;
    }
    for ((device_id, version), budget) in &changes.budgets {
        transaction
            .prepare_cached(
                "INSERT INTO upgrade_budget (device_id, target_version, retries, window_start)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device_id, target_version) DO UPDATE SET
                 retries = CASE WHEN ?5 THEN excluded.retries ELSE upgrade_budget.retries + excluded.retries END,
                 window_start = CASE WHEN ?5 THEN excluded.window_start ELSE upgrade_budget.window_start END",
            )
            .and_then(|mut statement| {
                let start = budget.new_window.unwrap_or(now);
                statement.execute(params![device_id, version, budget.delta, start.0, budget.new_window.is_some()])
            })
            .map_err(database("recording the upgrade budget"))?;
    }
    Ok(())
}

fn state_error(error: rusqlite::Error) -> StateError {
    StateError(error.to_string())
}

impl StateView for SqliteStore {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        seen_at(&self.reader(), key)
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        counter(&self.reader(), key)
    }

    fn budget(
        &self,
        device_id: &str,
        target_version: &str,
    ) -> Result<Option<(i64, Millis)>, StateError> {
        budget(&self.reader(), device_id, target_version)
    }
}

/// Committed state as a write transaction sees it, for the commit's check of a batch's reads.
struct InTransaction<'a>(&'a Transaction<'a>);

impl StateView for InTransaction<'_> {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        seen_at(self.0, key)
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        counter(self.0, key)
    }

    fn budget(
        &self,
        device_id: &str,
        target_version: &str,
    ) -> Result<Option<(i64, Millis)>, StateError> {
        budget(self.0, device_id, target_version)
    }
}

fn seen_at(connection: &Connection, key: &str) -> Result<Option<Millis>, StateError> {
    connection
        .prepare_cached("SELECT recorded_at FROM seen WHERE key = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([key], |row| Ok(Millis(row.get(0)?)))
                .optional()
        })
        .map_err(state_error)
}

fn counter(connection: &Connection, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
    connection
        .prepare_cached("SELECT value, window_start FROM counters WHERE key = ?1")
        .and_then(|mut statement| {
            statement
                .query_row([key], |row| Ok((row.get(0)?, Millis(row.get(1)?))))
                .optional()
        })
        .map_err(state_error)
}

fn budget(
    connection: &Connection,
    device_id: &str,
    target_version: &str,
) -> Result<Option<(i64, Millis)>, StateError> {
    connection
        .prepare_cached(
            "SELECT retries, window_start FROM upgrade_budget WHERE device_id = ?1 AND target_version = ?2",
        )
        .and_then(|mut statement| {
            statement
                .query_row([device_id, target_version], |row| {
                    Ok((row.get(0)?, Millis(row.get(1)?)))
                })
                .optional()
        })
        .map_err(state_error)
}
