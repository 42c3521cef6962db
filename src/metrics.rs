//! Prometheus metrics: every name is registered here, with the `notirouter_` prefix. Labels come
//! from bounded sets only: an unknown `notifyType` is counted as `other`, and device ids, paths
//! and error text are never labels.
//!
//! A [`Metrics`] is a value, not a global, so that two servers can run in one test process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::notification::COMMAND_STATE_CHANGED;
use crate::store::IntakeMetrics;

/// The notification types counted under their own name.
const KNOWN_TYPES: &[&str] = &[
    "swUpgradeResultNotify",
    "swUpgradeStateChangeNotify",
    "fwUpgradeResultNotify",
    "fwUpgradeStateChangeNotify",
    COMMAND_STATE_CHANGED,
    "deviceAdded",
    "bindDevice",
    "deviceInfoChanged",
    "deviceDataChanged",
    "deviceDatasChanged",
    "deviceDeleted",
    "deviceCapabilitiesChanged",
    "deviceCapabilitiesAdded",
    "deviceCapabilitiesDeleted",
    "deviceModelAdded",
    "deviceModelDeleted",
    "messageConfirm",
    "commandRsp",
    "serviceInfoChanged",
    "deviceEvent",
    "ruleEvent",
    "deviceDesiredPropertiesModifyStatusChanged",
];

/// The label value for a notification type: its name when documented, else `other`, or
/// `none` when the body names no type.
pub fn type_label(notify_type: Option<&str>) -> &'static str {
    match notify_type {
        None => "none",
        Some(name) => KNOWN_TYPES
            .iter()
            .find(|known| **known == name)
            .copied()
            .unwrap_or("other"),
    }
}

/// What the receiver answered.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
    Unavailable,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected => "rejected",
            Outcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceivedLabels {
    notify_type: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    notify_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Plugins are the operator's files in `scripts.dir`: a bounded set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
    outcome: &'static str,
}

/// Channels are the configured names (plus `email`, `platform`, `url`): a bounded set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: &'static str,
    channel: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn ok_or_error(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

pub struct Metrics {
    registry: Registry,
    received: Family<ReceivedLabels, Counter>,
    warnings: Family<TypeLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    rejected_not_kept: Counter,
    denied: Family<ReasonLabels, Counter>,
    receive_seconds: Histogram,
    pub intake: IntakeMetrics,
    script_runs: Family<PluginLabels, Counter>,
    script_seconds: Histogram,
    events_processed: Counter,
    script_reloads: Family<OutcomeLabels, Counter>,
    script_plugins: Gauge,
    actions: Family<ActionLabels, Counter>,
    delivery_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    oldest_pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("notirouter");
        let received = Family::<ReceivedLabels, Counter>::default();
        let warnings = Family::<TypeLabels, Counter>::default();
        let rejections = Family::<ReasonLabels, Counter>::default();
        let rejected_not_kept = Counter::default();
        let denied = Family::<ReasonLabels, Counter>::default();
        let receive_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let intake = IntakeMetrics::default();
        registry.register(
            "notifications_received",
            "Notifications received, by type and by what the receiver answered",
            received.clone(),
        );
        registry.register(
            "notification_warnings",
            "Field problems found in accepted notifications, by type",
            warnings.clone(),
        );
        registry.register(
            "rejections",
            "Requests refused with a 4xx or 503, by reason",
            rejections.clone(),
        );
        registry.register(
            "rejected_bodies_not_kept",
            "Refused bodies not kept because the store's queue was full",
            rejected_not_kept.clone(),
        );
        registry.register(
            "access_denied",
            "Requests turned away by server.auth (401, 403), by reason; never stored",
            denied.clone(),
        );
        registry.register(
            "receive_duration_seconds",
            "Time from the request's arrival to its answer",
            receive_seconds.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "Duration of one group commit (one transaction and one fsync)",
            intake.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_events",
            "Notifications per group commit",
            intake.batch_events.clone(),
        );
        registry.register(
            "store_queue_depth",
            "Jobs waiting for the store writer after it took a batch",
            intake.queue_depth.clone(),
        );
        let script_runs = Family::<PluginLabels, Counter>::default();
        let script_seconds = Histogram::new(exponential_buckets(0.000_001, 2.0, 20));
        let events_processed = Counter::default();
        let script_reloads = Family::<OutcomeLabels, Counter>::default();
        let script_plugins = Gauge::default();
        registry.register(
            "script_runs",
            "Plugin runs, by plugin and outcome (ok, error)",
            script_runs.clone(),
        );
        registry.register(
            "script_run_duration_seconds",
            "Duration of one plugin run on one event",
            script_seconds.clone(),
        );
        registry.register(
            "events_processed",
            "Events whose script outcome was committed",
            events_processed.clone(),
        );
        registry.register(
            "script_reloads",
            "Reloads of scripts.dir, by outcome (error: a file kept its previous version)",
            script_reloads.clone(),
        );
        registry.register("script_plugins", "Plugins loaded", script_plugins.clone());
        let actions = Family::<ActionLabels, Counter>::default();
        let delivery_seconds = Family::<KindLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 20))) as fn() -> Histogram,
        );
        let oldest_pending_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "actions",
            "Actions by kind, channel and outcome (queued, sent, retried, dead)",
            actions.clone(),
        );
        registry.register(
            "delivery_duration_seconds",
            "Time from an action being queued to its delivery",
            delivery_seconds.clone(),
        );
        registry.register(
            "oldest_pending_action_seconds",
            "Age of the oldest action not yet delivered (0 when none)",
            oldest_pending_seconds.clone(),
        );
        Metrics {
            registry,
            received,
            warnings,
            rejections,
            rejected_not_kept,
            denied,
            receive_seconds,
            intake,
            script_runs,
            script_seconds,
            events_processed,
            script_reloads,
            script_plugins,
            actions,
            delivery_seconds,
            oldest_pending_seconds,
        }
    }

    pub fn action(&self, kind: &'static str, channel: &str, outcome: &'static str) {
        let labels = ActionLabels {
            kind,
            channel: channel.to_owned(),
            outcome,
        };
        self.actions.get_or_create(&labels).inc();
    }

    pub fn action_delivered(&self, kind: &'static str, waited: std::time::Duration) {
        self.delivery_seconds
            .get_or_create(&KindLabels { kind })
            .observe(waited.as_secs_f64());
    }

    pub fn oldest_pending_action(&self, age_millis: Option<i64>) {
        self.oldest_pending_seconds
            .set(age_millis.unwrap_or(0) as f64 / 1000.0);
    }

    pub fn script_run(&self, plugin: &str, ok: bool, duration: std::time::Duration) {
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
            outcome: ok_or_error(ok),
        };
        self.script_runs.get_or_create(&labels).inc();
        self.script_seconds.observe(duration.as_secs_f64());
    }

    pub fn events_processed(&self, count: usize) {
        self.events_processed.inc_by(count as u64);
    }

    pub fn script_reload(&self, ok: bool, plugins: usize) {
        self.script_reloads
            .get_or_create(&OutcomeLabels {
                outcome: ok_or_error(ok),
            })
            .inc();
        self.script_plugins.set(plugins as i64);
    }

    pub fn received(&self, notify_type: Option<&str>, outcome: Outcome) {
        let labels = ReceivedLabels {
            notify_type: type_label(notify_type),
            outcome: outcome.as_str(),
        };
        self.received.get_or_create(&labels).inc();
    }

    pub fn warnings(&self, notify_type: Option<&str>, count: usize) {
        let labels = TypeLabels {
            notify_type: type_label(notify_type),
        };
        self.warnings.get_or_create(&labels).inc_by(count as u64);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn rejected_not_kept(&self) {
        self.rejected_not_kept.inc();
    }

    pub fn denied(&self, reason: &'static str) {
        self.denied.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn receive_duration(&self, seconds: f64) {
        self.receive_seconds.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_share_one_label() {
        assert_eq!(
            type_label(Some("swUpgradeResultNotify")),
            "swUpgradeResultNotify"
        );
        assert_eq!(type_label(Some("madeUp")), "other");
        assert_eq!(type_label(None), "none");
    }

    #[test]
    fn rendering_uses_the_prefix_and_counts() {
        let metrics = Metrics::new();
        metrics.received(Some("swUpgradeResultNotify"), Outcome::Accepted);
        metrics.received(Some("swUpgradeResultNotify"), Outcome::Accepted);
        metrics.rejected("not_json");
        let text = metrics.render();
        assert!(text.contains(
            "notirouter_notifications_received_total{notify_type=\"swUpgradeResultNotify\",outcome=\"accepted\"} 2"
        ), "{text}");
        assert!(
            text.contains("notirouter_rejections_total{reason=\"not_json\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("notirouter_store_commit_duration_seconds_count 0"),
            "{text}"
        );
    }
}
