//! A circuit breaker per destination. After `failures` failures in a row it opens for
//! `cooldown`; then one probe goes through. While it is open, the destination's due actions are
//! held back (not claimed, not counted as attempts, their schedule untouched). A probe that
//! succeeds closes it, and the held actions go, each at its own due time; one that fails opens
//! it again. The breaker is this instance's knowledge only: it is never written to the store.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The cooldown ended and one probe is out.
    Probing,
}

/// Whether a send may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send as many as the concurrency limit allows.
    Go,
    /// The cooldown is over: send exactly one, as a probe.
    Probe,
    /// Open, or a probe is out: send nothing until then.
    Wait { until: Instant },
}

/// What a result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Just opened: the destination's due actions are held back until `until`.
    Opened {
        until: Instant,
    },
    /// A probe succeeded: the held actions may go again.
    Recovered,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold,
            cooldown,
            failures: 0,
            state: State::Closed,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Go,
            State::Open { until } if now < until => Admission::Wait { until },
            State::Open { .. } => {
                self.state = State::Probing;
                Admission::Probe
            }
            // The probe's own timeout bounds this wait.
            State::Probing => Admission::Wait {
                until: now + self.cooldown,
            },
        }
    }

    /// When an open breaker lets its probe through; `None` unless it is open.
    pub fn reopens_at(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            State::Closed | State::Probing => None,
        }
    }

    /// A probe that never reached the destination (its message could not be sent) tells
    /// nothing: the next send is a probe again, at once.
    pub fn forget_probe(&mut self, now: Instant) {
        if self.state == State::Probing {
            self.state = State::Open { until: now };
        }
    }

    /// Records a send's result. Only answers from the destination count; a failure of our own
    /// (e.g. a message that cannot be built) goes to [`Breaker::forget_probe`] instead.
    pub fn record(&mut self, success: bool, now: Instant) -> Change {
        if success {
            let was_probing = self.state == State::Probing;
            self.failures = 0;
            self.state = State::Closed;
            return if was_probing {
                Change::Recovered
            } else {
                Change::None
            };
        }
        self.failures = self.failures.saturating_add(1);
        if self.state == State::Probing || self.failures >= self.threshold {
            let until = now + self.cooldown;
            self.state = State::Open { until };
            return Change::Opened { until };
        }
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let start = Instant::now();
        let mut breaker = Breaker::new(3, COOLDOWN);
        assert_eq!(breaker.record(false, start), Change::None);
        assert_eq!(breaker.record(false, start), Change::None);
        assert_eq!(
            breaker.record(false, start),
            Change::Opened {
                until: start + COOLDOWN
            }
        );
        assert_eq!(
            breaker.admit(start),
            Admission::Wait {
                until: start + COOLDOWN
            }
        );
        let later = start + COOLDOWN;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert!(
            matches!(breaker.admit(later), Admission::Wait { .. }),
            "one probe at a time"
        );
        assert_eq!(breaker.record(true, later), Change::Recovered);
        assert_eq!(breaker.admit(later), Admission::Go);
    }

    #[test]
    fn a_failed_probe_reopens_at_once_and_a_success_resets_the_count() {
        let start = Instant::now();
        let mut breaker = Breaker::new(2, COOLDOWN);
        breaker.record(false, start);
        breaker.record(true, start);
        assert_eq!(
            breaker.record(false, start),
            Change::None,
            "the count restarted"
        );
        breaker.record(false, start);
        let later = start + COOLDOWN;
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(
            breaker.record(false, later),
            Change::Opened {
                until: later + COOLDOWN
            }
        );
    }
}
