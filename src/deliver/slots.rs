//! What this instance knows of each destination: its sends under way (its share of
//! `concurrency_per_destination`) and its circuit breaker. It decides how many due actions
//! may be claimed; it is never written to the store, so a restart starts with every
//! destination closed and free.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::breaker::{Admission, Breaker, Change};
use super::retry::Verdict;
use crate::config::DeliveryConfig;
use crate::destination::Destination;

pub struct Slots {
    concurrency: usize,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    destinations: Mutex<HashMap<Destination, DestinationState>>,
}

/// One destination's breaker and sends under way.
struct DestinationState {
    breaker: Breaker,
    sending: usize,
}

impl Slots {
    pub fn new(policy: &DeliveryConfig) -> Slots {
        Slots {
            concurrency: policy.concurrency_per_destination,
            breaker_failures: policy.breaker_failures,
            breaker_cooldown: policy.breaker_cooldown,
            destinations: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Destination, DestinationState>> {
        self.destinations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many due actions of `destination` may be claimed now: its free slots, one probe,
    /// or none while its breaker is open (the actions keep their schedule).
    pub fn admit(&self, destination: &Destination, now: Instant) -> Option<usize> {
        let mut destinations = self.lock();
        let state = destinations
            .entry(destination.clone())
            .or_insert_with(|| DestinationState {
                breaker: Breaker::new(self.breaker_failures, self.breaker_cooldown),
                sending: 0,
            });
        let free = self.concurrency.saturating_sub(state.sending);
        if free == 0 {
            return None;
        }
        match state.breaker.admit(now) {
            Admission::Go => Some(free),
            Admission::Probe => Some(1),
            Admission::Wait { .. } => None,
        }
    }

    /// `started` sends of `destination` began; when none did, a probe granted by
    /// [`Slots::admit`] is kept for the next action.
    pub fn started(&self, destination: &Destination, started: usize, now: Instant) {
        if let Some(state) = self.lock().get_mut(destination) {
            state.sending += started;
            if started == 0 {
                state.breaker.forget_probe(now);
            }
        }
    }

    /// A send ended with `verdict`: its slot is free, and its breaker learns from it.
    pub fn finished(&self, destination: &Destination, verdict: &Verdict, now: Instant) -> Change {
        let mut destinations = self.lock();
        let Some(state) = destinations.get_mut(destination) else {
            return Change::None;
        };
        state.sending = state.sending.saturating_sub(1);
        match verdict {
            // A refusal (4xx) is an answer: the destination is up, only the message is wrong.
            Verdict::Sent { .. } | Verdict::Dead { .. } | Verdict::Skipped { .. } => {
                state.breaker.record(true, now)
            }
            Verdict::Retry { .. } => state.breaker.record(false, now),
            Verdict::Unsendable { .. } => {
                state.breaker.forget_probe(now);
                Change::None
            }
        }
    }

    /// How long until the first open breaker lets a probe through (`longest` if none is open
    /// or it is further away).
    pub fn until_a_breaker_reopens(&self, now: Instant, longest: Duration) -> Duration {
        self.lock()
            .values()
            .filter_map(|state| state.breaker.reopens_at())
            .map(|at| at.saturating_duration_since(now))
            .min()
            .unwrap_or(longest)
            .min(longest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const IDLE: Duration = Duration::from_secs(1);

    fn slots(toml: &str) -> Slots {
        let config = Config::parse(toml, std::path::Path::new("t.toml"), Vec::new()).unwrap();
        Slots::new(&config.delivery)
    }

    fn failed() -> Verdict {
        Verdict::Retry {
            reason: "503".to_owned(),
            after: None,
        }
    }

    #[test]
    fn slots_bound_the_claims_and_free_up_when_sends_end() {
        let slots = slots("[delivery]\nconcurrency_per_destination = 3\n");
        let now = Instant::now();
        assert_eq!(slots.admit(&Destination::Email, now), Some(3));
        slots.started(&Destination::Email, 2, now);
        assert_eq!(slots.admit(&Destination::Email, now), Some(1));
        slots.started(&Destination::Email, 1, now);
        assert_eq!(slots.admit(&Destination::Email, now), None);
        slots.finished(&Destination::Email, &Verdict::Sent { result: None }, now);
        assert_eq!(slots.admit(&Destination::Email, now), Some(1));
        assert_eq!(
            slots.admit(&Destination::Channel("ops".into()), now),
            Some(3),
            "destinations are independent"
        );
    }

    #[test]
    fn an_open_breaker_claims_nothing_and_sets_the_wake_up_then_one_probe() {
        let slots = slots("[delivery]\nbreaker_failures = 2\nbreaker_cooldown = \"30s\"\n");
        let start = Instant::now();
        assert_eq!(slots.until_a_breaker_reopens(start, IDLE), IDLE);
        for _ in 0..2 {
            slots.admit(&Destination::Email, start);
            slots.started(&Destination::Email, 1, start);
            slots.finished(&Destination::Email, &failed(), start);
        }
        assert_eq!(slots.admit(&Destination::Email, start), None);
        let later = start + Duration::from_secs(29);
        assert_eq!(slots.admit(&Destination::Email, later), None);
        assert_eq!(
            slots.until_a_breaker_reopens(later, Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        let reopened = start + Duration::from_secs(30);
        assert_eq!(
            slots.admit(&Destination::Email, reopened),
            Some(1),
            "one probe"
        );
        // The probe found nothing to send: the next admission is a probe again.
        slots.started(&Destination::Email, 0, reopened);
        assert_eq!(slots.admit(&Destination::Email, reopened), Some(1));
        slots.started(&Destination::Email, 1, reopened);
        assert_eq!(
            slots.admit(&Destination::Email, reopened),
            None,
            "one probe at a time"
        );
        let change = slots.finished(
            &Destination::Email,
            &Verdict::Sent { result: None },
            reopened,
        );
        assert_eq!(change, Change::Recovered);
        assert_eq!(
            slots.admit(&Destination::Email, reopened),
            Some(8),
            "closed: every slot"
        );
    }
}
