//! Configuration as an operator meets it: keys that change where the server writes, and
//! errors that name the key (or the environment variable) whose value is wrong.

mod common;

use common::{SETTLE_TIMEOUT, TestServer, fixtures, wait_until};

/// A `log` channel writes its messages to its `dir`, not to the default `data/chat`.
#[test]
fn a_log_channel_writes_its_messages_to_its_dir() {
    let server = TestServer::start_with_plugins(
        "[channels.ops]\nkind = \"log\"\ndir = \"chat-out\"\n",
        &[(
            "chat.rhai",
            "fn on_notification(n) { slack(\"ops\", \"failed: \" + n.deviceId); }",
        )],
    );
    server.post_accepted(&fixtures::sw_fail("dev-chat-dir"));
    let dir = server.folder().join("chat-out");
    let mut messages = Vec::new();
    let written = wait_until(SETTLE_TIMEOUT, || {
        messages = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "json"))
                    .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        !messages.is_empty()
    });
    assert!(
        written,
        "nothing in {}; logs:\n{}",
        dir.display(),
        server.logs()
    );
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains("failed: dev-chat-dir"),
        "{}",
        messages[0]
    );
    assert!(!server.folder().join("data/chat").exists());
}

/// The shipped config with `key = value` on the line that sets `key` in `[section]` replaced;
/// returns the text and the line number (1-based).
fn shipped_config_with(section: &str, key: &str, value: &str) -> (String, usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/notirouter.toml")).expect("readable");
    let mut current = String::new();
    let mut replaced = None;
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(index, line)| {
            if let Some(name) = line.strip_prefix('[') {
                current = name.split(']').next().unwrap_or_default().to_owned();
            }
            if current == section && line.starts_with(&format!("{key} = ")) {
                replaced = Some(index + 1);
                return format!("{key} = {value}");
            }
            line.to_owned()
        })
        .collect();
    let line = replaced.unwrap_or_else(|| panic!("[{section}] {key} is in the shipped config"));
    (lines.join("\n"), line)
}

#[test]
fn a_mistyped_value_is_named_by_file_line_column_and_key() {
    let cases = [
        (
            "delivery",
            "backoff_initial",
            "\"soon\"",
            "\"soon\" is not a duration (e.g. \"500ms\", \"2s\", \"5m\")",
        ),
        (
            "store",
            "dedup_window",
            "\"10 parsecs\"",
            "\"10 parsecs\" is not a duration",
        ),
        (
            "scripts",
            "max_run_time",
            "\"-5s\"",
            "\"-5s\" is not a duration",
        ),
        (
            "scripts",
            "workers",
            "\"8\"",
            "\"8\" is not a whole number from 0 to",
        ),
        (
            "scripts",
            "hot_reload",
            "\"yes\"",
            "\"yes\" is not true or false",
        ),
        (
            "server",
            "validation",
            "\"loose\"",
            "unknown variant `loose`, expected `lenient` or `strict`",
        ),
    ];
    for (section, key, value, expected) in cases {
        let (text, line) = shipped_config_with(section, key, value);
        let (_dir, path) = common::config_file(&text);
        let output = common::run_cli(&path, &["check"]);
        common::assert_exit(&output, 1);
        let message = common::all_output(&output);
        let column = key.len() + 4;
        let place = format!(
            "{}:{line}:{column}: {section}.{key}: {expected}",
            path.display()
        );
        assert!(
            message.contains(&place),
            "expected {place:?} in:\n{message}"
        );
    }
}

#[test]
fn a_mistyped_override_is_named_by_variable_and_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("config/notirouter.toml");
    let var = "NOTIROUTER__DELIVERY__BACKOFF_INITIAL";
    let output = common::run_cli_with_env(&path, &["check"], &[(var, "soon")]);
    common::assert_exit(&output, 1);
    let message = common::all_output(&output);
    let expected =
        format!("environment variable {var}: delivery.backoff_initial: \"soon\" is not a duration");
    assert!(
        message.contains(&expected),
        "expected {expected:?} in:\n{message}"
    );
}
