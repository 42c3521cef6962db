//! The client-side call limit: at most `max` calls in any window of `window` (for the
//! platform's "100 calls per 60 s per app", PLATFORM-NOTES.md §4.4, a window a little longer
//! than 60 s: see the client).
//!
//! It keeps the start times of the last `max` calls, reserved in order: call `k` may start
//! once call `k - max` started a full window earlier. A sliding window is stricter than any
//! fixed window the platform may count in, so staying under it keeps the app unthrottled.
//! Reservations are taken under a short lock and waited for outside it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct Limiter {
    max: usize,
    window: Duration,
    starts: Mutex<VecDeque<Instant>>,
}

impl Limiter {
    /// `max` calls per `window`; 0 means no limit.
    pub(crate) fn new(max: u32, window: Duration) -> Limiter {
        Limiter {
            max: max as usize,
            window,
            starts: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits until one more call fits, and counts it.
    pub(crate) async fn acquire(&self) {
        if self.max == 0 {
            return;
        }
        let start = self.reserve(Instant::now());
        tokio::time::sleep_until(start).await;
    }

    /// The earliest time at or after `now` that keeps every window within `max`, recorded.
    fn reserve(&self, now: Instant) -> Instant {
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        // Only the last `max` starts are kept, so the front is call `k - max`.
        let start = match starts.front() {
            Some(front) if starts.len() >= self.max => (*front + self.window).max(now),
            _ => now,
        };
        starts.push_back(start);
        while starts.len() > self.max {
            starts.pop_front();
        }
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most starts in any window of `window`.
    fn busiest(starts: &[Instant], window: Duration) -> usize {
        starts
            .iter()
            .map(|first| {
                starts
                    .iter()
                    .filter(|s| **s >= *first && **s < *first + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_max_calls() {
        let limiter = Limiter::new(5, Duration::from_secs(60));
        let mut starts = Vec::new();
        for _ in 0..23 {
            limiter.acquire().await;
            starts.push(Instant::now());
        }
        assert_eq!(busiest(&starts, Duration::from_secs(60)), 5);
        // The first five go at once, then five per window.
        assert_eq!(starts[4], starts[0]);
        assert_eq!(starts[5] - starts[0], Duration::from_secs(60));
        assert_eq!(starts[22] - starts[0], Duration::from_secs(240));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_no_limit() {
        let limiter = Limiter::new(0, Duration::from_secs(60));
        let before = Instant::now();
        for _ in 0..1000 {
            limiter.acquire().await;
        }
        assert_eq!(Instant::now(), before);
    }
}
