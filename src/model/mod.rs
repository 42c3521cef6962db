//! Types that cross stages: ids, event states and timestamps. Depends on nothing else in the
//! crate, so every stage can use it without pulling in another.

pub mod state;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ulid::Ulid;

/// An event's id: a ULID made of the time it was received and its place in the store's
/// arrival order, so ids sort by arrival and the store finds an event by its id without an
/// index of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub Ulid);

impl EventId {
    pub fn from_parts(received_at: Millis, seq: i64) -> EventId {
        let millis = u64::try_from(received_at.0).unwrap_or(0);
        EventId(Ulid::from_parts(millis, u128::from(seq.unsigned_abs())))
    }

    /// The arrival sequence number this id was made from.
    pub fn seq(self) -> i64 {
        i64::try_from(self.0.random() & u128::from(u64::MAX >> 1)).unwrap_or(0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(text.trim()).map(EventId).map_err(|_| {
            format!("{text:?} is not an event id (26 characters, as `events list` shows)")
        })
    }
}

/// Where an event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Stored, not yet run through the scripts.
    Pending,
    /// Every plugin succeeded.
    Handled,
    /// At least one plugin failed.
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Handled => "handled",
            EventStatus::Failed => "failed",
        }
    }
}

impl FromStr for EventStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pending" => Ok(EventStatus::Pending),
            "handled" => Ok(EventStatus::Handled),
            "failed" => Ok(EventStatus::Failed),
            other => Err(format!(
                "unknown event status {other:?}; expected pending, handled or failed"
            )),
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point in time as stored: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Millis {
        Millis::from(SystemTime::now())
    }

    pub fn minus(self, duration: Duration) -> Millis {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Millis(self.0.saturating_sub(millis))
    }

    /// RFC 3339 in UTC with milliseconds, as scripts and the CLI show times.
    pub fn to_rfc3339(self) -> String {
        let since_epoch = Duration::from_millis(u64::try_from(self.0).unwrap_or(0));
        humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
    }
}

/// Serialised as RFC 3339, as every time a user reads.
impl serde::Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl From<SystemTime> for Millis {
    fn from(time: SystemTime) -> Millis {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Millis(i64::try_from(millis).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_sequence_and_sort_by_arrival() {
        let first = EventId::from_parts(Millis(1_700_000_000_000), 41);
        let second = EventId::from_parts(Millis(1_700_000_000_000), 42);
        let later = EventId::from_parts(Millis(1_700_000_000_001), 43);
        assert_eq!(first.seq(), 41);
        assert!(first < second && second < later);
        assert_eq!(first.to_string().parse::<EventId>().unwrap().seq(), 41);
    }

    #[test]
    fn ids_round_trip_and_bad_ids_are_explained() {
        let id = EventId(Ulid::generate());
        assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
        let error = "42".parse::<EventId>().unwrap_err();
        assert!(error.contains("is not an event id"), "{error}");
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            EventStatus::Pending,
            EventStatus::Handled,
            EventStatus::Failed,
        ] {
            assert_eq!(status.as_str().parse::<EventStatus>().unwrap(), status);
        }
        assert!("done".parse::<EventStatus>().is_err());
    }

    #[test]
    fn times_render_as_rfc3339_utc() {
        assert_eq!(
            Millis(1_700_000_000_123).to_rfc3339(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(Millis(10_000).minus(Duration::from_secs(3)), Millis(7_000));
    }
}
