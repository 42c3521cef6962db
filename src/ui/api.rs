//! The JSON API of SPEC.md's "Dashboard and HTTP API" table. Store reads run on the blocking
//! pool, since SQLite calls block.

use std::sync::Arc;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Dashboard, UiError};
use crate::campaign::{CampaignKey, Kind};
use crate::model::{EventId, EventStatus};
use crate::store::{ActionStatus, EventFilter, EventSummary};

/// Events listed when the request names no limit, as `events list` does.
pub const DEFAULT_EVENT_LIMIT: u32 = 50;
/// The most events one request lists.
const MAX_EVENT_LIMIT: u32 = 1_000;
/// The most recent events a device's history shows.
pub const DEVICE_HISTORY: u32 = 200;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/api/v1/campaigns", web::get().to(campaigns))
        .route(
            "/api/v1/campaigns/{kind}/{target_version}",
            web::get().to(campaign),
        )
        .route("/api/v1/devices/{device_id}", web::get().to(device))
        .route("/api/v1/events", web::get().to(events))
        .route("/api/v1/dead", web::get().to(dead))
        .route("/api/v1/dead/{id}/retry", web::post().to(retry_dead))
        .route("/api/v1/dead/{id}/drop", web::post().to(drop_dead));
}

type Shared = web::Data<Dashboard>;

/// Runs a blocking read of the store off the async workers.
pub async fn blocking<T: Send + 'static>(
    dashboard: &Shared,
    read: impl FnOnce(&Dashboard) -> Result<T, UiError> + Send + 'static,
) -> Result<T, UiError> {
    let dashboard: Arc<Dashboard> = dashboard.clone().into_inner();
    web::block(move || read(&dashboard)).await?
}

async fn campaigns(dashboard: Shared) -> Result<HttpResponse, UiError> {
    let summaries = blocking(&dashboard, |d| Ok(d.campaigns(|index| index.summaries())?)).await?;
    Ok(HttpResponse::Ok().json(summaries))
}

/// The campaign a path names, or 404.
pub fn campaign_key(kind: &str, target_version: &str) -> Result<CampaignKey, UiError> {
    let kind = Kind::parse(kind).ok_or_else(|| {
        UiError::NotFound(format!(
            "no campaign kind {kind:?}; it is software or firmware"
        ))
    })?;
    Ok(CampaignKey {
        kind,
        target_version: target_version.to_owned(),
    })
}

pub fn no_campaign(key: &CampaignKey) -> UiError {
    UiError::NotFound(format!(
        "no {} campaign to {:?} in the store",
        key.kind.as_str(),
        key.target_version
    ))
}

async fn campaign(
    dashboard: Shared,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, UiError> {
    let (kind, target_version) = path.into_inner();
    let key = campaign_key(&kind, &target_version)?;
    let detail = blocking(&dashboard, move |d| {
        d.campaigns(|index| index.detail(&key))?
            .ok_or_else(|| no_campaign(&key))
    })
    .await?;
    Ok(HttpResponse::Ok().json(detail))
}

/// One event of a device's history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEvent {
    pub id: String,
    pub received_at: String,
    pub notify_type: Option<String>,
    pub status: String,
    pub summary: String,
}

/// A device's notifications and the actions they led to, the most recent first.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceHistory {
    pub device_id: String,
    pub events: Vec<HistoryEvent>,
    /// Action JSON with the action's `id`, `status` and `attempts`.
    pub actions: Vec<Value>,
}

/// Reads the last [`DEVICE_HISTORY`] events of `device_id` and their actions.
pub fn device_history(dashboard: &Dashboard, device_id: &str) -> Result<DeviceHistory, UiError> {
    let store = dashboard.store();
    let filter = EventFilter {
        device_id: Some(device_id.to_owned()),
        limit: DEVICE_HISTORY,
        ..EventFilter::default()
    };
    let mut history = DeviceHistory {
        device_id: device_id.to_owned(),
        events: Vec::new(),
        actions: Vec::new(),
    };
    for listed in store.list_events(&filter)? {
        let Some(detail) = listed
            .id
            .parse::<EventId>()
            .ok()
            .and_then(|id| store.event(id).transpose())
        else {
            continue;
        };
        let detail = detail?;
        history.events.push(HistoryEvent {
            summary: summarize(detail.summary.notify_type.as_deref(), &detail.body),
            id: detail.summary.id,
            received_at: detail.summary.received_at,
            notify_type: detail.summary.notify_type,
            status: detail.summary.status,
        });
        for action in detail.actions {
            let mut value = action.action;
            if let Some(object) = value.as_object_mut() {
                object.insert("id".into(), action.id.into());
                object.insert("status".into(), action.status.as_str().into());
                object.insert("attempts".into(), action.attempts.into());
            }
            history.actions.push(value);
        }
    }
    Ok(history)
}

/// One line about a notification: an upgrade's outcome and versions, else its type.
pub fn summarize(notify_type: Option<&str>, body: &str) -> String {
    let Ok(body) = serde_json::from_str::<Value>(body) else {
        return String::new();
    };
    let text = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or("");
    match notify_type.unwrap_or("") {
        "swUpgradeResultNotify" => {
            let mut line = format!(
                "software {} {} → {}",
                text("swUpgradeResult"),
                text("sourceVersion"),
                text("targetVersion")
            );
            if text("swUpgradeResult") == "FAIL" {
                line += &format!(" (error {}: {})", text("errorCode"), text("description"));
            }
            line
        }
        "fwUpgradeResultNotify" => format!(
            "firmware {} {} → {}",
            text("status"),
            text("sourceVersion"),
            text("targetVersion")
        ),
        "swUpgradeStateChangeNotify" => format!("software {}", text("swUpgradeState")),
        "fwUpgradeStateChangeNotify" => format!("firmware {}", text("step")),
        other => other.to_owned(),
    }
}

async fn device(dashboard: Shared, path: web::Path<String>) -> Result<HttpResponse, UiError> {
    let device_id = path.into_inner();
    let history = blocking(&dashboard, move |d| device_history(d, &device_id)).await?;
    Ok(HttpResponse::Ok().json(history))
}

/// The filters of `/api/v1/events` and `/ui/events`, as `events list` takes them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EventQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub notify_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl EventQuery {
    /// The store's filter; an empty field filters nothing, as an empty form field means.
    pub fn filter(&self) -> Result<EventFilter, UiError> {
        let given = |value: &Option<String>| value.clone().filter(|text| !text.is_empty());
        let status = given(&self.status)
            .map(|text| text.parse::<EventStatus>())
            .transpose()
            .map_err(|_| UiError::BadRequest("status is pending, handled or failed".to_owned()))?;
        Ok(EventFilter {
            status,
            notify_type: given(&self.notify_type),
            device_id: given(&self.device),
            limit: self
                .limit
                .unwrap_or(DEFAULT_EVENT_LIMIT)
                .min(MAX_EVENT_LIMIT),
        })
    }
}

pub fn list_events(
    dashboard: &Dashboard,
    query: &EventQuery,
) -> Result<Vec<EventSummary>, UiError> {
    Ok(dashboard.store().list_events(&query.filter()?)?)
}

async fn events(dashboard: Shared, query: web::Query<EventQuery>) -> Result<HttpResponse, UiError> {
    let query = query.into_inner();
    let events = blocking(&dashboard, move |d| list_events(d, &query)).await?;
    Ok(HttpResponse::Ok().json(events))
}

async fn dead(dashboard: Shared) -> Result<HttpResponse, UiError> {
    let dead = blocking(&dashboard, |d| Ok(d.store().dead_letters()?)).await?;
    Ok(HttpResponse::Ok().json(dead))
}

/// What to do with a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadChoice {
    Retry,
    Drop,
}

impl DeadChoice {
    /// The action's status afterwards.
    fn status(self) -> ActionStatus {
        match self {
            DeadChoice::Retry => ActionStatus::Pending,
            DeadChoice::Drop => ActionStatus::Dropped,
        }
    }
}

/// Retries or drops the dead letter `id`; 404 when there is none.
pub fn settle_dead(dashboard: &Dashboard, id: &str, choice: DeadChoice) -> Result<Value, UiError> {
    let store = dashboard.store();
    let found = match choice {
        DeadChoice::Retry => store.requeue_dead(Some(id))? > 0,
        DeadChoice::Drop => store.drop_dead(id)?,
    };
    match found {
        true => Ok(json!({ "id": id, "status": choice.status() })),
        false => Err(UiError::NotFound(format!("no dead letter {id}"))),
    }
}

/// API `POST`s must be JSON, which a cross-site form cannot send: that is their CSRF guard.
fn require_json(request: &HttpRequest) -> Result<(), UiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence.eq_ignore_ascii_case("application/json") {
        true => Ok(()),
        false => Err(UiError::NotJson),
    }
}

async fn settle(
    request: HttpRequest,
    dashboard: Shared,
    id: String,
    choice: DeadChoice,
) -> Result<HttpResponse, UiError> {
    require_json(&request)?;
    let answer = blocking(&dashboard, move |d| settle_dead(d, &id, choice)).await?;
    Ok(HttpResponse::Ok().json(answer))
}

async fn retry_dead(
    request: HttpRequest,
    dashboard: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, UiError> {
    settle(request, dashboard, path.into_inner(), DeadChoice::Retry).await
}

async fn drop_dead(
    request: HttpRequest,
    dashboard: Shared,
    path: web::Path<String>,
) -> Result<HttpResponse, UiError> {
    settle(request, dashboard, path.into_inner(), DeadChoice::Drop).await
}
