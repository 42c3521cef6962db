//! SPEC.md "Digests and campaigns" through the real binary, real HTTP and a real SMTP server:
//! the shipped storm guard's single alerts and summaries, a digest that outlives a `kill -9`,
//! digests of several versions, `on_digest` errors kept to their plugin, one digest with four
//! workers, and the campaign guard that alerts once and stops retries.

mod common;
#[path = "common/sinks.rs"]
mod sinks;

use std::time::{Duration, SystemTime};

use common::fixtures::{self, with};
use common::{RECEIVER, TestServer, in_parallel, queued_actions, wait_until};
use serde_json::{Value, json};
use sinks::{HttpSink, SmtpSink};

/// The storm window of the tests that post a few hundred failures: longer than posting them
/// takes on a loaded machine running a debug build, or the count starts again within the storm
/// and alerts come one by one a second time.
const STORM_WINDOW: &str = "20s";

/// The storm window of the tests that post a few dozen failures one by one: longer than
/// posting and running them takes on a loaded machine.
const SHORT_STORM_WINDOW: &str = "8s";

/// Long enough for a summary to be sent after its window on a busy machine.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(30);

/// Chat channel `ops` and email going to the sinks.
fn sinks_config(chat: &HttpSink, smtp: &SmtpSink) -> String {
    format!(
        "[channels.ops]\nkind = \"slack\"\nurl = \"{}\"\n\n[email]\ntransport = \"smtp\"\nsmtp_url = \"{}\"\n",
        chat.url("/services/T0/B0/token"),
        smtp.url()
    )
}

/// The shipped plugins, with chat and email going to real sinks, the storm window `window`
/// (a digest's window too) and `extra` appended to `[scripts]`.
fn shipped_config(chat: &HttpSink, smtp: &SmtpSink, window: &str, extra: &str) -> String {
    format!(
        r#"
[scripts]
dir = "{scripts}"
hot_reload = false
{extra}

{sinks}
[vars]
ops_email = "ops@example.com"
chat_channel = "ops"
storm_threshold = 5
storm_window = "{window}"
dashboard_url = "https://dash.example.com"
"#,
        scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts"),
        sinks = sinks_config(chat, smtp),
    )
}

/// The texts of the chat messages received, in arrival order.
fn chat_texts(chat: &HttpSink) -> Vec<String> {
    chat.delivered()
        .iter()
        .map(|request| {
            request.json()["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

fn summaries(texts: &[String]) -> Vec<String> {
    texts
        .iter()
        .filter(|text| text.contains("failure storm"))
        .cloned()
        .collect()
}

/// The one storm summary among the chat `texts`; it must say `more` ("15 more").
fn the_chat_summary(texts: &[String], more: &str) -> String {
    let found = summaries(texts);
    assert_eq!(found.len(), 1, "{texts:#?}");
    assert!(found[0].contains(more), "{}", found[0]);
    found[0].clone()
}

/// Posts `count` FAILs of devices `dev-0`, `dev-1`, ... one after the other, and waits until
/// the scripts have run them.
fn post_failures(server: &TestServer, count: usize) {
    for n in 0..count {
        server.post_accepted(&fixtures::sw_fail(&format!("dev-{n}")));
    }
    server.wait_until_processed();
}

fn single_alerts(texts: &[String]) -> usize {
    texts
        .iter()
        .filter(|text| text.starts_with(":warning:"))
        .count()
}

/// The `Subject` headers of the mails received.
fn subjects(smtp: &SmtpSink) -> Vec<String> {
    smtp.mails()
        .iter()
        .map(|mail| mail.header("Subject").unwrap_or_default())
        .collect()
}

/// Waits until `count` chat summaries and `count` mailed ones arrived.
fn wait_for_summaries(server: &TestServer, chat: &HttpSink, smtp: &SmtpSink, count: usize) {
    let arrived = wait_until(SUMMARY_TIMEOUT, || {
        let mailed = subjects(smtp)
            .iter()
            .filter(|subject| subject.contains("failure storm"))
            .count();
        summaries(&chat_texts(chat)).len() >= count && mailed >= count
    });
    assert!(
        arrived,
        "{count} summaries per channel did not arrive: chat {:#?}, mail {:#?}; logs:\n{}",
        chat_texts(chat),
        subjects(smtp),
        server.logs()
    );
}

/// The digest events stored, each with its plugin, once none is pending any more.
fn settled_digest_events(server: &TestServer) -> Vec<Value> {
    server.wait_until_processed();
    server.events(&["--type", "digest"])
}

fn fail_with_code(device: &str, code: &str) -> Value {
    with(fixtures::sw_fail(device), "errorCode", json!(code))
}

fn fail_of_version(device: &str, version: &str) -> Value {
    with(fixtures::sw_fail(device), "targetVersion", json!(version))
}

#[test]
fn a_storm_of_300_failures_alerts_the_threshold_one_by_one_then_one_summary_per_channel() {
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let server = TestServer::start(&shipped_config(&chat, &smtp, STORM_WINDOW, ""));
    // The first five alone, in order; then 295 at once, of two error codes.
    for n in 0..5 {
        server.post_accepted(&fail_with_code(&format!("first-{n}"), "9"));
    }
    in_parallel(5, 59, |thread, n| {
        let code = if n < 39 { "7" } else { "4" };
        let body = fail_with_code(&format!("dev-{thread}-{n}"), code);
        server.post_json(RECEIVER, &body.to_string()).accepted();
    });
    wait_for_summaries(&server, &chat, &smtp, 1);
    server.wait_until_processed();
    let texts = chat_texts(&chat);
    assert_eq!(single_alerts(&texts), 5, "{texts:#?}");
    let summary = the_chat_summary(&texts, "295 more software upgrades to 1.5 failed");
    assert!(
        summary.contains("by error code: 7 ×195, 4 ×100"),
        "{summary}"
    );
    assert!(
        summary.contains("https://dash.example.com/ui/campaigns/software/1.5"),
        "{summary}"
    );
    let mailed = subjects(&smtp);
    let storms: Vec<&String> = mailed.iter().filter(|s| s.contains("storm")).collect();
    assert_eq!(storms.len(), 1, "{mailed:#?}");
    assert!(storms[0].contains("295 more"), "{}", storms[0]);
    let singles = mailed
        .iter()
        .filter(|s| s.starts_with("Upgrade FAILED"))
        .count();
    assert_eq!(singles, 5, "{mailed:#?}");
    // The campaign guard saw every result fail: one alert per channel, however many followed.
    let guard_chats = texts
        .iter()
        .filter(|t| t.contains("tripped the guard"))
        .count();
    let guard_mails = mailed
        .iter()
        .filter(|s| s.contains("tripped the guard"))
        .count();
    assert_eq!((guard_chats, guard_mails), (1, 1), "{texts:#?} {mailed:#?}");
}

#[test]
fn a_digest_open_at_a_kill_9_is_summarised_once_after_the_restart() {
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let mut server = TestServer::start(&shipped_config(&chat, &smtp, SHORT_STORM_WINDOW, ""));
    post_failures(&server, 20);
    assert!(
        summaries(&chat_texts(&chat)).is_empty(),
        "the window was meant to outlast the posting"
    );
    server.kill9();
    let server = server.restart();
    wait_for_summaries(&server, &chat, &smtp, 1);
    let digests = settled_digest_events(&server);
    assert_eq!(digests.len(), 2, "one digest per plugin: {digests:#?}");
    the_chat_summary(&chat_texts(&chat), "15 more");
}

#[test]
fn a_digest_whose_window_ended_while_the_server_was_down_fires_as_it_starts() {
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let mut server = TestServer::start(&shipped_config(&chat, &smtp, "2s", ""));
    post_failures(&server, 7);
    server.kill9();
    // The digests opened before the events were processed: their window has ended once the
    // clock passes this point, with no server running.
    let ended = SystemTime::now() + Duration::from_secs(2);
    assert!(wait_until(SUMMARY_TIMEOUT, || SystemTime::now() >= ended));
    assert!(
        summaries(&chat_texts(&chat)).is_empty(),
        "sent before the stop"
    );
    let server = server.restart();
    wait_for_summaries(&server, &chat, &smtp, 1);
    assert_eq!(settled_digest_events(&server).len(), 2);
    the_chat_summary(&chat_texts(&chat), "2 more");
}

#[test]
fn storms_of_two_versions_make_one_summary_each() {
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let server = TestServer::start(&shipped_config(&chat, &smtp, SHORT_STORM_WINDOW, ""));
    for n in 0..8 {
        for version in ["1.5", "1.6"] {
            server.post_accepted(&fail_of_version(&format!("dev-{version}-{n}"), version));
        }
    }
    wait_for_summaries(&server, &chat, &smtp, 2);
    let mut texts = summaries(&chat_texts(&chat));
    texts.sort();
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[0].contains("3 more software upgrades to 1.5"),
        "{texts:#?}"
    );
    assert!(
        texts[1].contains("3 more software upgrades to 1.6"),
        "{texts:#?}"
    );
}

#[test]
fn four_workers_fill_one_digest_per_plugin() {
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let config = shipped_config(&chat, &smtp, STORM_WINDOW, "workers = 4");
    let server = TestServer::start(&config);
    in_parallel(8, 25, |thread, n| {
        let body = fixtures::sw_fail(&format!("dev-{thread}-{n}"));
        server.post_json(RECEIVER, &body.to_string()).accepted();
    });
    wait_for_summaries(&server, &chat, &smtp, 1);
    let digests = settled_digest_events(&server);
    assert_eq!(digests.len(), 2, "one digest per plugin: {digests:#?}");
    let texts = chat_texts(&chat);
    assert_eq!(single_alerts(&texts), 5, "{texts:#?}");
    the_chat_summary(&texts, "195 more");
}

/// Two plugins open a digest per failure; one's `on_digest` throws.
const THROWING: &str = r#"
fn on_notification(n) { digest("k", "2s", n.deviceId); }
fn on_digest(key, items, total) { throw "no summary today"; }
"#;
const SUMMING: &str = r#"
fn on_notification(n) { digest("k", "2s", #{device: n.deviceId}); }
fn on_digest(key, items, total, meta) {
    slack("ops", `${key}: ${total} from ${items[0].device}, ${meta.source}`);
}
"#;

#[test]
fn an_on_digest_that_throws_fails_its_digest_only() {
    let chat = HttpSink::start();
    let config = format!(
        "[channels.ops]\nkind = \"slack\"\nurl = \"{}\"\n",
        chat.url("/hook")
    );
    let server =
        TestServer::start_with_plugins(&config, &[("a.rhai", THROWING), ("b.rhai", SUMMING)]);
    for n in 0..3 {
        server.post_accepted(&fixtures::sw_fail(&format!("dev-{n}")));
    }
    let arrived = wait_until(SUMMARY_TIMEOUT, || !chat.delivered().is_empty());
    assert!(arrived, "no summary; logs:\n{}", server.logs());
    assert_eq!(chat_texts(&chat), ["k: 3 from dev-0, internal"]);
    let digests = settled_digest_events(&server);
    let statuses: Vec<(&Value, &Value)> = digests
        .iter()
        .map(|event| (&event["status"], &event["error"]))
        .collect();
    assert_eq!(statuses.len(), 2, "{digests:#?}");
    let failed: Vec<&(&Value, &Value)> = statuses.iter().filter(|(s, _)| *s == "failed").collect();
    assert_eq!(failed.len(), 1, "{digests:#?}");
    let error = failed[0].1.as_str().unwrap_or_default();
    assert!(
        error.contains("a.rhai") && error.contains("no summary today"),
        "{error}"
    );
}

/// The retry plugin, the guard and its library, with a platform that is enabled (nothing is
/// sent: the actions it queues are read from the store).
#[test]
fn the_campaign_guard_trips_once_at_its_threshold_and_retries_stop() {
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let files: Vec<(String, String)> = [
        "30-retry-upgrade.rhai",
        "40-campaign-guard.rhai",
        "lib/guard.rhai",
    ]
    .iter()
    .map(|name| {
        let text = std::fs::read_to_string(format!("{scripts}/{name}")).unwrap();
        (name.to_string(), text)
    })
    .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let config = format!(
        r#"
{sinks}
[platform]
enabled = true
base_url = "https://127.0.0.1:9"
app_id = "app"
secret = "secret"

[platform.packages]
"1.5" = "a1b2c3"

[vars]
ops_email = "ops@example.com"
transient_error_codes = ["4"]
guard_min_devices = 10
guard_fail_rate = 0.5
"#,
        sinks = sinks_config(&chat, &smtp),
    );
    let server = TestServer::start_with_script_files(&config, &files);
    // Four successes, then failures: the 9th failure makes 13 results, 9 failed (69 %); the
    // 6th makes 10 results at 60 %: the first past both thresholds.
    for n in 0..4 {
        server.post_accepted(&fixtures::sw_success(&format!("ok-{n}")));
    }
    let mut retried = Vec::new();
    for n in 0..9 {
        let id = server.post_accepted(&fail_with_code(&format!("bad-{n}"), "4"));
        let detail = server.wait_for_outcome(&id);
        let kinds: Vec<Value> = queued_actions(&detail)
            .iter()
            .map(|action| action["kind"].clone())
            .collect();
        retried.push(kinds.contains(&json!("platform")));
    }
    assert_eq!(
        retried,
        [true, true, true, true, true, false, false, false, false],
        "retries stop with the failure that trips the guard"
    );
    let arrived = wait_until(SUMMARY_TIMEOUT, || {
        !chat.delivered().is_empty() && !smtp.mails().is_empty()
    });
    assert!(arrived, "no guard alert; logs:\n{}", server.logs());
    let texts = chat_texts(&chat);
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert!(
        texts[0].contains("Campaign software 1.5 tripped the guard: 60% of 10 results failed"),
        "{texts:#?}"
    );
    assert_eq!(smtp.mails().len(), 1);
}

#[test]
fn a_storm_split_across_two_instances_on_postgresql_is_summarised_once_per_channel() {
    let Some(database) = common::pg::TestDatabase::create() else {
        return;
    };
    let (chat, smtp) = (HttpSink::start(), SmtpSink::start());
    let store = format!("\n[store]\nurl = \"{}\"\n", database.url);
    let config = shipped_config(&chat, &smtp, STORM_WINDOW, &store);
    let servers = std::thread::scope(|scope| {
        let started = [
            scope.spawn(|| TestServer::start(&config)),
            scope.spawn(|| TestServer::start(&config)),
        ];
        started.map(|server| server.join().expect("an instance starts"))
    });
    in_parallel(8, 25, |thread, n| {
        let body = fail_with_code(&format!("dev-{thread}-{n}"), "7");
        servers[(thread + n) % 2]
            .post_json(RECEIVER, &body.to_string())
            .accepted();
    });
    wait_for_summaries(&servers[0], &chat, &smtp, 1);
    servers.iter().for_each(TestServer::wait_until_processed);
    let texts = chat_texts(&chat);
    assert_eq!(single_alerts(&texts), 5, "{texts:#?}");
    the_chat_summary(&texts, "195 more");
    let mailed = subjects(&smtp);
    let storms = mailed.iter().filter(|s| s.contains("storm")).count();
    let guards = mailed
        .iter()
        .filter(|s| s.contains("tripped the guard"))
        .count();
    assert_eq!((storms, guards), (1, 1), "{mailed:#?}");
}
