//! What a dashboard request can fail with, and the answer it gets: JSON `{"error"}` from the
//! API, a short page from the pages.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("send Content-Type: application/json")]
    NotJson,
    #[error(
        "the form is out of date or forged (no valid CSRF token); reload the page and try again"
    )]
    Csrf,
    #[error("the store failed: {0}; see the server log")]
    Store(#[from] StoreError),
    #[error("the request was cancelled while the store was read")]
    Cancelled,
}

impl From<actix_web::error::BlockingError> for UiError {
    fn from(_: actix_web::error::BlockingError) -> UiError {
        UiError::Cancelled
    }
}

impl ResponseError for UiError {
    fn status_code(&self) -> StatusCode {
        match self {
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UiError::Csrf => StatusCode::FORBIDDEN,
            UiError::Store(_) | UiError::Cancelled => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let UiError::Store(error) = self {
            tracing::warn!(%error, "a dashboard request failed");
        }
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_string() }))
    }
}
