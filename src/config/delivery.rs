//! Where actions go: `[email]`, `[channels.*]` and `[delivery]`, validated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{ChannelKind, EmailTransport, RawChannel, RawDelivery, RawEmail};
use super::{ConfigError, Secret};

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub transport: MailTransport,
    pub from: String,
}

/// Where email goes, with what that transport needs: SMTP cannot be chosen without its URL.
#[derive(Debug, Clone)]
pub enum MailTransport {
    Smtp {
        url: Secret,
    },
    /// One `.eml` file per message in `dir`.
    File {
        dir: PathBuf,
    },
    Log,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
    pub timeout: Duration,
    pub concurrency_per_destination: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

/// A named chat or webhook destination.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub kind: ChannelKind,
    /// Absent for kind `log`.
    pub url: Option<Secret>,
    pub secret: Option<Secret>,
    pub headers: BTreeMap<String, String>,
    /// Where kind `log` writes each message as `<key>.json`; unused by the other kinds.
    pub dir: PathBuf,
}

/// Where a `log` channel writes its messages unless its `dir` says otherwise.
pub const DEFAULT_CHAT_DIR: &str = "data/chat";

pub(super) fn channel_from_raw(name: &str, raw: RawChannel) -> Result<ChannelConfig, ConfigError> {
    let key = |field: &str| format!("channels.{name}{field}");
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_name {
        let message = "a channel name may only hold letters, digits, '_' and '-'";
        return Err(ConfigError::invalid(&key(""), message));
    }
    let url = match (raw.kind, raw.url) {
        (ChannelKind::Log, None) => None,
        (ChannelKind::Log, Some(_)) => {
            let message = "kind \"log\" sends nowhere; remove the url";
            return Err(ConfigError::invalid(&key(".url"), message));
        }
        (kind, None) => {
            let message = format!("kind \"{kind}\" needs the URL to post to");
            return Err(ConfigError::invalid(&key(".url"), message));
        }
        (_, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
            Some(Secret(url))
        }
        (_, Some(_)) => {
            let message = "is not an http(s) URL; fix the scheme or remove the channel";
            return Err(ConfigError::invalid(&key(".url"), message));
        }
    };
    let dir = match (raw.kind, raw.dir) {
        (ChannelKind::Log, dir) => dir.unwrap_or_else(|| PathBuf::from(DEFAULT_CHAT_DIR)),
        (kind, Some(_)) => {
            let message =
                format!("kind \"{kind}\" posts to its url and writes no files; remove the dir");
            return Err(ConfigError::invalid(&key(".dir"), message));
        }
        (_, None) => PathBuf::from(DEFAULT_CHAT_DIR),
    };
    Ok(ChannelConfig {
        kind: raw.kind,
        url,
        secret: raw.secret.filter(|secret| !secret.is_empty()).map(Secret),
        headers: raw.headers,
        dir,
    })
}

pub(super) fn email_from_raw(raw: RawEmail) -> Result<EmailConfig, ConfigError> {
    if raw.from.parse::<lettre::message::Mailbox>().is_err() {
        let message = format!(
            "{:?} is not an email address such as \"notirouter@example.com\"",
            raw.from
        );
        return Err(ConfigError::invalid("email.from", message));
    }
    let transport = match (raw.transport, raw.smtp_url.is_empty()) {
        (EmailTransport::Smtp, true) => {
            let message = "transport \"smtp\" needs smtp_url, e.g. \"smtp://user:pass@host:587?tls=required\"";
            return Err(ConfigError::invalid("email.smtp_url", message));
        }
        (EmailTransport::Smtp, false) => {
            let valid = raw.smtp_url.starts_with("smtp://") || raw.smtp_url.starts_with("smtps://");
            if !valid {
                // The URL may hold a password: the message must not repeat it.
                let message = "must start with smtp:// or smtps://";
                return Err(ConfigError::invalid("email.smtp_url", message));
            }
            MailTransport::Smtp {
                url: Secret(raw.smtp_url),
            }
        }
        (EmailTransport::File, _) => MailTransport::File { dir: raw.dir },
        (EmailTransport::Log, _) => MailTransport::Log,
    };
    Ok(EmailConfig {
        transport,
        from: raw.from,
    })
}

pub(super) fn delivery_from_raw(raw: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
    let at_least_one = [
        ("delivery.max_attempts", raw.max_attempts as usize),
        (
            "delivery.concurrency_per_destination",
            raw.concurrency_per_destination,
        ),
        ("delivery.breaker_failures", raw.breaker_failures as usize),
    ];
    if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    if raw.timeout.is_zero() {
        return Err(ConfigError::invalid(
            "delivery.timeout",
            "must be longer than zero",
        ));
    }
    if raw.backoff_initial > raw.backoff_max {
        return Err(ConfigError::invalid(
            "delivery.backoff_initial",
            "must not exceed delivery.backoff_max",
        ));
    }
    Ok(DeliveryConfig {
        max_attempts: raw.max_attempts,
        backoff_initial: raw.backoff_initial,
        backoff_max: raw.backoff_max,
        retry_after_max: raw.retry_after_max,
        timeout: raw.timeout,
        concurrency_per_destination: raw.concurrency_per_destination,
        breaker_failures: raw.breaker_failures,
        breaker_cooldown: raw.breaker_cooldown,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::tests::parse;

    #[test]
    fn each_email_transport_carries_what_it_needs() {
        let email = |text: &str| parse(&format!("[email]\n{text}")).map(|c| c.email.transport);
        let smtp = email("transport = \"smtp\"\nsmtp_url = \"smtp://u:p@h:587\"\n").unwrap();
        assert!(
            matches!(&smtp, MailTransport::Smtp { url } if url.expose() == "smtp://u:p@h:587"),
            "{smtp:?}"
        );
        let file = email("transport = \"file\"\ndir = \"out/mail\"\n").unwrap();
        assert!(
            matches!(&file, MailTransport::File { dir } if dir == Path::new("out/mail")),
            "{file:?}"
        );
        assert!(matches!(
            email("transport = \"log\"\n"),
            Ok(MailTransport::Log)
        ));
        let error = email("transport = \"smtp\"\n").unwrap_err().to_string();
        assert!(error.starts_with("email.smtp_url: "), "{error}");
    }

    #[test]
    fn channels_need_a_url_except_kind_log() {
        let error = parse("[channels.ops]\nkind = \"slack\"")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "channels.ops.url: kind \"slack\" needs the URL to post to"
        );
        let error = parse("[channels.ops]\nkind = \"slack\"\nurl = \"htp://x\"").unwrap_err();
        assert!(
            error.to_string().contains("is not an http(s) URL"),
            "{error}"
        );
        let error = parse("[channels.ops]\nkind = \"log\"\nurl = \"https://x\"").unwrap_err();
        assert!(error.to_string().contains("remove the url"), "{error}");
        let log = parse(
            "[channels.ops]\nkind = \"log\"\n[channels.audit]\nkind = \"log\"\ndir = \"/var/chat\"",
        )
        .unwrap();
        assert_eq!(log.channels["ops"].dir, Path::new("data/chat"));
        assert_eq!(log.channels["audit"].dir, Path::new("/var/chat"));
        let error = parse("[channels.ops]\nkind = \"slack\"\nurl = \"https://x\"\ndir = \"d\"")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("channels.ops.dir: "), "{error}");
        let error = parse("[channels.ops]\nkind = \"sms\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `sms`"), "{error}");
    }
}
