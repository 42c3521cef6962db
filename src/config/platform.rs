//! `[platform]`: the northbound API that `retry_upgrade` and `subscribe` call.
//!
//! The credentials are checked only when the platform is enabled, so that the default config
//! runs without them; `subscribe` and the login check ask for them through
//! [`PlatformConfig::credentials`], which names the missing key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawPlatform;
use super::{ConfigError, Secret};

#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub enabled: bool,
    /// Empty when not configured.
    pub base_url: String,
    pub app_id: String,
    /// `None` when not configured.
    pub secret: Option<Secret>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub verify_hostname: bool,
    /// 0: no client-side limit.
    pub max_calls_per_minute: u32,
    pub max_upgrade_retries: u32,
    pub retry_budget_window: Duration,
    pub verify_before_retry: bool,
    pub device_type: Option<String>,
    pub manufacturer_name: Option<String>,
    pub model: Option<String>,
    /// `targetVersion` → `fileId`.
    pub packages: BTreeMap<String, String>,
}

/// What a login needs, all present.
#[derive(Debug, Clone)]
pub struct Credentials<'a> {
    pub base_url: &'a str,
    pub app_id: &'a str,
    pub secret: &'a Secret,
}

impl PlatformConfig {
    /// The base URL, app id and secret, or an error naming the first one missing.
    pub fn credentials(&self) -> Result<Credentials<'_>, ConfigError> {
        let missing = |key: &str, what: &str| {
            ConfigError::invalid(
                key,
                format!(
                    "is empty; set it to {what} (in the file or as NOTIROUTER__{})",
                    key.to_uppercase().replace('.', "__")
                ),
            )
        };
        if self.base_url.is_empty() {
            let what = "the platform's northbound address, e.g. \"https://203.0.113.10:8743\"";
            return Err(missing("platform.base_url", what));
        }
        if self.app_id.is_empty() {
            return Err(missing("platform.app_id", "the application's appId"));
        }
        let secret = self.secret.as_ref().ok_or_else(|| {
            missing(
                "platform.secret",
                "the application's secret from the platform's portal",
            )
        })?;
        Ok(Credentials {
            base_url: &self.base_url,
            app_id: &self.app_id,
            secret,
        })
    }
}

pub(super) fn from_raw(raw: RawPlatform) -> Result<PlatformConfig, ConfigError> {
    let path = |path: PathBuf| (!path.as_os_str().is_empty()).then_some(path);
    let text = |text: String| (!text.is_empty()).then_some(text);
    let config = PlatformConfig {
        enabled: raw.enabled,
        base_url: raw.base_url.trim_end_matches('/').to_owned(),
        app_id: raw.app_id,
        secret: text(raw.secret).map(Secret),
        client_cert: path(raw.client_cert),
        client_key: path(raw.client_key),
        ca_cert: path(raw.ca_cert),
        verify_hostname: raw.verify_hostname,
        max_calls_per_minute: raw.max_calls_per_minute,
        max_upgrade_retries: raw.max_upgrade_retries,
        retry_budget_window: raw.retry_budget_window,
        verify_before_retry: raw.verify_before_retry,
        device_type: text(raw.device_type),
        manufacturer_name: text(raw.manufacturer_name),
        model: text(raw.model),
        packages: raw.packages,
    };
    check_url(&config.base_url)?;
    check_tls(&config)?;
    if config.enabled {
        config.credentials().map_err(|error| match error {
            ConfigError::Invalid { key, message } => ConfigError::Invalid {
                key,
                message: format!("{message}; retry_upgrade needs it while platform.enabled = true"),
            },
            other => other,
        })?;
    }
    Ok(config)
}

fn check_url(base_url: &str) -> Result<(), ConfigError> {
    if base_url.is_empty() {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(base_url).ok().filter(|url| {
        ["http", "https"].contains(&url.scheme()) && url.host().is_some() && url.query().is_none()
    });
    match parsed {
        Some(_) => Ok(()),
        None => Err(ConfigError::invalid(
            "platform.base_url",
            format!("{base_url:?} is not an http(s) address such as \"https://203.0.113.10:8743\""),
        )),
    }
}

fn check_tls(config: &PlatformConfig) -> Result<(), ConfigError> {
    match (&config.client_cert, &config.client_key) {
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                "platform.client_key",
                "is empty but client_cert is set; give the PEM key of the client certificate",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                "platform.client_cert",
                "is empty but client_key is set; give the PEM client certificate",
            ));
        }
        _ => {}
    }
    if !config.verify_hostname && config.ca_cert.is_none() {
        return Err(ConfigError::invalid(
            "platform.verify_hostname",
            "false needs platform.ca_cert: the certificate is then still checked against that CA",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn error(text: &str) -> String {
        Config::parse(text, Path::new("t.toml"), Vec::new())
            .unwrap_err()
            .to_string()
    }

    const ENABLED: &str = "[platform]\nenabled = true\nbase_url = \"https://10.0.0.1:8743\"\n\
                           app_id = \"app\"\nsecret = \"s3cret\"\n";

    #[test]
    fn every_key_is_read_and_the_secret_is_hidden() {
        let text = format!(
            "{ENABLED}client_cert = \"c.pem\"\nclient_key = \"k.pem\"\nca_cert = \"ca.pem\"\n\
             verify_hostname = false\nmax_calls_per_minute = 50\nverify_before_retry = true\n\
             device_type = \"Meter\"\nmanufacturer_name = \"Acme\"\nmodel = \"M1\"\n"
        );
        let config = Config::parse(&text, Path::new("t.toml"), Vec::new()).unwrap();
        let platform = config.platform;
        assert_eq!(platform.base_url, "https://10.0.0.1:8743");
        assert_eq!(platform.secret.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{platform:?}").contains("s3cret"));
        assert_eq!(platform.max_calls_per_minute, 50);
        assert!(platform.verify_before_retry && !platform.verify_hostname);
        assert_eq!(platform.model.as_deref(), Some("M1"));
        assert_eq!(platform.client_key.unwrap(), Path::new("k.pem"));
    }

    #[test]
    fn defaults_need_no_credentials() {
        let config = Config::parse("", Path::new("t.toml"), Vec::new()).unwrap();
        assert!(!config.platform.enabled);
        assert_eq!(config.platform.max_calls_per_minute, 100);
        assert!(config.platform.verify_hostname);
        assert!(config.platform.credentials().is_err());
    }

    #[test]
    fn enabling_without_credentials_says_which_key_to_set() {
        assert_eq!(
            error("[platform]\nenabled = true\nbase_url = \"https://x:8743\"\nsecret = \"s\"\n"),
            "platform.app_id: is empty; set it to the application's appId (in the file or as \
             NOTIROUTER__PLATFORM__APP_ID); retry_upgrade needs it while platform.enabled = true"
        );
        let message = error("[platform]\nenabled = true\napp_id = \"a\"\nsecret = \"s\"\n");
        assert!(
            message.starts_with("platform.base_url: is empty"),
            "{message}"
        );
        let message = error("[platform]\nenabled = true\nbase_url = \"https://x\"\napp_id = \"a\"");
        assert!(
            message.starts_with("platform.secret: is empty"),
            "{message}"
        );
    }

    #[test]
    fn tls_and_address_mistakes_are_explained() {
        let message = error(&format!("{ENABLED}client_cert = \"c.pem\"\n"));
        assert!(
            message.starts_with("platform.client_key: is empty"),
            "{message}"
        );
        let message = error(&format!("{ENABLED}verify_hostname = false\n"));
        assert!(message.contains("needs platform.ca_cert"), "{message}");
        let message = error("[platform]\nbase_url = \"iot.example.com:8743\"\n");
        assert!(
            message.starts_with("platform.base_url: \"iot.example.com:8743\" is not"),
            "{message}"
        );
    }
}
