//! The PostgreSQL store, for several instances on one database: every claim, duplicate check
//! and piece of script state is decided in the database, never in one instance's memory.
//!
//! The [`Store`] trait is synchronous (its callers are the intake's writer thread, script
//! workers and blocking tasks), and tokio-postgres is asynchronous: the store owns a small
//! runtime of its own that drives the connections, and each call waits for its own work.
//! The files below hold the statements by stage, as for SQLite.

mod cached;
mod campaigns;
mod claims;
mod delivery;
mod digests;
mod intake;
mod notify;
mod outcomes;
mod platform;
mod queries;
mod schema;
mod target;
mod tls;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use ulid::{Generator, Ulid};

use super::{
    CallLimit, Claimer, DeadLetter, EventDetail, EventFilter, EventSummary, GroupWritten,
    PendingAction, PlatformToken, Pruned, Store, StoreError, StoredEvent, WriteGroup,
};
use crate::config::{PostgresConfig, StoreConfig};
use crate::destination::Destination;
use crate::model::{EventId, Millis};

pub use target::Target;

/// How long a caller waits for a free connection, or for a new one, before the store answers
/// that the database cannot be reached (the receiver then answers 503).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgStore {
    /// Always set but while dropping: see the `Drop` impl.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// Where the database is, for messages (never the password).
    target: Target,
    /// How the listener connects, outside the pool.
    connect_config: tokio_postgres::Config,
    /// TLS for the listener, as for the pool.
    connector: MakeRustlsConnect,
    /// Whether the server's certificate is checked against `store.tls_ca`.
    checks_certificate: bool,
    /// Action ids: monotonic within a millisecond.
    ids: Mutex<Generator>,
    dedup_window: Duration,
    rejected_max_count: u64,
    /// How long a claim holds.
    lease: Duration,
}

/// Wraps a database error with what the store was doing.
fn database(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Database {
        context,
        source: Box::new(source),
    }
}

impl PgStore {
    /// Connects (proving the database answers) and migrates the schema.
    pub fn open(config: &StoreConfig, postgres: &PostgresConfig) -> Result<PgStore, StoreError> {
        let target = Target::of(&postgres.url);
        let connector = tls::connector(postgres)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("notirouter-postgres")
            .enable_all()
            .build()
            .map_err(StoreError::Thread)?;
        let pool = {
            let _context = runtime.enter();
            build_pool(postgres, connector.clone())?
        };
        let store = PgStore {
            runtime: Some(runtime),
            pool,
            target,
            connect_config: connect_config(postgres),
            connector,
            checks_certificate: postgres.tls_ca.is_some(),
            ids: Mutex::new(Generator::new()),
            dedup_window: config.dedup_window,
            rejected_max_count: config.rejected_max_count,
            lease: config.lease,
        };
        store.with_client(async |client| schema::migrate(client).await)?;
        Ok(store)
    }

    /// Where this store's database is, as `host:port/database`.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Runs `work` on a pooled connection.
    fn with_client<T>(
        &self,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives until the store drops");
        // The caller may itself be on a runtime's thread (`serve` opens its store in its async
        // main), where tokio refuses `block_on`: the work is polled here with a plain
        // executor, in this runtime's context, whose threads drive the connections' I/O.
        let _context = runtime.enter();
        futures_executor::block_on(async {
            let mut client = self.connection().await?;
            work(&mut client).await
        })
    }

    /// Runs `work` in one transaction, committed when it returns `Ok`. A durable transaction
    /// returns only once PostgreSQL has flushed its commit (`synchronous_commit = on`); any
    /// other (a claim) commits without waiting for the disk, since a lost claim only makes
    /// its rows claimable again.
    ///
    /// `BEGIN` is not waited for on its own: it is sent with `work`'s first statement (the
    /// connection keeps their order), so a transaction costs a round trip less.
    fn in_transaction<T>(
        &self,
        durability: Durability,
        work: impl AsyncFnOnce(&Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_client(async |client| {
            let client: &Tx = client;
            let (begun, done) =
                futures_util::join!(client.batch_execute(durability.begin()), work(client));
            let done = begun.map_err(database("starting a transaction")).and(done);
            match done {
                Ok(value) => {
                    client
                        .batch_execute("COMMIT")
                        .await
                        .map_err(database("committing"))?;
                    Ok(value)
                }
                Err(error) => {
                    // Leaves the connection out of the failed transaction before the pool
                    // hands it out again; a broken one fails this too and is not reused.
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(error)
                }
            }
        })
    }

    async fn connection(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|error| StoreError::Unreachable {
                target: self.target.to_string(),
                reason: pool_error_reason(error),
            })
    }

    fn next_id(&self) -> Ulid {
        lock(&self.ids)
            .generate()
            .unwrap_or_else(|overflow| overflow.commit_overflow_increment())
    }

    fn lease_from(&self, now: Millis) -> i64 {
        now.0.saturating_add(self.lease.as_millis() as i64)
    }
}

/// The oldest PostgreSQL the schema and its statements are written for.
const OLDEST_SERVER: i32 = 130_000;

impl PgStore {
    /// The server's version, whether the connection is encrypted, and that this user may
    /// create tables and write in its schema.
    fn describe_server(&self) -> Result<String, StoreError> {
        let target = self.target.to_string();
        self.in_transaction(Durability::Claim, async |transaction| {
            let row = cached::query_one(transaction,
                    "SELECT current_setting('server_version_num')::INTEGER,
                     current_setting('server_version'), current_schema(),
                     has_schema_privilege(current_schema(), 'CREATE')",
                    &[],
                )
                .await
                .map_err(database("reading the server's version"))?;
            let (number, version): (i32, String) = (row.get(0), row.get(1));
            let (schema, can_create): (String, bool) = (row.get(2), row.get(3));
            if number < OLDEST_SERVER {
                return Err(StoreError::Unsupported(format!(
                    "{target} runs PostgreSQL {version}; notirouter needs 13 or later"
                )));
            }
            if !can_create {
                return Err(StoreError::Unsupported(format!(
                    "the user of store.url may not create tables in schema {schema} of {target}; \
                     GRANT CREATE ON SCHEMA {schema} to it"
                )));
            }
            let encryption = self.encryption(transaction).await?;
            cached::execute(transaction, "CREATE TEMPORARY TABLE doctor_probe (x INTEGER) ON COMMIT DROP", &[])
                .await
                .map_err(database("writing a probe table"))?;
            Ok(format!(
                "{target}: PostgreSQL {version}, {encryption}, schema {schema} migrated, tables can be created and written"
            ))
        })
    }

    /// Whether this session is encrypted, as the server sees it, and whether the server's
    /// certificate was checked.
    async fn encryption(&self, transaction: &Tx) -> Result<String, StoreError> {
        let tls = cached::query_opt(
            transaction,
            "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
            &[],
        )
        .await
        .map_err(database("reading the connection's encryption"))?;
        let Some(row) = tls else {
            return Ok(match self.connect_config.get_ssl_mode() {
                SslMode::Disable => "not encrypted (sslmode=disable)".to_owned(),
                _ => "not encrypted: the server offers no TLS".to_owned(),
            });
        };
        let version: String = row.get(0);
        Ok(match self.checks_certificate {
            true => {
                format!("encrypted ({version}), server certificate checked against store.tls_ca")
            }
            false => {
                format!("encrypted ({version}), server certificate not checked (set store.tls_ca)")
            }
        })
    }
}

/// A store may be dropped on a thread of another runtime (the server's), where waiting for
/// this one's tasks is not allowed: its connections are closed without waiting.
impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether a transaction's commit must reach the disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Durable,
    Claim,
}

impl Durability {
    /// What opens such a transaction. Every connection starts with `synchronous_commit = on`
    /// (see `connect_config`); a claim turns it off for its own transaction only.
    fn begin(self) -> &'static str {
        match self {
            Durability::Durable => "BEGIN",
            Durability::Claim => "BEGIN; SET LOCAL synchronous_commit = off",
        }
    }
}

/// The connection of a transaction that [`PgStore::in_transaction`] has begun: every statement
/// on it belongs to that transaction.
type Tx = deadpool_postgres::Client;

/// The URL's settings, with a bounded connect and keepalives, so that a vanished database is
/// noticed rather than waited for.
/// Every session starts with `synchronous_commit = on`, whatever the server's default: a
/// notification is answered 200 only after its commit is flushed.
fn connect_config(postgres: &PostgresConfig) -> tokio_postgres::Config {
    let mut connect = postgres.url.clone();
    let options = match connect.get_options() {
        Some(given) => format!("{given} -c synchronous_commit=on"),
        None => "-c synchronous_commit=on".to_owned(),
    };
    connect
        .options(&options)
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .application_name("notirouter");
    connect
}

fn build_pool(postgres: &PostgresConfig, connector: MakeRustlsConnect) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        connect_config(postgres),
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(postgres.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| StoreError::Unreachable {
            target: Target::of(&postgres.url).to_string(),
            reason: error.to_string(),
        })
}

/// What went wrong getting a connection, in words for the operator.
fn pool_error_reason(error: deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Timeout(_) => {
            format!("no connection within {CONNECT_TIMEOUT:?} (is the database up and reachable?)")
        }
        PoolError::Backend(error) => connect_error_reason(&error),
        other => other.to_string(),
    }
}

/// A failed connection's error with its cause (tokio-postgres's own message leaves it out, as
/// "error performing TLS handshake"), and what to do about a refused certificate.
/// tokio-postgres never puts the password in its messages.
fn connect_error_reason(error: &tokio_postgres::Error) -> String {
    let reason = match (error.as_db_error(), std::error::Error::source(error)) {
        (Some(db), _) => db.message().to_owned(),
        (None, Some(cause)) => format!("{error}: {cause}"),
        (None, None) => error.to_string(),
    };
    match tls::certificate_hint(error) {
        Some(hint) => format!("{reason} ({hint})"),
        None => reason,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The stored form of an event id's time part, for lookups by (seq, received_at).
fn received_at_of(id: EventId) -> i64 {
    i64::try_from(id.0.timestamp_ms()).unwrap_or(i64::MAX)
}

/// Commits the whole group in one transaction: any failure leaves none of it stored.
fn write_together(store: &PgStore, group: &WriteGroup<'_>) -> Result<GroupWritten, StoreError> {
    store.in_transaction(Durability::Durable, async |transaction| {
        let appended = store
            .append_in(transaction, group.events, group.rejected)
            .await?;
        for batch in group.outcomes {
            store.outcomes_in(transaction, batch, group.now).await?;
        }
        let raised = store
            .deliveries_in(transaction, group.deliveries, group.now)
            .await?;
        // Appending told of the events it accepted.
        if raised > 0 {
            notify::notify(transaction, notify::EVENTS).await?;
        }
        let new_actions = group
            .outcomes
            .iter()
            .any(|batch| batch.outcomes.iter().any(|o| !o.actions.is_empty()));
        if new_actions || !group.deliveries.is_empty() {
            notify::notify(transaction, notify::ACTIONS).await?;
        }
        Ok(GroupWritten {
            appended: Ok(appended),
            outcomes: group.outcomes.iter().map(|_| Ok(())).collect(),
            deliveries: Ok(raised),
        })
    })
}

impl Store for PgStore {
    fn write_together(&self, group: &WriteGroup<'_>) -> Result<GroupWritten, StoreError> {
        write_together(self, group)
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.with_client(async |client| {
            client
                .batch_execute("SELECT 1")
                .await
                .map_err(database("probing the database"))
        })
    }

    fn describe(&self) -> Result<String, StoreError> {
        self.describe_server()
    }

    fn prune(&self, before: Millis, limit: usize) -> Result<Pruned, StoreError> {
        self.prune_before(before, limit)
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.query_events(filter)
    }

    fn event(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        self.query_event(id)
    }

    fn stored_event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.read_stored(id)
    }

    fn claim_events(
        &self,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.claim_events_for(by, limit, now)
    }

    /// Instances share the database: a claim another instance holds is left to its lease.
    fn release_stale_claims(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn takes_concurrent_writers(&self) -> bool {
        true
    }

    fn watch_others(&self, signals: &super::Signals) {
        self.listen(signals.clone());
    }

    fn due_destinations(&self, now: Millis) -> Result<Vec<Destination>, StoreError> {
        self.read_due_destinations(now)
    }

    fn claim_due_actions(
        &self,
        destination: &Destination,
        by: &Claimer,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<PendingAction>, StoreError> {
        self.claim_actions_for(destination, by, limit, now)
    }

    fn renew_action_claims(
        &self,
        by: &Claimer,
        ids: &[String],
        now: Millis,
    ) -> Result<usize, StoreError> {
        self.renew_action_claims_for(by, ids, now)
    }

    fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        self.read_next_due()
    }

    fn oldest_pending(&self) -> Result<Option<Millis>, StoreError> {
        self.read_oldest_pending()
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.read_dead_letters()
    }

    fn requeue_dead(&self, id: Option<&str>) -> Result<usize, StoreError> {
        self.write_requeue(id)
    }

    fn drop_dead(&self, id: &str) -> Result<bool, StoreError> {
        self.write_drop(id)
    }

    fn platform_token(&self, app: &str) -> Result<Option<PlatformToken>, StoreError> {
        self.read_platform_token(app)
    }

    fn claim_token_renewal(
        &self,
        app: &str,
        by: &Claimer,
        now: Millis,
        until: Millis,
    ) -> Result<bool, StoreError> {
        self.claim_renewal_for(app, by, now, until)
    }

    fn store_platform_token(
        &self,
        app: &str,
        by: &Claimer,
        token: &PlatformToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.store_token_for(app, by, token, now)
    }

    fn release_token_renewal(&self, app: &str, by: &Claimer) -> Result<(), StoreError> {
        self.release_renewal_for(app, by)
    }

    fn reserve_platform_call(
        &self,
        app: &str,
        limit: CallLimit,
        now: Millis,
    ) -> Result<Millis, StoreError> {
        self.reserve_call_for(app, limit, now)
    }

    fn fire_ended_digests(&self, now: Millis, limit: usize) -> Result<usize, StoreError> {
        self.fire_digests(now, limit)
    }

    fn next_digest_end(&self) -> Result<Option<Millis>, StoreError> {
        self.read_next_digest_end()
    }

    fn campaign_view(&self) -> Option<&dyn super::campaigns::CampaignView> {
        Some(self)
    }
}
