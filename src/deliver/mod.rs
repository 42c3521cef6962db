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
pub(crate) mod clock;
mod email;
mod files;
mod outcome;
mod payload;
mod platform;
mod retry;
mod scheduler;
mod send;
mod slots;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::platform::Platform;
use crate::store::{Claimer, Intake, Store};
use clock::SystemClock;
pub use email::MailerError;
use outcome::Outcomes;
use platform::PlatformSender;
use retry::Backoff;
use scheduler::Scheduler;
use send::Sender;
use slots::Slots;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Mailer(#[from] MailerError),
    // Built only where the client is built: other HTTP errors are a send's verdict.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
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
                platform: Arc::new(Platform::sharing(
                    &config.platform,
                    policy.timeout,
                    Arc::clone(&store),
                )?),
                store: Arc::clone(&store),
                intake: intake.clone(),
                verify: config.platform.verify_before_retry,
            }),
            false => None,
        };
        let sender = Sender::new(config.channels.clone(), mailer, platform, policy.timeout)?;
        let outcomes = Outcomes {
            backoff: Backoff {
                initial: policy.backoff_initial,
                max: policy.backoff_max,
                retry_after_max: policy.retry_after_max,
            },
            max_attempts: policy.max_attempts,
        };
        let scheduler = Arc::new(Scheduler {
            store,
            intake,
            sender,
            metrics,
            queued,
            outcomes,
            slots: Slots::new(&policy),
            claimer: Claimer::of_this_process("deliver"),
            clock: Arc::new(SystemClock),
            sending: Mutex::default(),
            renew_every: config.store.lease / 3,
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
