//! Durable storage. The [`Store`] trait is what the stages need; [`sqlite`] is the embedded
//! backend that `serve` uses by default, and a PostgreSQL backend can implement the same trait
//! for multi-instance deployments. [`Intake`] is the group-commit writer in front of a store:
//! many concurrent requests share one transaction and one fsync.
//!
//! No SQL lives outside this module.

pub mod campaigns;
mod intake;
pub mod sqlite;
mod wakeup;

use std::collections::HashSet;

use serde::Serialize;

use crate::action::Action;
use crate::model::state::{StateChanges, StateView};
use crate::model::{EventId, EventStatus, Millis};
use crate::notification::Problem;

pub use intake::{Intake, IntakeError, IntakeMetrics, IntakeWriter, Signals};
pub use sqlite::SqliteStore;
pub use wakeup::Wakeup;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store's folder {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("no store at {path}; start `notirouter serve` once, or fix store.path")]
    Missing { path: String },
    #[error(
        "the store was written by a newer notirouter (schema {found}, this one knows {known}); upgrade notirouter"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("store {context}: {source}")]
    Database {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("stored data is damaged ({0}); restore the store from a backup")]
    Damaged(String),
    #[error(
        "the store's file system refused the WAL journal (journal mode {0}); put store.path on a local disk"
    )]
    NoWal(String),
    #[error("cannot start a store thread ({0}); check the process and thread limits")]
    Thread(std::io::Error),
    #[error("a store read panicked; this is a bug: report it with the log lines above")]
    ReadPanicked,
}

/// A notification ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub received_at: Millis,
    pub path: String,
    pub remote_addr: Option<String>,
    pub notify_type: Option<String>,
    pub device_id: Option<String>,
    /// The body exactly as received.
    pub body: Vec<u8>,
    /// SHA-256 of the canonical JSON: the duplicate key.
    pub hash: [u8; 32],
    pub warnings: Vec<Problem>,
}

/// What became of one appended notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored as a new event.
    Accepted(EventId),
    /// A copy of an event stored within the dedup window of its first copy.
    Duplicate(EventId),
}

/// A refused body, kept (truncated) so an operator can see what was turned away and why.
#[derive(Debug, Clone)]
pub struct RejectedBody {
    pub received_at: Millis,
    pub path: String,
    pub remote_addr: Option<String>,
    pub reason: String,
    pub content_type: Option<String>,
    /// At most `store.rejected_max_bytes` of the body.
    pub body: Vec<u8>,
    /// The length of the whole body as far as it was read.
    pub body_len: usize,
}

/// Filters of `events list`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub status: Option<EventStatus>,
    pub notify_type: Option<String>,
    pub device_id: Option<String>,
    pub limit: u32,
}

/// One row of `events list`; the JSON keys are SPEC.md's.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub id: String,
    pub received_at: String,
    pub notify_type: Option<String>,
    pub device_id: Option<String>,
    pub status: String,
    pub warnings: serde_json::Value,
    pub actions: u64,
    pub error: Option<String>,
    /// What destinations returned for this event's actions (e.g. the platform's
    /// `operationId`), oldest first. Shown in the table only: the JSON keys are SPEC.md's
    /// fixed set, and `events show --json` has each action's result.
    #[serde(skip_serializing)]
    pub results: Vec<String>,
}

/// One event's whole story, for `events show`.
#[derive(Debug, Clone)]
pub struct EventDetail {
    pub summary: EventSummary,
    pub path: String,
    pub remote_addr: Option<String>,
    /// The body as received (it parsed as JSON, so it is UTF-8).
    pub body: String,
    pub plugin_runs: Vec<PluginRecord>,
    pub actions: Vec<ActionRecord>,
}

/// A stored event as the script stage reads it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Arrival order.
    pub seq: i64,
    pub id: EventId,
    pub received_at: Millis,
    pub path: String,
    pub remote_addr: Option<String>,
    pub notify_type: Option<String>,
    pub device_id: Option<String>,
    pub body: Vec<u8>,
    /// The lenient-mode warnings, a JSON array.
    pub warnings: String,
    /// `http` or `internal`.
    pub source: String,
}

/// What the scripts made of one event, committed in one transaction with its actions.
#[derive(Debug, Clone)]
pub struct EventOutcome {
    pub event_id: EventId,
    pub status: EventStatus,
    /// The first plugin error, for `events list`.
    pub error: Option<String>,
    pub plugins: Vec<PluginRecord>,
    pub actions: Vec<Action>,
    /// Set for a replay: the event keeps its status, and its new actions carry the link.
    pub replayed_from: Option<EventId>,
}

/// One plugin's run on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PluginRecord {
    pub plugin: String,
    pub error: Option<String>,
    pub actions: usize,
}

/// A queued action and what became of it, for `events show`.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub id: String,
    pub plugin: String,
    pub kind: String,
    pub destination: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub replayed_from: Option<String>,
    pub action: serde_json::Value,
    pub attempt_log: Vec<Attempt>,
}

/// An action waiting to be sent, as delivery reads it.
#[derive(Debug, Clone)]
pub struct PendingAction {
    pub id: String,
    pub event_id: String,
    pub destination: String,
    pub action: Action,
    /// Fixed when the action was queued; the same on every attempt.
    pub idempotency_key: String,
    pub created_at: Millis,
    /// Attempts made so far.
    pub attempts: u32,
    /// When an attempt that may have reached the destination without an answer (a platform
    /// task creation) started; cleared by nothing but the action's end.
    pub in_flight_since: Option<Millis>,
}

/// One attempt, as `events show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub number: u32,
    pub at: Millis,
    pub duration_ms: u64,
    /// `sent`, `retry`, `skipped` or `dead`.
    pub outcome: String,
    pub error: Option<String>,
}

/// What delivery learned, recorded by the store in one transaction per batch.
#[derive(Debug, Clone)]
pub enum DeliveryUpdate {
    Sent {
        id: String,
        attempt: Attempt,
        result: Option<String>,
    },
    Retry {
        id: String,
        attempt: Attempt,
        due_at: Millis,
    },
    /// Given up: the action is dead-lettered and, unless it was queued while handling an
    /// `actionFailed`, an `actionFailed` event is stored for the scripts. A platform task
    /// gives its unit of the upgrade retry budget back, since no task was created.
    Dead { id: String, attempt: Attempt },
    /// Deliberately not sent (e.g. a failure the platform did not confirm); the attempt's
    /// error says why.
    Skipped { id: String, attempt: Attempt },
    /// An attempt that the destination may act on without answering is about to start; made
    /// durable first, so that a restart looks before it sends again.
    InFlight { id: String, at: Millis },
    /// The destination's breaker is open: its pending actions wait until `until`, and the wait
    /// does not count as an attempt.
    Deferred { destination: String, until: Millis },
    /// A probe got through: the destination's pending actions are due at once.
    Recovered { destination: String },
}

/// One dead letter, for `dead list` (JSON keys are SPEC.md's).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub event_id: String,
    pub kind: String,
    pub destination: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: String,
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub rejected: usize,
}

/// Storage for every stage. Implementations are used from one writer thread for writes (the
/// [`Intake`]) and from any thread for reads. Committed script state is read through the
/// [`StateView`] supertrait.
pub trait Store: StateView + Send + Sync + 'static {
    /// Stores `events` and `rejected` in one durable transaction: when this returns `Ok`, all of
    /// it survives a crash or power loss; on `Err`, none of it is stored. Duplicates (by hash,
    /// within the dedup window of the first copy, including copies within `events`) are not
    /// stored again.
    fn append(
        &self,
        events: &[NewEvent],
        rejected: &[RejectedBody],
    ) -> Result<Vec<Appended>, StoreError>;

    /// Proves the store can take a write lock now.
    fn probe(&self) -> Result<(), StoreError>;

    /// Deletes, at most `limit` rows at a time, finished events received before `before` whose
    /// actions are all settled, and rejected bodies received before it.
    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError>;

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError>;

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError>;

    /// One stored event as the scripts read it, for replays.
    fn stored_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError>;

    /// Pending events with `seq > after_seq`, in arrival order.
    fn pending_events(&self, after_seq: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// Records outcomes, inserts their actions and applies the state changes, in one durable
    /// transaction: all of it or none of it.
    fn record_outcomes(
        &self,
        outcomes: &[EventOutcome],
        changes: &StateChanges,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Destinations with actions due at `now`.
    fn due_destinations(&self, now: Millis) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` actions of `destination` due at `now`, the longest due first, leaving out
    /// those in `skip` (the ones being sent).
    fn due_actions(
        &self,
        destination: &str,
        now: Millis,
        limit: usize,
        skip: &HashSet<String>,
    ) -> Result<Vec<PendingAction>, StoreError>;

    /// When the next pending action falls due (cheap: called after every scheduling round).
    fn next_due(&self) -> Result<Option<Millis>, StoreError>;

    /// When the oldest pending action was queued (scans the pending actions: call it rarely).
    fn oldest_pending(&self) -> Result<Option<Millis>, StoreError>;

    /// Records delivery results in one durable transaction; returns how many `actionFailed`
    /// events were stored.
    fn record_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: Millis,
    ) -> Result<usize, StoreError>;

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Makes dead letters pending again, due now, with a fresh attempt count: one by id, or
    /// all. Returns how many.
    fn requeue_dead(&self, id: Option<&str>) -> Result<usize, StoreError>;

    /// Drops a dead letter (kept as `dropped` for the event's story). False if there is none.
    fn drop_dead(&self, id: &str) -> Result<bool, StoreError>;

    /// Stores what one writer round gathered. Each part is all or nothing on its own, as with
    /// [`Store::append`], [`Store::record_outcomes`] and [`Store::record_deliveries`]; a
    /// backend that can should commit a group in one durable transaction, so that a round
    /// costs one fsync and writes each page it touches once.
    fn write_group(&self, group: &WriteGroup<'_>) -> GroupWritten {
        write_separately(self, group)
    }

    /// The reads behind the dashboard's campaigns, for a backend that has them.
    fn campaign_view(&self) -> Option<&dyn campaigns::CampaignView> {
        None
    }
}

/// A script worker's batch: outcomes and the state changes that go with them.
pub struct OutcomeBatch<'a> {
    pub outcomes: &'a [EventOutcome],
    pub changes: &'a StateChanges,
}

/// What one writer round stores.
pub struct WriteGroup<'a> {
    pub events: &'a [NewEvent],
    pub rejected: &'a [RejectedBody],
    pub outcomes: &'a [OutcomeBatch<'a>],
    pub deliveries: &'a [DeliveryUpdate],
    pub now: Millis,
}

impl WriteGroup<'_> {
    /// A group with nothing in it, to fill in with struct update syntax.
    pub fn empty(now: Millis) -> WriteGroup<'static> {
        WriteGroup {
            events: &[],
            rejected: &[],
            outcomes: &[],
            deliveries: &[],
            now,
        }
    }
}

/// What became of each part of a [`WriteGroup`].
pub struct GroupWritten {
    pub appended: Result<Vec<Appended>, StoreError>,
    /// One result per batch of [`WriteGroup::outcomes`].
    pub outcomes: Vec<Result<(), StoreError>>,
    /// How many `actionFailed` events the delivery results raised.
    pub deliveries: Result<usize, StoreError>,
}

/// Stores each part of `group` in its own transaction, so one part's failure fails only it.
pub fn write_separately<S: Store + ?Sized>(store: &S, group: &WriteGroup<'_>) -> GroupWritten {
    let appended = if group.events.is_empty() && group.rejected.is_empty() {
        Ok(Vec::new())
    } else {
        store.append(group.events, group.rejected)
    };
    let outcomes = group
        .outcomes
        .iter()
        .map(|batch| store.record_outcomes(batch.outcomes, batch.changes, group.now))
        .collect();
    let deliveries = if group.deliveries.is_empty() {
        Ok(0)
    } else {
        store.record_deliveries(group.deliveries, group.now)
    };
    GroupWritten {
        appended,
        outcomes,
        deliveries,
    }
}
