//! Several instances on one PostgreSQL database (SPEC.md "Several instances"): the real binary,
//! real HTTP, a real webhook sink, a database of its own per test (tests/common/pg.rs).

mod common;
// This binary cuts connections but never counts them.
#[allow(dead_code)]
#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/sinks.rs"]
mod sinks;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::load::Load;
use common::pg::TestDatabase;
use common::{
    RECEIVER, TestServer, all_output, assert_exit, config_file, fixtures, in_parallel, json_lines,
    run_cli_with_env, wait_until,
};
use proxy::Proxy;
use serde_json::Value;
use sinks::HttpSink;

/// Queues one webhook per upgrade failure, naming the device.
const ALERT_PLUGIN: &str = r#"
fn on_notification(n) {
    if upgrade_failed(n) {
        webhook("hook", #{ device: n.deviceId });
    }
}
"#;

/// Longest wait for deliveries after the load: a killed instance's claims end with the lease.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(40);

/// The config of an instance on `url` whose webhooks go to `sink`.
fn instance_config(url: &str, sink: &HttpSink) -> String {
    format!(
        r#"
[store]
url = "{url}"
lease = "7s"
pool_size = 8

[channels.hook]
kind = "webhook"
url = "{hook}"

[delivery]
backoff_initial = "100ms"
backoff_max = "1s"
timeout = "1s"
breaker_cooldown = "500ms"
"#,
        hook = sink.url("/hook")
    )
}

fn start_instance(url: &str, sink: &HttpSink) -> TestServer {
    TestServer::start_with_plugins(&instance_config(url, sink), &[("alert.rhai", ALERT_PLUGIN)])
}

/// Two instances on one empty database, started at once: both must migrate or wait.
fn start_two(url: &str, sink: &HttpSink) -> [TestServer; 2] {
    std::thread::scope(|scope| {
        let first = scope.spawn(|| start_instance(url, sink));
        let second = scope.spawn(|| start_instance(url, sink));
        [first, second].map(|started| started.join().expect("an instance starts"))
    })
}

/// Every event the store holds, as `events list --json` shows them through `server`.
fn stored_events(server: &TestServer) -> Vec<Value> {
    let output = server.cli(&["events", "list", "--json", "--limit", "100000"]);
    assert_exit(&output, 0);
    json_lines(&output)
}

/// The devices of the webhooks the sink received, with how many times each idempotency key
/// arrived.
fn deliveries(sink: &HttpSink) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let mut devices = BTreeSet::new();
    let mut keys = BTreeMap::new();
    for request in sink.delivered() {
        devices.insert(request.json()["device"].as_str().unwrap_or("").to_owned());
        let key = request.header("idempotency-key").unwrap_or("").to_owned();
        *keys.entry(key).or_insert(0) += 1;
    }
    (devices, keys)
}

/// The devices of the stored events whose ids are in `ids`.
fn devices_of(server: &TestServer, ids: &[String]) -> BTreeSet<String> {
    let ids: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    stored_events(server)
        .iter()
        .filter(|event| ids.contains(event["id"].as_str().unwrap_or("")))
        .map(|event| event["device_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn two_instances_on_one_database_keep_one_event_per_body_and_send_each_action_once() {
    const FAILURES: usize = 1000;
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let sink = HttpSink::start();
    let servers = start_two(&database.url, &sink);

    let body = fixtures::sw_fail("twice").to_string();
    let first = servers[0].post_json(RECEIVER, &body).accepted_clean();
    assert_eq!(
        servers[1].post_json(RECEIVER, &body).duplicate(),
        first,
        "the same body posted to the other instance is the same event"
    );

    let ids = in_parallel(8, FAILURES / 8, |thread, n| {
        let body = fixtures::sw_fail(&format!("spread-{thread}-{n}")).to_string();
        servers[(thread + n) % 2]
            .post_json(RECEIVER, &body)
            .accepted_clean()
    });
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), FAILURES);

    let delivered = wait_until(DELIVERY_TIMEOUT, || deliveries(&sink).1.len() > FAILURES);
    let (devices, keys) = deliveries(&sink);
    assert!(
        delivered,
        "{} of {} webhooks delivered",
        keys.len(),
        FAILURES + 1
    );
    let doubled: Vec<_> = keys.iter().filter(|(_, count)| **count > 1).collect();
    assert!(doubled.is_empty(), "actions sent twice: {doubled:?}");
    assert_eq!(devices.len(), FAILURES + 1);
    assert_eq!(stored_events(&servers[1]).len(), FAILURES + 1);
}

#[test]
fn an_instance_killed_mid_burst_loses_nothing_and_the_other_sends_its_actions() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let sink = HttpSink::start();
    let [mut doomed, survivor] = start_two(&database.url, &sink);
    let load = Load::start(&[doomed.url(RECEIVER), survivor.url(RECEIVER)], 4, "burst");
    assert!(
        wait_until(Duration::from_secs(30), || load.accepted_so_far() >= 300),
        "the load got only {} accepted",
        load.accepted_so_far()
    );
    doomed.kill9();
    let accepted = load.finish();

    let stored: BTreeSet<String> = stored_events(&survivor)
        .iter()
        .map(|event| event["id"].as_str().unwrap_or("").to_owned())
        .collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "accepted but not stored: {lost:?}");

    let expected = devices_of(&survivor, &accepted);
    let all_sent = wait_until(DELIVERY_TIMEOUT, || {
        expected.is_subset(&deliveries(&sink).0)
    });
    let missing: Vec<String> = expected.difference(&deliveries(&sink).0).cloned().collect();
    assert!(
        all_sent,
        "{} accepted failures were never delivered: {missing:?}",
        missing.len()
    );
}

#[test]
fn while_the_database_is_unreachable_the_receiver_answers_503_and_recovers_by_itself() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let server_addr: SocketAddr = "127.0.0.1:5432".parse().expect("an address");
    let proxy = Proxy::start(database_addr(&database).unwrap_or(server_addr));
    let proxied =
        database
            .url
            .replacen(&database_authority(&database), &proxy.addr().to_string(), 1);
    let sink = HttpSink::start();
    let server = start_instance(&proxied, &sink);
    let load = Load::start(&[server.url(RECEIVER)], 3, "outage");
    assert!(wait_until(Duration::from_secs(30), || load
        .accepted_so_far()
        >= 100));

    proxy.cut();
    // The outage lasts until the receiver has refused a good many notifications.
    let refused = wait_until(Duration::from_secs(30), || load.answered(503) >= 100);
    let accepted_while_down = load.accepted_so_far();
    proxy.restore();
    assert!(
        refused,
        "the receiver did not answer 503 while the database was away"
    );
    let recovered = wait_until(Duration::from_secs(30), || {
        load.accepted_so_far() >= accepted_while_down + 100
    });
    let (accepted, statuses) = load.finish_with_statuses();
    assert!(
        recovered,
        "no notification was accepted after the database came back: {statuses:?}"
    );
    let unexpected: Vec<_> = statuses
        .keys()
        .filter(|status| ![200, 503].contains(*status))
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than 200 and 503: {statuses:?}"
    );

    let stored: BTreeSet<String> = stored_events(&server)
        .iter()
        .map(|event| event["id"].as_str().unwrap_or("").to_owned())
        .collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "answered 200 but not stored: {lost:?}");
}

/// The `host:port` of the test database's URL.
fn database_authority(database: &TestDatabase) -> String {
    let rest = database.url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

fn database_addr(database: &TestDatabase) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    database_authority(database).to_socket_addrs().ok()?.next()
}

#[test]
fn commands_use_the_database_of_store_url_and_never_show_its_password() {
    const PASSWORD: &str = "pw-never-shown-4711";
    let Some(database) = TestDatabase::create() else {
        return;
    };
    // The test server trusts local connections, so any password is accepted.
    let with_password =
        database
            .url
            .replacen("://postgres@", &format!("://postgres:{PASSWORD}@"), 1);
    let (_dir, config) = config_file("[scripts]\ndir = \"scripts\"\n");
    let env = [("NOTIROUTER__STORE__URL", with_password.as_str())];

    let doctor = run_cli_with_env(&config, &["doctor"], &env);
    let text = all_output(&doctor);
    assert!(
        common::stdout(&doctor).contains("PostgreSQL 1"),
        "doctor reports the server: {text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    for command in [&["events", "list"][..], &["dead", "list"]] {
        let output = run_cli_with_env(&config, command, &env);
        assert_exit(&output, 0);
    }

    let unreachable = with_password.replacen(&database_authority(&database), "127.0.0.1:9", 1);
    let output = run_cli_with_env(
        &config,
        &["events", "list"],
        &[("NOTIROUTER__STORE__URL", unreachable.as_str())],
    );
    let text = all_output(&output);
    assert_ne!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cannot reach the database 127.0.0.1:9/"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
}

#[test]
fn an_instance_is_woken_when_another_commits_work_for_it() {
    use notirouter::config::Config;
    use notirouter::store::{self, Opener, Signals};

    let Some(database) = TestDatabase::create() else {
        return;
    };
    let text = format!("[store]\nurl = \"{}\"\n", database.url);
    let config = Config::parse(&text, std::path::Path::new("t.toml"), Vec::new()).unwrap();
    let listening = store::open(&config.store, Opener::Server).unwrap();
    let signals = Signals::default();
    listening.watch_others(&signals);
    let other = store::open(&config.store, Opener::Command).unwrap();

    // The listener may still be connecting: append until a wake-up arrives.
    let before = signals.events.generation();
    let woken = wait_until(Duration::from_secs(10), || {
        let body = fixtures::sw_fail(&format!("dev-{}", ulid::Ulid::generate()));
        let text = body.to_string();
        let parsed = notirouter::notification::parse(text.as_bytes()).unwrap();
        let event = store::NewEvent {
            received_at: notirouter::model::Millis::now(),
            path: RECEIVER.into(),
            remote_addr: None,
            notify_type: parsed.notify_type,
            device_id: parsed.device_id,
            body: text.into_bytes(),
            hash: parsed.hash,
            warnings: Vec::new(),
        };
        other.append(&[event], &[]).unwrap();
        signals.events.generation() != before
    });
    assert!(woken, "no wake-up came from the other store's commit");
}
