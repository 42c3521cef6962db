//! The embedded SQLite store: WAL journal, `synchronous = FULL` (a commit returns only after
//! the WAL is fsynced), and a busy timeout so that CLI commands can read and write while a
//! server runs. Writes come from one thread (the intake writer), so the connection mutex is
//! never contended on the hot path.

mod schema;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use ulid::Generator;

use super::{
    Appended, EventDetail, EventFilter, EventSummary, NewEvent, Pruned, RejectedBody, Store,
    StoreError,
};
use crate::config::StoreConfig;
use crate::model::{EventId, Millis};

/// How long a connection waits for another's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    inner: Mutex<Inner>,
    dedup_window: Duration,
    rejected_max_count: u64,
}

struct Inner {
    connection: Connection,
    /// Monotonic within a millisecond, so ids assigned in one batch keep arrival order.
    ids: Generator,
}

fn database(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

impl SqliteStore {
    /// Opens the store, creating its folder and file when missing, and migrates the schema.
    pub fn open(config: &StoreConfig) -> Result<SqliteStore, StoreError> {
        if let Some(folder) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|source| StoreError::CreateDir {
                path: folder.display().to_string(),
                source,
            })?;
        }
        SqliteStore::open_with(config, OpenFlags::default())
    }

    /// Opens a store that must already exist, as the CLI does: a typo in `store.path` should
    /// not quietly create an empty store.
    pub fn open_existing(config: &StoreConfig) -> Result<SqliteStore, StoreError> {
        if !config.path.exists() {
            return Err(StoreError::Missing {
                path: config.path.display().to_string(),
            });
        }
        let flags = OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE;
        SqliteStore::open_with(config, flags)
    }

    fn open_with(config: &StoreConfig, flags: OpenFlags) -> Result<SqliteStore, StoreError> {
        let mut connection = open_connection(&config.path, flags)?;
        schema::migrate(&mut connection)?;
        Ok(SqliteStore {
            inner: Mutex::new(Inner {
                connection,
                ids: Generator::new(),
            }),
            dedup_window: config.dedup_window,
            rejected_max_count: config.rejected_max_count,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (an open transaction rolls
        // back when dropped), so a poisoned lock is safe to reuse.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(path, flags).map_err(database("opening"))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(database("setting the busy timeout"))?;
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(database("enabling the WAL journal"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Damaged(format!(
            "journal mode is {mode}, WAL is required"
        )));
    }
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(database("setting synchronous = FULL"))?;
    Ok(connection)
}

impl Store for SqliteStore {
    fn append(
        &self,
        events: &[NewEvent],
        rejected: &[RejectedBody],
    ) -> Result<Vec<Appended>, StoreError> {
        let mut inner = self.lock();
        let Inner { connection, ids } = &mut *inner;
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(database("starting a write"))?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut in_batch: HashMap<[u8; 32], EventId> = HashMap::new();
        for event in events {
            let first = match in_batch.get(&event.hash) {
                Some(id) => Some(*id),
                None => self.first_copy(&transaction, event)?,
            };
            let outcome = match first {
                Some(id) => Appended::Duplicate(id),
                None => {
                    let id = EventId(
                        ids.generate()
                            .unwrap_or_else(|overflow| overflow.commit_overflow_increment()),
                    );
                    insert_event(&transaction, id, event)?;
                    in_batch.insert(event.hash, id);
                    Appended::Accepted(id)
                }
            };
            outcomes.push(outcome);
        }
        if !rejected.is_empty() {
            self.keep_rejected(&transaction, rejected)?;
        }
        transaction.commit().map_err(database("committing"))?;
        Ok(outcomes)
    }

    fn probe(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let transaction = inner
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(database("taking the write lock"))?;
        transaction
            .rollback()
            .map_err(database("releasing the write lock"))
    }

    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        let mut inner = self.lock();
        let transaction = inner
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(database("starting to prune"))?;
        let ids: Vec<String> = {
            let mut statement = transaction
                .prepare_cached(
                    "SELECT id FROM events WHERE received_at < ?1 AND status != 'pending'
                     AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.event_id = events.id
                                     AND a.status IN ('pending', 'in_flight', 'dead'))
                     LIMIT ?2",
                )
                .map_err(database("finding prunable events"))?;
            let rows = statement
                .query_map(params![before.0, limit as i64], |row| row.get(0))
                .map_err(database("finding prunable events"))?;
            rows.collect::<Result<_, _>>()
                .map_err(database("finding prunable events"))?
        };
        for id in &ids {
            transaction
                .execute("DELETE FROM actions WHERE event_id = ?1", [id])
                .map_err(database("pruning actions"))?;
            transaction
                .execute("DELETE FROM events WHERE id = ?1", [id])
                .map_err(database("pruning events"))?;
        }
        let rejected = transaction
            .execute(
                "DELETE FROM rejected WHERE seq IN
                 (SELECT seq FROM rejected WHERE received_at < ?1 LIMIT ?2)",
                params![before.0, limit as i64],
            )
            .map_err(database("pruning rejected bodies"))?;
        transaction
            .commit()
            .map_err(database("committing a prune"))?;
        Ok(Pruned {
            events: ids.len(),
            rejected,
        })
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let inner = self.lock();
        let mut statement = inner
            .connection
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM events e WHERE (?1 IS NULL OR e.status = ?1)
                 AND (?2 IS NULL OR e.notify_type = ?2) AND (?3 IS NULL OR e.device_id = ?3)
                 ORDER BY e.seq DESC LIMIT ?4"
            ))
            .map_err(database("listing events"))?;
        let status = filter.status.map(|s| s.as_str());
        let rows = statement
            .query_map(
                params![status, filter.notify_type, filter.device_id, filter.limit],
                summary_columns,
            )
            .map_err(database("listing events"))?;
        let rows: Vec<_> = rows
            .collect::<Result<_, _>>()
            .map_err(database("listing events"))?;
        rows.into_iter().map(SummaryRow::into_summary).collect()
    }

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        let inner = self.lock();
        let mut statement = inner
            .connection
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS}, e.path, e.remote_addr, e.body FROM events e
                 WHERE e.id = ?1"
            ))
            .map_err(database("reading an event"))?;
        let row = statement
            .query_row([id.to_string()], |row| {
                let summary = summary_columns(row)?;
                let path: String = row.get(8)?;
                let remote_addr: Option<String> = row.get(9)?;
                let body: Vec<u8> = row.get(10)?;
                Ok((summary, path, remote_addr, body))
            })
            .optional()
            .map_err(database("reading an event"))?;
        let Some((summary, path, remote_addr, body)) = row else {
            return Ok(None);
        };
        let body = String::from_utf8(body)
            .map_err(|_| StoreError::Damaged(format!("event {id} has a body that is not UTF-8")))?;
        Ok(Some(EventDetail {
            summary: summary.into_summary()?,
            path,
            remote_addr,
            body,
        }))
    }
}

impl SqliteStore {
    /// The id of the copy of `event` stored within the dedup window, if any. Duplicates are
    /// never stored, so the newest stored copy is the first copy of the current window.
    fn first_copy(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        event: &NewEvent,
    ) -> Result<Option<EventId>, StoreError> {
        let window_start = event.received_at.minus(self.dedup_window);
        let mut statement = transaction
            .prepare_cached(
                "SELECT id FROM events WHERE body_hash = ?1 AND received_at > ?2
                 ORDER BY received_at DESC LIMIT 1",
            )
            .map_err(database("looking for duplicates"))?;
        let id: Option<String> = statement
            .query_row(params![&event.hash[..], window_start.0], |row| row.get(0))
            .optional()
            .map_err(database("looking for duplicates"))?;
        id.map(|id| id.parse().map_err(StoreError::Damaged))
            .transpose()
    }

    /// Inserts rejected bodies and drops the oldest beyond `rejected_max_count`.
    fn keep_rejected(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        rejected: &[RejectedBody],
    ) -> Result<(), StoreError> {
        let mut statement = transaction
            .prepare_cached(
                "INSERT INTO rejected (received_at, path, remote_addr, reason, content_type, body,
                 body_len) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(database("keeping a rejected body"))?;
        for body in rejected {
            statement
                .execute(params![
                    body.received_at.0,
                    body.path,
                    body.remote_addr,
                    body.reason,
                    body.content_type,
                    body.body,
                    body.body_len as i64,
                ])
                .map_err(database("keeping a rejected body"))?;
        }
        let keep = i64::try_from(self.rejected_max_count).unwrap_or(i64::MAX);
        transaction
            .execute(
                "DELETE FROM rejected WHERE seq <= (SELECT max(seq) FROM rejected) - ?1",
                [keep],
            )
            .map_err(database("bounding rejected bodies"))?;
        Ok(())
    }
}

fn insert_event(
    transaction: &rusqlite::Transaction<'_>,
    id: EventId,
    event: &NewEvent,
) -> Result<(), StoreError> {
    let warnings =
        serde_json::to_string(&event.warnings).expect("problems serialise to a JSON array");
    transaction
        .prepare_cached(
            "INSERT INTO events (id, received_at, path, remote_addr, notify_type, device_id, body,
             body_hash, warnings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                id.to_string(),
                event.received_at.0,
                event.path,
                event.remote_addr,
                event.notify_type,
                event.device_id,
                event.body,
                &event.hash[..],
                warnings,
            ])
        })
        .map_err(database("storing an event"))?;
    Ok(())
}

const SUMMARY_COLUMNS: &str = "e.id, e.received_at, e.notify_type, e.device_id, e.status,
    e.warnings, (SELECT count(*) FROM actions a WHERE a.event_id = e.id), e.error";

struct SummaryRow {
    id: String,
    received_at: i64,
    notify_type: Option<String>,
    device_id: Option<String>,
    status: String,
    warnings: String,
    actions: i64,
    error: Option<String>,
}

fn summary_columns(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(SummaryRow {
        id: row.get(0)?,
        received_at: row.get(1)?,
        notify_type: row.get(2)?,
        device_id: row.get(3)?,
        status: row.get(4)?,
        warnings: row.get(5)?,
        actions: row.get(6)?,
        error: row.get(7)?,
    })
}

impl SummaryRow {
    fn into_summary(self) -> Result<EventSummary, StoreError> {
        let warnings = serde_json::from_str(&self.warnings).map_err(|_| {
            StoreError::Damaged(format!("event {} has warnings that are not JSON", self.id))
        })?;
        Ok(EventSummary {
            id: self.id,
            received_at: Millis(self.received_at).to_rfc3339(),
            notify_type: self.notify_type,
            device_id: self.device_id,
            status: self.status,
            warnings,
            actions: u64::try_from(self.actions).unwrap_or(0),
            error: self.error,
        })
    }
}
