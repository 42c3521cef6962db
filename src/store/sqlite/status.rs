//! How an action's status is stored: as its lowercase name in `actions.status`.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::store::ActionStatus;

const ALL: [ActionStatus; 5] = [
    ActionStatus::Pending,
    ActionStatus::Sent,
    ActionStatus::Skipped,
    ActionStatus::Dead,
    ActionStatus::Dropped,
];

impl ToSql for ActionStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ActionStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        ALL.into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown action status {text:?}").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_written() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        for status in ALL {
            let read: ActionStatus = connection
                .query_row("SELECT ?1", [status], |row| row.get(0))
                .unwrap();
            assert_eq!(read, status);
        }
        let unknown = connection.query_row("SELECT 'in_flight'", [], |row| {
            row.get::<_, ActionStatus>(0)
        });
        assert!(unknown.is_err());
    }
}
