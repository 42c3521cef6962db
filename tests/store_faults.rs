//! The receiver in front of a store that cannot write, or that stalls: it must answer 503 with
//! `Retry-After` (never 200, never a hang) and recover by itself once the store does.
//!
//! CI runs as root, so a read-only file proves nothing; the server runs in-process on a store
//! that wraps the real SQLite store and fails or blocks on demand.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notirouter::config::Config;
use notirouter::store::{EventFilter, SqliteStore, Store};
use tokio::sync::oneshot;

mod common;
#[path = "common/faulty_store.rs"]
mod faulty_store;

use common::wait_until;
use faulty_store::FaultyStore;

const BODY: &str = r#"{"notifyType":"swUpgradeStateChangeNotify","deviceId":"d","appId":"a",
    "operationId":"o","subOperationId":"s","swUpgradeState":"downloading"}"#;

/// A server running in-process on a [`FaultyStore`]; stops when dropped.
struct FaultyServer {
    base: String,
    store: Arc<FaultyStore>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FaultyServer {
    fn start(accept_timeout: &str) -> FaultyServer {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\naccept_timeout = \"{accept_timeout}\"\n[store]\npath = \"{}\"\n",
            dir.path().join("store.db").display()
        );
        let config = Config::parse(&text, Path::new("test.toml"), Vec::new()).unwrap();
        let store = Arc::new(FaultyStore::new(SqliteStore::open(&config.store).unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let served: Arc<dyn Store> = store.clone();
        let thread = std::thread::spawn(move || {
            let shutdown = async move {
                let _ = stopped.await;
            };
            actix_web::rt::System::new()
                .block_on(notirouter::serve_with_store(
                    config, served, listener, shutdown,
                ))
                .unwrap();
        });
        FaultyServer {
            base,
            store,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn post(&self, body: &str) -> reqwest::blocking::Response {
        client()
            .post(format!("{}/v1.0.0/messageReceiver", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("the server answers instead of hanging")
    }

    /// The value of `notirouter_store_queue_depth` in `/metrics`.
    fn queue_depth(&self) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.base))
            .send()
            .and_then(|response| response.text())
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("notirouter_store_queue_depth "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no queue depth in:\n{text}"))
    }

    fn ready(&self) -> (u16, String) {
        let answer = client()
            .get(format!("{}/readyz", self.base))
            .send()
            .unwrap();
        (answer.status().as_u16(), answer.text().unwrap())
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.store.set_stalled(false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Requests give up after this, far beyond any accept_timeout used here: a hang fails the test.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn json(response: reqwest::blocking::Response) -> serde_json::Value {
    response.json().unwrap()
}

#[test]
fn a_store_that_cannot_write_answers_503_with_retry_after_and_recovers() {
    let server = FaultyServer::start("10s");
    server.store.set_disk_full(true);

    let refused = server.post(BODY);
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(json(refused)["error"].is_string());
    let (status, body) = server.ready();
    assert_eq!(status, 503);
    // Anyone may ask /readyz: the store's error (with its path) stays in the log.
    assert!(!body.contains("disk is full"), "{body}");

    server.store.set_disk_full(false);
    let accepted = json(server.post(BODY));
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    assert_eq!(server.ready().0, 200);
    let listed = server.store.list_events(&EventFilter {
        limit: 10,
        ..Default::default()
    });
    assert_eq!(listed.unwrap().len(), 1);
}

#[test]
fn a_stalled_store_answers_503_after_accept_timeout_and_keeps_the_notification() {
    let server = FaultyServer::start("300ms");
    server.store.set_stalled(true);

    let refused = server.post(BODY);
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");

    // The writer had already taken the notification: once the disk is back it is stored, and
    // the platform's re-push of the same body is recognised as a duplicate of it.
    server.store.set_stalled(false);
    let repushed = json(server.post(BODY));
    assert_eq!(repushed["status"], "duplicate", "{repushed}");
    let listed = server.store.list_events(&EventFilter {
        limit: 10,
        ..Default::default()
    });
    assert_eq!(listed.unwrap()[0].id, repushed["id"].as_str().unwrap());
}

#[test]
fn the_queue_depth_counts_notifications_waiting_behind_a_stalled_store() {
    const WAITING: usize = 4;
    let server = &FaultyServer::start("10s");
    server.store.set_stalled(true);
    std::thread::scope(|scope| {
        let post = |n: usize| {
            let body = BODY.replace("\"d\"", &format!("\"d{n}\""));
            scope.spawn(move || server.post(&body))
        };
        // The first is taken into the stuck commit; only then are the others sure to wait in
        // the queue behind it rather than join its batch.
        let mut posts = vec![post(0)];
        let stuck = wait_until(Duration::from_secs(10), || server.store.held_appends() == 1);
        assert!(stuck, "the writer never reached the stalled store");
        posts.extend((1..=WAITING).map(post));
        let counted = wait_until(Duration::from_secs(10), || {
            server.queue_depth() >= WAITING as f64
        });
        assert!(
            counted,
            "the queue depth stayed at {} while {WAITING} notifications waited",
            server.queue_depth()
        );
        server.store.set_stalled(false);
        for post in posts {
            assert_eq!(post.join().unwrap().status().as_u16(), 200);
        }
    });
}
