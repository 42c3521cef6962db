//! Writes of the receiving stage: a batch of notifications (with the duplicate rule decided by
//! the `dedup` table's key, so that every instance agrees), rejected bodies, and pruning.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;

use super::{Durability, PgStore, Tx, database};
use super::{cached, notify};
use crate::model::{EventId, Millis};
use crate::store::rules::InternalEvent;
use crate::store::{Appended, NewEvent, Pruned, RejectedBody, StoreError};

/// The advisory lock key that a pruning pass holds, so one instance prunes at a time.
const PRUNE_LOCK: i64 = 0x6e6f_7469_7072_756e;

impl PgStore {
    /// Appends within `transaction` in two round trips whatever the batch's size: first the
    /// batch's bodies are numbered and their hashes claimed in `dedup` (with the rejected
    /// bodies kept meanwhile), then the new ones are inserted while the first copies of the
    /// others are read and other instances are told of the new events.
    pub(super) async fn append_in(
        &self,
        transaction: &Tx,
        events: &[NewEvent],
        rejected: &[RejectedBody],
    ) -> Result<Vec<Appended>, StoreError> {
        let keep_rejected = async {
            if rejected.is_empty() {
                return Ok(());
            }
            self.keep_rejected(transaction, rejected).await
        };
        let (appended, kept) =
            futures_util::join!(self.append_events(transaction, events), keep_rejected);
        kept?;
        appended
    }

    async fn append_events(
        &self,
        transaction: &Tx,
        events: &[NewEvent],
    ) -> Result<Vec<Appended>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // A body sent twice in one batch: the later copy is a duplicate of the earlier.
        let mut first_of_hash: HashMap<&[u8; 32], usize> = HashMap::new();
        let firsts: Vec<usize> = (0..events.len())
            .filter(|&index| *first_of_hash.entry(&events[index].hash).or_insert(index) == index)
            .collect();
        let claimed = self.claim_hashes(transaction, events, &firsts).await?;
        let new: Vec<(usize, i64)> = firsts
            .iter()
            .filter_map(|&index| Some((index, *claimed.get(&events[index].hash[..])?)))
            .collect();
        let notify = async {
            if new.is_empty() {
                return Ok(());
            }
            notify::notify(transaction, notify::EVENTS).await
        };
        let (inserted, copies, notified) = futures_util::join!(
            insert_events(transaction, events, &new),
            first_copies(transaction, events, &firsts, &new),
            notify
        );
        inserted?;
        notified?;
        let copies = copies?;
        let ids: HashMap<&[u8; 32], Appended> = new
            .iter()
            .map(|&(index, seq)| {
                let id = EventId::from_parts(events[index].received_at, seq);
                (&events[index].hash, Appended::Accepted(id))
            })
            .chain(
                copies
                    .iter()
                    .map(|(hash, id)| (hash, Appended::Duplicate(*id))),
            )
            .collect();
        events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let outcome = ids.get(&event.hash).copied().ok_or_else(|| {
                    StoreError::Damaged("a duplicate's first copy is missing from dedup".into())
                })?;
                Ok(match (outcome, first_of_hash[&event.hash] == index) {
                    (Appended::Accepted(id), false) => Appended::Duplicate(id),
                    (outcome, _) => outcome,
                })
            })
            .collect()
    }

    /// Numbers the bodies at `firsts` in their order and claims their hashes in `dedup`: a
    /// hash is claimed when no copy is stored, or only one older than the window. Returns the
    /// claimed hashes with their events' numbers (numbers taken for the others are skipped).
    async fn claim_hashes(
        &self,
        transaction: &Tx,
        events: &[NewEvent],
        firsts: &[usize],
    ) -> Result<HashMap<Vec<u8>, i64>, StoreError> {
        let hashes: Vec<&[u8]> = firsts.iter().map(|&i| &events[i].hash[..]).collect();
        let received: Vec<i64> = firsts.iter().map(|&i| events[i].received_at.0).collect();
        let window = self.dedup_window.as_millis() as i64;
        Ok(cached::query(
            transaction,
            "INSERT INTO dedup (body_hash, first_at, seq)
                 SELECT hash, first_at, nextval(pg_get_serial_sequence('events', 'seq'))
                 FROM unnest($1::BYTEA[], $2::BIGINT[]) WITH ORDINALITY
                     AS batch (hash, first_at, position)
                 ORDER BY position
                 ON CONFLICT (body_hash) DO UPDATE SET first_at = EXCLUDED.first_at,
                 seq = EXCLUDED.seq WHERE dedup.first_at <= EXCLUDED.first_at - $3
                 RETURNING body_hash, seq",
            &[&hashes, &received, &window],
        )
        .await
        .map_err(database("checking for duplicates"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
    }

    /// Inserts rejected bodies and drops the oldest beyond `rejected_max_count`.
    async fn keep_rejected(
        &self,
        transaction: &Tx,
        rejected: &[RejectedBody],
    ) -> Result<(), StoreError> {
        let column = |get: fn(&RejectedBody) -> Option<&str>| -> Vec<Option<&str>> {
            rejected.iter().map(get).collect()
        };
        let received: Vec<i64> = rejected.iter().map(|body| body.received_at.0).collect();
        let paths = column(|body| Some(&body.path));
        let remotes = column(|body| body.remote_addr.as_deref());
        let reasons = column(|body| Some(&body.reason));
        let types = column(|body| body.content_type.as_deref());
        let bodies: Vec<&[u8]> = rejected.iter().map(|body| &body.body[..]).collect();
        let lengths: Vec<i64> = rejected.iter().map(|body| body.body_len as i64).collect();
        cached::execute(
            transaction,
            "INSERT INTO rejected (received_at, path, remote_addr, reason, content_type, body,
                 body_len) SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[],
                 $5::TEXT[], $6::BYTEA[], $7::BIGINT[])",
            &[
                &received, &paths, &remotes, &reasons, &types, &bodies, &lengths,
            ],
        )
        .await
        .map_err(database("keeping a rejected body"))?;
        let keep = i64::try_from(self.rejected_max_count).unwrap_or(i64::MAX);
        cached::execute(
            transaction,
            "DELETE FROM rejected WHERE seq <= (SELECT max(seq) FROM rejected) - $1",
            &[&keep],
        )
        .await
        .map_err(database("bounding rejected bodies"))?;
        Ok(())
    }

    /// Deletes up to `limit` finished events received before `before` whose actions are all
    /// settled (with those actions and their attempts), expired script state and duplicate
    /// keys, and old rejected bodies: one short transaction, by one instance at a time.
    pub(super) fn prune_before(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        let limit = limit as i64;
        let now = Millis::now();
        let dedup_until = now.minus(self.dedup_window).0;
        self.in_transaction(Durability::Durable, async |transaction| {
            let locked: bool = cached::query_one(transaction, "SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
                .await
                .map_err(database("taking the pruning lock"))?
                .get(0);
            if !locked {
                return Ok(Pruned::default());
            }
            let doomed = cached::query(transaction,
                    "SELECT seq, id FROM events e WHERE received_at < $1 AND status != 'pending'
                     AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.event_id = e.id
                                     AND a.status IN ('pending', 'dead'))
                     LIMIT $2",
                    &[&before.0, &limit],
                )
                .await
                .map_err(database("finding prunable events"))?;
            let seqs: Vec<i64> = doomed.iter().map(|row| row.get(0)).collect();
            let ids: Vec<String> = doomed.iter().map(|row| row.get(1)).collect();
            for (sql, params) in [
                (
                    "DELETE FROM action_attempts WHERE action_id IN
                     (SELECT id FROM actions WHERE event_id = ANY($1))",
                    &ids as &(dyn tokio_postgres::types::ToSql + Sync),
                ),
                ("DELETE FROM actions WHERE event_id = ANY($1)", &ids),
                ("DELETE FROM events WHERE seq = ANY($1)", &seqs),
            ] {
                cached::execute(transaction, sql, &[params])
                    .await
                    .map_err(database("pruning events"))?;
            }
            for (sql, until) in [
                ("DELETE FROM seen WHERE key IN (SELECT key FROM seen WHERE expires_at <= $1 LIMIT $2)", now.0),
                ("DELETE FROM counters WHERE key IN (SELECT key FROM counters WHERE expires_at <= $1 LIMIT $2)", now.0),
                ("DELETE FROM dedup WHERE body_hash IN (SELECT body_hash FROM dedup WHERE first_at <= $1 LIMIT $2)", dedup_until),
            ] {
                cached::execute(transaction, sql, &[&until, &limit])
                    .await
                    .map_err(database("pruning expired keys"))?;
            }
            let rejected = cached::execute(transaction,
                    "DELETE FROM rejected WHERE seq IN
                     (SELECT seq FROM rejected WHERE received_at < $1 LIMIT $2)",
                    &[&before.0, &limit],
                )
                .await
                .map_err(database("pruning rejected bodies"))?;
            Ok(Pruned {
                events: seqs.len(),
                rejected: rejected as usize,
            })
        })
    }
}

/// The number of a new event.
async fn next_seq(client: &impl GenericClient) -> Result<i64, StoreError> {
    Ok(cached::query_one(
        client,
        "SELECT nextval(pg_get_serial_sequence('events', 'seq'))",
        &[],
    )
    .await
    .map_err(database("numbering events"))?
    .get(0))
}

/// Inserts the events at `new` (index into `events`, seq), in one statement.
async fn insert_events(
    transaction: &Tx,
    events: &[NewEvent],
    new: &[(usize, i64)],
) -> Result<(), StoreError> {
    if new.is_empty() {
        return Ok(());
    }
    let pick = |index: &(usize, i64)| &events[index.0];
    let seqs: Vec<i64> = new.iter().map(|(_, seq)| *seq).collect();
    let ids: Vec<String> = new
        .iter()
        .map(|&(index, seq)| EventId::from_parts(events[index].received_at, seq).to_string())
        .collect();
    let received: Vec<i64> = new.iter().map(|n| pick(n).received_at.0).collect();
    let paths: Vec<&str> = new.iter().map(|n| pick(n).path.as_str()).collect();
    let remotes: Vec<Option<&str>> = new.iter().map(|n| pick(n).remote_addr.as_deref()).collect();
    let types: Vec<Option<&str>> = new.iter().map(|n| pick(n).notify_type.as_deref()).collect();
    let devices: Vec<Option<&str>> = new.iter().map(|n| pick(n).device_id.as_deref()).collect();
    let bodies: Vec<&[u8]> = new.iter().map(|n| &pick(n).body[..]).collect();
    let warnings: Vec<String> = new
        .iter()
        .map(|n| serde_json::to_string(&pick(n).warnings).expect("problems serialise"))
        .collect();
    cached::execute(
        transaction,
        "INSERT INTO events (seq, id, received_at, path, remote_addr, notify_type, device_id,
             body, warnings) SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::BIGINT[],
             $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::BYTEA[], $9::TEXT[])",
        &[
            &seqs, &ids, &received, &paths, &remotes, &types, &devices, &bodies, &warnings,
        ],
    )
    .await
    .map_err(database("storing events"))?;
    Ok(())
}

/// The stored first copies of the bodies among `firsts` that are not `new`.
async fn first_copies(
    transaction: &Tx,
    events: &[NewEvent],
    firsts: &[usize],
    new: &[(usize, i64)],
) -> Result<Vec<([u8; 32], EventId)>, StoreError> {
    let stored: HashSet<usize> = new.iter().map(|(index, _)| *index).collect();
    let copies: Vec<&[u8]> = firsts
        .iter()
        .filter(|index| !stored.contains(index))
        .map(|&index| &events[index].hash[..])
        .collect();
    if copies.is_empty() {
        return Ok(Vec::new());
    }
    cached::query(
        transaction,
        "SELECT body_hash, first_at, seq FROM dedup WHERE body_hash = ANY($1)",
        &[&copies],
    )
    .await
    .map_err(database("reading the first copies of duplicates"))?
    .iter()
    .map(|row| {
        let hash: Vec<u8> = row.get(0);
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Damaged("a stored body hash is not 32 bytes".into()))?;
        Ok((hash, EventId::from_parts(Millis(row.get(1)), row.get(2))))
    })
    .collect()
}

/// Stores an event the store raised itself (not subject to the duplicate rule).
pub(super) async fn insert_internal(
    transaction: &Tx,
    event: &InternalEvent,
) -> Result<(), StoreError> {
    let seq = next_seq(transaction).await?;
    let id = EventId::from_parts(event.received_at, seq).to_string();
    cached::execute(
        transaction,
        "INSERT INTO events (seq, id, received_at, path, notify_type, body, source)
             VALUES ($1, $2, $3, '', $4, $5, 'internal')",
        &[
            &seq,
            &id,
            &event.received_at.0,
            &event.notify_type,
            &event.body,
        ],
    )
    .await
    .map_err(database("raising an internal event"))?;
    Ok(())
}
