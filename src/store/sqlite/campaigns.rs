//! [`CampaignView`] on SQLite: range queries on the events' primary key and on the partial
//! index of platform actions (schema migration 5). Its one writer commits in the order it
//! numbers and stamps rows, so cursors are arrival numbers and queue times alone.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, database};
use crate::model::Millis;
use crate::store::StoreError;
use crate::store::campaigns::{
    ActionCursor, ActionState, CampaignView, EventCursor, PlatformActionRow, UPGRADE_TYPES,
    UpgradeRow,
};

/// Reads `seq, received_at, notify_type, body`. One writer commits in arrival order, so arrival alone orders the catch-up.
fn upgrade_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UpgradeRow> {
    let seq = row.get(0)?;
    Ok(UpgradeRow {
        seq,
        position: EventCursor { tx: 0, seq },
        received_at: Millis(row.get(1)?),
        notify_type: row.get(2)?,
        body: row.get(3)?,
    })
}

impl CampaignView for SqliteStore {
    fn upgrade_events_after(
        &self,
        after: &EventCursor,
        limit: usize,
    ) -> Result<Vec<UpgradeRow>, StoreError> {
        let reader = self.reader();
        let [a, b, c, d] = UPGRADE_TYPES;
        reader
            .prepare_cached(
                "SELECT seq, received_at, notify_type, body FROM events
                 WHERE seq > ?1 AND notify_type IN (?2, ?3, ?4, ?5) ORDER BY seq LIMIT ?6",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(params![after.seq, a, b, c, d, limit as i64], upgrade_row)?
                    .collect()
            })
            .map_err(database("reading upgrade notifications"))
    }

    fn upgrade_event_position(&self, seq: i64) -> Result<Option<EventCursor>, StoreError> {
        Ok(Some(EventCursor { tx: 0, seq }))
    }

    fn upgrade_event(&self, seq: i64) -> Result<Option<UpgradeRow>, StoreError> {
        let reader = self.reader();
        let [a, b, c, d] = UPGRADE_TYPES;
        reader
            .prepare_cached(
                "SELECT seq, received_at, notify_type, body FROM events
                 WHERE seq = ?1 AND notify_type IN (?2, ?3, ?4, ?5)",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![seq, a, b, c, d], upgrade_row)
                    .optional()
            })
            .map_err(database("reading an upgrade notification"))
    }

    fn platform_actions_after(
        &self,
        after: &ActionCursor,
        limit: usize,
    ) -> Result<Vec<PlatformActionRow>, StoreError> {
        let reader = self.reader();
        reader
            .prepare_cached(
                "SELECT id, created_at, payload FROM actions
                 WHERE kind = 'platform' AND (created_at, id) > (?1, ?2)
                 ORDER BY created_at, id LIMIT ?3",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(params![after.order, after.id, limit as i64], |row| {
                        let (id, created_at): (String, i64) = (row.get(0)?, row.get(1)?);
                        Ok(PlatformActionRow {
                            position: ActionCursor {
                                order: created_at,
                                id: id.clone(),
                            },
                            id,
                            created_at: Millis(created_at),
                            payload: row.get(2)?,
                        })
                    })?
                    .collect()
            })
            .map_err(database("reading platform actions"))
    }

    fn action_states(&self, ids: &[String]) -> Result<Vec<ActionState>, StoreError> {
        let reader = self.reader();
        let mut statement = reader
            .prepare_cached("SELECT id, status, result FROM actions WHERE id = ?1")
            .map_err(database("reading action states"))?;
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            let mut rows = statement
                .query_map([id], |row| {
                    Ok(ActionState {
                        id: row.get(0)?,
                        status: row.get(1)?,
                        result: row.get(2)?,
                    })
                })
                .map_err(database("reading action states"))?;
            if let Some(state) = rows.next() {
                states.push(state.map_err(database("reading action states"))?);
            }
        }
        Ok(states)
    }
}
