//! Delivery against SPEC.md "Delivery": the real binary sends the actions its plugins queue to
//! loopback doubles ([`HttpSink`], [`SmtpSink`]) and the tests check what arrives (signed,
//! once, byte-identical on retries), when it arrives (backoff, `Retry-After`, the circuit
//! breaker), what is given up (dead letters, `actionFailed`, the `dead` commands), that a slow
//! destination holds up no other, that nothing is lost across `kill -9`, that payloads survive
//! any text, that secrets stay out of the logs, and what `/metrics` counts.
//!
//! Times are asserted as lower bounds only (a server may always be later than asked, never
//! earlier), with the jitter of SPEC.md's backoff (×0.8) allowed for.

mod common;
#[path = "common/sinks.rs"]
mod sinks;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use common::{
    RECEIVER, TestServer, all_output, assert_exit, json_lines, keys, metric, stdout, wait_until,
};
use sinks::{Answer, HttpSink, Received, SmtpSink, Stage};

/// Longest wait for a delivery the test expects (retries included); a failure waits this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// A Standard Webhooks secret: base64 after the `whsec_` prefix.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Quick retries, so that tests of retrying take well under a second per attempt.
const FAST: &str = r#"backoff_initial = "100ms"
backoff_max = "1s"
timeout = "1s"
breaker_cooldown = "500ms"
"#;

/// Queues one webhook to channel `hook` per pushed notification, with the body's `deviceId`
/// and `note`.
const HOOK_PLUGIN: &str = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        webhook("hook", #{ device: n.deviceId, note: n.note });
    }
}
"#;

/// Queues `n.count` webhooks to channel `hook`.
const MANY_HOOKS_PLUGIN: &str = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        for i in 0..n.count {
            webhook("hook", #{ device: n.deviceId, i: i });
        }
    }
}
"#;

/// `[channels.hook]`, a signed webhook to `url` with extra headers, and `[delivery]` with
/// `delivery` (TOML lines).
fn hook_config(url: &str, delivery: &str) -> String {
    format!(
        r#"
[channels.hook]
kind = "webhook"
url = "{url}"
secret = "{SECRET}"
headers = {{ "X-Team" = "fleet", "X-Route" = "upgrades" }}

[delivery]
{delivery}
"#
    )
}

/// POSTs a notification and returns its event id.
fn post(server: &TestServer, body: Value) -> String {
    server.post_json(RECEIVER, &body.to_string()).accepted().0
}

/// A custom notification (any `notifyType` is accepted and routed) for device `device`.
fn custom(device: &str, extra: Value) -> Value {
    let mut body = json!({"notifyType": "customAlert", "deviceId": device});
    for (key, value) in extra.as_object().expect("extra fields are an object") {
        body[key] = value.clone();
    }
    body
}

/// `events show ID --json`.
fn show(server: &TestServer, id: &str) -> Value {
    let output = server.cli(&["events", "show", id, "--json"]);
    assert_exit(&output, 0);
    serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("events show --json is JSON ({e}): {}", stdout(&output)))
}

/// The action records of event `id` (`events show --json`'s `actions`).
fn actions_of(server: &TestServer, id: &str) -> Vec<Value> {
    show(server, id)["actions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `probe` until it yields a value; panics with `what` and the server's logs after
/// `timeout`.
fn wait_for<T>(
    server: &TestServer,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let mut found = None;
    let _ = wait_until(timeout, || {
        found = probe();
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "timed out after {timeout:?} waiting for {what}; logs:\n{}",
            server.logs()
        )
    })
}

/// Waits until event `id` has `count` actions, all with status `status`, and returns them.
fn wait_for_statuses(server: &TestServer, id: &str, count: usize, status: &str) -> Vec<Value> {
    let mut last = Vec::new();
    let what = format!("{count} action(s) of event {id} to be {status}");
    let found = wait_until(DELIVERY_TIMEOUT, || {
        last = actions_of(server, id);
        last.len() == count && last.iter().all(|action| action["status"] == status)
    });
    assert!(
        found,
        "timed out waiting for {what}; last seen: {last:#?}\nlogs:\n{}",
        server.logs()
    );
    last
}

/// `dead list --json`.
fn dead_letters(server: &TestServer) -> Vec<Value> {
    let output = server.cli(&["dead", "list", "--json"]);
    assert_exit(&output, 0);
    json_lines(&output)
}

/// The `outcome` of each entry of an action's attempt log.
fn outcomes(action: &Value) -> Vec<String> {
    attempt_log(action)
        .iter()
        .map(|attempt| attempt["outcome"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn attempt_log(action: &Value) -> Vec<Value> {
    action["attempt_log"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("an action record has an attempt_log: {action}"))
}

/// An RFC 3339 time as the CLI prints it.
fn time(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a time is a string: {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text:?} is RFC 3339: {e}"))
}

/// The start time of each attempt of an action.
fn attempt_times(action: &Value) -> Vec<SystemTime> {
    attempt_log(action)
        .iter()
        .map(|attempt| time(&attempt["at"]))
        .collect()
}

fn gap(earlier: SystemTime, later: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_else(|_| {
        panic!("{later:?} is not after {earlier:?}");
    })
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is a string in {value}"))
}

/// The Standard Webhooks signature of a request, computed here from the spec: `v1,` and the
/// base64 HMAC-SHA256, keyed with the base64-decoded rest of the `whsec_` secret, of
/// `id.timestamp.body`.
fn expected_signature(secret: &str, request: &Received) -> String {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("the secret is base64");
    let id = request.header("webhook-id").expect("a webhook-id header");
    let timestamp = request
        .header("webhook-timestamp")
        .expect("a webhook-timestamp header");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Asserts that one of the space-separated signatures of the request is the expected one.
fn assert_signed(secret: &str, request: &Received) {
    let header = request
        .header("webhook-signature")
        .expect("a webhook-signature header");
    let expected = expected_signature(secret, request);
    assert!(
        header.split(' ').any(|signature| signature == expected),
        "webhook-signature {header:?} does not contain {expected:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks: once, signed, retried
// ---------------------------------------------------------------------------------------------

#[test]
fn a_webhook_arrives_once_signed_with_its_idempotency_key_and_the_channel_headers() {
    let sink = HttpSink::start();
    let server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), FAST),
        &[("hook.rhai", HOOK_PLUGIN)],
    );
    let event = post(&server, custom("dev-1", json!({"note": "upgrade failed"})));
    let action = wait_for_statuses(&server, &event, 1, "sent").remove(0);

    let requests = sink.requests();
    assert_eq!(requests.len(), 1, "exactly one POST: {requests:#?}");
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(
        request.json(),
        json!({"device": "dev-1", "note": "upgrade failed"})
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    let id = str_of(&action, "id");
    assert_eq!(
        request.header("webhook-id"),
        Some(id),
        "the key is the action id"
    );
    assert_eq!(request.header("idempotency-key"), Some(id));
    let created = time(&action["created_at"])
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch");
    assert_eq!(
        request.header("webhook-timestamp"),
        Some(created.as_secs().to_string().as_str()),
        "the timestamp is the queue time in seconds"
    );
    assert_signed(SECRET, request);
    assert_eq!(request.header("x-team"), Some("fleet"));
    assert_eq!(request.header("x-route"), Some("upgrades"));

    assert_eq!(action["attempts"], 1, "{action:#}");
    assert_eq!(outcomes(&action), ["sent"], "{action:#}");
    assert_eq!(action["kind"], "webhook");
    assert_eq!(action["destination"], "channel:hook");
    assert_eq!(
        sink.count(),
        1,
        "nothing arrived after it was recorded as sent"
    );
}

#[test]
fn a_503_is_retried_with_backoff_and_every_attempt_is_byte_identical() {
    let sink = HttpSink::start();
    sink.then(Answer::status(503).body("overloaded"))
        .then(Answer::status(503));
    let delivery = "backoff_initial = \"200ms\"\nbackoff_max = \"5s\"\ntimeout = \"1s\"\n";
    let server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), delivery),
        &[("hook.rhai", HOOK_PLUGIN)],
    );
    let event = post(&server, custom("dev-2", json!({"note": "retry me"})));
    let action = wait_for_statuses(&server, &event, 1, "sent").remove(0);

    let requests = sink.requests();
    assert_eq!(requests.len(), 3, "503, 503, 200: {requests:#?}");
    let first = &requests[0];
    for request in &requests {
        assert_eq!(request.header("webhook-id"), Some(str_of(&action, "id")));
        for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert_eq!(request.header(header), first.header(header), "{header}");
        }
        assert_eq!(request.body, first.body, "the body is byte-identical");
        assert_signed(SECRET, request);
    }
    assert_eq!(
        requests.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(503), Some(503), Some(200)]
    );

    assert_eq!(action["attempts"], 3, "{action:#}");
    assert_eq!(outcomes(&action), ["retry", "retry", "sent"], "{action:#}");
    let log = attempt_log(&action);
    assert!(
        log[0]["error"].as_str().is_some_and(|e| e.contains("503")),
        "{log:#?}"
    );
    assert_eq!(action["last_error"], Value::Null, "cleared once sent");
    // Attempt n waits backoff_initial × 2^(n-1) × U(0.8, 1.2) after the previous one ends.
    let at = attempt_times(&action);
    assert!(
        gap(at[0], at[1]) >= Duration::from_millis(160),
        "{at:?}: attempt 2 came before 0.8 × 200 ms"
    );
    assert!(
        gap(at[1], at[2]) >= Duration::from_millis(320),
        "{at:?}: attempt 3 came before 0.8 × 400 ms"
    );
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(160));
    assert!(requests[2].at - requests[1].at >= Duration::from_millis(320));
}

#[test]
fn retry_after_on_429_and_503_is_honoured() {
    let sink = HttpSink::start();
    sink.then(Answer::status(429).header("Retry-After", "2"))
        .then(Answer::status(503).header("Retry-After", "1"));
    let server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), FAST),
        &[("hook.rhai", HOOK_PLUGIN)],
    );
    let event = post(&server, custom("dev-3", json!({"note": "slow down"})));
    let action = wait_for_statuses(&server, &event, 1, "sent").remove(0);

    let requests = sink.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    // Without Retry-After these would come after about 100 ms and 200 ms.
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1950),
        "429 with Retry-After: 2 was retried after {waited:?}"
    );
    let waited = requests[2].at - requests[1].at;
    assert!(
        waited >= Duration::from_millis(950),
        "503 with Retry-After: 1 was retried after {waited:?}"
    );
    assert_eq!(outcomes(&action), ["retry", "retry", "sent"], "{action:#}");
}

#[test]
fn a_long_retry_after_is_cut_to_retry_after_max_and_max_attempts_ends_in_the_dead_list() {
    let sink = HttpSink::start();
    sink.then(Answer::status(429).header("Retry-After", "3600"));
    sink.answer_always(Answer::status(500).body("still broken"));
    let delivery = r#"backoff_initial = "100ms"
retry_after_max = "1s"
max_attempts = 3
breaker_failures = 10
"#;
    let server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), delivery),
        &[("hook.rhai", HOOK_PLUGIN)],
    );
    let event = post(&server, custom("dev-4", json!({"note": "give up"})));
    let action = wait_for_statuses(&server, &event, 1, "dead").remove(0);

    let requests = sink.requests();
    assert_eq!(requests.len(), 3, "max_attempts = 3: {requests:#?}");
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 3600 cut to 1 s, not ignored: retried after {waited:?}"
    );
    assert_eq!(outcomes(&action), ["retry", "retry", "dead"], "{action:#}");
    assert!(str_of(&action, "last_error").contains("500"), "{action:#}");
    let dead = dead_letters(&server);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["attempts"], 3);
    server.wait_until_processed();
    let failed = server.events(&["--type", "actionFailed"]);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let body = &show(&server, str_of(&failed[0], "id"))["body"];
    assert_eq!(body["attempts"], 3, "{body}");
}

#[test]
fn a_webhook_to_a_url_that_cannot_be_parsed_is_not_retried() {
    // It can never succeed: either the binding refuses it (a script error) or delivery
    // dead-letters it at its first attempt, like any other error that cannot succeed on retry.
    let plugin = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        webhook(n.target, #{ device: n.deviceId });
    }
}
"#;
    let delivery = "[delivery]\nbackoff_initial = \"100ms\"\nmax_attempts = 3\n";
    let server = TestServer::start_with_plugins(delivery, &[("url.rhai", plugin)]);
    let event = post(
        &server,
        custom("dev-u", json!({"target": "http://bad host.example/hook"})),
    );
    let detail = wait_for(
        &server,
        "the webhook refused or given up",
        DELIVERY_TIMEOUT,
        || {
            let detail = show(&server, &event);
            let settled = detail["status"] != "pending"
                && detail["actions"]
                    .as_array()
                    .is_some_and(|actions| actions.iter().all(|a| a["status"] != "pending"));
            settled.then_some(detail)
        },
    );
    let actions = detail["actions"].as_array().cloned().unwrap_or_default();
    match actions.first() {
        None => assert!(
            detail["plugins"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("webhook")),
            "no action, so the binding must have said why: {detail:#}"
        ),
        Some(action) => {
            assert_eq!(action["status"], "dead", "{action:#}");
            assert_eq!(
                outcomes(action),
                ["dead"],
                "an unusable URL was retried: {action:#}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dead letters, actionFailed and the `dead` commands
// ---------------------------------------------------------------------------------------------

/// Webhooks with a `fallback` address; an internal `actionFailed` emails that address.
const FALLBACK_PLUGIN: &str = r#"
fn on_notification(n, meta) {
    if n.notifyType == "actionFailed" {
        if meta.source == "internal" {
            email(#{
                to: n.action.payload.fallback,
                subject: `webhook for ${n.action.payload.device} failed`,
                body: `${n.error} (${n.attempts} attempt(s), event ${n.eventId})`
            });
        }
        return;
    }
    webhook("hook", #{ device: n.deviceId, fallback: n.fallback });
}
"#;

#[test]
fn a_400_is_dead_at_once_raises_action_failed_once_and_the_dead_commands_work() {
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(400).body("bad payload"));
    let smtp = SmtpSink::start();
    smtp.fail_always("reject@example.com", Stage::Rcpt, 550);
    let config = format!(
        "{}\n[email]\ntransport = \"smtp\"\nsmtp_url = \"{}\"\nfrom = \"notirouter@example.com\"\n",
        hook_config(&sink.url("/hook"), FAST),
        smtp.url()
    );
    let server = TestServer::start_with_plugins(&config, &[("fallback.rhai", FALLBACK_PLUGIN)]);

    // A refused webhook: dead after one attempt, listed, and reported to the scripts.
    let first = post(
        &server,
        custom("dev-a", json!({"fallback": "ok@example.com"})),
    );
    let dead = wait_for(
        &server,
        "the webhook in the dead list",
        DELIVERY_TIMEOUT,
        || {
            let dead = dead_letters(&server);
            (dead.len() == 1).then_some(dead)
        },
    );
    let letter = &dead[0];
    assert_eq!(
        keys(letter),
        [
            "attempts",
            "created_at",
            "destination",
            "event_id",
            "id",
            "kind",
            "last_error"
        ]
    );
    assert_eq!(letter["event_id"], first.as_str());
    assert_eq!(letter["kind"], "webhook");
    assert_eq!(letter["destination"], "channel:hook");
    assert_eq!(letter["attempts"], 1, "a 400 is not retried: {letter}");
    assert!(str_of(letter, "last_error").contains("400"), "{letter}");
    time(&letter["created_at"]);
    let hook_a = str_of(letter, "id").to_owned();
    assert_eq!(sink.count(), 1, "one attempt only");

    let fallback = wait_for(&server, "the fallback email", DELIVERY_TIMEOUT, || {
        smtp.mails_to("ok@example.com").pop()
    });
    let failed = server.events(&["--type", "actionFailed"]);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let failed_id = str_of(&failed[0], "id").to_owned();
    let detail = show(&server, &failed_id);
    let body = &detail["body"];
    assert_eq!(body["notifyType"], "actionFailed");
    assert_eq!(body["eventId"], first.as_str());
    assert_eq!(body["attempts"], 1);
    assert_eq!(
        body["action"],
        json!({"kind": "webhook", "plugin": "fallback.rhai", "channel": "hook",
               "payload": {"device": "dev-a", "fallback": "ok@example.com"}})
    );
    assert!(str_of(body, "error").contains("400"), "{body}");
    let email = wait_for_statuses(&server, &failed_id, 1, "sent").remove(0);
    assert_eq!(
        fallback.header("Message-ID"),
        Some(format!("<{}@notirouter>", str_of(&email, "id")))
    );
    assert!(
        fallback.text().contains("webhook for dev-a failed"),
        "{}",
        fallback.text()
    );

    // A second refused webhook whose fallback email is refused too (SMTP 550): the email is
    // dead at once, and being queued for an actionFailed it raises no actionFailed of its own.
    let second = post(
        &server,
        custom("dev-b", json!({"fallback": "reject@example.com"})),
    );
    let dead = wait_for(&server, "three dead letters", DELIVERY_TIMEOUT, || {
        let dead = dead_letters(&server);
        (dead.len() == 3).then_some(dead)
    });
    let by_kind =
        |kind: &str| -> Vec<&Value> { dead.iter().filter(|d| d["kind"] == kind).collect() };
    assert_eq!(by_kind("webhook").len(), 2, "{dead:#?}");
    let email_letter = by_kind("email")[0].clone();
    assert_eq!(email_letter["destination"], "email");
    assert_eq!(email_letter["attempts"], 1, "SMTP 5xx is permanent");
    assert!(
        str_of(&email_letter, "last_error").contains("550"),
        "{email_letter}"
    );
    let hook_b = by_kind("webhook")
        .into_iter()
        .find(|d| d["event_id"] == second.as_str())
        .map(|d| str_of(d, "id").to_owned())
        .expect("the second webhook is dead");
    server.wait_until_processed();
    let failed = server.events(&["--type", "actionFailed"]);
    assert_eq!(
        failed.len(),
        2,
        "one actionFailed per failed webhook, none for the fallback email: {failed:#?}"
    );
    assert!(smtp.mails_to("reject@example.com").is_empty());

    // `dead retry ID`: re-queued, delivered now that the receiver accepts it, same key.
    sink.answer_always(Answer::ok());
    let output = server.cli(&["dead", "retry", &hook_a]);
    assert_exit(&output, 0);
    wait_for_statuses(&server, &first, 1, "sent");
    let delivered = sink.delivered();
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(delivered[0].header("webhook-id"), Some(hook_a.as_str()));
    assert!(
        dead_letters(&server)
            .iter()
            .all(|d| d["id"] != hook_a.as_str())
    );

    // `dead drop ID`: gone from the list, kept in the event's story as dropped.
    let email_id = str_of(&email_letter, "id").to_owned();
    let output = server.cli(&["dead", "drop", &email_id]);
    assert_exit(&output, 0);
    let dead = dead_letters(&server);
    assert!(
        dead.iter().all(|d| d["id"] != email_id.as_str()),
        "{dead:#?}"
    );
    let email_event = str_of(&email_letter, "event_id").to_owned();
    assert_eq!(actions_of(&server, &email_event)[0]["status"], "dropped");

    // `dead retry --all`: the rest.
    let output = server.cli(&["dead", "retry", "--all"]);
    assert_exit(&output, 0);
    wait_for_statuses(&server, &second, 1, "sent");
    assert_eq!(dead_letters(&server), Vec::<Value>::new());
    assert!(
        sink.delivered()
            .iter()
            .any(|r| r.header("webhook-id") == Some(hook_b.as_str()))
    );
    let output = server.cli(&["dead", "retry", &hook_a]);
    assert_ne!(output.status.code(), Some(0), "{}", all_output(&output));
    assert!(
        all_output(&output).contains(&hook_a),
        "{}",
        all_output(&output)
    );

    // A pushed body claiming to be actionFailed is `meta.source = "http"`: no fallback.
    let pushed = post(
        &server,
        json!({"notifyType": "actionFailed", "error": "x", "attempts": 1, "eventId": first,
               "action": {"kind": "webhook", "payload": {"device": "d", "fallback": "fake@example.com"}}}),
    );
    server.wait_until_processed();
    assert_eq!(
        actions_of(&server, &pushed),
        Vec::<Value>::new(),
        "no fallback queued"
    );
    assert_eq!(
        server.events(&["--type", "actionFailed"]).len(),
        3,
        "two raised, one pushed"
    );
}

// ---------------------------------------------------------------------------------------------
// Email over SMTP
// ---------------------------------------------------------------------------------------------

const EMAIL_PLUGIN: &str = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        email(#{ to: n.to, cc: n.cc, subject: n.subject, body: n.text });
    }
}
"#;

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`) in a header value;
/// whitespace between adjacent encoded words is dropped.
fn decode_header(value: &str) -> String {
    let mut out = String::new();
    let mut previous_encoded = false;
    for token in value.split_whitespace() {
        let decoded = token
            .strip_prefix("=?")
            .and_then(|rest| rest.strip_suffix("?="))
            .and_then(|inner| {
                let mut parts = inner.splitn(3, '?');
                let (_charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
                let bytes = match encoding.to_ascii_lowercase().as_str() {
                    "b" => BASE64.decode(text).ok()?,
                    "q" => decode_quoted_printable(&text.replace('_', " ")),
                    _ => return None,
                };
                String::from_utf8(bytes).ok()
            });
        match decoded {
            Some(text) => {
                if !out.is_empty() && !previous_encoded {
                    out.push(' ');
                }
                out.push_str(&text);
                previous_encoded = true;
            }
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(token);
                previous_encoded = false;
            }
        }
    }
    out
}

fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let text = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// A single-part message's text, decoded by its Content-Transfer-Encoding, with LF lines.
fn mail_body(mail: &sinks::Mail) -> String {
    let raw = mail.raw_body();
    let encoding = mail
        .header("Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => BASE64
            .decode(raw.split_whitespace().collect::<String>())
            .expect("a base64 body"),
        "quoted-printable" => decode_quoted_printable(&raw),
        _ => raw.into_bytes(),
    };
    String::from_utf8(bytes)
        .expect("the body is UTF-8")
        .replace("\r\n", "\n")
        .trim_end_matches('\n')
        .to_owned()
}

#[test]
fn email_goes_over_smtp_with_its_message_id_and_smtp_4xx_is_retried_but_5xx_is_dead() {
    let smtp = SmtpSink::start();
    smtp.fail_once("temp@example.com", Stage::Data, 451);
    smtp.fail_always("perm@example.com", Stage::Rcpt, 550);
    let config = format!(
        "[email]\ntransport = \"smtp\"\nsmtp_url = \"{}\"\nfrom = \"notirouter@example.com\"\n\n[delivery]\n{FAST}",
        smtp.url()
    );
    let server = TestServer::start_with_plugins(&config, &[("mail.rhai", EMAIL_PLUGIN)]);
    let subject = "Échec de mise à jour: 设备 42 \"quoted\" — état FAIL";
    let text = "Gerät 42 — fehlgeschlagen\nline two: 设备\n.leading dot";
    let ok = post(
        &server,
        json!({"notifyType": "customAlert", "to": ["ok@example.com", "second@example.com"],
               "cc": "boss@example.com", "subject": subject, "text": text}),
    );
    let temp = post(
        &server,
        json!({"notifyType": "customAlert", "to": "temp@example.com", "cc": [],
               "subject": "temporary", "text": "try again"}),
    );
    let perm = post(
        &server,
        json!({"notifyType": "customAlert", "to": "perm@example.com", "cc": [],
               "subject": "permanent", "text": "no such user"}),
    );

    let sent = wait_for_statuses(&server, &ok, 1, "sent").remove(0);
    let mails = smtp.mails_to("ok@example.com");
    assert_eq!(mails.len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail.from, "notirouter@example.com");
    assert_eq!(
        mail.to.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "ok@example.com".to_owned(),
            "second@example.com".to_owned(),
            "boss@example.com".to_owned()
        ]),
        "the envelope has To and Cc"
    );
    assert_eq!(
        mail.header("Message-ID"),
        Some(format!("<{}@notirouter>", str_of(&sent, "id")))
    );
    assert_eq!(
        mail.header("To").as_deref(),
        Some("ok@example.com, second@example.com")
    );
    assert_eq!(mail.header("Cc").as_deref(), Some("boss@example.com"));
    assert_eq!(
        mail.header("From").as_deref(),
        Some("notirouter@example.com")
    );
    let raw_subject = mail.header("Subject").expect("a Subject header");
    assert!(
        raw_subject.is_ascii(),
        "the subject is encoded: {raw_subject}"
    );
    assert_eq!(decode_header(&raw_subject), subject, "{}", mail.text());
    assert_eq!(mail_body(mail), text, "{}", mail.text());

    let retried = wait_for_statuses(&server, &temp, 1, "sent").remove(0);
    assert_eq!(outcomes(&retried), ["retry", "sent"], "{retried:#}");
    assert!(
        attempt_log(&retried)[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("451")),
        "{retried:#}"
    );
    assert_eq!(smtp.mails_to("temp@example.com").len(), 1);

    let dead = wait_for_statuses(&server, &perm, 1, "dead").remove(0);
    assert_eq!(outcomes(&dead), ["dead"], "550 is not retried: {dead:#}");
    assert!(str_of(&dead, "last_error").contains("550"), "{dead:#}");
    assert!(smtp.mails_to("perm@example.com").is_empty());
    let refused: Vec<(String, u16)> = smtp
        .refusals()
        .into_iter()
        .map(|r| (r.recipient, r.code))
        .collect();
    assert_eq!(
        refused
            .iter()
            .filter(|(to, _)| to == "perm@example.com")
            .count(),
        1,
        "{refused:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Isolation, concurrency and the circuit breaker
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stalled_destination_holds_up_no_other_and_only_its_own_slots() {
    let slow = HttpSink::start();
    slow.answer_always(Answer::stall());
    let fast = HttpSink::start();
    let config = format!(
        r#"
[channels.slow]
kind = "webhook"
url = "{}"

[channels.fast]
kind = "webhook"
url = "{}"

[delivery]
{FAST}concurrency_per_destination = 2
"#,
        slow.url("/slow"),
        fast.url("/fast")
    );
    let plugin = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        for i in 0..3 { webhook("slow", #{ device: n.deviceId, i: i }); }
        for i in 0..3 { webhook("fast", #{ device: n.deviceId, i: i }); }
    }
}
"#;
    let server = TestServer::start_with_plugins(&config, &[("split.rhai", plugin)]);
    let events = [
        post(&server, custom("dev-1", json!({}))),
        post(&server, custom("dev-2", json!({}))),
    ];

    let fast_ids = wait_for(
        &server,
        "six messages at the fast sink",
        DELIVERY_TIMEOUT,
        || {
            let ids: BTreeSet<String> = fast
                .delivered()
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            (ids.len() == 6).then_some(ids)
        },
    );
    assert!(
        slow.hanging() > 0 && slow.answered() == 0,
        "the fast sink got all six while the slow one still holds requests (hanging {}, answered {})",
        slow.hanging(),
        slow.answered()
    );
    assert!(
        wait_until(DELIVERY_TIMEOUT, || slow.most_hanging() == 2),
        "the slow destination used its two slots"
    );
    assert_eq!(
        slow.most_hanging(),
        2,
        "concurrency_per_destination = 2 bounds the sends in flight"
    );

    // Each stalled attempt ends at `delivery.timeout` and is retried.
    wait_for(
        &server,
        "a timed-out attempt retried",
        DELIVERY_TIMEOUT,
        || (slow.count() > 2).then_some(()),
    );
    let timed_out = wait_for(
        &server,
        "a timed-out attempt recorded",
        DELIVERY_TIMEOUT,
        || {
            let actions: Vec<Value> = events
                .iter()
                .flat_map(|event| actions_of(&server, event))
                .filter(|action| action["destination"] == "channel:slow")
                .collect();
            actions
                .into_iter()
                .find(|action| outcomes(action).first().is_some_and(|o| o == "retry"))
        },
    );
    assert_eq!(slow.answered(), 0, "{timed_out:#}");

    slow.release();
    for event in &events {
        wait_for_statuses(&server, event, 6, "sent");
    }
    let slow_ids: BTreeSet<String> = slow
        .delivered()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(slow_ids.len(), 6);
    assert!(slow_ids.is_disjoint(&fast_ids));
}

#[test]
fn an_open_breaker_defers_without_counting_attempts_and_a_good_probe_releases_all() {
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(500).body("down"));
    let delivery = "backoff_initial = \"100ms\"\ntimeout = \"1s\"\nbreaker_failures = 2\nbreaker_cooldown = \"1s\"\n";
    let server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), delivery),
        &[("many.rhai", MANY_HOOKS_PLUGIN)],
    );
    let first = post(&server, custom("dev-a", json!({"count": 1})));
    wait_for(&server, "two failed attempts", DELIVERY_TIMEOUT, || {
        (sink.count() >= 2).then_some(())
    });
    // The breaker is open now: actions that fall due are deferred, not attempted.
    wait_for(
        &server,
        "the two attempts recorded",
        DELIVERY_TIMEOUT,
        || {
            let actions = actions_of(&server, &first);
            (attempt_log(&actions[0]).len() == 2).then_some(())
        },
    );
    let later = post(&server, custom("dev-b", json!({"count": 3})));
    // After the cooldown one probe goes; it fails, which opens the breaker again at once.
    wait_for(&server, "the failed probe", DELIVERY_TIMEOUT, || {
        (sink.count() >= 3).then_some(())
    });
    // The receiver comes back; the next probe, a cooldown later, succeeds and releases all.
    sink.answer_always(Answer::ok());

    let a = wait_for_statuses(&server, &first, 1, "sent").remove(0);
    let others = wait_for_statuses(&server, &later, 3, "sent");
    let requests = sink.requests();
    assert_eq!(
        requests.len(),
        7,
        "2 failures, a failed probe, a good probe, 3 more; no attempt while open: {requests:#?}"
    );
    assert_eq!(
        requests[..3].iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(500), Some(500), Some(500)]
    );
    for (n, what) in [(2, "the first probe"), (3, "the second probe")] {
        let waited = requests[n].at - requests[n - 1].at;
        assert!(
            waited >= Duration::from_millis(950),
            "{what} came {waited:?} after the breaker opened, before its 1 s cooldown"
        );
    }
    // Whichever actions the probes were, the attempts are the requests: the tries deferred
    // while the breaker was open are not counted.
    let mut all = others.clone();
    all.push(a.clone());
    let attempts: usize = all.iter().map(|action| attempt_log(action).len()).sum();
    assert_eq!(attempts, 7, "{all:#?}");
    for action in &all {
        assert_eq!(
            action["attempts"].as_u64(),
            Some(attempt_log(action).len() as u64),
            "{action:#}"
        );
        assert_eq!(outcomes(action).last().map(String::as_str), Some("sent"));
    }
    let at = attempt_times(&a);
    assert!(gap(at[1], at[2]) >= Duration::from_millis(950), "{at:?}");
    assert!(
        server.logs().contains("destination recovered"),
        "{}",
        server.logs()
    );
}

#[test]
fn a_retry_after_holds_even_when_the_breaker_recovers_meanwhile() {
    let sink = HttpSink::start();
    sink.then(Answer::status(429).header("Retry-After", "3"));
    let delivery = "backoff_initial = \"100ms\"\ntimeout = \"1s\"\nbreaker_failures = 1\nbreaker_cooldown = \"300ms\"\n";
    let server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), delivery),
        &[("hook.rhai", HOOK_PLUGIN)],
    );
    let throttled = post(&server, custom("dev-a", json!({"note": "throttled"})));
    wait_for(&server, "the 429", DELIVERY_TIMEOUT, || {
        (sink.count() == 1).then_some(())
    });
    // The 429 opened the breaker; this one is held, then goes as the probe and succeeds.
    let probe = post(&server, custom("dev-b", json!({"note": "probe"})));
    wait_for_statuses(&server, &probe, 1, "sent");
    wait_for_statuses(&server, &throttled, 1, "sent");
    let requests = sink.requests();
    let of = |note: &str| -> Vec<&Received> {
        requests
            .iter()
            .filter(|r| r.json()["note"] == note)
            .collect()
    };
    let (throttled, probe) = (of("throttled"), of("probe"));
    assert_eq!((throttled.len(), probe.len()), (2, 1), "{requests:#?}");
    assert!(
        probe[0].at < throttled[1].at,
        "the breaker recovered before the retry"
    );
    let waited = throttled[1].at - throttled[0].at;
    assert!(
        waited >= Duration::from_secs(3),
        "retried {waited:?} after a 429 with Retry-After: 3"
    );
}

#[test]
fn an_email_that_cannot_be_built_is_no_answer_from_the_smtp_server() {
    // breaker.rs: "Only answers from the destination count; a failure of our own (e.g. a
    // message that cannot be built) must not be passed here."
    let smtp = SmtpSink::start();
    for to in ["first@example.com", "second@example.com"] {
        smtp.fail_always(to, Stage::Rcpt, 451);
    }
    let config = format!(
        r#"
[email]
transport = "smtp"
smtp_url = "{}"

[delivery]
backoff_initial = "100ms"
max_attempts = 2
breaker_failures = 2
breaker_cooldown = "1s"
"#,
        smtp.url()
    );
    let plugin = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        email(n.to, "device " + n.deviceId, "failed");
    }
}
"#;
    let server = TestServer::start_with_plugins(&config, &[("mail.rhai", plugin)]);
    // Two failures in a row (the SMTP server answers 451) open the email breaker.
    let first = post(&server, custom("dev-1", json!({"to": "first@example.com"})));
    wait_for_statuses(&server, &first, 1, "dead");
    // After the cooldown, this one is the only candidate for the probe; it fails before any
    // SMTP exchange, which says nothing about the server.
    let unbuildable = post(&server, custom("dev-2", json!({"to": "not an address"})));
    let dead = wait_for_statuses(&server, &unbuildable, 1, "dead").remove(0);
    assert!(
        str_of(&dead, "last_error").contains("not an address"),
        "{dead:#}"
    );
    // So the next email is a probe: when it fails, the breaker opens again at once and its
    // second attempt waits for the cooldown, not for the 100 ms backoff.
    let second = post(
        &server,
        custom("dev-3", json!({"to": "second@example.com"})),
    );
    let action = wait_for_statuses(&server, &second, 1, "dead").remove(0);
    let at = attempt_times(&action);
    assert!(
        gap(at[0], at[1]) >= Duration::from_millis(950),
        "the failed probe was retried {:?} later, inside the cooldown: {action:#}",
        gap(at[0], at[1])
    );
    // Checked once the probe is over, so that the whole span is covered.
    assert!(
        !server.logs().contains("destination recovered"),
        "an email that was never sent closed the breaker of a server that only said 451:\n{}",
        server.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------------------------

/// The server's store, opened read-only beside it.
fn read_store(server: &TestServer) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open_with_flags(
        server.store_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the store opens read-only");
    connection
        .busy_timeout(Duration::from_secs(10))
        .expect("a busy timeout can be set");
    connection
}

/// The number of actions in each status, read from the store.
fn action_statuses(server: &TestServer) -> HashMap<String, i64> {
    let connection = read_store(server);
    let mut statement = connection
        .prepare("SELECT status, count(*) FROM actions GROUP BY status")
        .expect("the actions table has a status");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .and_then(Iterator::collect)
        .expect("the actions can be counted")
}

#[test]
fn pending_actions_survive_kill_9_and_are_all_delivered_after_restart() {
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(503));
    let delivery = r#"backoff_initial = "100ms"
backoff_max = "500ms"
timeout = "1s"
max_attempts = 1000
breaker_cooldown = "300ms"
concurrency_per_destination = 16
"#;
    let mut server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), delivery),
        &[("many.rhai", MANY_HOOKS_PLUGIN)],
    );
    for device in 0..50 {
        post(
            &server,
            custom(&format!("dev-{device}"), json!({"count": 10})),
        );
    }
    server.wait_until_processed();
    wait_for(
        &server,
        "failed attempts at the sink",
        DELIVERY_TIMEOUT,
        || (sink.count() >= 10).then_some(()),
    );
    server.kill9();
    let before = action_statuses(&server);
    assert_eq!(before, HashMap::from([("pending".to_owned(), 500)]));
    assert!(sink.delivered().is_empty());

    sink.answer_always(Answer::ok());
    let server = server.restart();
    let statuses = wait_for(&server, "500 actions sent", Duration::from_secs(40), || {
        let statuses = action_statuses(&server);
        (statuses.get("sent") == Some(&500)).then_some(statuses)
    });
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    let delivered = sink.delivered();
    let ids: BTreeSet<&str> = delivered
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(ids.len(), 500, "every action arrived");
    let duplicates = delivered.len() - ids.len();
    println!(
        "kill -9 with 500 pending: {} deliveries, {duplicates} duplicate(s)",
        delivered.len()
    );
}

/// How a server is ended before its restart.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Kill9,
    Sigterm,
}

/// 200 chat actions fail against a destination that is down, long enough to open its breaker
/// (default cooldown, 30 s); the server ends, the destination comes back, and the restarted
/// server delivers every action within 5 s: the breaker was never written into the store.
fn a_restart_delivers_what_an_open_breaker_held(ending: Ending) {
    let sink = HttpSink::start();
    sink.answer_always(Answer::status(503));
    let config = format!(
        r#"
[channels.ops]
kind = "slack"
url = "{}"

[delivery]
backoff_initial = "100ms"
backoff_max = "1s"
timeout = "1s"
"#,
        sink.url("/services/T0/B0/token")
    );
    let plugin = r#"
fn on_notification(n, meta) {
    if upgrade_failed(n) { slack("ops", `FAIL ${n.deviceId}`); }
}
"#;
    let mut server = TestServer::start_with_plugins(&config, &[("chat.rhai", plugin)]);
    for device in 0..200 {
        server
            .post_json(
                RECEIVER,
                &common::fixtures::sw_fail(&format!("dev-{device}")).to_string(),
            )
            .accepted();
    }
    server.wait_until_processed();
    // Five failures in a row open the breaker (breaker_failures defaults to 5).
    wait_for(
        &server,
        "the breaker's five failures",
        DELIVERY_TIMEOUT,
        || (attempts_recorded(&server) >= 5).then_some(()),
    );
    match ending {
        Ending::Kill9 => server.kill9(),
        Ending::Sigterm => {
            let status = server.sigterm_and_wait(Duration::from_secs(10));
            assert!(status.success(), "{status:?}; logs:\n{}", server.logs());
        }
    }
    assert_eq!(
        action_statuses(&server),
        HashMap::from([("pending".to_owned(), 200)])
    );
    sink.answer_always(Answer::ok());
    let server = server.restart();
    wait_for(
        &server,
        "200 actions sent within 5 s of the restart",
        Duration::from_secs(5),
        || (action_statuses(&server).get("sent") == Some(&200)).then_some(()),
    );
    let texts: BTreeSet<String> = sink
        .delivered()
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(texts.len(), 200, "every device's message arrived");
}

/// The attempts recorded in the store, over all actions.
fn attempts_recorded(server: &TestServer) -> i64 {
    read_store(server)
        .query_row("SELECT count(*) FROM action_attempts", [], |row| row.get(0))
        .expect("the attempts can be counted")
}

#[test]
fn after_kill_9_a_destination_that_is_back_gets_everything_at_once() {
    a_restart_delivers_what_an_open_breaker_held(Ending::Kill9);
}

#[test]
fn after_sigterm_a_destination_that_is_back_gets_everything_at_once() {
    a_restart_delivers_what_an_open_breaker_held(Ending::Sigterm);
}

#[test]
fn a_stopped_server_ends_its_sends_in_flight_and_resumes_the_rest_on_restart() {
    let sink = HttpSink::start();
    sink.answer_always(Answer::stall());
    let delivery =
        "backoff_initial = \"100ms\"\ntimeout = \"1s\"\nconcurrency_per_destination = 2\n";
    let mut server = TestServer::start_with_plugins(
        &hook_config(&sink.url("/hook"), delivery),
        &[("many.rhai", MANY_HOOKS_PLUGIN)],
    );
    let event = post(&server, custom("dev-t", json!({"count": 4})));
    assert!(
        wait_until(DELIVERY_TIMEOUT, || sink.hanging() == 2),
        "two sends in flight; logs:\n{}",
        server.logs()
    );
    // SIGTERM waits for the sends in flight, each bounded by delivery.timeout.
    let status = server.sigterm_and_wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}; logs:\n{}", server.logs());
    assert_eq!(sink.delivered().len(), 0);

    sink.answer_always(Answer::ok());
    let server = server.restart();
    let actions = wait_for_statuses(&server, &event, 4, "sent");
    let ids: BTreeSet<&str> = actions.iter().map(|a| str_of(a, "id")).collect();
    let delivered: BTreeSet<String> = sink
        .delivered()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(
        delivered,
        ids.iter().map(|id| id.to_string()).collect::<BTreeSet<_>>()
    );
}

#[test]
fn a_second_sigterm_ends_a_stop_that_waits_on_a_slow_destination_and_loses_nothing() {
    let sink = HttpSink::start();
    sink.answer_always(Answer::stall());
    let delivery = "timeout = \"60s\"\nconcurrency_per_destination = 2\n";
    let lease = "[store]\nlease = \"65s\"\n";
    let mut server = TestServer::start_with_plugins(
        &(hook_config(&sink.url("/hook"), delivery) + lease),
        &[("many.rhai", MANY_HOOKS_PLUGIN)],
    );
    let event = post(&server, custom("dev-s", json!({"count": 2})));
    assert!(
        wait_until(DELIVERY_TIMEOUT, || sink.hanging() == 2),
        "two sends in flight; logs:\n{}",
        server.logs()
    );
    // The first SIGTERM's stop waits up to delivery.timeout (60 s) for the stalled sends; the
    // second ends it. Sent again until the process is gone, since the second can only count
    // once the first has been taken.
    server.sigterm();
    let ended = wait_until(Duration::from_secs(10), || {
        server.has_exited() || {
            server.sigterm();
            false
        }
    });
    assert!(ended, "still running; logs:\n{}", server.logs());
    let status = server.wait_for_exit(Duration::from_secs(1));
    assert_eq!(status.code(), Some(1), "logs:\n{}", server.logs());
    assert!(
        server.logs().contains("second SIGTERM"),
        "{}",
        server.logs()
    );

    sink.answer_always(Answer::ok());
    let server = server.restart();
    wait_for_statuses(&server, &event, 2, "sent");
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

/// Text that breaks naive JSON building: quotes, backslashes, control characters, non-ASCII,
/// markup and a NUL.
const NASTY: &str = "quote \" backslash \\ slash / newline \n tab \t crlf \r\n \u{0} \u{1f} \
                     ünïcødé 设备 🚀 <b>bold</b> & &amp; </script> \u{2028} {\"json\": [1]}";

#[test]
fn chat_text_and_webhook_payloads_survive_any_content() {
    let sink = HttpSink::start();
    let config = format!(
        r#"
[channels.ops]
kind = "slack"
url = "{}"

[channels.hook]
kind = "webhook"
url = "{}"

[delivery]
{FAST}"#,
        sink.url("/services/T000/B000/XXXX"),
        sink.url("/hook")
    );
    let plugin = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        slack("ops", n.text);
        webhook("hook", n.payload);
    }
}
"#;
    let server = TestServer::start_with_plugins(&config, &[("echo.rhai", plugin)]);
    let payload = json!({
        "text": NASTY,
        "list": [NASTY, 1, -7, 2.5, true, false, null, []],
        "nested": {"k\"e\\y ü": NASTY, "empty": {}, "zero": 0},
    });
    let event = post(
        &server,
        json!({"notifyType": "customAlert", "text": NASTY, "payload": payload}),
    );
    wait_for_statuses(&server, &event, 2, "sent");

    let requests = sink.requests();
    let slack = requests
        .iter()
        .find(|r| r.path == "/services/T000/B000/XXXX")
        .expect("the slack message arrived");
    assert_eq!(slack.header("content-type"), Some("application/json"));
    let escaped = NASTY
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert_eq!(slack.json(), json!({"text": escaped}));

    let hook = requests
        .iter()
        .find(|r| r.path == "/hook")
        .expect("the webhook arrived");
    assert_eq!(hook.json(), payload, "the payload round-trips exactly");
}

// ---------------------------------------------------------------------------------------------
// Secrets and metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn secrets_never_appear_in_the_logs_while_deliveries_fail() {
    const PASSWORD: &str = "Pa55w0rd-smtp-7c1e";
    const TOKEN: &str = "tok-9f8e7d6c5b4a";
    const SLACK_TOKEN: &str = "slacktoken-5d4c3b2a";
    const BEARER: &str = "hdr-secret-0a1b2c";
    // base64 of "webhook-key-not-for-logs".
    const HOOK_SECRET: &str = "whsec_d2ViaG9vay1rZXktbm90LWZvci1sb2dz";
    let hook_sink = HttpSink::start();
    hook_sink.answer_always(Answer::status(500).body("internal error"));
    let chat_sink = HttpSink::start();
    chat_sink.answer_always(Answer::status(400).body("invalid_token"));
    let smtp = SmtpSink::start();
    smtp.fail_always("ops@example.com", Stage::Data, 451);
    let config = format!(
        r#"
[email]
transport = "smtp"
smtp_url = "{smtp_url}"

[channels.hook]
kind = "webhook"
url = "{hook_url}"
secret = "{HOOK_SECRET}"
headers = {{ "Authorization" = "Bearer {BEARER}" }}

[channels.ops]
kind = "slack"
url = "{slack_url}"

[delivery]
{FAST}"#,
        smtp_url = smtp.url_with_login("alerts", PASSWORD),
        hook_url = hook_sink.url(&format!("/hooks/{TOKEN}/notify")),
        slack_url = chat_sink.url(&format!("/services/T0/B0/{SLACK_TOKEN}")),
    );
    let plugin = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        webhook("hook", #{ device: n.deviceId });
        slack("ops", "device " + n.deviceId + " failed");
        email("ops@example.com", "device failed", "see the dashboard");
    }
}
"#;
    let server = TestServer::start_with_plugins(&config, &[("all.rhai", plugin)]);
    let event = post(&server, custom("dev-s", json!({})));
    wait_for(
        &server,
        "failures on every channel",
        DELIVERY_TIMEOUT,
        || {
            let retried = |kind: &str| {
                actions_of(&server, &event)
                    .iter()
                    .any(|a| a["kind"] == kind && attempt_log(a).len() >= 2)
            };
            let chat_dead = actions_of(&server, &event)
                .iter()
                .any(|a| a["kind"] == "chat" && a["status"] == "dead");
            (retried("webhook") && retried("email") && chat_dead).then_some(())
        },
    );
    assert!(
        smtp.logins()
            .contains(&("alerts".to_owned(), PASSWORD.to_owned())),
        "the SMTP login was used: {:?}",
        smtp.logins()
    );
    assert!(
        hook_sink
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {BEARER}")[..])),
        "the header was sent"
    );
    assert!(hook_sink.requests()[0].path.contains(TOKEN));
    assert!(chat_sink.requests()[0].path.contains(SLACK_TOKEN));

    let logs = server.logs();
    assert!(logs.contains("delivery failed, retrying"), "{logs}");
    assert!(logs.contains("dead-lettered"), "{logs}");
    let decoded_secret = "webhook-key-not-for-logs";
    let hook_key = HOOK_SECRET.trim_start_matches("whsec_");
    let dead = all_output(&server.cli(&["dead", "list"]));
    let metrics = server.metrics();
    for secret in [
        PASSWORD,
        TOKEN,
        SLACK_TOKEN,
        BEARER,
        hook_key,
        decoded_secret,
    ] {
        assert!(!logs.contains(secret), "the logs show {secret:?}:\n{logs}");
        assert!(
            !dead.contains(secret),
            "dead list shows {secret:?}:\n{dead}"
        );
        assert!(!metrics.contains(secret), "/metrics shows {secret:?}");
    }
}

#[test]
fn metrics_count_actions_by_outcome_and_time_deliveries() {
    let sink = HttpSink::start();
    sink.then(Answer::status(503)).then(Answer::status(400));
    let later = HttpSink::start();
    later.answer_always(Answer::status(429).header("Retry-After", "60"));
    let config = format!(
        r#"
[channels.ops]
kind = "slack"
url = "{}"

[channels.later]
kind = "slack"
url = "{}"

[delivery]
{FAST}concurrency_per_destination = 1
"#,
        sink.url("/ops"),
        later.url("/later")
    );
    let plugin = r#"
fn on_notification(n, meta) {
    if meta.source == "http" {
        slack(n.channel, "device " + n.deviceId);
    }
}
"#;
    let server = TestServer::start_with_plugins(&config, &[("chat.rhai", plugin)]);
    let events: Vec<String> = (0..3)
        .map(|i| {
            post(
                &server,
                custom(&format!("dev-{i}"), json!({"channel": "ops"})),
            )
        })
        .collect();
    let parked = post(&server, custom("dev-p", json!({"channel": "later"})));

    let series = |outcome: &str, channel: &str| {
        format!(
            "notirouter_actions_total{{kind=\"chat\",channel=\"{channel}\",outcome=\"{outcome}\"}}"
        )
    };
    // 503 then 200 for one message, 400 for another, 200 for the third: whatever the order,
    // 3 queued, 1 retried, 1 dead, 2 sent.
    let expected = [
        ("queued", 3.0),
        ("retried", 1.0),
        ("dead", 1.0),
        ("sent", 2.0),
    ];
    let text = wait_for(&server, "the chat counts", DELIVERY_TIMEOUT, || {
        let text = server.metrics();
        expected
            .iter()
            .all(|(outcome, count)| metric(&text, &series(outcome, "ops")) == Some(*count))
            .then_some(text)
    });
    let statuses: Vec<String> = events
        .iter()
        .flat_map(|event| actions_of(&server, event))
        .map(|action| str_of(&action, "status").to_owned())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "sent").count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        metric(
            &text,
            "notirouter_delivery_duration_seconds_count{kind=\"chat\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "notirouter_delivery_duration_seconds_sum{kind=\"chat\"}"
        )
        .is_some_and(|sum| sum > 0.0),
        "{text}"
    );

    // The message parked by Retry-After: 60 is the oldest pending action, and it ages.
    let text = wait_for(
        &server,
        "the oldest pending action to age",
        DELIVERY_TIMEOUT,
        || {
            let text = server.metrics();
            metric(&text, "notirouter_oldest_pending_action_seconds")
                .is_some_and(|age| age >= 1.0)
                .then_some(text)
        },
    );
    assert_eq!(
        metric(&text, &series("queued", "later")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &series("retried", "later")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(actions_of(&server, &parked)[0]["status"], "pending");
}
