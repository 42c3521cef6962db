//! Claims on events and actions (see [`crate::store::Claimer`]), with `FOR UPDATE SKIP
//! LOCKED`: claimers never wait for each other's rows, they take others. A claim commits
//! without waiting for the disk: a lost claim only makes its rows claimable again.

use super::cached;
use super::delivery::{PENDING_COLUMNS, pending_action};
use super::queries::{STORED_COLUMNS, stored_event};
use super::{Durability, PgStore, database};
use crate::destination::Destination;
use crate::model::Millis;
use crate::store::claim::{WINDOW_PER_EVENT, WindowRow, claimable};
use crate::store::{Claimer, PendingAction, StoreError, StoredEvent};

/// Marks a row that another claimer is locking right now: held, as far as this claim knows.
const LOCKED_ELSEWHERE: &str = "";

impl PgStore {
    /// Weighs the oldest pending events as the SQLite store does, then locks the chosen ones,
    /// skipping those another claimer is locking at this moment, and weighs them again with
    /// their latest claims: an event whose device's earlier event was skipped is left, so
    /// that each device's events run in order whoever runs them.
    pub(super) fn claim_events_for(
        &self,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let lease_until = self.lease_from(now);
        let rows = limit.saturating_mul(WINDOW_PER_EVENT) as i64;
        self.in_transaction(Durability::Claim, async |transaction| {
            let window = window_rows(
                cached::query(
                    transaction,
                    "SELECT seq, device_id, claimed_by, lease_until FROM events
                         WHERE status = 'pending' ORDER BY seq LIMIT $1",
                    &[&rows],
                )
                .await
                .map_err(database("finding events to claim"))?,
            );
            let chosen = claimable(&window, by.as_str(), now, limit);
            if chosen.is_empty() {
                return Ok(Vec::new());
            }
            let locked = window_rows(
                cached::query(
                    transaction,
                    "SELECT seq, device_id, claimed_by, lease_until FROM events
                         WHERE seq = ANY($1) AND status = 'pending' ORDER BY seq
                         FOR UPDATE SKIP LOCKED",
                    &[&chosen],
                )
                .await
                .map_err(database("locking events to claim"))?,
            );
            let latest: Vec<WindowRow> = window
                .into_iter()
                .filter(|row| chosen.contains(&row.seq))
                .map(|row| match locked.iter().find(|held| held.seq == row.seq) {
                    Some(held) => held.clone(),
                    None => WindowRow {
                        claimed_by: Some(LOCKED_ELSEWHERE.to_owned()),
                        lease_until: Some(i64::MAX),
                        ..row
                    },
                })
                .collect();
            let taken = claimable(&latest, by.as_str(), now, limit);
            if taken.is_empty() {
                return Ok(Vec::new());
            }
            let mut claimed = cached::query(
                transaction,
                &format!(
                    "UPDATE events SET claimed_by = $1, lease_until = $2 WHERE seq = ANY($3)
                         RETURNING {STORED_COLUMNS}"
                ),
                &[&by.as_str(), &lease_until, &taken],
            )
            .await
            .map_err(database("claiming events"))?
            .iter()
            .map(stored_event)
            .collect::<Result<Vec<_>, _>>()?;
            claimed.sort_by_key(|event| event.seq);
            Ok(claimed)
        })
    }

    pub(super) fn claim_actions_for(
        &self,
        destination: &Destination,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<PendingAction>, StoreError> {
        let lease_until = self.lease_from(now);
        let destination = destination.to_string();
        let limit = limit as i64;
        self.in_transaction(Durability::Claim, async |transaction| {
            let mut rows = cached::query(
                transaction,
                &format!(
                    "UPDATE actions SET claimed_by = $1, lease_until = $2 WHERE id IN (
                            SELECT id FROM actions WHERE status = 'pending' AND destination = $3
                            AND due_at <= $4 AND (claimed_by IS NULL OR lease_until <= $4)
                            ORDER BY due_at LIMIT $5 FOR UPDATE SKIP LOCKED)
                         RETURNING {PENDING_COLUMNS}, due_at"
                ),
                &[&by.as_str(), &lease_until, &destination, &now.0, &limit],
            )
            .await
            .map_err(database("claiming due actions"))?;
            // RETURNING keeps no order.
            rows.sort_by_key(|row| (row.get::<_, i64>("due_at"), row.get::<_, String>("id")));
            rows.iter().map(pending_action).collect()
        })
    }

    pub(super) fn renew_action_claims_for(
        &self,
        by: &Claimer,
        ids: &[String],
        now: Millis,
    ) -> Result<usize, StoreError> {
        let lease_until = self.lease_from(now);
        self.in_transaction(Durability::Claim, async |transaction| {
            let renewed = cached::execute(
                transaction,
                "UPDATE actions SET lease_until = $3
                     WHERE id = ANY($1) AND claimed_by = $2 AND status = 'pending'",
                &[&ids, &by.as_str(), &lease_until],
            )
            .await
            .map_err(database("renewing claims"))?;
            Ok(renewed as usize)
        })
    }
}

fn window_rows(rows: Vec<tokio_postgres::Row>) -> Vec<WindowRow> {
    rows.iter()
        .map(|row| WindowRow {
            seq: row.get(0),
            device_id: row.get(1),
            claimed_by: row.get(2),
            lease_until: row.get(3),
        })
        .collect()
}
