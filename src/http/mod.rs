//! The HTTP side: the platform's callback paths, and `/healthz`, `/readyz`, `/metrics`.
//!
//! Handlers only read, check and hand notifications to the store's intake; they never wait on
//! scripts or the network. The app is built by [`run`] from shared handles created outside the
//! worker factory, because actix calls the factory once per worker thread.
//!
//! Every connection is bounded (README, "Limits"): a request head must arrive within
//! `header_timeout`, idle keep-alive connections close after `keep_alive`, and at most
//! `max_connections` are served at once. Only HTTP/1.1 is spoken, so one connection carries
//! one request at a time and the memory bound is per connection.

mod access;
mod error;
mod probes;
mod receive;
mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::store::Intake;
use crate::ui::Dashboard;

pub use access::client_address;
pub use error::Refusal;
use receive::Receiver;
pub use tls::{TlsError, check_files as check_tls_files};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "cannot listen on server.metrics_listen {addr} ({source}); is another process using it?"
    )]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on ui.listen {addr} ({source}); is another process using it?")]
    UiListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The dashboard, served on the receiver's listener (behind its access check) or, with a
/// listener of its own (`ui.listen`), on that alone.
pub struct DashboardMount {
    pub dashboard: web::Data<Dashboard>,
    pub listener: Option<TcpListener>,
}

impl DashboardMount {
    pub fn prepare(
        dashboard: Dashboard,
        own_addr: Option<SocketAddr>,
    ) -> Result<DashboardMount, EndpointError> {
        let listener = own_addr
            .map(|addr| listen(addr).map_err(|source| EndpointError::UiListen { addr, source }))
            .transpose()?;
        let dashboard = web::Data::new(dashboard);
        dashboard.clone().into_inner().count_ahead();
        Ok(DashboardMount {
            dashboard,
            listener,
        })
    }
}

/// Connections the kernel holds for the server beyond those it serves, as actix-web's own
/// `bind` asks: std's `TcpListener::bind` asks for 128, and attempts past that are dropped.
const LISTEN_BACKLOG: i32 = 2048;

/// Listens on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does: a restarted server can bind at once, despite connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// What the server listens with, prepared before any stage starts so that a bad certificate
/// or a taken port stops the start at once.
pub struct Endpoints {
    main: TcpListener,
    metrics: Option<TcpListener>,
    tls: Option<tls::Tls>,
}

impl Endpoints {
    pub fn prepare(config: &ServerConfig, main: TcpListener) -> Result<Endpoints, EndpointError> {
        let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
        let metrics = config
            .metrics_listen
            .map(|addr| {
                listen(addr).map_err(|source| EndpointError::MetricsListen { addr, source })
            })
            .transpose()?;
        Ok(Endpoints { main, metrics, tls })
    }

    pub fn main_addr(&self) -> Option<SocketAddr> {
        self.main.local_addr().ok()
    }
}

/// Serves HTTP until `shutdown` completes, then stops accepting, lets in-flight requests
/// finish (bounded by `accept_timeout`, the longest a request waits) and returns.
pub async fn run(
    config: &Config,
    endpoints: Endpoints,
    intake: Intake,
    metrics: Arc<Metrics>,
    dashboard: Option<DashboardMount>,
    shutdown: impl Future<Output = ()> + 'static,
) -> std::io::Result<()> {
    let Endpoints {
        main,
        metrics: metrics_listener,
        tls,
    } = endpoints;
    let tls_config = tls.as_ref().map(|tls| tls.config.clone());
    let metrics_here = metrics_listener.is_none();
    let (dashboard_here, dashboard_server) = match dashboard {
        Some(DashboardMount {
            dashboard,
            listener: Some(listener),
        }) => (None, Some(dashboard_server(listener, dashboard)?)),
        Some(mount) => (Some(mount.dashboard), None),
        None => (None, None),
    };
    let main = receiver_server(
        config,
        main,
        tls_config,
        intake,
        &metrics,
        metrics_here,
        dashboard_here,
    )?;
    let mut handles = vec![main.handle()];
    let dashboard_server = dashboard_server.map(|server| {
        handles.push(server.handle());
        actix_web::rt::spawn(server)
    });
    let metrics_server = match metrics_listener {
        Some(listener) => {
            let server = metrics_server(listener, metrics)?;
            handles.push(server.handle());
            Some(actix_web::rt::spawn(server))
        }
        None => None,
    };
    actix_web::rt::spawn(async move {
        shutdown.await;
        for handle in handles {
            handle.stop(true).await;
        }
    });
    let served = main.await;
    for server in [metrics_server, dashboard_server].into_iter().flatten() {
        // They stop on the same signal; a failure there is not the receiver's.
        let _ = server.await;
    }
    // The certificate reloader lives as long as the server it feeds.
    drop(tls);
    served
}

/// The receiver: callback paths and probes, with `/metrics` unless it has its own listener.
fn receiver_server(
    config: &Config,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    intake: Intake,
    metrics: &Arc<Metrics>,
    serve_metrics: bool,
    dashboard: Option<web::Data<Dashboard>>,
) -> std::io::Result<actix_web::dev::Server> {
    let receiver = web::Data::new(Receiver {
        intake: intake.clone(),
        metrics: Arc::clone(metrics),
        max_body_bytes: config.server.max_body_bytes,
        validation: config.server.validation,
        accept_timeout: config.server.accept_timeout,
        rejected_max_bytes: config.store.rejected_max_bytes,
    });
    let probes = web::Data::new(probes::Probes { intake });
    let access = web::Data::new(access::Access::new(
        &config.server.access,
        Arc::clone(metrics),
    ));
    let metrics = web::Data::from(Arc::clone(metrics));
    let paths = config.server.paths.clone();
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .wrap(from_fn(access::guard))
            .app_data(receiver.clone())
            .app_data(probes.clone())
            .app_data(access.clone())
            .app_data(metrics.clone());
        for path in &paths {
            for route in [path.clone(), format!("{}/cmd", path.trim_end_matches('/'))] {
                // A resource answers 405 to other methods, where a bare route would say 404.
                app = app.service(web::resource(route).post(receive::receive));
            }
        }
        if serve_metrics {
            app = app.configure(probes::metrics_route);
        }
        if let Some(dashboard) = &dashboard {
            app = app.app_data(dashboard.clone()).configure(crate::ui::routes);
        }
        app.configure(probes::routes)
    });
    let limits = &config.server.limits;
    // actix counts connections per worker, so the total is split evenly across the workers.
    let workers = worker_count();
    let server = server
        .workers(workers)
        .max_connections(limits.max_connections.div_ceil(workers))
        .client_request_timeout(limits.header_timeout)
        .keep_alive(limits.keep_alive)
        .disable_signals()
        .shutdown_timeout(config.server.accept_timeout.as_secs() + 2);
    let server = match tls {
        Some(tls) => server
            .tls_handshake_timeout(config.server.limits.header_timeout)
            .listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// `/metrics` alone, on its own address: one worker is plenty for a scraper.
fn metrics_server(
    listener: TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<actix_web::dev::Server> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(metrics_addr = %address, "serving /metrics");
    }
    let metrics = web::Data::from(metrics);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .configure(probes::metrics_route)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?;
    Ok(server.run())
}

/// The dashboard alone, on `ui.listen`: two workers, so that a slow page does not hold up
/// the API.
fn dashboard_server(
    listener: TcpListener,
    dashboard: web::Data<Dashboard>,
) -> std::io::Result<actix_web::dev::Server> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(ui_addr = %address, "serving the dashboard");
    }
    let server = HttpServer::new(move || {
        App::new()
            .app_data(dashboard.clone())
            .configure(crate::ui::routes)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?;
    Ok(server.run())
}

/// The receiver's worker threads: one per core, as actix would choose.
fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
