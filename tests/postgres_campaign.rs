//! The campaign counts on PostgreSQL when transactions commit out of arrival order: the real
//! binary, real HTTP, and a connection of the test's own that holds a transaction open on the
//! same database. A notification or platform action stored by a transaction that took its
//! place (its number, its time) before another's but commits after it is counted once it
//! commits, and once; a script's own event is in its `campaign(n)` while an older transaction
//! still runs, and is not counted again when the catch-up reaches it.

mod common;
#[path = "common/sinks.rs"]
mod sinks;

use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use common::pg::TestDatabase;
use common::{TestServer, fixtures, queued_actions, wait_until};
use notirouter::action::{Action, ActionSpec, PlatformOp};
use notirouter::model::{EventId, Millis};
use sinks::HttpSink;

/// How long a count may take to catch up once nothing holds it back (other tests' transactions
/// on the same server may, briefly).
const WAIT: Duration = Duration::from_secs(20);

const CAMPAIGN: &str = "/api/v1/campaigns/software/1.5";

/// A transaction on the test's database, on a connection of its own, open until committed.
struct OpenTransaction {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl OpenTransaction {
    fn begin(url: &str) -> OpenTransaction {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime starts");
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .expect("the test database answers");
            tokio::spawn(connection);
            client
                .batch_execute("BEGIN")
                .await
                .expect("a transaction begins");
            client
        });
        OpenTransaction { runtime, client }
    }

    fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> tokio_postgres::Row {
        self.runtime
            .block_on(self.client.query_one(sql, params))
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    /// Stores `body` as the receiver does: a number from the events' sequence, then the row.
    /// Returns its number.
    fn store_event(&self, body: &Value) -> i64 {
        let seq: i64 = self
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('events', 'seq'))",
                &[],
            )
            .get(0);
        let received_at = Millis::now().0;
        let id = EventId::from_parts(Millis(received_at), seq).to_string();
        self.query_one(
            "INSERT INTO events (seq, id, received_at, path, notify_type, device_id, body)
             VALUES ($1, $2, $3, '/v1.0.0/messageReceiver', $4, $5, $6) RETURNING seq",
            &[
                &seq,
                &id,
                &received_at,
                &body["notifyType"].as_str(),
                &body["deviceId"].as_str(),
                &body.to_string().into_bytes(),
            ],
        );
        seq
    }

    /// Queues a `retry_upgrade` of `device` to 1.5, a minute old and due in a year, as a
    /// script's outcome does.
    fn queue_retry(&self, device: &str) {
        let action = Action {
            spec: ActionSpec::Platform(PlatformOp::retry_upgrade(
                device,
                "swUpgradeResultNotify",
                "1.5",
            )),
            plugin: "external.rhai".to_owned(),
        };
        let payload = serde_json::to_string(&action).expect("an action serialises");
        let now = Millis::now().0;
        let (queued_at, due_at) = (now - 60_000, now + 365 * 86_400_000);
        self.query_one(
            "INSERT INTO actions (id, event_id, plugin, kind, destination, payload,
                 idempotency_key, created_at, status, due_at)
             VALUES ('00000000000000000000000000', 'external', 'external.rhai', 'platform',
                 'platform', $1, 'external-retry', $2, 'pending', $3) RETURNING id",
            &[&payload, &queued_at, &due_at],
        );
    }

    fn commit(self) {
        self.runtime
            .block_on(self.client.batch_execute("COMMIT"))
            .expect("the held transaction commits");
    }
}

fn store_config(url: &str) -> String {
    format!("\n[store]\nurl = \"{url}\"\npool_size = 8\n")
}

/// The campaign's counts and how many results its timeline holds (each result counted adds
/// one), or `None` while nothing of it is counted.
fn campaign(server: &TestServer) -> Option<(Value, u64)> {
    let reply = server.get(CAMPAIGN);
    if reply.status == 404 {
        return None;
    }
    assert_eq!(reply.status, 200, "{CAMPAIGN}: {}", reply.text());
    let detail = reply.json();
    let results = detail["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|point| point["succeeded"].as_u64().unwrap() + point["failed"].as_u64().unwrap())
        .sum();
    Some((detail, results))
}

/// Waits until the campaign's `field` is `expected`, and returns the campaign then.
fn wait_for_count(server: &TestServer, field: &str, expected: u64) -> (Value, u64) {
    let mut seen = None;
    let reached = wait_until(WAIT, || {
        seen = campaign(server);
        seen.as_ref()
            .is_some_and(|(detail, _)| detail[field] == expected)
    });
    assert!(
        reached,
        "{field} never reached {expected}: {seen:#?}\nlogs:\n{}",
        server.logs()
    );
    seen.expect("reached")
}

fn seq_of(id: &str) -> i64 {
    id.parse::<EventId>().expect("an event id").seq()
}

#[test]
fn a_result_whose_transaction_commits_after_a_later_ones_is_counted_once() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let server = TestServer::start(&store_config(&database.url));
    let early = OpenTransaction::begin(&database.url);
    let early_seq = early.store_event(&fixtures::sw_fail("early"));
    let later = server.post_accepted(&fixtures::sw_fail("later"));
    assert!(early_seq < seq_of(&later), "the held event arrived first");
    // The dashboard catches up while the earlier event is still uncommitted.
    campaign(&server);
    early.commit();

    let (detail, results) = wait_for_count(&server, "devices", 2);
    assert_eq!(detail["failed"], 2, "{detail:#}");
    assert_eq!(results, 2, "each result counted once: {detail:#}");
}

#[test]
fn a_retry_whose_transaction_commits_after_a_later_ones_is_counted_once() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let config = format!(
        r#"{store}
[platform]
enabled = true
base_url = "https://127.0.0.1:9"
app_id = "app"
secret = "secret"

[platform.packages]
"1.5" = "a1b2c3"
"#,
        store = store_config(&database.url)
    );
    let retry = "fn on_notification(n) { if upgrade_failed(n) { retry_upgrade(n); } }";
    let server = TestServer::start_with_plugins(&config, &[("retry.rhai", retry)]);
    let early = OpenTransaction::begin(&database.url);
    early.queue_retry("early");
    let later = server.post_accepted(&fixtures::sw_fail("later"));
    let outcome = server.wait_for_outcome(&later);
    let kinds: Vec<Value> = queued_actions(&outcome)
        .iter()
        .map(|action| action["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("platform")], "{outcome:#}");
    // The dashboard catches up past the later retry while the earlier one is uncommitted.
    campaign(&server);
    early.commit();

    let (detail, _) = wait_for_count(&server, "retries", 2);
    assert_eq!(detail["devices"], 1, "{detail:#}");
}

#[test]
fn campaign_n_counts_its_own_event_while_an_older_transaction_runs_and_only_once() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let sink = HttpSink::start();
    let config = format!(
        "{}\n[channels.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
        store_config(&database.url),
        sink.url("/hook")
    );
    let report = r#"
        fn on_notification(n) {
            if upgrade_failed(n) {
                let c = campaign(n);
                webhook("hook", #{ device: n.deviceId, failed: c.failed, devices: c.devices });
            }
        }
    "#;
    let server = TestServer::start_with_plugins(&config, &[("report.rhai", report)]);
    // A transaction that has begun writing (it holds a transaction id) and stays open: the
    // catch-up reads nothing committed after it began until it ends.
    let older = OpenTransaction::begin(&database.url);
    older.query_one("SELECT pg_current_xact_id()::TEXT", &[]);
    let mut reported = Vec::new();
    for device in ["first", "second"] {
        server.post_accepted(&fixtures::sw_fail(device));
        let delivered = wait_until(WAIT, || sink.delivered().len() > reported.len());
        assert!(
            delivered,
            "no report for {device}; logs:\n{}",
            server.logs()
        );
        let body = sink.delivered().last().expect("delivered").json();
        reported.push((body["device"].clone(), body["failed"].clone()));
    }
    assert_eq!(
        reported,
        [(json!("first"), json!(1)), (json!("second"), json!(2))],
        "each run's campaign(n) counts its own event"
    );
    older.commit();

    // A success, which no run counts: once the catch-up has counted it, it has passed both
    // failures too (their transactions ended before its began).
    server.post_accepted(&fixtures::sw_success("third"));
    let (detail, results) = wait_for_count(&server, "succeeded", 1);
    assert_eq!(detail["failed"], 2, "{detail:#}");
    assert_eq!(results, 3, "each result counted once: {detail:#}");
}
