//! The one place that picks a backend from the configuration: `serve` and every CLI command
//! open their store here, so each uses the configured one.

use std::sync::Arc;

use super::{PgStore, SqliteStore, Store, StoreError};
use crate::config::StoreConfig;

/// Who opens the store, which decides whether a missing one is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `serve`: creates the store when missing, and runs its background upkeep.
    Server,
    /// A CLI command: the store must exist, so that a typo in the configuration does not
    /// quietly create an empty one.
    Command,
}

/// Opens the configured store (migrating its schema): PostgreSQL when `store.url` is set,
/// else the SQLite file. A PostgreSQL database is created by its administrator, so a command
/// opens it as `serve` does.
pub fn open(config: &StoreConfig, opener: Opener) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(postgres) = &config.postgres {
        return Ok(Arc::new(PgStore::open(config, postgres)?));
    }
    let store = match opener {
        Opener::Server => SqliteStore::open(config)?,
        Opener::Command => SqliteStore::open_existing(config)?,
    };
    Ok(Arc::new(store))
}
