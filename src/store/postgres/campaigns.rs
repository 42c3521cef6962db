//! [`CampaignView`] on PostgreSQL. Sequence numbers are taken before the insert and
//! transactions of several instances (and of one instance's script workers) commit in any
//! order, so a row with a lower number can become visible after a reader passed it. Each row
//! therefore records its writing transaction (`tx`, schema migration 4), and a catch-up reads
//! only rows whose transaction is older than every transaction still running, in (`tx`, key)
//! order, on partial indexes of that order: nothing can commit behind such a cursor. A long
//! transaction on the database holds such rows back (counts are late, never wrong).

use tokio_postgres::Row;

use super::cached;
use super::{PgStore, database};
use crate::model::Millis;
use crate::store::StoreError;
use crate::store::campaigns::{
    ActionCursor, ActionState, CampaignView, EventCursor, PlatformActionRow, UpgradeRow,
};

/// [`crate::store::campaigns::UPGRADE_TYPES`] as the predicate of the index `events_upgrades`,
/// written out so that the planner can match the queries to the index.
macro_rules! upgrade_types {
    () => {
        "notify_type IN ('swUpgradeStateChangeNotify', 'swUpgradeResultNotify', \
         'fwUpgradeStateChangeNotify', 'fwUpgradeResultNotify')"
    };
}

/// Rows whose writing transaction ended before every transaction still running began.
macro_rules! settled {
    () => {
        "tx < pg_snapshot_xmin(pg_current_snapshot())"
    };
}

/// The columns [`upgrade_row`] reads.
macro_rules! upgrade_columns {
    () => {
        "seq, tx::TEXT::BIGINT AS position, received_at, notify_type, body"
    };
}

fn upgrade_row(row: &Row) -> UpgradeRow {
    let seq = row.get(0);
    UpgradeRow {
        seq,
        position: EventCursor {
            tx: row.get(1),
            seq,
        },
        received_at: Millis(row.get(2)),
        notify_type: row.get(3),
        body: row.get(4),
    }
}

impl CampaignView for PgStore {
    fn upgrade_events_after(
        &self,
        after: &EventCursor,
        limit: usize,
    ) -> Result<Vec<UpgradeRow>, StoreError> {
        self.with_client(async |client| {
            Ok(cached::query(
                &*client,
                concat!(
                    "SELECT ",
                    upgrade_columns!(),
                    " FROM events WHERE ",
                    upgrade_types!(),
                    " AND (tx, seq) > ($1::BIGINT::TEXT::xid8, $2) AND ",
                    settled!(),
                    " ORDER BY tx, seq LIMIT $3"
                ),
                &[&after.tx, &after.seq, &(limit as i64)],
            )
            .await
            .map_err(database("reading upgrade notifications"))?
            .iter()
            .map(upgrade_row)
            .collect())
        })
    }

    fn upgrade_event_position(&self, seq: i64) -> Result<Option<EventCursor>, StoreError> {
        self.with_client(async |client| {
            Ok(cached::query_opt(
                &*client,
                concat!(
                    "SELECT tx::TEXT::BIGINT FROM events WHERE seq = $1 AND ",
                    upgrade_types!()
                ),
                &[&seq],
            )
            .await
            .map_err(database("reading an upgrade notification's place"))?
            .map(|row| EventCursor {
                tx: row.get(0),
                seq,
            }))
        })
    }

    fn upgrade_event(&self, seq: i64) -> Result<Option<UpgradeRow>, StoreError> {
        self.with_client(async |client| {
            Ok(cached::query_opt(
                &*client,
                concat!(
                    "SELECT ",
                    upgrade_columns!(),
                    " FROM events WHERE seq = $1 AND ",
                    upgrade_types!()
                ),
                &[&seq],
            )
            .await
            .map_err(database("reading an upgrade notification"))?
            .as_ref()
            .map(upgrade_row))
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
                concat!(
                    "SELECT id, tx::TEXT::BIGINT AS position, created_at, payload FROM actions
                     WHERE kind = 'platform' AND (tx, id) > ($1::BIGINT::TEXT::xid8, $2) AND ",
                    settled!(),
                    " ORDER BY tx, id LIMIT $3"
                ),
                &[&after.order, &after.id, &(limit as i64)],
            )
            .await
            .map_err(database("reading platform actions"))?
            .iter()
            .map(|row| {
                let id: String = row.get(0);
                PlatformActionRow {
                    position: ActionCursor {
                        order: row.get(1),
                        id: id.clone(),
                    },
                    id,
                    created_at: Millis(row.get(2)),
                    payload: row.get(3),
                }
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

#[cfg(test)]
mod tests {
    use crate::store::campaigns::UPGRADE_TYPES;

    #[test]
    fn the_queries_name_every_upgrade_type_as_the_index_does() {
        let listed = UPGRADE_TYPES.map(|kind| format!("'{kind}'")).join(", ");
        assert_eq!(upgrade_types!(), format!("notify_type IN ({listed})"));
        let index = concat!("ON events (tx, seq) WHERE ", upgrade_types!(), ";");
        assert!(
            super::super::schema::MIGRATIONS[3].contains(index),
            "migration 4 creates events_upgrades with another predicate"
        );
    }
}
