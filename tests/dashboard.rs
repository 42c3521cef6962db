//! The dashboard's JSON API and pages through real HTTP on real stored events: a software
//! campaign of 200 devices with failures, retries (through the fake platform) and
//! recoveries, counted against numbers worked out by hand; the dead-letter endpoints; and
//! every page with `<script>` in every string field a notification can carry.

mod common;
#[path = "common/fake_platform.rs"]
mod fake_platform;
#[path = "common/sinks.rs"]
mod sinks;

#[path = "common/campaign.rs"]
mod campaign;

use serde_json::{Value, json};

use campaign::{WAIT, post, send_campaign, start, sw_result, sw_state};
use common::{TestServer, wait_until};
use fake_platform::FakePlatform;
use sinks::{Answer, HttpSink};

fn get_json(server: &TestServer, path: &str) -> Value {
    let reply = server.get(path);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    let content_type = reply.headers["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{path}: {content_type}"
    );
    reply.json()
}

#[test]
fn a_campaign_of_200_devices_is_counted_as_worked_out_by_hand() {
    let fake = FakePlatform::start();
    let sink = HttpSink::start();
    let server = start(&fake, &sink);
    send_campaign(&server);
    server.wait_until_processed();
    // 70 software failures and 3 firmware ones, each retried once.
    let created = wait_until(WAIT, || fake.tasks().len() == 73);
    assert!(
        created,
        "tasks: {:?}\n{}",
        fake.tasks().len(),
        server.logs()
    );

    let campaigns = get_json(&server, "/api/v1/campaigns");
    let list = campaigns.as_array().expect("an array");
    assert_eq!(list.len(), 2, "{campaigns:#}");
    assert_eq!(
        list[0]["kind"], "firmware",
        "most recent first: {campaigns:#}"
    );
    assert_eq!(list[0]["target_version"], "V1.0.4");
    assert_eq!(list[0]["failed"], 3);
    let software = &list[1];
    assert_eq!(software["kind"], "software");
    assert_eq!(software["target_version"], "1.5");
    for (key, expected) in [
        ("devices", 200),
        ("succeeded", 160),
        ("failed", 30),
        ("in_progress", 10),
        ("recovered", 40),
        ("retries", 70),
    ] {
        assert_eq!(software[key], expected, "{key}: {software:#}");
    }
    let fail_rate = software["fail_rate"].as_f64().unwrap();
    assert!((fail_rate - 30.0 / 190.0).abs() < 1e-12, "{fail_rate}");
    for key in ["first_at", "last_at"] {
        let at = software[key].as_str().unwrap();
        assert!(at.ends_with('Z') && at.contains('T'), "{key}: {at}");
    }

    let detail = get_json(&server, "/api/v1/campaigns/software/1.5");
    for key in [
        "devices",
        "succeeded",
        "failed",
        "in_progress",
        "recovered",
        "retries",
        "fail_rate",
    ] {
        assert_eq!(detail[key], software[key], "{key}");
    }
    assert_eq!(
        detail["error_codes"],
        json!([{"code": "7", "devices": 20}, {"code": "12", "devices": 10}])
    );
    let timeline = detail["timeline"].as_array().unwrap();
    let sum = |key: &str| {
        timeline
            .iter()
            .map(|point| point[key].as_u64().unwrap())
            .sum::<u64>()
    };
    // 120 + 40 + 1 successes, 70 failures.
    assert_eq!(
        (sum("succeeded"), sum("failed")),
        (161, 70),
        "{timeline:#?}"
    );

    // The tasks: op-A, op-B, op-C from results, and the 70 that the retries created.
    let mut operations = Vec::new();
    let all_known = wait_until(WAIT, || {
        operations = get_json(&server, "/api/v1/campaigns/software/1.5")["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op.as_str().unwrap().to_owned())
            .collect();
        operations.len() == 73
    });
    assert!(all_known, "{operations:?}; created {:?}", fake.tasks());
    for known in ["op-A", "op-B", "op-C"] {
        assert!(
            operations.iter().any(|op| op == known),
            "{known} in {operations:?}"
        );
    }
    let firmware = get_json(&server, "/api/v1/campaigns/firmware/V1.0.4");
    assert_eq!(
        firmware["error_codes"],
        json!([{"code": "FAIL", "devices": 3}])
    );
    assert_eq!(server.get("/api/v1/campaigns/software/9.9").status, 404);
    assert_eq!(server.get("/api/v1/campaigns/bogus/1.5").status, 404);

    // A recovered device: its failure, its success, and the retry the failure queued.
    let history = get_json(&server, "/api/v1/devices/d120");
    assert_eq!(history["device_id"], "d120");
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{history:#}");
    assert!(
        events[0]["summary"].as_str().unwrap().contains("SUCCESS"),
        "{history:#}"
    );
    assert!(
        events[1]["summary"].as_str().unwrap().contains("error 7"),
        "{history:#}"
    );
    for key in ["id", "received_at", "notify_type", "status"] {
        assert!(events[0].get(key).is_some(), "{key}: {history:#}");
    }
    let actions = history["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{history:#}");
    assert_eq!(actions[0]["op"], "retry_upgrade");
    assert_eq!(actions[0]["status"], "sent");
    assert_eq!(actions[0]["attempts"], 1);
    assert!(actions[0]["id"].is_string());
}

#[test]
fn events_and_dead_letters_answer_as_the_cli_does_and_can_be_retried_and_dropped() {
    let fake = FakePlatform::start();
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(500));
    let server = start(&fake, &sink);
    post(&server, &sw_result("d1", "op-A", "a1", None));
    post(
        &server,
        &json!({"notifyType": "customAlert", "deviceId": "d2"}),
    );
    server.wait_until_processed();

    let api = get_json(&server, "/api/v1/events?type=customAlert&limit=5");
    let output = server.cli(&[
        "events",
        "list",
        "--json",
        "--type",
        "customAlert",
        "--limit",
        "5",
    ]);
    assert_eq!(api, Value::from(common::json_lines(&output)));
    assert_eq!(server.get("/api/v1/events?status=bogus").status, 400);

    let mut dead = Value::Null;
    let died = wait_until(WAIT, || {
        dead = get_json(&server, "/api/v1/dead");
        dead.as_array().is_some_and(|list| list.len() == 1)
    });
    assert!(died, "{dead:#}\n{}", server.logs());
    let output = server.cli(&["dead", "list", "--json"]);
    assert_eq!(dead, Value::from(common::json_lines(&output)));
    let id = dead[0]["id"].as_str().unwrap().to_owned();

    // A cross-site form cannot send JSON: anything else is refused before anything changes.
    let form = server.post_raw(
        &format!("/api/v1/dead/{id}/retry"),
        Some("application/x-www-form-urlencoded"),
        b"x=1",
    );
    assert_eq!(form.status, 415, "{}", form.text());
    assert_eq!(
        server.post_json("/api/v1/dead/nope/retry", "{}").status,
        404
    );
    assert_eq!(server.post_json("/api/v1/dead/nope/drop", "{}").status, 404);

    let retried = server.post_json(&format!("/api/v1/dead/{id}/retry"), "{}");
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert_eq!(retried.json(), json!({"id": id, "status": "pending"}));
    // It fails again (the sink still answers 500) and is dead once more; then it is dropped.
    let dead_again = wait_until(WAIT, || {
        get_json(&server, "/api/v1/dead")
            .as_array()
            .is_some_and(|list| list.len() == 1)
            && sink.requests().len() == 2
    });
    assert!(dead_again, "{}", server.logs());
    let dropped = server.post_json(&format!("/api/v1/dead/{id}/drop"), "{}");
    assert_eq!(dropped.json(), json!({"id": id, "status": "dropped"}));
    assert_eq!(get_json(&server, "/api/v1/dead"), json!([]));
}

const SCRIPT: &str = "<script>alert(1)</script>";

#[test]
fn every_page_escapes_what_the_network_sent_and_forbids_inline_script() {
    let fake = FakePlatform::start();
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(500).body(SCRIPT));
    let server = start(&fake, &sink);
    let mut failure = sw_result(SCRIPT, SCRIPT, SCRIPT, Some(SCRIPT));
    for field in [
        "appId",
        "curVersion",
        "targetVersion",
        "sourceVersion",
        "resultDesc",
        "description",
    ] {
        failure[field] = json!(SCRIPT);
    }
    post(&server, &failure);
    let mut state = sw_state(SCRIPT, SCRIPT);
    state["swUpgradeState"] = json!(SCRIPT);
    post(&server, &state);
    post(&server, &json!({"notifyType": SCRIPT, "deviceId": SCRIPT}));
    post(
        &server,
        &json!({"notifyType": "customAlert", "deviceId": SCRIPT}),
    );
    server.wait_until_processed();
    let died = wait_until(WAIT, || {
        get_json(&server, "/api/v1/dead")
            .as_array()
            .is_some_and(|l| !l.is_empty())
    });
    assert!(died, "{}", server.logs());
    let dead_id = get_json(&server, "/api/v1/dead")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let encoded = "%3Cscript%3Ealert%281%29%3C%2Fscript%3E";
    let pages = [
        "/ui/".to_owned(),
        format!("/ui/campaigns/software/{encoded}"),
        format!("/ui/campaigns/software/{encoded}?code={encoded}"),
        format!("/ui/devices/{encoded}"),
        format!("/ui/events?device={encoded}&type={encoded}"),
        "/ui/events".to_owned(),
        "/ui/dead".to_owned(),
        format!("/ui/dead/{dead_id}/retry"),
    ];
    for page in &pages {
        let reply = server.get(page);
        assert_eq!(reply.status, 200, "{page}: {}", reply.text());
        let html = reply.text();
        assert!(
            !html.contains("<script"),
            "{page} lets a script through:\n{html}"
        );
        assert!(
            html.contains("&lt;script&gt;"),
            "{page} shows the value escaped:\n{html}"
        );
        let policy = reply.headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("default-src 'none'") && !policy.contains("unsafe-inline"),
            "{policy}"
        );
        assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    }
    let csv = server.get(&format!("/ui/campaigns/software/{encoded}/devices.csv"));
    assert_eq!(csv.status, 200);
    assert!(
        csv.text().contains(SCRIPT),
        "the CSV carries the value as data: {}",
        csv.text()
    );
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
}

#[test]
fn a_page_form_without_its_csrf_token_changes_nothing() {
    let fake = FakePlatform::start();
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(500));
    let server = start(&fake, &sink);
    post(
        &server,
        &json!({"notifyType": "customAlert", "deviceId": "d1"}),
    );
    let died = wait_until(WAIT, || {
        get_json(&server, "/api/v1/dead")
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    assert!(died, "{}", server.logs());
    let id = get_json(&server, "/api/v1/dead")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = server.post_raw(
        &format!("/ui/dead/{id}/drop"),
        Some("application/x-www-form-urlencoded"),
        b"csrf=guess",
    );
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert_eq!(
        get_json(&server, "/api/v1/dead").as_array().unwrap().len(),
        1
    );

    let confirmation = server.get(&format!("/ui/dead/{id}/drop")).text();
    assert!(
        confirmation.contains("gives up on the webhook action"),
        "{confirmation}"
    );
    let token = confirmation
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the confirmation carries a CSRF token");
    let posted = server.post_raw(
        &format!("/ui/dead/{id}/drop"),
        Some("application/x-www-form-urlencoded"),
        format!("csrf={token}").as_bytes(),
    );
    // The answer is a redirect to the list, which says what was done.
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert!(posted.text().contains("dropped"), "{}", posted.text());
    assert_eq!(get_json(&server, "/api/v1/dead"), json!([]));
}

const TOKEN: &str = "dashboard-token-0123456789";

/// A client that shows redirects instead of following them, and keeps no cookies.
fn client_without_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn a_browser_logs_in_once_with_the_token_and_its_cookie_opens_the_pages() {
    let server = TestServer::start(&format!("[server.auth]\ntoken = \"{TOKEN}\"\n"));
    let http = client_without_redirects();
    assert_eq!(server.get("/ui/").status, 401);
    assert_eq!(server.get("/api/v1/campaigns").status, 401);
    assert_eq!(server.get("/ui/login").status, 200);

    let wrong = http
        .post(server.url("/ui/login"))
        .form(&[("token", "not-the-token-at-all")])
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let right = http
        .post(server.url("/ui/login"))
        .form(&[("token", TOKEN)])
        .send()
        .unwrap();
    assert_eq!(right.status(), 303);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let pair = cookie.split(';').next().unwrap();
    let page = http
        .get(server.url("/ui/"))
        .header("Cookie", pair)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let forged = http
        .get(server.url("/ui/"))
        .header("Cookie", "notirouter_token=guess")
        .send()
        .unwrap();
    assert_eq!(forged.status(), 401);
    let api = http
        .get(server.url("/api/v1/campaigns"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(api.status(), 200);
}

#[test]
fn ui_listen_serves_the_dashboard_on_its_own_address_only() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let server = TestServer::start(&format!(
        "[server.auth]\ntoken = \"{TOKEN}\"\n[ui]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let http = client_without_redirects();
    let own = http
        .get(format!("http://127.0.0.1:{port}/api/v1/campaigns"))
        .send()
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(own.json::<Value>().unwrap(), json!([]));
    let with_token = http
        .get(server.url("/api/v1/campaigns"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(with_token.status(), 404, "not on server.listen");
}
