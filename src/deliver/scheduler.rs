//! The scheduler: claims due actions per destination, as many as [`Slots`] allow, sends each
//! as a task and records its result through the store's writer.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::breaker::Change;
use super::clock::Clock;
use super::outcome::Outcomes;
use super::retry::Verdict;
use super::send::Sender;
use super::slots::Slots;
use crate::destination::Destination;
use crate::metrics::Metrics;
use crate::model::Millis;
use crate::store::{Claimer, Intake, PendingAction, Store, StoreError};

/// The longest the scheduler sleeps: retries fall due, and CLI commands re-queue dead letters,
/// without anyone waking it.
const MAX_IDLE: Duration = Duration::from_secs(1);

pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub intake: Intake,
    pub sender: Sender,
    pub metrics: Arc<Metrics>,
    pub queued: Arc<Notify>,
    pub outcomes: Outcomes,
    pub slots: Slots,
    /// The claims this instance's sends hold in the store.
    pub claimer: Claimer,
    pub clock: Arc<dyn Clock>,
    /// The actions being sent, whose claims are renewed every `renew_every` (a third of the
    /// lease), so that a send that takes longer than the lease (a platform task creation that
    /// waits out throttling) keeps its claim while this instance lives.
    pub sending: Mutex<HashSet<String>>,
    pub renew_every: Duration,
}

impl Scheduler {
    /// A full round (every destination with due actions) runs when actions are queued and
    /// when the next one falls due; a finished send only refills its own destination, so that
    /// draining a large backlog costs one indexed claim per send, not a scan of the backlog.
    pub async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut sends: JoinSet<Destination> = JoinSet::new();
        let mut next_round = tokio::time::Instant::now();
        let mut next_gauge = tokio::time::Instant::now();
        let mut next_renewal = tokio::time::Instant::now() + self.renew_every;
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_round {
                let idle = self.round(&mut sends).await.unwrap_or_else(|error| {
                    tracing::error!(%error, "delivery cannot read the store; retrying");
                    MAX_IDLE
                });
                next_round = now + idle;
            }
            if now >= next_gauge {
                self.measure_oldest_pending().await;
                next_gauge = now + MAX_IDLE;
            }
            if now >= next_renewal {
                self.renew_claims().await;
                next_renewal = now + self.renew_every;
            }
            let wake = next_round.min(next_gauge).min(next_renewal);
            tokio::select! {
                _ = stopped.changed() => break,
                _ = self.queued.notified() => next_round = tokio::time::Instant::now(),
                _ = tokio::time::sleep_until(wake) => {}
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    self.refill_after(done, &mut sends).await;
                }
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// Refills the destinations of `first` and of every other send that has finished too, each
    /// once: under load sends finish in bunches, and one claim refills a bunch.
    async fn refill_after(
        self: &Arc<Self>,
        first: Result<Destination, tokio::task::JoinError>,
        sends: &mut JoinSet<Destination>,
    ) {
        let mut finished = BTreeSet::new();
        let mut done = Some(first);
        while let Some(result) = done {
            // A send that panicked (a bug, logged by tokio) names no destination to refill.
            if let Ok(destination) = result {
                finished.insert(destination);
            }
            done = sends.try_join_next();
        }
        for destination in finished {
            if let Err(error) = self.fill(&destination, self.clock.now(), sends).await {
                tracing::error!(%error, "delivery cannot read the store; retrying");
            }
        }
    }

    /// Starts every send that may go now; returns how long to sleep: until the next action
    /// falls due or the first open breaker reopens, whichever is earlier.
    async fn round(
        self: &Arc<Self>,
        sends: &mut JoinSet<Destination>,
    ) -> Result<Duration, StoreError> {
        let now = self.clock.now();
        for destination in self
            .blocking(move |store| store.due_destinations(now))
            .await?
        {
            self.fill(&destination, now, sends).await?;
        }
        let next_due = self.blocking(|store| store.next_due()).await?;
        // Actions already due that this round could not start wait for a slot (a finished
        // send refills its destination) or for their breaker to reopen.
        let now = self.clock.now();
        let until_due = match next_due {
            Some(due) if due > now => Duration::from_millis(due.0.saturating_sub(now.0) as u64),
            _ => MAX_IDLE,
        };
        let idle = self
            .slots
            .until_a_breaker_reopens(self.clock.instant(), until_due);
        Ok(idle.clamp(Duration::from_millis(5), MAX_IDLE))
    }

    /// Claims and starts as many due actions of `destination` as its slots allow.
    async fn fill(
        self: &Arc<Self>,
        destination: &Destination,
        now: Millis,
        sends: &mut JoinSet<Destination>,
    ) -> Result<(), StoreError> {
        let Some(take) = self.slots.admit(destination, self.clock.instant()) else {
            return Ok(());
        };
        let (key, by) = (destination.to_owned(), self.claimer.clone());
        let due = self
            .blocking(move |store| store.claim_due_actions(&key, &by, take, now))
            .await;
        let claimed = due.as_ref().map_or(0, Vec::len);
        self.slots
            .started(destination, claimed, self.clock.instant());
        for pending in due.iter().flatten() {
            self.sending().insert(pending.id.clone());
            sends.spawn(Arc::clone(self).deliver(pending.clone()));
        }
        due.map(drop)
    }

    /// Extends the claims of the sends still running.
    async fn renew_claims(&self) {
        let ids: Vec<String> = self.sending().iter().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let (by, now) = (self.claimer.clone(), self.clock.now());
        let renewed = self
            .blocking(move |store| store.renew_action_claims(&by, &ids, now))
            .await;
        if let Err(error) = renewed {
            tracing::warn!(%error, "cannot renew the claims of running sends; another instance may send them again once their lease ends");
        }
    }

    fn sending(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set is only inserted into and removed from: a panic cannot leave it half-changed.
        self.sending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn measure_oldest_pending(&self) {
        match self.blocking(|store| store.oldest_pending()).await {
            Ok(oldest) => {
                let age = oldest.map(|queued| self.clock.now().0.saturating_sub(queued.0));
                self.metrics.oldest_pending_action(age);
            }
            Err(error) => tracing::warn!(%error, "cannot measure the oldest pending action"),
        }
    }

    /// Sends one action, records the result, then frees its slot; returns its destination.
    async fn deliver(self: Arc<Self>, pending: PendingAction) -> Destination {
        let started = self.clock.instant();
        let at_start = self.clock.now();
        let guard = self.sender.time_limit(&pending.action);
        let verdict = tokio::time::timeout(guard, self.sender.send(&pending))
            .await
            .unwrap_or_else(|_| Verdict::Retry {
                reason: "timed out".to_owned(),
                after: None,
            });
        let took = self.clock.instant().saturating_duration_since(started);
        let update = self.outcomes.update_for(
            &pending,
            verdict.clone(),
            (at_start, took),
            self.clock.now(),
        );
        if let Err(error) = self.intake.record_deliveries(vec![update]).await {
            tracing::error!(%error, action_id = %pending.id, "cannot record a delivery; it will be sent again");
        }
        self.sending().remove(&pending.id);
        self.count(&pending, &verdict);
        let change = self
            .slots
            .finished(&pending.destination, &verdict, self.clock.instant());
        if change == Change::Recovered {
            // The held actions are due already: the refill after this send takes them, each
            // at its own due time.
            tracing::info!(destination = %pending.destination, "destination recovered");
        }
        pending.destination
    }

    fn count(&self, pending: &PendingAction, verdict: &Verdict) {
        let kind = pending.action.kind();
        if let Verdict::Sent { .. } = verdict {
            let waited = self
                .clock
                .now()
                .0
                .saturating_sub(pending.created_at.0)
                .max(0);
            self.metrics
                .action_delivered(kind, Duration::from_millis(waited as u64));
        }
        let outcome = self.outcomes.label(pending, verdict);
        self.metrics
            .action(kind, pending.destination.label(), outcome);
    }

    /// Runs a store call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || call(&*store))
            .await
            .unwrap_or_else(|_| Err(StoreError::Panicked))
    }
}
