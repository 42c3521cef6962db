//! One campaign's devices and counts, kept in step as results and retries come in.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::upgrade::{CampaignKey, DeviceStatus, Kind};
use crate::model::Millis;

/// How many points a campaign's timeline has at most.
const TIMELINE_POINTS: i64 = 48;

/// A `retry_upgrade` action queued for a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub action_id: String,
    pub device_id: String,
    pub queued_at: Millis,
}

/// One result of a device, as [`Campaign::count_result`] counts it.
pub(super) struct DeviceResult {
    pub(super) operation_id: String,
    pub(super) succeeded: bool,
    pub(super) error_code: String,
    pub(super) at: Millis,
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
    /// The arrival number of its latest result (0 while it has none).
    pub arrival: i64,
}

impl DeviceRecord {
    pub fn recovered(&self) -> bool {
        self.status == DeviceStatus::Succeeded && self.ever_failed
    }
}

/// The counts of one campaign (SPEC.md's JSON keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

    /// These counts and `other`'s together.
    pub fn plus(&self, other: &Counts) -> Counts {
        Counts {
            devices: self.devices + other.devices,
            succeeded: self.succeeded + other.succeeded,
            failed: self.failed + other.failed,
            in_progress: self.in_progress + other.in_progress,
            recovered: self.recovered + other.recovered,
            retries: self.retries + other.retries,
        }
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

/// One campaign as the scripts' `campaign(n)` reads it: [`Detail`] without its timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub summary: Summary,
    pub error_codes: Vec<ErrorCount>,
    pub operations: Vec<String>,
}

impl Report {
    /// A campaign with nothing counted yet.
    pub fn empty(key: &CampaignKey) -> Report {
        Campaign::default().report(key)
    }

    /// The report with `extra` added to its counts (a dry run's presets).
    pub fn with_extra(mut self, extra: &Counts) -> Report {
        self.summary.counts = self.summary.counts.plus(extra);
        self.summary.fail_rate = self.summary.counts.fail_rate();
        self
    }
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
    pub report: Report,
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Campaign {
    pub(super) devices: HashMap<String, DeviceRecord>,
    pub(super) counts: Counts,
    /// Devices whose latest result failed, by error code.
    pub(super) error_codes: HashMap<String, u64>,
    pub(super) operations: BTreeSet<String>,
    /// Every result's time and whether it succeeded, in arrival order.
    pub(super) results: Vec<(Millis, bool)>,
    pub(super) retries: Vec<Retry>,
    pub(super) first_at: Option<Millis>,
    pub(super) last_at: Option<Millis>,
}

impl Campaign {
    pub(super) fn touch(&mut self, at: Millis) {
        self.first_at = Some(self.first_at.map_or(at, |first| first.min(at)));
        self.last_at = Some(self.last_at.map_or(at, |last| last.max(at)));
    }

    /// Counts a device's result, of arrival number `arrival`: its latest by arrival, whatever
    /// order results are counted in, and whether it ever failed.
    pub(super) fn count_result(&mut self, device_id: &str, result: DeviceResult, arrival: i64) {
        self.touch(result.at);
        self.results.push((result.at, result.succeeded));
        let current = self.devices.get(device_id);
        let ever_failed = !result.succeeded || current.is_some_and(|record| record.ever_failed);
        let record = match current {
            Some(later) if later.status != DeviceStatus::InProgress && later.arrival > arrival => {
                DeviceRecord {
                    ever_failed,
                    last_at: later.last_at.max(result.at),
                    ..later.clone()
                }
            }
            _ => DeviceRecord {
                status: match result.succeeded {
                    true => DeviceStatus::Succeeded,
                    false => DeviceStatus::Failed,
                },
                ever_failed,
                error_code: (!result.succeeded).then_some(result.error_code),
                operation_id: result.operation_id,
                last_at: result.at,
                arrival,
            },
        };
        self.set_device(device_id, record);
    }

    /// Replaces a device's record, keeping the counts and error codes in step.
    pub(super) fn set_device(&mut self, device_id: &str, record: DeviceRecord) {
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

    pub(super) fn summary(&self, key: &CampaignKey) -> Summary {
        Summary {
            kind: key.kind,
            target_version: key.target_version.clone(),
            counts: self.counts.clone(),
            fail_rate: self.counts.fail_rate(),
            first_at: self.first_at.unwrap_or(Millis(0)),
            last_at: self.last_at.unwrap_or(Millis(0)),
        }
    }

    pub(super) fn report(&self, key: &CampaignKey) -> Report {
        Report {
            summary: self.summary(key),
            error_codes: self.error_counts(),
            operations: self.operations.iter().cloned().collect(),
        }
    }

    pub(super) fn error_counts(&self) -> Vec<ErrorCount> {
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
    pub(super) fn timeline(&self) -> Vec<TimelinePoint> {
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
pub(super) fn timeline_step(span: i64) -> i64 {
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
