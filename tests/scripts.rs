//! SPEC.md "Scripts" through the real binary: each binding as a plugin sees it on a running
//! server (`events show --json` shows what it queued), script errors and limits, the sandbox,
//! `check`, `test` and `test --cases`, `events replay`, and the rule that a crash between
//! "stored" and "committed" leaves every event handled exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::fixtures::{self, with, without};
use common::{
    RECEIVER, RECEIVER_CMD, SETTLE_TIMEOUT, TestServer, assert_exit, in_parallel, json_lines,
    metric, notirouter, queued_actions, stderr, stdout, wait_until, write_script_files,
};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The URL test plugins post what they saw to (`webhook(OBSERVE, #{...})`), so that a binding's
/// return value shows up in `events show`. Nothing listens there: delivery retries in the
/// background and never dead-letters within a test, so no `actionFailed` event is added.
const OBSERVE: &str = "http://127.0.0.1:9/observe";

/// The payloads of the webhook actions to [`OBSERVE`] in an `events show --json` answer.
fn observed(detail: &Value) -> Vec<Value> {
    queued_actions(detail)
        .into_iter()
        .filter(|action| action["url"] == OBSERVE)
        .map(|action| action["payload"].clone())
        .collect()
}

/// Posts `body`, waits for its outcome and returns `events show --json`.
fn run(server: &TestServer, body: &Value) -> Value {
    let id = server.post_accepted(body);
    server.wait_for_outcome(&id)
}

/// Asserts that the event was handled with every plugin succeeding.
fn assert_handled(detail: &Value) {
    assert_eq!(detail["status"], "handled", "{detail:#}");
    for plugin in detail["plugins"].as_array().expect("plugins is an array") {
        assert_eq!(plugin["error"], Value::Null, "{detail:#}");
    }
}

/// The `plugins` entry of the plugin named `name`.
fn plugin_run<'a>(detail: &'a Value, name: &str) -> &'a Value {
    detail["plugins"]
        .as_array()
        .expect("plugins is an array")
        .iter()
        .find(|run| run["plugin"] == name)
        .unwrap_or_else(|| panic!("no run of {name}: {detail:#}"))
}

/// The error text of plugin `name`'s run; panics if it succeeded.
fn plugin_error(detail: &Value, name: &str) -> String {
    plugin_run(detail, name)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} did not fail: {detail:#}"))
        .to_owned()
}

/// An upgrade FAIL for `device` that is not a duplicate of another with a different `sub`.
fn sw_fail_numbered(device: &str, sub: usize) -> Value {
    with(
        fixtures::sw_fail(device),
        "subOperationId",
        json!(format!("sub-{sub}")),
    )
}

// ---------------------------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------------------------

#[test]
fn email_queues_an_email_with_recipients_as_a_string_or_an_array() {
    let plugin = r#"
        fn on_notification(n) {
            email("ops@example.com", "one", `device ${n.deviceId}`);
            email(["a@example.com", "b@example.com"], "two", "body two");
            email(#{to: "c@example.com", cc: ["d@example.com", "e@example.com"],
                    subject: "three", body: "body three", html: "<b>three</b>"});
            email(#{to: ["f@example.com"], cc: "g@example.com", subject: "four", body: "body four"});
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("mail.rhai", plugin)]);
    let detail = run(&server, &fixtures::sw_fail("dev-mail"));
    assert_handled(&detail);
    assert_eq!(
        detail["plugins"],
        json!([{"plugin": "mail.rhai", "error": null, "actions": 4}])
    );
    assert_eq!(
        queued_actions(&detail),
        [
            json!({"kind": "email", "plugin": "mail.rhai", "to": ["ops@example.com"], "cc": [],
                   "subject": "one", "body": "device dev-mail"}),
            json!({"kind": "email", "plugin": "mail.rhai",
                   "to": ["a@example.com", "b@example.com"], "cc": [],
                   "subject": "two", "body": "body two"}),
            json!({"kind": "email", "plugin": "mail.rhai", "to": ["c@example.com"],
                   "cc": ["d@example.com", "e@example.com"], "subject": "three",
                   "body": "body three", "html": "<b>three</b>"}),
            json!({"kind": "email", "plugin": "mail.rhai", "to": ["f@example.com"],
                   "cc": ["g@example.com"], "subject": "four", "body": "body four"}),
        ]
    );
    assert_eq!(detail["actions"][0]["kind"], "email");
    assert_eq!(detail["actions"][0]["plugin"], "mail.rhai");
}

#[test]
fn slack_queues_text_or_a_native_body_for_a_configured_channel() {
    let plugin = r#"
        fn on_notification(n) {
            slack("ops", `upgrade of ${n.deviceId} failed`);
            slack("ops", #{text: "native", blocks: [#{type: "section", fields: [1, 2]}]});
        }
    "#;
    let config = "[channels.ops]\nkind = \"log\"\n";
    let server = TestServer::start_with_plugins(config, &[("chat.rhai", plugin)]);
    let detail = run(&server, &fixtures::sw_fail("dev-chat"));
    assert_handled(&detail);
    assert_eq!(
        queued_actions(&detail),
        [
            json!({"kind": "chat", "plugin": "chat.rhai", "channel": "ops",
                   "text": "upgrade of dev-chat failed"}),
            json!({"kind": "chat", "plugin": "chat.rhai", "channel": "ops",
                   "payload": {"text": "native",
                               "blocks": [{"type": "section", "fields": [1, 2]}]}}),
        ]
    );
    assert_eq!(detail["actions"][0]["kind"], "chat");
}

#[test]
fn webhook_queues_a_json_post_to_a_url_or_a_webhook_channel() {
    let plugin = r#"
        fn on_notification(n) {
            webhook("http://127.0.0.1:9/in", #{device: n.deviceId, attempt: 1, ok: false});
            webhook("hook", #{device: n.deviceId, tags: ["a", "b"], nothing: ()});
        }
    "#;
    let config = "[channels.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\n";
    let server = TestServer::start_with_plugins(config, &[("hook.rhai", plugin)]);
    let detail = run(&server, &fixtures::sw_fail("dev-hook"));
    assert_handled(&detail);
    assert_eq!(
        queued_actions(&detail),
        [
            json!({"kind": "webhook", "plugin": "hook.rhai", "url": "http://127.0.0.1:9/in",
                   "payload": {"device": "dev-hook", "attempt": 1, "ok": false}}),
            json!({"kind": "webhook", "plugin": "hook.rhai", "channel": "hook",
                   "payload": {"device": "dev-hook", "tags": ["a", "b"], "nothing": null}}),
        ]
    );
    assert_eq!(detail["actions"][1]["kind"], "webhook");
}

/// Reports `retry_upgrade`'s answer and `upgrade_retries` afterwards.
const RETRY_PLUGIN: &str = r#"
    fn on_notification(n) {
        let queued = retry_upgrade(n);
        webhook("http://127.0.0.1:9/observe", #{queued: queued, used: upgrade_retries(n)});
    }
"#;

/// The platform enabled at a closed port: tasks are queued, and their creation waits for
/// retries that these tests never reach.
const PLATFORM_ENABLED: &str = "
[platform]
enabled = true
base_url = \"http://127.0.0.1:9\"
app_id = \"app\"
secret = \"secret\"
max_upgrade_retries = 2

[platform.packages]
\"1.5\" = \"file-1.5\"
";

#[test]
fn retry_upgrade_queues_a_platform_task_when_the_platform_is_enabled() {
    let options = r#"
        fn on_notification(n) {
            if n.deviceId == "dev-options" {
                retry_upgrade(n, #{file_id: "explicit", execute_type: "device_online",
                                   retry_type: true, retry_times: 3});
            }
        }
    "#;
    let server = TestServer::start_with_plugins(
        PLATFORM_ENABLED,
        &[
            ("10-retry.rhai", RETRY_PLUGIN),
            ("20-options.rhai", options),
        ],
    );

    let software = run(&server, &fixtures::sw_fail("dev-sw"));
    assert_handled(&software);
    assert_eq!(
        queued_actions(&software),
        [
            json!({"kind": "platform", "plugin": "10-retry.rhai", "op": "retry_upgrade",
                   "device_id": "dev-sw", "notify_type": "swUpgradeResultNotify",
                   "target_version": "1.5", "file_id": "file-1.5", "execute_type": "now"}),
            json!({"kind": "webhook", "plugin": "10-retry.rhai", "url": OBSERVE,
                   "payload": {"queued": true, "used": 1}}),
        ]
    );

    // Firmware: the type comes from notifyType; no package is configured for V1.0.4.
    let firmware = run(&server, &fixtures::fw_result("dev-fw"));
    assert_handled(&firmware);
    assert_eq!(
        queued_actions(&firmware)[0],
        json!({"kind": "platform", "plugin": "10-retry.rhai", "op": "retry_upgrade",
               "device_id": "dev-fw", "notify_type": "fwUpgradeResultNotify",
               "target_version": "V1.0.4", "execute_type": "now"})
    );

    let with_options = run(&server, &fixtures::sw_fail("dev-options"));
    assert_handled(&with_options);
    let actions = queued_actions(&with_options);
    assert_eq!(actions.len(), 3, "{actions:#?}");
    assert_eq!(actions[2]["plugin"], "20-options.rhai");
    assert_eq!(actions[2]["file_id"], "explicit");
    assert_eq!(actions[2]["execute_type"], "device_online");
    assert_eq!(actions[2]["retry_type"], true);
    assert_eq!(actions[2]["retry_times"], 3);
}

#[test]
fn retry_upgrade_returns_false_and_queues_nothing_when_the_platform_is_disabled() {
    let server = TestServer::start_with_plugins("", &[("retry.rhai", RETRY_PLUGIN)]);
    let detail = run(&server, &fixtures::sw_fail("dev-disabled"));
    assert_handled(&detail);
    assert_eq!(
        queued_actions(&detail),
        [
            json!({"kind": "webhook", "plugin": "retry.rhai", "url": OBSERVE,
                "payload": {"queued": false, "used": 0}})
        ]
    );
}

#[test]
fn the_retry_budget_is_max_upgrade_retries_per_device_and_target_version() {
    let server = TestServer::start_with_plugins(PLATFORM_ENABLED, &[("retry.rhai", RETRY_PLUGIN)]);
    let ids: Vec<String> = (0..3)
        .map(|sub| server.post_accepted(&sw_fail_numbered("dev-budget", sub)))
        .collect();
    let other_device = server.post_accepted(&fixtures::sw_fail("dev-other"));
    let other_version = server.post_accepted(&with(
        fixtures::sw_fail("dev-budget"),
        "targetVersion",
        json!("1.6"),
    ));
    server.wait_until_processed();

    let details: Vec<Value> = ids.iter().map(|id| server.event_detail(id)).collect();
    let platform_actions = details
        .iter()
        .flat_map(queued_actions)
        .filter(|action| action["kind"] == "platform")
        .count();
    assert_eq!(platform_actions, 2, "{details:#?}");
    let answers: Vec<Value> = details.iter().flat_map(observed).collect();
    assert_eq!(
        answers,
        [
            json!({"queued": true, "used": 1}),
            json!({"queued": true, "used": 2}),
            json!({"queued": false, "used": 2}),
        ]
    );
    for id in [other_device, other_version] {
        let detail = server.event_detail(&id);
        assert_eq!(
            observed(&detail),
            [json!({"queued": true, "used": 1})],
            "another device or version has its own budget"
        );
    }
}

#[test]
fn retry_upgrade_on_a_notification_that_is_not_an_upgrade_result_is_a_script_error() {
    let plugin = r#"
        fn on_notification(n) {
            email("ops@example.com", "before the retry", "");
            retry_upgrade(n);
        }
    "#;
    let server = TestServer::start_with_plugins(PLATFORM_ENABLED, &[("retry.rhai", plugin)]);
    for body in [
        fixtures::sw_state("dev-state"),
        fixtures::command_status("dev-cmd"),
    ] {
        let detail = run(&server, &body);
        assert_eq!(detail["status"], "failed", "{detail:#}");
        let error = plugin_error(&detail, "retry.rhai");
        assert!(error.contains("retry_upgrade"), "{error}");
        assert!(
            error.contains("not a software or firmware upgrade result"),
            "{error}"
        );
        assert_eq!(queued_actions(&detail), Vec::<Value>::new());
    }
}

#[test]
fn upgrade_failed_is_true_only_for_failed_software_and_firmware_results() {
    let plugin = r#"
        fn on_notification(n) {
            webhook("http://127.0.0.1:9/observe", #{failed: upgrade_failed(n)});
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("failed.rhai", plugin)]);
    let cases = [
        ("sw FAIL", fixtures::sw_fail("dev-1"), true),
        ("fw FAIL", fixtures::fw_result("dev-2"), true),
        ("sw SUCCESS", fixtures::sw_success("dev-3"), false),
        (
            "fw SUCCESS",
            with(fixtures::fw_result("dev-4"), "status", json!("SUCCESS")),
            false,
        ),
        ("sw state change", fixtures::sw_state("dev-5"), false),
        ("fw state change", fixtures::fw_state("dev-6"), false),
        ("command status", fixtures::command_status("dev-7"), false),
    ];
    for (name, body, failed) in cases {
        let detail = run(&server, &body);
        assert_handled(&detail);
        assert_eq!(observed(&detail), [json!({"failed": failed})], "{name}");
    }
}

#[test]
fn seen_is_false_then_true_and_its_state_survives_a_restart() {
    let plugin = r#"
        fn on_notification(n) {
            webhook("http://127.0.0.1:9/observe",
                    #{fixed: seen("maintenance", "1h"), device: seen(n.deviceId, "1h")});
        }
    "#;
    let mut server = TestServer::start_with_plugins("", &[("seen.rhai", plugin)]);
    let first = run(&server, &sw_fail_numbered("dev-a", 1));
    assert_eq!(observed(&first), [json!({"fixed": false, "device": false})]);
    let second = run(&server, &sw_fail_numbered("dev-a", 2));
    assert_eq!(observed(&second), [json!({"fixed": true, "device": true})]);
    let other = run(&server, &sw_fail_numbered("dev-b", 3));
    assert_eq!(observed(&other), [json!({"fixed": true, "device": false})]);

    server.kill9();
    let server = server.restart();
    let after = run(&server, &sw_fail_numbered("dev-a", 4));
    assert_eq!(observed(&after), [json!({"fixed": true, "device": true})]);
}

#[test]
fn a_seen_hit_does_not_extend_the_ttl() {
    let plugin = r#"
        fn on_notification(n) {
            webhook("http://127.0.0.1:9/observe", #{seen: seen("short", "1s")});
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("seen.rhai", plugin)]);
    let first = run(&server, &sw_fail_numbered("dev-ttl", 0));
    assert_eq!(observed(&first), [json!({"seen": false})]);
    // Events come far more often than the ttl: if each hit extended it, `seen` would stay true.
    let mut sub = 0;
    let mut answers = Vec::new();
    let expired = wait_until(Duration::from_secs(5), || {
        sub += 1;
        let answer = observed(&run(&server, &sw_fail_numbered("dev-ttl", sub)))[0].clone();
        answers.push(answer["seen"].clone());
        answer == json!({"seen": false})
    });
    assert!(expired, "seen stayed true: {answers:?}");
    assert!(
        answers.len() > 1,
        "the key was not seen in between: {answers:?}"
    );
}

#[test]
fn count_increments_across_events() {
    let plugin = r#"
        fn on_notification(n) {
            webhook("http://127.0.0.1:9/observe",
                    #{all: count("failures", "1h"), device: count(n.deviceId, "1h")});
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("count.rhai", plugin)]);
    let devices = ["dev-a", "dev-b", "dev-a", "dev-a"];
    let ids: Vec<String> = devices
        .iter()
        .enumerate()
        .map(|(sub, device)| server.post_accepted(&sw_fail_numbered(device, sub)))
        .collect();
    server.wait_until_processed();
    let answers: Vec<Value> = ids
        .iter()
        .flat_map(|id| observed(&server.event_detail(id)))
        .collect();
    assert_eq!(
        answers,
        [
            json!({"all": 1, "device": 1}),
            json!({"all": 2, "device": 1}),
            json!({"all": 3, "device": 2}),
            json!({"all": 4, "device": 3}),
        ]
    );
}

#[test]
fn log_lines_are_tagged_with_the_plugin_and_the_event() {
    let plugin = r#"
        fn on_notification(n) {
            log("warn", `device ${n.deviceId} needs attention`);
            log(`plain line for ${n.deviceId}`);
            print(`printed for ${n.deviceId}`);
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("noisy.rhai", plugin)]);
    let id = server.post_accepted(&fixtures::sw_fail("dev-log"));
    assert_handled(&server.wait_for_outcome(&id));
    let line_with = |text: &str| {
        server
            .logs()
            .lines()
            .find(|line| line.contains(text))
            .map(str::to_owned)
    };
    let logged = wait_until(SETTLE_TIMEOUT, || {
        ["needs attention", "plain line for", "printed for"]
            .iter()
            .all(|text| line_with(text).is_some())
    });
    assert!(logged, "log lines missing:\n{}", server.logs());
    let warning = line_with("device dev-log needs attention").expect("found above");
    assert!(warning.contains("WARN"), "{warning}");
    for text in [
        "needs attention",
        "plain line for dev-log",
        "printed for dev-log",
    ] {
        let line = line_with(text).expect("found above");
        assert!(line.contains("plugin=noisy.rhai"), "{line}");
        assert!(line.contains(&format!("event_id={id}")), "{line}");
    }
    assert!(line_with("plain line for").expect("found").contains("INFO"));
}

#[test]
fn vars_are_readable_inside_every_function() {
    let config = r#"
[vars]
ops_email = "oncall@example.com"
subject_prefix = "[fleet]"
levels = [1, 2, 3]
"#;
    let plugin = r#"
        fn recipient() { vars.ops_email }
        fn subject(n) { `${vars.subject_prefix} ${n.deviceId}` }
        fn on_notification(n) {
            email(recipient(), subject(n), `${vars.levels.len()} levels`);
        }
    "#;
    let server = TestServer::start_with_plugins(config, &[("vars.rhai", plugin)]);
    let detail = run(&server, &fixtures::sw_fail("dev-vars"));
    assert_handled(&detail);
    assert_eq!(
        queued_actions(&detail),
        [
            json!({"kind": "email", "plugin": "vars.rhai", "to": ["oncall@example.com"],
                "cc": [], "subject": "[fleet] dev-vars", "body": "3 levels"})
        ]
    );
}

#[test]
fn top_level_constants_are_readable_as_global_and_the_top_level_runs_once() {
    let plugin = r#"
        const RECIPIENT = "const@example.com";
        const KINDS = #{swUpgradeResultNotify: "software", fwUpgradeResultNotify: "firmware"};
        print("top level of once.rhai ran");

        fn kind(n) { global::KINDS[n.notifyType] }

        fn on_notification(n) {
            email(global::RECIPIENT, kind(n), global::KINDS.len().to_string());
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("once.rhai", plugin)]);
    let software = run(&server, &fixtures::sw_fail("dev-const"));
    let firmware = run(&server, &fixtures::fw_result("dev-const"));
    assert_handled(&software);
    assert_handled(&firmware);
    let subjects: Vec<Value> = [software, firmware]
        .iter()
        .flat_map(queued_actions)
        .map(|action| {
            assert_eq!(action["to"], json!(["const@example.com"]));
            assert_eq!(action["body"], "2");
            action["subject"].clone()
        })
        .collect();
    assert_eq!(subjects, ["software", "firmware"]);
    let runs = server.logs().matches("top level of once.rhai ran").count();
    assert_eq!(runs, 1, "{}", server.logs());
}

#[test]
fn plugins_import_modules_from_scripts_lib_which_are_not_plugins() {
    let files = [
        (
            "alert.rhai",
            r#"
            import "lib/format" as format;
            fn on_notification(n) { email("ops@example.com", format::subject(n), format::BODY); }
            "#,
        ),
        (
            "lib/format.rhai",
            r#"
            export const BODY = "from the module";
            fn subject(n) { `lib says ${n.deviceId} ${helpers::tag()}` }
            import "lib/nested/helpers" as helpers;
            "#,
        ),
        ("lib/nested/helpers.rhai", "fn tag() { \"[nested]\" }"),
        // Not plugins: a module, a sub-folder, a dot-file and an editor backup.
        (
            "lib/not-a-plugin.rhai",
            "fn on_notification(n) { email(\"x@example.com\", \"lib\", \"\"); }",
        ),
        (
            "drafts/draft.rhai",
            "fn on_notification(n) { email(\"x@example.com\", \"draft\", \"\"); }",
        ),
        (
            ".hidden.rhai",
            "fn on_notification(n) { email(\"x@example.com\", \"hidden\", \"\"); }",
        ),
        (
            "alert.rhai~",
            "fn on_notification(n) { email(\"x@example.com\", \"backup\", \"\"); }",
        ),
    ];
    let server = TestServer::start_with_script_files("", &files);
    let detail = run(&server, &fixtures::sw_fail("dev-lib"));
    assert_handled(&detail);
    assert_eq!(
        detail["plugins"],
        json!([{"plugin": "alert.rhai", "error": null, "actions": 1}])
    );
    assert_eq!(
        queued_actions(&detail),
        [
            json!({"kind": "email", "plugin": "alert.rhai", "to": ["ops@example.com"], "cc": [],
                "subject": "lib says dev-lib [nested]", "body": "from the module"})
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Script errors and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_channel_fails_its_plugin_run_but_not_the_other_plugins() {
    let config = "[channels.ops]\nkind = \"log\"\n";
    let plugins = [
        (
            "10-chat.rhai",
            r#"fn on_notification(n) {
                email("ops@example.com", "from 10-chat", "");
                seen("set by a failed run", "1h");
                slack("nowhere", "text");
            }"#,
        ),
        (
            "20-hook.rhai",
            r#"fn on_notification(n) {
                email("ops@example.com", "from 20-hook", "");
                webhook("nowhere-either", #{});
            }"#,
        ),
        (
            "30-good.rhai",
            r#"fn on_notification(n) {
                email("ops@example.com", "from 30-good", "");
                webhook("http://127.0.0.1:9/observe", #{seen: seen("set by a failed run", "1h")});
            }"#,
        ),
    ];
    let server = TestServer::start_with_plugins(config, &plugins);
    let detail = run(&server, &fixtures::sw_fail("dev-channel"));
    assert_eq!(detail["status"], "failed", "{detail:#}");

    let chat = plugin_error(&detail, "10-chat.rhai");
    assert!(chat.starts_with("10-chat.rhai:4:"), "{chat}");
    for part in ["slack", "unknown channel", "\"nowhere\"", "ops"] {
        assert!(chat.contains(part), "{part}: {chat}");
    }
    let hook = plugin_error(&detail, "20-hook.rhai");
    for part in [
        "20-hook.rhai:3:",
        "webhook",
        "unknown channel",
        "\"nowhere-either\"",
    ] {
        assert!(hook.contains(part), "{part}: {hook}");
    }
    assert_eq!(plugin_run(&detail, "10-chat.rhai")["actions"], 0);
    assert_eq!(plugin_run(&detail, "30-good.rhai")["actions"], 2);
    assert_eq!(plugin_run(&detail, "30-good.rhai")["error"], Value::Null);
    // Only the good plugin's actions are queued; the failed run's `seen` left no trace either.
    let actions = queued_actions(&detail);
    assert_eq!(actions.len(), 2, "{actions:#?}");
    assert_eq!(actions[0]["subject"], "from 30-good");
    assert_eq!(actions[1]["payload"], json!({"seen": false}));
    // `events list` shows the first error.
    let listed = server.events(&["--status", "failed"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["error"], json!(chat));
}

#[test]
fn wrong_arguments_name_the_binding_and_its_signatures() {
    let email_signature = "email(to, subject, body) or email(#{to, cc, subject, body, html})";
    let cases = [
        ("email-types", "email(1, 2, 3)", email_signature),
        ("email-one", "email(\"a\")", email_signature),
        ("email-two", "email(\"a\", \"b\")", email_signature),
        (
            "email-four",
            "email(\"a\", \"b\", \"c\", \"d\")",
            email_signature,
        ),
        (
            "email-map",
            "email(#{to: 1, subject: \"s\", body: \"b\"})",
            email_signature,
        ),
        (
            "slack-types",
            "slack(\"ops\", 5)",
            "slack(channel, text) or slack(channel, #{...})",
        ),
        (
            "slack-one",
            "slack(\"ops\")",
            "slack(channel, text) or slack(channel, #{...})",
        ),
        (
            "webhook-types",
            "webhook(1, #{})",
            "webhook(channel_or_url, payload)",
        ),
        ("seen-types", "seen(\"k\", 5)", "seen(key, ttl)"),
        ("seen-duration", "seen(\"k\", \"soon\")", "seen(key, ttl)"),
        ("count-one", "count(\"k\")", "count(key, window)"),
        ("log-types", "log(1, \"x\")", "log(msg) or log(level, msg)"),
    ];
    let plugins: Vec<(String, String)> = cases
        .iter()
        .map(|(name, call, _)| {
            (
                format!("{name}.rhai"),
                format!("fn on_notification(n) {{\n    {call};\n}}\n"),
            )
        })
        .collect();
    let plugins: Vec<(&str, &str)> = plugins
        .iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect();
    let server = TestServer::start_with_plugins("[channels.ops]\nkind = \"log\"\n", &plugins);
    let detail = run(&server, &fixtures::sw_fail("dev-args"));
    assert_eq!(detail["status"], "failed");
    for (name, call, signature) in cases {
        let binding = call.split('(').next().expect("a call");
        let error = plugin_error(&detail, &format!("{name}.rhai"));
        assert!(
            error.starts_with(&format!("{name}.rhai:2:5: {binding}")),
            "{call}: {error}"
        );
        assert!(error.contains(signature), "{call}: {error}");
    }
}

#[test]
fn a_plugin_that_throws_fails_with_its_file_line_and_column() {
    let plugin = r#"fn check(n) {
    if n.deviceId == "dev-throw" {
        throw `refusing ${n.deviceId}`;
    }
}

fn on_notification(n) {
    email("ops@example.com", "queued before the throw", "");
    seen("before the throw", "1h");
    check(n);
}
"#;
    let observer = r#"
        fn on_notification(n) {
            webhook("http://127.0.0.1:9/observe", #{seen: seen("before the throw", "1h")});
        }
    "#;
    let server = TestServer::start_with_plugins(
        "",
        &[("thrower.rhai", plugin), ("zz-observer.rhai", observer)],
    );
    let detail = run(&server, &fixtures::sw_fail("dev-throw"));
    assert_eq!(detail["status"], "failed", "{detail:#}");
    assert_eq!(
        plugin_error(&detail, "thrower.rhai"),
        "thrower.rhai:3:9: refusing dev-throw"
    );
    assert_eq!(detail["error"], "thrower.rhai:3:9: refusing dev-throw");
    assert_eq!(observed(&detail), [json!({"seen": false})]);
    assert_eq!(queued_actions(&detail).len(), 1);

    let fine = run(&server, &fixtures::sw_fail("dev-fine"));
    assert_handled(&fine);
    assert_eq!(queued_actions(&fine).len(), 2);
}

#[test]
fn an_error_raised_in_a_lib_module_is_located_in_a_file_that_has_that_line() {
    let files = [
        (
            "caller.rhai",
            "import \"lib/failing\" as failing;\nfn on_notification(n) {\n    failing::explode(n);\n}\n",
        ),
        (
            "lib/failing.rhai",
            "// A helper that fails.\n\n\n\nfn explode(n) {\n        throw `cannot handle ${n.deviceId}`;\n}\n",
        ),
    ];
    let server = TestServer::start_with_script_files("", &files);
    let detail = run(&server, &fixtures::sw_fail("dev-lib-error"));
    assert_eq!(detail["status"], "failed", "{detail:#}");
    let error = plugin_error(&detail, "caller.rhai");
    assert!(error.ends_with(": cannot handle dev-lib-error"), "{error}");
    // Either the call in the plugin (line 3 of its 4) or the throw in the module (6:9) is a
    // place an operator can find; line 6 of caller.rhai does not exist.
    let at_the_call = error.starts_with("caller.rhai:3:5:");
    let in_the_module = error.contains("lib/failing.rhai:6:9");
    assert!(at_the_call || in_the_module, "{error}");
}

/// Starts a server whose `loop.rhai` never ends and whose `good.rhai` queues one email, posts
/// events while the loop runs, and checks that each is answered 200, fails with `expected`
/// and keeps the good plugin's action.
fn assert_runaway_plugins_are_stopped(config: &str, expected: &str) {
    let plugins = [
        ("10-loop.rhai", "fn on_notification(n) { loop { } }"),
        (
            "20-good.rhai",
            "fn on_notification(n) { email(\"ops@example.com\", n.deviceId, \"\"); }",
        ),
    ];
    let server = TestServer::start_with_plugins(config, &plugins);
    let ids: Vec<String> = (0..4)
        .map(|n| server.post_accepted(&fixtures::sw_fail(&format!("dev-loop-{n}"))))
        .collect();
    assert_eq!(server.get("/healthz").status, 200);
    server.wait_until_processed();
    for (n, id) in ids.iter().enumerate() {
        let detail = server.event_detail(id);
        assert_eq!(detail["status"], "failed", "{detail:#}");
        let error = plugin_error(&detail, "10-loop.rhai");
        assert!(error.starts_with("10-loop.rhai:"), "{error}");
        assert!(error.ends_with(expected), "{error}");
        let actions = queued_actions(&detail);
        assert_eq!(actions.len(), 1, "{actions:#?}");
        assert_eq!(actions[0]["subject"], format!("dev-loop-{n}"));
    }
    assert_eq!(
        metric(
            &server.metrics(),
            "notirouter_script_runs_total{plugin=\"10-loop.rhai\",outcome=\"error\"}"
        ),
        Some(4.0)
    );
}

#[test]
fn an_endless_loop_is_stopped_by_max_operations() {
    let config = "[scripts]\nmax_operations = 20000\nmax_run_time = \"10s\"\n";
    assert_runaway_plugins_are_stopped(config, "max_operations exceeded");
}

#[test]
fn an_endless_loop_is_stopped_by_max_run_time() {
    let config = "[scripts]\nmax_operations = 1000000000000\nmax_run_time = \"100ms\"\n";
    assert_runaway_plugins_are_stopped(config, "max_run_time (100ms) exceeded");
}

#[test]
fn meta_says_where_the_notification_came_from() {
    let plugin = r#"
        fn on_notification(n, meta) {
            webhook("http://127.0.0.1:9/observe", #{type: n.notifyType, meta: meta});
        }
    "#;
    let server = TestServer::start_with_plugins("", &[("meta.rhai", plugin)]);

    let id = server.post_accepted(&fixtures::sw_fail("dev-meta"));
    let detail = server.wait_for_outcome(&id);
    let seen = &observed(&detail)[0];
    assert_eq!(seen["type"], "swUpgradeResultNotify");
    let meta = &seen["meta"];
    assert_eq!(
        common::keys(meta),
        [
            "id",
            "path",
            "problems",
            "received_at",
            "remote_addr",
            "source"
        ]
    );
    assert_eq!(meta["id"], json!(id));
    assert_eq!(meta["path"], RECEIVER);
    assert_eq!(meta["remote_addr"], "127.0.0.1");
    assert_eq!(meta["problems"], json!([]));
    assert_eq!(meta["source"], "http");
    let received_at = meta["received_at"].as_str().expect("a string");
    assert!(
        received_at.ends_with('Z') && humantime::parse_rfc3339(received_at).is_ok(),
        "not an RFC 3339 UTC time: {received_at}"
    );
    assert_eq!(json!(received_at), detail["received_at"]);

    // The command-status push: recognised by shape, on the /cmd path.
    let reply = server.post_json(
        RECEIVER_CMD,
        &fixtures::command_status("dev-cmd").to_string(),
    );
    let command = server.wait_for_outcome(&reply.accepted().0);
    let seen = &observed(&command)[0];
    assert_eq!(seen["type"], "NBCommandStateChanged");
    assert_eq!(seen["meta"]["path"], RECEIVER_CMD);

    // Lenient mode: the answer's warnings are the script's problems.
    let body = without(fixtures::sw_fail("dev-lenient"), "appId");
    let (id, warnings) = server.post_json(RECEIVER, &body.to_string()).accepted();
    assert_ne!(warnings, json!([]));
    let lenient = server.wait_for_outcome(&id);
    assert_eq!(observed(&lenient)[0]["meta"]["problems"], warnings);

    // A pushed body claiming to be an internal notification is still from "http".
    let claim = json!({"notifyType": "actionFailed", "eventId": "x", "error": "e", "attempts": 1});
    let claimed = run(&server, &claim);
    assert_eq!(observed(&claimed)[0]["meta"]["source"], "http");
}

// ---------------------------------------------------------------------------------------------
// Sandbox
// ---------------------------------------------------------------------------------------------

/// A module outside scripts.dir that a plugin must not be able to import.
const OUTSIDE_MODULE: &str = "fn secret() { \"leaked\" }";

#[test]
fn plugins_cannot_read_files_or_import_from_outside_scripts_dir_at_run_time() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("outside.rhai"), OUTSIDE_MODULE).expect("written");
    let absolute = dir.path().join("outside");
    let absolute_import = format!(
        "fn on_notification(n) {{ import \"{}\" as o; email(\"x@example.com\", o::secret(), \"\"); }}",
        absolute.display()
    );
    let plugins = [
        (
            "open.rhai",
            "fn on_notification(n) { email(\"x@example.com\", open_file(\"/etc/hostname\"), \"\"); }",
        ),
        (
            "read.rhai",
            "fn on_notification(n) { email(\"x@example.com\", read(\"/etc/hostname\"), \"\"); }",
        ),
        (
            "relative.rhai",
            "fn on_notification(n) { import \"../outside\" as o; email(\"x@example.com\", o::secret(), \"\"); }",
        ),
        (
            "climbing.rhai",
            "fn on_notification(n) { import \"lib/../../outside\" as o; email(\"x@example.com\", o::secret(), \"\"); }",
        ),
        ("absolute.rhai", absolute_import.as_str()),
    ];
    let scripts = dir.path().join("scripts");
    write_script_files(&scripts, &plugins);
    let config = format!("[scripts]\ndir = {:?}\n", scripts.display().to_string());
    let server = TestServer::start(&config);
    let detail = run(&server, &fixtures::sw_fail("dev-sandbox"));
    assert_eq!(detail["status"], "failed", "{detail:#}");
    assert_eq!(queued_actions(&detail), Vec::<Value>::new());
    assert!(plugin_error(&detail, "open.rhai").contains("unknown function open_file"));
    assert!(plugin_error(&detail, "read.rhai").contains("unknown function read"));
    for name in ["relative.rhai", "climbing.rhai", "absolute.rhai"] {
        let error = plugin_error(&detail, name);
        assert!(
            error.contains("modules can only be imported from inside scripts.dir"),
            "{name}: {error}"
        );
    }
}

/// A folder with a config (`[scripts] dir` left at its default, `scripts`) and plugins, where
/// the CLI runs as an operator runs it.
struct Folder {
    dir: TempDir,
}

impl Folder {
    fn new(config: &str, files: &[(&str, &str)]) -> Folder {
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(dir.path().join("notirouter.toml"), config).expect("written");
        std::fs::create_dir_all(dir.path().join("scripts")).expect("created");
        write_script_files(&dir.path().join("scripts"), files);
        Folder { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("created");
        std::fs::write(&path, text).expect("written");
        path
    }

    fn cli(&self, args: &[&str]) -> Output {
        notirouter()
            .current_dir(self.path())
            .args(["--config", "notirouter.toml"])
            .args(args)
            .output()
            .expect("the notirouter binary runs")
    }

    /// Every path below the folder, relative to it.
    fn contents(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)
                .expect("readable")
                .map(Result::unwrap)
            {
                let path = entry.path();
                let relative = path.strip_prefix(self.path()).expect("below");
                found.insert(relative.display().to_string());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        found
    }
}

#[test]
fn eval_is_disabled_and_imports_from_outside_scripts_dir_are_refused_at_load() {
    let cases = [
        (
            "fn on_notification(n) { eval(\"email(1, 2, 3)\"); }",
            "'eval' is disabled",
        ),
        (
            "import \"../outside\" as o;\nfn on_notification(n) { }",
            "modules can only be imported from inside scripts.dir",
        ),
        (
            "import \"ABSOLUTE\" as o;\nfn on_notification(n) { }",
            "modules can only be imported from inside scripts.dir",
        ),
    ];
    for (plugin, expected) in cases {
        let folder = Folder::new("", &[]);
        folder.write("outside.rhai", OUTSIDE_MODULE);
        let absolute = folder.path().join("outside").display().to_string();
        folder.write("scripts/p.rhai", &plugin.replace("ABSOLUTE", &absolute));
        let output = folder.cli(&["check"]);
        assert_exit(&output, 1);
        let text = stdout(&output);
        assert!(text.starts_with("p.rhai:"), "{plugin}: {text}");
        assert!(text.contains(expected), "{plugin}: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// check, test and test --cases
// ---------------------------------------------------------------------------------------------

#[test]
fn check_prints_file_line_col_for_each_broken_plugin() {
    let folder = Folder::new(
        "",
        &[
            ("good.rhai", "fn on_notification(n) { }"),
            ("broken.rhai", "fn on_notification(n) {\n    let x = ;\n}\n"),
            ("no-hook.rhai", "fn handle(n) { }\n"),
        ],
    );
    let output = folder.cli(&["check"]);
    assert_exit(&output, 1);
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("broken.rhai:2:13: "), "{lines:?}");
    assert!(lines[1].starts_with("no-hook.rhai:1:1: "), "{lines:?}");
    assert!(lines[1].contains("on_notification"), "{lines:?}");

    std::fs::remove_file(folder.path().join("scripts/broken.rhai")).expect("removed");
    std::fs::remove_file(folder.path().join("scripts/no-hook.rhai")).expect("removed");
    assert_exit(&folder.cli(&["check"]), 0);
}

#[test]
fn check_locates_errors_raised_by_a_plugin_top_level() {
    // (plugin, where the error is, what it says)
    let cases = [
        (
            "const LIMIT = 3;\n\nthrow \"the top level refuses\";\nfn on_notification(n) { }\n",
            "top.rhai:3:1: ",
            "the top level refuses",
        ),
        (
            "// Helpers.\nimport \"lib/missing\" as missing;\nfn on_notification(n) { }\n",
            "top.rhai:2:",
            "lib/missing",
        ),
    ];
    for (plugin, place, message) in cases {
        let folder = Folder::new("", &[("top.rhai", plugin)]);
        let output = folder.cli(&["check"]);
        assert_exit(&output, 1);
        let text = stdout(&output);
        assert!(text.starts_with(place), "expected {place}...: {text}");
        assert!(text.contains(message), "{text}");
    }
}

const TEST_CONFIG: &str = "[channels.ops]\nkind = \"log\"\n";

#[test]
fn test_prints_each_action_as_a_json_line_and_writes_nothing() {
    let plugin = r#"
        fn on_notification(n) {
            email("ops@example.com", `about ${n.deviceId}`, "b");
            if upgrade_failed(n) { slack("ops", `FAIL ${n.deviceId}`); }
        }
    "#;
    let folder = Folder::new(TEST_CONFIG, &[("p.rhai", plugin)]);
    folder.write("fail.json", &fixtures::sw_fail("dev-1").to_string());
    folder.write("ok.json", &fixtures::sw_success("dev-2").to_string());
    let before = folder.contents();

    let output = folder.cli(&["test", "fail.json", "ok.json"]);
    assert_exit(&output, 0);
    assert_eq!(
        json_lines(&output),
        [
            json!({"kind": "email", "plugin": "p.rhai", "to": ["ops@example.com"], "cc": [],
                   "subject": "about dev-1", "body": "b", "event": "fail.json"}),
            json!({"kind": "chat", "plugin": "p.rhai", "channel": "ops", "text": "FAIL dev-1",
                   "event": "fail.json"}),
            json!({"kind": "email", "plugin": "p.rhai", "to": ["ops@example.com"], "cc": [],
                   "subject": "about dev-2", "body": "b", "event": "ok.json"}),
        ]
    );
    assert_eq!(folder.contents(), before, "`test` must write nothing");
    assert!(!folder.path().join("data").exists());
}

#[test]
fn test_exits_1_on_a_script_error() {
    let plugin = "fn on_notification(n) {\n    email(\"ops@example.com\", \"s\", \"b\");\n    throw \"no\";\n}\n";
    let folder = Folder::new(TEST_CONFIG, &[("p.rhai", plugin)]);
    folder.write("e.json", &fixtures::sw_fail("dev-1").to_string());
    let output = folder.cli(&["test", "e.json"]);
    assert_exit(&output, 1);
    assert_eq!(stdout(&output), "", "a failed run's actions are discarded");
    assert!(
        stderr(&output).contains("e.json: p.rhai:3:5: no"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn test_cannot_run_on_a_missing_event_file() {
    let folder = Folder::new(TEST_CONFIG, &[("p.rhai", "fn on_notification(n) { }")]);
    let output = folder.cli(&["test", "absent.json"]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("absent.json"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn test_carries_state_across_the_event_files_of_one_run_only() {
    let plugin = r#"
        fn on_notification(n) {
            let number = count("failures", "1h");
            if !seen("storm", "1h") { slack("ops", "first failure"); }
            email("ops@example.com", `failure ${number}`, "");
        }
    "#;
    let folder = Folder::new(TEST_CONFIG, &[("storm.rhai", plugin)]);
    for (file, device) in [
        ("a.json", "dev-a"),
        ("b.json", "dev-b"),
        ("c.json", "dev-c"),
    ] {
        folder.write(file, &fixtures::sw_fail(device).to_string());
    }
    let summary = |output: &Output| -> Vec<(String, String)> {
        json_lines(output)
            .iter()
            .map(|line| {
                let what = line["subject"].as_str().or(line["text"].as_str());
                (
                    line["event"].to_string(),
                    what.expect("a subject or text").to_owned(),
                )
            })
            .collect()
    };
    let output = folder.cli(&["test", "a.json", "b.json", "c.json"]);
    assert_exit(&output, 0);
    assert_eq!(
        summary(&output),
        [
            ("\"a.json\"".to_owned(), "first failure".to_owned()),
            ("\"a.json\"".to_owned(), "failure 1".to_owned()),
            ("\"b.json\"".to_owned(), "failure 2".to_owned()),
            ("\"c.json\"".to_owned(), "failure 3".to_owned()),
        ]
    );
    // Each invocation starts from an empty store.
    let again = folder.cli(&["test", "c.json"]);
    assert_exit(&again, 0);
    assert_eq!(
        summary(&again),
        [
            ("\"c.json\"".to_owned(), "first failure".to_owned()),
            ("\"c.json\"".to_owned(), "failure 1".to_owned()),
        ]
    );
}

#[test]
fn test_ends_the_digests_its_events_opened_after_the_last_event() {
    let plugin = r#"
        fn on_notification(n) {
            let c = campaign(n);
            digest(n.targetVersion, "1h", #{device: n.deviceId, failed: c.failed});
        }
        fn on_digest(key, items, total) {
            slack("ops", `${key}: ${total}, last saw ${items[total - 1].failed} failed`);
        }
    "#;
    let folder = Folder::new(TEST_CONFIG, &[("d.rhai", plugin)]);
    for (file, device) in [("a.json", "dev-a"), ("b.json", "dev-b")] {
        folder.write(file, &fixtures::sw_fail(device).to_string());
    }
    let output = folder.cli(&["test", "a.json", "b.json"]);
    assert_exit(&output, 0);
    let lines = json_lines(&output);
    let texts: Vec<(&Value, &Value)> = lines
        .iter()
        .map(|line| (&line["event"], &line["text"]))
        .collect();
    assert_eq!(
        texts,
        [(
            &json!("digest d.rhai/1.5"),
            &json!("1.5: 2, last saw 2 failed")
        )],
        "campaign(n) counts each event with those before it"
    );
}

#[test]
fn digest_and_campaign_with_wrong_arguments_name_their_signatures() {
    for (call, expected) in [
        (
            r#"digest("k", "soon", "x")"#,
            "digest: \"soon\" is not a duration",
        ),
        (
            r#"digest(1, "1h", "x")"#,
            "expected digest(key, window, item)",
        ),
        (
            r#"campaign(#{notifyType: "deviceDataChanged"})"#,
            "campaign: the notification is not a software or firmware upgrade result",
        ),
    ] {
        let plugin = format!("fn on_notification(n) {{ {call}; }}");
        let folder = Folder::new(TEST_CONFIG, &[("p.rhai", &plugin)]);
        folder.write("e.json", &fixtures::sw_fail("dev-a").to_string());
        let output = folder.cli(&["test", "e.json"]);
        assert_exit(&output, 1);
        assert!(
            stderr(&output).contains(expected),
            "{call}: {}",
            stderr(&output)
        );
    }
}

/// Plugins for the case tests, with the platform enabled (two retries per version).
const CASE_PLUGINS: [(&str, &str); 4] = [
    (
        "10-alert.rhai",
        r#"fn on_notification(n) {
            if upgrade_failed(n) {
                email("ops@example.com", `FAIL ${n.deviceId}`, "details");
                slack("ops", `FAIL ${n.deviceId}`);
            }
        }"#,
    ),
    (
        "20-retry.rhai",
        "fn on_notification(n) { if upgrade_failed(n) { retry_upgrade(n); } }",
    ),
    (
        "30-state.rhai",
        r#"fn on_notification(n) {
            if n.notifyType != "swUpgradeStateChangeNotify" { return; }
            if !seen(n.deviceId, "1h") {
                webhook("https://hooks.example.com/first", #{device: n.deviceId});
            }
            let changes = count("state changes", "1h");
            if changes > 5 { slack("ops", `state change ${changes}`); }
        }"#,
    ),
    (
        "40-bomb.rhai",
        "fn on_notification(n) { if n.deviceId == \"bomb\" { throw \"boom\"; } }",
    ),
];

fn case(name: &str, event: Value, extra: Value) -> String {
    let mut case = json!({"name": name, "event": event, "expect": []});
    for (key, value) in extra.as_object().expect("an object") {
        case[key] = value.clone();
    }
    case.to_string()
}

#[test]
fn test_cases_match_ordered_partial_actions_with_state_presets_and_expected_errors() {
    let config = format!("{TEST_CONFIG}{PLATFORM_ENABLED}");
    let folder = Folder::new(&config, &CASE_PLUGINS);
    let fail = fixtures::sw_fail("dev-1");
    let state = fixtures::sw_state("dev-2");
    let passing = [
        (
            "a-fail-alerts-and-retries",
            fail.clone(),
            json!({"expect": [
                {"kind": "email", "to": ["ops@example.com"], "subject": "FAIL dev-1"},
                {"kind": "chat", "channel": "ops"},
                {"kind": "platform", "device_id": "dev-1", "file_id": "file-1.5"},
            ]}),
        ),
        (
            "b-budget-used-up",
            fail.clone(),
            json!({"state": {"upgrade_retries": {"dev-1/1.5": 2}},
                   "expect": [{"kind": "email"}, {"kind": "chat"}]}),
        ),
        (
            "c-budget-left",
            fail.clone(),
            json!({"state": {"upgrade_retries": {"dev-1/1.5": 1}},
                   "expect": [{"kind": "email"}, {"kind": "chat"}, {"kind": "platform"}]}),
        ),
        (
            "d-seen-recently",
            state.clone(),
            json!({"state": {"seen": {"dev-2": "5m"}}, "expect": []}),
        ),
        (
            "e-seen-long-ago",
            state.clone(),
            json!({"state": {"seen": {"dev-2": "2h"}},
                   "expect": [{"kind": "webhook", "payload": {"device": "dev-2"}}]}),
        ),
        (
            "f-count-preset",
            state.clone(),
            json!({"state": {"seen": {"dev-2": "1m"}, "count": {"state changes": 5}},
                   "expect": [{"kind": "chat", "text": "state change 6"}]}),
        ),
        (
            "g-expected-error",
            fixtures::sw_state("bomb"),
            json!({"expect_error": true, "expect": [{"kind": "webhook"}]}),
        ),
    ];
    let failing = [
        (
            "h-wrong-order",
            fail.clone(),
            json!({"expect": [{"kind": "chat"}, {"kind": "email"}, {"kind": "platform"}]}),
            "action 0: `kind` expected \"chat\", got \"email\"",
        ),
        (
            "i-not-deep-equal",
            fail.clone(),
            json!({"expect": [{"to": "ops@example.com"}, {}, {}]}),
            "action 0: `to` expected \"ops@example.com\"",
        ),
        (
            "j-too-few",
            fail.clone(),
            json!({"expect": [{"kind": "email"}]}),
            "expected 1 action(s), got 3",
        ),
        (
            "k-unexpected-error",
            fixtures::sw_state("bomb"),
            json!({"expect": [{"kind": "webhook"}]}),
            "script error: 40-bomb.rhai:1:",
        ),
        (
            "l-missing-error",
            state.clone(),
            json!({"expect_error": true, "expect": [{"kind": "webhook"}]}),
            "expected a script error",
        ),
    ];
    for (name, event, extra) in &passing {
        folder.write(
            &format!("good/{name}.json"),
            &case(name, event.clone(), extra.clone()),
        );
        folder.write(
            &format!("all/{name}.json"),
            &case(name, event.clone(), extra.clone()),
        );
    }
    for (name, event, extra, _) in &failing {
        folder.write(
            &format!("all/{name}.json"),
            &case(name, event.clone(), extra.clone()),
        );
    }

    let good = folder.cli(&["test", "--cases", "good"]);
    assert_exit(&good, 0);
    let text = stdout(&good);
    for (name, _, _) in &passing {
        assert!(text.contains(&format!("PASS {name}")), "{name}: {text}");
    }
    assert!(text.contains("cases: 7 passed, 0 failed"), "{text}");

    let all = folder.cli(&["test", "--cases", "all"]);
    assert_exit(&all, 1);
    let text = stdout(&all);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 13, "{text}");
    for (name, _, _) in &passing {
        assert!(text.contains(&format!("PASS {name}")), "{name}: {text}");
    }
    for (name, _, _, reason) in &failing {
        let line = lines
            .iter()
            .find(|line| line.starts_with("FAIL ") && line.contains(&format!("{name}.json")))
            .unwrap_or_else(|| panic!("no FAIL line for {name}: {text}"));
        assert!(line.contains(reason), "{name}: {line}");
    }
    assert_eq!(lines[12], "cases: 7 passed, 5 failed");
}

// ---------------------------------------------------------------------------------------------
// events replay
// ---------------------------------------------------------------------------------------------

#[test]
fn replay_dry_run_prints_and_replay_queues_with_replayed_from_and_seen_applies() {
    let config = "[channels.ops]\nkind = \"log\"\n";
    let plugins = [
        (
            "10-always.rhai",
            "fn on_notification(n) { email(\"ops@example.com\", `about ${n.deviceId}`, `run ${count(\"runs\", \"1h\")}`); }",
        ),
        (
            "20-once.rhai",
            "fn on_notification(n) { if !seen(\"once\", \"1h\") { slack(\"ops\", \"first\"); } }",
        ),
    ];
    let server = TestServer::start_with_plugins(config, &plugins);
    let id = server.post_accepted(&fixtures::sw_fail("dev-replay"));
    let original = server.wait_for_outcome(&id);
    assert_handled(&original);
    assert_eq!(queued_actions(&original).len(), 2);

    assert_eq!(queued_actions(&original)[0]["body"], "run 1");

    // Twice: a dry run writes no state either, so both print the same.
    for _ in 0..2 {
        let dry = server.cli(&["events", "replay", &id, "--dry-run"]);
        assert_exit(&dry, 0);
        assert_eq!(
            json_lines(&dry),
            [
                json!({"kind": "email", "plugin": "10-always.rhai", "to": ["ops@example.com"],
                    "cc": [], "subject": "about dev-replay", "body": "run 2", "event": id})
            ]
        );
    }
    let action_ids = |detail: &Value| -> Vec<Value> {
        detail["actions"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|record| record["id"].clone())
            .collect()
    };
    let after_dry = server.event_detail(&id);
    assert_eq!(
        action_ids(&after_dry),
        action_ids(&original),
        "a dry run queues nothing"
    );

    let replay = server.cli(&["events", "replay", &id]);
    assert_exit(&replay, 0);
    assert_eq!(json_lines(&replay).len(), 1);
    let replayed = server.event_detail(&id);
    let records = replayed["actions"].as_array().expect("an array");
    assert_eq!(records.len(), 3, "{replayed:#}");
    let new: Vec<&Value> = records
        .iter()
        .filter(|record| record["replayed_from"] == json!(id))
        .collect();
    assert_eq!(new.len(), 1, "{replayed:#}");
    assert_eq!(new[0]["action"]["plugin"], "10-always.rhai");
    assert_eq!(new[0]["action"]["subject"], "about dev-replay");
    assert_eq!(new[0]["action"]["body"], "run 2");
    assert!(
        !action_ids(&original).contains(&new[0]["id"]),
        "a fresh action id"
    );
    assert_eq!(replayed["status"], "handled");

    // `seen` was recorded by the replay's own run too: a second replay adds only the email.
    let again = server.cli(&["events", "replay", &id]);
    assert_exit(&again, 0);
    let chats = queued_actions(&server.event_detail(&id))
        .into_iter()
        .filter(|action| action["kind"] == "chat")
        .count();
    assert_eq!(chats, 1);
}

#[test]
fn replay_takes_retry_budget_like_a_first_run() {
    let server = TestServer::start_with_plugins(PLATFORM_ENABLED, &[("retry.rhai", RETRY_PLUGIN)]);
    let id = server.post_accepted(&fixtures::sw_fail("dev-replay-budget"));
    assert_eq!(
        observed(&server.wait_for_outcome(&id)),
        [json!({"queued": true, "used": 1})]
    );
    let replay = |expected: Value| {
        let output = server.cli(&["events", "replay", &id]);
        assert_exit(&output, 0);
        let lines = json_lines(&output);
        let platform = lines
            .iter()
            .filter(|line| line["kind"] == "platform")
            .count();
        let report: Vec<&Value> = lines.iter().map(|line| &line["payload"]).collect();
        assert_eq!(report.last(), Some(&&expected), "{lines:#?}");
        platform
    };
    assert_eq!(replay(json!({"queued": true, "used": 2})), 1);
    assert_eq!(replay(json!({"queued": false, "used": 2})), 0);
    let platform_actions = queued_actions(&server.event_detail(&id))
        .iter()
        .filter(|action| action["kind"] == "platform")
        .count();
    assert_eq!(platform_actions, 2);
}

// ---------------------------------------------------------------------------------------------
// Crash between "stored" and "committed"
// ---------------------------------------------------------------------------------------------

#[test]
fn events_in_flight_at_a_kill_9_are_handled_exactly_once_after_restart() {
    assert_kill_9_in_flight_leaves_each_event_handled_once(1);
}

#[test]
fn with_two_workers_events_in_flight_at_a_kill_9_are_handled_exactly_once() {
    assert_kill_9_in_flight_leaves_each_event_handled_once(2);
}

/// Posts events to a plugin that takes a few milliseconds per event, kills the server with
/// SIGKILL once some are handled and others are not, restarts it and checks that every event
/// ends up handled with exactly its one action.
fn assert_kill_9_in_flight_leaves_each_event_handled_once(workers: usize) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 15;
    // Each run takes 20 ms, so the 60 events keep a worker busy about ten times longer than
    // posting them takes, and the kill lands while some are still pending.
    let plugin = r#"
        fn on_notification(n) {
            let started = timestamp();
            while started.elapsed < 0.020 { }
            email("ops@example.com", n.deviceId, "");
        }
    "#;
    let config = format!(
        "[scripts]\nworkers = {workers}\nmax_operations = 1000000000\nmax_run_time = \"5s\"\n"
    );
    let mut server = TestServer::start_with_plugins(&config, &[("slow.rhai", plugin)]);
    let accepted: Vec<String> = in_parallel(THREADS, PER_THREAD, |thread, n| {
        server.post_accepted(&fixtures::sw_fail(&format!("dev-{thread}-{n}")))
    });
    let started = wait_until(SETTLE_TIMEOUT, || {
        !server.events(&["--status", "handled"]).is_empty()
    });
    assert!(started, "no event was handled:\n{}", server.logs());
    server.kill9();

    let handled_before = server.events(&["--status", "handled"]).len();
    let pending_before = server.events(&["--status", "pending"]).len();
    assert!(
        handled_before > 0 && pending_before > 0,
        "the kill should land mid-way: {handled_before} handled, {pending_before} pending"
    );

    let server = server.restart();
    server.wait_until_processed();
    let events = server.events(&[]);
    assert_eq!(events.len(), THREADS * PER_THREAD);
    let listed: BTreeSet<&str> = events
        .iter()
        .map(|e| e["id"].as_str().expect("an id"))
        .collect();
    let expected: BTreeSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(listed, expected);
    let wrong: Vec<&Value> = events
        .iter()
        .filter(|event| event["status"] != "handled" || event["actions"] != 1)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} events handled more or less than once, e.g. {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    // Spot-check that each action belongs to its own event.
    for id in accepted.iter().step_by(10) {
        let detail = server.event_detail(id);
        assert_eq!(queued_actions(&detail)[0]["subject"], detail["device_id"]);
    }
}
