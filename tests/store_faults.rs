//! The receiver in front of a store that cannot write, or that stalls: it must answer 503 with
//! `Retry-After` (never 200, never a hang) and recover by itself once the store does.
//!
//! CI runs as root, so a read-only file proves nothing; the server runs in-process on a store
//! that wraps the real SQLite store and fails or blocks on demand.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use notirouter::config::Config;
use notirouter::model::state::{StateChanges, StateError, StateView};
use notirouter::model::{EventId, Millis};
use notirouter::store::{
    Appended, DeadLetter, DeliveryUpdate, EventDetail, EventFilter, EventOutcome, EventSummary,
    NewEvent, PendingAction, Pruned, RejectedBody, SqliteStore, Store, StoreError, StoredEvent,
};
use tokio::sync::oneshot;

mod common;
use common::wait_until;

const BODY: &str = r#"{"notifyType":"swUpgradeStateChangeNotify","deviceId":"d","appId":"a",
    "operationId":"o","subOperationId":"s","swUpgradeState":"downloading"}"#;

/// A switchable fault in front of a real store.
struct FaultyStore {
    inner: SqliteStore,
    disk_full: AtomicBool,
    stalled: Mutex<bool>,
    unstalled: Condvar,
}

impl FaultyStore {
    fn set_stalled(&self, stalled: bool) {
        *self.stalled.lock().unwrap() = stalled;
        self.unstalled.notify_all();
    }

    fn fail_if_full(&self) -> Result<(), StoreError> {
        if !self.disk_full.load(Ordering::SeqCst) {
            return Ok(());
        }
        let full = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL);
        let source = rusqlite::Error::SqliteFailure(full, Some("database or disk is full".into()));
        Err(StoreError::Database {
            context: "committing",
            source,
        })
    }
}

impl Store for FaultyStore {
    fn append(
        &self,
        events: &[NewEvent],
        rejected: &[RejectedBody],
    ) -> Result<Vec<Appended>, StoreError> {
        let stalled = self.stalled.lock().unwrap();
        drop(
            self.unstalled
                .wait_while(stalled, |stalled| *stalled)
                .unwrap(),
        );
        self.fail_if_full()?;
        self.inner.append(events, rejected)
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.fail_if_full()?;
        self.inner.probe()
    }

    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        self.inner.prune(before, limit)
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.inner.list_events(filter)
    }

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.inner.event(id)
    }

    fn stored_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.stored_event(id)
    }

    fn pending_events(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.pending_events(after, limit)
    }

    fn record_outcomes(
        &self,
        outcomes: &[EventOutcome],
        changes: &StateChanges,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.fail_if_full()?;
        self.inner.record_outcomes(outcomes, changes, now)
    }

    fn due_destinations(&self, now: Millis) -> Result<Vec<String>, StoreError> {
        self.inner.due_destinations(now)
    }

    fn due_actions(
        &self,
        destination: &str,
        now: Millis,
        limit: usize,
        skip: &HashSet<String>,
    ) -> Result<Vec<PendingAction>, StoreError> {
        self.inner.due_actions(destination, now, limit, skip)
    }

    fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.inner.next_due()
    }

    fn oldest_pending(&self) -> Result<Option<Millis>, StoreError> {
        self.inner.oldest_pending()
    }

    fn record_deliveries(
        &self,
        updates: &[DeliveryUpdate],
        now: Millis,
    ) -> Result<usize, StoreError> {
        self.fail_if_full()?;
        self.inner.record_deliveries(updates, now)
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters()
    }

    fn requeue_dead(&self, id: Option<&str>) -> Result<usize, StoreError> {
        self.inner.requeue_dead(id)
    }

    fn drop_dead(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.drop_dead(id)
    }
}

impl StateView for FaultyStore {
    fn seen_at(&self, key: &str) -> Result<Option<Millis>, StateError> {
        self.inner.seen_at(key)
    }

    fn counter(&self, key: &str) -> Result<Option<(i64, Millis)>, StateError> {
        self.inner.counter(key)
    }

    fn budget(&self, device: &str, version: &str) -> Result<Option<(i64, Millis)>, StateError> {
        self.inner.budget(device, version)
    }
}

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
        let store = Arc::new(FaultyStore {
            inner: SqliteStore::open(&config.store).unwrap(),
            disk_full: AtomicBool::new(false),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
        });
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

    fn ready_status(&self) -> u16 {
        client()
            .get(format!("{}/readyz", self.base))
            .send()
            .unwrap()
            .status()
            .as_u16()
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
    server.store.disk_full.store(true, Ordering::SeqCst);

    let refused = server.post(BODY);
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(json(refused)["error"].is_string());
    assert_eq!(server.ready_status(), 503);

    server.store.disk_full.store(false, Ordering::SeqCst);
    let accepted = json(server.post(BODY));
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    assert_eq!(server.ready_status(), 200);
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
        // One is taken into the stuck commit; the others wait in the queue behind it.
        let posts: Vec<_> = (0..=WAITING)
            .map(|n| {
                let body = BODY.replace("\"d\"", &format!("\"d{n}\""));
                scope.spawn(move || server.post(&body))
            })
            .collect();
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
