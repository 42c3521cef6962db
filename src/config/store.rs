//! `[store]`: where the store is (an SQLite file, or the PostgreSQL database that several
//! instances share, and how its connections are encrypted) and how long its claims and records
//! last.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;

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

/// `store.url`, `store.pool_size` and `store.tls_ca`. The URL's `Debug` hides its password.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub url: tokio_postgres::Config,
    pub pool_size: usize,
    /// What the server's certificate must chain to; unset, TLS encrypts but checks no one.
    pub tls_ca: Option<TlsCa>,
}

/// `store.tls_ca`, read when the configuration loads.
#[derive(Debug, Clone)]
pub struct TlsCa {
    pub path: PathBuf,
    pub roots: Arc<RootCertStore>,
}

pub(super) fn store_from_raw(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let postgres = postgres_from_raw(&raw)?;
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
fn postgres_from_raw(raw: &RawStore) -> Result<Option<PostgresConfig>, ConfigError> {
    let url = raw.url.as_str();
    if url.trim().is_empty() {
        return Ok(None);
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::invalid(
            "store.url",
            "must be a PostgreSQL URL such as postgres://user:password@host:5432/database",
        ));
    }
    if url.contains("sslmode=verify-") {
        return Err(ConfigError::invalid(
            "store.url",
            "sslmode verify-ca and verify-full are not supported; use sslmode=require and set \
             store.tls_ca to the CA's PEM file: the server's certificate and host name are then checked",
        ));
    }
    let mut url = url.parse::<tokio_postgres::Config>().map_err(|error| {
        ConfigError::invalid(
            "store.url",
            format!("is not a valid PostgreSQL URL ({error}); the form is postgres://user:password@host:5432/database"),
        )
    })?;
    if raw.pool_size == 0 {
        return Err(ConfigError::invalid(
            "store.pool_size",
            "must be at least 1 (connections per instance)",
        ));
    }
    let tls_ca = tls_ca_from_raw(&raw.tls_ca)?;
    if tls_ca.is_some() {
        require_tls(&mut url)?;
    }
    Ok(Some(PostgresConfig {
        url,
        pool_size: raw.pool_size,
        tls_ca,
    }))
}

/// A CA to check the server against means TLS is wanted: `prefer` (also the default) would
/// let whoever answers turn it off, so it becomes `require`.
fn require_tls(url: &mut tokio_postgres::Config) -> Result<(), ConfigError> {
    if url.get_ssl_mode() == SslMode::Disable {
        return Err(ConfigError::invalid(
            "store.tls_ca",
            "is set, but store.url says sslmode=disable; remove one of them",
        ));
    }
    url.ssl_mode(SslMode::Require);
    Ok(())
}

/// Reads the CA certificates of `store.tls_ca` now, so that a wrong file stops the start
/// rather than every connection.
fn tls_ca_from_raw(path: &Path) -> Result<Option<TlsCa>, ConfigError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let invalid = |problem: String| {
        ConfigError::invalid(
            "store.tls_ca",
            format!(
                "{} {problem}; give the PEM file of the CA that signed the PostgreSQL server's certificate",
                path.display()
            ),
        )
    };
    let pem = std::fs::read(path).map_err(|error| invalid(format!("cannot be read ({error})")))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("is not valid PEM ({error})")))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(invalid("holds no usable CERTIFICATE".to_owned()));
    }
    Ok(Some(TlsCa {
        path: path.to_owned(),
        roots: Arc::new(roots),
    }))
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

    use tokio_postgres::config::SslMode;

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
    fn a_tls_ca_is_read_at_load_and_makes_tls_required() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["db.example.com".into()]).unwrap();
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let with_ca = |url: &str| format!("[store]\nurl = \"{url}\"\ntls_ca = {ca:?}");

        for url in ["postgres://db/x", "postgres://db/x?sslmode=prefer"] {
            let config = parse(&with_ca(url)).unwrap();
            let postgres = config.store.postgres.unwrap();
            assert_eq!(postgres.url.get_ssl_mode(), SslMode::Require, "{url}");
            let tls_ca = postgres.tls_ca.expect("tls_ca is kept");
            assert_eq!((tls_ca.path, tls_ca.roots.len()), (ca.clone(), 1));
        }
        let plain = parse("[store]\nurl = \"postgres://db/x\"").unwrap();
        let postgres = plain.store.postgres.unwrap();
        assert_eq!(postgres.url.get_ssl_mode(), SslMode::Prefer);
        assert!(postgres.tls_ca.is_none());

        let error = parse(&with_ca("postgres://db/x?sslmode=disable"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("store.tls_ca: is set, but store.url says sslmode=disable"),
            "{error}"
        );
        let error = parse("[store]\nurl = \"postgres://app:pw-secret@db/x?sslmode=verify-full\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("use sslmode=require and set store.tls_ca"),
            "{error}"
        );
        assert!(!error.contains("pw-secret"), "{error}");
    }

    #[test]
    fn a_tls_ca_that_is_missing_or_not_a_pem_certificate_is_an_error_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let key_only = dir.path().join("key.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["db.example.com".into()]).unwrap();
        std::fs::write(&key_only, certified.signing_key.serialize_pem()).unwrap();
        let text_file = dir.path().join("notes.txt");
        std::fs::write(&text_file, "not a certificate").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");

        for (path, problem) in [
            (&missing, "cannot be read"),
            (&text_file, "holds no usable CERTIFICATE"),
            (&key_only, "holds no usable CERTIFICATE"),
            (&broken, "is not valid PEM"),
        ] {
            let text = format!("[store]\nurl = \"postgres://db/x\"\ntls_ca = {path:?}");
            let error = parse(&text).unwrap_err().to_string();
            let expected = format!("store.tls_ca: {} {problem}", path.display());
            assert!(error.starts_with(&expected), "{error}");
            assert!(error.contains("give the PEM file of the CA"), "{error}");
        }
        let env = [
            ("NOTIROUTER__STORE__URL", "postgres://db/x"),
            ("NOTIROUTER__STORE__TLS_CA", text_file.to_str().unwrap()),
        ];
        let error = parse_env("", &env).unwrap_err().to_string();
        assert!(
            error.starts_with("environment variable NOTIROUTER__STORE__TLS_CA: store.tls_ca: "),
            "{error}"
        );
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
