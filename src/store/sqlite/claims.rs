//! Claims on events and actions (see [`crate::store::Claimer`]). A claim need not survive a
//! crash: a lost claim only makes its row claimable again. So a claim commits without waiting
//! for the disk, and the next durable commit makes it durable along with everything before it.

use rusqlite::{Transaction, params};

use super::delivery::{PENDING_COLUMNS, pending_row};
use super::queries::{STORED_COLUMNS, StoredRow, stored_row};
use super::{SqliteStore, begin, database, execute_cached};
use crate::destination::Destination;
use crate::model::Millis;
use crate::store::claim::{WINDOW_PER_EVENT, WindowRow, claimable};
use crate::store::{Claimer, PendingAction, StoreError, StoredEvent};

impl SqliteStore {
    pub(super) fn claim_events_for(
        &self,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let lease_until = now.0.saturating_add(self.lease.as_millis() as i64);
        self.claim_write(|transaction| {
            let chosen = choose_events(transaction, by, limit, now)?;
            if chosen.is_empty() {
                return Ok(Vec::new());
            }
            // One statement for the batch each way: per-event statements cost the one writer
            // more than the rows themselves.
            let seqs = serde_json::to_string(&chosen).expect("sequence numbers serialise");
            execute_cached(
                transaction,
                "INSERT INTO event_claims (seq, claimed_by, lease_until)
                 SELECT value, ?2, ?3 FROM json_each(?1) WHERE true
                 ON CONFLICT (seq) DO UPDATE SET claimed_by = excluded.claimed_by,
                 lease_until = excluded.lease_until",
                params![seqs, by.as_str(), lease_until],
            )
            .map_err(database("claiming events"))?;
            let rows = transaction
                .prepare_cached(&format!(
                    "SELECT {STORED_COLUMNS} FROM events
                     WHERE seq IN (SELECT value FROM json_each(?1)) ORDER BY seq"
                ))
                .and_then(|mut statement| {
                    statement
                        .query_map([&seqs], stored_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(database("reading claimed events"))?;
            rows.into_iter().map(StoredRow::into_event).collect()
        })
    }

    pub(super) fn claim_actions_for(
        &self,
        destination: &Destination,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<PendingAction>, StoreError> {
        let lease_until = now.0.saturating_add(self.lease.as_millis() as i64);
        let mut rows = self.claim_write(|transaction| {
            transaction
                .prepare_cached(&format!(
                    "UPDATE actions SET claimed_by = ?1, lease_until = ?2 WHERE id IN (
                        SELECT id FROM actions WHERE status = 'pending' AND destination = ?3
                        AND due_at <= ?4 AND (claimed_by IS NULL OR lease_until <= ?4)
                        ORDER BY due_at LIMIT ?5)
                     RETURNING {PENDING_COLUMNS}, due_at"
                ))
                .and_then(|mut statement| {
                    statement
                        .query_map(
                            params![by.as_str(), lease_until, destination, now.0, limit as i64],
                            |row| Ok((pending_row(row)?, row.get::<_, i64>(9)?)),
                        )?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(database("claiming due actions"))
        })?;
        // RETURNING keeps no order.
        rows.sort_by(|(a, a_due), (b, b_due)| a_due.cmp(b_due).then_with(|| a.id.cmp(&b.id)));
        rows.into_iter().map(|(row, _)| row.into_action()).collect()
    }

    pub(super) fn renew_action_claims_for(
        &self,
        by: &Claimer,
        ids: &[String],
        now: Millis,
    ) -> Result<usize, StoreError> {
        let lease_until = now.0.saturating_add(self.lease.as_millis() as i64);
        self.claim_write(|transaction| {
            ids.iter().try_fold(0, |renewed, id| {
                execute_cached(
                    transaction,
                    "UPDATE actions SET lease_until = ?3
                     WHERE id = ?1 AND claimed_by = ?2 AND status = 'pending'",
                    params![id, by.as_str(), lease_until],
                )
                .map(|changed| renewed + changed)
                .map_err(database("renewing a claim"))
            })
        })
    }

    /// The embedded store serves one instance: when it starts, every claim is a stopped
    /// process's.
    pub(super) fn release_all_claims(&self) -> Result<(), StoreError> {
        let mut writer = self.writer();
        let transaction = begin(&mut writer)?;
        for sql in [
            "DELETE FROM event_claims",
            "UPDATE actions SET claimed_by = NULL, lease_until = NULL
             WHERE status = 'pending' AND claimed_by IS NOT NULL",
        ] {
            transaction
                .execute(sql, [])
                .map_err(database("releasing a stopped server's claims"))?;
        }
        transaction
            .commit()
            .map_err(database("committing the release of claims"))
    }

    /// Runs `claim` in a write transaction that commits without an fsync.
    pub(super) fn claim_write<T>(
        &self,
        claim: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut writer = self.writer();
        // Prepared once per connection: a claim runs several times a second per worker, and
        // each switch would otherwise be parsed again.
        execute_cached(&writer, "PRAGMA synchronous = OFF", [])
            .map_err(database("preparing a claim"))?;
        let claimed = begin(&mut writer).and_then(|transaction| {
            let claimed = claim(&transaction)?;
            transaction
                .commit()
                .map_err(database("committing a claim"))?;
            Ok(claimed)
        });
        // Every other write on this connection must wait for the disk again.
        execute_cached(&writer, "PRAGMA synchronous = FULL", [])
            .map_err(database("restoring synchronous = FULL after a claim"))?;
        claimed
    }
}

/// The events `by` may claim. The oldest `limit` pending events are usually enough; the wider
/// window is read only when other claimers hold some of them.
fn choose_events(
    transaction: &Transaction<'_>,
    by: &Claimer,
    limit: usize,
    now: Millis,
) -> Result<Vec<i64>, StoreError> {
    let window = oldest_pending(transaction, limit)?;
    let chosen = claimable(&window, by.as_str(), now, limit);
    if chosen.len() == limit || window.len() < limit {
        return Ok(chosen);
    }
    let window = oldest_pending(transaction, limit.saturating_mul(WINDOW_PER_EVENT))?;
    Ok(claimable(&window, by.as_str(), now, limit))
}

/// The `rows` oldest pending events with their claims, as a claim weighs them.
fn oldest_pending(
    transaction: &Transaction<'_>,
    rows: usize,
) -> Result<Vec<WindowRow>, StoreError> {
    transaction
        .prepare_cached(
            "SELECT events.seq, events.device_id, event_claims.claimed_by,
             event_claims.lease_until FROM events
             LEFT JOIN event_claims ON event_claims.seq = events.seq
             WHERE events.status = 'pending' ORDER BY events.seq LIMIT ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_map([rows as i64], |row| {
                    Ok(WindowRow {
                        seq: row.get(0)?,
                        device_id: row.get(1)?,
                        claimed_by: row.get(2)?,
                        lease_until: row.get(3)?,
                    })
                })?
                .collect()
        })
        .map_err(database("finding events to claim"))
}
