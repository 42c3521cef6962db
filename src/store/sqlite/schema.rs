//! The schema and its migrations. `PRAGMA user_version` records how many migrations a database
//! has had; each migration runs in its own transaction, so a crash mid-upgrade leaves the
//! previous version intact.

use rusqlite::Connection;

use super::database;
use crate::store::StoreError;

/// Each entry upgrades the schema by one version; append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: events, rejected bodies, and the actions that scripts will queue.
    //
    // Events are only ever appended at the end of two B-trees (the table by `seq`, and the
    // dedup index by time), because an index on a random key (the body hash, the device) makes
    // every commit rewrite one page per event and costs more than everything else together.
    // `id` is derived from (received_at, seq), so lookups by id go through `seq`.
    "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        path TEXT NOT NULL,
        remote_addr TEXT,
        notify_type TEXT,
        device_id TEXT,
        body BLOB NOT NULL,
        body_hash BLOB NOT NULL,
        hash64 INTEGER NOT NULL,
        warnings TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL DEFAULT 'pending',
        error TEXT,
        handled_at INTEGER
    );
    CREATE INDEX events_by_time_and_hash ON events (received_at, hash64);
    CREATE TABLE rejected (
        seq INTEGER PRIMARY KEY,
        received_at INTEGER NOT NULL,
        path TEXT NOT NULL,
        remote_addr TEXT,
        reason TEXT NOT NULL,
        content_type TEXT,
        body BLOB NOT NULL,
        body_len INTEGER NOT NULL
    );
    CREATE TABLE actions (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL,
        plugin TEXT NOT NULL,
        kind TEXT NOT NULL,
        destination TEXT NOT NULL,
        payload TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at INTEGER NOT NULL,
        last_error TEXT,
        result TEXT,
        sent_at INTEGER,
        replayed_from TEXT
    );
    CREATE INDEX actions_by_event ON actions (event_id);",
    // 2: script outcomes and script state.
    // `plugins` is the JSON array of each plugin's runs: one column, not a row per plugin, so
    // that recording an outcome is one update.
    "ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT 'http';
    ALTER TABLE events ADD COLUMN plugins TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX events_pending ON events (seq) WHERE status = 'pending';
    CREATE INDEX actions_due ON actions (due_at) WHERE status = 'pending';
    CREATE TABLE seen (
        key TEXT PRIMARY KEY,
        recorded_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE TABLE counters (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL,
        window_start INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE TABLE upgrade_budget (
        device_id TEXT NOT NULL,
        target_version TEXT NOT NULL,
        retries INTEGER NOT NULL,
        window_start INTEGER NOT NULL,
        PRIMARY KEY (device_id, target_version)
    );",
    // 3: delivery: per-destination due actions, and every attempt of every action.
    "CREATE INDEX actions_due_by_destination ON actions (destination, due_at)
        WHERE status = 'pending';
    CREATE INDEX actions_dead ON actions (created_at) WHERE status = 'dead';
    CREATE TABLE action_attempts (
        action_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        at INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX action_attempts_by_action ON action_attempts (action_id);",
    // 4: platform actions: when a task creation was last started. The platform has no
    // idempotency key, so an action with this set is looked for at the platform before it is
    // created again.
    "ALTER TABLE actions ADD COLUMN in_flight_at INTEGER;",
    // 5: claims. A pending event or action may be held by one claimer until its lease ends.
    // Event claims are a table of their own: a claim then writes a few small rows, not again
    // the pages of the events (bodies and all) that the outcome is about to rewrite. Only
    // pending actions carry a claim, so releasing them goes through the partial index.
    "CREATE TABLE event_claims (
        seq INTEGER PRIMARY KEY,
        claimed_by TEXT NOT NULL,
        lease_until INTEGER NOT NULL
    );
    ALTER TABLE actions ADD COLUMN claimed_by TEXT;
    ALTER TABLE actions ADD COLUMN lease_until INTEGER;",
    // 6: the dashboard reads platform actions (upgrade retries, tasks created) in the order
    // they were queued; only platform actions are indexed, and at the end of the index.
    "CREATE INDEX actions_platform ON actions (created_at, id) WHERE kind = 'platform';",
    // 7: what instances share to use the platform: per app, its one valid token and the lock
    // on renewing it (a row may hold the lock before any token), and the reserved call starts.
    "CREATE TABLE platform_tokens (
        app TEXT PRIMARY KEY,
        access TEXT,
        refresh TEXT,
        renew_at INTEGER,
        expires_in INTEGER,
        renewing_by TEXT,
        renewal_until INTEGER
    );
    CREATE TABLE platform_calls (
        app TEXT NOT NULL,
        start_at INTEGER NOT NULL
    );
    CREATE INDEX platform_calls_by_app ON platform_calls (app, start_at);",
    // 8: digests, each a plugin's key: open until `ends_at` (indexed, so the timer reads the
    // earliest end without looking at every digest), with its first items in their own rows
    // (adding one is an insert, not a rewrite of the ones before).
    "CREATE TABLE digests (
        plugin TEXT NOT NULL,
        key TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        ends_at INTEGER NOT NULL,
        total INTEGER NOT NULL,
        PRIMARY KEY (plugin, key)
    );
    CREATE INDEX digests_by_end ON digests (ends_at);
    CREATE TABLE digest_items (
        plugin TEXT NOT NULL,
        key TEXT NOT NULL,
        position INTEGER NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (plugin, key, position)
    );",
    // 9: the number the next event gets, kept apart from the events, so that pruning the
    // newest events never lets a later one take their numbers (and ids) again.
    "CREATE TABLE event_numbers (next INTEGER NOT NULL);
    INSERT INTO event_numbers SELECT coalesce(max(seq), 0) + 1 FROM events;",
];

/// Brings the schema up to date.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(database("reading the schema version"))?;
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let transaction = connection
            .transaction()
            .map_err(database("starting a migration"))?;
        transaction
            .execute_batch(sql)
            .map_err(database("migrating the schema"))?;
        transaction
            .pragma_update(None, "user_version", index as i64 + 1)
            .map_err(database("recording the schema version"))?;
        transaction
            .commit()
            .map_err(database("committing a migration"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_newer_schemas_are_refused() {
        let mut connection = Connection::open_in_memory().unwrap();
        migrate(&mut connection).unwrap();
        migrate(&mut connection).unwrap();
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        connection.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(
            migrate(&mut connection),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }
}
