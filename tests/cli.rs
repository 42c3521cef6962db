//! The command line against SPEC.md: `check` and its exit codes, environment overrides, and
//! `events list` / `events show` reading the store while a server runs.

mod common;

use std::path::Path;

use common::fixtures;
use common::{
    RECEIVER, TestServer, all_output, assert_exit, config_file, json_lines, keys, notirouter,
    run_cli, run_cli_with_env, stderr, stdout,
};
use serde_json::{Value, json};

/// A config that sets every key this version knows; `SCRIPTS` stands for the shipped scripts
/// folder (see [`full_config`]).
const FULL_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
paths = ["/v1.0.0/messageReceiver", "/cb/3f9a/v1.0.0/messageReceiver"]
max_body_bytes = 65536
validation = "strict"
accept_timeout = "10s"

[log]
format = "json"

[store]
path = "data/notirouter.db"
dedup_window = "1h"
retention = "30d"
rejected_max_count = 10000
rejected_max_bytes = 65536

[scripts]
dir = "SCRIPTS"
hot_reload = false
workers = 2
max_operations = 100000
max_run_time = "50ms"

[vars]
ops_email = "ops@example.com"
chat_channel = "ops"

[channels.ops]
kind = "log"
dir = "data/chat"

[channels.hook]
kind = "webhook"
url = "https://hooks.example.com/notirouter"
secret = "whsec_c2VjcmV0"
headers = { "X-Team" = "fleet" }

[platform]
enabled = false
max_upgrade_retries = 3
retry_budget_window = "7d"

[platform.packages]
"1.5" = "a1b2c3"
"#;

/// [`FULL_CONFIG`] with the shipped scripts, found wherever the command runs.
fn full_config() -> String {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    FULL_CONFIG.replace("SCRIPTS", &scripts.display().to_string())
}

/// Runs `check` on a config of `text` and returns its output.
fn check(text: &str) -> (String, std::process::Output) {
    let (_dir, path) = config_file(text);
    let output = run_cli(&path, &["check"]);
    (path.display().to_string(), output)
}

#[test]
fn check_accepts_a_valid_config_and_the_shipped_default() {
    let (_, output) = check(&full_config());
    assert_exit(&output, 0);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/notirouter.toml");
    assert_exit(&run_cli(&shipped, &["check"]), 0);
}

#[test]
fn config_may_come_after_the_subcommand() {
    let (_dir, path) = config_file(&full_config());
    let output = notirouter()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("the notirouter binary runs");
    assert_exit(&output, 0);
}

#[test]
fn check_names_an_unknown_key_and_its_position() {
    let (path, output) = check("[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 3\n");
    assert_exit(&output, 1);
    let text = all_output(&output);
    assert!(text.contains(&format!("{path}:3:1")), "{text}");
    assert!(text.contains("lisen"), "{text}");
}

#[test]
fn check_says_what_an_invalid_value_should_be() {
    let cases = [
        (
            "[server]\nvalidation = \"loose\"\n",
            ":2:14",
            "expected `lenient` or `strict`",
        ),
        (
            "[server]\naccept_timeout = \"5x\"\n",
            ":2:18",
            "server.accept_timeout: \"5x\" is not a duration",
        ),
        (
            "[server]\nlisten = \"nope\"\n",
            "server.listen",
            "\"nope\" is not an address and port",
        ),
        ("[store]\nrejected_max_count = -1\n", ":2:22", "-1"),
        (
            "[store]\nlease = \"5s\"\n",
            "store.lease",
            "set store.lease to at least 15s or lower delivery.timeout",
        ),
    ];
    for (text, place, expected) in cases {
        let (_, output) = check(text);
        assert_exit(&output, 1);
        let message = all_output(&output);
        assert!(message.contains(place), "{text}: {message}");
        assert!(message.contains(expected), "{text}: {message}");
    }
}

#[test]
fn check_cannot_run_on_a_missing_file() {
    let dir = tempfile::tempdir().expect("a temporary folder can be created");
    let missing = dir.path().join("absent.toml");
    let output = run_cli(&missing, &["check"]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains(&missing.display().to_string()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_names_an_environment_variable_with_an_invalid_value() {
    let (_dir, path) = config_file(&full_config());
    let output = run_cli_with_env(&path, &["check"], &[("NOTIROUTER__SERVER__LISTEN", "nope")]);
    assert_exit(&output, 1);
    // The file is valid: the operator must be told that the variable is what is wrong.
    let message = all_output(&output);
    assert!(message.contains("NOTIROUTER__SERVER__LISTEN"), "{message}");
}

#[test]
fn check_names_an_unknown_environment_variable() {
    let (_dir, path) = config_file(&full_config());
    let output = run_cli_with_env(&path, &["check"], &[("NOTIROUTER__SERVER__LISEN", "1")]);
    assert_exit(&output, 1);
    let message = all_output(&output);
    assert!(message.contains("NOTIROUTER__SERVER__LISEN"), "{message}");
}

#[test]
fn notirouter_config_variable_picks_the_config_file() {
    // Run where `config/notirouter.toml` does not exist, so only the variable can lead to a file.
    let elsewhere = tempfile::tempdir().expect("a temporary folder can be created");
    let check_with = |config: &Path| {
        notirouter()
            .arg("check")
            .current_dir(elsewhere.path())
            .env("NOTIROUTER_CONFIG", config)
            .output()
            .expect("the notirouter binary runs")
    };
    let (_valid_dir, valid) = config_file(&full_config());
    let output = check_with(&valid);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains(&valid.display().to_string()));

    let (_invalid_dir, invalid) = config_file("[server]\nlisen = 1\n");
    let output = check_with(&invalid);
    assert_exit(&output, 1);
    let message = all_output(&output);
    assert!(
        message.contains(&format!("{}:2:1", invalid.display())),
        "{message}"
    );
}

#[test]
fn environment_overrides_apply_to_serve() {
    let server = TestServer::start_with_env(
        "[server]\npaths = [\"/from-file\"]\n",
        &[("NOTIROUTER__SERVER__PATHS", "[\"/other\"]")],
    );
    let body = fixtures::sw_fail("env").to_string();
    server.post_json("/other", &body).accepted_clean();
    assert_eq!(server.post_json("/from-file", &body).status, 404);
}

/// A plugin that fails on firmware results, so that events end both `handled` and `failed`.
const FAIL_ON_FIRMWARE: (&str, &str) = (
    "fail-on-firmware.rhai",
    r#"fn on_notification(n) {
    if n.notifyType == "fwUpgradeResultNotify" { throw "firmware is not handled here"; }
}"#,
);

/// A running server holding three processed events, and their ids oldest first: software
/// FAIL of dev-a, firmware result of dev-b (failed by its plugin), software state of dev-a.
fn server_with_three_events() -> (TestServer, [String; 3]) {
    let server = TestServer::start_with_plugins("", &[FAIL_ON_FIRMWARE]);
    let ids = [
        fixtures::sw_fail("dev-a"),
        fixtures::fw_result("dev-b"),
        fixtures::sw_state("dev-a"),
    ]
    .map(|body| {
        server
            .post_json(RECEIVER, &body.to_string())
            .accepted_clean()
    });
    server.wait_until_processed();
    (server, ids)
}

fn ids_of(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["id"].as_str().expect("ids are strings"))
        .collect()
}

// Every events test below reads the store while its server is running.

#[test]
fn events_list_filters_and_lists_newest_first() {
    let (server, [sw_fail, fw_result, sw_state]) = server_with_three_events();
    let cases: [(&[&str], Vec<&str>); 8] = [
        (&[], vec![&sw_state, &fw_result, &sw_fail]),
        (&["--type", "swUpgradeResultNotify"], vec![&sw_fail]),
        (&["--device", "dev-a"], vec![&sw_state, &sw_fail]),
        (
            &["--device", "dev-a", "--type", "swUpgradeStateChangeNotify"],
            vec![&sw_state],
        ),
        (&["--limit", "2"], vec![&sw_state, &fw_result]),
        (&["--status", "pending"], vec![]),
        (&["--status", "handled"], vec![&sw_state, &sw_fail]),
        (&["--status", "failed"], vec![&fw_result]),
    ];
    for (filters, expected) in cases {
        let mut args = vec!["events", "list", "--json"];
        args.extend_from_slice(filters);
        let output = server.cli(&args);
        assert_exit(&output, 0);
        assert_eq!(ids_of(&json_lines(&output)), expected, "{filters:?}");
    }
}

#[test]
fn events_list_json_has_exactly_the_documented_keys() {
    let server = TestServer::start("");
    let body = fixtures::without(fixtures::sw_fail("dev-json"), "errorCode");
    let (id, warnings) = server.post_json(RECEIVER, &body.to_string()).accepted();
    server.wait_until_processed();
    let events = server.events(&[]);
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(
        keys(event),
        [
            "actions",
            "device_id",
            "error",
            "id",
            "notify_type",
            "received_at",
            "status",
            "warnings"
        ]
    );
    assert_eq!(event["id"], id);
    assert_eq!(event["notify_type"], "swUpgradeResultNotify");
    assert_eq!(event["device_id"], "dev-json");
    assert_eq!(event["status"], "handled");
    assert_eq!(event["warnings"], warnings);
    assert_eq!(event["actions"], 0);
    assert_eq!(event["error"], Value::Null);
    let received_at = event["received_at"].as_str().expect("a string");
    assert!(
        received_at.len() == 24 && received_at.ends_with('Z') && received_at.contains('T'),
        "RFC 3339 UTC: {received_at}"
    );
}

#[test]
fn events_list_prints_a_table_newest_first() {
    let (server, [sw_fail, fw_result, sw_state]) = server_with_three_events();
    let output = server.cli(&["events", "list"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    for column in ["ID", "TYPE", "DEVICE", "STATUS"] {
        assert!(header.contains(column), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{text}");
    for (row, (id, notify_type, device)) in rows.iter().zip([
        (&sw_state, "swUpgradeStateChangeNotify", "dev-a"),
        (&fw_result, "fwUpgradeResultNotify", "dev-b"),
        (&sw_fail, "swUpgradeResultNotify", "dev-a"),
    ]) {
        assert!(row.starts_with(id.as_str()), "{text}");
        assert!(row.contains(notify_type) && row.contains(device), "{row}");
    }
}

#[test]
fn events_show_prints_one_event_as_json_and_as_text() {
    let server = TestServer::start("");
    let body = fixtures::without(fixtures::sw_fail("dev-show"), "errorCode");
    let (id, warnings) = server.post_json(RECEIVER, &body.to_string()).accepted();
    server.wait_until_processed();

    let output = server.cli(&["events", "show", &id, "--json"]);
    assert_exit(&output, 0);
    let shown: Value = serde_json::from_slice(&output.stdout).expect("show --json is JSON");
    for (key, value) in [
        ("id", json!(id)),
        ("notify_type", json!("swUpgradeResultNotify")),
        ("device_id", json!("dev-show")),
        ("status", json!("handled")),
        ("warnings", warnings),
        ("path", json!(RECEIVER)),
        ("remote_addr", json!("127.0.0.1")),
        ("body", body),
    ] {
        assert_eq!(shown[key], value, "{key}: {shown}");
    }

    let output = server.cli(&["events", "show", &id]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    for expected in [
        id.as_str(),
        "swUpgradeResultNotify",
        "dev-show",
        "handled",
        RECEIVER,
        "errorCode: missing",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}

#[test]
fn events_show_of_an_unknown_id_exits_2_saying_so() {
    let server = TestServer::start("");
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let output = server.cli(&["events", "show", unknown]);
    assert_exit(&output, 2);
    let message = stderr(&output);
    assert!(
        message.contains(unknown) && message.contains("no event"),
        "{message}"
    );
}

#[test]
fn events_show_of_a_malformed_id_is_a_usage_error() {
    let server = TestServer::start("");
    let output = server.cli(&["events", "show", "42"]);
    assert_exit(&output, 2);
    let message = stderr(&output);
    assert!(
        message.contains("'42'") && message.contains("not an event id"),
        "{message}"
    );
}

#[test]
fn events_list_on_a_missing_store_exits_2_naming_it() {
    let (dir, config) = config_file("[store]\npath = \"nowhere/notirouter.db\"\n");
    let output = notirouter()
        .arg("--config")
        .arg(&config)
        .args(["events", "list"])
        .current_dir(dir.path())
        .output()
        .expect("the notirouter binary runs");
    assert_exit(&output, 2);
    let message = stderr(&output);
    assert!(message.contains("nowhere/notirouter.db"), "{message}");
    // A typo in store.path must not quietly create an empty store.
    assert!(!dir.path().join("nowhere").exists());
}

/// The shipped build is the small one: `cargo build --release` (what the Dockerfile runs)
/// strips symbols and debug info; the `profiling` profile keeps them for profilers.
#[test]
fn the_release_build_is_stripped_and_a_profiling_build_keeps_symbols() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml is readable");
    let manifest: toml::Table = manifest.parse().expect("Cargo.toml is TOML");
    let profile = |name: &str| manifest["profile"][name].clone();
    let release = profile("release");
    assert_eq!(
        release.get("strip"),
        Some(&toml::Value::Boolean(true)),
        "{release}"
    );
    assert!(release.get("debug").is_none(), "{release}");
    let profiling = profile("profiling");
    assert_eq!(
        profiling["inherits"].as_str(),
        Some("release"),
        "{profiling}"
    );
    assert_eq!(profiling["debug"].as_integer(), Some(1), "{profiling}");
    assert_eq!(profiling["strip"].as_bool(), Some(false), "{profiling}");
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("the Dockerfile is readable");
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "{dockerfile}"
    );
}
