//! notirouter: the callback endpoint for a Huawei IoT platform's notifications.
//!
//! The flow is a transactional outbox, one module per stage: [`http`] receives and validates;
//! [`store`] keeps every notification durably (group commit) before the 200 goes out;
//! [`script`] runs the operators' rhai plugins on stored events and commits their actions with
//! the event's outcome; [`deliver`] sends the actions, through [`platform`] for upgrade
//! retries. [`config`], [`notification`], [`model`] and [`action`] hold what the stages share;
//! [`cli`] is the command line.

pub mod action;
mod background;
pub mod campaign;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod destination;
pub mod http;
pub mod metrics;
pub mod model;
pub mod notification;
pub mod platform;
pub mod script;
pub mod store;
pub mod ui;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use config::Config;
use deliver::Deliverer;
use metrics::Metrics;
use script::reload::Reloader;
use script::worker::Workers;
use script::{Limits, PluginSet, Scripts, Settings};
use store::{Intake, Signals, Store, StoreError};

fn list_errors(errors: &[script::ScriptError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Notifications that may wait for the store writer at once; beyond it requests wait to enqueue
/// (bounded by `accept_timeout`), which keeps memory bounded when the disk stalls.
const INTAKE_CAPACITY: usize = 2048;
/// How often retention pruning runs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("scripts do not compile; run `notirouter check` to see every error:\n{}", list_errors(.0))]
    Scripts(Vec<script::ScriptError>),
    #[error(
        "cannot watch scripts.dir {0} for changes ({1}); fix the folder or set scripts.hot_reload = false"
    )]
    Watch(String, notify::Error),
    #[error(transparent)]
    Delivery(#[from] deliver::DeliveryError),
    #[error(transparent)]
    Endpoints(#[from] http::EndpointError),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Runs the server on the configured store until `shutdown` completes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServeError> {
    let store = store::open(&config.store, store::Opener::Server)?;
    serve_with_store(config, store, listener, shutdown).await
}

/// As [`serve`], on a store of the caller's choosing (another backend, or a test double).
///
/// Stages start downstream first and stop upstream first: the writer outlives the script
/// workers, which outlive the receiver, so that nothing accepted is left half-done.
pub async fn serve_with_store(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), ServeError> {
    let endpoints = http::Endpoints::prepare(&config.server, listener)?;
    // One count of the campaigns, for the dashboard and the scripts' `campaign(n)`.
    let counter = Arc::new(campaign::Counter::default());
    let dashboard = match config.ui.enabled {
        true => Some(http::DashboardMount::prepare(
            ui::Dashboard::new(Arc::clone(&store), Arc::clone(&counter), &config),
            config.ui.listen,
        )?),
        false => None,
    };
    let metrics = Arc::new(Metrics::new());
    let scripts = load_scripts(&config, &metrics)?;
    let signals = Signals::default();
    let (intake, writer) = Intake::start(
        Arc::clone(&store),
        metrics.intake.clone(),
        INTAKE_CAPACITY,
        signals.clone(),
    )
    .map_err(ServeError::Thread)?;
    store.watch_others(&signals);
    // Before anything claims: what a stopped server of this store left claimed goes at once.
    if let Err(error) = store.release_stale_claims() {
        tracing::warn!(%error, "cannot release a stopped server's claims; they end with their lease");
    }
    let deliverer = Deliverer::start(
        &config,
        Arc::clone(&store),
        intake.clone(),
        Arc::clone(&metrics),
        Arc::clone(&signals.actions),
    )?;
    let workers = Workers::start(
        config.scripts.workers,
        script::Committed::of_store(Arc::clone(&store), counter),
        store,
        intake.clone(),
        scripts.clone(),
        Arc::clone(&metrics),
        signals.events,
    )
    .map_err(ServeError::Thread)?;
    let reloader = match config.scripts.hot_reload {
        true => Some(watch_scripts(&config, scripts, &metrics)?),
        false => None,
    };
    let pruner = actix_web::rt::spawn(prune_periodically(intake.clone(), config.store.retention));
    if let Some(address) = endpoints.main_addr() {
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(addr = %address, scheme, "listening");
    }
    let served = http::run(&config, endpoints, intake, metrics, dashboard, shutdown).await;
    pruner.abort();
    let _ = pruner.await;
    if let Some(reloader) = reloader {
        reloader.stop();
    }
    workers.stop();
    deliverer.stop();
    // Every intake handle is gone now, so the writer drains what is queued and stops.
    writer.finish();
    served.map_err(ServeError::Http)
}

/// Loads the plugins; a plugin that does not compile stops the start, since running without
/// it would drop its alerts silently (`notirouter check` shows the errors).
fn load_scripts(config: &Config, metrics: &Metrics) -> Result<Scripts, ServeError> {
    let settings = Arc::new(Settings::from_config(config));
    let (set, errors) = PluginSet::load(
        &config.scripts.dir,
        &Limits::from_config(config),
        settings,
        None,
    );
    if !errors.is_empty() {
        return Err(ServeError::Scripts(errors));
    }
    metrics.script_reload(true, set.len());
    tracing::info!(plugins = set.len(), dir = %config.scripts.dir.display(), "scripts loaded");
    Ok(Scripts::new(set))
}

fn watch_scripts(
    config: &Config,
    scripts: Scripts,
    metrics: &Arc<Metrics>,
) -> Result<Reloader, ServeError> {
    let settings = Arc::new(Settings::from_config(config));
    let limits = Limits::from_config(config);
    Reloader::watch(
        &config.scripts.dir,
        limits,
        settings,
        scripts,
        Arc::clone(metrics),
    )
    .map_err(|error| ServeError::Watch(config.scripts.dir.display().to_string(), error))
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
