//! Actions: what scripts queue and delivery sends. The JSON form is SPEC.md's "Action JSON",
//! printed by `notirouter test`, matched by case files, stored in the outbox and embedded in
//! `actionFailed` notifications, so it is one serde type used everywhere.

use crate::destination::Destination;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One queued action: the plugin that queued it and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    #[serde(flatten)]
    pub spec: ActionSpec,
    pub plugin: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ActionSpec {
    Email(Email),
    Chat(Chat),
    Webhook(Webhook),
    Platform(PlatformOp),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Email {
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    pub subject: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// A chat message: plain `text` rendered in the channel kind's format, or a native `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// A JSON POST to a configured channel or to a URL given by the script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub payload: Value,
}

/// A call to the platform's northbound API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformOp {
    pub op: String,
    pub device_id: String,
    pub notify_type: String,
    pub target_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<String>,
    pub execute_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_type: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_times: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
}

impl PlatformOp {
    /// A `retry_upgrade` with the default options: the file looked up or configured, the task
    /// executed now.
    pub fn retry_upgrade(device_id: &str, notify_type: &str, target_version: &str) -> PlatformOp {
        PlatformOp {
            op: "retry_upgrade".to_owned(),
            device_id: device_id.to_owned(),
            notify_type: notify_type.to_owned(),
            target_version: target_version.to_owned(),
            file_id: None,
            execute_type: "now".to_owned(),
            retry_type: None,
            retry_times: None,
            start_time: None,
            end_time: None,
        }
    }
}

impl Action {
    /// The kind as stored and labelled: `email`, `chat`, `webhook` or `platform`.
    pub fn kind(&self) -> &'static str {
        match self.spec {
            ActionSpec::Email(_) => "email",
            ActionSpec::Chat(_) => "chat",
            ActionSpec::Webhook(_) => "webhook",
            ActionSpec::Platform(_) => "platform",
        }
    }

    /// Where it goes, for per-destination limits: the channel name, the URL's host, `email`
    /// or `platform`.
    pub fn destination(&self) -> Destination {
        match &self.spec {
            ActionSpec::Email(_) => Destination::Email,
            ActionSpec::Chat(chat) => Destination::Channel(chat.channel.clone()),
            ActionSpec::Webhook(Webhook {
                channel: Some(channel),
                ..
            }) => Destination::Channel(channel.clone()),
            ActionSpec::Webhook(Webhook { url, .. }) => {
                Destination::Url(url.as_deref().map(url_origin).unwrap_or_default())
            }
            ActionSpec::Platform(_) => Destination::Platform,
        }
    }

    /// The Action JSON as a map.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("actions serialise to JSON")
    }
}

/// `scheme://host[:port]` of a URL, without path, query or credentials (which may be secret).
fn url_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn action_json_is_flat_with_kind_and_plugin() {
        let action = Action {
            plugin: "alerts.rhai".into(),
            spec: ActionSpec::Chat(Chat {
                channel: "ops".into(),
                text: Some("hi".into()),
                payload: None,
            }),
        };
        assert_eq!(
            action.to_json(),
            json!({"kind": "chat", "plugin": "alerts.rhai", "channel": "ops", "text": "hi"})
        );
        let back: Action = serde_json::from_value(action.to_json()).unwrap();
        assert_eq!(back, action);
    }

    #[test]
    fn destinations_never_carry_url_secrets() {
        let action = Action {
            plugin: "p".into(),
            spec: ActionSpec::Webhook(Webhook {
                channel: None,
                url: Some("https://user:pw@hooks.example.com:8443/secret/path?token=x".into()),
                payload: json!({}),
            }),
        };
        assert_eq!(
            action.destination().to_string(),
            "url:https://hooks.example.com:8443"
        );
    }
}
