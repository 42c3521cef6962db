//! What the store keeps of actions: their records for `events show` and `dead list`, a claimed
//! action as delivery reads it, and what delivery reports back.

use serde::Serialize;

use super::{ActionClaim, Claimer};
use crate::action::Action;
use crate::destination::Destination;
use crate::model::Millis;

/// A queued action and what became of it, for `events show`.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub id: String,
    pub plugin: String,
    pub kind: String,
    pub destination: Destination,
    pub status: ActionStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub replayed_from: Option<String>,
    pub action: serde_json::Value,
    pub attempt_log: Vec<Attempt>,
}

/// An action claimed for sending, as delivery reads it.
#[derive(Debug, Clone)]
pub struct PendingAction {
    pub id: String,
    /// Who holds the claim; results are recorded under it.
    pub claimed_by: Claimer,
    pub event_id: String,
    pub destination: Destination,
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

impl PendingAction {
    /// The claim its results are recorded under.
    pub fn claim(&self) -> ActionClaim {
        ActionClaim {
            id: self.id.clone(),
            by: self.claimed_by.clone(),
        }
    }
}

/// Where an action is in its life; shown (and sent in JSON) as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionStatus {
    /// Waiting for its due time, or being sent.
    Pending,
    Sent,
    /// Deliberately not sent; its last error says why.
    Skipped,
    /// Given up on: a dead letter, until retried or dropped.
    Dead,
    /// A dead letter the operator dropped.
    Dropped,
}

impl ActionStatus {
    pub const ALL: [ActionStatus; 5] = [
        ActionStatus::Pending,
        ActionStatus::Sent,
        ActionStatus::Skipped,
        ActionStatus::Dead,
        ActionStatus::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Sent => "sent",
            ActionStatus::Skipped => "skipped",
            ActionStatus::Dead => "dead",
            ActionStatus::Dropped => "dropped",
        }
    }

    /// True once it ended without being sent (a dead letter may still be retried).
    pub fn ended_unsent(self) -> bool {
        matches!(
            self,
            ActionStatus::Skipped | ActionStatus::Dead | ActionStatus::Dropped
        )
    }
}

impl std::fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ActionStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ActionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("unknown action status {text:?}"))
    }
}

/// One attempt, as `events show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub number: u32,
    pub at: Millis,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// What became of one attempt; stored and shown as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Sent,
    Retry,
    Skipped,
    Dead,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Skipped => "skipped",
            AttemptOutcome::Dead => "dead",
        }
    }
}

impl std::str::FromStr for AttemptOutcome {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            AttemptOutcome::Sent,
            AttemptOutcome::Retry,
            AttemptOutcome::Skipped,
            AttemptOutcome::Dead,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == text)
        .ok_or_else(|| format!("unknown attempt outcome {text:?}"))
    }
}

/// What delivery learned, recorded by the store in one transaction per batch. Each update
/// applies only while its claim holds (a claimer that lost its lease records nothing); all but
/// [`DeliveryUpdate::InFlight`] end the claim.
#[derive(Debug, Clone)]
pub enum DeliveryUpdate {
    Sent {
        claim: ActionClaim,
        attempt: Attempt,
        result: Option<String>,
    },
    Retry {
        claim: ActionClaim,
        attempt: Attempt,
        due_at: Millis,
    },
    /// Given up: the action is dead-lettered and, unless it was queued while handling an
    /// `actionFailed`, an `actionFailed` event is stored for the scripts. A platform task
    /// gives its unit of the upgrade retry budget back, since no task was created.
    Dead {
        claim: ActionClaim,
        attempt: Attempt,
    },
    /// Deliberately not sent (e.g. a failure the platform did not confirm); the attempt's
    /// error says why.
    Skipped {
        claim: ActionClaim,
        attempt: Attempt,
    },
    /// An attempt that the destination may act on without answering is about to start; made
    /// durable first, so that a restart looks before it sends again.
    InFlight { claim: ActionClaim, at: Millis },
}

/// One dead letter, for `dead list` (JSON keys are SPEC.md's).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub event_id: String,
    pub kind: String,
    pub destination: Destination,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: String,
}
