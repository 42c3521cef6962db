//! `[store]`: where the store is (an SQLite file, or the PostgreSQL database that several
//! instances share) and how long its claims and records last.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawStore;
use super::{ConfigError, DeliveryConfig};

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file, used unless `postgres` is set.
    pub path: PathBuf,
    /// The PostgreSQL database that several instances share, when `store.url` is set.
    pub postgres: Option<PostgresConfig>,
    pub dedup_window: Duration,
    pub retention: Duration,
    pub rejected_max_count: u64,
    pub rejected_max_bytes: usize,
    pub lease: Duration,
}

/// `store.url` and `store.pool_size`. The URL's `Debug` hides its password.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: tokio_postgres::Config,
    pub pool_size: usize,
}

pub(super) fn store_from_raw(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let postgres = postgres_from_raw(&raw.url, raw.pool_size)?;
    if postgres.is_none() && raw.path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            "store.path",
            "must name a database file",
        ));
    }
    Ok(StoreConfig {
        path: raw.path,
        postgres,
        dedup_window: raw.dedup_window,
        retention: raw.retention,
        rejected_max_count: raw.rejected_max_count,
        rejected_max_bytes: raw.rejected_max_bytes,
        lease: raw.lease,
    })
}

/// The PostgreSQL store, if `url` is set. Messages never repeat the URL: it holds a password.
fn postgres_from_raw(url: &str, pool_size: usize) -> Result<Option<PostgresConfig>, ConfigError> {
    if url.trim().is_empty() {
        return Ok(None);
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::invalid(
            "store.url",
            "must be a PostgreSQL URL such as postgres://user:password@host:5432/database",
        ));
    }
    let url = url.parse::<tokio_postgres::Config>().map_err(|error| {
        ConfigError::invalid(
            "store.url",
            format!("is not a valid PostgreSQL URL ({error}); the form is postgres://user:password@host:5432/database"),
        )
    })?;
    if pool_size == 0 {
        return Err(ConfigError::invalid(
            "store.pool_size",
            "must be at least 1 (connections per instance)",
        ));
    }
    Ok(Some(PostgresConfig { url, pool_size }))
}

/// What a claimed action's lease must outlast beyond `delivery.timeout`: the 1 s a send's
/// guard allows past the timeout, and the wait to record its outcome through the store's
/// writer, which queues behind the receiver's group commits.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// A lease that could end while its claimer still waits on a send would let a second claimer
/// send the same action at the same time.
pub(super) fn check_lease(
    store: &StoreConfig,
    delivery: &DeliveryConfig,
) -> Result<(), ConfigError> {
    if store.lease.is_zero() {
        return Err(ConfigError::invalid(
            "store.lease",
            "must be longer than zero",
        ));
    }
    let shortest = delivery.timeout + LEASE_MARGIN;
    if store.lease < shortest {
        let message = format!(
            "{:?} is shorter than delivery.timeout ({:?}) plus {:?} to record the outcome, \
             so another claimer could send an action this one still waits on; \
             set store.lease to at least {:?} or lower delivery.timeout",
            store.lease, delivery.timeout, LEASE_MARGIN, shortest
        );
        return Err(ConfigError::invalid("store.lease", message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, parse_env};

    #[test]
    fn a_url_selects_postgresql_and_its_errors_never_repeat_it() {
        assert!(parse("").unwrap().store.postgres.is_none());
        let url = "postgres://app:pw-secret@db.example.com:6543/fleet";
        let config = parse(&format!("[store]\nurl = \"{url}\"\npool_size = 4")).unwrap();
        let postgres = config.store.postgres.expect("a url selects PostgreSQL");
        assert_eq!(postgres.pool_size, 4);
        assert_eq!(postgres.url.get_dbname(), Some("fleet"));
        assert!(!format!("{postgres:?}").contains("pw-secret"));
        let from_env = parse_env("", &[("NOTIROUTER__STORE__URL", url)]).unwrap();
        assert!(from_env.store.postgres.is_some());

        for (text, expected) in [
            (
                "url = \"mysql://app:pw-secret@db/x\"",
                "store.url: must be a PostgreSQL URL",
            ),
            (
                "url = \"postgres://app:pw-secret@db:port/x\"",
                "store.url: is not a valid PostgreSQL URL",
            ),
            (
                "url = \"postgres://db/x\"\npool_size = 0",
                "store.pool_size: must be at least 1",
            ),
        ] {
            let error = parse(&format!("[store]\n{text}")).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("pw-secret"), "{error}");
        }
    }

    #[test]
    fn a_lease_must_outlast_a_send_and_the_record_of_its_outcome() {
        let error = parse("[store]\nlease = \"0s\"").unwrap_err().to_string();
        assert!(
            error.contains("store.lease: must be longer than zero"),
            "{error}"
        );
        let error = parse("[store]\nlease = \"14s\"\n[delivery]\ntimeout = \"10s\"")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("store.lease: 14s is shorter"), "{error}");
        assert!(error.contains("delivery.timeout (10s)"), "{error}");
        assert!(error.contains("set store.lease to at least 15s"), "{error}");
        let config = parse("[store]\nlease = \"15s\"\n[delivery]\ntimeout = \"10s\"").unwrap();
        assert_eq!(config.store.lease, Duration::from_secs(15));
        let error = parse("[delivery]\ntimeout = \"1m\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("at least 65s"), "{error}");
    }
}
