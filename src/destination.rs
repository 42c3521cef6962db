//! Where an action goes, as delivery groups actions for its per-destination slots and
//! breakers: a configured channel, a script's own URL (by origin only), email, or the
//! platform. Its text form (`channel:ops`, `url:https://host:8443`, `email`, `platform`) is
//! how the store keeps it and how `events show` and `dead list` print it.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Email,
    /// A channel of the config, by name.
    Channel(String),
    /// A webhook to a script's own URL: its scheme and host only, never a path or
    /// credentials, which may carry secrets.
    Url(String),
    Platform,
}

impl Destination {
    /// The bounded label metrics use: the channel's name, `email`, `platform`, or `url` for
    /// every script-given URL.
    pub fn label(&self) -> &str {
        match self {
            Destination::Email => "email",
            Destination::Channel(name) => name,
            Destination::Url(_) => "url",
            Destination::Platform => "platform",
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Email => f.write_str("email"),
            Destination::Channel(name) => write!(f, "channel:{name}"),
            Destination::Url(origin) => write!(f, "url:{origin}"),
            Destination::Platform => f.write_str("platform"),
        }
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some(("channel", name)) => Ok(Destination::Channel(name.to_owned())),
            Some(("url", origin)) => Ok(Destination::Url(origin.to_owned())),
            _ if text == "email" => Ok(Destination::Email),
            _ if text == "platform" => Ok(Destination::Platform),
            _ => Err(format!("unknown destination {text:?}")),
        }
    }
}

/// As its text form: the JSON of `events show` and `dead list` keeps it a string.
impl Serialize for Destination {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_reads_back_from_its_text() {
        let all = [
            Destination::Email,
            Destination::Channel("ops".into()),
            Destination::Url("https://hooks.example.com:8443".into()),
            Destination::Platform,
        ];
        for destination in all {
            let text = destination.to_string();
            assert_eq!(text.parse::<Destination>(), Ok(destination), "{text}");
        }
        assert!("sms".parse::<Destination>().is_err());
    }

    #[test]
    fn labels_are_bounded() {
        let url = Destination::Url("https://a.example".into());
        assert_eq!(url.label(), "url");
        assert_eq!(Destination::Channel("ops".into()).label(), "ops");
        assert_eq!(
            serde_json::to_value(Destination::Channel("ops".into())).unwrap(),
            "channel:ops"
        );
    }
}
