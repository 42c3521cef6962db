//! `retry_upgrade` end to end and `subscribe`, against the fake platform on loopback
//! ([`FakePlatform`]): the real binary logs in, creates the upgrade task the documentation
//! describes, survives token revocation, throttling and a crash mid-creation, keeps the retry
//! budget under a storm, and skips failures the platform does not confirm. The client is also
//! driven directly for what a server cannot show: concurrent token refresh and mutual TLS.

mod common;
#[path = "common/fake_platform.rs"]
mod fake_platform;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use common::{
    TestServer, all_output, assert_exit, config_file, fixtures, in_parallel, run_cli, stdout,
    wait_until,
};
use fake_platform::{APP_ID, FakePlatform, Fault, Route, SECRET};
use notirouter::action::PlatformOp;
use notirouter::config::{Config, PlatformConfig};
use notirouter::platform::{Platform, UpgradeKind, check_login};

/// Longest wait for a task the test expects (a throttle pause included).
const TASK_TIMEOUT: Duration = Duration::from_secs(20);
/// Retries a little apart, so that tests of retrying take well under a second per attempt.
const FAST: &str = "[delivery]\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n\
                    timeout = \"3s\"\n";
const RETRY_ALL: &str = "fn on_notification(n) { if upgrade_failed(n) { retry_upgrade(n); } }";

/// A server whose only plugin retries every failed upgrade, at `fake`, with `extra` keys in
/// its `[platform]` section (sub-tables last).
fn start(fake: &FakePlatform, extra: &str) -> TestServer {
    let config = format!("{FAST}{}", fake.config(extra));
    TestServer::start_with_plugins(&config, &[("retry.rhai", RETRY_ALL)])
}

/// A software failure of `device` with its own sub-operation, so that bodies differ.
fn sw_fail(device: &str, sub: &str) -> Value {
    fixtures::with(fixtures::sw_fail(device), "subOperationId", json!(sub))
}

fn wait_for_tasks(fake: &FakePlatform, server: &TestServer, count: usize) {
    let created = wait_until(TASK_TIMEOUT, || fake.tasks().len() >= count);
    assert!(
        created && fake.tasks().len() == count,
        "expected {count} task(s), have {:?}; requests {:#?}; logs:\n{}",
        fake.tasks(),
        fake.requests(),
        server.logs()
    );
}

/// The one action of event `id`, once it has left `pending` and its attempts are recorded.
fn settled_action(server: &TestServer, id: &str) -> Value {
    let mut action = Value::Null;
    let settled = wait_until(TASK_TIMEOUT, || {
        action = server.event_detail(id)["actions"][0].clone();
        action["status"].as_str().is_some_and(|s| s != "pending")
    });
    assert!(
        settled,
        "action still pending: {action:#}; logs:\n{}",
        server.logs()
    );
    action
}

fn bearer(request: &fake_platform::Recorded) -> String {
    request
        .header("authorization")
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn one_login_serves_every_call_and_nothing_secret_is_logged() {
    let fake = FakePlatform::start();
    let server = start(&fake, "");
    let ids: Vec<String> = ["dev-a", "dev-b", "dev-c"]
        .iter()
        .map(|device| server.post_accepted(&sw_fail(device, device)))
        .collect();
    wait_for_tasks(&fake, &server, 3);

    let logins = fake.requests_to(Route::Login);
    assert_eq!(logins.len(), 1);
    let login = &logins[0];
    assert_eq!(
        login.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(login.form()["appId"], APP_ID);
    assert_eq!(login.form()["secret"], SECRET);
    assert_eq!(login.header("authorization"), None);
    for create in fake.requests_to(Route::CreateSoftware) {
        assert_eq!(bearer(&create), "Bearer access-1");
        assert_eq!(create.header("app_key"), Some(APP_ID));
        assert_eq!(create.header("content-type"), Some("application/json"));
    }
    let operation = settled_action(&server, &ids[0]);
    assert_eq!(operation["status"], "sent");
    let operation_id = operation["result"].as_str().unwrap().to_owned();
    assert!(fake.tasks().iter().any(|t| t.operation_id == operation_id));
    let listed = stdout(&server.cli(&["events", "list", "--device", "dev-a"]));
    assert!(
        listed.lines().nth(1).unwrap().ends_with(&operation_id),
        "{listed}"
    );
    let shown = stdout(&server.cli(&["events", "show", &ids[0]]));
    assert!(
        shown.contains(&format!("result: {operation_id}")),
        "{shown}"
    );
    let logs = server.logs();
    for secret in [SECRET, "access-1", "refresh-1"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

#[test]
fn software_and_firmware_tasks_have_their_documented_paths_and_bodies() {
    let fake = FakePlatform::start();
    // 1.6 is ambiguous at the platform: the configured mapping must be used, not a lookup.
    let server = start(&fake, "[platform.packages]\n\"1.6\" = \"sw-1.6-m2\"\n");
    let mapped = fixtures::with(sw_fail("dev-sw", "s1"), "targetVersion", json!("1.6"));
    server.post_accepted(&mapped);
    server.post_accepted(&fixtures::fw_result("dev-fw-1"));
    server.post_accepted(&fixtures::fw_result("dev-fw-2"));
    wait_for_tasks(&fake, &server, 3);

    let software = fake.requests_to(Route::CreateSoftware);
    assert_eq!(software.len(), 1);
    assert_eq!(
        software[0].path,
        "/iodm/northbound/v1.5.0/operations/softwareUpgrade"
    );
    assert_eq!(
        software[0].json(),
        json!({"fileId": "sw-1.6-m2", "targets": {"devices": ["dev-sw"]},
               "policy": {"executeType": "now"}})
    );
    let firmware = fake.requests_to(Route::CreateFirmware);
    assert_eq!(firmware.len(), 2);
    assert_eq!(
        firmware[0].path,
        "/iodm/northbound/v1.5.0/operations/firmwareUpgrade"
    );
    let devices: Vec<Value> = firmware
        .iter()
        .map(|r| r.json()["targets"]["devices"][0].clone())
        .collect();
    assert!(devices.contains(&json!("dev-fw-1")) && devices.contains(&json!("dev-fw-2")));
    for request in &firmware {
        assert_eq!(request.json()["fileId"], "fw-V1.0.4");
        assert_eq!(request.json()["policy"], json!({"executeType": "now"}));
    }
    // Looked up once, by type and version, and remembered.
    let lookups = fake.requests_to(Route::Packages);
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    assert_eq!(lookups[0].query["fileType"], "firmwarePackage");
    assert_eq!(lookups[0].query["version"], "V1.0.4");
}

#[test]
fn an_ambiguous_package_is_dead_lettered_with_its_candidates_and_gives_the_budget_back() {
    let fake = FakePlatform::start();
    let server = start(&fake, "max_upgrade_retries = 1\n");
    let failure =
        |sub: &str| fixtures::with(sw_fail("dev-amb", sub), "targetVersion", json!("1.6"));
    let first = server.post_accepted(&failure("s1"));
    let dead = settled_action(&server, &first);
    assert_eq!(dead["status"], "dead");
    let error = dead["last_error"].as_str().unwrap();
    assert!(
        error.contains("sw-1.6-m1") && error.contains("sw-1.6-m2"),
        "{error}"
    );
    assert!(error.contains("[platform.packages]"), "{error}");

    // The unit came back: with a budget of one, a second failure is queued again.
    let second = server.post_accepted(&failure("s2"));
    let detail = server.wait_for_outcome(&second);
    assert_eq!(
        detail["actions"].as_array().map(Vec::len),
        Some(1),
        "{detail:#}"
    );
    assert!(fake.tasks().is_empty());
}

#[test]
fn a_refused_token_costs_one_login_and_one_repeat() {
    let fake = FakePlatform::start();
    let server = start(&fake, "");
    fake.fail_next(Route::CreateSoftware, [Fault::InvalidToken]);
    let id = server.post_accepted(&sw_fail("dev-1", "s1"));
    wait_for_tasks(&fake, &server, 1);
    assert_eq!(settled_action(&server, &id)["attempts"], 1);
    let creates = fake.requests_to(Route::CreateSoftware);
    assert_eq!(
        creates.iter().map(bearer).collect::<Vec<_>>(),
        ["Bearer access-1", "Bearer access-2"]
    );
    assert_eq!(fake.count(Route::Login), 2);

    // A 401 is read the same way.
    fake.fail_next(Route::CreateFirmware, [Fault::Unauthorized]);
    server.post_accepted(&fixtures::fw_result("dev-2"));
    wait_for_tasks(&fake, &server, 2);
    assert_eq!(fake.count(Route::Login), 3);

    // Revoked at the platform itself (not an injected answer): the same recovery.
    fake.revoke_tokens();
    server.post_accepted(&fixtures::fw_result("dev-3"));
    wait_for_tasks(&fake, &server, 3);
    assert_eq!(fake.count(Route::Login), 4);
    let last = fake.requests_to(Route::CreateFirmware).pop().unwrap();
    assert_eq!(
        Some(bearer(&last)),
        fake.current_token().map(|t| format!("Bearer {t}"))
    );
}

#[test]
fn throttling_is_waited_out_within_the_attempt() {
    let fake = FakePlatform::start();
    let server = start(&fake, "");
    fake.fail_next(Route::CreateSoftware, [Fault::Throttled]);
    let id = server.post_accepted(&sw_fail("dev-1", "s1"));
    wait_for_tasks(&fake, &server, 1);
    let creates = fake.requests_to(Route::CreateSoftware);
    assert_eq!(creates.len(), 2);
    assert!(
        creates[1].at - creates[0].at >= Duration::from_secs(1),
        "no back-off"
    );
    let action = settled_action(&server, &id);
    assert_eq!(
        (action["status"].as_str(), action["attempts"].as_i64()),
        (Some("sent"), Some(1))
    );
}

#[test]
fn a_creation_whose_answer_was_lost_is_found_instead_of_repeated() {
    let fake = FakePlatform::start();
    let server = start(&fake, "");
    // Created, but answered after the 3 s timeout; then a 503 for the next device.
    fake.fail_next(Route::CreateSoftware, [Fault::Slow(Duration::from_secs(5))]);
    let slow = server.post_accepted(&sw_fail("dev-slow", "s1"));
    let action = settled_action(&server, &slow);
    assert_eq!(
        (action["status"].as_str(), action["attempts"].as_i64()),
        (Some("sent"), Some(2))
    );
    assert_eq!(action["result"], fake.tasks()[0].operation_id.as_str());
    assert_eq!(fake.count(Route::CreateSoftware), 1);

    fake.fail_next(Route::CreateSoftware, [Fault::Error(503, "")]);
    let unavailable = server.post_accepted(&sw_fail("dev-503", "s2"));
    let action = settled_action(&server, &unavailable);
    assert_eq!(
        (action["status"].as_str(), action["attempts"].as_i64()),
        (Some("sent"), Some(2))
    );
    assert_eq!(fake.tasks().len(), 2);
    assert!(
        action["attempt_log"][0]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 503"),
        "{action:#}"
    );

    // A 200 without an operationId: the task exists, so it is found, not created again.
    fake.fail_next(Route::CreateSoftware, [Fault::NoOperationId]);
    let anomaly = server.post_accepted(&sw_fail("dev-anomaly", "s3"));
    let action = settled_action(&server, &anomaly);
    assert_eq!(action["status"], "sent", "{action:#}");
    assert_eq!(action["result"], fake.tasks()[2].operation_id.as_str());
    assert_eq!(fake.tasks().len(), 3);
}

#[test]
fn a_refused_creation_is_dead_lettered_and_reported_to_the_scripts() {
    let fake = FakePlatform::start();
    let server = start(&fake, "[platform.packages]\n\"1.5\" = \"not-uploaded\"\n");
    let id = server.post_accepted(&sw_fail("dev-refused", "s1"));
    let action = settled_action(&server, &id);
    assert_eq!(
        (action["status"].as_str(), action["attempts"].as_i64()),
        (Some("dead"), Some(1))
    );
    assert!(
        action["last_error"]
            .as_str()
            .unwrap()
            .contains("error 123002: invalid task); the device or the package does not exist"),
        "{action:#}"
    );
    let reported = wait_until(TASK_TIMEOUT, || {
        !server.events(&["--type", "actionFailed"]).is_empty()
    });
    assert!(reported, "no actionFailed event; logs:\n{}", server.logs());
}

/// Posts a failure of `device` and waits until the fake holds `tasks` tasks.
fn create_one_task(fake: &FakePlatform, server: &TestServer, device: &str, tasks: usize) {
    server.post_accepted(&sw_fail(device, device));
    wait_for_tasks(fake, server, tasks);
}

#[test]
fn the_login_check_beside_a_server_hands_its_token_to_the_server() {
    let fake = FakePlatform::start();
    let server = start(&fake, "");
    create_one_task(&fake, &server, "dev-a", 1);
    let output = server.cli(&["doctor"]);
    assert!(
        stdout(&output).contains("logged in to"),
        "{}",
        all_output(&output)
    );
    assert_eq!(fake.count(Route::Login), 2, "the check logs in");
    create_one_task(&fake, &server, "dev-b", 2);
    assert_eq!(
        fake.count(Route::Login),
        2,
        "the server took the stored token up instead of logging in again"
    );
    let last = fake.requests_to(Route::CreateSoftware).pop().unwrap();
    assert_eq!(bearer(&last), "Bearer access-2");
}

#[test]
fn subscribe_beside_a_server_uses_its_token_instead_of_revoking_it() {
    let fake = FakePlatform::start();
    let server = start(&fake, "");
    create_one_task(&fake, &server, "dev-a", 1);
    let url = "https://203.0.113.7:8443/v1.0.0/messageReceiver";
    let output = server.cli(&["subscribe", "--callback-url", url]);
    assert_exit(&output, 0);
    assert_eq!(
        fake.count(Route::Login),
        1,
        "subscribe read the stored token"
    );
    create_one_task(&fake, &server, "dev-b", 2);
    assert_eq!(fake.count(Route::Login), 1);
    assert_eq!(
        fake.count(Route::CreateSoftware),
        2,
        "the server's token still held"
    );
}

#[test]
fn fifty_concurrent_failures_of_one_device_create_exactly_the_budget_even_after_a_restart() {
    let fake = FakePlatform::start();
    let server = start(&fake, "max_upgrade_retries = 3\n");
    in_parallel(10, 5, |thread, n| {
        server.post_accepted(&sw_fail("dev-storm", &format!("sub-{thread}-{n}")))
    });
    server.wait_until_processed();
    wait_for_tasks(&fake, &server, 3);
    let platform_actions = |server: &TestServer| {
        server
            .events(&["--device", "dev-storm"])
            .iter()
            .map(|event| event["actions"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(platform_actions(&server), 3);

    let server = server.restart();
    let late = server.post_accepted(&sw_fail("dev-storm", "sub-late"));
    assert_eq!(server.wait_for_outcome(&late)["actions"], json!([]));
    assert_eq!(platform_actions(&server), 3);
    assert_eq!(fake.tasks().len(), 3);
    assert!(
        fake.tasks()
            .iter()
            .all(|task| task.devices == ["dev-storm"])
    );
}

#[test]
fn a_task_created_before_a_crash_is_found_instead_of_created_again() {
    let fake = FakePlatform::start();
    let mut server = start(&fake, "");
    // The platform creates the task but answers too late: the server dies first.
    fake.fail_next(
        Route::CreateSoftware,
        [Fault::Slow(Duration::from_secs(30))],
    );
    let id = server.post_accepted(&sw_fail("dev-crash", "s1"));
    wait_for_tasks(&fake, &server, 1);
    server.kill9();

    let server = server.restart();
    let action = settled_action(&server, &id);
    assert_eq!(action["status"], "sent", "{action:#}");
    assert_eq!(action["result"], fake.tasks()[0].operation_id.as_str());
    assert_eq!(fake.count(Route::CreateSoftware), 1);
    assert!(fake.count(Route::ListTasks) >= 1 && fake.count(Route::SubOperations) >= 1);
}

#[test]
fn verify_before_retry_skips_failures_the_platform_does_not_confirm() {
    let fake = FakePlatform::start();
    fake.seed_failed_sub_operation("op-real", "sub-real", "dev-real");
    let server = start(&fake, "verify_before_retry = true\n");
    let failure = |device: &str, operation: &str, sub: &str| {
        let body = fixtures::with(fixtures::sw_fail(device), "operationId", json!(operation));
        fixtures::with(body, "subOperationId", json!(sub))
    };
    let real = server.post_accepted(&fixtures::with(
        failure("dev-real", "op-real", "sub-real"),
        "appId",
        json!(APP_ID),
    ));
    let forged = server.post_accepted(&fixtures::with(
        failure("dev-forged", "op-real", "sub-forged"),
        "appId",
        json!(APP_ID),
    ));
    let other_app = server.post_accepted(&failure("dev-real", "op-real", "sub-real-2"));

    assert_eq!(settled_action(&server, &real)["status"], "sent");
    let skipped = settled_action(&server, &forged);
    assert_eq!(skipped["status"], "skipped", "{skipped:#}");
    assert!(
        skipped["last_error"]
            .as_str()
            .unwrap()
            .contains("sub-forged"),
        "{skipped:#}"
    );
    let skipped = settled_action(&server, &other_app);
    assert_eq!(skipped["status"], "skipped");
    assert!(
        skipped["last_error"].as_str().unwrap().contains("appId"),
        "{skipped:#}"
    );
    assert_eq!(fake.tasks().len(), 1);
    let verify = fake.requests_to(Route::SubOperations);
    assert!(
        verify
            .iter()
            .all(|r| r.query["subOperationStatus"] == "fail")
    );
    assert!(
        verify.iter().all(|r| bearer(r) == "Bearer access-1"),
        "verify calls are platform calls"
    );
}

#[test]
fn subscribe_registers_each_type_and_prints_the_answers() {
    let fake = FakePlatform::start();
    let (_dir, config) = config_file(&fake.config(""));
    let url = "https://203.0.113.7:8443/v1.0.0/messageReceiver";
    let output = run_cli(&config, &["subscribe", "--callback-url", url]);
    assert_exit(&output, 0);
    let types = [
        "swUpgradeStateChangeNotify",
        "swUpgradeResultNotify",
        "fwUpgradeStateChangeNotify",
        "fwUpgradeResultNotify",
    ];
    let bodies: Vec<Value> = fake
        .requests_to(Route::SubscribeManagement)
        .iter()
        .map(|r| r.json())
        .collect();
    let expected: Vec<Value> = types
        .iter()
        .map(|t| json!({"notifyType": t, "callbackUrl": url}))
        .collect();
    assert_eq!(bodies, expected);
    for notify_type in types {
        assert!(
            stdout(&output).contains(&format!("{notify_type}: subscribed (HTTP 200)")),
            "{}",
            stdout(&output)
        );
    }

    let again = run_cli(
        &config,
        &[
            "subscribe",
            "--callback-url",
            url,
            "--types",
            "swUpgradeResultNotify",
        ],
    );
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("already subscribed (error 100227)"),
        "{}",
        all_output(&again)
    );

    let others = run_cli(
        &config,
        &[
            "subscribe",
            "--callback-url",
            url,
            "--types",
            "deviceAdded,NBCommandStateChanged",
        ],
    );
    assert_exit(&others, 1);
    assert!(
        stdout(&others).contains("deviceAdded: subscribed (HTTP 201, subscriptionId"),
        "{}",
        all_output(&others)
    );
    assert!(all_output(&others).contains("NBCommandStateChanged: not subscribable"));
    let service = fake.requests_to(Route::SubscribeService);
    assert_eq!(
        service[0].json(),
        json!({"notifyType": "deviceAdded", "callbackUrl": url})
    );
    assert_eq!(service[0].query["ownerFlag"], "false");
}

#[test]
fn subscribe_falls_back_to_the_sdk_key_spelling_and_explains_its_errors() {
    let fake = FakePlatform::start();
    fake.accept_callback_key("callbackurl");
    let (_dir, config) = config_file(&fake.config(""));
    let args = [
        "subscribe",
        "--callback-url",
        "https://h:1/cb",
        "--types",
        "fwUpgradeResultNotify",
    ];
    assert_exit(&run_cli(&config, &args), 0);
    let bodies: Vec<Value> = fake
        .requests_to(Route::SubscribeManagement)
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(
        bodies[1],
        json!({"notifyType": "fwUpgradeResultNotify", "callbackurl": "https://h:1/cb"})
    );

    let (_dir, wrong) = config_file(&fake.config("").replace(SECRET, "wrong"));
    let output = run_cli(&wrong, &args);
    assert_exit(&output, 2);
    assert!(
        all_output(&output).contains("check platform.app_id and platform.secret"),
        "{}",
        all_output(&output)
    );
    assert!(
        !all_output(&output).contains("wrong\""),
        "the secret is not repeated"
    );

    let closed = fake.config("").replace(&fake.url(), "http://127.0.0.1:9");
    let (_dir, unreachable) = config_file(&closed);
    let output = run_cli(&unreachable, &args);
    assert_exit(&output, 2);
    assert!(
        all_output(&output).contains("cannot reach the platform"),
        "{}",
        all_output(&output)
    );
}

// ---------------------------------------------------------------------------------------------
// The client on its own
// ---------------------------------------------------------------------------------------------

fn platform_config(text: &str) -> PlatformConfig {
    Config::parse(text, Path::new("test.toml"), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"))
        .platform
}

fn op(device: &str) -> PlatformOp {
    PlatformOp::retry_upgrade(device, "swUpgradeResultNotify", "1.5")
}

/// `count` task creations at once, for devices `d{first}`..., alternating between
/// `platforms`; each must succeed.
async fn create_tasks(platforms: &[Arc<Platform>], first: usize, count: usize) {
    let calls = (first..first + count).map(|n| {
        let platform = Arc::clone(&platforms[n % platforms.len()]);
        tokio::spawn(async move {
            platform
                .create_task(UpgradeKind::Software, "sw-1.5", &op(&format!("d{n}")))
                .await
        })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_refreshed_once_for_twenty_concurrent_calls() {
    let fake = FakePlatform::start();
    fake.next_tokens_last([0]);
    let platform = Arc::new(
        Platform::new(&platform_config(&fake.config("")), Duration::from_secs(5)).unwrap(),
    );
    assert_eq!(platform.login().await.unwrap(), 0);
    create_tasks(&[platform], 0, 20).await;
    assert_eq!(fake.count(Route::Refresh), 1);
    assert_eq!(fake.count(Route::Login), 1);
    let creates = fake.requests_to(Route::CreateSoftware);
    assert_eq!(creates.len(), 20);
    assert!(creates.iter().all(|r| bearer(r) == "Bearer access-2"));
    let refresh = &fake.requests_to(Route::Refresh)[0];
    assert_eq!(
        refresh.json(),
        json!({"appId": APP_ID, "secret": SECRET, "refreshToken": "refresh-1"})
    );
}

/// Mutual TLS: the fake platform behind a TLS front that requires a client certificate
/// signed by the test's CA.
mod mutual_tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    use rustls::RootCertStore;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::server::WebPkiClientVerifier;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
        ca: CertifiedIssuer<'static, KeyPair>,
        server: (rcgen::Certificate, KeyPair),
    }

    fn leaf(
        ca: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, ca).unwrap(), key)
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let server = leaf(&ca, &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
            let (client, client_key) =
                leaf(&ca, &["notirouter"], ExtendedKeyUsagePurpose::ClientAuth);
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
            std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
            Pki { dir, ca, server }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        /// Serves TLS on a free port, requiring a client certificate of the CA, and passes
        /// the plain bytes to `backend`. TLS 1.2, as the platform's SDKs use: the server then
        /// refuses a missing client certificate within the handshake (TLS 1.3 refuses it after,
        /// when the client may already have seen the connection close instead).
        async fn front(&self, backend: SocketAddr) -> SocketAddr {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.1.serialize_der()));
            let chain = vec![CertificateDer::from(self.server.0.der().to_vec())];
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        if let Ok(mut plain) = TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
            addr
        }
    }

    fn config(base_url: &str, tls: &str) -> PlatformConfig {
        platform_config(&format!(
            "[platform]\nbase_url = \"{base_url}\"\napp_id = \"{APP_ID}\"\nsecret = \"{SECRET}\"\n{tls}"
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_certificate_opens_a_platform_that_requires_one() {
        let fake = FakePlatform::start();
        let pki = Pki::new();
        let front = pki.front(fake.addr()).await;
        let with_client = format!(
            "ca_cert = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key")
        );
        let by_name = format!("https://localhost:{}", front.port());
        let answer = check_login(&config(&by_name, &with_client), None)
            .await
            .unwrap();
        assert!(answer.contains("logged in"), "{answer}");

        let without_client = format!("ca_cert = \"{}\"\n", pki.path("ca.pem"));
        let error = check_login(&config(&by_name, &without_client), None)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("TLS handshake"), "{error}");

        // Reached by IP, the certificate's name does not match: refused unless relaxed.
        let by_ip = format!("https://127.0.0.1:{}", front.port());
        let error = check_login(&config(&by_ip, &with_client), None)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("TLS handshake"), "{error}");
        let relaxed = format!("{with_client}verify_hostname = false\n");
        check_login(&config(&by_ip, &relaxed), None).await.unwrap();
        assert_eq!(fake.count(Route::Login), 2);
    }
}

#[test]
fn doctor_logs_in_to_the_platform_and_says_when_the_credentials_are_refused() {
    let fake = FakePlatform::start();
    let (_dir, path) = config_file(&fake.config(""));
    let output = run_cli(&path, &["doctor"]);
    let report = stdout(&output);
    let platform_line = |report: &str| {
        report
            .lines()
            .find(|line| line.contains(" platform"))
            .unwrap_or_else(|| panic!("no platform line:\n{report}"))
            .to_owned()
    };
    assert!(
        platform_line(&report).starts_with("ok") && report.contains("logged in to"),
        "{report}"
    );
    assert_eq!(fake.count(Route::Login), 1);

    let wrong = fake.config("").replace(SECRET, "not-the-secret");
    let (_dir, path) = config_file(&wrong);
    let output = run_cli(&path, &["doctor"]);
    assert_exit(&output, 1);
    let report = stdout(&output);
    assert!(platform_line(&report).starts_with("PROBLEM"), "{report}");
    assert!(!all_output(&output).contains("not-the-secret"), "{report}");
}

// ---------------------------------------------------------------------------------------------
// Two instances on one store
// ---------------------------------------------------------------------------------------------

/// Two clients of one app on one store, as two instances of a server would be.
struct TwoInstances {
    instances: [Arc<Platform>; 2],
    store: Arc<dyn notirouter::store::Store>,
    _dir: tempfile::TempDir,
}

impl TwoInstances {
    fn on(fake: &FakePlatform) -> TwoInstances {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[store]\npath = \"{}\"\n",
            dir.path().join("s.db").display()
        );
        let config = Config::parse(&text, Path::new("test.toml"), Vec::new()).unwrap();
        let store =
            notirouter::store::open(&config.store, notirouter::store::Opener::Server).unwrap();
        let platform = platform_config(&fake.config(""));
        let instance = || {
            let sharing = Platform::sharing(&platform, Duration::from_secs(5), Arc::clone(&store));
            Arc::new(sharing.unwrap())
        };
        TwoInstances {
            instances: [instance(), instance()],
            store,
            _dir: dir,
        }
    }

    async fn create_tasks(&self, first: usize, count: usize) {
        create_tasks(&self.instances, first, count).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_store_log_in_once_and_share_the_token() {
    let fake = FakePlatform::start();
    let both = TwoInstances::on(&fake);
    both.create_tasks(0, 20).await;
    assert_eq!(fake.count(Route::Login), 1, "{:#?}", fake.requests());
    assert_eq!(fake.count(Route::Refresh), 0);
    assert_eq!(fake.tasks().len(), 20);
    assert_eq!(
        fake.count(Route::CreateSoftware),
        20,
        "no call was refused for a token the other instance revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_store_refresh_an_expired_token_once() {
    let fake = FakePlatform::start();
    fake.next_tokens_last([0]);
    let both = TwoInstances::on(&fake);
    assert_eq!(both.instances[0].login().await.unwrap(), 0);
    both.create_tasks(0, 20).await;
    assert_eq!(fake.count(Route::Login), 1, "{:#?}", fake.requests());
    assert_eq!(fake.count(Route::Refresh), 1);
    assert_eq!(fake.tasks().len(), 20);
    let creates = fake.requests_to(Route::CreateSoftware);
    assert!(creates.iter().all(|r| bearer(r) == "Bearer access-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_whose_token_was_revoked_log_in_once_between_them() {
    let fake = FakePlatform::start();
    let both = TwoInstances::on(&fake);
    both.create_tasks(0, 2).await;
    fake.revoke_tokens();
    both.create_tasks(2, 20).await;
    assert_eq!(fake.count(Route::Login), 2, "{:#?}", fake.requests());
    assert_eq!(fake.tasks().len(), 22);
    let refused = fake.count(Route::CreateSoftware) - fake.tasks().len();
    assert!(
        refused <= 20,
        "each call is refused at most once, with the revoked token: {refused} refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_never_logs_in_while_another_holds_the_renewal_lock() {
    use notirouter::model::Millis;
    use notirouter::store::{Claimer, PlatformToken};
    let fake = FakePlatform::start();
    let both = TwoInstances::on(&fake);
    both.create_tasks(0, 1).await;
    let holder = Claimer::named("another instance");
    let now = Millis::now();
    let until = Millis(now.0 + 60_000);
    assert!(
        both.store
            .claim_token_renewal(APP_ID, &holder, now, until)
            .unwrap()
    );
    fake.revoke_tokens();
    let waiting = tokio::spawn({
        let platform = Arc::clone(&both.instances[0]);
        async move {
            platform
                .create_task(UpgradeKind::Software, "sw-1.5", &op("d-waiting"))
                .await
        }
    });
    // Refused with the revoked token, the instance now waits for the lock.
    assert!(wait_until(TASK_TIMEOUT, || fake
        .count(Route::CreateSoftware)
        == 2));
    // The lock's holder logs in (a client of its own) and stores what it got.
    let own = Platform::new(&platform_config(&fake.config("")), Duration::from_secs(5)).unwrap();
    own.login().await.unwrap();
    let issued = fake.current_token().unwrap();
    let token = PlatformToken {
        access: issued.clone(),
        refresh: String::new(),
        renew_at: Millis(now.0 + 3_600_000),
        expires_in: 3_600,
    };
    assert!(
        both.store
            .store_platform_token(APP_ID, &holder, &token, Millis::now())
            .unwrap()
    );
    waiting.await.unwrap().unwrap();
    assert_eq!(fake.count(Route::Login), 2, "{:#?}", fake.requests());
    let last = fake.requests_to(Route::CreateSoftware).pop().unwrap();
    assert_eq!(bearer(&last), format!("Bearer {issued}"));
}

/// Two instances on one PostgreSQL database, both retrying every failure at `fake`.
fn start_two_on_postgres(
    fake: &FakePlatform,
    database: &common::pg::TestDatabase,
) -> [TestServer; 2] {
    let config = format!(
        "{FAST}[store]\nurl = \"{}\"\n{}",
        database.url,
        fake.config("max_upgrade_retries = 3\n")
    );
    std::thread::scope(|scope| {
        let start = || TestServer::start_with_plugins(&config, &[("retry.rhai", RETRY_ALL)]);
        [scope.spawn(start), scope.spawn(start)]
            .map(|started| started.join().expect("an instance starts"))
    })
}

#[test]
fn two_instances_on_postgresql_share_the_budget_the_token_and_each_task() {
    let Some(database) = common::pg::TestDatabase::create() else {
        return;
    };
    let fake = FakePlatform::start();
    let servers = start_two_on_postgres(&fake, &database);
    // 50 failures of one device, split across both: the budget holds across instances.
    in_parallel(10, 5, |thread, n| {
        servers[(thread + n) % 2].post_accepted(&sw_fail("dev-storm", &format!("sub-{thread}-{n}")))
    });
    // 20 devices failing at once, split across both: one task each.
    in_parallel(4, 5, |thread, n| {
        servers[(thread + n) % 2].post_accepted(&sw_fail(&format!("dev-{thread}-{n}"), "s1"))
    });
    servers.iter().for_each(TestServer::wait_until_processed);
    wait_for_tasks(&fake, &servers[0], 23);
    let tasks = fake.tasks();
    let storm = tasks
        .iter()
        .filter(|task| task.devices == ["dev-storm"])
        .count();
    assert_eq!(storm, 3, "the budget of 3 held across instances: {tasks:?}");
    let devices: std::collections::BTreeSet<&String> =
        tasks.iter().flat_map(|task| &task.devices).collect();
    assert_eq!(
        devices.len(),
        21,
        "each device's task created once: {tasks:?}"
    );
    assert_eq!(
        fake.count(Route::Login),
        1,
        "one login shared by both instances; logs:\n{}\n{}",
        servers[0].logs(),
        servers[1].logs()
    );
}
