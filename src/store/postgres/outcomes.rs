//! What the script stage writes and reads: the outcome transaction (event status, plugin runs,
//! actions, state changes), and committed script state.
//!
//! Several instances may commit runs that read the same `seen` key, counter or budget at once.
//! The outcome transaction therefore locks every key its batch read or changed (advisory locks
//! on a hash of the key, taken in one order, so that a key not yet stored is locked too), reads
//! their committed values, and lets the shared [`check_reads`] refuse the batch if another
//! claimer changed one since its run read it.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use futures_util::future::try_join_all;
use sha2::{Digest, Sha256};

use super::cached;
use super::{PgStore, Tx, database};
use crate::action::Action;
use crate::model::Millis;
use crate::model::state::{CommittedValue, StateChanges, StateError, StateKey, StateView};
use crate::store::{EventOutcome, OutcomeBatch, StoreError, check_reads};

impl PgStore {
    /// Records a script batch within `transaction`: outcomes, their actions, state changes.
    pub(super) async fn outcomes_in(
        &self,
        transaction: &Tx,
        batch: &OutcomeBatch<'_>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let keys = touched_keys(batch.changes);
        lock_keys(transaction, &keys).await?;
        let committed = Snapshot::read(transaction, &keys).await?;
        check_reads(batch.changes, &committed)?;
        // Pipelined: the statements go out together and their answers come back together.
        let ids: Vec<Vec<String>> = batch
            .outcomes
            .iter()
            .map(|outcome| {
                outcome
                    .actions
                    .iter()
                    .map(|_| self.next_id().to_string())
                    .collect()
            })
            .collect();
        try_join_all(
            batch
                .outcomes
                .iter()
                .map(|outcome| record_event_outcome(transaction, outcome, now)),
        )
        .await?;
        try_join_all(batch.outcomes.iter().zip(&ids).flat_map(|(outcome, ids)| {
            outcome
                .actions
                .iter()
                .zip(ids)
                .map(move |(action, id)| insert_action(transaction, id, outcome, action, now))
        }))
        .await?;
        apply_state_changes(transaction, batch.changes, now).await?;
        super::digests::add_items(transaction, batch.changes).await
    }
}

/// Every key a batch read or changes, each once.
fn touched_keys(changes: &StateChanges) -> Vec<StateKey> {
    let mut keys: Vec<StateKey> = changes.reads.keys().cloned().collect();
    keys.extend(changes.seen.keys().cloned().map(StateKey::Seen));
    keys.extend(changes.counts.keys().cloned().map(StateKey::Counter));
    keys.extend(
        changes
            .budgets
            .keys()
            .map(|(device_id, target_version)| StateKey::Budget {
                device_id: device_id.clone(),
                target_version: target_version.clone(),
            }),
    );
    keys.sort_by_key(lock_id);
    keys.dedup();
    keys
}

/// The advisory lock of a key: the first 8 bytes of a SHA-256 of its kind and name. Two keys
/// that share one only wait for each other.
fn lock_id(key: &StateKey) -> i64 {
    let mut hash = Sha256::new();
    match key {
        StateKey::Seen(key) => hash.update(format!("seen\0{key}")),
        StateKey::Counter(key) => hash.update(format!("count\0{key}")),
        StateKey::Budget {
            device_id,
            target_version,
        } => hash.update(format!("budget\0{device_id}\0{target_version}")),
    }
    let digest = hash.finalize();
    i64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

/// Locks `keys` (sorted by lock id, so two batches never wait for each other in a circle)
/// until the transaction ends.
async fn lock_keys(transaction: &Tx, keys: &[StateKey]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<i64> = keys.iter().map(lock_id).collect();
    ids.dedup();
    // One statement, taking the locks in the array's (sorted) order.
    cached::query_one(
        transaction,
        "SELECT count(pg_advisory_xact_lock(id)) FROM unnest($1::BIGINT[]) AS id",
        &[&ids],
    )
    .await
    .map_err(database("locking script state"))?;
    Ok(())
}

/// Committed values of some keys, read inside the outcome transaction under their locks.
struct Snapshot(HashMap<StateKey, Option<CommittedValue>>);

impl Snapshot {
    async fn read(transaction: &Tx, keys: &[StateKey]) -> Result<Snapshot, StoreError> {
        let values = try_join_all(keys.iter().map(|key| read_key(transaction, key)))
            .await
            .map_err(database("reading script state"))?;
        Ok(Snapshot(keys.iter().cloned().zip(values).collect()))
    }

    fn get(&self, key: StateKey) -> Result<Option<CommittedValue>, StateError> {
        self.0
            .get(&key)
            .copied()
            .ok_or_else(|| StateError("a key the batch did not lock was read".into()))
    }
}

impl StateView for Snapshot {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        Ok(self.get(StateKey::Seen(key.to_owned()))?.map(|(_, at)| at))
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        self.get(StateKey::Counter(key.to_owned()))
    }

    fn budget(
        &self,
        device_id: &str,
        target_version: &str,
    ) -> Result<Option<(i64, Millis)>, StateError> {
        self.get(StateKey::Budget {
            device_id: device_id.to_owned(),
            target_version: target_version.to_owned(),
        })
    }
}

/// One key's committed value, as [`StateKey::read`] gives it.
async fn read_key(
    client: &impl GenericClient,
    key: &StateKey,
) -> Result<Option<CommittedValue>, tokio_postgres::Error> {
    let row = match key {
        StateKey::Seen(key) => {
            cached::query_opt(
                client,
                "SELECT 0::BIGINT, recorded_at FROM seen WHERE key = $1",
                &[key],
            )
            .await?
        }
        StateKey::Counter(key) => {
            cached::query_opt(
                client,
                "SELECT value, window_start FROM counters WHERE key = $1",
                &[key],
            )
            .await?
        }
        StateKey::Budget {
            device_id,
            target_version,
        } => {
            cached::query_opt(
                client,
                "SELECT retries, window_start FROM upgrade_budget
                     WHERE device_id = $1 AND target_version = $2",
                &[device_id, target_version],
            )
            .await?
        }
    };
    Ok(row.map(|row| (row.get(0), Millis(row.get(1)))))
}

/// Records the outcome and the plugin runs; a replay keeps the event's status and appends its
/// runs to the earlier ones. An outcome whose claim no longer holds records nothing.
async fn record_event_outcome(
    transaction: &Tx,
    outcome: &EventOutcome,
    now: Millis,
) -> Result<(), StoreError> {
    let plugins = serde_json::to_string(&outcome.plugins).expect("plugin runs serialise");
    let seq = outcome.event_id.seq();
    let updated = match outcome.replayed_from {
        None => {
            let claim = outcome.claimed_by.as_ref().map(|by| by.as_str());
            cached::execute(
                transaction,
                "UPDATE events SET status = $2, error = $3, handled_at = $4,
                     plugins = $5::TEXT::JSONB, claimed_by = NULL, lease_until = NULL
                     WHERE seq = $1 AND status = 'pending'
                     AND ($6::TEXT IS NULL OR claimed_by = $6)",
                &[
                    &seq,
                    &outcome.status.as_str(),
                    &outcome.error,
                    &now.0,
                    &plugins,
                    &claim,
                ],
            )
            .await
        }
        Some(_) => {
            cached::execute(
                transaction,
                "UPDATE events SET plugins = plugins || $2::TEXT::JSONB WHERE seq = $1",
                &[&seq, &plugins],
            )
            .await
        }
    };
    match updated.map_err(database("recording an event's outcome"))? {
        0 if outcome.replayed_from.is_none() => Err(StoreError::ClaimLost(outcome.event_id)),
        _ => Ok(()),
    }
}

async fn insert_action(
    transaction: &Tx,
    id: &str,
    outcome: &EventOutcome,
    action: &Action,
    now: Millis,
) -> Result<(), StoreError> {
    let payload = serde_json::to_string(action).expect("actions serialise to JSON");
    cached::execute(
        transaction,
        "INSERT INTO actions (id, event_id, plugin, kind, destination, payload, idempotency_key,
             created_at, status, due_at, replayed_from)
             VALUES ($1, $2, $3, $4, $5, $6, $1, $7, 'pending', $7, $8)",
        &[
            &id,
            &outcome.event_id.to_string(),
            &action.plugin,
            &action.kind(),
            &action.destination().to_string(),
            &payload,
            &now.0,
            &outcome.replayed_from.map(|from| from.to_string()),
        ],
    )
    .await
    .map_err(database("queueing an action"))?;
    Ok(())
}

/// Applies counters and budgets as deltas, so concurrent writers cannot lose an update.
async fn apply_state_changes(
    transaction: &Tx,
    changes: &StateChanges,
    now: Millis,
) -> Result<(), StoreError> {
    for (key, record) in &changes.seen {
        cached::execute(
            transaction,
            "INSERT INTO seen (key, recorded_at, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET recorded_at = EXCLUDED.recorded_at,
                 expires_at = EXCLUDED.expires_at",
            &[key, &record.recorded_at.0, &record.expires_at.0],
        )
        .await
        .map_err(database("recording seen keys"))?;
    }
    for (key, count) in &changes.counts {
        let start = count.new_window.unwrap_or(now);
        let expires = start.0.saturating_add(count.window.as_millis() as i64);
        cached::execute(
            transaction,
            "INSERT INTO counters AS c (key, value, window_start, expires_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET
                 value = CASE WHEN $5 OR c.expires_at <= $6 THEN EXCLUDED.value
                              ELSE c.value + EXCLUDED.value END,
                 window_start = CASE WHEN $5 OR c.expires_at <= $6 THEN EXCLUDED.window_start
                                     ELSE c.window_start END,
                 expires_at = CASE WHEN $5 OR c.expires_at <= $6 THEN EXCLUDED.expires_at
                                   ELSE c.expires_at END",
            &[
                key,
                &count.delta,
                &start.0,
                &expires,
                &count.new_window.is_some(),
                &now.0,
            ],
        )
        .await
        .map_err(database("recording counters"))?;
    }
    for ((device_id, version), budget) in &changes.budgets {
        let start = budget.new_window.unwrap_or(now);
        cached::execute(
            transaction,
            "INSERT INTO upgrade_budget AS b (device_id, target_version, retries, window_start)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device_id, target_version) DO UPDATE SET
                 retries = CASE WHEN $5 THEN EXCLUDED.retries ELSE b.retries + EXCLUDED.retries END,
                 window_start = CASE WHEN $5 THEN EXCLUDED.window_start ELSE b.window_start END",
            &[
                device_id,
                version,
                &budget.delta,
                &start.0,
                &budget.new_window.is_some(),
            ],
        )
        .await
        .map_err(database("recording the upgrade budget"))?;
    }
    Ok(())
}

impl StateView for PgStore {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        self.read_state(StateKey::Seen(key.to_owned()))
            .map(|value| value.map(|(_, at)| at))
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        self.read_state(StateKey::Counter(key.to_owned()))
    }

    fn budget(
        &self,
        device_id: &str,
        target_version: &str,
    ) -> Result<Option<(i64, Millis)>, StateError> {
        self.read_state(StateKey::Budget {
            device_id: device_id.to_owned(),
            target_version: target_version.to_owned(),
        })
    }
}

impl PgStore {
    fn read_state(&self, key: StateKey) -> Result<Option<CommittedValue>, StateError> {
        self.with_client(async |client| {
            read_key(&*client, &key)
                .await
                .map_err(database("reading script state"))
        })
        .map_err(|error| StateError(error.to_string()))
    }
}
