//! Digests: items added with a batch's outcomes, and the firing of those whose window ended.

use rusqlite::{Transaction, params};

use super::delivery::insert_internal;
use super::{SqliteStore, begin, database, execute_cached, query_row_cached};
use crate::model::Millis;
use crate::model::state::{DIGEST_ITEMS, DigestKey, StateChanges};
use crate::store::StoreError;
use crate::store::rules::{self, EndedDigest};

/// Adds a batch's digest items to the open digests, opening those that are not. The total is
/// added as a delta, so that batches of other claimers adding to the same digest lose none.
pub(super) fn add_items(
    transaction: &Transaction<'_>,
    changes: &StateChanges,
) -> Result<(), StoreError> {
    for (key, addition) in &changes.digests {
        let total: i64 = query_row_cached(
            transaction,
            "INSERT INTO digests (plugin, key, opened_at, ends_at, total) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (plugin, key) DO UPDATE SET total = digests.total + excluded.total
             RETURNING total",
            params![
                key.plugin,
                key.key,
                addition.opened_at.0,
                addition.ends_at().0,
                addition.total
            ],
            |row| row.get(0),
        )
        .map_err(database("adding to a digest"))?;
        let before = total - addition.total;
        let room = (DIGEST_ITEMS as i64 - before).max(0) as usize;
        for (offset, item) in addition.items.iter().take(room).enumerate() {
            execute_cached(
                transaction,
                "INSERT INTO digest_items (plugin, key, position, item) VALUES (?1, ?2, ?3, ?4)",
                params![key.plugin, key.key, before + offset as i64, item],
            )
            .map_err(database("adding a digest item"))?;
        }
    }
    Ok(())
}

impl SqliteStore {
    pub(super) fn fire_digests(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        let mut writer = self.writer();
        let transaction = begin(&mut writer)?;
        let ended = ended_digests(&transaction, now, limit)?;
        for digest in &ended {
            insert_internal(&transaction, &rules::digest_event(digest, now)?)?;
            for sql in [
                "DELETE FROM digest_items WHERE plugin = ?1 AND key = ?2",
                "DELETE FROM digests WHERE plugin = ?1 AND key = ?2",
            ] {
                execute_cached(
                    &transaction,
                    sql,
                    params![digest.key.plugin, digest.key.key],
                )
                .map_err(database("deleting a fired digest"))?;
            }
        }
        transaction
            .commit()
            .map_err(database("committing fired digests"))?;
        Ok(ended.len())
    }

    pub(super) fn read_next_digest_end(&self) -> Result<Option<Millis>, StoreError> {
        query_row_cached(
            &self.reader(),
            "SELECT min(ends_at) FROM digests",
            [],
            |row| row.get::<_, Option<i64>>(0),
        )
        .map(|end| end.map(Millis))
        .map_err(database("reading when the next digest ends"))
    }
}

fn ended_digests(
    transaction: &Transaction<'_>,
    now: Millis,
    limit: usize,
) -> Result<Vec<EndedDigest>, StoreError> {
    let heads: Vec<(DigestKey, Millis, i64)> = transaction
        .prepare_cached(
            "SELECT plugin, key, opened_at, total FROM digests WHERE ends_at <= ?1
             ORDER BY ends_at LIMIT ?2",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![now.0, limit as i64], |row| {
                    let key = DigestKey {
                        plugin: row.get(0)?,
                        key: row.get(1)?,
                    };
                    Ok((key, Millis(row.get(2)?), row.get(3)?))
                })?
                .collect()
        })
        .map_err(database("finding ended digests"))?;
    heads
        .into_iter()
        .map(|(key, opened_at, total)| {
            let items = transaction
                .prepare_cached(
                    "SELECT item FROM digest_items WHERE plugin = ?1 AND key = ?2 ORDER BY position",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![key.plugin, key.key], |row| row.get(0))?
                        .collect()
                })
                .map_err(database("reading a digest's items"))?;
            Ok(EndedDigest {
                key,
                opened_at,
                items,
                total,
            })
        })
        .collect()
}
