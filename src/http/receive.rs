//! The platform's callback: read, check, store, answer.
//!
//! The platform treats anything but a 200 within 15 s as a failure and blocklists the callback
//! after ten in a row (PLATFORM-NOTES.md §1.3), so this handler refuses only what cannot be a
//! platform notification, answers 200 as soon as the notification is durable, and never waits
//! on scripts or the network. Every refused body is kept, truncated, with its reason.

use std::time::Instant;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde_json::json;

use super::access::ClientAddr;
use super::error::Refusal;
use crate::config::Validation;
use crate::metrics::{Metrics, Outcome};
use crate::model::Millis;
use crate::notification::{self, Notification, Severity};
use crate::store::{Appended, Intake, NewEvent, RejectedBody};

/// What the receive handler needs, shared by every worker.
pub struct Receiver {
    pub intake: Intake,
    pub metrics: std::sync::Arc<Metrics>,
    pub max_body_bytes: usize,
    pub validation: Validation,
    pub accept_timeout: std::time::Duration,
    pub rejected_max_bytes: usize,
}

/// Facts about the request that are kept with the event or the refusal.
struct Arrival {
    received_at: Millis,
    path: String,
    remote_addr: Option<String>,
    content_type: Option<String>,
}

pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    receiver: web::Data<Receiver>,
) -> HttpResponse {
    let started = Instant::now();
    let arrival = Arrival {
        received_at: Millis::now(),
        path: request.path().to_owned(),
        remote_addr: client_addr(&request).map(|address| address.to_string()),
        content_type: request
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
    };
    let response = match read_body(payload, receiver.max_body_bytes).await {
        Ok(body) => receiver.accept(arrival, body).await,
        Err((refusal, prefix)) => receiver.refuse(&arrival, refusal, prefix, None),
    };
    receiver
        .metrics
        .receive_duration(started.elapsed().as_secs_f64());
    response
}

/// The client as the access check saw it (behind a trusted proxy, the forwarded client),
/// else the peer.
fn client_addr(request: &HttpRequest) -> Option<std::net::IpAddr> {
    let decided = request
        .extensions()
        .get::<ClientAddr>()
        .map(|client| client.0);
    decided.or_else(|| request.peer_addr().map(|peer| peer.ip()))
}

/// Reads the whole body, or stops at the first byte over `limit` and returns what was read.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, (Refusal, Vec<u8>)> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return Err((Refusal::Unreadable(error.to_string()), body)),
        };
        if body.len() + chunk.len() > limit {
            body.extend_from_slice(&chunk[..limit - body.len()]);
            return Err((Refusal::TooLarge { limit }, body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `application/json` or `application/*+json`, parameters and case ignored; a request without
/// a content type is accepted, since the body decides.
fn check_content_type(content_type: Option<&str>) -> Result<(), Refusal> {
    let Some(content_type) = content_type else {
        return Ok(());
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(Refusal::UnsupportedMediaType(content_type.to_owned()))
    }
}

impl Receiver {
    async fn accept(&self, arrival: Arrival, body: Vec<u8>) -> HttpResponse {
        if let Err(refusal) = check_content_type(arrival.content_type.as_deref()) {
            return self.refuse(&arrival, refusal, body, None);
        }
        let notification = match notification::parse(&body) {
            Ok(notification) => notification,
            Err(error) => return self.refuse(&arrival, error.into(), body, None),
        };
        if let Some(refusal) = self.strict_refusal(&notification) {
            return self.refuse(&arrival, refusal, body, notification.notify_type.as_deref());
        }
        let Notification {
            notify_type,
            device_id,
            problems,
            hash,
        } = notification;
        let event = NewEvent {
            received_at: arrival.received_at,
            path: arrival.path,
            remote_addr: arrival.remote_addr,
            notify_type: notify_type.clone(),
            device_id,
            body,
            hash,
            warnings: problems.clone(),
        };
        let stored = tokio::time::timeout(self.accept_timeout, self.intake.append(event)).await;
        let notify_type = notify_type.as_deref();
        match stored {
            Ok(Ok(Appended::Accepted(id))) => {
                self.metrics.received(notify_type, Outcome::Accepted);
                if !problems.is_empty() {
                    self.metrics.warnings(notify_type, problems.len());
                }
                HttpResponse::Ok().json(json!({
                    "status": "accepted", "id": id.to_string(), "warnings": problems
                }))
            }
            Ok(Ok(Appended::Duplicate(id))) => {
                self.metrics.received(notify_type, Outcome::Duplicate);
                HttpResponse::Ok().json(json!({ "status": "duplicate", "id": id.to_string() }))
            }
            Ok(Err(_)) | Err(_) => {
                self.metrics.received(notify_type, Outcome::Unavailable);
                self.metrics.rejected(Refusal::Unavailable.reason());
                Refusal::Unavailable.error_response()
            }
        }
    }

    /// In strict mode, the first invalid field refuses the notification; undocumented
    /// enumeration values never do.
    fn strict_refusal(&self, notification: &Notification) -> Option<Refusal> {
        if self.validation != Validation::Strict {
            return None;
        }
        let problem = notification
            .problems
            .iter()
            .find(|p| p.severity == Severity::Invalid)?;
        Some(Refusal::Invalid {
            field: problem.field.clone(),
            error: problem.error.clone(),
        })
    }

    fn refuse(
        &self,
        arrival: &Arrival,
        refusal: Refusal,
        mut body: Vec<u8>,
        notify_type: Option<&str>,
    ) -> HttpResponse {
        self.metrics.received(notify_type, Outcome::Rejected);
        self.metrics.rejected(refusal.reason());
        tracing::debug!(reason = refusal.reason(), error = %refusal, "refused a request");
        let body_len = body.len();
        body.truncate(self.rejected_max_bytes);
        let kept = self.intake.reject(RejectedBody {
            received_at: arrival.received_at,
            path: arrival.path.clone(),
            remote_addr: arrival.remote_addr.clone(),
            reason: refusal.to_string(),
            content_type: arrival.content_type.clone(),
            body,
            body_len,
        });
        if !kept {
            self.metrics.rejected_not_kept();
        }
        refusal.error_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised_whatever_their_case_and_parameters() {
        for accepted in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=UTF-8"),
            Some("application/vnd.huawei+json"),
            Some(" application/json ;charset=utf-8"),
        ] {
            assert!(check_content_type(accepted).is_ok(), "{accepted:?}");
        }
        for refused in [
            "text/plain",
            "application/xml",
            "application/jsonx",
            "json",
            "",
        ] {
            assert!(check_content_type(Some(refused)).is_err(), "{refused:?}");
        }
    }
}
