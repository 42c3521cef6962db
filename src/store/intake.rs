//! Group commit: the one writer thread in front of a [`Store`].
//!
//! HTTP handlers hand each notification to a bounded queue with a reply channel and await the
//! reply. The writer takes everything queued (up to [`MAX_BATCH`]), stores it in one
//! transaction with one fsync, then answers every request of the batch. While it commits, the
//! next batch gathers, so the batch size grows with the load and fsyncs per second stay flat.
//! The queue is bounded: a request that cannot even enqueue waits, and the HTTP layer's
//! `accept_timeout` turns a long wait into a 503, so memory stays bounded when the disk stalls.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};

use super::{
    Appended, DeliveryUpdate, EventOutcome, NewEvent, OutcomeBatch, Pruned, RejectedBody, Store,
    StoreError, Wakeup, WriteGroup,
};
use crate::model::Millis;
use crate::model::state::StateChanges;

/// Most notifications stored in one transaction.
const MAX_BATCH: usize = 1024;
/// Rows deleted per pruning transaction, so a prune never holds the write lock for long.
const PRUNE_CHUNK: usize = 2000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    #[error("the store writer has stopped")]
    Stopped,
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// The writer's metrics, registered by the caller.
#[derive(Clone)]
pub struct IntakeMetrics {
    pub commit_seconds: Histogram,
    pub batch_events: Histogram,
    pub queue_depth: Gauge,
}

impl Default for IntakeMetrics {
    fn default() -> IntakeMetrics {
        IntakeMetrics {
            commit_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            batch_events: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
            ),
            queue_depth: Gauge::default(),
        }
    }
}

/// Where the answer to a job goes.
type Reply<T> = oneshot::Sender<Result<T, IntakeError>>;

enum Job {
    Append(NewEvent, Reply<Appended>),
    Reject(RejectedBody),
    Probe(Reply<()>),
    Prune(Millis, Reply<Pruned>),
    Outcomes(Box<Outcomes>, Reply<usize>),
    Deliveries(Vec<DeliveryUpdate>, Reply<()>),
}

/// A script worker's batch: outcomes and the state changes that go with them.
struct Outcomes {
    outcomes: Vec<EventOutcome>,
    changes: StateChanges,
}

/// The handle that stages use to write; cheap to clone.
#[derive(Clone)]
pub struct Intake {
    jobs: mpsc::Sender<Job>,
    /// Set for a store that takes concurrent writers (a database server): script outcomes and
    /// delivery results are then written by their callers, beside the receiver's batches,
    /// instead of waiting in line for the one writer.
    direct: Option<(Arc<dyn Store>, Signals)>,
    /// Set by every sender as well as by the writer, so that it keeps counting while the
    /// writer is stuck in a commit: that is when an operator needs it.
    queue_depth: Gauge,
}

/// Owns the writer thread; [`IntakeWriter::finish`] waits until every queued job is done.
pub struct IntakeWriter {
    thread: JoinHandle<()>,
}

impl Intake {
    /// Starts the writer thread. `capacity` bounds the notifications waiting for a batch;
    /// `signals` tell the script and delivery stages that work was committed for them.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: IntakeMetrics,
        capacity: usize,
        signals: Signals,
    ) -> std::io::Result<(Intake, IntakeWriter)> {
        let (jobs, queue) = mpsc::channel(capacity);
        let queue_depth = metrics.queue_depth.clone();
        let direct = store
            .takes_concurrent_writers()
            .then(|| (Arc::clone(&store), signals.clone()));
        let writer = Writer {
            store,
            metrics,
            signals,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run(queue))?;
        let intake = Intake {
            jobs,
            direct,
            queue_depth,
        };
        Ok((intake, IntakeWriter { thread }))
    }

    /// Stores `event` and returns once it is durable (or a duplicate of a durable event).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, IntakeError> {
        self.request(|reply| Job::Append(event, reply)).await?
    }

    /// Queues a rejected body for keeping without waiting; it is dropped (and `false` returned)
    /// when the queue is full, since a refusal must not wait behind valid notifications.
    pub fn reject(&self, body: RejectedBody) -> bool {
        let queued = self.jobs.try_send(Job::Reject(body)).is_ok();
        self.count_queued();
        queued
    }

    fn count_queued(&self) {
        let depth = self.jobs.max_capacity() - self.jobs.capacity();
        self.queue_depth.set(depth as i64);
    }

    /// Proves the writer is running and the store can take its write lock.
    pub async fn probe(&self) -> Result<(), IntakeError> {
        self.request(Job::Probe).await?
    }

    /// Prunes everything prunable received before `before`, one short transaction per job so
    /// that notifications keep being stored in between.
    pub async fn prune(&self, before: Millis) -> Result<Pruned, IntakeError> {
        let mut total = Pruned::default();
        loop {
            let chunk = self.request(|reply| Job::Prune(before, reply)).await??;
            total.events += chunk.events;
            total.rejected += chunk.rejected;
            if chunk.events < PRUNE_CHUNK && chunk.rejected < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Commits a script batch; blocks the calling (non-async) thread until it is durable.
    /// Returns the number of outcomes recorded.
    pub fn record_outcomes_blocking(
        &self,
        outcomes: Vec<EventOutcome>,
        changes: StateChanges,
    ) -> Result<usize, IntakeError> {
        if let Some((store, signals)) = &self.direct {
            store
                .record_outcomes(&outcomes, &changes, Millis::now())
                .map_err(|e| IntakeError::Store(Arc::new(e)))?;
            if outcomes.iter().any(|o| !o.actions.is_empty()) {
                signals.actions.notify_one();
            }
            return Ok(outcomes.len());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job::Outcomes(Box::new(Outcomes { outcomes, changes }), reply);
        self.jobs
            .blocking_send(job)
            .map_err(|_| IntakeError::Stopped)?;
        self.count_queued();
        answer.blocking_recv().map_err(|_| IntakeError::Stopped)?
    }

    /// Records delivery results; returns once they are durable.
    pub async fn record_deliveries(&self, updates: Vec<DeliveryUpdate>) -> Result<(), IntakeError> {
        let Some((store, signals)) = self.direct.clone() else {
            return self
                .request(|reply| Job::Deliveries(updates, reply))
                .await?;
        };
        let recorded =
            tokio::task::spawn_blocking(move || store.record_deliveries(&updates, Millis::now()))
                .await
                .map_err(|_| IntakeError::Store(Arc::new(StoreError::Panicked)))?;
        match recorded {
            Ok(raised) if raised > 0 => signals.events.notify(),
            Ok(_) => {}
            Err(error) => return Err(IntakeError::Store(Arc::new(error))),
        }
        Ok(())
    }

    async fn request<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| IntakeError::Stopped)?;
        self.count_queued();
        answer.await.map_err(|_| IntakeError::Stopped)
    }
}

impl IntakeWriter {
    /// Waits for the writer to drain its queue. It stops once every [`Intake`] is dropped.
    pub fn finish(self) {
        if self.thread.join().is_err() {
            tracing::error!("the store writer panicked; notifications answered 200 are on disk");
        }
    }
}

/// How the writer tells the other stages that it committed work for them.
#[derive(Clone, Default)]
pub struct Signals {
    /// New events for the script workers (pushed ones, or `actionFailed`).
    pub events: Arc<Wakeup>,
    /// New or newly due actions for delivery.
    pub actions: Arc<tokio::sync::Notify>,
}

struct Writer {
    store: Arc<dyn Store>,
    metrics: IntakeMetrics,
    signals: Signals,
}

impl Writer {
    fn run(&self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut batch = Batch::default();
            batch.add(first);
            while batch.events.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.add(job),
                    Err(_) => break,
                }
            }
            self.metrics.queue_depth.set(queue.len() as i64);
            batch.commit(&*self.store, &self.metrics, &self.signals);
            batch.run_maintenance(&*self.store);
        }
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<NewEvent>,
    replies: Vec<Reply<Appended>>,
    rejected: Vec<RejectedBody>,
    probes: Vec<Reply<()>>,
    prunes: Vec<(Millis, Reply<Pruned>)>,
    outcomes: Vec<(Box<Outcomes>, Reply<usize>)>,
    deliveries: Vec<DeliveryUpdate>,
    delivery_replies: Vec<Reply<()>>,
}

impl Batch {
    fn add(&mut self, job: Job) {
        match job {
            Job::Append(event, reply) => {
                self.events.push(event);
                self.replies.push(reply);
            }
            Job::Reject(body) => self.rejected.push(body),
            Job::Probe(reply) => self.probes.push(reply),
            Job::Prune(before, reply) => self.prunes.push((before, reply)),
            Job::Outcomes(outcomes, reply) => self.outcomes.push((outcomes, reply)),
            Job::Deliveries(updates, reply) => {
                self.deliveries.extend(updates);
                self.delivery_replies.push(reply);
            }
        }
    }

    /// Stores notifications, rejected bodies, script outcomes and delivery results as one
    /// group, answers each requester and signals the stages that have new work.
    fn commit(&mut self, store: &dyn Store, metrics: &IntakeMetrics, signals: &Signals) {
        if self.is_empty() {
            return;
        }
        let outcome_batches: Vec<OutcomeBatch<'_>> = self
            .outcomes
            .iter()
            .map(|(batch, _)| OutcomeBatch {
                outcomes: &batch.outcomes,
                changes: &batch.changes,
            })
            .collect();
        let group = WriteGroup {
            events: &self.events,
            rejected: &self.rejected,
            outcomes: &outcome_batches,
            deliveries: &self.deliveries,
            now: Millis::now(),
        };
        let started = Instant::now();
        let written = store.write_group(&group);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        if !self.events.is_empty() {
            metrics.batch_events.observe(self.events.len() as f64);
        }
        self.answer_appends(written.appended, signals);
        self.answer_outcomes(written.outcomes, signals);
        self.answer_deliveries(written.deliveries, signals);
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.rejected.is_empty()
            && self.outcomes.is_empty()
            && self.deliveries.is_empty()
    }

    fn answer_appends(&mut self, appended: Result<Vec<Appended>, StoreError>, signals: &Signals) {
        match appended {
            Ok(outcomes) => {
                if outcomes.iter().any(|o| matches!(o, Appended::Accepted(_))) {
                    signals.events.notify();
                }
                for (reply, outcome) in self.replies.drain(..).zip(outcomes) {
                    // A requester that gave up (timeout, closed connection) is gone; its
                    // notification is stored all the same and a re-push will be a duplicate.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::error!(
                    error = %error,
                    notifications = self.events.len(),
                    "store cannot write; answering 503 until it can"
                );
                let error = Arc::new(error);
                for reply in self.replies.drain(..) {
                    let _ = reply.send(Err(IntakeError::Store(Arc::clone(&error))));
                }
            }
        }
    }

    fn answer_outcomes(&mut self, recorded: Vec<Result<(), StoreError>>, signals: &Signals) {
        for ((batch, reply), recorded) in self.outcomes.drain(..).zip(recorded) {
            if recorded.is_ok() && batch.outcomes.iter().any(|o| !o.actions.is_empty()) {
                signals.actions.notify_one();
            }
            let answer = recorded
                .map(|()| batch.outcomes.len())
                .map_err(|e| IntakeError::Store(Arc::new(e)));
            let _ = reply.send(answer);
        }
    }

    fn answer_deliveries(&mut self, recorded: Result<usize, StoreError>, signals: &Signals) {
        if self.delivery_replies.is_empty() {
            return;
        }
        if recorded.as_ref().is_ok_and(|raised| *raised > 0) {
            signals.events.notify();
        }
        let recorded = recorded
            .map(drop)
            .map_err(|e| IntakeError::Store(Arc::new(e)));
        for reply in self.delivery_replies.drain(..) {
            let _ = reply.send(recorded.clone());
        }
    }

    /// Probes and prunes, each in its own short transaction after the group.
    fn run_maintenance(self, store: &dyn Store) {
        let failed = |e| IntakeError::Store(Arc::new(e));
        for reply in self.probes {
            let _ = reply.send(store.probe().map_err(failed));
        }
        for (before, reply) in self.prunes {
            let pruned = store.prune(before, PRUNE_CHUNK);
            let _ = reply.send(pruned.map_err(failed));
        }
    }
}
