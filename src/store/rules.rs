//! What happens when an action ends or is queued again, the same on every backend: a backend
//! reads the rows, asks these rules, and writes what they say. No rule lives in SQL.

use serde_json::{Value, json};

use super::{Attempt, StoreError};
use crate::action::{Action, ActionSpec};
use crate::model::state::DigestKey;
use crate::model::{EventId, Millis};
use crate::notification::canonical_hash;

/// A dead-lettered action, as the rules need it.
pub struct DeadAction<'a> {
    pub id: &'a str,
    pub event_id: EventId,
    /// The action as stored (SPEC.md's action JSON).
    pub action: &'a Action,
    /// The `source` of the event that queued it: `http` or `internal`.
    pub event_source: &'a str,
}

/// An event the store raises itself, for the scripts (`meta.source = "internal"`).
pub struct InternalEvent {
    pub received_at: Millis,
    pub notify_type: &'static str,
    pub body: Vec<u8>,
    pub hash: [u8; 32],
}

/// The `actionFailed` event for a dead action, unless the action was itself queued while
/// handling an internal event (reporting that one would loop).
pub fn action_failed(
    dead: &DeadAction<'_>,
    attempt: &Attempt,
    now: Millis,
) -> Option<InternalEvent> {
    if dead.event_source != "http" {
        return None;
    }
    let body = json!({
        "notifyType": "actionFailed",
        "action": dead.action,
        "error": attempt.error,
        "attempts": attempt.number,
        "eventId": dead.event_id.to_string(),
        "actionId": dead.id,
    });
    Some(InternalEvent {
        received_at: now,
        notify_type: "actionFailed",
        body: serde_json::to_vec(&body).expect("a JSON value serialises"),
        hash: canonical_hash(&body),
    })
}

/// A digest whose window ended, as the store read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedDigest {
    pub key: DigestKey,
    pub opened_at: Millis,
    /// The first items, each as JSON text, in the order added.
    pub items: Vec<String>,
    pub total: i64,
}

/// The notification type of the internal event that runs a plugin's `on_digest`.
pub const DIGEST: &str = "digest";

/// The internal event that runs the digest's plugin's `on_digest`:
/// `{"notifyType":"digest","plugin","key","items":[...],"total","openedAt"}`.
pub fn digest_event(digest: &EndedDigest, now: Millis) -> Result<InternalEvent, StoreError> {
    let items = digest
        .items
        .iter()
        .map(|item| serde_json::from_str(item))
        .collect::<Result<Vec<Value>, _>>()
        .map_err(|error| {
            StoreError::Damaged(format!(
                "digest {:?} of {} has an item that is not JSON: {error}",
                digest.key.key, digest.key.plugin
            ))
        })?;
    let body = json!({
        "notifyType": DIGEST,
        "plugin": digest.key.plugin,
        "key": digest.key.key,
        "items": items,
        "total": digest.total,
        "openedAt": digest.opened_at.to_rfc3339(),
    });
    Ok(InternalEvent {
        received_at: now,
        notify_type: DIGEST,
        body: serde_json::to_vec(&body).expect("a JSON value serialises"),
        hash: canonical_hash(&body),
    })
}

/// The upgrade budget an action took when it was queued, as (device, target version): a
/// platform task. A dead one gives its unit back (no task was created; never below zero); a
/// dead one queued again by the operator takes it again, even past the budget, since the
/// operator asked. A skipped one keeps it.
pub fn budget_taken(action: &Action) -> Option<(&str, &str)> {
    match &action.spec {
        ActionSpec::Platform(op) => Some((&op.device_id, &op.target_version)),
        ActionSpec::Email(_) | ActionSpec::Chat(_) | ActionSpec::Webhook(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Chat, PlatformOp};

    fn attempt() -> Attempt {
        Attempt {
            number: 3,
            at: Millis(1),
            duration_ms: 2,
            outcome: crate::store::AttemptOutcome::Dead,
            error: Some("HTTP 400".to_owned()),
        }
    }

    fn chat() -> Action {
        Action {
            spec: ActionSpec::Chat(Chat {
                channel: "ops".to_owned(),
                text: Some("hi".to_owned()),
                payload: None,
            }),
            plugin: "p.rhai".to_owned(),
        }
    }

    #[test]
    fn only_actions_of_pushed_events_raise_action_failed() {
        let action = chat();
        let event_id = EventId::from_parts(Millis(5), 7);
        let dead = |event_source| DeadAction {
            id: "A1",
            event_id,
            action: &action,
            event_source,
        };
        let raised = action_failed(&dead("http"), &attempt(), Millis(9)).expect("raised");
        let body: serde_json::Value = serde_json::from_slice(&raised.body).unwrap();
        assert_eq!(body["notifyType"], "actionFailed");
        assert_eq!(body["actionId"], "A1");
        assert_eq!(body["eventId"], event_id.to_string());
        assert_eq!(body["attempts"], 3);
        assert_eq!(body["error"], "HTTP 400");
        assert_eq!(body["action"]["kind"], "chat");
        assert_eq!(raised.hash, canonical_hash(&body));
        assert!(action_failed(&dead("internal"), &attempt(), Millis(9)).is_none());
    }

    #[test]
    fn only_platform_tasks_take_budget() {
        let task = Action {
            spec: ActionSpec::Platform(PlatformOp::retry_upgrade(
                "dev-1",
                "swUpgradeResultNotify",
                "1.5",
            )),
            plugin: "p.rhai".to_owned(),
        };
        assert_eq!(budget_taken(&task), Some(("dev-1", "1.5")));
        assert_eq!(budget_taken(&chat()), None);
    }
}
