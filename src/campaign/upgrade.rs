//! The upgrade notifications and the campaigns they belong to, read from stored bodies.

use serde::Serialize;
use serde_json::Value;

use crate::model::Millis;

/// The error code counted for a failure that carries none (firmware results have no
/// `errorCode`; their `statusDesc` is used when present).
pub const NO_ERROR_CODE: &str = "none";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Software,
    Firmware,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Software => "software",
            Kind::Firmware => "firmware",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "software" => Some(Kind::Software),
            "firmware" => Some(Kind::Firmware),
            _ => None,
        }
    }

    /// The kind of an upgrade notification type (`sw…` or `fw…`).
    pub fn of_notify_type(notify_type: &str) -> Option<Kind> {
        match notify_type.get(..2) {
            Some("sw") => Some(Kind::Software),
            Some("fw") => Some(Kind::Firmware),
            _ => None,
        }
    }
}

/// One campaign: an upgrade kind and its target version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CampaignKey {
    pub kind: Kind,
    pub target_version: String,
}

/// Where a device stands in a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Succeeded,
    Failed,
    InProgress,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Succeeded => "succeeded",
            DeviceStatus::Failed => "failed",
            DeviceStatus::InProgress => "in_progress",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceStatus> {
        match text {
            "succeeded" => Some(DeviceStatus::Succeeded),
            "failed" => Some(DeviceStatus::Failed),
            "in_progress" => Some(DeviceStatus::InProgress),
            _ => None,
        }
    }
}

/// An upgrade notification, read from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    Result {
        kind: Kind,
        device_id: String,
        operation_id: String,
        target_version: String,
        succeeded: bool,
        error_code: String,
        at: Millis,
    },
    StateChange {
        device_id: String,
        operation_id: String,
        at: Millis,
    },
}

impl Upgrade {
    /// Reads an upgrade notification; `None` for anything else, or one missing the fields a
    /// campaign needs (lenient validation stores such bodies too).
    pub fn parse(notify_type: &str, body: &[u8], at: Millis) -> Option<Upgrade> {
        let body: Value = serde_json::from_slice(body).ok()?;
        Upgrade::from_fields(
            notify_type,
            |field| body.get(field).and_then(Value::as_str).map(str::to_owned),
            at,
        )
    }

    /// The campaign of a result; `None` for a state change, which carries no version.
    pub fn campaign(&self) -> Option<CampaignKey> {
        match self {
            Upgrade::Result {
                kind,
                target_version,
                ..
            } => Some(CampaignKey {
                kind: *kind,
                target_version: target_version.clone(),
            }),
            Upgrade::StateChange { .. } => None,
        }
    }

    /// Reads an upgrade notification from its string fields, as `field` gives them.
    pub fn from_fields(
        notify_type: &str,
        text: impl Fn(&str) -> Option<String>,
        at: Millis,
    ) -> Option<Upgrade> {
        let kind = Kind::of_notify_type(notify_type)?;
        let device_id = text("deviceId")?;
        let operation_id = text("operationId")?;
        if notify_type.ends_with("StateChangeNotify") {
            return Some(Upgrade::StateChange {
                device_id,
                operation_id,
                at,
            });
        }
        let (result_field, code_field) = match kind {
            Kind::Software => ("swUpgradeResult", "errorCode"),
            Kind::Firmware => ("status", "statusDesc"),
        };
        let succeeded = match text(result_field)?.as_str() {
            "SUCCESS" => true,
            "FAIL" => false,
            _ => return None,
        };
        let error_code = text(code_field)
            .filter(|code| !succeeded && !code.is_empty())
            .unwrap_or_else(|| NO_ERROR_CODE.to_owned());
        Some(Upgrade::Result {
            kind,
            device_id,
            operation_id,
            target_version: text("targetVersion")?,
            succeeded,
            error_code,
            at,
        })
    }
}
