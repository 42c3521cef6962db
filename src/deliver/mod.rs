//! Delivery: actions queued by the scripts reach people, at least once.
//!
//! A scheduler on its own tokio runtime wakes when actions are queued (or at the earliest due
//! time, at most a second later), and for each destination with due actions claims in the
//! store as many as its concurrency limit and circuit breaker allow. Each send is a task; its
//! result is recorded through the store's writer (sent, retry at a time, or dead), which ends
//! the claim. A claim keeps every other claimer (another instance, or this one's next round)
//! off the action until its lease ends, so an action whose claimer died is sent again, with
//! the same idempotency key, by whoever claims it next. Destinations are independent: a slow
//! or broken one holds only its own slots.

mod breaker;
mod email;
mod payload;
mod platform;
mod retry;
mod send;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::config::{Config, DeliveryConfig};
use crate::metrics::Metrics;
use crate::model::Millis;
use crate::platform::Platform;
use crate::store::{Attempt, Claimer, DeliveryUpdate, Intake, PendingAction, Store, StoreError};
use breaker::{Admission, Breaker, Change};
pub use email::MailerError;
use platform::PlatformSender;
use retry::{Backoff, Verdict};
use send::Sender;

/// The longest the scheduler sleeps: retries fall due, and CLI commands re-queue dead letters,
/// without anyone waking it.
const MAX_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Mailer(#[from] MailerError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot start delivery: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    Platform(#[from] crate::platform::PlatformError),
}

/// The running delivery stage; [`Deliverer::stop`] lets in-flight sends finish.
pub struct Deliverer {
    stop: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

struct Scheduler {
    store: Arc<dyn Store>,
    intake: Intake,
    sender: Sender,
    metrics: Arc<Metrics>,
    queued: Arc<Notify>,
    backoff: Backoff,
    policy: DeliveryConfig,
    /// The claims this instance's sends hold in the store.
    claimer: Claimer,
    destinations: Mutex<HashMap<String, Destination>>,
}

/// What the scheduler knows of one destination.
struct Destination {
    breaker: Breaker,
    /// This instance's sends under way: its share of the destination's concurrency.
    sending: usize,
}

impl Deliverer {
    /// Starts delivery; `queued` is notified by the store writer when actions become due.
    pub fn start(
        config: &Config,
        store: Arc<dyn Store>,
        intake: Intake,
        metrics: Arc<Metrics>,
        queued: Arc<Notify>,
    ) -> Result<Deliverer, DeliveryError> {
        let policy = config.delivery.clone();
        let mailer = email::Mailer::new(&config.email, policy.timeout)?;
        let platform = match config.platform.enabled {
            true => Some(PlatformSender {
                platform: Arc::new(Platform::new(&config.platform, policy.timeout)?),
                store: Arc::clone(&store),
                intake: intake.clone(),
                verify: config.platform.verify_before_retry,
            }),
            false => None,
        };
        let sender = Sender::new(config.channels.clone(), mailer, platform, policy.timeout)?;
        let backoff = Backoff {
            initial: policy.backoff_initial,
            max: policy.backoff_max,
            retry_after_max: policy.retry_after_max,
        };
        let scheduler = Arc::new(Scheduler {
            store,
            intake,
            sender,
            metrics,
            queued,
            backoff,
            policy,
            claimer: Claimer::of_this_process("deliver"),
            destinations: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        // One thread: sends wait on the network, not the CPU, and on a busy core more worker
        // threads only add hand-offs between them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name("deliver-store")
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("deliver".to_owned())
            .spawn(move || {
                // Its store threads are started from it, and inherit its priority.
                crate::background::lower_current_thread();
                runtime.block_on(scheduler.run(stopped))
            })?;
        Ok(Deliverer { stop, thread })
    }

    /// Stops taking new actions, waits for the sends in flight (each bounded by
    /// `delivery.timeout`) and leaves everything else pending.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        if self.thread.join().is_err() {
            tracing::error!("the delivery scheduler panicked; pending actions resume on restart");
        }
    }
}

impl Scheduler {
    /// A full round (every destination with due actions) runs when actions are queued and
    /// when the next one falls due; a finished send only refills its own destination, so that
    /// draining a large backlog costs one indexed read per send, not a scan of the backlog.
    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut sends: JoinSet<String> = JoinSet::new();
        let mut next_round = tokio::time::Instant::now();
        let mut next_gauge = tokio::time::Instant::now();
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
            tokio::select! {
                _ = stopped.changed() => break,
                _ = self.queued.notified() => next_round = tokio::time::Instant::now(),
                _ = tokio::time::sleep_until(next_round.min(next_gauge)) => {}
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    self.refill_after(done, &mut sends).await;
                }
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// Refills the destinations of `first` and of every other send that has finished too, each
    /// once: under load sends finish in bunches, and one read refills a bunch.
    async fn refill_after(
        self: &Arc<Self>,
        first: Result<String, tokio::task::JoinError>,
        sends: &mut JoinSet<String>,
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
            if let Err(error) = self.fill(&destination, Millis::now(), sends).await {
                tracing::error!(%error, "delivery cannot read the store; retrying");
            }
        }
    }

    /// Starts every send that may go now; returns how long to sleep until the next is due.
    async fn round(self: &Arc<Self>, sends: &mut JoinSet<String>) -> Result<Duration, StoreError> {
        let now = Millis::now();
        for destination in self
            .blocking(move |store| store.due_destinations(now))
            .await?
        {
            self.fill(&destination, now, sends).await?;
        }
        let next_due = self.blocking(|store| store.next_due()).await?;
        // Actions already due that this round could not start wait for a slot (a finished
        // send refills its destination) or for their breaker to reopen: wake at the earlier
        // of that and the next due action.
        let until_due = match next_due {
            Some(due) if due > Millis::now() => {
                Duration::from_millis(due.0.saturating_sub(Millis::now().0) as u64)
            }
            _ => MAX_IDLE,
        };
        let until_due = until_due.min(self.until_a_breaker_reopens());
        Ok(until_due.clamp(Duration::from_millis(5), MAX_IDLE))
    }

    /// Starts as many due actions of `destination` as its slots and breaker allow.
    async fn fill(
        self: &Arc<Self>,
        destination: &str,
        now: Millis,
        sends: &mut JoinSet<String>,
    ) -> Result<(), StoreError> {
        let Some(take) = self.admit(destination) else {
            return Ok(());
        };
        let (key, by) = (destination.to_owned(), self.claimer.clone());
        let due = self
            .blocking(move |store| store.claim_due_actions(&key, &by, take, now))
            .await;
        let mut started = 0;
        for pending in due.iter().flatten() {
            self.with_destination(destination, |state| state.sending += 1);
            sends.spawn(Arc::clone(self).deliver(pending.clone()));
            started += 1;
        }
        if started == 0 {
            // A probe was granted but nothing went: keep it for the next action.
            self.with_breaker(destination, |breaker| breaker.forget_probe(Instant::now()));
        }
        due.map(drop)
    }

    /// How long until the first open breaker lets a probe through ([`MAX_IDLE`] if none is
    /// open).
    fn until_a_breaker_reopens(&self) -> Duration {
        let destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        destinations
            .values()
            .filter_map(|state| state.breaker.reopens_at())
            .map(|at| at.saturating_duration_since(now))
            .min()
            .unwrap_or(MAX_IDLE)
    }

    fn with_breaker(&self, destination: &str, act: impl FnOnce(&mut Breaker)) {
        self.with_destination(destination, |state| act(&mut state.breaker));
    }

    fn with_destination(&self, destination: &str, act: impl FnOnce(&mut Destination)) {
        let mut destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = destinations.get_mut(destination) {
            act(state);
        }
    }

    async fn measure_oldest_pending(&self) {
        match self.blocking(|store| store.oldest_pending()).await {
            Ok(oldest) => {
                let age = oldest.map(|queued| Millis::now().0.saturating_sub(queued.0));
                self.metrics.oldest_pending_action(age);
            }
            Err(error) => tracing::warn!(%error, "cannot measure the oldest pending action"),
        }
    }

    /// How many actions of `destination` may start now: its free slots, one probe, or none
    /// while its breaker is open (then its due actions are held back in memory, their schedule untouched).
    fn admit(&self, destination: &str) -> Option<usize> {
        let mut destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let state = destinations
            .entry(destination.to_owned())
            .or_insert_with(|| Destination {
                breaker: Breaker::new(self.policy.breaker_failures, self.policy.breaker_cooldown),
                sending: 0,
            });
        let free = self
            .policy
            .concurrency_per_destination
            .saturating_sub(state.sending);
        if free == 0 {
            return None;
        }
        match state.breaker.admit(Instant::now()) {
            Admission::Go => Some(free),
            Admission::Probe => Some(1),
            // Held back in memory only: the actions keep their schedule, so a restart (which
            // forgets the breaker) attempts them at once.
            Admission::Wait { .. } => None,
        }
    }

    /// Sends one action, records the result, then frees its slot; returns its destination.
    async fn deliver(self: Arc<Self>, pending: PendingAction) -> String {
        let started = Instant::now();
        let at_start = Millis::now();
        let guard = self.sender.time_limit(&pending.action);
        let verdict = tokio::time::timeout(guard, self.sender.send(&pending))
            .await
            .unwrap_or_else(|_| Verdict::Retry {
                reason: "timed out".to_owned(),
                after: None,
            });
        let updates = vec![self.update_for(&pending, verdict.clone(), at_start, started.elapsed())];
        if self.record_on_breaker(&pending.destination, &verdict) == Change::Recovered {
            // The held actions are due already: the refill after this send takes them, each
            // at its own due time.
            tracing::info!(destination = %pending.destination, "destination recovered");
        }
        if let Err(error) = self.intake.record_deliveries(updates).await {
            tracing::error!(%error, action_id = %pending.id, "cannot record a delivery; it will be sent again");
        }
        self.metrics_for(&pending, &verdict);
        self.with_destination(&pending.destination, |state| {
            state.sending = state.sending.saturating_sub(1);
        });
        pending.destination
    }

    fn record_on_breaker(&self, destination: &str, verdict: &Verdict) -> Change {
        let mut destinations = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = destinations.get_mut(destination) else {
            return Change::None;
        };
        let now = Instant::now();
        match verdict {
            // A refusal (4xx) is an answer: the destination is up, only the message is wrong.
            Verdict::Sent { .. } | Verdict::Dead { .. } | Verdict::Skipped { .. } => {
                state.breaker.record(true, now)
            }
            Verdict::Retry { .. } => state.breaker.record(false, now),
            Verdict::Unsendable { .. } => {
                state.breaker.forget_probe(now);
                Change::None
            }
        }
    }

    fn update_for(
        &self,
        pending: &PendingAction,
        verdict: Verdict,
        at: Millis,
        took: Duration,
    ) -> DeliveryUpdate {
        let number = pending.attempts + 1;
        let attempt = |outcome: &str, error: Option<String>| Attempt {
            number,
            at,
            duration_ms: took.as_millis() as u64,
            outcome: outcome.to_owned(),
            error,
        };
        let claim = pending.claim();
        match verdict {
            Verdict::Sent { result } => DeliveryUpdate::Sent {
                claim,
                attempt: attempt("sent", None),
                result,
            },
            Verdict::Retry { reason, .. } if number >= self.policy.max_attempts => {
                let reason = format!("gave up after {number} attempts: {reason}");
                tracing::error!(action_id = %pending.id, destination = %pending.destination, error = %reason, "action dead-lettered");
                DeliveryUpdate::Dead {
                    claim,
                    attempt: attempt("dead", Some(reason)),
                }
            }
            Verdict::Retry { reason, after } => {
                let wait = self.backoff.wait(number, after);
                tracing::warn!(action_id = %pending.id, destination = %pending.destination, error = %reason, retry_in_ms = wait.as_millis() as u64, "delivery failed, retrying");
                let due_at = Millis(Millis::now().0.saturating_add(wait.as_millis() as i64));
                DeliveryUpdate::Retry {
                    claim,
                    attempt: attempt("retry", Some(reason)),
                    due_at,
                }
            }
            Verdict::Skipped { reason } => {
                tracing::info!(action_id = %pending.id, destination = %pending.destination, reason = %reason, "action skipped");
                DeliveryUpdate::Skipped {
                    claim,
                    attempt: attempt("skipped", Some(reason)),
                }
            }
            Verdict::Dead { reason } | Verdict::Unsendable { reason } => {
                tracing::error!(action_id = %pending.id, destination = %pending.destination, error = %reason, "action dead-lettered");
                DeliveryUpdate::Dead {
                    claim,
                    attempt: attempt("dead", Some(reason)),
                }
            }
        }
    }

    fn metrics_for(&self, pending: &PendingAction, verdict: &Verdict) {
        let kind = pending.action.kind();
        let channel = channel_label(&pending.destination);
        let outcome = match verdict {
            Verdict::Sent { .. } => {
                let waited = Millis::now().0.saturating_sub(pending.created_at.0).max(0);
                self.metrics
                    .action_delivered(kind, Duration::from_millis(waited as u64));
                "sent"
            }
            Verdict::Retry { .. } if pending.attempts + 1 >= self.policy.max_attempts => "dead",
            Verdict::Retry { .. } => "retried",
            Verdict::Skipped { .. } => "skipped",
            Verdict::Dead { .. } | Verdict::Unsendable { .. } => "dead",
        };
        self.metrics.action(kind, channel, outcome);
    }

    /// Runs a store read off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || read(&*store))
            .await
            .unwrap_or_else(|_| Err(StoreError::ReadPanicked))
    }
}

/// Writes `dir/name` through a temporary file and a rename, so that a crash never leaves half
/// a message and a resend replaces the first copy.
async fn write_atomically(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let temporary = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&temporary, bytes).await?;
    tokio::fs::rename(&temporary, dir.join(name)).await
}

/// The bounded label of a destination: the channel's name, `email`, `platform`, or `url` for
/// webhooks to a script's own URL.
pub fn channel_label(destination: &str) -> &str {
    match destination.split_once(':') {
        Some(("channel", name)) => name,
        Some(("url", _)) => "url",
        _ => destination,
    }
}
