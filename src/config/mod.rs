//! Configuration: the TOML file, `NOTIROUTER__SECTION__KEY` overrides, and validation.
//!
//! Loading takes two steps. The raw structs mirror the file (serde, `deny_unknown_fields`, no
//! `flatten`, which would disable that check); [`Config::from_raw`] then turns them into typed
//! values and applies the rules that span keys. Every error names the key, and for the file its
//! line and column, because an operator fixing a config needs to know where to look.
//!
//! Sections of features this version does not have are parsed only to be refused: a key that
//! would be silently ignored is worse than an error.

mod delivery;
mod env;
mod explain;
mod platform;
mod raw;
mod server;
mod store;
mod ui;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use delivery::{ChannelConfig, DEFAULT_CHAT_DIR, DeliveryConfig, EmailConfig, MailTransport};
use delivery::{channel_from_raw, delivery_from_raw, email_from_raw};
pub use platform::{Credentials, PlatformConfig};
pub use raw::{ChannelKind, LogFormat, Validation};
use raw::{RawConfig, RawScripts, RawServer};
pub use server::{AccessConfig, Limits, TlsConfig, check_token, parse_net};
pub use store::{PostgresConfig, StoreConfig, TlsCa};
use store::{check_lease, store_from_raw};
pub use ui::UiConfig;

/// Paths the server answers itself; callback paths may not reuse them.
const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The prefix of environment overrides: `NOTIROUTER__STORE__PATH=...`.
pub const ENV_PREFIX: &str = "NOTIROUTER__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    FileSyntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// True when the file could not be read at all, as opposed to read and found wrong.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, ConfigError::Unreadable { .. })
    }

    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub scripts: ScriptsConfig,
    /// The `[vars]` table, a JSON object.
    pub vars: serde_json::Value,
    pub channels: BTreeMap<String, ChannelConfig>,
    pub platform: PlatformConfig,
    pub email: EmailConfig,
    pub delivery: DeliveryConfig,
    pub ui: UiConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub paths: Vec<String>,
    pub max_body_bytes: usize,
    pub validation: Validation,
    pub accept_timeout: Duration,
    /// `/metrics` only on this address, when set.
    pub metrics_listen: Option<SocketAddr>,
    /// HTTPS when set.
    pub tls: Option<TlsConfig>,
    pub access: AccessConfig,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct ScriptsConfig {
    pub dir: PathBuf,
    pub hot_reload: bool,
    pub workers: usize,
    pub max_operations: u64,
    pub max_run_time: Duration,
}

/// A value that must never reach a log: its `Debug` prints `***`. Webhook URLs count, since
/// Slack-style URLs carry their token in the path.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Config {
    /// Reads `path`, applies the `NOTIROUTER__…` variables found in `env`, and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path, env)
    }

    /// As [`Config::load`], for text already read; `path` is only used in messages.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| file_error(path, text, &e))?;
        let overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        if !overrides.is_empty() {
            raw = env::apply_overrides(text, path, &overrides)?;
        }
        Config::from_raw(raw).map_err(|error| env::blame_override(error, &overrides))
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let vars = serde_json::to_value(&raw.vars)
            .map_err(|e| ConfigError::invalid("vars", e.to_string()))?;
        let store = store_from_raw(raw.store)?;
        let delivery = delivery_from_raw(raw.delivery)?;
        check_lease(&store, &delivery)?;
        Ok(Config {
            server: server_from_raw(raw.server)?,
            log: LogConfig {
                format: raw.log.format,
            },
            store,
            scripts: scripts_from_raw(raw.scripts)?,
            vars,
            channels: raw
                .channels
                .into_iter()
                .map(|(name, channel)| Ok((name.clone(), channel_from_raw(&name, channel)?)))
                .collect::<Result<_, ConfigError>>()?,
            platform: platform::from_raw(raw.platform)?,
            email: email_from_raw(raw.email)?,
            delivery,
            ui: ui::from_raw(raw.ui)?,
        })
    }
}

fn server_from_raw(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen = raw.listen.parse().map_err(|_| {
        ConfigError::invalid(
            "server.listen",
            format!(
                "{:?} is not an address and port such as \"127.0.0.1:8080\"",
                raw.listen
            ),
        )
    })?;
    if raw.paths.is_empty() {
        return Err(ConfigError::invalid(
            "server.paths",
            "needs at least one path",
        ));
    }
    for (index, path) in raw.paths.iter().enumerate() {
        let problem = if !path.starts_with('/') {
            Some("must start with '/'")
        } else if path.len() > 1 && path.ends_with('/') {
            Some("must not end with '/'")
        } else if path.contains(['?', '#', ' ']) {
            Some("must be a plain path without '?', '#' or spaces")
        } else if RESERVED_PATHS.contains(&path.as_str()) {
            Some("is reserved for the server's own endpoints (/healthz, /readyz, /metrics)")
        } else if raw.paths[..index].contains(path) {
            Some("is listed twice")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ConfigError::invalid(
                &format!("server.paths[{index}]"),
                problem,
            ));
        }
    }
    if raw.max_body_bytes == 0 {
        return Err(ConfigError::invalid(
            "server.max_body_bytes",
            "must be at least 1",
        ));
    }
    if raw.accept_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "server.accept_timeout",
            "must be longer than zero",
        ));
    }
    Ok(ServerConfig {
        listen,
        paths: raw.paths,
        max_body_bytes: raw.max_body_bytes,
        validation: raw.validation,
        accept_timeout: raw.accept_timeout,
        metrics_listen: server::metrics_listen_from_raw(&raw.metrics_listen)?,
        tls: server::tls_from_raw(raw.tls)?,
        access: server::access_from_raw(raw.auth, &raw.trusted_proxies)?,
        limits: server::limits_from_raw(raw.max_connections, raw.header_timeout, raw.keep_alive)?,
    })
}

fn scripts_from_raw(raw: RawScripts) -> Result<ScriptsConfig, ConfigError> {
    if !(1..=64).contains(&raw.workers) {
        return Err(ConfigError::invalid(
            "scripts.workers",
            "must be from 1 to 64",
        ));
    }
    if raw.max_operations == 0 {
        return Err(ConfigError::invalid(
            "scripts.max_operations",
            "must be at least 1",
        ));
    }
    if raw.max_run_time.is_zero() {
        return Err(ConfigError::invalid(
            "scripts.max_run_time",
            "must be longer than zero",
        ));
    }
    Ok(ScriptsConfig {
        dir: raw.dir,
        hot_reload: raw.hot_reload,
        workers: raw.workers,
        max_operations: raw.max_operations,
        max_run_time: raw.max_run_time,
    })
}

pub(super) fn file_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    match error.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            ConfigError::File {
                path: path.to_owned(),
                line,
                column,
                message: explain::explain(text, &span, error.message()),
            }
        }
        None => ConfigError::FileSyntax {
            path: path.to_owned(),
            message: error.message().to_owned(),
        },
    }
}

/// A deserializer error's message, naming the key when the error points at a value of `text`.
pub(super) fn value_error_message(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => explain::explain(text, &span, error.message()),
        None => error.message().to_owned(),
    }
}

/// 1-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Vec::new())
    }

    pub(super) fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse(text, Path::new("test.toml"), env)
    }

    #[test]
    fn the_shipped_default_config_is_valid() {
        let config = Config::load(Path::new("config/notirouter.toml"), Vec::new()).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.paths, ["/v1.0.0/messageReceiver"]);
        assert_eq!(config.server.validation, Validation::Lenient);
        assert_eq!(config.store.path, PathBuf::from("data/notirouter.db"));
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.max_body_bytes, 65536);
        assert_eq!(config.server.accept_timeout, Duration::from_secs(10));
        assert_eq!(config.store.dedup_window, Duration::from_secs(3600));
        assert_eq!(config.store.retention, Duration::from_secs(30 * 86400));
        assert_eq!(config.store.rejected_max_count, 10_000);
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn durations_are_human_strings() {
        let config =
            parse("[server]\naccept_timeout = \"500ms\"\n[store]\nretention = \"7d\"").unwrap();
        assert_eq!(config.server.accept_timeout, Duration::from_millis(500));
        assert_eq!(config.store.retention, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn unknown_keys_are_named_with_their_position() {
        let error = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("test.toml:3:1: unknown field `lisen`"),
            "{text}"
        );
    }

    #[test]
    fn invalid_values_say_what_was_expected() {
        let error = parse("[server]\nvalidation = \"loose\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("test.toml:2:14"), "{error}");
        assert!(error.contains("expected `lenient` or `strict`"), "{error}");
        let error = parse("[store]\ndedup_window = \"5x\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("test.toml:2:16"), "{error}");
        let error = parse("[server]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("server.listen: \"localhost\" is not an address"),
            "{error}"
        );
        let error = parse("[server]\npaths = [\"/a\", \"b\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(error, "server.paths[1]: must start with '/'");
    }

    #[test]
    fn scripts_vars_channels_and_platform_budget_are_read() {
        let config = parse(
            "[scripts]\ndir = \"plugins\"\nworkers = 2\nmax_run_time = \"50ms\"\n\
             [vars]\nops_email = \"a@b.c\"\ncodes = [\"1\", \"2\"]\n\
             [channels.ops]\nkind = \"log\"\n\
             [channels.hook]\nkind = \"webhook\"\nurl = \"https://h.example/x\"\nsecret = \"s\"\n\
             [platform]\nenabled = true\nmax_upgrade_retries = 2\nbase_url = \"https://p:8743\"\n\
             app_id = \"a\"\nsecret = \"s\"\n[platform.packages]\n\"1.5\" = \"f1\"\n",
        )
        .unwrap();
        assert_eq!(config.scripts.dir, PathBuf::from("plugins"));
        assert_eq!(config.scripts.workers, 2);
        assert_eq!(config.scripts.max_run_time, Duration::from_millis(50));
        assert_eq!(config.vars["codes"][1], "2");
        assert_eq!(config.channels["ops"].kind, ChannelKind::Log);
        assert_eq!(
            config.channels["hook"].url.as_ref().unwrap().expose(),
            "https://h.example/x"
        );
        assert_eq!(format!("{:?}", config.channels["hook"].secret), "Some(***)");
        assert!(config.platform.enabled);
        assert_eq!(config.platform.packages["1.5"], "f1");
    }

    #[test]
    fn environment_overrides_replace_and_add_keys() {
        let config = parse_env(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("NOTIROUTER__SERVER__LISTEN", "127.0.0.1:2"),
                ("NOTIROUTER__SERVER__MAX_BODY_BYTES", "100"),
                ("NOTIROUTER__STORE__PATH", "/tmp/x.db"),
                ("NOTIROUTER__SERVER__PATHS", "[\"/a\", \"/b\"]"),
                ("OTHER__SERVER__LISTEN", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(config.server.max_body_bytes, 100);
        assert_eq!(config.store.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(config.server.paths, ["/a", "/b"]);
    }

    #[test]
    fn unknown_or_invalid_environment_overrides_name_the_variable() {
        let error = parse_env("", &[("NOTIROUTER__SERVER__LISEN", "1")]).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with(
                "environment variable NOTIROUTER__SERVER__LISEN: unknown field `lisen`"
            ),
            "{text}"
        );
        let error = parse_env("", &[("NOTIROUTER__SERVER__MAX_BODY_BYTES", "lots")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("NOTIROUTER__SERVER__MAX_BODY_BYTES"),
            "{error}"
        );
        let error = parse_env(
            "[server]\nlisten = \"127.0.0.1:1\"",
            &[("NOTIROUTER__SERVER__LISTEN__PORT", "1")],
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`server.listen` is a value, not a section"),
            "{error}"
        );
        let error = parse_env("", &[("NOTIROUTER__SERVER__PATHS", "[\"x\"]")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable NOTIROUTER__SERVER__PATHS: server.paths[0]: must start with '/'"
        );
        let error = parse_env("", &[("NOTIROUTER__", "1")]).unwrap_err();
        assert!(
            error.to_string().contains("NOTIROUTER__SECTION__KEY"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_file_is_unreadable_not_invalid() {
        let error = Config::load(Path::new("/nonexistent/notirouter.toml"), Vec::new());
        assert!(error.unwrap_err().is_unreadable());
    }
}
