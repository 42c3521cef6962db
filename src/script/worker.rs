//! Script workers: plain threads (rhai evaluation is CPU work and must not run on the HTTP or
//! delivery executors) that take stored events in arrival order, run the plugins, and commit
//! each batch's outcomes, actions and state changes in one transaction through the store's
//! writer. Nothing is claimed in the store: an event stays `pending` until its outcome commits,
//! so a crash or a stop at any point leaves it to be run again, and never half-run.
//!
//! With more than one worker, events are sharded by `deviceId`, so each device's events stay
//! in order and its retry budget is only ever changed by one thread.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{EventInput, PluginSet, Scripts};
use crate::metrics::Metrics;
use crate::model::state::{StateChanges, StateView};
use crate::model::{EventStatus, Millis};
use crate::store::{EventOutcome, Intake, Store, StoredEvent, Wakeup};

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
    shard: usize,
    shards: usize,
    store: Arc<dyn Store>,
    intake: Intake,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
    wakeup: Arc<Wakeup>,
}

impl Workers {
    pub fn start(
        count: usize,
        store: Arc<dyn Store>,
        intake: Intake,
        scripts: Scripts,
        metrics: Arc<Metrics>,
        wakeup: Arc<Wakeup>,
    ) -> std::io::Result<Workers> {
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|shard| {
                let worker = Worker {
                    shard,
                    shards: count,
                    store: Arc::clone(&store),
                    intake: intake.clone(),
                    scripts: scripts.clone(),
                    metrics: Arc::clone(&metrics),
                    stopping: Arc::clone(&stopping),
                    wakeup: Arc::clone(&wakeup),
                };
                std::thread::Builder::new()
                    .name(format!("script-{shard}"))
                    .spawn(move || worker.run())
            })
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
        let mut cursor = 0;
        while !self.stopping.load(Ordering::SeqCst) {
            let generation = self.wakeup.generation();
            match self.store.pending_events(cursor, BATCH) {
                Ok(events) if events.is_empty() => self.wakeup.wait(generation, IDLE_POLL),
                Ok(events) => cursor = self.process(cursor, events),
                Err(error) => {
                    tracing::error!(%error, "script worker cannot read events; retrying");
                    self.wakeup.wait(generation, IDLE_POLL);
                }
            }
        }
    }

    fn owns(&self, event: &StoredEvent) -> bool {
        if self.shards == 1 {
            return true;
        }
        let mut hasher = DefaultHasher::new();
        event.device_id.hash(&mut hasher);
        hasher.finish() as usize % self.shards == self.shard
    }

    /// Runs a batch and commits it; returns the new cursor (the last committed or skipped seq).
    fn process(&self, cursor: i64, events: Vec<StoredEvent>) -> i64 {
        let set = self.scripts.current();
        let committed: Arc<dyn StateView + Send + Sync> = self.store.clone();
        let mut changes = StateChanges::default();
        let mut outcomes = Vec::new();
        let mut reached = cursor;
        for event in &events {
            if self.owns(event) {
                match self.run_event(&set, event, &committed, &mut changes) {
                    Some(outcome) => outcomes.push(outcome),
                    None => break,
                }
            }
            reached = event.seq;
        }
        if outcomes.is_empty() && reached == cursor {
            self.wakeup.wait(self.wakeup.generation(), IDLE_POLL);
            return cursor;
        }
        let queued: Vec<(&'static str, String)> = outcomes
            .iter()
            .flat_map(|outcome| &outcome.actions)
            .map(|action| (action.kind(), action.destination()))
            .collect();
        match self.intake.record_outcomes_blocking(outcomes, changes) {
            Ok(count) => {
                self.metrics.events_processed(count);
                for (kind, destination) in &queued {
                    self.metrics
                        .action(kind, crate::deliver::channel_label(destination), "queued");
                }
                reached
            }
            Err(error) => {
                tracing::error!(%error, "cannot commit script outcomes; the events stay pending");
                self.wakeup.wait(self.wakeup.generation(), IDLE_POLL);
                cursor
            }
        }
    }

    /// `None` when committed state could not be read: the batch stops there and the event is
    /// run again later.
    fn run_event(
        &self,
        set: &PluginSet,
        event: &StoredEvent,
        committed: &Arc<dyn StateView + Send + Sync>,
        changes: &mut StateChanges,
    ) -> Option<EventOutcome> {
        let input = match EventInput::from_stored(event) {
            Ok(input) => input,
            Err(error) => return Some(EventOutcome::unreadable(event, error)),
        };
        match set.run(&input, committed, changes, Millis::now()) {
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
        }
    }
}
