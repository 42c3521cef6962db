//! The `fileId` of a target version (PLATFORM-NOTES.md §4.7): from `[platform.packages]`, or
//! looked up in the platform's package list by type, version and the configured device type,
//! manufacturer and model. A lookup that finds exactly one package is remembered; none or
//! several is an error that lists what was found, since the notification cannot tell which
//! package applies.

use serde_json::Value;

use super::tasks::entries;
use super::{Platform, PlatformError, UpgradeKind};

const CATEGORY: &str = "/iodm/northbound/v1.5.0/category";

impl Platform {
    /// The package to install for `version`.
    pub async fn file_id(&self, kind: UpgradeKind, version: &str) -> Result<String, PlatformError> {
        if let Some(file_id) = self.config.packages.get(version) {
            return Ok(file_id.clone());
        }
        let key = (kind, version.to_owned());
        let mut known = self.packages.lock().await;
        if let Some(file_id) = known.get(&key) {
            return Ok(file_id.clone());
        }
        let found = self.look_up(kind, version).await?;
        let file_id = match found.as_slice() {
            [one] => one["fileId"].as_str().unwrap_or_default().to_owned(),
            [] => {
                return Err(PlatformError::NoPackage {
                    file_type: kind.file_type(),
                    version: version.to_owned(),
                    filters: self.describe_filters(),
                });
            }
            several => {
                return Err(PlatformError::AmbiguousPackage {
                    version: version.to_owned(),
                    count: several.len(),
                    candidates: several.iter().map(describe).collect::<Vec<_>>().join("; "),
                });
            }
        };
        known.insert(key, file_id.clone());
        Ok(file_id)
    }

    /// The packages of the first page that match exactly; the query's filters are repeated
    /// here, since the platform's spelling of them varies (`manufacturerName` or
    /// `manufactureName`) and an ignored filter must not widen the match.
    async fn look_up(&self, kind: UpgradeKind, version: &str) -> Result<Vec<Value>, PlatformError> {
        let mut query = vec![
            ("fileType", kind.file_type().to_owned()),
            ("version", version.to_owned()),
        ];
        let filters = self.filters();
        query.extend(
            filters
                .iter()
                .map(|(key, value)| (*key, (*value).to_owned())),
        );
        let body = self.page(CATEGORY.to_owned(), query, 0).await?;
        Ok(entries(&body)
            .filter(|package| {
                package["fileType"] == kind.file_type()
                    && package["version"] == version
                    && package["fileId"].as_str().is_some_and(|id| !id.is_empty())
                    && filters.iter().all(|(key, value)| package[*key] == *value)
            })
            .cloned()
            .collect())
    }

    fn filters(&self) -> Vec<(&'static str, &str)> {
        [
            ("deviceType", &self.config.device_type),
            ("manufacturerName", &self.config.manufacturer_name),
            ("model", &self.config.model),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_deref()?)))
        .collect()
    }

    fn describe_filters(&self) -> String {
        let filters = self.filters();
        if filters.is_empty() {
            return String::new();
        }
        let listed: Vec<String> = filters.iter().map(|(k, v)| format!("{k} {v:?}")).collect();
        format!(" for {}", listed.join(", "))
    }
}

/// `fileId (name, deviceType/manufacturerName/model)` of a candidate package.
fn describe(package: &Value) -> String {
    let text = |key: &str| package[key].as_str().unwrap_or("?").to_owned();
    format!(
        "{} ({}, {}/{}/{})",
        text("fileId"),
        text("name"),
        text("deviceType"),
        text("manufacturerName"),
        text("model")
    )
}
