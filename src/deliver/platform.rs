//! Platform actions: a queued `retry_upgrade` becomes an upgrade task at the platform.
//!
//! The platform has no idempotency key, so an attempt is recorded as in flight (durably)
//! before the task is created; an attempt that finds that mark looks for the task an earlier
//! attempt may have created before creating one. With `verify_before_retry` the reported
//! failure is first confirmed at the platform; an unconfirmed one is skipped.

use std::sync::Arc;

use super::retry::Verdict;
use crate::action::PlatformOp;
use crate::model::{EventId, Millis};
use crate::platform::{Confirmation, Platform, PlatformError, ReportedFailure, UpgradeKind};
use crate::store::{DeliveryUpdate, Intake, PendingAction, Store};

pub(crate) struct PlatformSender {
    pub(crate) platform: Arc<Platform>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) intake: Intake,
    pub(crate) verify: bool,
}

impl PlatformSender {
    pub(crate) async fn send(&self, op: &PlatformOp, pending: &PendingAction) -> Verdict {
        self.retry_upgrade(op, pending)
            .await
            .unwrap_or_else(|error| verdict_of(&error))
    }

    async fn retry_upgrade(
        &self,
        op: &PlatformOp,
        pending: &PendingAction,
    ) -> Result<Verdict, PlatformError> {
        let Some(kind) = UpgradeKind::of(&op.notify_type) else {
            let reason = format!("{:?} is not an upgrade result", op.notify_type);
            return Ok(Verdict::Unsendable { reason });
        };
        if let Some(since) = pending.in_flight_since
            && let Some(found) = self.platform.find_task(kind, &op.device_id, since).await?
        {
            tracing::info!(action_id = %pending.id, operation_id = %found, "an earlier attempt created the task");
            return Ok(Verdict::Sent {
                result: Some(found),
            });
        }
        if self.verify {
            let Some(failure) = self.reported_failure(&pending.event_id).await else {
                let reason = "cannot read the notification to verify it".to_owned();
                return Ok(Verdict::Retry {
                    reason,
                    after: None,
                });
            };
            let confirmation = self
                .platform
                .confirm_failure(&op.device_id, &failure)
                .await?;
            if let Confirmation::Unconfirmed(reason) = confirmation {
                return Ok(Verdict::Skipped { reason });
            }
        }
        let file_id = match &op.file_id {
            Some(file_id) => file_id.clone(),
            None => self.platform.file_id(kind, &op.target_version).await?,
        };
        let mark = DeliveryUpdate::InFlight {
            claim: pending.claim(),
            at: Millis::now(),
        };
        if let Err(error) = self.intake.record_deliveries(vec![mark]).await {
            let reason = format!("cannot record the attempt before creating the task: {error}");
            return Ok(Verdict::Retry {
                reason,
                after: None,
            });
        }
        let operation_id = self.platform.create_task(kind, &file_id, op).await?;
        Ok(Verdict::Sent {
            result: Some(operation_id),
        })
    }

    /// The identifiers of the failure, from the notification the action answers: empty when
    /// the notification is gone (it is then not confirmed), `None` when the store cannot be
    /// read now.
    async fn reported_failure(&self, event_id: &str) -> Option<ReportedFailure> {
        let Ok(id) = event_id.parse::<EventId>() else {
            return Some(ReportedFailure::default());
        };
        let store = Arc::clone(&self.store);
        let event = tokio::task::spawn_blocking(move || store.stored_event(id))
            .await
            .ok()?
            .ok()?;
        let body: serde_json::Value = event
            .and_then(|event| serde_json::from_slice(&event.body).ok())
            .unwrap_or_default();
        let text = |key: &str| body[key].as_str().map(str::to_owned);
        Some(ReportedFailure {
            app_id: text("appId"),
            operation_id: text("operationId"),
            sub_operation_id: text("subOperationId"),
        })
    }
}

/// Retried when asking again may help (after the platform's pause, for throttling); dead
/// otherwise, with the error that says what to fix.
fn verdict_of(error: &PlatformError) -> Verdict {
    let reason = error.to_string();
    match error.is_retryable() {
        true => Verdict::Retry {
            reason,
            after: error.retry_after(),
        },
        false => Verdict::Dead { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_waits_a_window_and_refusals_are_dead() {
        let throttled = verdict_of(&PlatformError::Throttled);
        assert!(
            matches!(throttled, Verdict::Retry { after: Some(after), .. } if after.as_secs() == 60)
        );
        let refused = PlatformError::Refused {
            status: 400,
            code: "123002".into(),
            desc: "x".into(),
        };
        assert!(
            matches!(verdict_of(&refused), Verdict::Dead { reason } if reason.contains("123002"))
        );
        let down = PlatformError::Server {
            status: 502,
            code: "none".into(),
            desc: String::new(),
        };
        assert!(matches!(
            verdict_of(&down),
            Verdict::Retry { after: None, .. }
        ));
    }
}
