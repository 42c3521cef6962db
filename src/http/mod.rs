//! The HTTP side: the platform's callback paths, and `/healthz`, `/readyz`, `/metrics`.
//!
//! Handlers only read, check and hand notifications to the store's intake; they never wait on
//! scripts or the network. The app is built by [`run`] from shared handles created outside the
//! worker factory, because actix calls the factory once per worker thread.

mod error;
mod probes;
mod receive;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Intake;

pub use error::Refusal;
use receive::Receiver;

/// Serves HTTP on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (bounded by `accept_timeout`, the longest a request waits) and returns.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    intake: Intake,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + 'static,
) -> std::io::Result<()> {
    let receiver = web::Data::new(Receiver {
        intake: intake.clone(),
        metrics: Arc::clone(&metrics),
        max_body_bytes: config.server.max_body_bytes,
        validation: config.server.validation,
        accept_timeout: config.server.accept_timeout,
        rejected_max_bytes: config.store.rejected_max_bytes,
    });
    let probes = web::Data::new(probes::Probes { intake, metrics });
    let paths = config.server.paths.clone();
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(receiver.clone())
            .app_data(probes.clone());
        for path in &paths {
            for route in [path.clone(), format!("{}/cmd", path.trim_end_matches('/'))] {
                // A resource answers 405 to other methods, where a bare route would say 404.
                app = app.service(web::resource(route).post(receive::receive));
            }
        }
        app.configure(probes::routes)
    })
    .disable_signals()
    .shutdown_timeout(config.server.accept_timeout.as_secs() + 2)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        shutdown.await;
        handle.stop(true).await;
    });
    server.await
}
