//! A database of its own for each PostgreSQL test, on the server that `NOTIROUTER_TEST_PG`
//! names (default `postgres://postgres@127.0.0.1:5432/test`), dropped when the test ends. Under
//! `CI=true` an unreachable server fails the test; elsewhere the test is skipped with one line
//! saying why.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct TestDatabase {
    /// The URL of this test's database, for `store.url`.
    pub url: String,
    name: String,
    server: String,
}

impl TestDatabase {
    /// A fresh, empty database; `None` (after saying why) when there is no server to test on
    /// outside CI.
    pub fn create() -> Option<TestDatabase> {
        let server = std::env::var("NOTIROUTER_TEST_PG").unwrap_or_else(|_| DEFAULT_SERVER.into());
        let name = format!(
            "notirouter_test_{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        );
        // Before the database exists: a server that is no URL must not leave one behind.
        let url = with_database(&server, &name);
        match admin(&server, &format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(TestDatabase { url, name, server }),
            Err(error) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!(
                    "PostgreSQL tests may not be skipped under CI=true, and {server} answers: {error}"
                )
            }
            Err(error) => {
                eprintln!(
                    "skipped: no PostgreSQL to test on at {server} ({error}); set NOTIROUTER_TEST_PG"
                );
                None
            }
        }
    }
}

impl TestDatabase {
    /// The name of this test's database.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` on the server's own database, for what a test observes of the server from
    /// outside the store under test.
    pub fn server_query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Row> {
        on_server(&self.server, async |client| client.query(sql, params).await)
            .unwrap_or_else(|error| panic!("{sql} failed on {}: {error}", self.server))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let dropped = admin(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        if let Err(error) = dropped {
            eprintln!("could not drop the test database {}: {error}", self.name);
        }
    }
}

/// Runs one statement on the server's own database.
fn admin(server: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    on_server(server, async |client| client.batch_execute(sql).await)
}

/// Runs `work` on a connection of its own to `server`.
fn on_server<T>(
    server: &str,
    work: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, tokio_postgres::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime starts");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(server, NoTls).await?;
        let connection = tokio::spawn(connection);
        let done = work(&client).await;
        drop(client);
        let _ = connection.await;
        done
    })
}

/// `server` with its database replaced by `name` (and its query string kept).
fn with_database(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server)
        .unwrap_or_else(|error| {
            panic!(
                "NOTIROUTER_TEST_PG {server:?} is not a URL ({error}); set it to one such as {DEFAULT_SERVER}"
            )
        });
    url.set_path(name);
    url.into()
}
