//! The pages under `/ui/`: server-rendered HTML that works without JavaScript (the refresh is
//! a `<meta>` reload, paused through the URL), every filter in the URL.

mod campaign;
mod chart;
mod dead;

use actix_web::{HttpResponse, web};
use maud::html;
use serde::Deserialize;

use super::api::{self, EventQuery, blocking};
use super::html::{
    self, Page, Refresh, device_link, encode, percent, stacked_bar, time, time_text,
};
use super::{Dashboard, UiError};
use crate::campaign::Summary;

type Shared = web::Data<Dashboard>;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/ui", web::get().to(to_index))
        .route("/ui/", web::get().to(index))
        .route("/ui/assets/dashboard.css", web::get().to(stylesheet))
        .route("/ui/devices/{device_id}", web::get().to(device))
        .route("/ui/events", web::get().to(events));
    campaign::routes(config);
    dead::routes(config);
}

/// The refresh choice, the one query parameter every page takes.
#[derive(Debug, Default, Deserialize)]
struct RefreshQuery {
    refresh: Option<String>,
}

async fn to_index() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header(("Location", "/ui/"))
        .finish()
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "max-age=3600"))
        .body(html::STYLESHEET)
}

/// The link to a campaign's page.
fn campaign_href(summary: &Summary) -> String {
    format!(
        "/ui/campaigns/{}/{}",
        summary.kind.as_str(),
        encode(&summary.target_version)
    )
}

async fn index(
    dashboard: Shared,
    query: web::Query<RefreshQuery>,
) -> Result<HttpResponse, UiError> {
    let summaries = blocking(&dashboard, |d| Ok(d.campaigns(|index| index.summaries())?)).await?;
    let page = Page {
        title: "Upgrade campaigns",
        here: "/ui/",
        refresh: Refresh::from_query(query.refresh.as_deref()),
    };
    Ok(page.render(html! {
        @if summaries.is_empty() {
            p.empty { "No upgrade results or state changes stored yet." }
        }
        ul.tiles {
            @for summary in &summaries {
                li.tile data-campaign={ (summary.kind.as_str()) "/" (summary.target_version) } {
                    h2 { a href=(campaign_href(summary)) { (summary.kind.as_str()) " " (summary.target_version) } }
                    (stacked_bar(&summary.counts))
                    dl.counts {
                        dt { "Devices" } dd data-count="devices" { (summary.counts.devices) }
                        dt { "Failure rate" } dd data-count="fail_rate" { (percent(summary.fail_rate)) }
                        dt { "Recovered" } dd { (summary.counts.recovered) }
                        dt { "Retries" } dd { (summary.counts.retries) }
                        dt { "Last result" } dd { (time(summary.last_at)) }
                    }
                }
            }
        }
    }))
}

async fn device(
    dashboard: Shared,
    path: web::Path<String>,
    query: web::Query<RefreshQuery>,
) -> Result<HttpResponse, UiError> {
    let device_id = path.into_inner();
    let lookup = device_id.clone();
    let history = blocking(&dashboard, move |d| api::device_history(d, &lookup)).await?;
    let title = format!("Device {device_id}");
    let here = format!("/ui/devices/{}", encode(&device_id));
    let page = Page {
        title: &title,
        here: &here,
        refresh: Refresh::from_query(query.refresh.as_deref()),
    };
    Ok(page.render(html! {
        h2 { "Notifications" }
        @if history.events.is_empty() {
            p.empty { "No notifications stored for this device." }
        } @else {
            table {
                thead { tr { th { "Received" } th { "Type" } th { "What happened" } th { "Status" } th { "Event" } } }
                tbody {
                    @for event in &history.events {
                        tr {
                            td { (time_text(&event.received_at)) }
                            td { (event.notify_type.as_deref().unwrap_or("-")) }
                            td { (event.summary) }
                            td { (event.status) }
                            td { code { (event.id) } }
                        }
                    }
                }
            }
        }
        h2 { "Actions" }
        @if history.actions.is_empty() {
            p.empty { "No actions were queued for this device's notifications." }
        } @else {
            table {
                thead { tr { th { "Action" } th { "Kind" } th { "Status" } th.number { "Attempts" } th { "Details" } } }
                tbody {
                    @for action in &history.actions {
                        tr {
                            td { code { (text_of(action, "id")) } }
                            td { (text_of(action, "kind")) " " (text_of(action, "op")) }
                            td { (text_of(action, "status")) }
                            td.number { (action["attempts"]) }
                            td { code { (action) } }
                        }
                    }
                }
            }
        }
    }))
}

fn text_of<'a>(value: &'a serde_json::Value, key: &str) -> &'a str {
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

async fn events(
    dashboard: Shared,
    filter: web::Query<EventQuery>,
    refresh: web::Query<RefreshQuery>,
) -> Result<HttpResponse, UiError> {
    let filter = filter.into_inner();
    let here = format!("/ui/events?{}", query_string(&filter));
    let listed = filter.clone();
    let events = blocking(&dashboard, move |d| api::list_events(d, &listed)).await?;
    let page = Page {
        title: "Events",
        here: &here,
        refresh: Refresh::from_query(refresh.refresh.as_deref()),
    };
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    Ok(page.render(html! {
        form.filters method="get" action="/ui/events" {
            label { "Status"
                select name="status" {
                    @for status in ["", "pending", "handled", "failed"] {
                        option value=(status) selected[filter.status.as_deref().unwrap_or("") == status] {
                            @if status.is_empty() { "any" } @else { (status) }
                        }
                    }
                }
            }
            label { "Type" input name="type" value=(field(&filter.notify_type)); }
            label { "Device" input name="device" value=(field(&filter.device)); }
            label { "Limit" input name="limit" type="number" min="1" max="1000" value=(filter.limit.unwrap_or(api::DEFAULT_EVENT_LIMIT)); }
            button type="submit" { "Filter" }
        }
        @if events.is_empty() {
            p.empty { "No events match." }
        } @else {
            table {
                thead { tr { th { "Received" } th { "Type" } th { "Device" } th { "Status" } th.number { "Actions" } th { "Error" } th { "Event" } } }
                tbody {
                    @for event in &events {
                        tr {
                            td { (time_text(&event.received_at)) }
                            td { (event.notify_type.as_deref().unwrap_or("-")) }
                            td { @if let Some(device) = &event.device_id { (device_link(device)) } @else { "-" } }
                            td { (event.status) }
                            td.number { (event.actions) }
                            td { (event.error.as_deref().unwrap_or("")) }
                            td { code { (event.id) } }
                        }
                    }
                }
            }
        }
    }))
}

/// The filter as a query string, for the page's own links.
fn query_string(filter: &EventQuery) -> String {
    let mut pairs = Vec::new();
    let mut push = |name: &str, value: &Option<String>| {
        if let Some(value) = value.as_ref().filter(|value| !value.is_empty()) {
            pairs.push(format!("{name}={}", encode(value)));
        }
    };
    push("status", &filter.status);
    push("type", &filter.notify_type);
    push("device", &filter.device);
    push("limit", &filter.limit.map(|limit| limit.to_string()));
    pairs.join("&")
}
