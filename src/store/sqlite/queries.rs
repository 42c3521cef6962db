//! Reads for the CLI and the script stage: event lists, one event's story, stored events.

use rusqlite::{OptionalExtension, Row, params};

use super::{SqliteStore, database};
use crate::model::{EventId, Millis};
use crate::store::{ActionRecord, EventDetail, EventFilter, EventSummary, StoreError, StoredEvent};

const SUMMARY_COLUMNS: &str = "e.id, e.received_at, e.notify_type, e.device_id, e.status,
    e.warnings, (SELECT count(*) FROM actions a WHERE a.event_id = e.id), e.error,
    (SELECT json_group_array(result) FROM (SELECT result FROM actions a WHERE a.event_id = e.id
     AND a.result IS NOT NULL ORDER BY a.created_at, a.id))";

/// The columns of [`StoredEvent`], in the order [`stored_event`] reads them.
pub(super) const STORED_COLUMNS: &str = "seq, id, received_at, path, remote_addr, notify_type,
    device_id, body, warnings, source";

impl SqliteStore {
    pub(super) fn query_events(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let reader = self.reader();
        let mut statement = reader
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM events e WHERE (?1 IS NULL OR e.status = ?1)
                 AND (?2 IS NULL OR e.notify_type = ?2) AND (?3 IS NULL OR e.device_id = ?3)
                 ORDER BY e.seq DESC LIMIT ?4"
            ))
            .map_err(database("listing events"))?;
        let status = filter.status.map(|s| s.as_str());
        let rows = statement
            .query_map(
                params![status, filter.notify_type, filter.device_id, filter.limit],
                summary_columns,
            )
            .map_err(database("listing events"))?;
        let rows: Vec<_> = rows
            .collect::<Result<_, _>>()
            .map_err(database("listing events"))?;
        rows.into_iter().map(SummaryRow::into_summary).collect()
    }

    pub(super) fn query_event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        let reader = self.reader();
        let row = reader
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS}, e.path, e.remote_addr, e.body, e.plugins FROM events e
                 WHERE e.seq = ?1 AND e.id = ?2"
            ))
            .and_then(|mut statement| {
                statement
                    .query_row(params![id.seq(), id.to_string()], |row| {
                        let body: Vec<u8> = row.get(11)?;
                        let plugins: String = row.get(12)?;
                        Ok((
                            summary_columns(row)?,
                            row.get(9)?,
                            row.get(10)?,
                            body,
                            plugins,
                        ))
                    })
                    .optional()
            })
            .map_err(database("reading an event"))?;
        let Some((summary, path, remote_addr, body, plugins)) = row else {
            return Ok(None);
        };
        let body = String::from_utf8(body)
            .map_err(|_| StoreError::Damaged(format!("event {id} has a body that is not UTF-8")))?;
        let plugin_runs = serde_json::from_str(&plugins).map_err(|_| {
            StoreError::Damaged(format!("event {id} has plugin runs that are not JSON"))
        })?;
        let mut actions = reader
            .prepare_cached(
                "SELECT id, plugin, kind, destination, status, attempts, last_error, result,
                 created_at, sent_at, replayed_from, payload FROM actions WHERE event_id = ?1
                 ORDER BY created_at, id",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([id.to_string()], action_record)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(database("reading actions"))?;
        for action in &mut actions {
            action.attempt_log = super::delivery::attempts_of(&reader, &action.id)?;
        }
        Ok(Some(EventDetail {
            summary: summary.into_summary()?,
            path,
            remote_addr,
            body,
            plugin_runs,
            actions,
        }))
    }

    pub(super) fn read_stored(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        let reader = self.reader();
        let row = reader
            .prepare_cached(&format!(
                "SELECT {STORED_COLUMNS} FROM events WHERE seq = ?1 AND id = ?2"
            ))
            .and_then(|mut statement| {
                statement
                    .query_row(params![id.seq(), id.to_string()], stored_row)
                    .optional()
            })
            .map_err(database("reading an event"))?;
        row.map(StoredRow::into_event).transpose()
    }
}

fn action_record(row: &Row<'_>) -> rusqlite::Result<ActionRecord> {
    let time = |index| -> rusqlite::Result<Option<String>> {
        Ok(row
            .get::<_, Option<i64>>(index)?
            .map(|millis| Millis(millis).to_rfc3339()))
    };
    let payload: String = row.get(11)?;
    Ok(ActionRecord {
        id: row.get(0)?,
        plugin: row.get(1)?,
        kind: row.get(2)?,
        destination: row.get(3)?,
        status: row.get(4)?,
        attempts: row.get(5)?,
        last_error: row.get(6)?,
        result: row.get(7)?,
        created_at: time(8)?.unwrap_or_default(),
        sent_at: time(9)?,
        replayed_from: row.get(10)?,
        action: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        attempt_log: Vec::new(),
    })
}

/// A stored event as read, before its id is checked.
pub(super) struct StoredRow {
    seq: i64,
    id: String,
    received_at: i64,
    path: String,
    remote_addr: Option<String>,
    notify_type: Option<String>,
    device_id: Option<String>,
    body: Vec<u8>,
    warnings: String,
    source: String,
}

pub(super) fn stored_row(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        seq: row.get(0)?,
        id: row.get(1)?,
        received_at: row.get(2)?,
        path: row.get(3)?,
        remote_addr: row.get(4)?,
        notify_type: row.get(5)?,
        device_id: row.get(6)?,
        body: row.get(7)?,
        warnings: row.get(8)?,
        source: row.get(9)?,
    })
}

impl StoredRow {
    pub(super) fn into_event(self) -> Result<StoredEvent, StoreError> {
        Ok(StoredEvent {
            seq: self.seq,
            id: self.id.parse().map_err(StoreError::Damaged)?,
            received_at: Millis(self.received_at),
            path: self.path,
            remote_addr: self.remote_addr,
            notify_type: self.notify_type,
            device_id: self.device_id,
            body: self.body,
            warnings: self.warnings,
            source: self.source,
        })
    }
}

struct SummaryRow {
    id: String,
    received_at: i64,
    notify_type: Option<String>,
    device_id: Option<String>,
    status: String,
    warnings: String,
    actions: i64,
    error: Option<String>,
    results: String,
}

fn summary_columns(row: &Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(SummaryRow {
        id: row.get(0)?,
        received_at: row.get(1)?,
        notify_type: row.get(2)?,
        device_id: row.get(3)?,
        status: row.get(4)?,
        warnings: row.get(5)?,
        actions: row.get(6)?,
        error: row.get(7)?,
        results: row.get(8)?,
    })
}

impl SummaryRow {
    fn into_summary(self) -> Result<EventSummary, StoreError> {
        let warnings = serde_json::from_str(&self.warnings).map_err(|_| {
            StoreError::Damaged(format!("event {} has warnings that are not JSON", self.id))
        })?;
        let results = serde_json::from_str(&self.results).map_err(|_| {
            StoreError::Damaged(format!(
                "event {} has action results that are not text",
                self.id
            ))
        })?;
        Ok(EventSummary {
            id: self.id,
            received_at: Millis(self.received_at).to_rfc3339(),
            notify_type: self.notify_type,
            device_id: self.device_id,
            status: self.status,
            warnings,
            actions: u64::try_from(self.actions).unwrap_or(0),
            error: self.error,
            results,
        })
    }
}
