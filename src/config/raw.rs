//! The configuration file as serde reads it: one struct per section, every struct with
//! `deny_unknown_fields` (and no `flatten`, which would silently disable it), every default in
//! the section's `Default`. [`super::Config::from_raw`] validates these into typed values.
//!
//! Keys of features this version does not have are read as `Option<toml::Value>` only so that
//! they can be refused by name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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

/// The kind of a named chat or webhook destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Slack,
    Teams,
    Dingtalk,
    Wecom,
    Feishu,
    Webhook,
    /// A log line and a file in the channel's `dir`: for the default config and local use.
    Log,
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Teams => "teams",
            ChannelKind::Dingtalk => "dingtalk",
            ChannelKind::Wecom => "wecom",
            ChannelKind::Feishu => "feishu",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Log => "log",
        };
        f.write_str(name)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub scripts: RawScripts,
    /// Free-form; scripts see it as the constant map `vars`.
    #[serde(default)]
    pub vars: toml::Table,
    #[serde(default)]
    pub channels: BTreeMap<String, RawChannel>,
    #[serde(default)]
    pub platform: RawPlatform,
    #[serde(default)]
    pub email: RawEmail,
    #[serde(default)]
    pub delivery: RawDelivery,
    #[serde(default)]
    pub ui: super::ui::RawUi,
}

/// How email actions leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTransport {
    /// Through the SMTP server of `smtp_url`.
    Smtp,
    /// One `<idempotency key>.eml` per message in `dir`: for the default config and local use.
    File,
    /// A log line per message.
    Log,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEmail {
    pub transport: EmailTransport,
    /// For `file`: the folder of `.eml` files. Default `data/mail`.
    pub dir: PathBuf,
    /// The sender address. Default `notirouter@localhost`.
    pub from: String,
    /// For `smtp`: lettre's URL form, `smtp://user:pass@host:587?tls=required` (STARTTLS),
    /// `smtps://...:465` (TLS) or `smtp://host:25` (plain). A secret: never logged.
    pub smtp_url: String,
}

impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            transport: EmailTransport::File,
            dir: PathBuf::from("data/mail"),
            from: "notirouter@localhost".to_owned(),
            smtp_url: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDelivery {
    /// Attempts before an action goes to the dead-letter queue. Default 20.
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles per attempt (×U(0.8, 1.2)). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest wait between attempts. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A `Retry-After` longer than this is cut to it. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// Per attempt. Too short for a slow receiver makes it get the same message twice (it
    /// answered after we gave up); the idempotency key lets it notice. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Sends in flight to one destination. Default 8.
    pub concurrency_per_destination: usize,
    /// Consecutive failures that open a destination's circuit breaker. Default 5.
    pub breaker_failures: u32,
    /// How long an open breaker defers a destination's actions before one probe. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            max_attempts: 20,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(30 * 60),
            retry_after_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            concurrency_per_destination: 8,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    /// Address the receiver listens on. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Paths the platform posts to; `path + "/cmd"` is served too.
    pub paths: Vec<String>,
    /// Largest accepted body. Too low refuses real notifications (413), which the platform may
    /// not re-push; too high lets each waiting request hold more memory. Default 65536.
    pub max_body_bytes: usize,
    pub validation: Validation,
    /// Longest a request waits for durability before 503. The platform gives up at 15 s and
    /// counts the failure toward its blocklist, so keep it below that. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub accept_timeout: Duration,
    /// CIDRs (or single addresses) of reverse proxies whose `X-Forwarded-For` is believed.
    /// Default none: the peer address is the client.
    pub trusted_proxies: Vec<String>,
    /// A separate address for `/metrics`, e.g. `127.0.0.1:9090`; empty serves it on `listen`
    /// (behind `[server.auth]`). Default empty.
    pub metrics_listen: String,
    /// Connections served at once; further ones wait in the kernel's backlog. It bounds the
    /// receiver's memory (README, "Limits"): too low makes a burst of senders queue, too high
    /// raises the bound. Default 1024.
    pub max_connections: usize,
    /// Longest time a client may take to send a request's head (and, with TLS, its handshake)
    /// before the connection is closed; what defeats slow-header (slowloris) clients. Too short
    /// cuts off senders on slow links. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection stays open. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    pub tls: Option<RawTls>,
    pub auth: Option<RawAuth>,
}

/// `[server.tls]`: HTTPS on `listen`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// The certificate chain (PEM, leaf first). Reloaded when the file changes.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1). Reloaded when the file changes.
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; set = every client must
    /// present one. Default empty (no client certificates).
    #[serde(default)]
    pub client_ca: PathBuf,
}

/// `[server.auth]`: who may post.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    /// Required as `?token=` or `Authorization: Bearer` on every path but `open_paths` and the
    /// probes. A secret: never logged. Default empty (no token).
    pub token: String,
    /// Paths (and the paths under them) served without the token: the platform cannot send
    /// one, so its secret callback path goes here. Default none.
    pub open_paths: Vec<String>,
    /// CIDRs (or single addresses), IPv4 or IPv6, that may connect; empty = any. Default empty.
    pub allow_ips: Vec<String>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:8080".to_owned(),
            paths: vec!["/v1.0.0/messageReceiver".to_owned()],
            max_body_bytes: 65536,
            validation: Validation::Lenient,
            accept_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            metrics_listen: String::new(),
            max_connections: 1024,
            header_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            tls: None,
            auth: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    /// The SQLite database file; its folder is created when missing.
    pub path: PathBuf,
    /// A PostgreSQL URL; when set, the store is that database and `path` is not used.
    pub url: String,
    /// PostgreSQL connections per instance. Default 16.
    pub pool_size: usize,
    /// The CA (PEM) that the PostgreSQL server's certificate must chain to, with the URL's host
    /// name checked; TLS is then required. Empty: TLS (`sslmode` prefer or require) encrypts
    /// without checking the certificate, as libpq does. Default empty.
    pub tls_ca: PathBuf,
    /// A copy of a body stored less than this after the first is a duplicate. Default 1 h; it
    /// should exceed the platform's 10-minute re-push window.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Handled events older than this are pruned. Default 30 d.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Rejected bodies kept for inspection; the oldest go first. Default 10000.
    pub rejected_max_count: u64,
    /// Longest prefix kept of one rejected body. Default 65536.
    pub rejected_max_bytes: usize,
    /// How long a claimed event or action stays with a claimer that stopped. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: PathBuf::from("data/notirouter.db"),
            url: String::new(),
            pool_size: 16,
            tls_ca: PathBuf::new(),
            dedup_window: Duration::from_secs(3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            rejected_max_count: 10_000,
            rejected_max_bytes: 65536,
            lease: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawScripts {
    /// The plugins' folder: every `*.rhai` directly inside is a plugin; `lib/` holds modules.
    pub dir: PathBuf,
    /// Reload plugins when their files change. Default true.
    pub hot_reload: bool,
    /// Script threads. One handles tens of thousands of events a second; more claim events in
    /// the store, each device's in order. Default 1.
    pub workers: usize,
    /// Operations one plugin run may take; stops runaway loops. Default 1000000.
    pub max_operations: u64,
    /// Wall-clock time one plugin run may take. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub max_run_time: Duration,
}

impl Default for RawScripts {
    fn default() -> Self {
        RawScripts {
            dir: PathBuf::from("scripts"),
            hot_reload: true,
            workers: 1,
            max_operations: 1_000_000,
            max_run_time: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub kind: ChannelKind,
    /// Where to post; not used by kind `log`.
    #[serde(default)]
    pub url: Option<String>,
    /// dingtalk/feishu signing secret; webhook signature secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// Extra HTTP headers sent with every post.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Kind `log` only: where each message is written as a file.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPlatform {
    /// `retry_upgrade` queues tasks only when enabled. Default false.
    pub enabled: bool,
    /// The northbound API, `https://{host}:8743`. Required when enabled.
    pub base_url: String,
    /// The application's appId; sent at login and as `app_key`. Required when enabled.
    pub app_id: String,
    /// The application's secret, for login only. A secret: never logged. Required when enabled.
    pub secret: String,
    /// PEM client certificate for mutual TLS; set together with `client_key`.
    pub client_cert: PathBuf,
    /// PEM private key of `client_cert`. A secret: never logged.
    pub client_key: PathBuf,
    /// PEM CA certificate(s) the platform's server certificate is checked against, instead of
    /// the system's roots.
    pub ca_cert: PathBuf,
    /// Check that the platform's certificate names the host of `base_url`. Platforms reached
    /// by IP address often present a name that does not match: set false there, together with
    /// `ca_cert`, so the certificate is still checked against that CA. Default true.
    pub verify_hostname: bool,
    /// Calls per app in any 60 s. The platform throttles above its limit (100 by default)
    /// with 403 `1010009`; above it here, calls fail and are retried later. 0 turns the
    /// client-side limit off (only for a platform without a throttle). Default 100.
    pub max_calls_per_minute: u32,
    /// Tasks `retry_upgrade` may create per device and target version within
    /// `retry_budget_window`. Default 3.
    pub max_upgrade_retries: u32,
    /// How long a budget lasts from its first retry. Default 7 d.
    #[serde(with = "humantime_serde")]
    pub retry_budget_window: Duration,
    /// Before creating a task, confirm at the platform that the failed sub-operation exists
    /// for the device and the configured app; a forged or stale failure is then `skipped`.
    /// Costs one or more calls per retry. Default false.
    pub verify_before_retry: bool,
    /// Narrow the package lookup to this device type; empty matches any. Default empty.
    pub device_type: String,
    /// Narrow the package lookup to this manufacturer; empty matches any. Default empty.
    pub manufacturer_name: String,
    /// Narrow the package lookup to this model; empty matches any. Default empty.
    pub model: String,
    /// `targetVersion` → `fileId`; versions not listed are looked up at the platform.
    pub packages: BTreeMap<String, String>,
}

impl Default for RawPlatform {
    fn default() -> Self {
        RawPlatform {
            enabled: false,
            base_url: String::new(),
            app_id: String::new(),
            secret: String::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            ca_cert: PathBuf::new(),
            verify_hostname: true,
            max_calls_per_minute: 100,
            max_upgrade_retries: 3,
            retry_budget_window: Duration::from_secs(7 * 24 * 3600),
            verify_before_retry: false,
            device_type: String::new(),
            manufacturer_name: String::new(),
            model: String::new(),
            packages: BTreeMap::new(),
        }
    }
}
