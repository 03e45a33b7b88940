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

/// What readiness looks like right now.
struct ReadyState {
    ready: bool,
    status: &'static str,
}

impl Readiness {
    fn state(&self) -> ReadyState {
        let draining = self.drain.is_draining();
        let ready = !draining && self.verifier.keys_loaded();
        self.metrics.ready.set(i64::from(ready));
        let status = if draining {
            "draining"
        } else if ready {
            "ready"
        } else {
            "starting"
        };
        ReadyState { ready, status }
    }
}

fn ready_response(ready: bool, body: serde_json::Value) -> HttpResponse {
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(body)
}

/// Ready to serve token requests. Not ready until session keys are loaded, and not ready as soon
/// as draining starts, so load balancers move traffic away first. The public listener says no
/// more than that: which secret is stale or which issuer has no keys is for operators, on the
/// admin listener's `/readyz` and in the log, not for anyone who can reach the public port.
#[utoipa::path(get, path = Route::Readyz.path(), tag = "operations",
    responses(
        (status = 200, description = "Ready to serve token requests: `{\"status\":\"ready\"}`", content_type = "application/json", body = serde_json::Value),
        (status = 503, description = "Starting (session keys not loaded yet) or draining: `{\"status\":\"starting\"}` or `{\"status\":\"draining\"}`; the details are on the admin listener's /readyz", content_type = "application/json", body = serde_json::Value)))]
pub(crate) async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let state = readiness.state();
    ready_response(state.ready, serde_json::json!({"status": state.status}))
}

/// `/readyz` on the admin listener: the same answer, with what operators need to act on it.
pub(crate) async fn readyz_detail(readiness: web::Data<Readiness>) -> HttpResponse {
    let state = readiness.state();
    let stale = readiness.secrets.stale();
    let loading = readiness.verifier.issuers_without_keys();
    let body = serde_json::json!({
        "status": state.status,
        "checks": {
            "session_keys": if loading.is_empty() { "loaded" } else { "loading" },
            "secrets": if stale.is_empty() { "ok" } else { "stale" },
        },
        "stale_secrets": stale,
        "issuers_without_keys": loading,
    });
    ready_response(state.ready, body)
}

/// The Prometheus exposition, on the admin listener only.
pub(crate) async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.encode())
}
