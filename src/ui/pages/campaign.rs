//! One campaign's page and its CSV export of devices.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use maud::html;
use serde::Deserialize;

use super::{RefreshQuery, Shared, chart};
use crate::campaign::{CampaignKey, Detail, DeviceFilter, DeviceRecord, DeviceStatus, Retry};
use crate::store::ActionStatus;
use crate::ui::api::{blocking, campaign_key, no_campaign};
use crate::ui::html::{Page, Refresh, device_link, encode, percent, stacked_bar, time};
use crate::ui::{Dashboard, UiError};

/// Devices listed on the page at most; the CSV export has them all.
const DEVICES_SHOWN: usize = 500;

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route(
            "/ui/campaigns/{kind}/{target_version}",
            web::get().to(campaign),
        )
        .route(
            "/ui/campaigns/{kind}/{target_version}/devices.csv",
            web::get().to(devices_csv),
        );
}

/// Which devices the page lists: by status, or by the error code of their latest failure.
#[derive(Debug, Default, Deserialize)]
struct DeviceQuery {
    status: Option<String>,
    code: Option<String>,
}

impl DeviceQuery {
    fn filter(&self) -> Result<DeviceFilter, UiError> {
        let status = self
            .status
            .as_deref()
            .filter(|text| !text.is_empty())
            .map(|text| {
                DeviceStatus::parse(text).ok_or_else(|| {
                    UiError::BadRequest("status is succeeded, failed or in_progress".to_owned())
                })
            })
            .transpose()?;
        Ok(DeviceFilter {
            status,
            error_code: self.code.clone().filter(|code| !code.is_empty()),
        })
    }

    /// The filter as a query string (empty for none).
    fn query_string(filter: &DeviceFilter) -> String {
        let mut pairs = Vec::new();
        if let Some(status) = filter.status {
            pairs.push(format!("status={}", status.as_str()));
        }
        if let Some(code) = &filter.error_code {
            pairs.push(format!("code={}", encode(code)));
        }
        pairs.join("&")
    }
}

/// What the page shows, read under one look at the counts.
struct CampaignView {
    detail: Detail,
    devices: Vec<(String, DeviceRecord)>,
    retries: Vec<(Retry, Option<DeviceRecord>)>,
    /// Each retry action's status now, by action id.
    retry_status: HashMap<String, ActionStatus>,
}

fn read_campaign(
    dashboard: &Dashboard,
    key: &CampaignKey,
    filter: &DeviceFilter,
) -> Result<CampaignView, UiError> {
    let (detail, devices, retries) = dashboard
        .campaigns(|index| {
            index
                .detail(key)
                .map(|detail| (detail, index.devices(key, filter), index.retries(key)))
        })?
        .ok_or_else(|| no_campaign(key))?;
    let ids: Vec<String> = retries
        .iter()
        .map(|(retry, _)| retry.action_id.clone())
        .collect();
    let retry_status = match dashboard.store().campaign_view() {
        Some(view) => view
            .action_states(&ids)?
            .into_iter()
            .map(|state| (state.id, state.status))
            .collect(),
        None => HashMap::new(),
    };
    Ok(CampaignView {
        detail,
        devices,
        retries,
        retry_status,
    })
}

fn campaign_base(key: &CampaignKey) -> String {
    format!(
        "/ui/campaigns/{}/{}",
        key.kind.as_str(),
        encode(&key.target_version)
    )
}

async fn campaign(
    dashboard: Shared,
    path: web::Path<(String, String)>,
    query: web::Query<DeviceQuery>,
    refresh: web::Query<RefreshQuery>,
) -> Result<HttpResponse, UiError> {
    let (kind, target_version) = path.into_inner();
    let key = campaign_key(&kind, &target_version)?;
    let filter = query.filter()?;
    let (read_key, read_filter) = (key.clone(), filter.clone());
    let view = blocking(&dashboard, move |d| {
        read_campaign(d, &read_key, &read_filter)
    })
    .await?;
    let base = campaign_base(&key);
    let filter_query = DeviceQuery::query_string(&filter);
    let here = match filter_query.is_empty() {
        true => base.clone(),
        false => format!("{base}?{filter_query}"),
    };
    let title = format!("{} {}", key.kind.as_str(), key.target_version);
    let page = Page {
        title: &title,
        here: &here,
        refresh: Refresh::from_query(refresh.refresh.as_deref()),
    };
    let CampaignView {
        detail,
        devices,
        retries,
        retry_status,
    } = view;
    let summary = &detail.report.summary;
    let counts = &summary.counts;
    Ok(page.render(html! {
        section aria-labelledby="counts" {
            h2 #counts { "Counts" }
            (stacked_bar(counts))
            dl.counts {
                dt { "Devices" } dd data-count="devices" { (counts.devices) }
                dt { "Succeeded" } dd { a href={ (base) "?status=succeeded" } { (counts.succeeded) } }
                dt { "Failed" } dd { a href={ (base) "?status=failed" } { (counts.failed) } }
                dt { "In progress" } dd { a href={ (base) "?status=in_progress" } { (counts.in_progress) } }
                dt { "Recovered (failed, then succeeded)" } dd data-count="recovered" { (counts.recovered) }
                dt { "Failure rate" } dd data-count="fail_rate" { (percent(summary.fail_rate)) }
                dt { "Retries queued" } dd data-count="retries" { (counts.retries) }
                dt { "First seen" } dd { (time(summary.first_at)) }
                dt { "Last seen" } dd { (time(summary.last_at)) }
            }
        }
        section aria-labelledby="over-time" {
            h2 #over-time { "Failure rate over time" }
            (chart::failure_rate(&detail.timeline))
            details {
                summary { "The same as a table" }
                table {
                    thead { tr { th { "Interval from" } th.number { "Succeeded" } th.number { "Failed" } th.number { "Failure rate" } } }
                    tbody {
                        @for point in &detail.timeline {
                            tr {
                                td { (time(point.at)) }
                                td.number { (point.succeeded) }
                                td.number { (point.failed) }
                                td.number { (percent(point.fail_rate())) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="error-codes" {
            h2 #error-codes { "Top error codes" }
            @if detail.report.error_codes.is_empty() {
                p.empty { "No device's latest result is a failure." }
            } @else {
                table {
                    thead { tr { th { "Error code" } th.number { "Devices" } } }
                    tbody {
                        @for error in &detail.report.error_codes {
                            tr {
                                td { a href={ (base) "?code=" (encode(&error.code)) } data-code=(error.code) { (error.code) } }
                                td.number { (error.devices) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="retries" {
            h2 #retries { "Retries and their outcome" }
            @if retries.is_empty() {
                p.empty { "No retry was queued for this campaign." }
            } @else {
                @let outcome = retry_outcomes(&retries);
                p #retry-outcome {
                    (retries.len()) " retries queued; the retried devices now: "
                    (outcome[0]) " succeeded, " (outcome[1]) " failed, " (outcome[2]) " without a result."
                }
                details {
                summary { "Each retry" }
                table {
                    thead { tr { th { "Device" } th { "Queued" } th { "Retry action" } th { "Device now" } } }
                    tbody {
                        @for (retry, record) in &retries {
                            tr {
                                td { (device_link(&retry.device_id)) }
                                td { (time(retry.queued_at)) }
                                td { (retry_status.get(&retry.action_id).map_or("unknown", |status| status.as_str())) }
                                td { (record.as_ref().map_or("no result", |record| record.status.as_str())) }
                            }
                        }
                    }
                }
                }
            }
        }
        section aria-labelledby="tasks" {
            h2 #tasks { "Platform tasks" }
            ul { @for operation in &detail.report.operations { li { code { (operation) } } } }
        }
        section aria-labelledby="devices" {
            h2 #devices {
                "Devices"
                @if let Some(status) = filter.status { " " (status.as_str()) }
                @if let Some(code) = &filter.error_code { " with error code " (code) }
            }
            p {
                @if !filter_query.is_empty() { a href=(base) { "Show every device" } " · " }
                a href={ (base) "/devices.csv" @if !filter_query.is_empty() { "?" (filter_query) } } { "Export these devices as CSV" }
            }
            @if devices.len() > DEVICES_SHOWN {
                p.notice { "Showing " (DEVICES_SHOWN) " of " (devices.len()) " devices; the CSV export has them all." }
            }
            table #device-list {
                thead { tr { th { "Device" } th { "Status" } th { "Error code" } th { "Task" } th { "Last seen" } } }
                tbody {
                    @for (device_id, record) in devices.iter().take(DEVICES_SHOWN) {
                        tr {
                            td { (device_link(device_id)) }
                            td { (record.status.as_str()) @if record.recovered() { " (recovered)" } }
                            td { (record.error_code.as_deref().unwrap_or("")) }
                            td { code { (record.operation_id) } }
                            td { (time(record.last_at)) }
                        }
                    }
                }
            }
        }
    }))
}

/// Retries by where their device stands now: succeeded, failed, no result yet.
fn retry_outcomes(retries: &[(Retry, Option<DeviceRecord>)]) -> [usize; 3] {
    let mut outcome = [0; 3];
    for (_, record) in retries {
        let slot = match record.as_ref().map(|record| record.status) {
            Some(DeviceStatus::Succeeded) => 0,
            Some(DeviceStatus::Failed) => 1,
            Some(DeviceStatus::InProgress) | None => 2,
        };
        outcome[slot] += 1;
    }
    outcome
}

async fn devices_csv(
    dashboard: Shared,
    path: web::Path<(String, String)>,
    query: web::Query<DeviceQuery>,
) -> Result<HttpResponse, UiError> {
    let (kind, target_version) = path.into_inner();
    let key = campaign_key(&kind, &target_version)?;
    let filter = query.filter()?;
    let file_name = format!(
        "{}-{}-devices.csv",
        key.kind.as_str(),
        encode(&key.target_version)
    );
    let devices = blocking(&dashboard, move |d| {
        d.campaigns(|index| index.summary(&key).map(|_| index.devices(&key, &filter)))?
            .ok_or_else(|| no_campaign(&key))
    })
    .await?;
    let mut csv = String::from("device_id,status,recovered,error_code,operation_id,last_at\n");
    for (device_id, record) in &devices {
        let row = [
            device_id.as_str(),
            record.status.as_str(),
            if record.recovered() { "true" } else { "false" },
            record.error_code.as_deref().unwrap_or(""),
            record.operation_id.as_str(),
            &record.last_at.to_rfc3339(),
        ];
        let cells: Vec<String> = row.iter().map(|cell| csv_cell(cell)).collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{file_name}\""),
        ))
        .body(csv))
}

/// A CSV cell: quoted when it holds a separator, quote or line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so that a spreadsheet does not run it as a formula.
fn csv_cell(text: &str) -> String {
    let text = match text.starts_with(['=', '+', '-', '@']) {
        true => format!("'{text}"),
        false => text.to_owned(),
    };
    match text.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", text.replace('"', "\"\"")),
        false => text,
    }
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("d1"), "d1");
        assert_eq!(csv_cell("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
    }
}
