//! What an attempt's [`Verdict`] means for the store: sent, a retry at a time, skipped, or
//! dead (given up after `max_attempts`), and the outcome label `/metrics` counts.

use std::time::Duration;

use super::retry::{Backoff, Verdict};
use crate::model::Millis;
use crate::store::{Attempt, AttemptOutcome, DeliveryUpdate, PendingAction};

pub struct Outcomes {
    pub backoff: Backoff,
    pub max_attempts: u32,
}

impl Outcomes {
    /// What to record of `pending`'s attempt that started `at`, took `took` and ended at
    /// `now` with `verdict`.
    pub fn update_for(
        &self,
        pending: &PendingAction,
        verdict: Verdict,
        (at, took): (Millis, Duration),
        now: Millis,
    ) -> DeliveryUpdate {
        let number = pending.attempts + 1;
        let attempt = |outcome, error: Option<String>| Attempt {
            number,
            at,
            duration_ms: took.as_millis() as u64,
            outcome,
            error,
        };
        let claim = pending.claim();
        match verdict {
            Verdict::Sent { result } => DeliveryUpdate::Sent {
                claim,
                attempt: attempt(AttemptOutcome::Sent, None),
                result,
            },
            Verdict::Retry { reason, .. } if number >= self.max_attempts => {
                let reason = format!("gave up after {number} attempts: {reason}");
                tracing::error!(action_id = %pending.id, destination = %pending.destination, error = %reason, "action dead-lettered");
                DeliveryUpdate::Dead {
                    claim,
                    attempt: attempt(AttemptOutcome::Dead, Some(reason)),
                }
            }
            Verdict::Retry { reason, after } => {
                let wait = self.backoff.wait(number, after);
                tracing::warn!(action_id = %pending.id, destination = %pending.destination, error = %reason, retry_in_ms = wait.as_millis() as u64, "delivery failed, retrying");
                let due_at = Millis(now.0.saturating_add(wait.as_millis() as i64));
                DeliveryUpdate::Retry {
                    claim,
                    attempt: attempt(AttemptOutcome::Retry, Some(reason)),
                    due_at,
                }
            }
            Verdict::Skipped { reason } => {
                tracing::info!(action_id = %pending.id, destination = %pending.destination, reason = %reason, "action skipped");
                DeliveryUpdate::Skipped {
                    claim,
                    attempt: attempt(AttemptOutcome::Skipped, Some(reason)),
                }
            }
            Verdict::Dead { reason } | Verdict::Unsendable { reason } => {
                tracing::error!(action_id = %pending.id, destination = %pending.destination, error = %reason, "action dead-lettered");
                DeliveryUpdate::Dead {
                    claim,
                    attempt: attempt(AttemptOutcome::Dead, Some(reason)),
                }
            }
        }
    }

    /// The `outcome` label of `notirouter_actions_total` for this verdict.
    pub fn label(&self, pending: &PendingAction, verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Sent { .. } => "sent",
            Verdict::Retry { .. } if pending.attempts + 1 >= self.max_attempts => "dead",
            Verdict::Retry { .. } => "retried",
            Verdict::Skipped { .. } => "skipped",
            Verdict::Dead { .. } | Verdict::Unsendable { .. } => "dead",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Action, ActionSpec, Chat};
    use crate::destination::Destination;
    use crate::store::Claimer;

    const AT: Millis = Millis(1_800_000_000_000);

    fn outcomes() -> Outcomes {
        Outcomes {
            backoff: Backoff {
                initial: Duration::from_secs(2),
                max: Duration::from_secs(60),
                retry_after_max: Duration::from_secs(10),
            },
            max_attempts: 3,
        }
    }

    fn pending(attempts: u32) -> PendingAction {
        PendingAction {
            id: "A1".to_owned(),
            claimed_by: Claimer::named("deliver"),
            event_id: "E1".to_owned(),
            destination: Destination::Channel("ops".to_owned()),
            action: Action {
                spec: ActionSpec::Chat(Chat {
                    channel: "ops".to_owned(),
                    text: Some("hi".to_owned()),
                    payload: None,
                }),
                plugin: "p.rhai".to_owned(),
            },
            idempotency_key: "A1".to_owned(),
            created_at: AT,
            attempts,
            in_flight_since: None,
        }
    }

    fn retry(after: Option<Duration>) -> Verdict {
        Verdict::Retry {
            reason: "HTTP 429".to_owned(),
            after,
        }
    }

    #[test]
    fn a_retry_after_is_due_that_long_after_the_answer_cut_to_the_maximum() {
        let ended = Millis(AT.0 + 250);
        let took = (AT, Duration::from_millis(250));
        for (asked, due) in [(3, 3_000), (60, 10_000)] {
            let update = outcomes().update_for(
                &pending(0),
                retry(Some(Duration::from_secs(asked))),
                took,
                ended,
            );
            let DeliveryUpdate::Retry {
                due_at, attempt, ..
            } = update
            else {
                panic!("{update:?}");
            };
            assert_eq!(due_at, Millis(ended.0 + due));
            assert_eq!(
                (attempt.number, attempt.at, attempt.duration_ms),
                (1, AT, 250)
            );
        }
    }

    #[test]
    fn the_last_allowed_attempt_that_fails_is_dead_with_the_count() {
        let update = outcomes().update_for(&pending(2), retry(None), (AT, Duration::ZERO), AT);
        let DeliveryUpdate::Dead { attempt, .. } = update else {
            panic!("{update:?}");
        };
        assert_eq!(attempt.outcome, AttemptOutcome::Dead);
        assert_eq!(
            attempt.error.as_deref(),
            Some("gave up after 3 attempts: HTTP 429")
        );
        assert_eq!(outcomes().label(&pending(2), &retry(None)), "dead");
        assert_eq!(outcomes().label(&pending(1), &retry(None)), "retried");
    }
}
