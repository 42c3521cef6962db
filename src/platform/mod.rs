//! The Huawei IoT platform's northbound API (PLATFORM-NOTES.md §4), for `retry_upgrade`,
//! `subscribe` and the login check.
//!
//! [`Platform`] is the one handle: it owns the HTTP client ([`client`]: TLS, headers, the
//! single-flight token of [`token`], the call limit of [`limiter`]) and offers the operations
//! notirouter needs, one file each: upgrade tasks ([`tasks`]), packages ([`packages`]) and
//! subscriptions ([`subscribe`]). Errors are classified by the platform's codes ([`errors`]).
//! Nothing here logs a secret, a token or a key.

mod client;
mod errors;
mod limiter;
mod packages;
mod shared;
mod subscribe;
mod tasks;
mod tls;
mod token;

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::PlatformConfig;
use crate::store::Store;

pub use errors::PlatformError;
pub use subscribe::{Subscribed, UPGRADE_TYPES};
pub use tasks::{Confirmation, ReportedFailure};

/// How long the login check waits for the platform.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Software or firmware: the notification type decides the task, package and list names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeKind {
    Software,
    Firmware,
}

impl UpgradeKind {
    /// The kind of an upgrade result's `notifyType`.
    pub fn of(notify_type: &str) -> Option<UpgradeKind> {
        match notify_type {
            "swUpgradeResultNotify" | "swUpgradeStateChangeNotify" => Some(UpgradeKind::Software),
            "fwUpgradeResultNotify" | "fwUpgradeStateChangeNotify" => Some(UpgradeKind::Firmware),
            _ => None,
        }
    }

    fn task_path(self) -> &'static str {
        match self {
            UpgradeKind::Software => "softwareUpgrade",
            UpgradeKind::Firmware => "firmwareUpgrade",
        }
    }

    fn file_type(self) -> &'static str {
        match self {
            UpgradeKind::Software => "softwarePackage",
            UpgradeKind::Firmware => "firmwarePackage",
        }
    }

    fn operation_type(self) -> &'static str {
        match self {
            UpgradeKind::Software => "software_upgrade",
            UpgradeKind::Firmware => "firmware_upgrade",
        }
    }
}

/// A client of one app at one platform; cheap to share behind an `Arc`.
pub struct Platform {
    client: client::Client,
    config: PlatformConfig,
    /// Looked-up `fileId`s by kind and version. An async mutex, held across a lookup so that
    /// concurrent deliveries of one version look it up once; lookups are rare.
    packages: Mutex<HashMap<(UpgradeKind, String), String>>,
}

impl Platform {
    /// A client for `config`'s platform, each call bounded by `timeout`, with a token and a
    /// call limit of its own. Fails when the credentials are missing or a certificate file
    /// cannot be used; nothing is sent yet.
    pub fn new(config: &PlatformConfig, timeout: Duration) -> Result<Platform, PlatformError> {
        Platform::build(config, timeout, None)
    }

    /// As [`Platform::new`], but the token and `max_calls_per_minute` are kept in `store` and
    /// shared with every instance that uses it (each login revokes the others' tokens).
    pub fn sharing(
        config: &PlatformConfig,
        timeout: Duration,
        store: Arc<dyn Store>,
    ) -> Result<Platform, PlatformError> {
        Platform::build(config, timeout, Some(store))
    }

    fn build(
        config: &PlatformConfig,
        timeout: Duration,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Platform, PlatformError> {
        Ok(Platform {
            client: client::Client::new(config, timeout, store)?,
            config: config.clone(),
            packages: Mutex::new(HashMap::new()),
        })
    }

    /// Logs in now; returns how many seconds the platform says the token lasts.
    pub async fn login(&self) -> Result<u64, PlatformError> {
        Ok(self.client.login().await?.expires_in)
    }

    pub fn base_url(&self) -> &str {
        self.client.base_url()
    }
}

/// The login check of `notirouter doctor`: logs in with the configured credentials and says
/// so in plain words, or returns the error that tells the operator what to fix. Given the
/// store that running instances use, it logs in under the store's renewal lock and stores the
/// token, so that they take it up instead of logging in again.
pub async fn check_login(
    config: &PlatformConfig,
    store: Option<Arc<dyn Store>>,
) -> Result<String, PlatformError> {
    let platform = Platform::build(config, CHECK_TIMEOUT, store)?;
    let expires_in = platform.login().await?;
    Ok(format!(
        "logged in to {} as app {}; the token lasts {expires_in} s",
        platform.base_url(),
        config.app_id
    ))
}
