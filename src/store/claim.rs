//! Claims: who runs an event or sends an action is decided in the store, never in a process's
//! memory. A claimer takes rows with an atomic update that names it and sets a lease; its
//! results are recorded only while the claim is still its own, and a claimer that stops (or
//! stalls past the lease) loses its rows to the next claimer once the lease ends.

use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;

use crate::model::Millis;

/// How many of the oldest pending events a claim looks at per event it may take: enough to
/// find work past the devices other claimers hold, few enough to stay a short read.
pub(super) const WINDOW_PER_EVENT: usize = 4;

/// One claimer: a script worker, or an instance's delivery. Unique across processes, so that
/// instances sharing a store never take each other's claims for their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claimer(String);

impl Claimer {
    /// The claimer `role` (e.g. `deliver`, `script-0`) of this process.
    pub fn of_this_process(role: &str) -> Claimer {
        Claimer(format!("{}/{role}", this_process()))
    }

    /// A claimer named outright, for tests of the store contract.
    pub fn named(name: &str) -> Claimer {
        Claimer(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Claimer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ULID fixed at the first claim: two processes, even on one host and in one second, never
/// share it.
fn this_process() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        ulid::Generator::new()
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
            .to_string()
    })
}

/// A claimed action, as delivery names it when it records a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionClaim {
    pub id: String,
    pub by: Claimer,
}

/// One of the oldest pending events, as a claim weighs it.
#[derive(Clone)]
pub(super) struct WindowRow {
    pub(super) seq: i64,
    pub(super) device_id: Option<String>,
    pub(super) claimed_by: Option<String>,
    pub(super) lease_until: Option<i64>,
}

/// The events of `window` (oldest first) that `by` may take: free ones (unclaimed, lease
/// ended, or already its own), except those whose device has an earlier event it may not take.
pub(super) fn claimable(window: &[WindowRow], by: &str, now: Millis, limit: usize) -> Vec<i64> {
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut chosen = Vec::new();
    for row in window {
        if chosen.len() == limit {
            break;
        }
        let free = match (&row.claimed_by, row.lease_until) {
            (None, _) => true,
            (Some(holder), until) => holder == by || until.is_none_or(|until| until <= now.0),
        };
        match row.device_id.as_deref() {
            Some(device) if blocked.contains(device) => {}
            Some(device) if !free => {
                blocked.insert(device);
            }
            _ if free => chosen.push(row.seq),
            _ => {}
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, device: Option<&str>, holder: Option<(&str, i64)>) -> WindowRow {
        WindowRow {
            seq,
            device_id: device.map(str::to_owned),
            claimed_by: holder.map(|(by, _)| by.to_owned()),
            lease_until: holder.map(|(_, until)| until),
        }
    }

    #[test]
    fn a_device_waits_behind_its_earlier_event_held_elsewhere() {
        let window = [
            row(1, Some("a"), Some(("other", 100))),
            row(2, Some("b"), None),
            row(3, Some("a"), None),
            row(4, None, Some(("other", 100))),
            row(5, None, None),
            row(6, Some("b"), None),
        ];
        assert_eq!(claimable(&window, "me", Millis(50), 10), [2, 5, 6]);
    }

    #[test]
    fn an_ended_lease_or_an_own_claim_is_free_and_the_limit_stops_the_scan() {
        let window = [
            row(1, Some("a"), Some(("other", 40))),
            row(2, Some("b"), Some(("me", 100))),
            row(3, Some("c"), None),
        ];
        assert_eq!(claimable(&window, "me", Millis(50), 2), [1, 2]);
    }
}
