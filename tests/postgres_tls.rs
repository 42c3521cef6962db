//! TLS to PostgreSQL (README "Several instances"): `sslmode` in `store.url` as libpq knows it,
//! and `store.tls_ca` checking the server's certificate and host name. On the server of
//! tests/common/pg.rs, which must have `ssl = on` (Debian's default, with its snakeoil
//! certificate); what each session really is comes from the server's own `pg_stat_ssl`.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::pg::TestDatabase;
use common::{all_output, config_file, run_cli_with_env, stdout, wait_until};
use notirouter::config::Config;
use notirouter::store::{self, Opener, Signals, Store};

const PASSWORD: &str = "pw-never-shown-4711";

fn config_of(toml: &str) -> Config {
    Config::parse(toml, Path::new("t.toml"), Vec::new()).expect("the config is valid")
}

fn store_toml(url: &str, tls_ca: Option<&Path>) -> String {
    let mut toml = format!("[store]\nurl = {url:?}\n");
    if let Some(ca) = tls_ca {
        toml.push_str(&format!("tls_ca = {ca:?}\n"));
    }
    toml
}

/// `url` with one more query parameter.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// The file of the certificate the server presents; `None` (after saying why) when the server
/// has no TLS, outside CI.
fn server_certificate(database: &TestDatabase) -> Option<PathBuf> {
    let ssl: String = database.server_query("SHOW ssl", &[])[0].get(0);
    if ssl != "on" {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the test server must have ssl = on under CI=true"
        );
        eprintln!("skipped: the test server has ssl = off");
        return None;
    }
    let file: String = database.server_query("SHOW ssl_cert_file", &[])[0].get(0);
    Some(PathBuf::from(file))
}

/// The DNS names a certificate file holds (its subjectAltName), as openssl reads them.
fn dns_names(certificate: &Path) -> Vec<String> {
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(certificate)
        .output()
        .expect("openssl reads the server's certificate");
    assert!(output.status.success(), "{}", all_output(&output));
    stdout(&output)
        .split([',', ' ', '\n'])
        .filter_map(|name| name.strip_prefix("DNS:"))
        .map(str::to_owned)
        .collect()
}

/// Whether each of the store's sessions on `database` is encrypted, as the server sees them.
fn sessions_encrypted(database: &TestDatabase) -> Vec<bool> {
    database
        .server_query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'notirouter'",
            &[&database.name()],
        )
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Opens the store as `serve` does, listener included, and waits for both its pooled and its
/// listening session to be seen by the server.
fn open_and_watch(database: &TestDatabase, config: &Config) -> Arc<dyn Store> {
    let store = store::open(&config.store, Opener::Server).expect("the store opens");
    store.watch_others(&Signals::default());
    let both = wait_until(Duration::from_secs(10), || {
        sessions_encrypted(database).len() >= 2
    });
    assert!(both, "sessions: {:?}", sessions_encrypted(database));
    store
}

fn doctor(toml: &str, env: &[(&str, &str)]) -> Output {
    let (_dir, config) = config_file(toml);
    run_cli_with_env(&config, &["doctor"], env)
}

/// The doctor's line about `subject`.
fn line_about(output: &Output, subject: &str) -> String {
    stdout(output)
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some(subject))
        .unwrap_or_else(|| panic!("no line about {subject}:\n{}", all_output(output)))
        .to_owned()
}

#[test]
fn each_sslmode_connects_as_with_libpq_and_doctor_says_whether_it_is_encrypted() {
    for (mode, encrypted, doctor_says) in [
        ("disable", false, "not encrypted (sslmode=disable)"),
        ("prefer", true, "encrypted (TLSv"),
        ("require", true, "encrypted (TLSv"),
    ] {
        let Some(database) = TestDatabase::create() else {
            return;
        };
        if server_certificate(&database).is_none() {
            return;
        }
        let toml = store_toml(&with_param(&database.url, &format!("sslmode={mode}")), None);
        let store = open_and_watch(&database, &config_of(&toml));
        let sessions = sessions_encrypted(&database);
        assert!(
            sessions.iter().all(|&ssl| ssl == encrypted),
            "{mode}: {sessions:?}"
        );

        let line = line_about(&doctor(&toml, &[]), "store");
        assert!(line.starts_with("ok"), "{mode}: {line}");
        assert!(line.contains(doctor_says), "{mode}: {line}");
        if encrypted {
            assert!(
                line.contains("server certificate not checked (set store.tls_ca)"),
                "{line}"
            );
        }
        drop(store);
    }
}

/// A server that answers every TLS request with "no", and counts the connections that then
/// went on in plain text (sent a startup message).
fn server_without_tls() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port can be bound");
    let port = listener.local_addr().expect("it has an address").port();
    let went_on_in_plain = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&went_on_in_plain);
    std::thread::spawn(move || {
        for mut connection in listener.incoming().flatten() {
            let mut ssl_request = [0; 8];
            if connection.read_exact(&mut ssl_request).is_err() {
                continue;
            }
            let _ = connection.write_all(b"N");
            let mut startup_length = [0; 4];
            if connection.read_exact(&mut startup_length).is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, went_on_in_plain)
}

#[test]
fn require_and_a_tls_ca_refuse_a_server_that_offers_no_tls() {
    let (port, went_on_in_plain) = server_without_tls();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:{port}/fleet");

    for (url, tls_ca) in [
        (with_param(&url, "sslmode=require"), None),
        (url.clone(), Some(ca.as_path())),
    ] {
        let config = config_of(&store_toml(&url, tls_ca));
        let error = store::open(&config.store, Opener::Command)
            .err()
            .expect("a server without TLS is refused")
            .to_string();
        assert!(
            error.contains(&format!("cannot reach the database 127.0.0.1:{port}/fleet")),
            "{error}"
        );
        assert!(error.contains("server does not support TLS"), "{error}");
        assert!(!error.contains(PASSWORD), "{error}");
    }
    assert_eq!(went_on_in_plain.load(Ordering::SeqCst), 0);

    // The same server under `prefer`: the connection goes on in plain text.
    let config = config_of(&store_toml(&with_param(&url, "sslmode=prefer"), None));
    assert!(store::open(&config.store, Opener::Command).is_err());
    assert!(went_on_in_plain.load(Ordering::SeqCst) > 0);
}

/// The test database's URL with `host` in it, connecting to the address the URL had, and
/// with a password the server (trusting local connections) ignores; and the `host:port/database`
/// that messages name.
fn url_for_host(database: &TestDatabase, host: &str) -> (String, String) {
    let config: tokio_postgres::Config = database.url.parse().unwrap();
    let Some(tokio_postgres::config::Host::Tcp(server)) = config.get_hosts().first() else {
        panic!("the test server is reached over TCP");
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let address: IpAddr = (server.as_str(), port)
        .to_socket_addrs()
        .expect("the test server's host resolves")
        .next()
        .expect("to an address")
        .ip();
    let target = format!("{host}:{port}/{}", database.name());
    let url = format!("postgres://postgres:{PASSWORD}@{target}?hostaddr={address}");
    (url, target)
}

#[test]
fn a_certificate_that_does_not_name_the_host_or_chain_to_the_ca_is_refused_with_the_reason() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let Some(certificate) = server_certificate(&database) else {
        return;
    };
    let names = dns_names(&certificate);
    assert!(!names.contains(&"127.0.0.1".to_owned()), "{names:?}");
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let unrelated = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    std::fs::write(&other_ca, unrelated.cert.pem()).unwrap();

    for (host, ca, reason) in [
        (
            "127.0.0.1",
            &certificate,
            "the host in store.url must be a name that the server's certificate holds",
        ),
        (
            &names[0],
            &other_ca,
            "store.tls_ca must hold the CA that signed the server's certificate",
        ),
    ] {
        let (url, target) = url_for_host(&database, host);
        let env = [
            ("NOTIROUTER__STORE__URL", url.as_str()),
            ("NOTIROUTER__STORE__TLS_CA", ca.to_str().unwrap()),
        ];
        let output = doctor("", &env);
        let line = line_about(&output, "store");
        assert!(line.starts_with("PROBLEM"), "{line}");
        let expected = format!("cannot reach the database {target}: ");
        assert!(line.contains(&expected), "{line}");
        assert!(
            line.contains("error performing TLS handshake: invalid peer certificate"),
            "{line}"
        );
        assert!(line.contains(reason), "{line}");
        assert!(
            !all_output(&output).contains(PASSWORD),
            "{}",
            all_output(&output)
        );
    }
}

#[test]
fn a_ca_that_signed_a_certificate_naming_the_host_connects_checked() {
    let Some(database) = TestDatabase::create() else {
        return;
    };
    let Some(certificate) = server_certificate(&database) else {
        return;
    };
    // The server's certificate is self-signed: it is its own CA.
    let name = dns_names(&certificate)
        .into_iter()
        .next()
        .expect("the server's certificate names its host");
    let (url, _) = url_for_host(&database, &name);
    let toml = store_toml(&url, Some(&certificate));
    let store = open_and_watch(&database, &config_of(&toml));
    let sessions = sessions_encrypted(&database);
    assert!(sessions.iter().all(|&ssl| ssl), "{sessions:?}");

    let output = doctor(&toml, &[]);
    let line = line_about(&output, "store");
    assert!(line.starts_with("ok"), "{line}");
    assert!(
        line.contains("server certificate checked against store.tls_ca"),
        "{line}"
    );
    assert!(!all_output(&output).contains(PASSWORD));
    drop(store);
}

#[test]
fn a_tls_ca_that_is_not_a_pem_certificate_stops_the_config_from_loading() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:5432/fleet");
    let output = doctor(&store_toml(&url, Some(&not_pem)), &[]);
    let text = all_output(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let expected = format!(
        "store.tls_ca: {} holds no usable CERTIFICATE",
        not_pem.display()
    );
    assert!(line_about(&output, "config").contains(&expected), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
