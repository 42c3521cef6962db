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
