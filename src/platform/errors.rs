//! What can go wrong talking to the platform, classified by the platform's own error codes
//! (PLATFORM-NOTES.md §4.2) before its HTTP status: token failure and throttling are both a
//! 403, and only the code tells them apart from a real refusal.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::ConfigError;

/// Superseded or expired access token (another login with the same app id revokes ours).
pub(crate) const INVALID_TOKEN: &str = "1010005";
/// The app's call budget (100 calls per 60 s by default) is used up.
pub(crate) const THROTTLED: &str = "1010009";
/// Wrong appId or secret at login.
const BAD_CREDENTIALS: &str = "100208";
/// Already subscribed (management data; and the service-data "resource conflict").
pub(crate) const ALREADY_SUBSCRIBED: &[&str] = &["100227", "200002"];

/// How long a throttled delivery waits before its next attempt: the platform counts calls per
/// 60 s, so a full window has passed by then.
const THROTTLE_PAUSE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use {key} {path}: {reason}; give a readable PEM file")]
    CertificateFile {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "cannot reach the platform at {base_url}: {reason}; check platform.base_url, the network \
         and firewalls (and client_cert/client_key if the platform requires a client certificate)"
    )]
    Unreachable { base_url: String, reason: String },
    #[error(
        "the TLS handshake with {base_url} failed: {reason}; check platform.ca_cert, \
         platform.client_cert/client_key and platform.verify_hostname"
    )]
    Certificate { base_url: String, reason: String },
    #[error("cannot make a URL of {0:?}; check platform.base_url")]
    BadAddress(String),
    #[error("the platform did not answer within {0:?}; it may be overloaded, or base_url is wrong")]
    Timeout(Duration),
    #[error(
        "the platform refused the login (HTTP {status}, error {code}: {desc}); check \
         platform.app_id and platform.secret"
    )]
    BadCredentials {
        status: u16,
        code: String,
        desc: String,
    },
    #[error(
        "the platform rejected a fresh token (HTTP {status}, error {code}); another process may \
         keep logging in with the same app id"
    )]
    TokenRejected { status: u16, code: String },
    #[error("the platform throttles this app (error 1010009); lower platform.max_calls_per_minute")]
    Throttled,
    #[error("the platform failed (HTTP {status}, error {code}: {desc}); it will be asked again")]
    Server {
        status: u16,
        code: String,
        desc: String,
    },
    #[error(
        "the platform refused the request (HTTP {status}, error {code}: {desc}){}",
        hint(code)
    )]
    Refused {
        status: u16,
        code: String,
        desc: String,
    },
    #[error("the platform answered {what}; expected {expected}")]
    Unexpected {
        what: String,
        expected: &'static str,
    },
    #[error(
        "no {file_type} for version {version:?} at the platform{filters}; upload it, or map the \
         version in [platform.packages]"
    )]
    NoPackage {
        file_type: &'static str,
        version: String,
        filters: String,
    },
    #[error(
        "{count} packages match version {version:?}: {candidates}; map the version in \
         [platform.packages] or narrow the lookup with platform.device_type, \
         manufacturer_name or model"
    )]
    AmbiguousPackage {
        version: String,
        count: usize,
        candidates: String,
    },
    /// The platform state all instances share (the token, the call window) is in the store.
    #[error("cannot use the platform token or call limit kept in the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a documented refusal means (PLATFORM-NOTES.md §4.2, §4.5), for the operator.
fn hint(code: &str) -> &'static str {
    match code {
        "123002" => "; the device or the package does not exist at the platform",
        "120015" => "; the platform found the request malformed",
        "123016" | "123019" | "123020" | "123021" => {
            "; the package does not fit the device's type, model or manufacturer"
        }
        "123025" | "123026" | "123028" | "123032" | "123033" | "123034" => {
            "; fix the retry_upgrade options (execute_type, retry_times, start_time, end_time)"
        }
        "100222" => "; the platform does not accept this callback URL (HTTPS with a port)",
        "100234" => "; the callback URL conflicts with the app's existing push URL",
        _ => "",
    }
}

impl PlatformError {
    /// Whether asking again later may succeed; permanent errors are dead-lettered at once.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PlatformError::Unreachable { .. }
                | PlatformError::Timeout(_)
                | PlatformError::TokenRejected { .. }
                | PlatformError::Throttled
                | PlatformError::Server { .. }
                | PlatformError::Unexpected { .. }
                | PlatformError::Store(_)
        )
    }

    /// How long to wait before asking again, when the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        matches!(self, PlatformError::Throttled).then_some(THROTTLE_PAUSE)
    }

    /// The platform's error code, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            PlatformError::BadCredentials { code, .. }
            | PlatformError::TokenRejected { code, .. }
            | PlatformError::Server { code, .. }
            | PlatformError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The platform's error body, `{"error_code", "error_desc"}`; absent fields are empty.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    error_desc: String,
}

impl ErrorBody {
    pub(crate) fn parse(body: &[u8]) -> ErrorBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    pub(crate) fn code(&self) -> &str {
        &self.error_code
    }
}

/// What a non-2xx answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Log in again (once) and repeat the call.
    InvalidToken,
    /// Back off and repeat.
    Throttled,
    /// Worth asking again later.
    Transient,
    /// The login was refused.
    BadCredentials,
    /// Refused for good.
    Refused,
}

/// The classification, as one table: codes first, then the status.
pub(crate) fn classify(status: StatusCode, code: &str, is_login: bool) -> Failure {
    match (code, status.as_u16()) {
        (INVALID_TOKEN, _) | (_, 401) if !is_login => Failure::InvalidToken,
        (THROTTLED, _) | (_, 429) => Failure::Throttled,
        (_, 408 | 500..=599) => Failure::Transient,
        (BAD_CREDENTIALS, _) | (_, 400..=499) if is_login => Failure::BadCredentials,
        _ => Failure::Refused,
    }
}

/// The error of a classified answer that is not retried inside the client.
pub(crate) fn answer_error(failure: Failure, status: StatusCode, body: &[u8]) -> PlatformError {
    let ErrorBody {
        error_code: code,
        error_desc: desc,
    } = ErrorBody::parse(body);
    let status = status.as_u16();
    let code = if code.is_empty() {
        "none".to_owned()
    } else {
        code
    };
    match failure {
        Failure::InvalidToken => PlatformError::TokenRejected { status, code },
        Failure::Throttled => PlatformError::Throttled,
        Failure::Transient => PlatformError::Server { status, code, desc },
        Failure::BadCredentials => PlatformError::BadCredentials { status, code, desc },
        Failure::Refused => PlatformError::Refused { status, code, desc },
    }
}

/// A transport error: the TLS layer reports its failures as `InvalidData` I/O errors, which
/// is the one typed fact that tells a certificate problem from an unreachable host. An I/O
/// error may wrap another one (whose `source` it skips), so wrapped errors are opened too.
pub(crate) fn transport_error(
    base_url: &str,
    error: &reqwest::Error,
    timeout: Duration,
) -> PlatformError {
    if error.is_timeout() {
        return PlatformError::Timeout(timeout);
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut reason = error.to_string();
    let mut tls = false;
    while let Some(error) = current {
        reason = error.to_string();
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => {
                tls |= io.kind() == std::io::ErrorKind::InvalidData;
                io.get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static))
            }
            None => error.source(),
        };
    }
    let base_url = base_url.to_owned();
    match tls {
        true => PlatformError::Certificate { base_url, reason },
        false => PlatformError::Unreachable { base_url, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_before_statuses() {
        let status = |code| StatusCode::from_u16(code).unwrap();
        for (code, http, login, expected) in [
            ("1010005", 403, false, Failure::InvalidToken),
            ("", 401, false, Failure::InvalidToken),
            ("1010009", 403, false, Failure::Throttled),
            ("", 429, false, Failure::Throttled),
            ("1010009", 403, true, Failure::Throttled),
            ("", 503, false, Failure::Transient),
            ("", 408, false, Failure::Transient),
            ("100208", 400, true, Failure::BadCredentials),
            ("", 401, true, Failure::BadCredentials),
            ("123002", 400, false, Failure::Refused),
            ("", 403, false, Failure::Refused),
            ("100222", 400, false, Failure::Refused),
        ] {
            assert_eq!(
                classify(status(http), code, login),
                expected,
                "{code} {http}"
            );
        }
    }

    #[test]
    fn errors_say_what_to_do_and_whether_to_retry() {
        let body = br#"{"error_code": "100208", "error_desc": "appId or secret wrong"}"#;
        let error = answer_error(Failure::BadCredentials, StatusCode::BAD_REQUEST, body);
        assert!(
            error
                .to_string()
                .contains("check platform.app_id and platform.secret")
        );
        assert!(!error.is_retryable());
        let error = answer_error(Failure::Throttled, StatusCode::FORBIDDEN, b"");
        assert!(error.is_retryable() && error.retry_after().is_some());
        let error = answer_error(Failure::Transient, StatusCode::BAD_GATEWAY, b"<html>");
        assert!(error.is_retryable());
        assert_eq!(error.code(), Some("none"));
    }
}
