//! Digests: items added with a batch's outcomes, and the firing of those whose window ended.

use super::cached;
use super::intake::insert_internal;
use super::{Durability, PgStore, Tx, database};
use crate::model::Millis;
use crate::model::state::{DIGEST_ITEMS, DigestKey, StateChanges};
use crate::store::StoreError;
use crate::store::rules::{self, EndedDigest};

/// Adds a batch's digest items to the open digests, opening those that are not. The total is
/// added as a delta on the digest's row, whose lock orders the batches of other instances
/// adding to the same digest: each knows the positions its items take.
pub(super) async fn add_items(transaction: &Tx, changes: &StateChanges) -> Result<(), StoreError> {
    for (key, addition) in &changes.digests {
        let total: i64 = cached::query_one(
            transaction,
            "INSERT INTO digests AS d (plugin, key, opened_at, ends_at, total)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (plugin, key) DO UPDATE SET total = d.total + EXCLUDED.total
                 RETURNING total",
            &[
                &key.plugin,
                &key.key,
                &addition.opened_at.0,
                &addition.ends_at().0,
                &addition.total,
            ],
        )
        .await
        .map_err(database("adding to a digest"))?
        .get(0);
        let before = total - addition.total;
        let room = (DIGEST_ITEMS as i64 - before).max(0) as usize;
        let items: Vec<&str> = addition
            .items
            .iter()
            .take(room)
            .map(String::as_str)
            .collect();
        if items.is_empty() {
            continue;
        }
        cached::execute(
            transaction,
            "INSERT INTO digest_items (plugin, key, position, item)
                 SELECT $1, $2, $3 + ordinality - 1, item
                 FROM unnest($4::TEXT[]) WITH ORDINALITY AS added (item, ordinality)",
            &[&key.plugin, &key.key, &before, &items],
        )
        .await
        .map_err(database("adding digest items"))?;
    }
    Ok(())
}

impl PgStore {
    /// Locks the ended digests it fires, skipping those another instance is firing now.
    pub(super) fn fire_digests(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.in_transaction(Durability::Durable, async |transaction| {
            let ended = ended_digests(transaction, now, limit).await?;
            for digest in &ended {
                insert_internal(transaction, &rules::digest_event(digest, now)?).await?;
                for sql in [
                    "DELETE FROM digest_items WHERE plugin = $1 AND key = $2",
                    "DELETE FROM digests WHERE plugin = $1 AND key = $2",
                ] {
                    cached::execute(transaction, sql, &[&digest.key.plugin, &digest.key.key])
                        .await
                        .map_err(database("deleting a fired digest"))?;
                }
            }
            if !ended.is_empty() {
                super::notify::notify(transaction, super::notify::EVENTS).await?;
            }
            Ok(ended.len())
        })
    }

    pub(super) fn read_next_digest_end(&self) -> Result<Option<Millis>, StoreError> {
        self.with_client(async |client| {
            let row = cached::query_one(&*client, "SELECT min(ends_at) FROM digests", &[])
                .await
                .map_err(database("reading when the next digest ends"))?;
            Ok(row.get::<_, Option<i64>>(0).map(Millis))
        })
    }
}

async fn ended_digests(
    transaction: &Tx,
    now: Millis,
    limit: usize,
) -> Result<Vec<EndedDigest>, StoreError> {
    let heads = cached::query(
        transaction,
        "SELECT plugin, key, opened_at, total FROM digests WHERE ends_at <= $1
             ORDER BY ends_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        &[&now.0, &(limit as i64)],
    )
    .await
    .map_err(database("finding ended digests"))?;
    let mut ended = Vec::with_capacity(heads.len());
    for head in heads {
        let key = DigestKey {
            plugin: head.get(0),
            key: head.get(1),
        };
        let items = cached::query(
            transaction,
            "SELECT item FROM digest_items WHERE plugin = $1 AND key = $2 ORDER BY position",
            &[&key.plugin, &key.key],
        )
        .await
        .map_err(database("reading a digest's items"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
        ended.push(EndedDigest {
            key,
            opened_at: Millis(head.get(2)),
            items,
            total: head.get(3),
        });
    }
    Ok(ended)
}
