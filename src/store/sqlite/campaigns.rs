//! [`CampaignView`] on SQLite: range queries on the events' primary key and on the partial
//! index of platform actions (schema migration 5).

use rusqlite::params;

use super::{SqliteStore, database};
use crate::model::Millis;
use crate::store::StoreError;
use crate::store::campaigns::{
    ActionCursor, ActionState, CampaignView, PlatformActionRow, UPGRADE_TYPES, UpgradeRow,
};

impl CampaignView for SqliteStore {
    fn upgrade_events_after(
        &self,
        after_seq: i64,
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
                    .query_map(params![after_seq, a, b, c, d, limit as i64], |row| {
                        Ok(UpgradeRow {
                            seq: row.get(0)?,
                            received_at: Millis(row.get(1)?),
                            notify_type: row.get(2)?,
                            body: row.get(3)?,
                        })
                    })?
                    .collect()
            })
            .map_err(database("reading upgrade notifications"))
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
                    .query_map(params![after.created_at.0, after.id, limit as i64], |row| {
                        Ok(PlatformActionRow {
                            id: row.get(0)?,
                            created_at: Millis(row.get(1)?),
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
