//! Turning a stored notification into what scripts see: `n`, the body as an object map, and
//! `meta`.

use rhai::{Dynamic, Map};
use serde_json::Value;

use super::{DigestInput, EventInput};
use crate::model::Millis;
use crate::notification::COMMAND_STATE_CHANGED;
use crate::store::StoredEvent;
use crate::store::rules::DIGEST;

/// The parts of an event that scripts see.
pub struct EventParts<'a> {
    pub id: String,
    pub received_at: Millis,
    pub path: &'a str,
    pub remote_addr: Option<&'a str>,
    pub body: &'a [u8],
    /// The lenient-mode warnings, a JSON array.
    pub problems: Value,
    pub source: &'a str,
}

impl EventInput {
    pub fn from_stored(event: &StoredEvent) -> Result<EventInput, String> {
        let problems = serde_json::from_str(&event.warnings)
            .map_err(|_| format!("event {} has stored warnings that are not JSON", event.id))?;
        EventInput::from_parts(EventParts {
            id: event.id.to_string(),
            received_at: event.received_at,
            path: &event.path,
            remote_addr: event.remote_addr.as_deref(),
            body: &event.body,
            problems,
            source: &event.source,
        })
    }

    pub fn from_parts(parts: EventParts<'_>) -> Result<EventInput, String> {
        // Straight from JSON to rhai values, with no JSON tree in between: this runs for every
        // event.
        let body: Dynamic = serde_json::from_slice(parts.body)
            .map_err(|error| format!("event {}: the stored body is not JSON: {error}", parts.id))?;
        let Some(mut object) = body.try_cast::<Map>() else {
            return Err(format!(
                "event {}: the stored body is not a JSON object",
                parts.id
            ));
        };
        // The command-status push carries no type of its own; scripts see the SDK's name.
        if !object.contains_key("notifyType")
            && object.contains_key("commandId")
            && object.contains_key("result")
        {
            object.insert("notifyType".into(), COMMAND_STATE_CHANGED.into());
        }
        let to_dynamic = |value: &Value| {
            rhai::serde::to_dynamic(value).map_err(|error| format!("event {}: {error}", parts.id))
        };
        let mut meta = Map::new();
        meta.insert("id".into(), parts.id.clone().into());
        meta.insert("received_at".into(), parts.received_at.to_rfc3339().into());
        meta.insert("path".into(), parts.path.into());
        meta.insert(
            "remote_addr".into(),
            parts.remote_addr.unwrap_or_default().into(),
        );
        meta.insert("problems".into(), to_dynamic(&parts.problems)?);
        meta.insert("source".into(), parts.source.into());
        // Only the store raises digests: a pushed body that claims to be one is a notification.
        let digest = match parts.source {
            "internal" => DigestInput::from_body(&object),
            _ => None,
        };
        Ok(EventInput {
            id: parts.id.clone(),
            body: Dynamic::from_map(object),
            meta: Dynamic::from(meta),
            digest,
        })
    }
}

impl DigestInput {
    /// The digest a [`crate::store::rules::digest_event`] body carries.
    fn from_body(body: &Map) -> Option<DigestInput> {
        let field = |name: &str| body.get(name).cloned();
        if field("notifyType")?.into_string().ok()? != DIGEST {
            return None;
        }
        Some(DigestInput {
            plugin: field("plugin")?.into_string().ok()?,
            key: field("key")?,
            items: field("items").filter(Dynamic::is_array)?,
            total: field("total")?.as_int().ok()?,
        })
    }
}
