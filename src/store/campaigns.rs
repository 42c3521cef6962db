//! The read side behind the dashboard's campaign view: upgrade notifications and platform
//! actions in an order that nothing committed later can land behind, so that the counting in
//! [`crate::campaign`] can catch up from where it left off with one indexed range query and
//! count every row once.

use crate::model::Millis;
use crate::store::{ActionStatus, StoreError};

/// The notification types that belong to upgrade campaigns.
pub const UPGRADE_TYPES: [&str; 4] = [
    "swUpgradeStateChangeNotify",
    "swUpgradeResultNotify",
    "fwUpgradeStateChangeNotify",
    "fwUpgradeResultNotify",
];

/// One stored upgrade notification.
#[derive(Debug, Clone)]
pub struct UpgradeRow {
    /// Arrival order.
    pub seq: i64,
    /// Its place in the order the catch-up reads in: the cursor to read on from.
    pub position: EventCursor,
    pub received_at: Millis,
    pub notify_type: String,
    pub body: Vec<u8>,
}

/// One platform action, as queued.
#[derive(Debug, Clone)]
pub struct PlatformActionRow {
    pub id: String,
    pub created_at: Millis,
    /// The stored Action JSON.
    pub payload: String,
    /// Its place in the order the catch-up reads in: the cursor to read on from.
    pub position: ActionCursor,
}

/// Where a platform action stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionState {
    pub id: String,
    pub status: ActionStatus,
    /// What the platform answered: the task's `operationId` once sent.
    pub result: Option<String>,
}

/// A place in the order a backend reads upgrade notifications in; the default is before
/// every one. Only a backend makes one and reads it, so that each can order by what makes a
/// row that commits later never land behind a place already read: arrival alone where one
/// writer commits in arrival order (SQLite), the writing transaction first where transactions
/// commit out of order (PostgreSQL). Places compare in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    /// The writing transaction's place, where it comes first; 0 where arrival alone orders.
    pub(super) tx: i64,
    pub(super) seq: i64,
}

/// A place in the order a backend reads platform actions in (as [`EventCursor`]); the default
/// is before every one.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ActionCursor {
    /// What orders first: the time queued (SQLite) or the writing transaction (PostgreSQL).
    pub(super) order: i64,
    pub(super) id: String,
}

/// Reads for the campaign view; implemented by each backend next to its [`super::Store`].
///
/// Catching up is reading on from a cursor: a row a later read returns is never behind a
/// cursor an earlier read returned, however the writers' transactions overlap; a backend may
/// hold back a row that committed while an older transaction still runs (it comes with a
/// later read).
pub trait CampaignView: Send + Sync {
    /// Up to `limit` upgrade notifications after `after`, in the backend's order.
    fn upgrade_events_after(
        &self,
        after: &EventCursor,
        limit: usize,
    ) -> Result<Vec<UpgradeRow>, StoreError>;

    /// Where the upgrade notification of arrival number `seq` is in the catch-up's order, to
    /// tell whether a cursor has passed it: `None` when there is none. A backend that orders
    /// by arrival alone answers without reading (and `Some` even where there is none).
    fn upgrade_event_position(&self, seq: i64) -> Result<Option<EventCursor>, StoreError>;

    /// The upgrade notification of arrival number `seq`, if there is one.
    fn upgrade_event(&self, seq: i64) -> Result<Option<UpgradeRow>, StoreError>;

    /// Up to `limit` platform actions queued after `after`, in the backend's order.
    fn platform_actions_after(
        &self,
        after: &ActionCursor,
        limit: usize,
    ) -> Result<Vec<PlatformActionRow>, StoreError>;

    /// The current state of the actions in `ids` (unknown ids are left out).
    fn action_states(&self, ids: &[String]) -> Result<Vec<ActionState>, StoreError>;
}
