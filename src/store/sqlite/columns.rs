//! How typed columns are stored: an action's status as its lowercase name in
//! `actions.status`, its destination as its text form in `actions.destination`.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::destination::Destination;
use crate::store::ActionStatus;

impl ToSql for ActionStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ActionStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|error: String| FromSqlError::Other(error.into()))
    }
}

impl ToSql for Destination {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Destination {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|error: String| FromSqlError::Other(error.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_written() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        for status in ActionStatus::ALL {
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

    #[test]
    fn a_destination_reads_back_as_written() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let ops = Destination::Channel("ops".into());
        let (text, read): (String, Destination) = connection
            .query_row("SELECT ?1, ?1", [&ops], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!((text.as_str(), read), ("channel:ops", ops));
    }
}
