//! How long one plugin run may compute: `max_run_time` of the CPU time its thread spends.
//!
//! CPU time rather than wall-clock time, because script threads run at a lower priority
//! ([`crate::background`]): on a machine busy with intake a run may wait many times its own
//! length for the CPU, and a wall-clock limit would fail a script that computes for a few
//! milliseconds and so drop its alerts. Only a run that itself computes past the limit, such as
//! an endless loop, is stopped. Where no per-thread CPU clock exists, wall-clock time is used.
//!
//! Reading a thread's CPU clock is a system call, dearer than a whole short run's share of the
//! clock checks, so a run does not read it as it starts. It counts from the thread's last
//! reading instead, at most [`READING_MAX_AGE`] old: a thread cannot compute for longer than the
//! time that went by, so the run has used at least the CPU time since that reading minus the
//! wall-clock time from the reading to the run's start. The run may thus compute up to
//! `READING_MAX_AGE` longer than the limit, never less.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How old the thread's last CPU clock reading may be when a run starts on it; older, the run
/// reads the clock again. With short runs back to back this reads the clock about once a
/// millisecond instead of once a run.
const READING_MAX_AGE: Duration = Duration::from_millis(1);

/// A reading of the thread's CPU clock, and when it was taken.
#[derive(Clone, Copy)]
struct Reading {
    cpu: Duration,
    at: Instant,
}

impl Reading {
    /// Reads the clock, and keeps the reading as the thread's last for the runs after.
    fn take() -> Reading {
        let reading = Reading {
            cpu: thread_time(),
            at: Instant::now(),
        };
        LAST_READING.set(Some(reading));
        reading
    }
}

thread_local! {
    static LAST_READING: Cell<Option<Reading>> = const { Cell::new(None) };
}

/// The CPU time a run may use, counted from a reading of its thread's CPU clock.
pub(crate) struct RunBudget {
    limit: Duration,
    /// The thread's CPU clock from which the run is charged: the reading before the run, plus
    /// the wall-clock time between that reading and the run's start, which may belong to
    /// earlier work.
    charged_from: Duration,
    /// Before this instant the run cannot have used its budget.
    earliest_end: Cell<Instant>,
}

impl RunBudget {
    /// A budget of `limit`, counted from now on the calling thread.
    pub fn start(limit: Duration) -> RunBudget {
        let started = Instant::now();
        let before = LAST_READING
            .get()
            .filter(|reading| started.duration_since(reading.at) <= READING_MAX_AGE)
            .unwrap_or_else(Reading::take);
        RunBudget {
            limit,
            charged_from: before.cpu + started.saturating_duration_since(before.at),
            earliest_end: Cell::new(started + limit),
        }
    }

    /// True once the calling thread has used the whole budget.
    pub fn is_spent(&self) -> bool {
        if Instant::now() < self.earliest_end.get() {
            return false;
        }
        let now = Reading::take();
        let used = now.cpu.saturating_sub(self.charged_from);
        match self.limit.checked_sub(used) {
            Some(left) if !left.is_zero() => {
                // At best the run computes all of the time until then.
                self.earliest_end.set(now.at + left);
                false
            }
            _ => true,
        }
    }
}

/// The CPU time the calling thread has used so far.
#[cfg(target_os = "linux")]
fn thread_time() -> Duration {
    use rustix::time::{ClockId, clock_gettime};
    Duration::try_from(clock_gettime(ClockId::ThreadCPUTime)).unwrap_or(Duration::ZERO)
}

/// Wall-clock time since the first call, where threads have no CPU clock.
#[cfg(not(target_os = "linux"))]
fn thread_time() -> Duration {
    static FIRST_CALL: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    FIRST_CALL.get_or_init(Instant::now).elapsed()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::{RunBudget, thread_time};

    const LIMIT: Duration = Duration::from_millis(20);

    /// Computes until `budget` is spent (at most 10 s); returns the CPU time that took.
    fn spin_until_spent(budget: &RunBudget) -> Duration {
        let (cpu, started) = (thread_time(), Instant::now());
        let mut spins = 0u64;
        while !budget.is_spent() && started.elapsed() < Duration::from_secs(10) {
            spins = std::hint::black_box(spins + 1);
        }
        assert!(budget.is_spent(), "{LIMIT:?} of CPU were not used in 10 s");
        thread_time() - cpu
    }

    #[test]
    fn waiting_for_the_cpu_or_anything_else_does_not_spend_the_budget() {
        let budget = RunBudget::start(LIMIT);
        // Standing for a run that is off the CPU: preempted, or waiting on a store read.
        std::thread::sleep(3 * LIMIT);
        assert!(!budget.is_spent());
    }

    #[test]
    fn computing_spends_the_budget() {
        let used = spin_until_spent(&RunBudget::start(LIMIT));
        assert!(
            used >= LIMIT - super::READING_MAX_AGE,
            "stopped after {used:?}"
        );
    }

    #[test]
    fn a_run_long_after_the_threads_last_reading_is_charged_from_a_fresh_one() {
        spin_until_spent(&RunBudget::start(LIMIT));
        // Without a fresh reading the next run would not be charged for these 200 ms.
        std::thread::sleep(10 * LIMIT);
        let used = spin_until_spent(&RunBudget::start(LIMIT));
        assert!(
            used < 2 * LIMIT,
            "a run computed {used:?} on a budget of {LIMIT:?}"
        );
    }
}
