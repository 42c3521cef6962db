//! Configuration: the TOML file, `NOTIROUTER__SECTION__KEY` overrides, and validation.
//!
//! Loading takes two steps. The raw structs mirror the file (serde, `deny_unknown_fields`, no
//! `flatten`, which would disable that check); [`Config::from_raw`] then turns them into typed
//! values and applies the rules that span keys. Every error names the key, and for the file its
//! line and column, because an operator fixing a config needs to know where to look.
//!
//! Sections of features this version does not have are parsed only to be refused: a key that
//! would be silently ignored is worse than an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// How the receiver treats a known notification type with a mandatory field missing, `null` or
/// mistyped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validation {
    /// Accept, store and route it; report the problems as warnings.
    Lenient,
    /// Answer 400 naming the field (for staging).
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    store: RawStore,
    // Features of later versions: present only so that they are refused by name.
    scripts: Option<toml::Value>,
    vars: Option<toml::Value>,
    email: Option<toml::Value>,
    channels: Option<toml::Value>,
    delivery: Option<toml::Value>,
    platform: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// Address the receiver listens on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    listen: String,
    /// Paths the platform posts to; `path + "/cmd"` is served too.
    #[serde(default = "default_paths")]
    paths: Vec<String>,
    /// Largest accepted body. Too low refuses real notifications (413), which the platform may
    /// not re-push; too high lets each waiting request hold more memory. Default 65536.
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_validation")]
    validation: Validation,
    /// Longest a request waits for durability before 503. The platform gives up at 15 s and
    /// counts the failure toward its blocklist, so keep it below that. Default 10 s.
    #[serde(default = "default_accept_timeout", with = "humantime_serde")]
    accept_timeout: Duration,
    trusted_proxies: Option<toml::Value>,
    metrics_listen: Option<toml::Value>,
    tls: Option<toml::Value>,
    auth: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    /// The SQLite database file; its folder is created when missing.
    #[serde(default = "default_store_path")]
    path: PathBuf,
    /// A copy of a body stored less than this after the first is a duplicate. Default 1 h; it
    /// should exceed the platform's 10-minute re-push window.
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    dedup_window: Duration,
    /// Handled events older than this are pruned. Default 30 d.
    #[serde(default = "default_retention", with = "humantime_serde")]
    retention: Duration,
    /// Rejected bodies kept for inspection; the oldest go first. Default 10000.
    #[serde(default = "default_rejected_max_count")]
    rejected_max_count: u64,
    /// Longest prefix kept of one rejected body. Default 65536.
    #[serde(default = "default_rejected_max_bytes")]
    rejected_max_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_paths() -> Vec<String> {
    vec!["/v1.0.0/messageReceiver".to_owned()]
}
fn default_max_body_bytes() -> usize {
    65536
}
fn default_validation() -> Validation {
    Validation::Lenient
}
fn default_accept_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_store_path() -> PathBuf {
    PathBuf::from("data/notirouter.db")
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_rejected_max_count() -> u64 {
    10_000
}
fn default_rejected_max_bytes() -> usize {
    65536
}

macro_rules! raw_defaults {
    ($($raw:ty),*) => {$(
        impl Default for $raw {
            fn default() -> Self {
                toml::from_str("").expect("every field of this section has a default")
            }
        }
    )*};
}
raw_defaults!(RawServer, RawLog, RawStore);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub paths: Vec<String>,
    pub max_body_bytes: usize,
    pub validation: Validation,
    pub accept_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub dedup_window: Duration,
    pub retention: Duration,
    pub rejected_max_count: u64,
    pub rejected_max_bytes: usize,
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
            raw = apply_overrides(text, path, &overrides)?;
        }
        Config::from_raw(raw).map_err(|error| blame_override(error, &overrides))
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        refuse_unbuilt(&[
            ("scripts", raw.scripts.is_some()),
            ("vars", raw.vars.is_some()),
            ("email", raw.email.is_some()),
            ("channels", raw.channels.is_some()),
            ("delivery", raw.delivery.is_some()),
            ("platform", raw.platform.is_some()),
            (
                "server.trusted_proxies",
                raw.server.trusted_proxies.is_some(),
            ),
            ("server.metrics_listen", raw.server.metrics_listen.is_some()),
            ("server.tls", raw.server.tls.is_some()),
            ("server.auth", raw.server.auth.is_some()),
        ])?;
        Ok(Config {
            server: server_from_raw(raw.server)?,
            log: LogConfig {
                format: raw.log.format,
            },
            store: store_from_raw(raw.store)?,
        })
    }
}

fn refuse_unbuilt(present: &[(&str, bool)]) -> Result<(), ConfigError> {
    match present.iter().find(|(_, is_present)| *is_present) {
        Some((key, _)) => Err(ConfigError::invalid(
            key,
            "not supported in this version of notirouter; remove it from the config",
        )),
        None => Ok(()),
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
    })
}

fn store_from_raw(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    if raw.path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            "store.path",
            "must name a database file",
        ));
    }
    Ok(StoreConfig {
        path: raw.path,
        dedup_window: raw.dedup_window,
        retention: raw.retention,
        rejected_max_count: raw.rejected_max_count,
        rejected_max_bytes: raw.rejected_max_bytes,
    })
}

fn file_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().to_owned();
    match error.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            ConfigError::File {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        }
        None => ConfigError::FileSyntax {
            path: path.to_owned(),
            message,
        },
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

/// Applies the overrides one at a time, in name order, re-checking after each so that an error
/// names the variable that caused it.
fn apply_overrides(
    text: &str,
    path: &Path,
    overrides: &BTreeMap<String, String>,
) -> Result<RawConfig, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e| file_error(path, text, &e))?;
    let mut raw = None;
    for (var, value) in overrides {
        let env_error = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let keys: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            return Err(env_error(
                "is not of the form NOTIROUTER__SECTION__KEY (segments joined by \"__\")".into(),
            ));
        }
        set_key(&mut table, &keys, override_value(value)).map_err(env_error)?;
        let merged = toml::to_string(&table).map_err(|e| env_error(e.to_string()))?;
        raw = Some(toml::from_str(&merged).map_err(|e| env_error(e.message().to_owned()))?);
    }
    Ok(raw.expect("apply_overrides is only called with at least one override"))
}

/// Names the variable behind an invalid value when the value came from the environment: the
/// file is then correct, and the operator must be told where else to look.
fn blame_override(error: ConfigError, overrides: &BTreeMap<String, String>) -> ConfigError {
    let ConfigError::Invalid { key, message } = error else {
        return error;
    };
    let from_env = overrides.keys().find(|var| {
        let dotted = var[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        key == dotted
            || key.starts_with(&format!("{dotted}."))
            || key.starts_with(&format!("{dotted}["))
    });
    match from_env {
        Some(var) => ConfigError::Env {
            var: var.clone(),
            message: format!("{key}: {message}"),
        },
        None => ConfigError::Invalid { key, message },
    }
}

/// An override is read as a TOML value, and as a string when it does not parse as one.
fn override_value(text: &str) -> toml::Value {
    format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_key(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys
        .split_last()
        .expect("split(\"__\") yields at least one segment");
    let mut current = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a section", keys[..=depth].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Vec::new())
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
    fn features_of_later_versions_are_refused_by_name() {
        for (text, key) in [
            ("[platform]\nenabled = false", "platform"),
            ("[server.tls]\ncert = \"c.pem\"", "server.tls"),
            ("[server]\ntrusted_proxies = []", "server.trusted_proxies"),
            ("[channels.ops]\nkind = \"log\"", "channels"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "{key}: not supported in this version of notirouter; remove it from the config"
                )
            );
        }
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
