//! Campaign counting, as SPEC.md's "Dashboard and HTTP API" defines it: a campaign is an
//! upgrade kind and target version across its platform tasks; a device counts by its latest
//! result; state changes join the campaign of their `operationId` once it is known.
//!
//! [`CampaignIndex`] folds upgrade notifications and platform actions in, one at a time, and
//! keeps every count up to date as it goes, so that reading a campaign costs a lookup and not
//! a scan. It is pure: [`Counter`] feeds it from the store, for the dashboard and the
//! scripts alike.

use std::collections::HashMap;

use crate::action::{Action, ActionSpec};
use crate::model::Millis;
use crate::store::ActionStatus;

mod counter;
mod counts;
mod upgrade;

pub use counter::Counter;
pub use counts::*;
pub use upgrade::*;

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
    /// Counts `upgrade`, the notification of arrival number `arrival`. A device's results
    /// may come in any order: the one that arrived last is its latest.
    pub fn apply(&mut self, arrival: i64, upgrade: Upgrade) {
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
                let result = DeviceResult {
                    operation_id,
                    succeeded,
                    error_code,
                    at,
                };
                let campaign = self.campaigns.entry(key).or_default();
                campaign.count_result(&device_id, result, arrival);
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
                    arrival: 0,
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

    /// One campaign as `campaign(n)` reads it (cheap: no scan).
    pub fn report(&self, key: &CampaignKey) -> Option<Report> {
        let campaign = self.campaigns.get(key)?;
        campaign.last_at?;
        Some(campaign.report(key))
    }

    pub fn detail(&self, key: &CampaignKey) -> Option<Detail> {
        Some(Detail {
            report: self.report(key)?,
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
        let mut retries: Vec<(Retry, Option<DeviceRecord>)> = campaign
            .retries
            .iter()
            .map(|retry| {
                (
                    retry.clone(),
                    campaign.devices.get(&retry.device_id).cloned(),
                )
            })
            .collect();
        // Counted in the store's catch-up order, which need not be the order queued.
        retries.sort_by(|(a, _), (b, _)| {
            (a.queued_at, &a.action_id).cmp(&(b.queued_at, &b.action_id))
        });
        retries
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
        index.apply(1, state("d1", "op-2", 1));
        assert!(index.summaries().is_empty(), "no campaign knows op-2 yet");
        index.apply(2, result("d2", "op-2", false, 2));
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
        index.apply(1, result("d1", "op-1", false, 1));
        index.apply(2, state("d1", "op-1", 2));
        assert_eq!(
            index.summary(&key()).unwrap().0.counts.failed,
            1,
            "a state change after a result changes nothing"
        );
        index.apply(3, result("d1", "op-3", true, 3));
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
    fn a_device_counts_by_the_result_that_arrived_last_whatever_order_they_are_counted_in() {
        let arrivals = [
            result("d1", "op-1", false, 1),
            result("d1", "op-2", true, 2),
            result("d1", "op-3", false, 3),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [0, 2, 1], [2, 0, 1]] {
            let mut index = CampaignIndex::default();
            for position in order {
                index.apply(position as i64 + 1, arrivals[position].clone());
            }
            let (summary, codes, _) = index.summary(&key()).unwrap();
            assert_eq!(
                (
                    summary.counts.devices,
                    summary.counts.failed,
                    summary.counts.recovered
                ),
                (1, 1, 0),
                "counted in order {order:?}"
            );
            assert_eq!(codes.len(), 1, "counted in order {order:?}");
            assert_eq!(
                index.devices(&key(), &DeviceFilter::default())[0]
                    .1
                    .operation_id,
                "op-3"
            );
        }
        let mut index = CampaignIndex::default();
        index.apply(2, result("d1", "op-2", true, 2));
        index.apply(1, arrivals[0].clone());
        let counts = index.summary(&key()).unwrap().0.counts;
        assert_eq!(
            (counts.succeeded, counts.recovered),
            (1, 1),
            "a failure that arrived before the success, counted after it, still makes it recovered"
        );
    }

    #[test]
    fn a_task_notirouter_created_is_learnt_from_its_action_result() {
        let mut index = CampaignIndex::default();
        index.apply(1, result("d1", "op-1", false, 1));
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
        index.apply(3, state("d9", "op-new", 3));
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
