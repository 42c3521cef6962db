//! Delivery's reads and writes: due actions per destination, attempt records, dead letters and
//! the `actionFailed` events they raise (by the shared [`rules`]).

use tokio_postgres::Row;

use super::cached;
use super::intake::insert_internal;
use super::{Durability, PgStore, Tx, database, received_at_of};
use crate::action::Action;
use crate::destination::Destination;
use crate::model::{EventId, Millis};
use crate::store::rules;
use crate::store::{
    ActionClaim, ActionStatus, Attempt, Claimer, DeadLetter, DeliveryUpdate, PendingAction,
    StoreError,
};

/// The columns [`pending_action`] reads.
pub(super) const PENDING_COLUMNS: &str = "id, event_id, destination, payload, idempotency_key,
    created_at, attempts, in_flight_at, claimed_by";

impl PgStore {
    pub(super) fn read_due_destinations(
        &self,
        now: Millis,
    ) -> Result<Vec<Destination>, StoreError> {
        self.with_client(async |client| {
            cached::query(
                &*client,
                "SELECT DISTINCT destination FROM actions
                     WHERE status = 'pending' AND due_at <= $1",
                &[&now.0],
            )
            .await
            .map_err(database("finding due destinations"))?
            .iter()
            .map(|row| parse_destination(row.get(0)))
            .collect()
        })
    }

    pub(super) fn read_next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.read_min("SELECT min(due_at) FROM actions WHERE status = 'pending'")
    }

    pub(super) fn read_oldest_pending(&self) -> Result<Option<Millis>, StoreError> {
        self.read_min("SELECT min(created_at) FROM actions WHERE status = 'pending'")
    }

    fn read_min(&self, sql: &'static str) -> Result<Option<Millis>, StoreError> {
        self.with_client(async |client| {
            let row = cached::query_one(&*client, sql, &[])
                .await
                .map_err(database("reading pending actions' times"))?;
            Ok(row.get::<_, Option<i64>>(0).map(Millis))
        })
    }

    /// Records delivery results within `transaction`; returns how many `actionFailed` events
    /// they raised.
    pub(super) async fn deliveries_in(
        &self,
        transaction: &Tx,
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
                    let updated = cached::execute(
                        transaction,
                        "UPDATE actions SET status = 'sent', attempts = $2, sent_at = $3,
                             result = $4, last_error = NULL, claimed_by = NULL, lease_until = NULL
                             WHERE id = $1 AND claimed_by = $5",
                        &[
                            &claim.id,
                            &(attempt.number as i32),
                            &attempt.at.0,
                            result,
                            &claim.by.as_str(),
                        ],
                    )
                    .await
                    .map_err(database("recording a sent action"))?;
                    record_attempt_if_held(transaction, claim, updated, attempt).await?;
                }
                DeliveryUpdate::Retry {
                    claim,
                    attempt,
                    due_at,
                } => {
                    let updated = cached::execute(
                        transaction,
                        "UPDATE actions SET attempts = $2, due_at = $3, last_error = $4,
                             claimed_by = NULL, lease_until = NULL
                             WHERE id = $1 AND claimed_by = $5",
                        &[
                            &claim.id,
                            &(attempt.number as i32),
                            &due_at.0,
                            &attempt.error,
                            &claim.by.as_str(),
                        ],
                    )
                    .await
                    .map_err(database("scheduling a retry"))?;
                    record_attempt_if_held(transaction, claim, updated, attempt).await?;
                }
                DeliveryUpdate::Dead { claim, attempt } => {
                    if finish(transaction, claim, ActionStatus::Dead, attempt).await?
                        && after_death(transaction, &claim.id, attempt, now).await?
                    {
                        raised += 1;
                    }
                }
                DeliveryUpdate::Skipped { claim, attempt } => {
                    finish(transaction, claim, ActionStatus::Skipped, attempt).await?;
                }
                DeliveryUpdate::InFlight { claim, at } => {
                    cached::execute(
                        transaction,
                        "UPDATE actions SET in_flight_at = $2 WHERE id = $1 AND claimed_by = $3",
                        &[&claim.id, &at.0, &claim.by.as_str()],
                    )
                    .await
                    .map_err(database("marking an action in flight"))?;
                }
            }
        }
        Ok(raised)
    }

    pub(super) fn read_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_client(async |client| {
            cached::query(
                &*client,
                "SELECT id, event_id, kind, destination, attempts, last_error, created_at
                     FROM actions WHERE status = 'dead' ORDER BY created_at, id",
                &[],
            )
            .await
            .map_err(database("listing dead letters"))?
            .iter()
            .map(|row| {
                Ok(DeadLetter {
                    id: row.get(0),
                    event_id: row.get(1),
                    kind: row.get(2),
                    destination: parse_destination(row.get(3))?,
                    attempts: row.get::<_, i32>(4) as u32,
                    last_error: row.get(5),
                    created_at: Millis(row.get(6)).to_rfc3339(),
                })
            })
            .collect()
        })
    }

    pub(super) fn write_requeue(&self, id: Option<&str>) -> Result<usize, StoreError> {
        self.in_transaction(Durability::Durable, async |transaction| {
            // A dead platform task gave its budget unit back; queued again, it takes it again.
            let payloads = cached::query(
                transaction,
                "SELECT payload FROM actions WHERE status = 'dead'
                     AND ($1::TEXT IS NULL OR id = $1) FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(database("reading the dead letters to re-queue"))?;
            for row in payloads {
                let action = parse_action("a dead letter", row.get(0))?;
                if let Some((device_id, target_version)) = rules::budget_taken(&action) {
                    cached::execute(
                        transaction,
                        "UPDATE upgrade_budget SET retries = retries + 1
                             WHERE device_id = $1 AND target_version = $2",
                        &[&device_id, &target_version],
                    )
                    .await
                    .map_err(database(
                        "taking the upgrade budget back for a re-queued task",
                    ))?;
                }
            }
            let requeued = cached::execute(
                transaction,
                "UPDATE actions SET status = 'pending', attempts = 0, due_at = $2,
                     claimed_by = NULL, lease_until = NULL
                     WHERE status = 'dead' AND ($1::TEXT IS NULL OR id = $1)",
                &[&id, &Millis::now().0],
            )
            .await
            .map_err(database("re-queueing dead letters"))?;
            if requeued > 0 {
                super::notify::notify(transaction, super::notify::ACTIONS).await?;
            }
            Ok(requeued as usize)
        })
    }

    pub(super) fn write_drop(&self, id: &str) -> Result<bool, StoreError> {
        self.in_transaction(Durability::Durable, async |transaction| {
            let dropped = cached::execute(
                transaction,
                "UPDATE actions SET status = 'dropped' WHERE status = 'dead' AND id = $1",
                &[&id],
            )
            .await
            .map_err(database("dropping a dead letter"))?;
            Ok(dropped == 1)
        })
    }
}

/// Ends an action without sending it: `dead` or `skipped`, with the attempt's error. False
/// when the claim no longer holds (nothing is recorded then).
async fn finish(
    transaction: &Tx,
    claim: &ActionClaim,
    status: ActionStatus,
    attempt: &Attempt,
) -> Result<bool, StoreError> {
    let updated = cached::execute(
        transaction,
        "UPDATE actions SET status = $2, attempts = $3, last_error = $4, claimed_by = NULL,
             lease_until = NULL WHERE id = $1 AND claimed_by = $5",
        &[
            &claim.id,
            &status.as_str(),
            &(attempt.number as i32),
            &attempt.error,
            &claim.by.as_str(),
        ],
    )
    .await
    .map_err(database("ending an action"))?;
    record_attempt_if_held(transaction, claim, updated, attempt).await?;
    Ok(updated == 1)
}

/// Applies the [`rules`] to a dead action: its budget unit back, and its `actionFailed`
/// event. Returns whether an event was raised.
async fn after_death(
    transaction: &Tx,
    id: &str,
    attempt: &Attempt,
    now: Millis,
) -> Result<bool, StoreError> {
    let Some(row) = cached::query_opt(
        transaction,
        "SELECT event_id, payload FROM actions WHERE id = $1",
        &[&id],
    )
    .await
    .map_err(database("reading a dead action"))?
    else {
        return Ok(false);
    };
    let event_id: EventId = row
        .get::<_, String>(0)
        .parse()
        .map_err(StoreError::Damaged)?;
    let action = parse_action("a dead action", row.get(1))?;
    let source: Option<String> = cached::query_opt(
        transaction,
        "SELECT source FROM events WHERE seq = $1 AND received_at = $2",
        &[&event_id.seq(), &received_at_of(event_id)],
    )
    .await
    .map_err(database("reading a dead action's event"))?
    .map(|row| row.get(0));
    if let Some((device_id, target_version)) = rules::budget_taken(&action) {
        cached::execute(
            transaction,
            "UPDATE upgrade_budget SET retries = greatest(retries - 1, 0)
                 WHERE device_id = $1 AND target_version = $2",
            &[&device_id, &target_version],
        )
        .await
        .map_err(database("giving a retry back to the upgrade budget"))?;
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
    insert_internal(transaction, &raised).await?;
    Ok(true)
}

/// Records `attempt` if the update before it found the claim; a claimer whose lease ended and
/// whose action another claimer took records nothing.
async fn record_attempt_if_held(
    transaction: &Tx,
    claim: &ActionClaim,
    updated: u64,
    attempt: &Attempt,
) -> Result<(), StoreError> {
    if updated == 0 {
        tracing::warn!(action_id = %claim.id, claimer = %claim.by, "a delivery result came after its claim ended; another claimer has the action");
        return Ok(());
    }
    cached::execute(
        transaction,
        "INSERT INTO action_attempts (action_id, attempt, at, duration_ms, outcome, error)
             VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &claim.id,
            &(attempt.number as i32),
            &attempt.at.0,
            &(attempt.duration_ms as i64),
            &attempt.outcome.as_str(),
            &attempt.error,
        ],
    )
    .await
    .map_err(database("recording an attempt"))?;
    Ok(())
}

/// A claimed action, from the columns of [`PENDING_COLUMNS`].
pub(super) fn pending_action(row: &Row) -> Result<PendingAction, StoreError> {
    let id: String = row.get("id");
    let action = parse_action(&format!("action {id}"), row.get("payload"))?;
    Ok(PendingAction {
        claimed_by: Claimer::named(row.get("claimed_by")),
        event_id: row.get("event_id"),
        destination: parse_destination(row.get("destination"))?,
        action,
        idempotency_key: row.get("idempotency_key"),
        created_at: Millis(row.get("created_at")),
        attempts: row.get::<_, i32>("attempts") as u32,
        in_flight_since: row.get::<_, Option<i64>>("in_flight_at").map(Millis),
        id,
    })
}

pub(super) fn parse_destination(text: &str) -> Result<Destination, StoreError> {
    text.parse().map_err(StoreError::Damaged)
}

pub(super) fn parse_action(what: &str, payload: &str) -> Result<Action, StoreError> {
    serde_json::from_str(payload)
        .map_err(|e| StoreError::Damaged(format!("{what} has an unreadable payload: {e}")))
}

/// The attempts of one action, oldest first.
pub(super) async fn attempts_of(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<Vec<Attempt>, StoreError> {
    cached::query(
        client,
        "SELECT attempt, at, duration_ms, outcome, error FROM action_attempts
             WHERE action_id = $1 ORDER BY attempt, at",
        &[&id],
    )
    .await
    .map_err(database("reading attempts"))?
    .iter()
    .map(|row| {
        Ok(Attempt {
            number: row.get::<_, i32>(0) as u32,
            at: Millis(row.get(1)),
            duration_ms: row.get::<_, i64>(2) as u64,
            outcome: row.get::<_, &str>(3).parse().map_err(StoreError::Damaged)?,
            error: row.get(4),
        })
    })
    .collect()
}
