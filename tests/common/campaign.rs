//! The upgrade campaign that the dashboard's tests count and show, sent to a real server
//! whose plugin retries every failed upgrade through the fake platform and sends a webhook
//! for every `customAlert`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::TestServer;
use crate::fake_platform::FakePlatform;
use crate::sinks::HttpSink;

const CALLBACK: &str = "/v1.0.0/messageReceiver";
pub const WAIT: Duration = Duration::from_secs(30);

/// Retries every failed upgrade; sends a webhook for every `customAlert`.
const PLUGIN: &str = r#"
fn on_notification(n, meta) {
    if meta.source != "http" { return; }
    if upgrade_failed(n) { retry_upgrade(n); }
    if n.notifyType == "customAlert" { webhook("hook", #{ device: n.deviceId }); }
}
"#;

pub fn sw_result(device: &str, operation: &str, sub: &str, error_code: Option<&str>) -> Value {
    let mut body = json!({
        "notifyType": "swUpgradeResultNotify",
        "deviceId": device, "appId": "app",
        "operationId": operation, "subOperationId": sub,
        "curVersion": "1.3", "targetVersion": "1.5", "sourceVersion": "1.3",
        "swUpgradeResult": "SUCCESS", "upgradeTime": "120"
    });
    if let Some(code) = error_code {
        body["swUpgradeResult"] = json!("FAIL");
        body["errorCode"] = json!(code);
        body["resultDesc"] = json!("upgrade failed");
        body["description"] = json!("package verification failed");
    }
    body
}

pub fn sw_state(device: &str, operation: &str) -> Value {
    json!({
        "notifyType": "swUpgradeStateChangeNotify",
        "deviceId": device, "appId": "app",
        "operationId": operation, "subOperationId": format!("{operation}-{device}"),
        "swUpgradeState": "downloading"
    })
}

fn fw_fail(device: &str) -> Value {
    json!({
        "notifyType": "fwUpgradeResultNotify",
        "deviceId": device, "appId": "app",
        "operationId": "fw-op", "subOperationId": format!("fw-{device}"),
        "curVersion": "V1.0.3", "targetVersion": "V1.0.4", "sourceVersion": "V1.0.3",
        "status": "FAIL", "statusDesc": "FAIL", "upgradeTime": "300"
    })
}

pub fn post(server: &TestServer, body: &Value) {
    let reply = server.post_json(CALLBACK, &body.to_string());
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn device(index: usize) -> String {
    format!("d{index:03}")
}

pub fn start(fake: &FakePlatform, sink: &HttpSink) -> TestServer {
    let config = format!(
        "[delivery]\nmax_attempts = 1\nbackoff_initial = \"100ms\"\n\
         [channels.hook]\nkind = \"webhook\"\nurl = \"{}\"\n{}",
        sink.url("/hook"),
        fake.config("")
    );
    TestServer::start_with_plugins(&config, &[("route.rhai", PLUGIN)])
}

/// The campaign of the module doc:
/// - d000–d119 succeed on task op-A;
/// - d120–d159 fail on op-A with code 7, are retried, and succeed on op-B (recovered);
/// - d160–d179 fail with code 7 and d180–d189 with code 12 (all retried, no result yet);
/// - d190–d198 report a state change on op-A only; d199 one on op-C before op-C is known,
///   which it becomes when d000 reports a success on it;
/// - d200 reports a state change on a task nobody knows: it counts in no campaign.
///
/// Then three firmware failures to V1.0.4, the most recent campaign.
pub fn send_campaign(server: &TestServer) {
    for index in 0..120 {
        post(
            server,
            &sw_result(&device(index), "op-A", &format!("a{index}"), None),
        );
    }
    for index in 120..160 {
        post(
            server,
            &sw_result(&device(index), "op-A", &format!("a{index}"), Some("7")),
        );
    }
    for index in 160..190 {
        let code = if index < 180 { "7" } else { "12" };
        post(
            server,
            &sw_result(&device(index), "op-A", &format!("a{index}"), Some(code)),
        );
    }
    for index in 190..199 {
        post(server, &sw_state(&device(index), "op-A"));
    }
    post(server, &sw_state(&device(199), "op-C"));
    post(server, &sw_state(&device(200), "op-X"));
    for index in 120..160 {
        post(
            server,
            &sw_result(&device(index), "op-B", &format!("b{index}"), None),
        );
    }
    post(server, &sw_result(&device(0), "op-C", "c0", None));
    for index in 0..3 {
        post(server, &fw_fail(&format!("f{index}")));
    }
}
