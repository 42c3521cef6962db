//! The receiver's exposure: TLS files, the token, address allowlists, trusted proxies and
//! connection limits. Kept apart from the rest of `[server]` because every value here decides
//! who can reach the receiver, and each one is checked with a message that says how to fix it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::raw::{RawAuth, RawTls};
use super::{ConfigError, Secret};

/// A token shorter than this is refused: it guards the receiver against guessing.
const MIN_TOKEN_CHARS: usize = 16;

/// `[server.tls]`, validated.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set = every client must present a certificate chaining to these CAs.
    pub client_ca: Option<PathBuf>,
}

/// `[server.auth]` and `trusted_proxies`, validated. The default lets everyone in.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub token: Option<Secret>,
    pub open_paths: Vec<String>,
    /// Empty = any address.
    pub allow_ips: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
}

/// How many connections are served at once and how long each may dawdle.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub keep_alive: Duration,
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a single address (`192.0.2.7`, `::1`) as a net.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "{text:?} is not an address or CIDR such as \"203.0.113.0/24\" or \"2001:db8::/32\""
        )
    })
}

/// Reads a CIDR list; an error names the entry (`server.auth.allow_ips[2]`).
pub(super) fn nets_from_raw(key: &str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            parse_net(entry)
                .map_err(|message| ConfigError::invalid(&format!("{key}[{index}]"), message))
        })
        .collect()
}

/// A usable token: long enough not to be guessed, and only characters that survive a query
/// string and an `Authorization` header unchanged.
pub fn check_token(token: &str) -> Result<(), String> {
    let usable = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if let Some(bad) = token.chars().find(|c| !usable(*c)) {
        // The character alone, never the token: it is a secret.
        return Err(format!(
            "holds {bad:?}; use letters, digits and - . _ ~ + / = only (e.g. the output of `openssl rand -hex 24`)"
        ));
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "is shorter than {MIN_TOKEN_CHARS} characters; use a random one (e.g. `openssl rand -hex 24`)"
        ));
    }
    Ok(())
}

pub(super) fn access_from_raw(
    auth: Option<RawAuth>,
    trusted_proxies: &[String],
) -> Result<AccessConfig, ConfigError> {
    let auth = auth.unwrap_or_default();
    let token = match auth.token.as_str() {
        "" => None,
        token => {
            check_token(token)
                .map_err(|message| ConfigError::invalid("server.auth.token", message))?;
            Some(Secret(auth.token))
        }
    };
    if token.is_none() && !auth.open_paths.is_empty() {
        let message = "has no effect without server.auth.token; set a token or remove open_paths";
        return Err(ConfigError::invalid("server.auth.open_paths", message));
    }
    for (index, path) in auth.open_paths.iter().enumerate() {
        if !path.starts_with('/') || (path.len() > 1 && path.ends_with('/')) {
            let message = "must start with '/' and not end with '/'";
            return Err(ConfigError::invalid(
                &format!("server.auth.open_paths[{index}]"),
                message,
            ));
        }
    }
    Ok(AccessConfig {
        token,
        open_paths: auth.open_paths,
        allow_ips: nets_from_raw("server.auth.allow_ips", &auth.allow_ips)?,
        trusted_proxies: nets_from_raw("server.trusted_proxies", trusted_proxies)?,
    })
}

pub(super) fn tls_from_raw(raw: Option<RawTls>) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    for (key, path) in [("server.tls.cert", &raw.cert), ("server.tls.key", &raw.key)] {
        if path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(key, "must name a PEM file"));
        }
    }
    Ok(Some(TlsConfig {
        cert: raw.cert,
        key: raw.key,
        client_ca: Some(raw.client_ca).filter(|path| !path.as_os_str().is_empty()),
    }))
}

pub(super) fn metrics_listen_from_raw(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        let message = format!("{text:?} is not an address and port such as \"127.0.0.1:9090\"");
        ConfigError::invalid("server.metrics_listen", message)
    })
}

pub(super) fn limits_from_raw(
    max_connections: usize,
    header_timeout: Duration,
    keep_alive: Duration,
) -> Result<Limits, ConfigError> {
    if max_connections == 0 {
        return Err(ConfigError::invalid(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    if header_timeout.is_zero() {
        let message = "must be longer than zero, or slow clients could hold connections forever";
        return Err(ConfigError::invalid("server.header_timeout", message));
    }
    Ok(Limits {
        max_connections,
        header_timeout,
        keep_alive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_are_cidrs_or_single_addresses_of_either_family() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_net(" 2001:db8::/32 ").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8", "::1/129"] {
            assert!(parse_net(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_must_be_long_and_plain_and_errors_do_not_repeat_them() {
        assert!(check_token("0123456789abcdef").is_ok());
        assert!(
            check_token("short")
                .unwrap_err()
                .contains("shorter than 16")
        );
        let error = check_token("secret secret secret").unwrap_err();
        assert!(
            error.contains("' '") && !error.contains("secret"),
            "{error}"
        );
    }

    fn parse(text: &str) -> Result<crate::config::Config, ConfigError> {
        crate::config::Config::parse(text, std::path::Path::new("test.toml"), Vec::new())
    }

    #[test]
    fn the_exposure_keys_are_read_and_default_to_open_plain_http() {
        let server = parse("").unwrap().server;
        assert!(server.tls.is_none() && server.metrics_listen.is_none());
        assert!(server.access.token.is_none() && server.access.allow_ips.is_empty());
        assert_eq!(server.limits.max_connections, 1024);
        assert_eq!(server.limits.header_timeout, Duration::from_secs(5));
        let server = parse(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nmetrics_listen = \"127.0.0.1:9090\"\n\
             max_connections = 10\nheader_timeout = \"2s\"\nkeep_alive = \"0s\"\n\
             [server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [server.auth]\ntoken = \"0123456789abcdef\"\nopen_paths = [\"/cb/x\"]\nallow_ips = [\"::1\"]\n",
        )
        .unwrap()
        .server;
        let tls = server.tls.unwrap();
        assert_eq!((tls.cert, tls.client_ca), (PathBuf::from("c.pem"), None));
        assert_eq!(
            server.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(format!("{:?}", server.access.token), "Some(***)");
        assert_eq!(server.access.allow_ips[0].to_string(), "::1/128");
        assert_eq!(server.access.trusted_proxies[0].to_string(), "10.0.0.0/8");
        assert_eq!(server.limits.keep_alive, Duration::ZERO);
    }

    #[test]
    fn exposure_errors_name_the_key_and_what_to_do() {
        for (text, expected) in [
            (
                "[server.auth]\nallow_ips = [\"::1\", \"nope\"]",
                "server.auth.allow_ips[1]: \"nope\" is not",
            ),
            (
                "[server]\ntrusted_proxies = [\"1.2.3.4/40\"]",
                "server.trusted_proxies[0]:",
            ),
            (
                "[server.auth]\nopen_paths = [\"/a\"]",
                "server.auth.open_paths: has no effect",
            ),
            (
                "[server.auth]\ntoken = \"abc\"",
                "server.auth.token: is shorter",
            ),
            ("[server.tls]\ncert = \"c.pem\"", "missing field `key`"),
            (
                "[server.tls]\ncert = \"\"\nkey = \"k\"",
                "server.tls.cert: must name a PEM file",
            ),
            (
                "[server]\nmetrics_listen = \"9090\"",
                "server.metrics_listen: \"9090\" is not",
            ),
            (
                "[server]\nheader_timeout = \"0s\"",
                "server.header_timeout: must be longer",
            ),
            (
                "[server]\nmax_connections = 0",
                "server.max_connections: must be at least 1",
            ),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn every_toml_example_in_the_readme_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .collect();
        assert!(
            blocks.len() >= 2,
            "the README's TOML examples were not found"
        );
        for block in blocks {
            if let Err(error) = parse(block) {
                panic!("{error}\n{block}");
            }
        }
    }
}
