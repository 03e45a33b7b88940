//! `GET /healthz`, `GET /readyz`, and `GET /metrics` on the admin listener.

use super::routes::Route;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

use crate::http::middleware::Drain;
use crate::secrets::Secrets;
use crate::session::SessionVerifier;
use crate::telemetry::metrics::Metrics;

/// What `/readyz` looks at.
pub struct Readiness {
    pub drain: Drain,
    pub verifier: Arc<SessionVerifier>,
    pub secrets: Arc<Secrets>,
    pub metrics: Arc<Metrics>,
}

/// The process is alive and serving.
#[utoipa::path(get, path = Route::Healthz.path(), tag = "operations",
    responses((status = 200, description = "The process is alive", content_type = "application/json", body = serde_json::Value)))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(serde_json::json!({"status": "ok"}))
}

/// Ready to serve token requests. Not ready until session keys are loaded, and not ready as soon
/// as draining starts, so load balancers move traffic away first.
#[utoipa::path(get, path = Route::Readyz.path(), tag = "operations",
    responses(
        (status = 200, description = "Ready to serve token requests", content_type = "application/json", body = serde_json::Value),
        (status = 503, description = "Starting (session keys not loaded yet) or draining", content_type = "application/json", body = serde_json::Value)))]
pub(crate) async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let draining = readiness.drain.is_draining();
    let keys_loaded = readiness.verifier.keys_loaded();
    let stale = readiness.secrets.stale();
    let ready = !draining && keys_loaded;
    readiness.metrics.ready.set(i64::from(ready));
    let status = if draining {
        "draining"
    } else if ready {
        "ready"
    } else {
        "starting"
    };
    let body = serde_json::json!({
        "status": status,
        "checks": {
            "session_keys": if keys_loaded { "loaded" } else { "loading" },
            "secrets": if stale.is_empty() { "ok" } else { "stale" },
        },
        "stale_secrets": stale,
    });
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(body)
}

/// The Prometheus exposition, on the admin listener only.
pub(crate) async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.encode())
}
