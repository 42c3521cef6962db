//! The embedded SQLite store: WAL journal, `synchronous = FULL` (a commit returns only after
//! the WAL is fsynced), and a busy timeout so that CLI commands can read and write while a
//! server runs.
//!
//! Two connections: the writer, used only by the intake's writer thread (and by CLI commands,
//! which write rarely), and a reader for everything else, so that listing events or reading
//! script state never waits behind a group commit. The files below hold the queries by stage.

mod campaigns;
mod checkpoint;
mod claims;
mod columns;
mod dedup;
mod delivery;
mod digests;
mod intake;
mod outcomes;
mod platform;
mod queries;
mod schema;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use parking_lot::{FairMutex, FairMutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use ulid::{Generator, Ulid};

use super::{
    CallLimit, Claimer, DeadLetter, EventDetail, EventFilter, EventSummary, GroupWritten,
    PendingAction, PlatformToken, Pruned, Store, StoreError, StoredEvent, WriteGroup,
};
use crate::config::StoreConfig;
use crate::destination::Destination;
use crate::model::{EventId, Millis};

/// Statements each connection keeps prepared.
const STATEMENT_CACHE: usize = 64;

/// How long a connection waits for another's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    /// The database file, for messages.
    path: std::path::PathBuf,
    /// Fair: the intake's writer commits back to back under load, and an unfair lock would
    /// let it take the connection again before a waiting claim wakes, starving the scripts.
    writer: FairMutex<Connection>,
    reader: Mutex<Connection>,
    /// Action ids: monotonic within a millisecond.
    ids: Mutex<Generator>,
    /// The writer's memory of recent hashes, loaded on the first append.
    dedup: Mutex<Option<dedup::DedupMemory>>,
    dedup_capacity: usize,
    dedup_window: Duration,
    rejected_max_count: u64,
    /// How long a claim holds.
    lease: Duration,
    /// Set for the server's store: checkpoints run on their own thread.
    checkpointer: Option<checkpoint::Checkpointer>,
}

fn database(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database {
        context,
        source: Box::new(source),
    }
}

/// A poisoned lock is safe to reuse here: a panic while holding it leaves SQLite consistent,
/// since an open transaction rolls back when dropped.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let mut store = SqliteStore::open_with(config, OpenFlags::default())?;
        store
            .writer()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(database("moving checkpoints off the writer"))?;
        store.checkpointer = Some(checkpoint::Checkpointer::start(&config.path)?);
        Ok(store)
    }

    /// Opens a store that must already exist, as the CLI does: a typo in `store.path` should
    /// not quietly create an empty store.
    pub fn open_existing(config: &StoreConfig) -> Result<SqliteStore, StoreError> {
        if !config.path.exists() {
            return Err(StoreError::Missing {
                path: config.path.display().to_string(),
            });
        }
        SqliteStore::open_with(config, OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE)
    }

    fn open_with(config: &StoreConfig, flags: OpenFlags) -> Result<SqliteStore, StoreError> {
        let mut writer = open_connection(&config.path, flags)?;
        schema::migrate(&mut writer)?;
        let reader = open_connection(&config.path, flags)?;
        Ok(SqliteStore {
            path: config.path.clone(),
            writer: FairMutex::new(writer),
            reader: Mutex::new(reader),
            ids: Mutex::new(Generator::new()),
            dedup: Mutex::new(None),
            dedup_capacity: dedup::DEDUP_MEMORY,
            checkpointer: None,
            dedup_window: config.dedup_window,
            rejected_max_count: config.rejected_max_count,
            lease: config.lease,
        })
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        lock(&self.reader)
    }

    fn writer(&self) -> FairMutexGuard<'_, Connection> {
        self.writer.lock()
    }

    fn next_id(&self) -> Ulid {
        lock(&self.ids)
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
    }
}

/// Commits the whole group in one transaction: any failure leaves none of it stored.
fn write_together(store: &SqliteStore, group: &WriteGroup<'_>) -> Result<GroupWritten, StoreError> {
    let mut writer = store.writer();
    let mut remembered = Vec::new();
    let written = begin(&mut writer).and_then(|transaction| {
        let appended =
            store.append_in(&transaction, group.events, group.rejected, &mut remembered)?;
        for batch in group.outcomes {
            store.outcomes_in(&transaction, batch, group.now)?;
        }
        let raised = store.deliveries_in(&transaction, group.deliveries, group.now)?;
        transaction.commit().map_err(database("committing"))?;
        Ok(GroupWritten {
            appended: Ok(appended),
            outcomes: group.outcomes.iter().map(|_| Ok(())).collect(),
            deliveries: Ok(raised),
        })
    });
    if written.is_err() {
        store.forget_hashes(&remembered);
    }
    written
}

/// Runs a statement prepared once per connection: parsing the SQL costs more than running
/// most of the statements on the hot paths.
fn execute_cached(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    connection.prepare_cached(sql)?.execute(params)
}

/// [`execute_cached`] for a query of one row.
fn query_row_cached<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached(sql)?.query_row(params, row)
}

/// Starts a write transaction that takes the write lock at once, so that it cannot fail
/// half-way on a lock held by another process.
fn begin(connection: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(database("starting a write"))
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
        return Err(StoreError::NoWal(mode));
    }
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(database("setting synchronous = FULL"))?;
    // Room for every cached statement of the store (about 30), so none is evicted and parsed
    // again on a hot path.
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(connection)
}

impl Store for SqliteStore {
    fn write_together(&self, group: &WriteGroup<'_>) -> Result<GroupWritten, StoreError> {
        write_together(self, group)
    }

    fn probe(&self) -> Result<(), StoreError> {
        let mut writer = self.writer();
        begin(&mut writer)?
            .rollback()
            .map_err(database("releasing the write lock"))
    }

    /// The WAL journal is checked at every open; the probe proves the write lock.
    fn describe(&self) -> Result<String, StoreError> {
        self.probe()?;
        Ok(format!(
            "{} opens, uses the WAL journal and takes writes",
            self.path.display()
        ))
    }

    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        self.prune_before(before, limit)
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.query_events(filter)
    }

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.query_event(id)
    }

    fn stored_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.read_stored(id)
    }

    fn claim_events(
        &self,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.claim_events_for(by, limit, now)
    }

    fn release_stale_claims(&self) -> Result<(), StoreError> {
        self.release_all_claims()
    }

    fn due_destinations(&self, now: Millis) -> Result<Vec<Destination>, StoreError> {
        self.read_due_destinations(now)
    }

    fn claim_due_actions(
        &self,
        destination: &Destination,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<PendingAction>, StoreError> {
        self.claim_actions_for(destination, by, limit, now)
    }

    fn renew_action_claims(
        &self,
        by: &Claimer,
        ids: &[String],
        now: Millis,
    ) -> Result<usize, StoreError> {
        self.renew_action_claims_for(by, ids, now)
    }

    fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.read_next_due()
    }

    fn oldest_pending(&self) -> Result<Option<Millis>, StoreError> {
        self.read_oldest_pending()
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.read_dead_letters()
    }

    fn requeue_dead(&self, id: Option<&str>) -> Result<usize, StoreError> {
        self.write_requeue(id)
    }

    fn drop_dead(&self, id: &str) -> Result<bool, StoreError> {
        self.write_drop(id)
    }

    fn platform_token(&self, app: &str) -> Result<Option<PlatformToken>, StoreError> {
        self.read_platform_token(app)
    }

    fn claim_token_renewal(
        &self,
        app: &str,
        by: &Claimer,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.claim_renewal_for(app, by, now, until)
    }

    fn store_platform_token(
        &self,
        app: &str,
        by: &Claimer,
        token: &PlatformToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.store_token_for(app, by, token, now)
    }

    fn release_token_renewal(&self, app: &str, by: &Claimer) -> Result<(), StoreError> {
        self.release_renewal_for(app, by)
    }

    fn reserve_platform_call(
        &self,
        app: &str,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        self.reserve_call_for(app, limit, now)
    }

    fn fire_ended_digests(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.fire_digests(now, limit)
    }

    fn next_digest_end(&self) -> Result<Option<Millis>, StoreError> {
        self.read_next_digest_end()
    }

    fn campaign_view(&self) -> Option<&dyn super::campaigns::CampaignView> {
        Some(self)
    }
}
