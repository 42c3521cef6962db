//! Durable storage. The [`Store`] trait is what the stages need; [`sqlite`] is the embedded
//! backend that `serve` uses by default, and a PostgreSQL backend can implement the same trait
//! for multi-instance deployments. [`Intake`] is the group-commit writer in front of a store:
//! many concurrent requests share one transaction and one fsync.
//!
//! No SQL lives outside this module.

mod actions;
pub mod campaigns;
mod claim;
mod intake;
mod open;
mod platform_state;
pub mod postgres;
pub mod rules;
pub mod sqlite;
mod wakeup;

use serde::Serialize;

use crate::action::Action;
use crate::destination::Destination;
use crate::model::state::{StateChanges, StateError, StateView};
use crate::model::{EventId, EventStatus, Millis};
use crate::notification::Problem;

pub use actions::{
    ActionRecord, ActionStatus, Attempt, AttemptOutcome, DeadLetter, DeliveryUpdate, PendingAction,
};
pub use claim::{ActionClaim, Claimer};
pub use intake::{Intake, IntakeError, IntakeMetrics, IntakeWriter, Signals};
pub use open::{Opener, open};
pub use platform_state::{CallLimit, PlatformToken};
pub use postgres::PgStore;
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
    /// The backend's own error, kept as its message and source: no backend's types leak out.
    #[error("store {context}: {source}")]
    Database {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot reach the database {target}: {reason}; check store.url and that PostgreSQL is up"
    )]
    Unreachable { target: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("stored data is damaged ({0}); restore the store from a backup")]
    Damaged(String),
    #[error(
        "the store's file system refused the WAL journal (journal mode {0}); put store.path on a local disk"
    )]
    NoWal(String),
    #[error("cannot start a store thread ({0}); check the process and thread limits")]
    Thread(std::io::Error),
    #[error("a store call panicked; this is a bug: report it with the log lines above")]
    Panicked,
    #[error(
        "script state that a batch read was changed by another claimer before it committed; the batch runs again"
    )]
    StateConflict,
    #[error("cannot read script state to check a batch: {0}")]
    StateUnreadable(String),
    #[error(
        "event {0} was claimed by another claimer (this one's lease ended); it runs there, and this run is dropped"
    )]
    ClaimLost(EventId),
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
    /// The claim the event was run under: the outcome is recorded only while it still holds.
    pub claimed_by: Option<Claimer>,
}

/// One plugin's run on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PluginRecord {
    pub plugin: String,
    pub error: Option<String>,
    pub actions: usize,
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
    ) -> Result<Vec<Appended>, StoreError> {
        let group = WriteGroup {
            events,
            rejected,
            ..WriteGroup::empty(Millis::now())
        };
        self.write_together(&group)?.appended
    }

    /// Stores the whole group in one durable transaction: all of it, or on `Err` none of it.
    /// The writes of every stage are made of it.
    fn write_together(&self, group: &WriteGroup<'_>) -> Result<GroupWritten, StoreError>;

    /// Proves the store can take a write lock now.
    fn probe(&self) -> Result<(), StoreError>;

    /// What the store is and that it works, in one line for `doctor`: it opens, takes writes
    /// and has what the backend needs (a journal, a server version, permissions).
    fn describe(&self) -> Result<String, StoreError>;

    /// Deletes, at most `limit` rows at a time, finished events received before `before` whose
    /// actions are all settled, and rejected bodies received before it.
    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError>;

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError>;

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError>;

    /// One stored event as the scripts read it, for replays.
    fn stored_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError>;

    /// Claims up to `limit` pending events for `by`, in arrival order, for the store's lease
    /// from `now`: those no one holds, those whose lease has ended, and those `by` holds
    /// already (a claimer that failed to commit takes its own again). An event is left out
    /// while an earlier pending event of its `deviceId` is held by another claimer or left
    /// out, so each device's events run in order whoever runs them. Two claimers never both
    /// get an event while its lease runs.
    fn claim_events(
        &self,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Ends every claim a stopped instance may have left, when the backend can know that no
    /// other instance holds one (an embedded store serves one instance); a shared backend
    /// leaves them to their leases. Called once as `serve` starts.
    fn release_stale_claims(&self) -> Result<(), StoreError>;

    /// Wakes `signals` when another instance commits work for this one (new events, actions
    /// due now), for a backend that several instances share; the stages poll anyway, so this
    /// only makes them quicker. Called once as `serve` starts.
    fn watch_others(&self, _signals: &Signals) {}

    /// Records outcomes, inserts their actions and applies the state changes, in one durable
    /// transaction: all of it or none of it. Fails with [`StoreError::ClaimLost`] when an
    /// outcome's claim no longer holds.
    fn record_outcomes(
        &self,
        outcomes: &[EventOutcome],
        changes: &StateChanges,
        now: Millis,
    ) -> Result<(), StoreError> {
        let group = WriteGroup {
            outcomes: &[OutcomeBatch { outcomes, changes }],
            ..WriteGroup::empty(now)
        };
        self.write_together(&group).map(drop)
    }

    /// Destinations with actions due at `now`.
    fn due_destinations(&self, now: Millis) -> Result<Vec<Destination>, StoreError>;

    /// Claims for `by`, for the store's lease from `now`, up to `limit` actions of
    /// `destination` due at `now` that no one holds (or whose lease has ended), the longest
    /// due first.
    fn claim_due_actions(
        &self,
        destination: &Destination,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<PendingAction>, StoreError>;

    /// Extends, for the store's lease from `now`, the claims that `by` still holds among `ids`
    /// (actions whose sends are still running); returns how many it extended. A claim already
    /// taken over, or ended by a result, is left alone.
    fn renew_action_claims(
        &self,
        by: &Claimer,
        ids: &[String],
        now: Millis,
    ) -> Result<usize, StoreError>;

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
    ) -> Result<usize, StoreError> {
        let group = WriteGroup {
            deliveries: updates,
            ..WriteGroup::empty(now)
        };
        self.write_together(&group)?.deliveries
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Makes dead letters pending again, due now, with a fresh attempt count: one by id, or
    /// all. Returns how many.
    fn requeue_dead(&self, id: Option<&str>) -> Result<usize, StoreError>;

    /// Drops a dead letter (kept as `dropped` for the event's story). False if there is none.
    fn drop_dead(&self, id: &str) -> Result<bool, StoreError>;

    /// True for a backend where writers in several threads commit at once without waiting
    /// for each other (a database server): the [`Intake`] then lets script outcomes and
    /// delivery results be written by their callers. An embedded store with one write lock
    /// says false, and every write goes through the one writer's group commit.
    fn takes_concurrent_writers(&self) -> bool {
        false
    }

    /// Stores what one writer round gathered, in one transaction ([`Store::write_together`]),
    /// so that a round costs one commit; if that fails, each part alone, so that one part's
    /// failure (a batch whose state changed, say) fails only it.
    fn write_group(&self, group: &WriteGroup<'_>) -> GroupWritten {
        self.write_together(group).unwrap_or_else(|error| {
            // A batch that read changed state is refused by design: not worth a warning.
            match error {
                StoreError::StateConflict => {
                    tracing::debug!(%error, "a write group failed; storing its parts one by one")
                }
                _ => tracing::warn!(%error, "a write group failed; storing its parts one by one"),
            }
            write_separately(self, group)
        })
    }

    /// The platform token that every instance of platform app `app` uses, if one was stored.
    fn platform_token(&self, app: &str) -> Result<Option<PlatformToken>, StoreError>;

    /// Takes the lock on renewing `app`'s token for `by` until `until`: true when no other
    /// claimer holds it at `now` (free, its lease ended, or `by` holds it already). Two
    /// claimers never both get it while its lease runs. The holder logs in or refreshes, then
    /// stores the token with [`Store::store_platform_token`] (or gives the lock up with
    /// [`Store::release_token_renewal`]); the others wait and read the token it stored.
    fn claim_token_renewal(
        &self,
        app: &str,
        by: &Claimer,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError>;

    /// Stores `token` as `app`'s token and ends `by`'s renewal lock, unless another claimer
    /// holds the lock at `now` (then nothing changes: that claimer's login revokes `token`
    /// anyway). Returns whether it was stored.
    fn store_platform_token(
        &self,
        app: &str,
        by: &Claimer,
        token: &PlatformToken,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Ends `by`'s renewal lock on `app`'s token, when it holds it (a renewal that failed).
    fn release_token_renewal(&self, app: &str, by: &Claimer) -> Result<(), StoreError>;

    /// Reserves the start of one call to `app`, atomically: the earliest time at or after
    /// `now` that keeps every window within `limit` counting the starts every claimer
    /// reserved ([`CallLimit::next_start`]), recorded before it is returned. Reservers
    /// together never exceed the limit; each waits for its start on its own.
    fn reserve_platform_call(
        &self,
        app: &str,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, StoreError>;

    /// Turns up to `limit` digests whose window ended by `now` (earliest end first) into
    /// internal events ([`rules::digest_event`]) and deletes them, in one durable
    /// transaction: each ended digest becomes exactly one event, whichever claimer fires it
    /// and however often. Returns how many it fired. Digests are opened and filled by
    /// [`StateChanges::digests`], applied by [`Store::record_outcomes`] to the digest open
    /// when it commits (adding at most [`crate::model::state::DIGEST_ITEMS`] items in all,
    /// counting every one in its total), or opening one that ends at the addition's
    /// [`ends_at`](crate::model::state::DigestAddition::ends_at).
    fn fire_ended_digests(&self, now: Millis, limit: usize) -> Result<usize, StoreError>;

    /// When the earliest open digest ends (cheap: one indexed read).
    fn next_digest_end(&self) -> Result<Option<Millis>, StoreError>;

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

/// Refuses a batch whose run read committed state that `now` (the state inside the commit's
/// transaction, with the group's earlier batches applied) no longer holds: another claimer
/// changed it, so the run's decisions may be wrong, and it must run again.
pub fn check_reads(changes: &StateChanges, now: &dyn StateView) -> Result<(), StoreError> {
    for (key, read) in &changes.reads {
        let current = key
            .read(now)
            .map_err(|StateError(reason)| StoreError::StateUnreadable(reason))?;
        if current != *read {
            return Err(StoreError::StateConflict);
        }
    }
    Ok(())
}
