//! Retry decisions, as data: what an answer means ([`Verdict`]), how long to wait before the
//! next attempt, and what a `Retry-After` asks for. One policy for every channel.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The destination acknowledged it; `result` is what it returned that is worth keeping
    /// (e.g. an `operationId`).
    Sent { result: Option<String> },
    /// Worth another attempt, after `after` if the destination said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The destination refused it for good: straight to the dead-letter queue.
    Dead { reason: String },
    /// Deliberately not sent (a failure the platform did not confirm): recorded as
    /// `skipped` with the reason, never retried.
    Skipped { reason: String },
    /// It could not even be sent (an address or URL that cannot be used, a channel no longer
    /// configured): dead-lettered like `Dead`, but the destination never saw it, so it says
    /// nothing about the destination's health.
    Unsendable { reason: String },
}

/// The HTTP answer classification shared by every HTTP channel: 2xx sent; 408, 429 and 5xx
/// retried (honouring `Retry-After` on 429 and 503); any other status is permanent.
pub fn classify_http(status: StatusCode, headers: &HeaderMap, body_excerpt: &str) -> Verdict {
    if status.is_success() {
        return Verdict::Sent { result: None };
    }
    let reason = if body_excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body_excerpt}")
    };
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if !retryable {
        return Verdict::Dead { reason };
    }
    let honours_retry_after =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    let after = honours_retry_after
        .then(|| retry_after(headers, SystemTime::now()))
        .flatten();
    Verdict::Retry { reason, after }
}

/// `Retry-After` as seconds (fractions rounded up) or as an HTTP date; nonsense is ignored.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Some(Duration::from_secs(seconds.ceil() as u64))
        }
        Ok(_) => None,
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .ok(),
    }
}

/// The retry schedule of SPEC.md's Delivery section.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub retry_after_max: Duration,
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based):
    /// `min(max, initial × 2^(attempt-1)) × U(0.8, 1.2)`, or the destination's `Retry-After`
    /// cut to `retry_after_max`.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.retry_after_max);
        }
        let doubled = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        doubled.min(self.max).mul_f64(jitter())
    }
}

/// A factor uniform in [0.8, 1.2), so that retries of many actions spread out.
fn jitter() -> f64 {
    // A randomly keyed hasher is std's source of randomness; hashing nothing yields a fresh
    // random 64-bit value per call.
    let random = RandomState::new().hash_one(());
    0.8 + 0.4 * (random as f64 / u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        headers
    }

    #[test]
    fn statuses_are_classified_as_a_table() {
        let none = HeaderMap::new();
        for (status, expected) in [
            (200, "sent"),
            (204, "sent"),
            (400, "dead"),
            (401, "dead"),
            (404, "dead"),
            (408, "retry"),
            (429, "retry"),
            (500, "retry"),
            (501, "retry"),
            (503, "retry"),
        ] {
            let verdict = classify_http(StatusCode::from_u16(status).unwrap(), &none, "");
            let kind = match verdict {
                Verdict::Sent { .. } => "sent",
                Verdict::Retry { .. } => "retry",
                Verdict::Dead { .. } | Verdict::Unsendable { .. } | Verdict::Skipped { .. } => {
                    "dead"
                }
            };
            assert_eq!(kind, expected, "{status}");
        }
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_only() {
        let verdict = classify_http(StatusCode::TOO_MANY_REQUESTS, &headers("7"), "");
        assert!(
            matches!(verdict, Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7))
        );
        let verdict = classify_http(StatusCode::BAD_GATEWAY, &headers("7"), "");
        assert!(matches!(verdict, Verdict::Retry { after: None, .. }));
    }

    #[test]
    fn retry_after_takes_seconds_dates_and_ignores_nonsense() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            retry_after(&headers("2.1"), now),
            Some(Duration::from_secs(3))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            retry_after(&headers(&date), now),
            Some(Duration::from_secs(90))
        );
        for nonsense in ["-5", "NaN", "soon", ""] {
            assert_eq!(retry_after(&headers(nonsense), now), None, "{nonsense}");
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let backoff = Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(60),
        };
        for (attempt, base) in [(1, 2.0), (2, 4.0), (3, 8.0), (5, 30.0), (40, 30.0)] {
            for _ in 0..100 {
                let wait = backoff.wait(attempt, None).as_secs_f64();
                assert!(
                    (base * 0.8..base * 1.2).contains(&wait),
                    "attempt {attempt}: {wait}"
                );
            }
        }
        assert_eq!(
            backoff.wait(1, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(
            backoff.wait(1, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
    }
}
