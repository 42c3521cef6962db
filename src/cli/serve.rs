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

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stop the server with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; finishing in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; finishing in-flight requests"),
    }
}
