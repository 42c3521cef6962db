//! Reads for the CLI and the script stage: event lists, one event's story, stored events.

use tokio_postgres::Row;

use super::cached;
use super::delivery::{attempts_of, parse_destination};
use super::{PgStore, database, received_at_of};
use crate::model::{EventId, Millis};
use crate::store::{ActionRecord, EventDetail, EventFilter, EventSummary, StoreError, StoredEvent};

const SUMMARY_COLUMNS: &str = "e.id, e.received_at, e.notify_type, e.device_id, e.status,
    e.warnings, (SELECT count(*) FROM actions a WHERE a.event_id = e.id) AS actions, e.error,
    (SELECT coalesce(array_agg(a.result ORDER BY a.created_at, a.id), '{}') FROM actions a
     WHERE a.event_id = e.id AND a.result IS NOT NULL) AS results";

/// The columns [`stored_event`] reads.
pub(super) const STORED_COLUMNS: &str = "seq, id, received_at, path, remote_addr, notify_type,
    device_id, body, warnings, source";

impl PgStore {
    pub(super) fn query_events(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let status = filter.status.map(|s| s.as_str());
        let limit = i64::from(filter.limit);
        self.with_client(async |client| {
            cached::query(
                &*client,
                &format!(
                    "SELECT {SUMMARY_COLUMNS} FROM events e
                         WHERE ($1::TEXT IS NULL OR e.status = $1)
                         AND ($2::TEXT IS NULL OR e.notify_type = $2)
                         AND ($3::TEXT IS NULL OR e.device_id = $3)
                         ORDER BY e.seq DESC LIMIT $4"
                ),
                &[&status, &filter.notify_type, &filter.device_id, &limit],
            )
            .await
            .map_err(database("listing events"))?
            .iter()
            .map(summary)
            .collect()
        })
    }

    pub(super) fn query_event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.with_client(async |client| {
            let Some(row) = cached::query_opt(
                &*client,
                &format!(
                    "SELECT {SUMMARY_COLUMNS}, e.path, e.remote_addr, e.body,
                         e.plugins::TEXT AS plugins FROM events e
                         WHERE e.seq = $1 AND e.received_at = $2"
                ),
                &[&id.seq(), &received_at_of(id)],
            )
            .await
            .map_err(database("reading an event"))?
            else {
                return Ok(None);
            };
            let body = String::from_utf8(row.get("body")).map_err(|_| {
                StoreError::Damaged(format!("event {id} has a body that is not UTF-8"))
            })?;
            let plugin_runs = serde_json::from_str(row.get("plugins")).map_err(|_| {
                StoreError::Damaged(format!("event {id} has plugin runs that are not JSON"))
            })?;
            let mut actions = cached::query(
                &*client,
                "SELECT id, plugin, kind, destination, status, attempts, last_error, result,
                     created_at, sent_at, replayed_from, payload FROM actions WHERE event_id = $1
                     ORDER BY created_at, id",
                &[&id.to_string()],
            )
            .await
            .map_err(database("reading actions"))?
            .iter()
            .map(action_record)
            .collect::<Result<Vec<_>, _>>()?;
            for action in &mut actions {
                action.attempt_log = attempts_of(&*client, &action.id).await?;
            }
            Ok(Some(EventDetail {
                summary: summary(&row)?,
                path: row.get("path"),
                remote_addr: row.get("remote_addr"),
                body,
                plugin_runs,
                actions,
            }))
        })
    }

    pub(super) fn read_stored(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.with_client(async |client| {
            cached::query_opt(
                &*client,
                &format!("SELECT {STORED_COLUMNS} FROM events WHERE seq = $1 AND received_at = $2"),
                &[&id.seq(), &received_at_of(id)],
            )
            .await
            .map_err(database("reading an event"))?
            .as_ref()
            .map(stored_event)
            .transpose()
        })
    }
}

fn summary(row: &Row) -> Result<EventSummary, StoreError> {
    let id: String = row.get("id");
    let warnings = serde_json::from_str(row.get("warnings"))
        .map_err(|_| StoreError::Damaged(format!("event {id} has warnings that are not JSON")))?;
    Ok(EventSummary {
        received_at: Millis(row.get("received_at")).to_rfc3339(),
        notify_type: row.get("notify_type"),
        device_id: row.get("device_id"),
        status: row.get("status"),
        warnings,
        actions: u64::try_from(row.get::<_, i64>("actions")).unwrap_or(0),
        error: row.get("error"),
        results: row.get("results"),
        id,
    })
}

fn action_record(row: &Row) -> Result<ActionRecord, StoreError> {
    let time = |name: &str| {
        row.get::<_, Option<i64>>(name)
            .map(|at| Millis(at).to_rfc3339())
    };
    let payload: String = row.get("payload");
    Ok(ActionRecord {
        id: row.get("id"),
        plugin: row.get("plugin"),
        kind: row.get("kind"),
        destination: parse_destination(row.get("destination"))?,
        status: row
            .get::<_, &str>("status")
            .parse()
            .map_err(StoreError::Damaged)?,
        attempts: i64::from(row.get::<_, i32>("attempts")),
        last_error: row.get("last_error"),
        result: row.get("result"),
        created_at: time("created_at").unwrap_or_default(),
        sent_at: time("sent_at"),
        replayed_from: row.get("replayed_from"),
        action: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        attempt_log: Vec::new(),
    })
}

/// A stored event, from the columns of [`STORED_COLUMNS`].
pub(super) fn stored_event(row: &Row) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: row.get("seq"),
        id: row
            .get::<_, &str>("id")
            .parse()
            .map_err(StoreError::Damaged)?,
        received_at: Millis(row.get("received_at")),
        path: row.get("path"),
        remote_addr: row.get("remote_addr"),
        notify_type: row.get("notify_type"),
        device_id: row.get("device_id"),
        body: row.get("body"),
        warnings: row.get("warnings"),
        source: row.get("source"),
    })
}
