//! `NOTIROUTER__SECTION__KEY` overrides: each variable sets one key of the file's table, read
//! as a TOML value (or as a string when it does not parse as one).

use std::collections::BTreeMap;
use std::path::Path;

use super::raw::RawConfig;
use super::{ConfigError, ENV_PREFIX, file_error, value_error_message};

/// Applies the overrides one at a time, in name order, re-checking after each so that an error
/// names the variable that caused it.
pub(super) fn apply_overrides(
    text: &str,
    path: &Path,
    overrides: &BTreeMap<String, String>,
) -> Result<RawConfig, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e| file_error(path, text, &e))?;
    let mut raw = None;
    for (var, value) in overrides {
        let env_error = |message: String| ConfigError::Env {
            var: var.clone(),
            message,
        };
        let keys: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if keys.iter().any(String::is_empty) {
            return Err(env_error(
                "is not of the form NOTIROUTER__SECTION__KEY (segments joined by \"__\")".into(),
            ));
        }
        set_key(&mut table, &keys, override_value(value)).map_err(env_error)?;
        let merged = toml::to_string(&table).map_err(|e| env_error(e.to_string()))?;
        let parsed = toml::from_str(&merged).map_err(|error| {
            // The variable set this key alone: name it when serde's message does not (an
            // unknown key's message names it already).
            let message = value_error_message(&merged, &error);
            let key = keys.join(".");
            match message.starts_with(&key) || message.starts_with("unknown field") {
                true => env_error(message),
                false => env_error(format!("{key}: {message}")),
            }
        });
        raw = Some(parsed?);
    }
    Ok(raw.expect("apply_overrides is only called with at least one override"))
}

/// Names the variable behind an invalid value when the value came from the environment: the
/// file is then correct, and the operator must be told where else to look.
pub(super) fn blame_override(
    error: ConfigError,
    overrides: &BTreeMap<String, String>,
) -> ConfigError {
    let ConfigError::Invalid { key, message } = error else {
        return error;
    };
    let from_env = overrides.keys().find(|var| {
        let dotted = var[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
        key == dotted
            || key.starts_with(&format!("{dotted}."))
            || key.starts_with(&format!("{dotted}["))
    });
    match from_env {
        Some(var) => ConfigError::Env {
            var: var.clone(),
            message: format!("{key}: {message}"),
        },
        None => ConfigError::Invalid { key, message },
    }
}

/// An override is read as a TOML value, and as a string when it does not parse as one.
fn override_value(text: &str) -> toml::Value {
    format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_key(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys
        .split_last()
        .expect("split(\"__\") yields at least one segment");
    let mut current = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a section", keys[..=depth].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}
