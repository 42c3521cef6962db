//! Dry runs for `notirouter test`: the real plugin set and bindings over an in-memory state
//! that starts empty (or from a case's `state` presets). Nothing is sent or written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;

use super::input::EventParts;
use super::{Campaigns, Committed, EventInput, EventRun, PluginSet};
use crate::action::Action;
use crate::campaign::{CampaignIndex, CampaignKey, Counts, Kind, Report, Upgrade};
use crate::model::Millis;
use crate::model::state::{DIGEST_ITEMS, StateChanges, StateError, StateView};
use crate::notification;
use crate::store::rules::{self, EndedDigest};

/// Committed state kept in memory; each dry-run event commits into it, so that a sequence of
/// events (a storm) can be replayed.
#[derive(Default)]
pub struct MemoryState {
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    seen: HashMap<String, Millis>,
    counters: HashMap<String, (i64, Millis)>,
    budgets: HashMap<(String, String), (i64, Millis)>,
    /// Open digests, in the order they were opened.
    digests: Vec<EndedDigest>,
}

impl MemoryState {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        lock(&self.tables)
    }

    /// Commits a run's changes as the store would.
    pub fn apply(&self, changes: &StateChanges, now: Millis) {
        let mut tables = self.tables();
        for (key, record) in &changes.seen {
            tables.seen.insert(key.clone(), record.recorded_at);
        }
        for (key, count) in &changes.counts {
            let entry = tables.counters.entry(key.clone()).or_insert((0, now));
            *entry = match count.new_window {
                Some(start) => (count.delta, start),
                None => (entry.0 + count.delta, entry.1),
            };
        }
        for (key, budget) in &changes.budgets {
            let entry = tables.budgets.entry(key.clone()).or_insert((0, now));
            *entry = match budget.new_window {
                Some(start) => (budget.delta, start),
                None => (entry.0 + budget.delta, entry.1),
            };
        }
        let mut additions: Vec<_> = changes.digests.iter().collect();
        additions.sort_by_key(|(key, addition)| (addition.opened_at, *key));
        for (key, addition) in additions {
            let digest = match tables.digests.iter_mut().position(|open| open.key == *key) {
                Some(index) => &mut tables.digests[index],
                None => {
                    tables.digests.push(EndedDigest {
                        key: key.clone(),
                        opened_at: addition.opened_at,
                        items: Vec::new(),
                        total: 0,
                    });
                    tables.digests.last_mut().expect("pushed above")
                }
            };
            let room = DIGEST_ITEMS.saturating_sub(digest.items.len());
            digest
                .items
                .extend(addition.items.iter().take(room).cloned());
            digest.total += addition.total;
        }
    }

    /// Ends every open digest, as if their windows had ended: the oldest first.
    fn end_digests(&self) -> Vec<EndedDigest> {
        std::mem::take(&mut self.tables().digests)
    }

    /// Presets from a case's `state`: `{"seen":{"key":"ago"}, "count":{"key":N},
    /// "upgrade_retries":{"DEVICE/VERSION":N}}`.
    pub fn preset(&self, presets: &StatePresets, now: Millis) -> Result<(), String> {
        let mut tables = self.tables();
        for (key, ago) in &presets.seen {
            let ago = humantime::parse_duration(ago).map_err(|error| {
                format!("state.seen.{key}: {ago:?} is not a duration ({error})")
            })?;
            tables.seen.insert(key.clone(), now.minus(ago));
        }
        for (key, value) in &presets.count {
            tables.counters.insert(key.clone(), (*value, now));
        }
        for (key, used) in &presets.upgrade_retries {
            let Some((device, version)) = key.split_once('/') else {
                return Err(format!(
                    "state.upgrade_retries: {key:?} is not DEVICE/VERSION"
                ));
            };
            tables
                .budgets
                .insert((device.to_owned(), version.to_owned()), (*used, now));
        }
        Ok(())
    }
}

impl StateView for MemoryState {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        Ok(self.tables().seen.get(key).copied())
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        Ok(self.tables().counters.get(key).copied())
    }

    fn budget(
        &self,
        device_id: &str,
        target_version: &str,
    ) -> Result<Option<(i64, Millis)>, StateError> {
        Ok(self
            .tables()
            .budgets
            .get(&(device_id.to_owned(), target_version.to_owned()))
            .copied())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatePresets {
    #[serde(default)]
    pub seen: HashMap<String, String>,
    #[serde(default)]
    pub count: HashMap<String, i64>,
    #[serde(default)]
    pub upgrade_retries: HashMap<String, i64>,
    /// Counts by `KIND/VERSION` (e.g. `software/1.5`), added to those of the run's events.
    #[serde(default)]
    pub campaigns: HashMap<String, Counts>,
}

/// `campaign(n)` in a dry run: the run's own upgrade notifications, counted as the dashboard
/// counts them, on top of a case's presets.
#[derive(Default)]
pub struct MemoryCampaigns {
    index: Mutex<CampaignIndex>,
    presets: HashMap<CampaignKey, Counts>,
}

impl MemoryCampaigns {
    fn preset(presets: &StatePresets) -> Result<MemoryCampaigns, String> {
        let parse = |(name, counts): (&String, &Counts)| {
            let parsed = name.split_once('/').and_then(|(kind, version)| {
                Some(CampaignKey {
                    kind: Kind::parse(kind)?,
                    target_version: version.to_owned(),
                })
            });
            parsed.map(|key| (key, counts.clone())).ok_or_else(|| {
                format!("state.campaigns: {name:?} is not KIND/VERSION, e.g. \"software/1.5\"")
            })
        };
        Ok(MemoryCampaigns {
            index: Mutex::default(),
            presets: presets
                .campaigns
                .iter()
                .map(parse)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Counts `body`, the notification of arrival number `arrival`.
    fn count(&self, body: &[u8], now: Millis, arrival: i64) {
        let notify_type = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|body| Some(body.get("notifyType")?.as_str()?.to_owned()));
        let upgrade = notify_type.and_then(|kind| Upgrade::parse(&kind, body, now));
        if let Some(upgrade) = upgrade {
            lock(&self.index).apply(arrival, upgrade);
        }
    }
}

impl Campaigns for MemoryCampaigns {
    fn report(&self, result: &Upgrade, _event_id: &str) -> Result<Option<Report>, StateError> {
        // Each event is counted before its run.
        let Some(key) = result.campaign() else {
            return Ok(None);
        };
        let counted = lock(&self.index).report(&key);
        Ok(match (counted, self.presets.get(&key)) {
            (Some(report), Some(extra)) => Some(report.with_extra(extra)),
            (None, Some(extra)) => Some(Report::empty(&key).with_extra(extra)),
            (counted, None) => counted,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A dry-run session: one plugin set, one in-memory state, any number of events.
pub struct DryRun {
    set: Arc<PluginSet>,
    state: Arc<MemoryState>,
    campaigns: Arc<MemoryCampaigns>,
    next: usize,
}

impl DryRun {
    pub fn new(set: Arc<PluginSet>) -> DryRun {
        DryRun::preset(set, &StatePresets::default()).expect("no presets cannot be wrong")
    }

    /// A session that starts from a case's `state`.
    pub fn preset(set: Arc<PluginSet>, presets: &StatePresets) -> Result<DryRun, String> {
        let state = MemoryState::default();
        state.preset(presets, Millis::now())?;
        Ok(DryRun {
            set,
            state: Arc::new(state),
            campaigns: Arc::new(MemoryCampaigns::preset(presets)?),
            next: 0,
        })
    }

    pub fn state(&self) -> &MemoryState {
        &self.state
    }

    /// Runs the plugins on one notification body (with `meta` overrides) and commits its
    /// state changes in memory.
    pub fn run(&mut self, body: &[u8], meta: Option<&Value>) -> Result<EventRun, String> {
        let problems = match notification::parse(body) {
            Ok(parsed) => serde_json::to_value(parsed.problems).expect("problems serialise"),
            Err(error) => return Err(error.to_string()),
        };
        let now = Millis::now();
        // Runs are numbered in arrival order (`dry-run-N`): this one is the next.
        self.campaigns.count(body, now, self.next as i64 + 1);
        self.run_input(body, problems, "http", meta, now)
    }

    /// Ends every digest the events so far opened, as if their windows had ended, and runs
    /// each through its plugin's `on_digest`: what each digest (`plugin/key`) did.
    pub fn end_digests(&mut self) -> Result<Vec<(String, EventRun)>, String> {
        let now = Millis::now();
        let mut runs = Vec::new();
        for digest in self.state.end_digests() {
            let event = rules::digest_event(&digest, now).map_err(|error| error.to_string())?;
            let run =
                self.run_input(&event.body, Value::Array(Vec::new()), "internal", None, now)?;
            runs.push((format!("{}/{}", digest.key.plugin, digest.key.key), run));
        }
        Ok(runs)
    }

    fn run_input(
        &mut self,
        body: &[u8],
        problems: Value,
        source: &str,
        meta: Option<&Value>,
        now: Millis,
    ) -> Result<EventRun, String> {
        self.next += 1;
        let mut input = EventInput::from_parts(EventParts {
            id: format!("dry-run-{}", self.next),
            received_at: now,
            path: "",
            remote_addr: None,
            body,
            problems,
            source,
        })?;
        if let Some(Value::Object(overrides)) = meta {
            let mut meta = input.meta.cast::<rhai::Map>();
            for (key, value) in overrides {
                let value =
                    rhai::serde::to_dynamic(value).map_err(|e| format!("meta.{key}: {e}"))?;
                meta.insert(key.as_str().into(), value);
            }
            input.meta = meta.into();
        }
        let committed = Committed {
            state: self.state.clone(),
            campaigns: self.campaigns.clone(),
        };
        let mut changes = StateChanges::default();
        let run = self
            .set
            .run(&input, &committed, &mut changes, now)
            .map_err(|e| e.to_string())?;
        self.state.apply(&changes, now);
        Ok(run)
    }
}

/// A case file: `{"name", "event", "meta"?, "state"?, "expect", "expect_error"?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub event: Value,
    #[serde(default)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub state: StatePresets,
    pub expect: Vec<Value>,
    #[serde(default)]
    pub expect_error: bool,
}

impl Case {
    /// Runs the case from an empty state; `Err` says why it failed.
    pub fn check(&self, set: Arc<PluginSet>) -> Result<(), String> {
        let mut dry_run = DryRun::preset(set, &self.state)?;
        let body = serde_json::to_vec(&self.event).expect("a JSON value serialises");
        let mut run = dry_run.run(&body, self.meta.as_ref())?;
        for (_, digest) in dry_run.end_digests()? {
            run.plugins.extend(digest.plugins);
            run.actions.extend(digest.actions);
        }
        let errors: Vec<String> = run
            .plugins
            .iter()
            .filter_map(|p| p.error.as_ref().map(ToString::to_string))
            .collect();
        match (errors.is_empty(), self.expect_error) {
            (false, false) => return Err(format!("script error: {}", errors.join("; "))),
            (true, true) => {
                return Err("expected a script error, but every plugin succeeded".to_owned());
            }
            _ => {}
        }
        match_actions(&self.expect, &run.actions)
    }
}

/// Actions match when there are as many as expected, in order, and each has every field its
/// expected action names, deep-equal.
pub fn match_actions(expected: &[Value], actual: &[Action]) -> Result<(), String> {
    if expected.len() != actual.len() {
        let actual: Vec<String> = actual.iter().map(|a| a.to_json().to_string()).collect();
        return Err(format!(
            "expected {} action(s), got {}: [{}]",
            expected.len(),
            actual.len(),
            actual.join(", ")
        ));
    }
    for (index, (expected, actual)) in expected.iter().zip(actual).enumerate() {
        let actual = actual.to_json();
        let Value::Object(fields) = expected else {
            return Err(format!("expect[{index}] must be an object"));
        };
        for (field, value) in fields {
            if actual.get(field) != Some(value) {
                let got = actual
                    .get(field)
                    .map_or("nothing".to_owned(), Value::to_string);
                return Err(format!(
                    "action {index}: `{field}` expected {value}, got {got}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{ActionSpec, Chat};
    use serde_json::json;

    fn chat(text: &str) -> Action {
        Action {
            plugin: "p.rhai".into(),
            spec: ActionSpec::Chat(Chat {
                channel: "ops".into(),
                text: Some(text.into()),
                payload: None,
            }),
        }
    }

    #[test]
    fn expected_fields_must_be_deep_equal_and_in_order() {
        let actual = [chat("a"), chat("b")];
        assert!(
            match_actions(
                &[json!({"kind": "chat", "text": "a"}), json!({"text": "b"})],
                &actual
            )
            .is_ok()
        );
        let swapped =
            match_actions(&[json!({"text": "b"}), json!({"text": "a"})], &actual).unwrap_err();
        assert!(
            swapped.contains("action 0: `text` expected \"b\""),
            "{swapped}"
        );
        let missing = match_actions(&[json!({"channel": "ops", "url": "x"}), json!({})], &actual)
            .unwrap_err();
        assert!(missing.contains("got nothing"), "{missing}");
        assert!(
            match_actions(&[json!({})], &actual)
                .unwrap_err()
                .starts_with("expected 1 action(s), got 2")
        );
    }

    #[test]
    fn memory_state_commits_windows_like_the_store() {
        let state = MemoryState::default();
        let presets: StatePresets = serde_json::from_value(
            json!({"seen": {"k": "5m"}, "count": {"c": 4}, "upgrade_retries": {"d/1.5": 2}}),
        )
        .unwrap();
        let now = Millis(10_000_000);
        state.preset(&presets, now).unwrap();
        assert_eq!(
            state.seen_at("k").unwrap(),
            Some(Millis(10_000_000 - 300_000))
        );
        assert_eq!(state.counter("c").unwrap(), Some((4, now)));
        assert_eq!(state.budget("d", "1.5").unwrap(), Some((2, now)));
        let bad: StatePresets =
            serde_json::from_value(json!({"upgrade_retries": {"d": 1}})).unwrap();
        assert!(
            state
                .preset(&bad, now)
                .unwrap_err()
                .contains("DEVICE/VERSION")
        );
    }
}
