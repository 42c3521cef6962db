//! The read side behind the dashboard's campaign view: upgrade notifications and platform
//! actions in the order they were stored, so that the counting in [`crate::campaign`] can
//! catch up from where it left off with one indexed range query.

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
    /// Arrival order: the catch-up cursor.
    pub seq: i64,
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
}

/// Where a platform action stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionState {
    pub id: String,
    pub status: ActionStatus,
    /// What the platform answered: the task's `operationId` once sent.
    pub result: Option<String>,
}

/// The position after the last platform action read: actions are read in
/// (`created_at`, `id`) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionCursor {
    pub created_at: Millis,
    pub id: String,
}

impl ActionCursor {
    /// Before every action.
    pub fn start() -> ActionCursor {
        ActionCursor {
            created_at: Millis(0),
            id: String::new(),
        }
    }
}

/// Reads for the campaign view; implemented by each backend next to its [`super::Store`].
pub trait CampaignView: Send + Sync {
    /// Up to `limit` upgrade notifications with `seq > after_seq`, in arrival order.
    fn upgrade_events_after(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<UpgradeRow>, StoreError>;

    /// Up to `limit` platform actions queued after `after`, in (`created_at`, `id`) order.
    fn platform_actions_after(
        &self,
        after: &ActionCursor,
        limit: usize,
    ) -> Result<Vec<PlatformActionRow>, StoreError>;

    /// The current state of the actions in `ids` (unknown ids are left out).
    fn action_states(&self, ids: &[String]) -> Result<Vec<ActionState>, StoreError>;
}
