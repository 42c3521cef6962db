//! Liveness, readiness and metrics endpoints.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::metrics::Metrics;
use crate::store::Intake;

/// How long `/readyz` waits for the store writer to prove it can write.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Probes {
    pub intake: Intake,
    pub metrics: Arc<Metrics>,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// The process is up and serving HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The store takes writes now: the writer answered and got its write lock.
async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    match tokio::time::timeout(READY_TIMEOUT, probes.intake.probe()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Ok(Err(error)) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "unavailable", "error": error.to_string() })),
        Err(_) => HttpResponse::ServiceUnavailable().json(
            json!({ "status": "unavailable", "error": "the store writer is not keeping up" }),
        ),
    }
}

async fn metrics(probes: web::Data<Probes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(probes.metrics.render())
}
