//! [`CampaignView`] on PostgreSQL: range queries on the events' key and on the partial index of
//! platform actions.

use super::cached;
use super::{PgStore, database};
use crate::model::Millis;
use crate::store::StoreError;
use crate::store::campaigns::{
    ActionCursor, ActionState, CampaignView, PlatformActionRow, UPGRADE_TYPES, UpgradeRow,
};

impl CampaignView for PgStore {
    fn upgrade_events_after(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<UpgradeRow>, StoreError> {
        let types = UPGRADE_TYPES.to_vec();
        self.with_client(async |client| {
            Ok(cached::query(
                &*client,
                "SELECT seq, received_at, notify_type, body FROM events
                     WHERE seq > $1 AND notify_type = ANY($2) ORDER BY seq LIMIT $3",
                &[&after_seq, &types, &(limit as i64)],
            )
            .await
            .map_err(database("reading upgrade notifications"))?
            .iter()
            .map(|row| UpgradeRow {
                seq: row.get(0),
                received_at: Millis(row.get(1)),
                notify_type: row.get(2),
                body: row.get(3),
            })
            .collect())
        })
    }

    fn platform_actions_after(
        &self,
        after: &ActionCursor,
        limit: usize,
    ) -> Result<Vec<PlatformActionRow>, StoreError> {
        self.with_client(async |client| {
            Ok(cached::query(
                &*client,
                "SELECT id, created_at, payload FROM actions
                     WHERE kind = 'platform' AND (created_at, id) > ($1, $2)
                     ORDER BY created_at, id LIMIT $3",
                &[&after.created_at.0, &after.id, &(limit as i64)],
            )
            .await
            .map_err(database("reading platform actions"))?
            .iter()
            .map(|row| PlatformActionRow {
                id: row.get(0),
                created_at: Millis(row.get(1)),
                payload: row.get(2),
            })
            .collect())
        })
    }

    fn action_states(&self, ids: &[String]) -> Result<Vec<ActionState>, StoreError> {
        self.with_client(async |client| {
            cached::query(
                &*client,
                "SELECT id, status, result FROM actions WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(database("reading action states"))?
            .iter()
            .map(|row| {
                Ok(ActionState {
                    id: row.get(0),
                    status: row.get::<_, &str>(1).parse().map_err(StoreError::Damaged)?,
                    result: row.get(2),
                })
            })
            .collect()
        })
    }
}
