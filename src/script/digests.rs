//! The digest timer: one thread per process that turns digests whose window ended into
//! internal events for the script workers (the store makes each ended digest one event,
//! however many processes fire it). It sleeps until the earliest end, read from the store's
//! index, so no digest key is polled; it looks at least every [`LOOK_EVERY`] for digests that
//! other processes, or this one's later commits, opened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::model::Millis;
use crate::store::{Store, StoreError, Wakeup};

/// The longest the timer sleeps without looking at the earliest end.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Digests fired per transaction.
const FIRE_AT_ONCE: usize = 64;

pub(super) struct DigestTimer {
    pub store: Arc<dyn Store>,
    pub stopping: Arc<AtomicBool>,
    /// The script workers' wake-up: notified when digests become events.
    pub wakeup: Arc<Wakeup>,
}

impl DigestTimer {
    pub fn run(self) {
        crate::background::lower_current_thread();
        while !self.stopping.load(Ordering::SeqCst) {
            let generation = self.wakeup.generation();
            let sleep = self.fire(Millis::now()).unwrap_or_else(|error| {
                tracing::error!(%error, "cannot fire ended digests; retrying");
                LOOK_EVERY
            });
            if !sleep.is_zero() {
                self.wakeup.wait(generation, sleep);
            }
        }
    }

    /// Fires what has ended by `now`; returns how long to sleep before looking again.
    fn fire(&self, now: Millis) -> Result<Duration, StoreError> {
        let Some(end) = self.store.next_digest_end()? else {
            return Ok(LOOK_EVERY);
        };
        if end > now {
            let until_end = Duration::from_millis(u64::try_from(end.0 - now.0).unwrap_or(0));
            return Ok(until_end.min(LOOK_EVERY));
        }
        let fired = self.store.fire_ended_digests(now, FIRE_AT_ONCE)?;
        tracing::debug!(fired, "digests ended");
        self.wakeup.notify();
        Ok(Duration::ZERO)
    }
}
