//! A store double: the real SQLite store behind switches that make it fail or stall, for the
//! tests of a receiver whose disk misbehaves (CI runs as root, so a read-only file proves
//! nothing) and for the stalled-store benchmark. Everything it does not fault passes through;
//! `write_group` keeps the trait's default, which calls `append`, so a fault reaches every
//! round of the writer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use notirouter::destination::Destination;
use notirouter::model::state::{StateChanges, StateError, StateView};
use notirouter::model::{EventId, Millis};
use notirouter::store::{
    Appended, CallLimit, Claimer, DeadLetter, DeliveryUpdate, EventDetail, EventFilter,
    EventOutcome, EventSummary, GroupWritten, NewEvent, PendingAction, PlatformToken, Pruned,
    RejectedBody, SqliteStore, Store, StoreError, StoredEvent, WriteGroup, write_separately,
};

/// The longest a stall holds a write, so that a stall left set cannot hang a process for ever.
const STALL_MAX: Duration = Duration::from_secs(120);

/// A switchable fault in front of a real store.
pub struct FaultyStore {
    inner: SqliteStore,
    disk_full: AtomicBool,
    stalled: Mutex<bool>,
    unstalled: Condvar,
    /// Appends waiting in a stall now.
    held: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: SqliteStore) -> FaultyStore {
        FaultyStore {
            inner,
            disk_full: AtomicBool::new(false),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
            held: AtomicUsize::new(0),
        }
    }

    /// While set, every `append` waits, as on a disk that stops answering.
    pub fn set_stalled(&self, stalled: bool) {
        *self.stalled.lock().unwrap_or_else(PoisonError::into_inner) = stalled;
        self.unstalled.notify_all();
    }

    /// How many appends the stall holds now: the writer is stuck once this is 1.
    pub fn held_appends(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// While set, writes fail as on a full disk.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    fn fail_if_full(&self) -> Result<(), StoreError> {
        if !self.disk_full.load(Ordering::SeqCst) {
            return Ok(());
        }
        let full = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL);
        let source = rusqlite::Error::SqliteFailure(full, Some("database or disk is full".into()));
        Err(StoreError::Database {
            context: "committing",
            source: Box::new(source),
        })
    }
}

impl Store for FaultyStore {
    /// Through the inner store, bypassing the faults: nothing calls it but `write_group`, which
    /// is overridden below.
    fn write_together(&self, group: &WriteGroup<'_>) -> Result<GroupWritten, StoreError> {
        self.inner.write_together(group)
    }

    /// Each part on its own, so that every write meets the faults of `append` and the rest.
    fn write_group(&self, group: &WriteGroup<'_>) -> GroupWritten {
        write_separately(self, group)
    }

    fn platform_token(&self, app: &str) -> Result<Option<PlatformToken>, StoreError> {
        self.inner.platform_token(app)
    }

    fn claim_token_renewal(
        &self,
        app: &str,
        by: &Claimer,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.inner.claim_token_renewal(app, by, now, until)
    }

    fn store_platform_token(
        &self,
        app: &str,
        by: &Claimer,
        token: &PlatformToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.inner.store_platform_token(app, by, token, now)
    }

    fn release_token_renewal(&self, app: &str, by: &Claimer) -> Result<(), StoreError> {
        self.inner.release_token_renewal(app, by)
    }

    fn reserve_platform_call(
        &self,
        app: &str,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        self.inner.reserve_platform_call(app, limit, now)
    }

    fn append(
        &self,
        events: &[NewEvent],
        rejected: &[RejectedBody],
    ) -> Result<Vec<Appended>, StoreError> {
        self.held.fetch_add(1, Ordering::SeqCst);
        let stalled = self.stalled.lock().unwrap_or_else(PoisonError::into_inner);
        let waited = self
            .unstalled
            .wait_timeout_while(stalled, STALL_MAX, |stalled| *stalled);
        drop(waited.unwrap_or_else(PoisonError::into_inner));
        self.held.fetch_sub(1, Ordering::SeqCst);
        self.fail_if_full()?;
        self.inner.append(events, rejected)
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.fail_if_full()?;
        self.inner.probe()
    }

    fn describe(&self) -> Result<String, StoreError> {
        self.inner.describe()
    }

    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        self.inner.prune(before, limit)
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.inner.list_events(filter)
    }

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.inner.event(id)
    }

    fn stored_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.stored_event(id)
    }

    fn claim_events(
        &self,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.claim_events(by, limit, now)
    }

    fn release_stale_claims(&self) -> Result<(), StoreError> {
        self.inner.release_stale_claims()
    }

    fn record_outcomes(
        &self,
        outcomes: &[EventOutcome],
        changes: &StateChanges,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.fail_if_full()?;
        self.inner.record_outcomes(outcomes, changes, now)
    }

    fn due_destinations(&self, now: Millis) -> Result<Vec<Destination>, StoreError> {
        self.inner.due_destinations(now)
    }

    fn claim_due_actions(
        &self,
        destination: &Destination,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<PendingAction>, StoreError> {
        self.inner.claim_due_actions(destination, by, limit, now)
    }

    fn renew_action_claims(
        &self,
        by: &Claimer,
        ids: &[String],
        now: Millis,
    ) -> Result<usize, StoreError> {
        self.inner.renew_action_claims(by, ids, now)
    }

    fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.inner.next_due()
    }

    fn oldest_pending(&self) -> Result<Option<Millis>, StoreError> {
        self.inner.oldest_pending()
    }

    fn record_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: Millis,
    ) -> Result<usize, StoreError> {
        self.fail_if_full()?;
        self.inner.record_deliveries(updates, now)
    }

    fn fire_ended_digests(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.fail_if_full()?;
        self.inner.fire_ended_digests(now, limit)
    }

    fn next_digest_end(&self) -> Result<Option<Millis>, StoreError> {
        self.inner.next_digest_end()
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters()
    }

    fn requeue_dead(&self, id: Option<&str>) -> Result<usize, StoreError> {
        self.inner.requeue_dead(id)
    }

    fn drop_dead(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.drop_dead(id)
    }
}

impl StateView for FaultyStore {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        self.inner.seen_at(key)
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        self.inner.counter(key)
    }

    fn budget(&self, device: &str, version: &str) -> Result<Option<(i64, Millis)>, StateError> {
        self.inner.budget(device, version)
    }
}
