//! Campaign counting, as SPEC.md's "Dashboard and HTTP API" defines it: a campaign is an
//! upgrade kind and target version across its platform tasks; a device counts by its latest
//! result; state changes join the campaign of their `operationId` once it is known.
//!
//! [`CampaignIndex`] folds upgrade notifications and platform actions in, one at a time, and
//! keeps every count up to date as it goes, so that reading a campaign costs a lookup and not
//! a scan. It is pure: [`super::catch_up`] feeds it from the store.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::action::{Action, ActionSpec};
use crate::model::Millis;
use crate::store::ActionStatus;

/// The error code counted for a failure that carries none (firmware results have no
/// `errorCode`; their `statusDesc` is used when present).
pub const NO_ERROR_CODE: &str = "none";

/// How many points a campaign's timeline has at most.
const TIMELINE_POINTS: i64 = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Software,
    Firmware,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Software => "software",
            Kind::Firmware => "firmware",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "software" => Some(Kind::Software),
            "firmware" => Some(Kind::Firmware),
            _ => None,
        }
    }

    /// The kind of an upgrade notification type (`sw…` or `fw…`).
    fn of_notify_type(notify_type: &str) -> Option<Kind> {
        match notify_type.get(..2) {
            Some("sw") => Some(Kind::Software),
            Some("fw") => Some(Kind::Firmware),
            _ => None,
        }
    }
}

/// One campaign: an upgrade kind and its target version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CampaignKey {
    pub kind: Kind,
    pub target_version: String,
}

/// Where a device stands in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Succeeded,
    Failed,
    InProgress,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Succeeded => "succeeded",
            DeviceStatus::Failed => "failed",
            DeviceStatus::InProgress => "in_progress",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceStatus> {
        match text {
            "succeeded" => Some(DeviceStatus::Succeeded),
            "failed" => Some(DeviceStatus::Failed),
            "in_progress" => Some(DeviceStatus::InProgress),
            _ => None,
        }
    }
}

/// An upgrade notification, read from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    Result {
        kind: Kind,
        device_id: String,
        operation_id: String,
        target_version: String,
        succeeded: bool,
        error_code: String,
        at: Millis,
    },
    StateChange {
        device_id: String,
        operation_id: String,
        at: Millis,
    },
}

impl Upgrade {
    /// Reads an upgrade notification; `None` for anything else, or one missing the fields a
    /// campaign needs (lenient validation stores such bodies too).
    pub fn parse(notify_type: &str, body: &[u8], at: Millis) -> Option<Upgrade> {
        let kind = Kind::of_notify_type(notify_type)?;
        let body: Value = serde_json::from_slice(body).ok()?;
        let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
        let device_id = text("deviceId")?;
        let operation_id = text("operationId")?;
        if notify_type.ends_with("StateChangeNotify") {
            return Some(Upgrade::StateChange {
                device_id,
                operation_id,
                at,
            });
        }
        let (result_field, code_field) = match kind {
            Kind::Software => ("swUpgradeResult", "errorCode"),
            Kind::Firmware => ("status", "statusDesc"),
        };
        let succeeded = match text(result_field)?.as_str() {
            "SUCCESS" => true,
            "FAIL" => false,
            _ => return None,
        };
        let error_code = text(code_field)
            .filter(|code| !succeeded && !code.is_empty())
            .unwrap_or_else(|| NO_ERROR_CODE.to_owned());
        Some(Upgrade::Result {
            kind,
            device_id,
            operation_id,
            target_version: text("targetVersion")?,
            succeeded,
            error_code,
            at,
        })
    }
}

/// A `retry_upgrade` action queued for a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub action_id: String,
    pub device_id: String,
    pub queued_at: Millis,
}

/// A device's latest state in one campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub status: DeviceStatus,
    /// Failed at least once in this campaign.
    pub ever_failed: bool,
    /// The code of its latest failure.
    pub error_code: Option<String>,
    pub operation_id: String,
    pub last_at: Millis,
}

impl DeviceRecord {
    pub fn recovered(&self) -> bool {
        self.status == DeviceStatus::Succeeded && self.ever_failed
    }
}

/// The counts of one campaign (SPEC.md's JSON keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub devices: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub recovered: u64,
    pub retries: u64,
}

impl Counts {
    /// failed / (succeeded + failed); 0 when neither.
    pub fn fail_rate(&self) -> f64 {
        rate(self.failed, self.succeeded)
    }

    fn add(&mut self, record: &DeviceRecord, sign: i64) {
        let apply = |count: &mut u64| *count = count.saturating_add_signed(sign);
        apply(&mut self.devices);
        apply(match record.status {
            DeviceStatus::Succeeded => &mut self.succeeded,
            DeviceStatus::Failed => &mut self.failed,
            DeviceStatus::InProgress => &mut self.in_progress,
        });
        if record.recovered() {
            apply(&mut self.recovered);
        }
    }
}

fn rate(failed: u64, succeeded: u64) -> f64 {
    match failed + succeeded {
        0 => 0.0,
        total => failed as f64 / total as f64,
    }
}

/// One campaign as `GET /api/v1/campaigns` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub kind: Kind,
    pub target_version: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub fail_rate: f64,
    pub first_at: Millis,
    pub last_at: Millis,
}

/// How many devices failed last with one error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorCount {
    pub code: String,
    pub devices: u64,
}

/// Results received in one interval of a campaign's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelinePoint {
    pub at: Millis,
    pub succeeded: u64,
    pub failed: u64,
}

impl TimelinePoint {
    pub fn fail_rate(&self) -> f64 {
        rate(self.failed, self.succeeded)
    }
}

/// One campaign as `GET /api/v1/campaigns/{kind}/{target_version}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub error_codes: Vec<ErrorCount>,
    pub operations: Vec<String>,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, Default)]
struct Campaign {
    devices: HashMap<String, DeviceRecord>,
    counts: Counts,
    /// Devices whose latest result failed, by error code.
    error_codes: HashMap<String, u64>,
    operations: BTreeSet<String>,
    /// Every result's time and whether it succeeded, in arrival order.
    results: Vec<(Millis, bool)>,
    retries: Vec<Retry>,
    first_at: Option<Millis>,
    last_at: Option<Millis>,
}

impl Campaign {
    fn touch(&mut self, at: Millis) {
        self.first_at = Some(self.first_at.map_or(at, |first| first.min(at)));
        self.last_at = Some(self.last_at.map_or(at, |last| last.max(at)));
    }

    /// Replaces a device's record, keeping the counts and error codes in step.
    fn set_device(&mut self, device_id: &str, record: DeviceRecord) {
        if let Some(old) = self.devices.remove(device_id) {
            self.count(&old, -1);
        }
        self.count(&record, 1);
        self.devices.insert(device_id.to_owned(), record);
    }

    fn count(&mut self, record: &DeviceRecord, sign: i64) {
        self.counts.add(record, sign);
        if let (DeviceStatus::Failed, Some(code)) = (record.status, &record.error_code) {
            let devices = self.error_codes.entry(code.clone()).or_default();
            *devices = devices.saturating_add_signed(sign);
            if *devices == 0 {
                self.error_codes.remove(code);
            }
        }
    }

    fn summary(&self, key: &CampaignKey) -> Summary {
        Summary {
            kind: key.kind,
            target_version: key.target_version.clone(),
            counts: self.counts.clone(),
            fail_rate: self.counts.fail_rate(),
            first_at: self.first_at.unwrap_or(Millis(0)),
            last_at: self.last_at.unwrap_or(Millis(0)),
        }
    }

    fn error_counts(&self) -> Vec<ErrorCount> {
        let mut codes: Vec<ErrorCount> = self
            .error_codes
            .iter()
            .map(|(code, devices)| ErrorCount {
                code: code.clone(),
                devices: *devices,
            })
            .collect();
        codes.sort_by(|a, b| b.devices.cmp(&a.devices).then_with(|| a.code.cmp(&b.code)));
        codes
    }

    /// Results per interval, the interval chosen so that the whole campaign fits in
    /// [`TIMELINE_POINTS`] points.
    fn timeline(&self) -> Vec<TimelinePoint> {
        let (Some(first), Some(last)) = (
            self.results.iter().map(|(at, _)| *at).min(),
            self.results.iter().map(|(at, _)| *at).max(),
        ) else {
            return Vec::new();
        };
        let step = timeline_step(last.0 - first.0);
        let start = first.0 - first.0.rem_euclid(step);
        let mut points: Vec<TimelinePoint> = Vec::new();
        let mut sorted = self.results.clone();
        sorted.sort_by_key(|(at, _)| *at);
        for (at, succeeded) in sorted {
            let bucket = Millis(start + (at.0 - start) / step * step);
            if points.last().is_none_or(|point| point.at != bucket) {
                points.push(TimelinePoint {
                    at: bucket,
                    succeeded: 0,
                    failed: 0,
                });
            }
            let point = points.last_mut().expect("pushed above");
            match succeeded {
                true => point.succeeded += 1,
                false => point.failed += 1,
            }
        }
        points
    }
}

/// The smallest round interval that splits `span` milliseconds into at most
/// [`TIMELINE_POINTS`] intervals.
fn timeline_step(span: i64) -> i64 {
    const MINUTE: i64 = 60_000;
    const STEPS: [i64; 9] = [
        MINUTE,
        5 * MINUTE,
        15 * MINUTE,
        60 * MINUTE,
        3 * 60 * MINUTE,
        6 * 60 * MINUTE,
        24 * 60 * MINUTE,
        7 * 24 * 60 * MINUTE,
        30 * 24 * 60 * MINUTE,
    ];
    STEPS
        .into_iter()
        .find(|step| span / step < TIMELINE_POINTS)
        .unwrap_or(STEPS[STEPS.len() - 1])
}

/// Every campaign, kept up to date one notification and one action at a time.
#[derive(Debug, Default)]
pub struct CampaignIndex {
    campaigns: HashMap<CampaignKey, Campaign>,
    /// Which campaign each known task belongs to.
    operations: HashMap<String, CampaignKey>,
    /// State changes of tasks not known yet: (device, time) by `operationId`.
    orphans: HashMap<String, Vec<(String, Millis)>>,
    /// Platform actions whose task is not known yet, and the campaign they are for.
    unconfirmed_tasks: HashMap<String, CampaignKey>,
}

impl CampaignIndex {
    pub fn apply(&mut self, upgrade: Upgrade) {
        match upgrade {
            Upgrade::Result {
                kind,
                device_id,
                operation_id,
                target_version,
                succeeded,
                error_code,
                at,
            } => {
                let key = CampaignKey {
                    kind,
                    target_version,
                };
                self.learn_operation(&operation_id, &key);
                let campaign = self.campaigns.entry(key).or_default();
                campaign.touch(at);
                campaign.results.push((at, succeeded));
                let ever_failed = !succeeded
                    || campaign
                        .devices
                        .get(&device_id)
                        .is_some_and(|record| record.ever_failed);
                let record = DeviceRecord {
                    status: match succeeded {
                        true => DeviceStatus::Succeeded,
                        false => DeviceStatus::Failed,
                    },
                    ever_failed,
                    error_code: (!succeeded).then_some(error_code),
                    operation_id,
                    last_at: at,
                };
                campaign.set_device(&device_id, record);
            }
            Upgrade::StateChange {
                device_id,
                operation_id,
                at,
            } => match self.operations.get(&operation_id).cloned() {
                Some(key) => self.state_change(&key, device_id, operation_id, at),
                None => self
                    .orphans
                    .entry(operation_id)
                    .or_default()
                    .push((device_id, at)),
            },
        }
    }

    /// A state change counts a device `in_progress` only until its first result.
    fn state_change(
        &mut self,
        key: &CampaignKey,
        device_id: String,
        operation_id: String,
        at: Millis,
    ) {
        let campaign = self.campaigns.entry(key.clone()).or_default();
        campaign.touch(at);
        match campaign.devices.get_mut(&device_id) {
            Some(record) => record.last_at = record.last_at.max(at),
            None => campaign.set_device(
                &device_id,
                DeviceRecord {
                    status: DeviceStatus::InProgress,
                    ever_failed: false,
                    error_code: None,
                    operation_id,
                    last_at: at,
                },
            ),
        }
    }

    /// Records that task `operation_id` belongs to `key`; its waiting state changes join.
    pub fn learn_operation(&mut self, operation_id: &str, key: &CampaignKey) {
        if self.operations.contains_key(operation_id) {
            return;
        }
        self.operations.insert(operation_id.to_owned(), key.clone());
        self.campaigns
            .entry(key.clone())
            .or_default()
            .operations
            .insert(operation_id.to_owned());
        for (device_id, at) in self.orphans.remove(operation_id).unwrap_or_default() {
            self.state_change(key, device_id, operation_id.to_owned(), at);
        }
    }

    /// Counts a queued `retry_upgrade` and remembers any platform task, so that its
    /// `operationId` can be learnt once it is created. Other actions are ignored.
    pub fn apply_action(&mut self, action_id: &str, queued_at: Millis, payload: &str) {
        let Ok(Action {
            spec: ActionSpec::Platform(op),
            ..
        }) = serde_json::from_str::<Action>(payload)
        else {
            return;
        };
        let Some(kind) = Kind::of_notify_type(&op.notify_type) else {
            return;
        };
        let key = CampaignKey {
            kind,
            target_version: op.target_version,
        };
        if op.op == "retry_upgrade" {
            let campaign = self.campaigns.entry(key.clone()).or_default();
            campaign.counts.retries += 1;
            campaign.retries.push(Retry {
                action_id: action_id.to_owned(),
                device_id: op.device_id,
                queued_at,
            });
        }
        self.unconfirmed_tasks.insert(action_id.to_owned(), key);
    }

    /// Platform actions whose task is not known yet: still pending, or sent since the last
    /// look.
    pub fn tasks_to_confirm(&self) -> Vec<String> {
        self.unconfirmed_tasks.keys().cloned().collect()
    }

    /// What became of a platform action: its `operationId` once created; forgotten once it
    /// can no longer create one.
    pub fn confirm_task(
        &mut self,
        action_id: &str,
        status: ActionStatus,
        operation_id: Option<&str>,
    ) {
        if let Some(operation_id) = operation_id {
            if let Some(key) = self.unconfirmed_tasks.remove(action_id) {
                self.learn_operation(operation_id, &key);
            }
        } else if status.ended_unsent() {
            self.unconfirmed_tasks.remove(action_id);
        }
    }

    /// Every campaign, the most recent first.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut summaries: Vec<Summary> = self
            .campaigns
            .iter()
            .filter(|(_, campaign)| campaign.last_at.is_some())
            .map(|(key, campaign)| campaign.summary(key))
            .collect();
        summaries.sort_by(|a, b| {
            b.last_at
                .cmp(&a.last_at)
                .then_with(|| (a.kind, &a.target_version).cmp(&(b.kind, &b.target_version)))
        });
        summaries
    }

    /// One campaign's counts without its timeline (cheap: no scan).
    pub fn summary(&self, key: &CampaignKey) -> Option<(Summary, Vec<ErrorCount>, Vec<String>)> {
        let campaign = self.campaigns.get(key)?;
        campaign.last_at?;
        Some((
            campaign.summary(key),
            campaign.error_counts(),
            campaign.operations.iter().cloned().collect(),
        ))
    }

    pub fn detail(&self, key: &CampaignKey) -> Option<Detail> {
        let (summary, error_codes, operations) = self.summary(key)?;
        Some(Detail {
            summary,
            error_codes,
            operations,
            timeline: self.campaigns[key].timeline(),
        })
    }

    /// The campaign's devices that pass `filter`, by device id.
    pub fn devices(&self, key: &CampaignKey, filter: &DeviceFilter) -> Vec<(String, DeviceRecord)> {
        let Some(campaign) = self.campaigns.get(key) else {
            return Vec::new();
        };
        let mut devices: Vec<(String, DeviceRecord)> = campaign
            .devices
            .iter()
            .filter(|(_, record)| filter.admits(record))
            .map(|(id, record)| (id.clone(), record.clone()))
            .collect();
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        devices
    }

    /// The campaign's retries, oldest first, with each device's state now.
    pub fn retries(&self, key: &CampaignKey) -> Vec<(Retry, Option<DeviceRecord>)> {
        let Some(campaign) = self.campaigns.get(key) else {
            return Vec::new();
        };
        campaign
            .retries
            .iter()
            .map(|retry| {
                (
                    retry.clone(),
                    campaign.devices.get(&retry.device_id).cloned(),
                )
            })
            .collect()
    }
}

/// Which devices of a campaign to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    pub status: Option<DeviceStatus>,
    /// Devices whose latest result failed with this code.
    pub error_code: Option<String>,
}

impl DeviceFilter {
    fn admits(&self, record: &DeviceRecord) -> bool {
        self.status.is_none_or(|status| record.status == status)
            && self.error_code.as_ref().is_none_or(|code| {
                record.status == DeviceStatus::Failed && record.error_code.as_ref() == Some(code)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(device: &str, operation: &str, succeeded: bool, at: i64) -> Upgrade {
        Upgrade::Result {
            kind: Kind::Software,
            device_id: device.to_owned(),
            operation_id: operation.to_owned(),
            target_version: "1.5".to_owned(),
            succeeded,
            error_code: if succeeded { NO_ERROR_CODE } else { "7" }.to_owned(),
            at: Millis(at),
        }
    }

    fn state(device: &str, operation: &str, at: i64) -> Upgrade {
        Upgrade::StateChange {
            device_id: device.to_owned(),
            operation_id: operation.to_owned(),
            at: Millis(at),
        }
    }

    fn key() -> CampaignKey {
        CampaignKey {
            kind: Kind::Software,
            target_version: "1.5".to_owned(),
        }
    }

    #[test]
    fn a_state_change_waits_for_its_task_to_be_known_then_counts_in_progress() {
        let mut index = CampaignIndex::default();
        index.apply(state("d1", "op-2", 1));
        assert!(index.summaries().is_empty(), "no campaign knows op-2 yet");
        index.apply(result("d2", "op-2", false, 2));
        let (summary, codes, operations) = index.summary(&key()).unwrap();
        assert_eq!((summary.counts.devices, summary.counts.in_progress), (2, 1));
        assert_eq!(
            codes,
            [ErrorCount {
                code: "7".into(),
                devices: 1
            }]
        );
        assert_eq!(operations, ["op-2"]);
    }

    #[test]
    fn failed_then_succeeded_is_succeeded_and_recovered_and_leaves_the_error_codes() {
        let mut index = CampaignIndex::default();
        index.apply(result("d1", "op-1", false, 1));
        index.apply(state("d1", "op-1", 2));
        assert_eq!(
            index.summary(&key()).unwrap().0.counts.failed,
            1,
            "a state change after a result changes nothing"
        );
        index.apply(result("d1", "op-3", true, 3));
        let (summary, codes, _) = index.summary(&key()).unwrap();
        assert_eq!(
            summary.counts,
            Counts {
                devices: 1,
                succeeded: 1,
                recovered: 1,
                ..Counts::default()
            }
        );
        assert_eq!(summary.fail_rate, 0.0);
        assert!(codes.is_empty());
    }

    #[test]
    fn a_task_notirouter_created_is_learnt_from_its_action_result() {
        let mut index = CampaignIndex::default();
        index.apply(result("d1", "op-1", false, 1));
        let retry = serde_json::to_string(&Action {
            spec: ActionSpec::Platform(crate::action::PlatformOp::retry_upgrade(
                "d1",
                "swUpgradeResultNotify",
                "1.5",
            )),
            plugin: "p".into(),
        })
        .unwrap();
        index.apply_action("a1", Millis(2), &retry);
        index.apply(state("d9", "op-new", 3));
        assert_eq!(index.tasks_to_confirm(), ["a1"]);
        index.confirm_task("a1", ActionStatus::Sent, Some("op-new"));
        let (summary, _, operations) = index.summary(&key()).unwrap();
        assert_eq!((summary.counts.retries, summary.counts.in_progress), (1, 1));
        assert_eq!(operations, ["op-1", "op-new"]);
        assert!(index.tasks_to_confirm().is_empty());
    }

    #[test]
    fn the_timeline_step_keeps_a_campaign_within_its_points() {
        assert_eq!(timeline_step(0), 60_000);
        assert_eq!(timeline_step(47 * 60_000), 60_000);
        assert_eq!(timeline_step(48 * 60_000), 5 * 60_000);
        assert_eq!(timeline_step(10 * 24 * 3_600_000), 6 * 3_600_000);
    }
}
