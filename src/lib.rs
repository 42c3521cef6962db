//! notirouter: the callback endpoint for a Huawei IoT platform's notifications.
//!
//! The flow is a transactional outbox, one module per stage:
//! [`http`] receives and validates, [`store`] keeps every notification durably (group commit)
//! before the 200 goes out. [`config`] and [`notification`] hold the rules both stages share;
//! [`cli`] is the command line.

pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod notification;
pub mod store;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use config::Config;
use metrics::Metrics;
use store::{Intake, SqliteStore, Store, StoreError};

/// Notifications that may wait for the store writer at once; beyond it requests wait to enqueue
/// (bounded by `accept_timeout`), which keeps memory bounded when the disk stalls.
const INTAKE_CAPACITY: usize = 2048;
/// How often retention pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the store writer: {0}")]
    Writer(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Runs the server on the configured store until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServeError> {
    let store = SqliteStore::open(&config.store)?;
    serve_with_store(config, Arc::new(store), listener, shutdown).await
}

/// As [`serve`], on a store of the caller's choosing (another backend, or a test double).
pub async fn serve_with_store(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::new());
    let (intake, writer) = Intake::start(store, metrics.intake.clone(), INTAKE_CAPACITY)
        .map_err(ServeError::Writer)?;
    let pruner = actix_web::rt::spawn(prune_periodically(intake.clone(), config.store.retention));
    if let Ok(address) = listener.local_addr() {
        tracing::info!(addr = %address, "listening");
    }
    let served = http::run(&config, listener, intake, metrics, shutdown).await;
    pruner.abort();
    let _ = pruner.await;
    // Every intake handle is gone now, so the writer drains what is queued and stops.
    writer.finish();
    served.map_err(ServeError::Http)
}

async fn prune_periodically(intake: Intake, retention: Duration) {
    let mut ticks = tokio::time::interval(PRUNE_EVERY);
    loop {
        ticks.tick().await;
        match intake.prune(model::Millis::now().minus(retention)).await {
            Ok(pruned) if pruned.events + pruned.rejected > 0 => {
                tracing::info!(events = pruned.events, rejected = pruned.rejected, "pruned");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning failed; retrying at the next interval"),
        }
    }
}
