//! Upgrade tasks (PLATFORM-NOTES.md §4.5, §4.6): creating one for a device, confirming that a
//! reported failure is real (§6), and finding a task created by an attempt whose answer was
//! lost (the platform has no idempotency key).

use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Call, segment};
use super::{Platform, PlatformError, UpgradeKind};
use crate::action::PlatformOp;
use crate::model::Millis;

const OPERATIONS: &str = "/iodm/northbound/v1.5.0/operations";
/// The largest page the platform serves.
const PAGE_SIZE: u64 = 100;
/// Pages read per search at most, so that one search cannot use up the call budget.
const MAX_PAGES: u64 = 10;
/// Allowance for the platform's clock when comparing its task times with ours.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Whether the platform confirmed a reported failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    Confirmed,
    /// Not confirmed, and why.
    Unconfirmed(String),
}

/// The identifiers of the failure a retry answers, from its notification.
#[derive(Debug, Clone, Default)]
pub struct ReportedFailure {
    pub app_id: Option<String>,
    pub operation_id: Option<String>,
    pub sub_operation_id: Option<String>,
}

/// The create-task body of §4.5: the one device, the package, and the script's policy.
fn task_body(file_id: &str, op: &PlatformOp) -> Value {
    let mut policy = json!({ "executeType": op.execute_type });
    let optional = [
        ("retryType", op.retry_type.map(Value::from)),
        ("retryTimes", op.retry_times.map(Value::from)),
        ("startTime", op.start_time.clone().map(Value::from)),
        ("endTime", op.end_time.clone().map(Value::from)),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            policy[key] = value;
        }
    }
    json!({
        "fileId": file_id,
        "targets": { "devices": [op.device_id] },
        "policy": policy,
    })
}

impl Platform {
    /// Creates the task and returns its `operationId`.
    pub async fn create_task(
        &self,
        kind: UpgradeKind,
        file_id: &str,
        op: &PlatformOp,
    ) -> Result<String, PlatformError> {
        let path = format!("{OPERATIONS}/{}", kind.task_path());
        let answer = self
            .client
            .call(&Call::post(path, task_body(file_id, op)))
            .await?;
        let expected = "{\"operationId\": ...}";
        let body = answer.json(expected)?;
        match body["operationId"].as_str().filter(|id| !id.is_empty()) {
            Some(id) => Ok(id.to_owned()),
            None => Err(PlatformError::Unexpected {
                what: format!("HTTP {} without an operationId", answer.status),
                expected,
            }),
        }
    }

    /// Confirms that `failure` names a failed sub-operation of `device_id` in this app.
    pub async fn confirm_failure(
        &self,
        device_id: &str,
        failure: &ReportedFailure,
    ) -> Result<Confirmation, PlatformError> {
        let unconfirmed = |reason: String| Ok(Confirmation::Unconfirmed(reason));
        if failure.app_id.as_deref() != Some(self.client.app_id()) {
            return unconfirmed(format!(
                "the notification's appId {:?} is not platform.app_id",
                failure.app_id.as_deref().unwrap_or("")
            ));
        }
        let (Some(operation), Some(sub)) = (&failure.operation_id, &failure.sub_operation_id)
        else {
            return unconfirmed("the notification names no operationId and subOperationId".into());
        };
        let listed = |entry: &Value| {
            entry["subOperationId"] == sub.as_str() && entry["deviceId"] == device_id
        };
        match self
            .find_sub_operation(operation, Some("fail"), listed)
            .await
        {
            Ok(true) => Ok(Confirmation::Confirmed),
            Ok(false) => unconfirmed(format!(
                "the platform lists no failed sub-operation {sub} of task {operation} for device \
                 {device_id}"
            )),
            Err(error) if !error.is_retryable() => unconfirmed(format!(
                "the platform does not confirm the failure: {error}"
            )),
            Err(error) => Err(error),
        }
    }

    /// The task of `kind` created at or after `since` that has a sub-operation for
    /// `device_id`, if any: what an attempt that lost its answer may have created.
    pub async fn find_task(
        &self,
        kind: UpgradeKind,
        device_id: &str,
        since: Millis,
    ) -> Result<Option<String>, PlatformError> {
        let earliest = since.minus(CLOCK_SKEW);
        for page in 0..MAX_PAGES {
            let query = vec![("operationType", kind.operation_type().to_owned())];
            let body = self.page(OPERATIONS.to_owned(), query, page).await?;
            for task in candidates(&body, device_id, earliest) {
                let has_device = |entry: &Value| entry["deviceId"] == device_id;
                if self.find_sub_operation(task, None, has_device).await? {
                    return Ok(Some(task.to_owned()));
                }
            }
            if is_last_page(&body, page) {
                break;
            }
        }
        Ok(None)
    }

    /// Whether a sub-operation of `operation` (with `status`, if given) satisfies `wanted`.
    async fn find_sub_operation(
        &self,
        operation: &str,
        status: Option<&str>,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<bool, PlatformError> {
        let path = format!("{OPERATIONS}/{}/subOperations", segment(operation));
        for page in 0..MAX_PAGES {
            let query = status
                .map(|status| vec![("subOperationStatus", status.to_owned())])
                .unwrap_or_default();
            let body = self.page(path.clone(), query, page).await?;
            if entries(&body).any(&wanted) {
                return Ok(true);
            }
            if is_last_page(&body, page) {
                break;
            }
        }
        Ok(false)
    }

    /// One page of a paged list: `{"data": [...], "pageNo", "pageSize", "totalCount"}`.
    pub(crate) async fn page(
        &self,
        path: String,
        mut query: Vec<(&str, String)>,
        page: u64,
    ) -> Result<Value, PlatformError> {
        query.push(("pageNo", page.to_string()));
        query.push(("pageSize", PAGE_SIZE.to_string()));
        let answer = self.client.call(&Call::get(path, query)).await?;
        answer.json("{\"data\": [...], \"totalCount\": ...}")
    }
}

pub(crate) fn entries(page: &Value) -> impl Iterator<Item = &Value> {
    page["data"].as_array().into_iter().flatten()
}

fn is_last_page(body: &Value, page: u64) -> bool {
    let total = body["totalCount"].as_u64().unwrap_or(0);
    (page + 1) * PAGE_SIZE >= total || entries(body).next().is_none()
}

/// Tasks of a listing page that may hold the device: created since `earliest` (or at an
/// unreadable time), and naming the device among their targets when they list targets.
fn candidates<'a>(body: &'a Value, device_id: &'a str, earliest: Millis) -> Vec<&'a str> {
    entries(body)
        .filter(|task| {
            let created = task["createTime"].as_str().and_then(platform_time);
            created.is_none_or(|at| at >= earliest)
        })
        .filter(|task| match task["targets"]["devices"].as_array() {
            Some(devices) => devices.iter().any(|d| d == device_id),
            None => true,
        })
        .filter_map(|task| task["operationId"].as_str())
        .collect()
}

/// The platform's `yyyyMMdd'T'HHmmss'Z'` (UTC).
fn platform_time(text: &str) -> Option<Millis> {
    let digits = |range: std::ops::Range<usize>| {
        text.get(range)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
    };
    let valid = text.len() == 16 && text.get(8..9) == Some("T") && text.get(15..) == Some("Z");
    if !valid {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        digits(0..4)?,
        digits(4..6)?,
        digits(6..8)?,
        digits(9..11)?,
        digits(11..13)?,
        digits(13..15)?
    );
    humantime::parse_rfc3339(&rfc3339).ok().map(Millis::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> PlatformOp {
        PlatformOp::retry_upgrade("dev-1", "swUpgradeResultNotify", "1.5")
    }

    #[test]
    fn the_body_is_the_documented_one() {
        assert_eq!(
            task_body("f1", &op()),
            json!({"fileId": "f1", "targets": {"devices": ["dev-1"]},
                   "policy": {"executeType": "now"}})
        );
        let custom = PlatformOp {
            execute_type: "custom".into(),
            retry_type: Some(true),
            retry_times: Some(2),
            start_time: Some("20300101T000000Z".into()),
            end_time: Some("20300101T010000Z".into()),
            ..op()
        };
        assert_eq!(
            task_body("f1", &custom)["policy"],
            json!({"executeType": "custom", "retryType": true, "retryTimes": 2,
                   "startTime": "20300101T000000Z", "endTime": "20300101T010000Z"})
        );
    }

    #[test]
    fn platform_times_parse_and_nonsense_does_not() {
        let at = platform_time("20151212T121212Z").unwrap();
        assert_eq!(at.to_rfc3339(), "2015-12-12T12:12:12.000Z");
        for nonsense in [
            "",
            "20151212121212Z",
            "2015121XT121212Z",
            "设备设备设备设备",
            "20151312T121212Z",
        ] {
            assert_eq!(platform_time(nonsense), None, "{nonsense}");
        }
    }

    #[test]
    fn candidates_are_recent_tasks_that_may_hold_the_device() {
        let page = json!({"data": [
            {"operationId": "old", "createTime": "20000101T000000Z"},
            {"operationId": "other", "createTime": "20991231T000000Z", "targets": {"devices": ["x"]}},
            {"operationId": "mine", "createTime": "20991231T000000Z", "targets": {"devices": ["d"]}},
            {"operationId": "unknown"},
        ]});
        let earliest = platform_time("20200101T000000Z").unwrap();
        assert_eq!(candidates(&page, "d", earliest), ["mine", "unknown"]);
    }
}
