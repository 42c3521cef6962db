//! The client-side call limit: at most `max` calls in any window of `window` (for the
//! platform's "100 calls per 60 s per app", PLATFORM-NOTES.md §4.4, a window a little longer
//! than 60 s: see the client).
//!
//! Each call reserves its start, in order: call `k` may start once call `k - max` started a
//! full window earlier ([`CallLimit::next_start`]). Instances that share a store reserve in it,
//! atomically, so that together they stay within the limit; a client without a store keeps the
//! starts in memory. Reservations are quick, and waited for outside any lock. Starts are
//! wall-clock times: instances must keep their clocks in step (NTP); a skew of a fraction of
//! a second is within the client's window slack.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::PlatformError;
use super::shared::Shared;
use crate::deliver::clock::{Clock, SystemClock};
use crate::model::Millis;
use crate::store::CallLimit;

pub(crate) struct Limiter {
    limit: CallLimit,
    starts: Starts,
    clock: Arc<dyn Clock>,
}

/// Where the reserved starts are kept.
enum Starts {
    /// This process's own: the latest `max` starts.
    Local(Mutex<Vec<Millis>>),
    /// The store's, shared by every instance.
    Shared(Arc<Shared>),
}

impl Limiter {
    /// `max` calls per `window`, counted by this process alone; 0 means no limit.
    pub(crate) fn new(max: u32, window: Duration) -> Limiter {
        Limiter::with_clock(max, window, Arc::new(SystemClock))
    }

    /// `max` calls per `window`, counted in the store across instances; 0 means no limit.
    pub(crate) fn shared(max: u32, window: Duration, shared: Arc<Shared>) -> Limiter {
        Limiter {
            starts: Starts::Shared(shared),
            ..Limiter::new(max, window)
        }
    }

    fn with_clock(max: u32, window: Duration, clock: Arc<dyn Clock>) -> Limiter {
        Limiter {
            limit: CallLimit { max, window },
            starts: Starts::Local(Mutex::new(Vec::new())),
            clock,
        }
    }

    /// Waits until one more call fits, and counts it.
    pub(crate) async fn acquire(&self) -> Result<(), PlatformError> {
        if self.limit.max == 0 {
            return Ok(());
        }
        let now = self.clock.now();
        let start = match &self.starts {
            Starts::Local(starts) => self.reserve_locally(starts, now),
            Starts::Shared(shared) => shared.reserve_call(self.limit, now).await?,
        };
        let wait = u64::try_from(start.0.saturating_sub(now.0)).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Ok(())
    }

    fn reserve_locally(&self, starts: &Mutex<Vec<Millis>>, now: Millis) -> Millis {
        let mut starts = starts.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.limit.next_start(&starts, now);
        starts.push(start);
        // Reserved in order, so the latest `max` are at the end.
        let excess = starts.len().saturating_sub(self.limit.max as usize);
        starts.drain(..excess);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wall-clock time that moves with tokio's paused clock.
    struct PausedClock {
        base: Millis,
        started: tokio::time::Instant,
    }

    impl Clock for PausedClock {
        fn now(&self) -> Millis {
            let elapsed = self.started.elapsed().as_millis() as i64;
            Millis(self.base.0 + elapsed)
        }

        fn instant(&self) -> std::time::Instant {
            std::time::Instant::now()
        }
    }

    fn paused_clock() -> Arc<PausedClock> {
        Arc::new(PausedClock {
            base: Millis(1_800_000_000_000),
            started: tokio::time::Instant::now(),
        })
    }

    /// The most starts in any window of `window`.
    fn busiest(starts: &[Millis], window: Duration) -> usize {
        let window = window.as_millis() as i64;
        starts
            .iter()
            .map(|first| {
                starts
                    .iter()
                    .filter(|s| s.0 >= first.0 && s.0 < first.0 + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_max_calls() {
        let clock = paused_clock();
        let limiter = Limiter::with_clock(5, Duration::from_secs(60), clock.clone());
        let mut starts = Vec::new();
        for _ in 0..23 {
            limiter.acquire().await.unwrap();
            starts.push(clock.now());
        }
        assert_eq!(busiest(&starts, Duration::from_secs(60)), 5);
        // The first five go at once, then five per window.
        assert_eq!(starts[4], starts[0]);
        assert_eq!(starts[5].0 - starts[0].0, 60_000);
        assert_eq!(starts[22].0 - starts[0].0, 240_000);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_no_limit() {
        let clock = paused_clock();
        let limiter = Limiter::with_clock(0, Duration::from_secs(60), clock.clone());
        let before = clock.now();
        for _ in 0..1000 {
            limiter.acquire().await.unwrap();
        }
        assert_eq!(clock.now(), before);
    }
}
