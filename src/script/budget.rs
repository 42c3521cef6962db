//! How long one plugin run may compute: `max_run_time` of the CPU time its thread spends.
//!
//! CPU time rather than wall-clock time, because script threads run at a lower priority
//! ([`crate::background`]): on a machine busy with intake a run may wait many times its own
//! length for the CPU, and a wall-clock limit would fail a script that computes for a few
//! milliseconds and so drop its alerts. Only a run that itself computes past the limit, such as
//! an endless loop, is stopped. Where no per-thread CPU clock exists, wall-clock time is used.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The CPU time a run may still use, checked cheaply: reading a thread's CPU clock is a system
/// call, about ten times the cost of the monotonic clock, so it is read only once enough
/// wall-clock time has passed for the budget to be possibly spent (a thread cannot compute for
/// longer than the time that went by).
pub(crate) struct RunBudget {
    limit: Duration,
    cpu_at_start: Duration,
    /// Before this instant the budget cannot be spent.
    earliest_end: Cell<Instant>,
}

impl RunBudget {
    /// A budget of `limit`, counted from now on the calling thread.
    pub fn start(limit: Duration) -> RunBudget {
        RunBudget {
            limit,
            cpu_at_start: thread_time(),
            earliest_end: Cell::new(Instant::now() + limit),
        }
    }

    /// True once the calling thread has used the whole budget.
    pub fn is_spent(&self) -> bool {
        let now = Instant::now();
        if now < self.earliest_end.get() {
            return false;
        }
        let used = thread_time().saturating_sub(self.cpu_at_start);
        match self.limit.checked_sub(used) {
            Some(left) if !left.is_zero() => {
                self.earliest_end.set(now + left);
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
    static FIRST_CALL: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    FIRST_CALL.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::{Duration, Instant};

    use super::RunBudget;

    #[test]
    fn waiting_for_the_cpu_or_anything_else_does_not_spend_the_budget() {
        let budget = RunBudget::start(Duration::from_millis(20));
        // Standing for a run that is off the CPU: preempted, or waiting on a store read.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!budget.is_spent());
    }

    #[test]
    fn computing_spends_the_budget() {
        let budget = RunBudget::start(Duration::from_millis(20));
        let started = Instant::now();
        let mut spins = 0u64;
        while !budget.is_spent() && started.elapsed() < Duration::from_secs(10) {
            spins = std::hint::black_box(spins + 1);
        }
        assert!(budget.is_spent(), "20 ms of CPU were not used in 10 s");
    }
}
