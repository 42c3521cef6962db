//! The HTTP receiver against SPEC.md's HTTP section: what is accepted (with which warnings),
//! what is refused (with which status and body), duplicates, kept rejections, probes and
//! metrics. TLS and auth are not built in this version and are not tested here.

mod common;

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::fixtures::{self, with, without};
use common::{
    MODES, RECEIVER, RECEIVER_CMD, Reply, SETTLE_TIMEOUT, TestServer, metric, wait_until,
};
use serde_json::{Value, json};

/// `max_body_bytes` of most servers here: room for 10,000-deep nesting, and a 413 is cheap.
const BODY_LIMIT: usize = 60_000;
/// `max_body_bytes` where the limit itself is under test.
const SMALL_BODY_LIMIT: usize = 1024;

fn start_in(mode: &str) -> TestServer {
    TestServer::start(&format!(
        "[server]\nvalidation = \"{mode}\"\nmax_body_bytes = {BODY_LIMIT}\n"
    ))
}

fn post(server: &TestServer, path: &str, body: &Value) -> Reply {
    server.post_json(path, &body.to_string())
}

/// The event `events list` shows with this id.
fn listed_event(server: &TestServer, id: &str) -> Value {
    server
        .events(&[])
        .into_iter()
        .find(|event| event["id"] == id)
        .unwrap_or_else(|| panic!("event {id} is not listed"))
}

/// A known type with one invalid field: lenient accepts it with this warning, strict refuses it
/// naming the field.
struct InvalidCase {
    name: &'static str,
    body: Value,
    field: &'static str,
    error: &'static str,
}

fn invalid_cases() -> Vec<InvalidCase> {
    let case = |name, body, field, error| InvalidCase {
        name,
        body,
        field,
        error,
    };
    vec![
        case(
            "missing field",
            without(fixtures::sw_fail("missing"), "appId"),
            "appId",
            "missing",
        ),
        case(
            "null field",
            with(fixtures::sw_fail("null"), "operationId", Value::Null),
            "operationId",
            "null",
        ),
        case(
            "number for deviceId",
            with(fixtures::sw_fail("x"), "deviceId", json!(42)),
            "deviceId",
            "must be a string",
        ),
        case(
            "FAIL without errorCode",
            without(fixtures::sw_fail("no-error-code"), "errorCode"),
            "errorCode",
            "missing (mandatory when swUpgradeResult is FAIL)",
        ),
        case(
            "FAIL with a numeric errorCode",
            with(
                fixtures::sw_fail("numeric-error-code"),
                "errorCode",
                json!(7),
            ),
            "errorCode",
            "must be a string (mandatory when swUpgradeResult is FAIL)",
        ),
        case(
            "boolean upgradeTime",
            with(fixtures::sw_fail("bool-time"), "upgradeTime", json!(true)),
            "upgradeTime",
            "must be a string or a number",
        ),
        case(
            "firmware version as a number",
            with(fixtures::fw_result("fw-version"), "curVersion", json!(13)),
            "curVersion",
            "must be a string",
        ),
        case(
            "software state missing",
            without(fixtures::sw_state("sw-state"), "swUpgradeState"),
            "swUpgradeState",
            "missing",
        ),
        case(
            "firmware step as an object",
            with(fixtures::fw_state("fw-step"), "step", json!({"n": 2})),
            "step",
            "must be a string or a number",
        ),
        case(
            "command result not an object",
            with(
                fixtures::command_status("cmd"),
                "result",
                json!("DELIVERED"),
            ),
            "result",
            "must be an object",
        ),
        case(
            "numeric resultDesc",
            with(fixtures::sw_fail("result-desc"), "resultDesc", json!(12345)),
            "resultDesc",
            "must be a string",
        ),
        case(
            "boolean description",
            with(fixtures::sw_fail("description"), "description", json!(true)),
            "description",
            "must be a string",
        ),
        case(
            "numeric errorCode on SUCCESS",
            with(fixtures::sw_success("success-code"), "errorCode", json!(0)),
            "errorCode",
            "must be a string",
        ),
        case(
            "array statusDesc",
            with(fixtures::fw_result("status-desc"), "statusDesc", json!([])),
            "statusDesc",
            "must be a string",
        ),
        case(
            "boolean firmware upgradeTime",
            with(fixtures::fw_result("fw-time"), "upgradeTime", json!(false)),
            "upgradeTime",
            "must be a string or a number",
        ),
        case(
            "numeric stepDesc",
            with(fixtures::fw_state("step-desc"), "stepDesc", json!(2)),
            "stepDesc",
            "must be a string",
        ),
        case(
            "no notifyType and not command-shaped",
            json!({"deviceId": "untyped", "operationId": "o"}),
            "notifyType",
            "missing; the body is neither a typed notification nor a command-status push",
        ),
        case(
            "non-string notifyType",
            with(fixtures::sw_fail("numeric-type"), "notifyType", json!(7)),
            "notifyType",
            "must be a string naming the notification type",
        ),
    ]
}

/// A body that cannot be a platform notification at all, refused in both modes.
struct BadInput {
    name: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn bad_inputs() -> Vec<BadInput> {
    let json = Some("application/json");
    let bad = |name, content_type, body: &[u8], status| BadInput {
        name,
        content_type,
        body: body.to_vec(),
        status,
    };
    let deep_arrays = "[".repeat(10_000) + &"]".repeat(10_000);
    let deep_objects = "{\"\":".repeat(10_000) + "1" + &"}".repeat(10_000);
    let too_large = format!(
        "{{\"notifyType\":\"x\",\"pad\":\"{}\"}}",
        "p".repeat(BODY_LIMIT)
    );
    vec![
        bad("not JSON", json, b"{\"notifyType\": ", 400),
        bad("plain words", json, b"hello platform", 400),
        bad(
            "invalid UTF-8",
            json,
            b"{\"notifyType\":\"sw\xff\xfe\"}",
            400,
        ),
        bad("JSON array", json, b"[{\"notifyType\":\"x\"}]", 400),
        bad("JSON string", json, b"\"swUpgradeResultNotify\"", 400),
        bad("JSON number", json, b"42", 400),
        bad("JSON null", json, b"null", 400),
        bad("empty body", json, b"", 400),
        bad("empty body without content type", None, b"", 400),
        bad("10,000-deep arrays", json, deep_arrays.as_bytes(), 400),
        bad("10,000-deep objects", json, deep_objects.as_bytes(), 400),
        bad("byte-order mark", json, "\u{feff}{}".as_bytes(), 400),
        bad("two objects", json, b"{}{}", 400),
        bad("over max_body_bytes", json, too_large.as_bytes(), 413),
        bad(
            "text/plain",
            Some("text/plain"),
            b"{\"notifyType\":\"x\"}",
            415,
        ),
        bad(
            "xml",
            Some("application/xml"),
            b"{\"notifyType\":\"x\"}",
            415,
        ),
        bad(
            "jsonx",
            Some("application/jsonx"),
            b"{\"notifyType\":\"x\"}",
            415,
        ),
        bad(
            "form",
            Some("application/x-www-form-urlencoded"),
            b"a=1",
            415,
        ),
    ]
}

#[test]
fn well_formed_notifications_are_accepted_without_warnings() {
    for mode in MODES {
        let server = start_in(mode);
        let mut expected = Vec::new();
        for (name, body) in fixtures::all_well_formed("dev-main") {
            let id = post(&server, RECEIVER, &body).accepted_clean();
            expected.push((name, id));
        }
        let on_cmd = post(&server, RECEIVER_CMD, &fixtures::sw_fail("dev-cmd")).accepted_clean();
        expected.push(("sw_fail on /cmd", on_cmd));

        let listed: BTreeSet<String> = server.event_ids().into_iter().collect();
        for (name, id) in &expected {
            assert!(listed.contains(id), "{mode}: {name} ({id}) is not listed");
        }
        assert_eq!(listed.len(), expected.len(), "{mode}");
    }
}

#[test]
fn the_stored_body_is_the_raw_body_byte_for_byte() {
    let server = TestServer::start("");
    // Layout, key order, escapes and non-ASCII text that any re-serialisation would change.
    let body = "  {\"swUpgradeResult\" : \"FAIL\",\r\n\t\"notifyType\":\"swUpgradeResultNotify\",\
        \"deviceId\":\"d\\u00e9v-\u{e9}-\u{1F600}\",  \"appId\":\"a\\/b\",\"operationId\":\"o\",\
        \"subOperationId\":\"s\",\"curVersion\":\"1.3\",\"targetVersion\":\"1.5\",\
        \"sourceVersion\":\"1.3\",\"upgradeTime\":1.50E2,\"errorCode\":\"7\",\"z\":[ 1 ,2 ] }\n ";
    let id = server.post_json(RECEIVER, body).accepted_clean();

    let output = server.cli(&["events", "show", &id]);
    common::assert_exit(&output, 0);
    let text = common::stdout(&output);
    let (_, shown) = text
        .split_once("\nbody:        ")
        .unwrap_or_else(|| panic!("`events show` prints the body: {text}"));
    // `events show` ends the body with one newline of its own.
    assert_eq!(shown.strip_suffix('\n'), Some(body));

    let output = server.cli(&["events", "show", &id, "--json"]);
    common::assert_exit(&output, 0);
    let shown: Value = serde_json::from_slice(&output.stdout).expect("show --json is JSON");
    let parsed: Value = serde_json::from_str(body).expect("the test body is JSON");
    assert_eq!(shown["body"], parsed);
    assert_eq!(shown["device_id"], "dév-é-\u{1F600}");
}

#[test]
fn lenient_mode_accepts_invalid_fields_and_reports_them_as_warnings() {
    let server = start_in("lenient");
    for case in invalid_cases() {
        let (id, warnings) = post(&server, RECEIVER, &case.body).accepted();
        let expected = json!([{"field": case.field, "error": case.error}]);
        assert_eq!(warnings, expected, "{}", case.name);
        // The warnings are stored with the event, for scripts and `events list`.
        assert_eq!(
            listed_event(&server, &id)["warnings"],
            expected,
            "{}",
            case.name
        );
    }
}

#[test]
fn strict_mode_refuses_invalid_fields_naming_the_field() {
    let server = start_in("strict");
    for case in invalid_cases() {
        let reply = post(&server, RECEIVER, &case.body);
        assert_eq!(reply.status, 400, "{}: {}", case.name, reply.text());
        assert_eq!(
            reply.json(),
            json!({"error": format!("{}: {}", case.field, case.error), "field": case.field}),
            "{}",
            case.name
        );
    }
    assert_eq!(
        server.event_ids(),
        Vec::<String>::new(),
        "nothing is stored"
    );
}

#[test]
fn undocumented_enumeration_values_are_warnings_in_both_modes() {
    let cases = [
        (
            with(
                fixtures::sw_fail("enum-1"),
                "swUpgradeResult",
                json!("FAILED"),
            ),
            "swUpgradeResult",
            "undocumented value \"FAILED\"; expected one of SUCCESS, FAIL",
        ),
        (
            with(fixtures::fw_result("enum-2"), "status", json!("ABORTED")),
            "status",
            "undocumented value \"ABORTED\"; expected one of SUCCESS, FAIL",
        ),
        (
            with(
                fixtures::sw_state("enum-3"),
                "swUpgradeState",
                json!("paused"),
            ),
            "swUpgradeState",
            "undocumented value \"paused\"; expected one of downloading, downloaded, updating, idle",
        ),
        (
            with(
                fixtures::command_status("enum-4"),
                "result",
                json!({"resultCode": "TIMEOUT", "resultDetail": null}),
            ),
            "result.resultCode",
            "undocumented value \"TIMEOUT\"; expected one of SENT, DELIVERED, SUCCESS, FAIL",
        ),
    ];
    for mode in MODES {
        let server = start_in(mode);
        for (body, field, error) in &cases {
            let (_, warnings) = post(&server, RECEIVER, body).accepted();
            assert_eq!(
                warnings,
                json!([{"field": field, "error": error}]),
                "{mode}"
            );
        }
    }
}

#[test]
fn numeric_upgrade_time_and_step_are_well_formed_in_both_modes() {
    for mode in MODES {
        let server = start_in(mode);
        for body in [
            with(fixtures::sw_fail("numeric"), "upgradeTime", json!(120)),
            with(fixtures::fw_result("numeric"), "upgradeTime", json!(300)),
            with(fixtures::fw_state("numeric"), "step", json!(2)),
        ] {
            post(&server, RECEIVER, &body).accepted_clean();
        }
    }
}

#[test]
fn unknown_notify_types_are_accepted_without_warnings_in_both_modes() {
    for mode in MODES {
        let server = start_in(mode);
        let device_added = json!({"notifyType": "deviceAdded", "deviceId": "d1", "gatewayId": "g"});
        let invented = json!({"notifyType": "somethingNewIn2027", "anything": [1, {"x": null}]});
        for (body, notify_type) in [
            (device_added, "deviceAdded"),
            (invented, "somethingNewIn2027"),
        ] {
            let id = post(&server, RECEIVER, &body).accepted_clean();
            assert_eq!(
                listed_event(&server, &id)["notify_type"],
                notify_type,
                "{mode}"
            );
        }
    }
}

#[test]
fn command_status_pushes_are_recognised_by_shape_on_any_path() {
    for mode in MODES {
        let server = start_in(mode);
        let on_main =
            post(&server, RECEIVER, &fixtures::command_status("dev-main")).accepted_clean();
        let on_cmd =
            post(&server, RECEIVER_CMD, &fixtures::command_status("dev-cmd")).accepted_clean();
        let listed = server.events(&["--type", "NBCommandStateChanged"]);
        let ids: Vec<&Value> = listed.iter().map(|event| &event["id"]).collect();
        assert_eq!(ids, [&json!(on_cmd), &json!(on_main)], "{mode}");
        assert_eq!(listed[0]["device_id"], "dev-cmd", "{mode}");
        assert_eq!(listed[0]["warnings"], json!([]), "{mode}");
    }
}

#[test]
fn bodies_that_cannot_be_notifications_are_refused() {
    for mode in MODES {
        let server = start_in(mode);
        for input in bad_inputs() {
            let reply = server.post_raw(RECEIVER, input.content_type, &input.body);
            assert_eq!(
                reply.status,
                input.status,
                "{mode}, {}: {}",
                input.name,
                reply.text()
            );
            reply.error(input.status);
        }
        assert_eq!(
            server.event_ids(),
            Vec::<String>::new(),
            "{mode}: nothing is stored"
        );
    }
}

#[test]
fn deeply_nested_json_is_refused_and_the_server_keeps_serving() {
    let server = TestServer::start("");
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    server.post_json(RECEIVER, &deep).error(400);
    assert_eq!(server.get("/healthz").status, 200);
    post(&server, RECEIVER, &fixtures::sw_fail("after")).accepted_clean();
}

#[test]
fn a_body_over_max_body_bytes_is_refused_with_413_and_one_at_the_limit_is_accepted() {
    let server = TestServer::start(&format!("[server]\nmax_body_bytes = {SMALL_BODY_LIMIT}\n"));
    let compact = fixtures::sw_fail("limit").to_string();
    // Trailing whitespace is valid JSON: the body's size changes, not its content.
    let at_limit = format!("{compact}{}", " ".repeat(SMALL_BODY_LIMIT - compact.len()));
    let over_limit = format!("{at_limit} ");
    let error = server.post_json(RECEIVER, &over_limit).error(413);
    assert!(error.contains("max_body_bytes"), "{error}");
    server.post_json(RECEIVER, &at_limit).accepted_clean();
}

#[test]
fn a_content_type_that_is_not_json_is_refused_with_415() {
    let server = TestServer::start("");
    let body = fixtures::sw_fail("typed").to_string();
    for content_type in [
        "text/plain",
        "application/xml",
        "text/json",
        "application/jsonx",
    ] {
        let error = server
            .post_raw(RECEIVER, Some(content_type), body.as_bytes())
            .error(415);
        assert!(error.contains(content_type), "{content_type}: {error}");
    }
    assert_eq!(server.event_ids(), Vec::<String>::new());
}

#[test]
fn json_content_types_are_accepted_whatever_their_case_and_parameters() {
    let server = TestServer::start("");
    for content_type in [
        Some("application/json; charset=UTF-8"),
        Some("APPLICATION/JSON"),
        Some("application/vnd.x+json"),
        None,
    ] {
        let body = fixtures::sw_fail(&format!("{content_type:?}")).to_string();
        let reply = server.post_raw(RECEIVER, content_type, body.as_bytes());
        assert_eq!(reply.status, 200, "{content_type:?}: {}", reply.text());
        reply.accepted_clean();
    }
}

#[test]
fn unknown_paths_are_404() {
    let server = TestServer::start("");
    let body = fixtures::sw_fail("lost").to_string();
    for path in [
        "/",
        "/v1.0.0/other",
        "/v1.0.0/messageReceiver/other",
        "/v1.0.0/messageReceiver/cmd/more",
    ] {
        assert_eq!(server.post_json(path, &body).status, 404, "{path}");
    }
    assert_eq!(server.get("/nothing-here").status, 404);
}

#[test]
fn other_methods_on_a_receiver_path_are_405() {
    let server = TestServer::start("");
    for path in [RECEIVER, RECEIVER_CMD] {
        let reply = server.get(path);
        assert_eq!(reply.status, 405, "GET {path}: {}", reply.text());
    }
}

#[test]
fn no_input_is_answered_with_a_5xx() {
    let odd_inputs: [&[u8]; 6] = [
        b"{\"notifyType\":\"x\",\"n\":1e999}",
        b"{\"notifyType\":\"a\",\"notifyType\":\"b\"}",
        b"{\"notifyType\":\"x\",\"k\":\"\\ud800\"}",
        b"{\"notifyType\":\"x\",\"nul\":\"\0\"}",
        b"{\"notifyType\":\"x\",\"n\":18446744073709551616}",
        b"{\"notifyType\":\"\",\"deviceId\":\"\"}",
    ];
    for mode in MODES {
        let server = start_in(mode);
        let mut inputs: Vec<(String, Option<&str>, Vec<u8>)> = bad_inputs()
            .into_iter()
            .map(|input| (input.name.to_owned(), input.content_type, input.body))
            .collect();
        inputs.extend(invalid_cases().into_iter().map(|case| {
            let body = case.body.to_string().into_bytes();
            (case.name.to_owned(), Some("application/json"), body)
        }));
        inputs.extend(odd_inputs.iter().map(|body| {
            (
                String::from_utf8_lossy(body).into_owned(),
                Some("application/json"),
                body.to_vec(),
            )
        }));
        for (name, content_type, body) in &inputs {
            for path in [RECEIVER, RECEIVER_CMD] {
                let reply = server.post_raw(path, *content_type, body);
                assert!(
                    reply.status < 500,
                    "{mode}, {name} on {path}: {}",
                    reply.status
                );
            }
        }
        assert_eq!(server.get("/healthz").status, 200, "{mode}");
    }
}

#[test]
fn a_repeated_body_is_a_duplicate_of_the_first_copy() {
    let server = TestServer::start("");
    let body = fixtures::sw_fail("again");
    let first = post(&server, RECEIVER, &body).accepted_clean();
    assert_eq!(post(&server, RECEIVER, &body).duplicate(), first);
    assert_eq!(post(&server, RECEIVER, &body).duplicate(), first);
    assert_eq!(server.event_ids(), [first]);
}

/// `value`'s top-level keys in reverse order, spread over lines with odd spacing.
fn reformatted(value: &Value) -> String {
    let object = value.as_object().expect("fixtures are objects");
    let fields: Vec<String> = object
        .iter()
        .rev()
        .map(|(key, item)| format!("\n\t{}  :   {}", json!(key), item))
        .collect();
    format!("  {{{} \n}}\n", fields.join(" ,"))
}

#[test]
fn a_reformatted_body_is_a_duplicate_but_a_changed_value_is_not() {
    let server = TestServer::start("");
    let body = fixtures::sw_fail("layout");
    let first = post(&server, RECEIVER, &body).accepted_clean();
    assert_eq!(
        server.post_json(RECEIVER, &reformatted(&body)).duplicate(),
        first
    );

    let changed = with(body, "upgradeTime", json!("121"));
    let second = post(&server, RECEIVER, &changed).accepted_clean();
    assert_ne!(second, first);
}

#[test]
fn a_copy_on_another_path_is_a_duplicate() {
    let server = TestServer::start("");
    let body = fixtures::command_status("moved");
    let first = post(&server, RECEIVER, &body).accepted_clean();
    assert_eq!(post(&server, RECEIVER_CMD, &body).duplicate(), first);
}

#[test]
fn concurrent_identical_posts_store_one_event() {
    const COPIES: usize = 20;
    let server = TestServer::start("");
    let body = fixtures::sw_fail("storm").to_string();
    let start_together = Barrier::new(COPIES);
    // Released at once, the copies mostly land in one write batch, where they must still be
    // recognised as one event.
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let posts: Vec<_> = (0..COPIES)
            .map(|_| {
                scope.spawn(|| {
                    start_together.wait();
                    server.post_json(RECEIVER, &body)
                })
            })
            .collect();
        posts
            .into_iter()
            .map(|post| post.join().expect("a posting thread does not panic"))
            .collect()
    });
    let (accepted, duplicates): (Vec<&Reply>, Vec<&Reply>) = replies
        .iter()
        .partition(|reply| reply.status == 200 && reply.json()["status"] == "accepted");
    assert_eq!(accepted.len(), 1, "{replies:?}");
    let id = accepted[0].accepted_clean();
    for duplicate in duplicates {
        assert_eq!(duplicate.duplicate(), id);
    }
    assert_eq!(server.event_ids(), [id]);
}

/// When the server stamped event `id` as received.
fn received_at(server: &TestServer, id: &str) -> SystemTime {
    let event = listed_event(server, id);
    let stamp = event["received_at"]
        .as_str()
        .expect("received_at is a string");
    humantime::parse_rfc3339_weak(stamp).expect("received_at is RFC 3339")
}

#[test]
fn the_dedup_window_runs_from_the_first_copy_and_is_not_extended_by_duplicates() {
    const WINDOW: Duration = Duration::from_secs(2);
    let server = TestServer::start("[store]\ndedup_window = \"2s\"\n");
    let body = fixtures::sw_fail("window");
    let first = post(&server, RECEIVER, &body).accepted_clean();
    assert_eq!(post(&server, RECEIVER, &body).duplicate(), first);

    // Copies posted without pause: were each duplicate to restart the window, none would ever
    // be new again.
    let mut second = None;
    let renewed = wait_until(SETTLE_TIMEOUT, || {
        let reply = post(&server, RECEIVER, &body);
        match reply.json()["status"].as_str() {
            Some("duplicate") => assert_eq!(reply.duplicate(), first),
            _ => second = Some(reply.accepted_clean()),
        }
        second.is_some()
    });
    assert!(renewed, "copies were duplicates for {SETTLE_TIMEOUT:?}");
    let second = second.expect("set with renewed");
    assert_ne!(second, first);
    // ...and not before the window has passed, by the server's own stamps.
    let apart = received_at(&server, &second)
        .duration_since(received_at(&server, &first))
        .expect("the second copy came later");
    assert!(
        apart >= WINDOW,
        "a new event only {apart:?} after the first"
    );
    assert_eq!(post(&server, RECEIVER, &body).duplicate(), second);
}

fn now_millis() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since_epoch.as_millis()).expect("milliseconds fit an i64")
}

#[test]
fn rejected_bodies_are_kept_truncated_with_their_reason() {
    const KEPT: usize = 16;
    let server = TestServer::start(&format!(
        "[server]\nvalidation = \"strict\"\nmax_body_bytes = {SMALL_BODY_LIMIT}\n\
         [store]\nrejected_max_bytes = {KEPT}\n"
    ));
    let started = now_millis();
    let too_large = "x".repeat(2 * SMALL_BODY_LIMIT);
    let invalid_field = with(fixtures::sw_fail("z"), "deviceId", json!(42)).to_string();
    // (content type, body, status, a word the kept reason must contain)
    let refused = [
        (
            "application/json",
            "this is not JSON, not even close".to_owned(),
            400,
            "JSON",
        ),
        ("application/json", too_large, 413, "max_body_bytes"),
        (
            "text/plain",
            "{\"notifyType\":\"plain text\"}".to_owned(),
            415,
            "text/plain",
        ),
        ("application/json", invalid_field, 400, "deviceId"),
    ];
    for (content_type, body, status, _) in &refused {
        let reply = server.post_raw(RECEIVER_CMD, Some(content_type), body.as_bytes());
        assert_eq!(reply.status, *status, "{}", reply.text());
    }

    // The store writer keeps refused bodies in the background.
    let mut rows = Vec::new();
    let all_kept = wait_until(SETTLE_TIMEOUT, || {
        rows = server.rejected_rows();
        rows.len() == refused.len()
    });
    assert!(all_kept, "kept: {rows:?}");
    let finished = now_millis();
    for (row, (content_type, body, status, reason_word)) in rows.iter().zip(&refused) {
        assert_eq!(row.path, RECEIVER_CMD);
        assert_eq!(row.remote_addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(row.content_type.as_deref(), Some(*content_type));
        assert_eq!(row.body, body.as_bytes()[..KEPT], "{status}: {row:?}");
        assert!(row.reason.contains(reason_word), "{status}: {row:?}");
        assert!((started..=finished).contains(&row.received_at), "{row:?}");
        if *status == 413 {
            // The body is read only up to the limit, so its whole length is not known.
            assert!(row.body_len >= SMALL_BODY_LIMIT as i64, "{row:?}");
        } else {
            assert_eq!(row.body_len, body.len() as i64, "{row:?}");
        }
    }
}

#[test]
fn rejected_bodies_are_bounded_by_rejected_max_count_keeping_the_newest() {
    let server = TestServer::start("[store]\nrejected_max_count = 3\n");
    let bodies: Vec<String> = (1..=5).map(|n| format!("bad body {n}")).collect();
    for body in &bodies {
        server.post_json(RECEIVER, body).error(400);
    }
    let mut kept = Vec::new();
    let newest_kept = wait_until(SETTLE_TIMEOUT, || {
        kept = server
            .rejected_rows()
            .into_iter()
            .map(|row| String::from_utf8_lossy(&row.body).into_owned())
            .collect();
        kept.last() == bodies.last()
    });
    assert!(newest_kept, "kept: {kept:?}");
    assert_eq!(kept, bodies[2..]);
}

#[test]
fn health_and_readiness_probes_answer_200() {
    let server = TestServer::start("");
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn metrics_count_notifications_rejections_warnings_and_commits() {
    let server = start_in("lenient");
    let body = fixtures::sw_fail("metrics");
    post(&server, RECEIVER, &body).accepted_clean();
    let accepted = "notirouter_notifications_received_total\
                    {notify_type=\"swUpgradeResultNotify\",outcome=\"accepted\"}";
    assert_eq!(metric(&server.metrics(), accepted), Some(1.0));

    post(&server, RECEIVER, &body).duplicate();
    server.post_json(RECEIVER, "not json").error(400);
    let two_problems = without(without(fixtures::sw_fail("warned"), "errorCode"), "appId");
    post(&server, RECEIVER, &two_problems).accepted();

    let text = server.metrics();
    let expectations = [
        (accepted, 2.0),
        (
            "notirouter_notifications_received_total\
             {notify_type=\"swUpgradeResultNotify\",outcome=\"duplicate\"}",
            1.0,
        ),
        ("notirouter_rejections_total{reason=\"not_json\"}", 1.0),
        (
            "notirouter_notification_warnings_total{notify_type=\"swUpgradeResultNotify\"}",
            2.0,
        ),
    ];
    for (series, value) in expectations {
        assert_eq!(metric(&text, series), Some(value), "{series}\n{text}");
    }
    let commits = metric(&text, "notirouter_store_commit_duration_seconds_count");
    assert!(commits.is_some_and(|count| count >= 1.0), "{text}");
    let batched = metric(&text, "notirouter_store_commit_batch_events_sum");
    assert!(batched.is_some_and(|events| events >= 3.0), "{text}");
    assert!(
        metric(&text, "notirouter_store_queue_depth").is_some(),
        "{text}"
    );
}

/// Each of the server's threads by name, with its nice value (from `/proc`); a thread that
/// ends while it is read is left out.
fn thread_nice_values(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    tasks
        .filter_map(|task| {
            let task = task.ok()?.path();
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            // Fields after the parenthesised name; nice is the 19th field of the whole line.
            let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
            let nice = after_name.split(' ').nth(16).expect("a nice field");
            Some((
                name.trim().to_owned(),
                nice.parse().expect("a numeric nice value"),
            ))
        })
        .collect()
}

#[test]
fn background_stages_run_nicer_than_the_receiver() {
    let server = TestServer::start("");
    server
        .post_json(RECEIVER, &fixtures::sw_fail("warm").to_string())
        .accepted_clean();
    // Some stages start their threads on their first work: wait until every one is there.
    let stages = [
        "actix-rt",
        "store-writer",
        "store-checkpoin",
        "script-0",
        "deliver",
        "deliver-store",
    ];
    let mut threads = Vec::new();
    let all_started = wait_until(SETTLE_TIMEOUT, || {
        threads = thread_nice_values(server.pid());
        stages
            .iter()
            .all(|stage| threads.iter().any(|(name, _)| name.starts_with(stage)))
    });
    assert!(all_started, "not every stage's thread started: {threads:?}");
    let nice_of = |prefix: &str| {
        threads
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, nice)| *nice)
            .unwrap_or_else(|| panic!("no thread named {prefix}*: {threads:?}"))
    };
    let receiver = nice_of("actix-rt");
    // Checkpoints use little CPU, and a delayed one only makes the next longer.
    for foreground in ["store-writer", "store-checkpoin"] {
        assert_eq!(nice_of(foreground), receiver, "{foreground}: {threads:?}");
    }
    for background in ["script-0", "deliver", "deliver-store"] {
        assert_eq!(
            nice_of(background),
            (receiver + 10).min(19),
            "{background}: {threads:?}"
        );
    }
}
