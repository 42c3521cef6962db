//! `serve`: bind, run until SIGTERM or SIGINT, then shut down gracefully.

use anyhow::Context;

use crate::config::Config;

pub fn run(config: Config) -> anyhow::Result<()> {
    let listener = crate::http::listen(config.server.listen).with_context(|| {
        format!(
            "cannot listen on {}; is another process using it?",
            config.server.listen
        )
    })?;
    actix_web::rt::System::new().block_on(async move {
        crate::serve(config, listener, shutdown_signal())
            .await
            .context("the server stopped")
    })?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT. From then on a second one ends the process at
/// once: a stop that hangs (a destination that takes its whole timeout) must not need SIGKILL,
/// and everything answered 200 is on disk either way.
async fn shutdown_signal() {
    match next_signal().await {
        Some(name) => tracing::info!("{name} received; finishing in-flight requests"),
        None => return,
    }
    let watcher = std::thread::Builder::new()
        .name("second-signal".to_owned())
        .spawn(exit_on_next_signal);
    if let Err(error) = watcher {
        tracing::warn!(%error, "cannot watch for a second signal; stop a hung server with SIGKILL");
    }
}

/// The name of the next SIGTERM or SIGINT, or `None` if neither can be listened for.
async fn next_signal() -> Option<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stop the server with SIGINT");
            return tokio::signal::ctrl_c().await.ok().map(|()| "SIGINT");
        }
    };
    tokio::select! {
        _ = terminate.recv() => Some("SIGTERM"),
        _ = tokio::signal::ctrl_c() => Some("SIGINT"),
    }
}

/// Runs on its own thread, since the server's runtime is busy stopping the stages.
fn exit_on_next_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        return;
    };
    if let Some(name) = runtime.block_on(next_signal()) {
        tracing::warn!("second {name}: exiting now; unfinished work resumes on the next start");
        std::process::exit(1);
    }
}
