//! `[ui]`: the dashboard and its JSON API (SPEC.md, "Dashboard and HTTP API").

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUi {
    pub enabled: bool,
    /// Empty: on `server.listen`.
    pub listen: String,
}

impl Default for RawUi {
    fn default() -> RawUi {
        RawUi {
            enabled: true,
            listen: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    pub enabled: bool,
    /// Its own address; `None` serves it on `server.listen`, behind `allow_ips` and the token.
    pub listen: Option<SocketAddr>,
}

pub(super) fn from_raw(raw: RawUi) -> Result<UiConfig, ConfigError> {
    let listen = match raw.listen.trim() {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            ConfigError::invalid(
                "ui.listen",
                format!(
                    "{text:?} is not an address and port such as \"127.0.0.1:9091\"; leave it empty to serve the dashboard on server.listen"
                ),
            )
        })?),
    };
    Ok(UiConfig {
        enabled: raw.enabled,
        listen,
    })
}
