//! The scheduler's clock: wall-clock time for what is stored (attempt times, due times) and
//! monotonic time for the breakers, from one injected source. The logic it feeds ([`Slots`],
//! [`Outcomes`]) takes the time as an argument, so its tests move time instead of waiting.
//!
//! [`Slots`]: super::slots::Slots
//! [`Outcomes`]: super::outcome::Outcomes

use std::time::Instant;

use crate::model::Millis;

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, as stored.
    fn now(&self) -> Millis;
    /// Monotonic time, for cooldowns.
    fn instant(&self) -> Instant;
}

/// The system's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        Millis::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}
