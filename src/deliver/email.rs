//! Email with lettre: SMTP (pooled connections; STARTTLS, TLS or plain as `smtp_url` says),
//! `.eml` files, or log lines. Every message carries a `Message-ID` made from the action's
//! idempotency key and the date it was queued, so a resend is the same message byte for byte.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use lettre::message::{Mailbox, Mailboxes, MultiPart, header};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::files::write_message_file;
use super::retry::Verdict;
use crate::action::Email;
use crate::config::{EmailConfig, MailTransport};
use crate::model::Millis;

pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(PathBuf),
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("email.from: {0}")]
    From(lettre::address::AddressError),
    // The URL holds a password, so the message never shows it.
    #[error("email.smtp_url cannot be used: {0}")]
    SmtpUrl(lettre::transport::smtp::Error),
}

impl Mailer {
    pub fn new(config: &EmailConfig, timeout: Duration) -> Result<Mailer, MailerError> {
        let from = config.from.parse().map_err(MailerError::From)?;
        let transport = match &config.transport {
            MailTransport::Smtp { url } => {
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                    .map_err(MailerError::SmtpUrl)?;
                Transport::Smtp(builder.timeout(Some(timeout)).build())
            }
            MailTransport::File { dir } => Transport::File(dir.clone()),
            MailTransport::Log => Transport::Log,
        };
        Ok(Mailer { from, transport })
    }

    pub async fn send(&self, email: &Email, key: &str, queued_at: Millis) -> Verdict {
        let message = match self.message(email, key, queued_at) {
            Ok(message) => message,
            Err(reason) => return Verdict::Unsendable { reason },
        };
        match &self.transport {
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => Verdict::Sent { result: None },
                Err(error) => smtp_verdict(&error),
            },
            Transport::File(dir) => {
                let name = format!("{key}.eml");
                write_message_file(dir, &name, &message.formatted()).await
            }
            Transport::Log => {
                tracing::info!(to = ?email.to, subject = %email.subject, message_id = %key, "email (log transport)");
                Verdict::Sent { result: None }
            }
        }
    }

    /// Builds the message; an address that cannot be parsed is a permanent error.
    fn message(&self, email: &Email, key: &str, queued_at: Millis) -> Result<Message, String> {
        let to = mailboxes("to", &email.to)?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .mailbox(header::To::from(to))
            .subject(email.subject.clone())
            .message_id(Some(format!("<{key}@notirouter>")))
            .date(UNIX_EPOCH + Duration::from_millis(u64::try_from(queued_at.0).unwrap_or(0)));
        if !email.cc.is_empty() {
            builder = builder.mailbox(header::Cc::from(mailboxes("cc", &email.cc)?));
        }
        let built = match &email.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                email.body.clone(),
                html.clone(),
            )),
            None => builder
                .header(header::ContentType::TEXT_PLAIN)
                .body(email.body.clone()),
        };
        built.map_err(|error| format!("the email cannot be built: {error}"))
    }
}

fn mailboxes(field: &str, addresses: &[String]) -> Result<Mailboxes, String> {
    if addresses.is_empty() {
        return Err(format!("`{field}` names no address"));
    }
    addresses
        .iter()
        .map(|address| {
            address
                .parse::<Mailbox>()
                .map_err(|e| format!("`{field}` address {address:?}: {e}"))
        })
        .collect()
}

/// SMTP 5xx is permanent; 4xx, timeouts and connection failures are worth retrying.
fn smtp_verdict(error: &lettre::transport::smtp::Error) -> Verdict {
    let reason = format!("SMTP: {error}");
    if error.is_permanent() {
        Verdict::Dead { reason }
    } else {
        Verdict::Retry {
            reason,
            after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer() -> Mailer {
        Mailer {
            from: "notirouter@example.com".parse().unwrap(),
            transport: Transport::Log,
        }
    }

    fn email(to: &[&str], html: Option<&str>) -> Email {
        Email {
            to: to.iter().map(|s| s.to_string()).collect(),
            cc: vec!["cc@example.com".into()],
            subject: "Échec de mise à jour: 设备 42".into(),
            body: "Gerät 42 — fehlgeschlagen".into(),
            html: html.map(str::to_owned),
        }
    }

    fn formatted(email: &Email) -> String {
        let message = mailer()
            .message(email, "01KEY", Millis(1_700_000_000_000))
            .unwrap();
        String::from_utf8(message.formatted()).unwrap()
    }

    #[test]
    fn the_message_id_and_date_come_from_the_action() {
        let text = formatted(&email(&["a@example.com", "b@example.com"], None));
        assert!(text.contains("Message-ID: <01KEY@notirouter>"), "{text}");
        assert!(
            text.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"),
            "{text}"
        );
        assert!(text.contains("To: a@example.com, b@example.com"), "{text}");
        assert!(text.contains("Cc: cc@example.com"), "{text}");
        assert_eq!(
            text,
            formatted(&email(&["a@example.com", "b@example.com"], None)),
            "byte-identical"
        );
    }

    #[test]
    fn non_ascii_subjects_are_encoded_and_html_makes_an_alternative() {
        let text = formatted(&email(&["a@example.com"], Some("<p>Gerät</p>")));
        assert!(text.contains("Subject: =?utf-8?"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("text/html"), "{text}");
    }

    #[test]
    fn an_invalid_address_is_permanent() {
        let error = mailer()
            .message(&email(&["not an address"], None), "k", Millis(0))
            .unwrap_err();
        assert!(error.contains("\"not an address\""), "{error}");
    }
}
