//! The store contract: what every backend must do for the stages to be right, written against
//! the [`Store`] trait alone. A backend's test file supplies [`Backend`] and runs each case.
//! Times are passed in (`now`), so leases end without sleeping.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use notirouter::action::{Action, ActionSpec, Chat, PlatformOp};
use notirouter::campaign::{CampaignKey, Counter, Counts, Kind, Upgrade};
use notirouter::destination::Destination;
use notirouter::model::state::{DIGEST_ITEMS, DigestKey, Effective, StateChanges, StateView};
use notirouter::model::{EventId, EventStatus, Millis};
use notirouter::notification::canonical_hash;
use notirouter::store::campaigns::CampaignView;
use notirouter::store::{
    Appended, Attempt, AttemptOutcome, CallLimit, Claimer, DeliveryUpdate, EventOutcome, NewEvent,
    PendingAction, PlatformToken, Store, StoreError, StoredEvent,
};
use serde_json::json;

/// A fresh, empty store whose lease is [`LEASE_MS`], kept alive by `_keep` (e.g. its folder).
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub _keep: Box<dyn std::any::Any>,
}

/// The `store.lease` each backend is opened with.
pub const LEASE_MS: i64 = 30_000;

const T0: Millis = Millis(1_800_000_000_000);

fn later(ms: i64) -> Millis {
    Millis(T0.0 + ms)
}

fn notification(device: &str, n: usize) -> NewEvent {
    event_of(json!({"notifyType": "customAlert", "deviceId": device, "n": n}))
}

/// `body` (with its `notifyType` and `deviceId`), received at [`T0`].
fn event_of(body: serde_json::Value) -> NewEvent {
    let field = |name: &str| body[name].as_str().map(str::to_owned);
    NewEvent {
        received_at: T0,
        path: "/v1.0.0/messageReceiver".to_owned(),
        remote_addr: None,
        notify_type: field("notifyType"),
        device_id: field("deviceId"),
        body: serde_json::to_vec(&body).unwrap(),
        hash: canonical_hash(&body),
        warnings: Vec::new(),
    }
}

fn append(store: &dyn Store, events: &[NewEvent]) -> Vec<EventId> {
    store
        .append(events, &[])
        .unwrap()
        .into_iter()
        .map(|appended| match appended {
            Appended::Accepted(id) => id,
            Appended::Duplicate(id) => panic!("{id} is not a duplicate"),
        })
        .collect()
}

fn handled(event: &StoredEvent, by: &Claimer, actions: Vec<Action>) -> EventOutcome {
    EventOutcome {
        event_id: event.id,
        status: EventStatus::Handled,
        error: None,
        plugins: Vec::new(),
        actions,
        replayed_from: None,
        claimed_by: Some(by.clone()),
    }
}

fn chat(text: &str) -> Action {
    Action {
        spec: ActionSpec::Chat(Chat {
            channel: "ops".to_owned(),
            text: Some(text.to_owned()),
            payload: None,
        }),
        plugin: "p.rhai".to_owned(),
    }
}

fn ids(events: &[StoredEvent]) -> Vec<EventId> {
    events.iter().map(|event| event.id).collect()
}

pub fn two_claimers_racing_on_one_event_run_it_once(backend: Backend) {
    let store = backend.store;
    for round in 0..20 {
        let event = append(&*store, &[notification(&format!("dev-{round}"), round)])[0];
        let barrier = Arc::new(Barrier::new(2));
        let claims: Vec<Vec<EventId>> = ["a", "b"]
            .map(|name| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    ids(&store.claim_events(&Claimer::named(name), 10, T0).unwrap())
                })
            })
            .map(|thread| thread.join().unwrap())
            .into_iter()
            .collect();
        let all: Vec<EventId> = claims.concat();
        assert_eq!(all, [event], "round {round}: {claims:?}");
        // Whoever won records it; the other cannot.
        let winner = Claimer::named(if claims[0].is_empty() { "b" } else { "a" });
        let loser = Claimer::named(if claims[0].is_empty() { "a" } else { "b" });
        let stored = store.stored_event(event).unwrap().unwrap();
        let changes = StateChanges::default();
        assert!(
            store
                .record_outcomes(&[handled(&stored, &loser, Vec::new())], &changes, T0)
                .is_err()
        );
        store
            .record_outcomes(&[handled(&stored, &winner, Vec::new())], &changes, T0)
            .unwrap();
    }
}

pub fn a_device_waits_behind_its_earlier_event_held_by_another_claimer(backend: Backend) {
    let store = backend.store;
    let appended = append(
        &*store,
        &[
            notification("a", 1),
            notification("b", 1),
            notification("a", 2),
            notification("c", 1),
        ],
    );
    let (first, second) = (Claimer::named("first"), Claimer::named("second"));
    let taken = store.claim_events(&first, 1, T0).unwrap();
    assert_eq!(ids(&taken), [appended[0]]);
    let next = store.claim_events(&second, 10, T0).unwrap();
    assert_eq!(
        ids(&next),
        [appended[1], appended[3]],
        "a's second event waits for its first"
    );
    store
        .record_outcomes(
            &[handled(&taken[0], &first, Vec::new())],
            &StateChanges::default(),
            T0,
        )
        .unwrap();
    assert_eq!(
        ids(&store.claim_events(&second, 10, T0).unwrap()),
        [appended[1], appended[2], appended[3]],
        "its own claims come back with the event now free"
    );
}

pub fn a_claim_looks_past_the_oldest_events_when_another_claimer_holds_them(backend: Backend) {
    let store = backend.store;
    let appended = append(
        &*store,
        &[
            notification("a", 1),
            notification("b", 1),
            notification("c", 1),
            notification("d", 1),
        ],
    );
    let (first, second) = (Claimer::named("first"), Claimer::named("second"));
    assert_eq!(
        ids(&store.claim_events(&first, 2, T0).unwrap()),
        appended[..2]
    );
    assert_eq!(
        ids(&store.claim_events(&second, 2, T0).unwrap()),
        appended[2..],
        "the two oldest are held, so the claim takes the two after them"
    );
}

pub fn an_event_whose_claimer_stalls_past_the_lease_goes_to_another(backend: Backend) {
    let store = backend.store;
    let event = append(&*store, &[notification("a", 1)])[0];
    let (stalled, next) = (Claimer::named("stalled"), Claimer::named("next"));
    let taken = store.claim_events(&stalled, 10, T0).unwrap();
    assert_eq!(ids(&taken), [event]);
    assert!(
        store
            .claim_events(&next, 10, later(LEASE_MS - 1))
            .unwrap()
            .is_empty()
    );
    let retaken = store.claim_events(&next, 10, later(LEASE_MS)).unwrap();
    assert_eq!(ids(&retaken), [event]);
    let changes = StateChanges::default();
    assert!(
        store
            .record_outcomes(&[handled(&taken[0], &stalled, Vec::new())], &changes, T0)
            .is_err(),
        "the stalled claimer's outcome is refused"
    );
    store
        .record_outcomes(&[handled(&retaken[0], &next, Vec::new())], &changes, T0)
        .unwrap();
}

pub fn an_event_number_is_never_given_twice_even_after_the_newest_were_pruned(backend: Backend) {
    let store = backend.store;
    let first = append(&*store, &[notification("a", 1), notification("b", 2)]);
    let by = Claimer::named("scripts");
    let claimed = store.claim_events(&by, 10, T0).unwrap();
    let outcomes: Vec<EventOutcome> = claimed
        .iter()
        .map(|event| handled(event, &by, Vec::new()))
        .collect();
    store
        .record_outcomes(&outcomes, &StateChanges::default(), T0)
        .unwrap();
    assert_eq!(store.prune(later(1), 100).unwrap().events, 2);
    let next = append(&*store, &[notification("c", 3)])[0];
    let newest = first.iter().map(|id| id.seq()).max().unwrap();
    assert!(
        next.seq() > newest,
        "{next} (seq {}) reuses a pruned event's number (up to {newest})",
        next.seq()
    );
}

/// Where [`chat`] sends.
fn ops() -> Destination {
    Destination::Channel("ops".to_owned())
}

/// The ids of claimed actions.
fn ids_of(actions: &[PendingAction]) -> BTreeSet<String> {
    actions.iter().map(|p| p.id.clone()).collect()
}

/// Queues `count` chat actions to [`ops`], due at [`T0`].
fn queue_actions(store: &dyn Store, count: usize) -> BTreeSet<String> {
    let event = append(store, &[notification("a", 1)])[0];
    let by = Claimer::named("scripts");
    let claimed = store.claim_events(&by, 1, T0).unwrap();
    assert_eq!(ids(&claimed), [event]);
    let actions = (0..count).map(|n| chat(&format!("message {n}"))).collect();
    store
        .record_outcomes(
            &[handled(&claimed[0], &by, actions)],
            &StateChanges::default(),
            T0,
        )
        .unwrap();
    let detail = store.event(event).unwrap().unwrap();
    detail.actions.iter().map(|a| a.id.clone()).collect()
}

fn sent(number: u32, at: Millis) -> Attempt {
    Attempt {
        number,
        at,
        duration_ms: 1,
        outcome: AttemptOutcome::Sent,
        error: None,
    }
}

pub fn claimers_share_due_actions_without_overlap(backend: Backend) {
    let store = backend.store;
    let queued = queue_actions(&*store, 5);
    let (a, b) = (Claimer::named("a"), Claimer::named("b"));
    let first = store.claim_due_actions(&ops(), &a, 3, T0).unwrap();
    let second = store.claim_due_actions(&ops(), &b, 10, T0).unwrap();
    let mut seen: Vec<String> = first.iter().chain(&second).map(|p| p.id.clone()).collect();
    assert_eq!((first.len(), second.len()), (3, 2));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), queued);
    assert!(
        store
            .claim_due_actions(&ops(), &a, 10, T0)
            .unwrap()
            .is_empty()
    );
}

pub fn an_action_whose_claimer_stalls_past_the_lease_is_sent_by_another(backend: Backend) {
    let store = backend.store;
    let queued = queue_actions(&*store, 1);
    let (stalled, next) = (Claimer::named("stalled"), Claimer::named("next"));
    let taken = store.claim_due_actions(&ops(), &stalled, 10, T0).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(
        store
            .claim_due_actions(&ops(), &next, 10, later(LEASE_MS - 1))
            .unwrap()
            .is_empty()
    );
    let retaken = store
        .claim_due_actions(&ops(), &next, 10, later(LEASE_MS))
        .unwrap();
    assert_eq!(ids_of(&retaken), queued);
    assert_eq!(retaken[0].idempotency_key, taken[0].idempotency_key);
    // The stalled claimer's late result is ignored; the new claimer's counts.
    let late = DeliveryUpdate::Sent {
        claim: taken[0].claim(),
        attempt: sent(1, later(LEASE_MS + 5)),
        result: Some("late".to_owned()),
    };
    let current = DeliveryUpdate::Sent {
        claim: retaken[0].claim(),
        attempt: sent(1, later(LEASE_MS + 10)),
        result: Some("current".to_owned()),
    };
    store
        .record_deliveries(&[late], later(LEASE_MS + 5))
        .unwrap();
    store
        .record_deliveries(&[current], later(LEASE_MS + 10))
        .unwrap();
    let event = retaken[0].event_id.parse().unwrap();
    let detail = store.event(event).unwrap().unwrap();
    let action = &detail.actions[0];
    assert_eq!(
        (action.status.as_str(), action.result.as_deref()),
        ("sent", Some("current"))
    );
    assert_eq!(action.attempt_log.len(), 1, "{action:?}");
}

pub fn a_claim_renewed_by_its_holder_outlasts_the_first_lease(backend: Backend) {
    let store = backend.store;
    let queued = queue_actions(&*store, 1);
    let (sending, other) = (Claimer::named("sending"), Claimer::named("other"));
    let taken = store.claim_due_actions(&ops(), &sending, 10, T0).unwrap();
    let ids: Vec<String> = taken.iter().map(|p| p.id.clone()).collect();
    // Another claimer renews nothing it does not hold.
    assert_eq!(
        store.renew_action_claims(&other, &ids, later(1)).unwrap(),
        0
    );
    let renewed_at = later(LEASE_MS - 1);
    assert_eq!(
        store
            .renew_action_claims(&sending, &ids, renewed_at)
            .unwrap(),
        1
    );
    let until = renewed_at.0 + LEASE_MS;
    let too_early = store
        .claim_due_actions(&ops(), &other, 10, Millis(until - 1))
        .unwrap();
    assert!(too_early.is_empty(), "{too_early:?}");
    let taken_over = store
        .claim_due_actions(&ops(), &other, 10, Millis(until))
        .unwrap();
    assert_eq!(ids_of(&taken_over), queued);
    // Once taken over, the first claimer's renewal no longer holds it.
    assert_eq!(
        store
            .renew_action_claims(&sending, &ids, Millis(until + 1))
            .unwrap(),
        0
    );
}

pub fn a_result_ends_the_claim_and_a_retry_is_claimable_when_due(backend: Backend) {
    let store = backend.store;
    queue_actions(&*store, 1);
    let by = Claimer::named("a");
    let taken = store.claim_due_actions(&ops(), &by, 10, T0).unwrap();
    let retry = DeliveryUpdate::Retry {
        claim: taken[0].claim(),
        attempt: Attempt {
            outcome: AttemptOutcome::Retry,
            error: Some("503".to_owned()),
            ..sent(1, T0)
        },
        due_at: later(3_000),
    };
    store.record_deliveries(&[retry], T0).unwrap();
    let other = Claimer::named("b");
    assert!(
        store
            .claim_due_actions(&ops(), &other, 10, later(2_999))
            .unwrap()
            .is_empty(),
        "not before its due time"
    );
    let again = store
        .claim_due_actions(&ops(), &other, 10, later(3_000))
        .unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 1));
}

/// Runs `seen("first failure", 1h)` against the committed state, as a plugin would.
fn seen_first_failure(store: &dyn Store, changes: &mut StateChanges) -> bool {
    let committed: &dyn StateView = store;
    let mut state = Effective {
        committed,
        changes,
        now: T0,
    };
    state
        .seen("first failure", std::time::Duration::from_secs(3600))
        .unwrap()
}

pub fn a_batch_whose_state_changed_since_it_was_read_is_refused(backend: Backend) {
    let store = backend.store;
    append(&*store, &[notification("a", 1), notification("b", 1)]);
    let (a, b) = (Claimer::named("a"), Claimer::named("b"));
    let first = store.claim_events(&a, 1, T0).unwrap();
    let second = store.claim_events(&b, 1, T0).unwrap();
    let (mut first_changes, mut second_changes) =
        (StateChanges::default(), StateChanges::default());
    assert!(!seen_first_failure(&*store, &mut first_changes));
    assert!(
        !seen_first_failure(&*store, &mut second_changes),
        "both read it unseen"
    );
    store
        .record_outcomes(
            &[handled(&first[0], &a, vec![chat("first")])],
            &first_changes,
            T0,
        )
        .unwrap();
    let refused = store.record_outcomes(
        &[handled(&second[0], &b, vec![chat("also first")])],
        &second_changes,
        T0,
    );
    assert!(
        matches!(refused, Err(StoreError::StateConflict)),
        "{refused:?}"
    );
    // Run again on the state as it is now, it sees the key and queues nothing.
    let mut again = StateChanges::default();
    assert!(seen_first_failure(&*store, &mut again));
    let retaken = store.claim_events(&b, 1, T0).unwrap();
    assert_eq!(ids(&retaken), ids(&second));
    store
        .record_outcomes(&[handled(&retaken[0], &b, Vec::new())], &again, T0)
        .unwrap();
    let queued = store.event(second[0].id).unwrap().unwrap().actions;
    assert!(queued.is_empty(), "{queued:?}");
}

const APP: &str = "app-1";

fn token(access: &str) -> PlatformToken {
    PlatformToken {
        access: access.to_owned(),
        refresh: format!("refresh-of-{access}"),
        renew_at: later(3_600_000),
        expires_in: 3_660,
    }
}

pub fn two_claimers_racing_for_the_token_renewal_get_it_once(backend: Backend) {
    let store = backend.store;
    assert_eq!(store.platform_token(APP).unwrap(), None);
    for round in 0..20 {
        let now = later(round);
        let barrier = Arc::new(Barrier::new(2));
        let won: Vec<bool> = ["a", "b"]
            .map(|name| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let by = Claimer::named(name);
                    store
                        .claim_token_renewal(APP, &by, now, later(LEASE_MS))
                        .unwrap()
                })
            })
            .map(|thread| thread.join().unwrap())
            .into_iter()
            .collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "round {round}");
        let (winner, loser) = match won[0] {
            true => (Claimer::named("a"), Claimer::named("b")),
            false => (Claimer::named("b"), Claimer::named("a")),
        };
        let theirs = token(&format!("loser-{round}"));
        assert!(
            !store
                .store_platform_token(APP, &loser, &theirs, now)
                .unwrap(),
            "round {round}: only the lock's holder stores a token"
        );
        let ours = token(&format!("winner-{round}"));
        assert!(
            store
                .store_platform_token(APP, &winner, &ours, now)
                .unwrap()
        );
        assert_eq!(store.platform_token(APP).unwrap(), Some(ours));
    }
    assert_eq!(
        store.platform_token("another-app").unwrap(),
        None,
        "each app has its own token"
    );
}

pub fn a_token_renewal_whose_holder_stalls_past_the_lease_goes_to_another(backend: Backend) {
    let store = backend.store;
    let (stalled, next) = (Claimer::named("stalled"), Claimer::named("next"));
    assert!(
        store
            .claim_token_renewal(APP, &stalled, T0, later(1_000))
            .unwrap()
    );
    assert!(
        store
            .claim_token_renewal(APP, &stalled, T0, later(1_000))
            .unwrap(),
        "the holder may claim again"
    );
    assert!(
        !store
            .claim_token_renewal(APP, &next, later(999), later(2_000))
            .unwrap()
    );
    assert!(
        store
            .claim_token_renewal(APP, &next, later(1_000), later(2_000))
            .unwrap()
    );
    assert!(
        !store
            .store_platform_token(APP, &stalled, &token("late"), later(1_500))
            .unwrap(),
        "the stalled holder's token is refused once the lock moved on"
    );
    store.release_token_renewal(APP, &stalled).unwrap();
    let third = Claimer::named("third");
    assert!(
        !store
            .claim_token_renewal(APP, &third, later(1_500), later(3_000))
            .unwrap(),
        "a former holder's release leaves the new holder's lock alone"
    );
    store.release_token_renewal(APP, &next).unwrap();
    assert!(
        store
            .claim_token_renewal(APP, &third, later(1_500), later(3_000))
            .unwrap()
    );
    assert_eq!(store.platform_token(APP).unwrap(), None);
}

pub fn a_stored_token_survives_later_claims_and_anyone_stores_while_the_lock_is_free(
    backend: Backend,
) {
    let store = backend.store;
    let first = Claimer::named("first");
    assert!(
        store
            .store_platform_token(APP, &first, &token("t1"), T0)
            .unwrap(),
        "no one holds the lock"
    );
    let second = Claimer::named("second");
    assert!(
        store
            .claim_token_renewal(APP, &second, T0, later(1_000))
            .unwrap()
    );
    assert_eq!(
        store.platform_token(APP).unwrap(),
        Some(token("t1")),
        "claiming the renewal keeps the token readable"
    );
    store.release_token_renewal(APP, &second).unwrap();
    assert_eq!(store.platform_token(APP).unwrap(), Some(token("t1")));
    assert!(
        store
            .claim_token_renewal(APP, &first, T0, later(1_000))
            .unwrap()
    );
}

/// The most starts in any window of `window_ms` milliseconds.
fn busiest(starts: &[Millis], window_ms: i64) -> usize {
    starts
        .iter()
        .map(|first| {
            starts
                .iter()
                .filter(|s| s.0 >= first.0 && s.0 < first.0 + window_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

pub fn concurrent_call_reservers_never_exceed_the_limit_together(backend: Backend) {
    let store = backend.store;
    let limit = CallLimit {
        max: 10,
        window: Duration::from_secs(60),
    };
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..25)
                    .map(|n| store.reserve_platform_call(APP, limit, later(n)).unwrap())
                    .collect::<Vec<Millis>>()
            })
        })
        .collect();
    let mut starts: Vec<Millis> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    starts.sort();
    assert_eq!(starts.len(), 100);
    assert_eq!(busiest(&starts, 60_000), 10, "{starts:?}");
    assert!(
        starts.last().unwrap().0 - T0.0 < 10 * 60_000,
        "the hundredth call starts within ten windows: {starts:?}"
    );
    assert_eq!(
        store
            .reserve_platform_call("another-app", limit, T0)
            .unwrap(),
        T0,
        "each app has its own limit"
    );
}

pub fn a_call_reserved_after_a_quiet_window_goes_now(backend: Backend) {
    let store = backend.store;
    let limit = CallLimit {
        max: 2,
        window: Duration::from_secs(60),
    };
    let reserve = |now: Millis| store.reserve_platform_call(APP, limit, now).unwrap();
    assert_eq!(reserve(T0), T0);
    assert_eq!(reserve(later(10)), later(10));
    assert_eq!(
        reserve(later(20)),
        later(60_000),
        "the third waits for the first's window"
    );
    assert_eq!(reserve(later(200_000)), later(200_000));
    assert_eq!(reserve(later(200_001)), later(200_001));
    let unlimited = CallLimit { max: 0, ..limit };
    for _ in 0..100 {
        assert_eq!(store.reserve_platform_call(APP, unlimited, T0).unwrap(), T0);
    }
}

const DIGEST_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

fn digest_key(key: &str) -> DigestKey {
    DigestKey {
        plugin: "p.rhai".to_owned(),
        key: key.to_owned(),
    }
}

/// A batch's additions of `items` (JSON values) to digest `key`, as a run at `at` makes them.
fn digest_changes(
    key: &str,
    items: impl IntoIterator<Item = serde_json::Value>,
    at: Millis,
) -> StateChanges {
    let mut changes = StateChanges::default();
    for item in items {
        changes.add_to_digest(digest_key(key), DIGEST_WINDOW, item.to_string(), at);
    }
    changes
}

/// Appends one event and commits its outcome with `changes`, as a script worker would.
fn commit_with(store: &dyn Store, device: &str, changes: &StateChanges, now: Millis) {
    append(store, &[notification(device, 1)]);
    let by = Claimer::named("scripts");
    let claimed = store.claim_events(&by, 1, now).unwrap();
    assert_eq!(claimed.len(), 1);
    store
        .record_outcomes(&[handled(&claimed[0], &by, Vec::new())], changes, now)
        .unwrap();
}

/// The bodies of the pending digest events, claimed at `now` and recorded as handled.
fn digest_events(store: &dyn Store, now: Millis) -> Vec<serde_json::Value> {
    let by = Claimer::named("digests");
    let claimed = store.claim_events(&by, 100, now).unwrap();
    let outcomes: Vec<EventOutcome> = claimed
        .iter()
        .map(|event| handled(event, &by, Vec::new()))
        .collect();
    store
        .record_outcomes(&outcomes, &StateChanges::default(), now)
        .unwrap();
    claimed
        .into_iter()
        .map(|event| {
            assert_eq!(event.notify_type.as_deref(), Some("digest"));
            assert_eq!(event.source, "internal");
            serde_json::from_slice(&event.body).unwrap()
        })
        .collect()
}

pub fn a_digest_fires_once_when_its_window_ends_with_its_items_in_order(backend: Backend) {
    let store = backend.store;
    commit_with(
        &*store,
        "a",
        &digest_changes("k", [json!("x1"), json!({"n": 2})], T0),
        T0,
    );
    // Added while it is open: the window of the later addition does not count.
    let later_add = digest_changes("k", [json!("x3")], later(10_000));
    commit_with(&*store, "b", &later_add, later(10_000));
    let end = later(60_000);
    assert_eq!(store.next_digest_end().unwrap(), Some(end));
    assert_eq!(store.fire_ended_digests(later(59_999), 10).unwrap(), 0);
    assert!(digest_events(&*store, later(59_999)).is_empty());
    assert_eq!(store.fire_ended_digests(end, 10).unwrap(), 1);
    assert_eq!(
        store.fire_ended_digests(later(120_000), 10).unwrap(),
        0,
        "fired once"
    );
    assert_eq!(store.next_digest_end().unwrap(), None);
    let fired = digest_events(&*store, end);
    assert_eq!(fired.len(), 1, "{fired:?}");
    let body = &fired[0];
    assert_eq!(
        (&body["plugin"], &body["key"]),
        (&json!("p.rhai"), &json!("k"))
    );
    assert_eq!(body["items"], json!(["x1", {"n": 2}, "x3"]));
    assert_eq!(body["total"], 3);
}

pub fn a_digest_keeps_its_first_items_and_counts_every_one(backend: Backend) {
    let store = backend.store;
    for batch in 0..3 {
        let items = (batch * 400..(batch + 1) * 400).map(|n| json!(n));
        commit_with(
            &*store,
            &format!("dev-{batch}"),
            &digest_changes("k", items, T0),
            T0,
        );
    }
    assert_eq!(store.fire_ended_digests(later(60_000), 10).unwrap(), 1);
    let fired = digest_events(&*store, later(60_000));
    let items: Vec<i64> = fired[0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item.as_i64().unwrap())
        .collect();
    assert_eq!(items, (0..DIGEST_ITEMS as i64).collect::<Vec<_>>());
    assert_eq!(fired[0]["total"], 1_200);
}

pub fn a_refused_batch_adds_nothing_to_a_digest(backend: Backend) {
    let store = backend.store;
    append(&*store, &[notification("a", 1)]);
    let claimed = store.claim_events(&Claimer::named("a"), 1, T0).unwrap();
    let stranger = handled(&claimed[0], &Claimer::named("not-the-claimer"), Vec::new());
    let changes = digest_changes("k", [json!("lost")], T0);
    assert!(store.record_outcomes(&[stranger], &changes, T0).is_err());
    assert_eq!(store.next_digest_end().unwrap(), None);
    assert_eq!(store.fire_ended_digests(later(600_000), 10).unwrap(), 0);
}

pub fn two_firing_at_once_make_one_event_per_digest(backend: Backend) {
    let store = backend.store;
    for round in 0..10 {
        let at = later(round * 100_000);
        let key = format!("k{round}");
        commit_with(
            &*store,
            &format!("dev-{round}"),
            &digest_changes(&key, [json!(round)], at),
            at,
        );
        let end = Millis(at.0 + 60_000);
        let barrier = Arc::new(Barrier::new(2));
        let firing: Vec<_> = (0..2)
            .map(|_| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    store.fire_ended_digests(end, 10).unwrap()
                })
            })
            .collect();
        let fired: usize = firing
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .sum();
        assert_eq!(fired, 1, "round {round}");
        assert_eq!(digest_events(&*store, end).len(), 1, "round {round}");
    }
}

pub fn an_addition_after_a_digest_fired_opens_a_new_one(backend: Backend) {
    let store = backend.store;
    commit_with(&*store, "a", &digest_changes("k", [json!(1)], T0), T0);
    assert_eq!(store.fire_ended_digests(later(60_000), 10).unwrap(), 1);
    let first = digest_events(&*store, later(60_000));
    let at = later(61_000);
    commit_with(&*store, "b", &digest_changes("k", [json!(2)], at), at);
    assert_eq!(store.next_digest_end().unwrap(), Some(later(121_000)));
    assert_eq!(store.fire_ended_digests(later(121_000), 10).unwrap(), 1);
    let second = digest_events(&*store, later(121_000));
    assert_eq!(
        (&first[0]["items"], &second[0]["items"]),
        (&json!([1]), &json!([2]))
    );
}

/// How long the campaign counts may take to reach what was committed: a backend may hold rows
/// back while an older transaction runs (other tests' on a shared server, briefly).
const CATCH_UP_WAIT: Duration = Duration::from_secs(20);

fn upgrade_failure(device: &str) -> NewEvent {
    event_of(json!({
        "notifyType": "swUpgradeResultNotify", "deviceId": device, "operationId": "op-1",
        "targetVersion": "1.5", "swUpgradeResult": "FAIL", "errorCode": "7"
    }))
}

fn retry_of(event: &StoredEvent) -> Action {
    let device = event.device_id.as_deref().expect("a device");
    Action {
        spec: ActionSpec::Platform(PlatformOp::retry_upgrade(
            device,
            "swUpgradeResultNotify",
            "1.5",
        )),
        plugin: "p.rhai".to_owned(),
    }
}

/// The campaign once `counter` has caught up with `view` to `devices` devices: its counts and
/// how many results its timeline holds (one per result counted).
fn counted(counter: &Counter, view: &dyn CampaignView, devices: u64) -> (Counts, u64) {
    let key = CampaignKey {
        kind: Kind::Software,
        target_version: "1.5".to_owned(),
    };
    let started = std::time::Instant::now();
    loop {
        let detail = counter.read(view, |index| index.detail(&key)).unwrap();
        if let Some(detail) = detail.filter(|d| d.report.summary.counts.devices >= devices) {
            let results = detail.timeline.iter().map(|p| p.succeeded + p.failed);
            return (detail.report.summary.counts, results.sum());
        }
        assert!(
            started.elapsed() < CATCH_UP_WAIT,
            "fewer than {devices} devices counted after {CATCH_UP_WAIT:?}"
        );
        std::thread::yield_now();
    }
}

/// The counts behind the dashboard and `campaign(n)`, caught up from the store between its
/// writes: each upgrade result and each retry counted once, and a run's report holding its own
/// event with every one counted before it.
pub fn the_campaign_counts_take_every_result_and_retry_once(backend: Backend) {
    let store = backend.store;
    let view = store
        .campaign_view()
        .expect("the backend has a campaign view");
    let counter = Counter::default();
    let by = Claimer::named("scripts");
    for round in 0..3u64 {
        let failures = ["a", "b"].map(|name| upgrade_failure(&format!("dev-{round}-{name}")));
        append(&*store, &failures);
        let claimed = store.claim_events(&by, 10, T0).unwrap();
        let last = claimed.last().expect("both claimed");
        let upgrade = Upgrade::parse("swUpgradeResultNotify", &last.body, last.received_at);
        let report = counter
            .report_through(view, last.seq, &upgrade.expect("an upgrade result"))
            .unwrap()
            .expect("the run's own campaign");
        let failed = report.summary.counts.failed;
        assert!(
            (2 * round + 1..=2 * round + 2).contains(&failed),
            "round {round}: {failed} failed"
        );
        let outcomes: Vec<EventOutcome> = claimed
            .iter()
            .map(|event| handled(event, &by, vec![retry_of(event)]))
            .collect();
        store
            .record_outcomes(&outcomes, &StateChanges::default(), T0)
            .unwrap();
        let (counts, results) = counted(&counter, view, 2 * round + 2);
        assert_eq!(counts.failed, 2 * round + 2, "round {round}");
        assert_eq!(results, 2 * round + 2, "round {round}: each result once");
    }
    let retries = || counter.read(view, |index| index.summaries()[0].counts.retries);
    let started = std::time::Instant::now();
    while retries().unwrap() < 6 && started.elapsed() < CATCH_UP_WAIT {
        std::thread::yield_now();
    }
    assert_eq!(retries().unwrap(), 6, "each retry once");
}
