//! Liveness, readiness and metrics endpoints.
//!
//! `/healthz` and `/readyz` are open to every address without a token: supervisors and load
//! balancers probe them, and they tell nothing but up and ready. `/metrics` goes through the
//! access check like the receiver, unless it has a listener of its own.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::metrics::Metrics;
use crate::store::Intake;

/// How long `/readyz` waits for the store writer to prove it can write.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Probes {
    pub intake: Intake,
}

/// The probes that skip the access check.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

pub fn metrics_route(config: &mut web::ServiceConfig) {
    config.route("/metrics", web::get().to(metrics));
}

/// The process is up and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The store takes writes now: the writer answered and got its write lock. Anyone may ask,
/// so the answer names no path or error: those go to the log.
async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    let unavailable = |reason: &str| {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "unavailable", "error": reason }))
    };
    match tokio::time::timeout(READY_TIMEOUT, probes.intake.probe()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready: the store cannot write");
            unavailable("the store cannot write; see the server log")
        }
        Err(_) => unavailable("the store writer is not keeping up"),
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}
