//! Why a request is refused, and the one place where refusals become HTTP answers.
//!
//! A 4xx body is `{"error"}` or `{"error","field"}` and is logged at debug: the sender's
//! mistake is not the operator's problem. The 503 has a generic body and `Retry-After`; the
//! store writer has already logged the cause once.
//!
//! A [`Denial`] (401, 403) says nothing but its status in words: which part of the check
//! failed, or whether a path exists, would help someone probing the receiver.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::notification::BodyError;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("body exceeds max_body_bytes ({limit} bytes)")]
    TooLarge { limit: usize },
    #[error("content type {0:?} is not JSON; send application/json")]
    UnsupportedMediaType(String),
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{field}: {error}")]
    Invalid { field: String, error: String },
    #[error("the notification could not be stored in time; retry later")]
    Unavailable,
}

impl Refusal {
    /// The bounded label under which this refusal is counted and kept.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "too_large",
            Refusal::UnsupportedMediaType(_) => "unsupported_media_type",
            Refusal::Unreadable(_) => "unreadable",
            Refusal::Body(BodyError::NotJson(_)) => "not_json",
            Refusal::Body(BodyError::NotObject) => "not_object",
            Refusal::Invalid { .. } => "invalid",
            Refusal::Unavailable => "unavailable",
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Unreadable(_) | Refusal::Body(_) | Refusal::Invalid { .. } => {
                StatusCode::BAD_REQUEST
            }
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        let body = match self {
            Refusal::Invalid { field, .. } => json!({ "error": self.to_string(), "field": field }),
            _ => json!({ "error": self.to_string() }),
        };
        if let Refusal::Unavailable = self {
            response.insert_header((RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)));
        }
        response.json(body)
    }
}

/// Why the access check turned a request away; never stored as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("no token was sent")]
    MissingToken,
    #[error("the token does not match server.auth.token")]
    WrongToken,
    #[error("the address is outside server.auth.allow_ips")]
    Address,
}

impl Denial {
    /// The bounded label under which this denial is counted.
    pub fn reason(self) -> &'static str {
        match self {
            Denial::MissingToken => "missing_token",
            Denial::WrongToken => "wrong_token",
            Denial::Address => "address",
        }
    }
}

impl ResponseError for Denial {
    fn status_code(&self) -> StatusCode {
        match self {
            Denial::MissingToken | Denial::WrongToken => StatusCode::UNAUTHORIZED,
            Denial::Address => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        let words = status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase();
        response.json(json!({ "error": words }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status() {
        let cases = [
            (Refusal::TooLarge { limit: 10 }, 413),
            (Refusal::UnsupportedMediaType("text/plain".into()), 415),
            (Refusal::Body(BodyError::NotObject), 400),
            (
                Refusal::Invalid {
                    field: "deviceId".into(),
                    error: "missing".into(),
                },
                400,
            ),
            (Refusal::Unavailable, 503),
        ];
        for (refusal, status) in cases {
            assert_eq!(
                refusal.error_response().status().as_u16(),
                status,
                "{refusal}"
            );
        }
    }

    #[test]
    fn denials_do_not_say_which_check_failed() {
        let missing = Denial::MissingToken.error_response();
        let wrong = Denial::WrongToken.error_response();
        assert_eq!(
            (missing.status().as_u16(), wrong.status().as_u16()),
            (401, 401)
        );
        assert_eq!(missing.headers().get(WWW_AUTHENTICATE).unwrap(), "Bearer");
        assert_eq!(Denial::Address.error_response().status().as_u16(), 403);
    }

    #[test]
    fn only_the_503_asks_to_retry() {
        let response = Refusal::Unavailable.error_response();
        assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "5");
        let response = Refusal::TooLarge { limit: 1 }.error_response();
        assert!(response.headers().get(RETRY_AFTER).is_none());
    }
}
