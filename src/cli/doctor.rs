//! `doctor`: checks what `serve` depends on and says in plain words what is wrong and where to
//! fix it. Exit 0 when every check passes, 1 when any finds a problem, 2 when the config file
//! cannot be read.
//!
//! Each check is a function from the loaded config to its findings, listed in [`CHECKS`] in
//! the order they run; adding a check is one function and one entry there. Checks never send
//! anything: SMTP gets a session test (connect, TLS, login, NOOP), chat channels a TCP
//! connection and the platform a login, so no message reaches a real channel.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use tokio::runtime::Runtime;

use crate::config::{ChannelConfig, Config, MailTransport};
use crate::store::{self, Opener, StoreError};

/// Longest wait for one server (SMTP, a channel's host) to answer.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// What one check found about one subject.
enum Finding {
    Fine(String),
    Problem(String),
    /// Not configured, so nothing to check.
    Unused(String),
}

struct Report {
    subject: String,
    finding: Finding,
}

impl Report {
    fn new(subject: impl Into<String>, finding: Finding) -> Report {
        Report {
            subject: subject.into(),
            finding,
        }
    }

    fn from_result(subject: impl Into<String>, result: Result<String, String>) -> Report {
        let finding = match result {
            Ok(fine) => Finding::Fine(fine),
            Err(problem) => Finding::Problem(problem),
        };
        Report::new(subject, finding)
    }
}

type Check = fn(&Config, &Runtime) -> Vec<Report>;

/// Every check after the config itself, in the order they run.
const CHECKS: &[Check] = &[store, scripts, tls, email, channels, platform];

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path, std::env::vars()) {
        Ok(config) => config,
        // Its message already holds the cause; `{:#}` would print it twice.
        Err(error) if error.is_unreadable() => return Err(anyhow::anyhow!(error.to_string())),
        Err(error) => {
            print(&Report::new("config", Finding::Problem(error.to_string())));
            println!("fix the configuration first: the other checks need it");
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime for the network checks")?;
    let mut reports = vec![Report::new(
        "config",
        Finding::Fine(format!("{} is valid", path.display())),
    )];
    for check in CHECKS {
        reports.extend(check(&config, &runtime));
    }
    reports.iter().for_each(print);
    let problems = reports
        .iter()
        .filter(|report| matches!(report.finding, Finding::Problem(_)))
        .count();
    if problems == 0 {
        println!("no problem found");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{problems} problem(s) found");
    Ok(ExitCode::from(1))
}

fn print(report: &Report) {
    let (status, text) = match &report.finding {
        Finding::Fine(text) => ("ok", text),
        Finding::Problem(text) => ("PROBLEM", text),
        Finding::Unused(text) => ("-", text),
    };
    println!("{status:<8} {:<16} {text}", report.subject);
}

fn store(config: &Config, _: &Runtime) -> Vec<Report> {
    let path = config.store.path.display();
    let result = match store::open(&config.store, Opener::Command) {
        Err(StoreError::Missing { .. }) => Ok(format!(
            "{path} does not exist yet; `notirouter serve` creates it"
        )),
        // PostgreSQL's errors name the database already; a file's do not.
        Err(error) if config.store.postgres.is_some() => Err(error.to_string()),
        Err(error) => Err(format!("{path}: {error}")),
        Ok(store) => store.describe().map_err(|error| error.to_string()),
    };
    vec![Report::from_result("store", result)]
}

fn scripts(config: &Config, _: &Runtime) -> Vec<Report> {
    let (set, errors) = super::compile_plugins(config);
    if errors.is_empty() {
        let fine = format!(
            "{} plugin(s) in {} compile",
            set.len(),
            config.scripts.dir.display()
        );
        return vec![Report::new("scripts", Finding::Fine(fine))];
    }
    errors
        .iter()
        .map(|error| Report::new("scripts", Finding::Problem(error.to_string())))
        .collect()
}

fn tls(config: &Config, _: &Runtime) -> Vec<Report> {
    let finding = match &config.server.tls {
        None => Finding::Unused("not configured: the receiver speaks plain HTTP".to_owned()),
        Some(tls) => match crate::http::check_tls_files(tls) {
            Ok(()) => Finding::Fine(format!(
                "{} and {} load and match",
                tls.cert.display(),
                tls.key.display()
            )),
            Err(error) => Finding::Problem(error.to_string()),
        },
    };
    vec![Report::new("tls", finding)]
}

fn email(config: &Config, runtime: &Runtime) -> Vec<Report> {
    let email = &config.email;
    let finding = match &email.transport {
        MailTransport::Smtp { url } => {
            // The URL holds the password: only its host and port are ever shown.
            let server = endpoint(url.expose()).unwrap_or_else(|| "the SMTP server".to_owned());
            match runtime.block_on(smtp_session(url.expose())) {
                Ok(()) => Finding::Fine(format!("{server} accepts a session (login included)")),
                Err(error) => Finding::Problem(format!(
                    "{server}: {error}; check email.smtp_url (host, port, tls, user and password) and that the server is up"
                )),
            }
        }
        MailTransport::File { dir } => Finding::Fine(format!(
            "transport \"file\": messages are written to {}",
            dir.display()
        )),
        MailTransport::Log => {
            Finding::Fine("transport \"log\": messages are logged, not sent".to_owned())
        }
    };
    vec![Report::new("email", finding)]
}

/// Opens an SMTP session as delivery would (TLS and login as the URL says) and closes it.
async fn smtp_session(url: &str) -> Result<(), String> {
    let transport: AsyncSmtpTransport<Tokio1Executor> =
        AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|error| error.to_string())?
            .timeout(Some(REACH_TIMEOUT))
            .build();
    match transport.test_connection().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the server did not accept a session".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

fn channels(config: &Config, runtime: &Runtime) -> Vec<Report> {
    if config.channels.is_empty() {
        return vec![Report::new(
            "channels",
            Finding::Unused("none configured".to_owned()),
        )];
    }
    config
        .channels
        .iter()
        .map(|(name, channel)| {
            let subject = format!("channel {name}");
            Report::from_result(subject, runtime.block_on(reach_channel(name, channel)))
        })
        .collect()
}

/// A TCP connection to the channel's host; nothing is posted.
async fn reach_channel(name: &str, channel: &ChannelConfig) -> Result<String, String> {
    let Some(url) = &channel.url else {
        return Ok(format!(
            "kind \"{}\": written to the log and data/chat/, nothing to reach",
            channel.kind
        ));
    };
    let parsed = reqwest::Url::parse(url.expose())
        .map_err(|error| format!("channels.{name}.url cannot be parsed ({error})"))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Err(format!("channels.{name}.url names no host"));
    };
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(REACH_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(format!("{host}:{port} accepts connections")),
        Ok(Err(error)) => Err(format!(
            "cannot connect to {host}:{port} ({error}); check channels.{name}.url, DNS and the firewall"
        )),
        Err(_) => Err(format!(
            "no answer from {host}:{port} within {}s; check channels.{name}.url and the firewall",
            REACH_TIMEOUT.as_secs()
        )),
    }
}

/// `host:port` of a URL, without user, password, path or query.
fn endpoint(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Logs in to the platform when it is enabled: `retry_upgrade` needs it, and a login proves
/// the address, the certificates and the credentials at once.
fn platform(config: &Config, runtime: &Runtime) -> Vec<Report> {
    let platform = &config.platform;
    let finding = if !platform.enabled {
        Finding::Unused("disabled: retry_upgrade queues nothing".to_owned())
    } else {
        // A store that cannot be opened is the store check's finding; the login is still
        // checked, on its own.
        let store = store::open(&config.store, Opener::Command).ok();
        match runtime.block_on(crate::platform::check_login(platform, store)) {
            Ok(fine) => Finding::Fine(fine),
            Err(error) => Finding::Problem(error.to_string()),
        }
    };
    vec![Report::new("platform", finding)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_shows_no_credentials_or_path() {
        let shown = endpoint("smtp://user:hunter2@mail.example.com:587?tls=required").unwrap();
        assert_eq!(shown, "mail.example.com:587");
        assert_eq!(
            endpoint("smtps://mail.example.com").unwrap(),
            "mail.example.com"
        );
        assert_eq!(endpoint("not a url"), None);
    }
}
