//! What every instance must agree on to use the platform (ARCHITECTURE.md invariant 6): the
//! one valid access token (each login revokes every other, PLATFORM-NOTES.md §4.4), the lock
//! that lets one claimer at a time renew it, and the call starts that `max_calls_per_minute`
//! counts. Backends store these; the window arithmetic lives here, once for all of them.

use std::time::Duration;

use crate::model::Millis;

/// The platform token shared by every instance of one app. `Debug` hides the values: they
/// are credentials, and a token must never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct PlatformToken {
    pub access: String,
    /// Empty when the platform issued none.
    pub refresh: String,
    /// When it is to be renewed, a little before it expires.
    pub renew_at: Millis,
    /// Seconds the platform said it lasts.
    pub expires_in: u64,
}

impl std::fmt::Debug for PlatformToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlatformToken(***)")
    }
}

impl PlatformToken {
    /// True while it need not be renewed.
    pub fn is_fresh(&self, now: Millis) -> bool {
        now < self.renew_at
    }
}

/// At most `max` call starts in any window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimit {
    pub max: u32,
    pub window: Duration,
}

impl CallLimit {
    /// The earliest start at or after `now` that keeps every window within the limit, given
    /// the starts already reserved (any order; only the latest `max` matter). A sliding window
    /// is stricter than any fixed window the platform may count in.
    pub fn next_start(&self, reserved: &[Millis], now: Millis) -> Millis {
        let max = self.max as usize;
        if max == 0 || reserved.len() < max {
            return now;
        }
        let mut latest: Vec<Millis> = reserved.to_vec();
        latest.sort_unstable();
        // The start `max` places back must be a full window before the new one.
        let bound = latest[latest.len() - max];
        Millis(bound.0.saturating_add(self.window_ms())).max(now)
    }

    /// Starts older than this no longer constrain a call reserved at `now` or later; a
    /// backend may forget them.
    pub fn forget_before(&self, now: Millis) -> Millis {
        now.minus(self.window)
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: CallLimit = CallLimit {
        max: 3,
        window: Duration::from_secs(60),
    };

    #[test]
    fn a_full_window_pushes_the_next_start_one_window_past_the_max_th_latest() {
        assert_eq!(LIMIT.next_start(&[], Millis(5)), Millis(5));
        assert_eq!(
            LIMIT.next_start(&[Millis(0), Millis(1)], Millis(5)),
            Millis(5)
        );
        let full = [Millis(2), Millis(0), Millis(1)];
        assert_eq!(LIMIT.next_start(&full, Millis(5)), Millis(60_000));
        let more = [Millis(0), Millis(1), Millis(2), Millis(60_000)];
        assert_eq!(LIMIT.next_start(&more, Millis(5)), Millis(60_001));
        assert_eq!(LIMIT.next_start(&full, Millis(90_000)), Millis(90_000));
    }

    #[test]
    fn zero_means_no_limit_and_debug_hides_the_token() {
        let unlimited = CallLimit { max: 0, ..LIMIT };
        assert_eq!(unlimited.next_start(&[Millis(1)], Millis(1)), Millis(1));
        let token = PlatformToken {
            access: "a-secret".into(),
            refresh: "r-secret".into(),
            renew_at: Millis(0),
            expires_in: 1,
        };
        assert_eq!(format!("{token:?}"), "PlatformToken(***)");
    }
}
