//! Sending one action: email through the mailer; chat and webhooks as HTTP POSTs with the
//! body their service documents; `log` channels as a log line and a file. Every send returns a
//! [`Verdict`]; nothing here retries or records.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::DeliveryError;
use super::email::Mailer;
use super::files::write_message_file;
use super::payload::{chat_body, dingtalk_url, feishu_sign, webhook_signature};
use super::platform::PlatformSender;
use super::retry::{Verdict, classify_http};
use crate::action::{Action, ActionSpec, Chat, Webhook};
use crate::config::{ChannelConfig, ChannelKind};
use crate::store::PendingAction;

/// How much of an error answer is kept in `last_error`.
const ERROR_EXCERPT: usize = 200;
/// How much of an answer is read: enough for [`ERROR_EXCERPT`] characters of UTF-8 after
/// leading whitespace. The rest is never read; the connection is dropped instead.
const ERROR_READ_LIMIT: usize = 8 << 10;
/// A platform delivery makes several calls, each bounded by `delivery.timeout`, and may wait
/// for the call limit and out throttling; its guard only catches a hang.
const PLATFORM_CALLS: u32 = 10;
const PLATFORM_WAITS: Duration = Duration::from_secs(120);
/// Why a platform action queued while the platform was enabled cannot be sent now.
const PLATFORM_DISABLED: &str =
    "the platform is disabled; set platform.enabled = true, then run `notirouter dead retry --all`";

pub struct Sender {
    client: reqwest::Client,
    channels: BTreeMap<String, ChannelConfig>,
    mailer: Mailer,
    /// Set when the platform is enabled.
    platform: Option<PlatformSender>,
    timeout: Duration,
}

impl Sender {
    pub fn new(
        channels: BTreeMap<String, ChannelConfig>,
        mailer: Mailer,
        platform: Option<PlatformSender>,
        timeout: Duration,
    ) -> Result<Sender, DeliveryError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("notirouter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DeliveryError::Client)?;
        Ok(Sender {
            client,
            channels,
            mailer,
            platform,
            timeout,
        })
    }

    /// The longest one send of `action` may take before it is abandoned as hung.
    pub fn time_limit(&self, action: &Action) -> Duration {
        let single = self.timeout + Duration::from_secs(1);
        match action.spec {
            ActionSpec::Platform(_) => single * PLATFORM_CALLS + PLATFORM_WAITS,
            _ => single,
        }
    }

    pub async fn send(&self, pending: &PendingAction) -> Verdict {
        match &pending.action.spec {
            ActionSpec::Email(email) => {
                self.mailer
                    .send(email, &pending.idempotency_key, pending.created_at)
                    .await
            }
            ActionSpec::Chat(chat) => self.chat(chat, pending).await,
            ActionSpec::Webhook(webhook) => self.webhook(webhook, pending).await,
            ActionSpec::Platform(op) => match &self.platform {
                Some(platform) => platform.send(op, pending).await,
                None => Verdict::Unsendable {
                    reason: PLATFORM_DISABLED.to_owned(),
                },
            },
        }
    }

    fn channel(&self, name: &str) -> Result<&ChannelConfig, Verdict> {
        self.channels.get(name).ok_or_else(|| Verdict::Unsendable {
            reason: format!("channel {name:?} is no longer configured"),
        })
    }

    async fn chat(&self, chat: &Chat, pending: &PendingAction) -> Verdict {
        let channel = match self.channel(&chat.channel) {
            Ok(channel) => channel,
            Err(verdict) => return verdict,
        };
        let mut body = chat_body(channel.kind, chat);
        let Some(url) = &channel.url else {
            return log_chat(&chat.channel, &channel.dir, &body, &pending.idempotency_key).await;
        };
        let now = crate::model::Millis::now();
        let url = match (channel.kind, &channel.secret) {
            (ChannelKind::Dingtalk, Some(secret)) => {
                match dingtalk_url(url.expose(), secret.expose(), now.0) {
                    Ok(signed) => signed.to_string(),
                    Err(reason) => return Verdict::Unsendable { reason },
                }
            }
            (ChannelKind::Feishu, Some(secret)) => {
                feishu_sign(&mut body, secret.expose(), now.0.div_euclid(1000));
                url.expose().to_owned()
            }
            _ => url.expose().to_owned(),
        };
        let bytes = serde_json::to_vec(&body).expect("a JSON value serialises");
        self.post(&url, bytes, HeaderMap::new(), &channel.headers)
            .await
    }

    async fn webhook(&self, webhook: &Webhook, pending: &PendingAction) -> Verdict {
        let (url, secret, extra) = match (&webhook.channel, &webhook.url) {
            (Some(name), _) => match self.channel(name) {
                Ok(ChannelConfig {
                    url: Some(url),
                    secret,
                    headers,
                    ..
                }) => (
                    url.expose().to_owned(),
                    secret.as_ref().map(|s| s.expose().to_owned()),
                    headers.clone(),
                ),
                Ok(_) => {
                    return Verdict::Unsendable {
                        reason: format!("channel {name:?} has no url"),
                    };
                }
                Err(verdict) => return verdict,
            },
            (None, Some(url)) => (url.clone(), None, BTreeMap::new()),
            (None, None) => {
                return Verdict::Unsendable {
                    reason: "the webhook names no channel or url".to_owned(),
                };
            }
        };
        let body = serde_json::to_vec(&webhook.payload).expect("a JSON value serialises");
        let key = &pending.idempotency_key;
        // Fixed at queue time, so every attempt carries the same id, timestamp and signature.
        let timestamp = pending.created_at.0.div_euclid(1000);
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("webhook-id", key.clone());
        set("webhook-timestamp", timestamp.to_string());
        set("idempotency-key", key.clone());
        if let Some(secret) = secret {
            set(
                "webhook-signature",
                webhook_signature(&secret, key, timestamp, &body),
            );
        }
        self.post(&url, body, headers, &extra).await
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        mut headers: HeaderMap,
        extra: &BTreeMap<String, String>,
    ) -> Verdict {
        for (name, value) in extra {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => {
                    return Verdict::Unsendable {
                        reason: format!("header {name:?} is not a valid HTTP header"),
                    };
                }
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Without the URL: chat webhook URLs carry their token.
            Err(error) => {
                return Verdict::Retry {
                    reason: format!("{}", error.without_url()),
                    after: None,
                };
            }
        };
        let (status, headers) = (response.status(), response.headers().clone());
        // Read to its end when short, so that the connection can be used again.
        let start = read_at_most(response, ERROR_READ_LIMIT).await;
        let text = String::from_utf8_lossy(&start);
        let excerpt: String = text.trim().chars().take(ERROR_EXCERPT).collect();
        classify_http(status, &headers, excerpt.trim())
    }
}

/// The first `limit` bytes of an answer's body (fewer if it ends or fails first). Dropping
/// the response with its body unread closes the connection, so an endless or trickling answer
/// costs no more than this.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut start = Vec::new();
    while start.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - start.len();
                start.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    start
}

/// A `log` channel: a log line, and the message as `<key>.json` in the channel's `dir`.
async fn log_chat(channel: &str, dir: &Path, body: &Value, key: &str) -> Verdict {
    tracing::info!(%channel, message = %body, "chat message (log channel)");
    let bytes = serde_json::to_vec_pretty(body).expect("a JSON value serialises");
    write_message_file(dir, &format!("{key}.json"), &bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_disabled_reason_is_one_plain_sentence() {
        assert!(!PLATFORM_DISABLED.contains("  "), "{PLATFORM_DISABLED:?}");
        assert!(PLATFORM_DISABLED.ends_with("`notirouter dead retry --all`"));
    }
}
