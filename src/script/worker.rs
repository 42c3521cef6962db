//! Script workers: plain threads (rhai evaluation is CPU work and must not run on the HTTP or
//! delivery executors) that claim stored events in the store, in arrival order, run the
//! plugins, and commit each batch's outcomes, actions and state changes in one transaction
//! through the store's writer. An event stays `pending` until its outcome commits, so a crash
//! or a stop at any point leaves it to be run again (once its claim's lease ends, or at once
//! when the store knows the claimer is gone), and never half-run.
//!
//! The store's claim keeps each device's events in order across any number of workers and
//! instances: an event is not claimable while an earlier one of its device is held elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::digests::DigestTimer;
use super::{Committed, EventInput, PluginSet, Scripts};
use crate::destination::Destination;
use crate::metrics::Metrics;
use crate::model::state::StateChanges;
use crate::model::{EventStatus, Millis};
use crate::store::{
    Claimer, EventOutcome, Intake, IntakeError, Store, StoreError, StoredEvent, Wakeup,
};

/// Events taken per batch: enough to share one commit among many events, few enough that a
/// batch is committed within milliseconds.
const BATCH: usize = 256;
/// The longest a worker sleeps without looking for work: new events wake it at once, but
/// events queued by another process (`events replay`) are only found by looking.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The running workers; [`Workers::stop`] lets each finish its batch and waits for it.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
}

struct Worker {
    claimer: Claimer,
    store: Arc<dyn Store>,
    committed: Committed,
    intake: Intake,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
}

impl Workers {
    /// Starts `count` workers, and the timer that fires ended digests.
    pub fn start(
        count: usize,
        committed: Committed,
        store: Arc<dyn Store>,
        intake: Intake,
        scripts: Scripts,
        metrics: Arc<Metrics>,
        wakeup: Arc<Wakeup>,
    ) -> std::io::Result<Workers> {
        let stopping = Arc::new(AtomicBool::new(false));
        let timer = DigestTimer {
            store: Arc::clone(&store),
            stopping: Arc::clone(&stopping),
            wakeup: Arc::clone(&wakeup),
        };
        let timer = std::thread::Builder::new()
            .name("digest-timer".to_owned())
            .spawn(move || timer.run())?;
        let threads = (0..count)
            .map(|index| {
                let name = format!("script-{index}");
                let worker = Worker {
                    claimer: Claimer::of_this_process(&name),
                    store: Arc::clone(&store),
                    committed: committed.clone(),
                    intake: intake.clone(),
                    scripts: scripts.clone(),
                    metrics: Arc::clone(&metrics),
                    stopping: Arc::clone(&stopping),
                    wakeup: Arc::clone(&wakeup),
                };
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || worker.run())
            })
            .chain(std::iter::once(Ok(timer)))
            .collect::<std::io::Result<_>>()?;
        Ok(Workers {
            threads,
            stopping,
            wakeup,
        })
    }

    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wakeup.notify();
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a script worker panicked; its unfinished events stay pending");
            }
        }
    }
}

impl Worker {
    fn run(self) {
        crate::background::lower_current_thread();
        while !self.stopping.load(Ordering::SeqCst) {
            let generation = self.wakeup.generation();
            match self.store.claim_events(&self.claimer, BATCH, Millis::now()) {
                Ok(events) if events.is_empty() => self.wakeup.wait(generation, IDLE_POLL),
                Ok(events) => self.process(events),
                Err(error) => {
                    tracing::error!(%error, "script worker cannot claim events; retrying");
                    self.wakeup.wait(generation, IDLE_POLL);
                }
            }
        }
    }

    /// Runs a batch of claimed events and commits it. On failure the events stay pending and
    /// claimed by this worker, which takes them again at its next claim.
    fn process(&self, events: Vec<StoredEvent>) {
        let set = self.scripts.current();
        let mut changes = StateChanges::default();
        let mut outcomes = Vec::new();
        for event in &events {
            match self.run_event(&set, event, &mut changes) {
                Some(outcome) => outcomes.push(EventOutcome {
                    claimed_by: Some(self.claimer.clone()),
                    ..outcome
                }),
                None => break,
            }
        }
        if outcomes.is_empty() {
            self.wakeup.wait(self.wakeup.generation(), IDLE_POLL);
            return;
        }
        let queued: Vec<(&'static str, Destination)> = outcomes
            .iter()
            .flat_map(|outcome| &outcome.actions)
            .map(|action| (action.kind(), action.destination()))
            .collect();
        match self.intake.record_outcomes_blocking(outcomes, changes) {
            Ok(count) => {
                self.metrics.events_processed(count);
                for (kind, destination) in &queued {
                    self.metrics.action(kind, destination.label(), "queued");
                }
            }
            // Its events are still claimed by this worker: the next claim takes them again,
            // and they run on the state as it is now.
            Err(IntakeError::Store(error)) if matches!(*error, StoreError::StateConflict) => {
                tracing::debug!(%error, "a script batch read state that changed; running it again");
            }
            Err(IntakeError::Store(error)) if matches!(*error, StoreError::ClaimLost(_)) => {
                tracing::warn!(%error, "a script batch lost its claim; its events run elsewhere");
            }
            Err(error) => {
                tracing::error!(%error, "cannot commit script outcomes; the events stay pending");
                self.wakeup.wait(self.wakeup.generation(), IDLE_POLL);
            }
        }
    }

    /// `None` when committed state could not be read: the batch stops there and the event is
    /// run again later.
    fn run_event(
        &self,
        set: &PluginSet,
        event: &StoredEvent,
        changes: &mut StateChanges,
    ) -> Option<EventOutcome> {
        let input = match EventInput::from_stored(event) {
            Ok(input) => input,
            Err(error) => return Some(EventOutcome::unreadable(event, error)),
        };
        match set.run(&input, &self.committed, changes, Millis::now()) {
            Ok(run) => {
                changes.settle();
                for outcome in &run.plugins {
                    self.metrics.script_run(
                        &outcome.plugin,
                        outcome.error.is_none(),
                        outcome.duration,
                    );
                    if let Some(error) = &outcome.error {
                        tracing::warn!(event_id = %event.id, %error, "plugin failed");
                    }
                }
                Some(run.into_outcome(event.id, None))
            }
            Err(error) => {
                tracing::error!(event_id = %event.id, %error, "cannot read script state; will retry");
                None
            }
        }
    }
}

impl EventOutcome {
    /// A stored body the scripts cannot be given (damaged): failed, with the reason.
    fn unreadable(event: &StoredEvent, error: String) -> EventOutcome {
        EventOutcome {
            event_id: event.id,
            status: EventStatus::Failed,
            error: Some(error),
            plugins: Vec::new(),
            actions: Vec::new(),
            replayed_from: None,
            claimed_by: None,
        }
    }
}
