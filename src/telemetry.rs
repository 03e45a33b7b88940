//! Logs and the per-request context: JSON lines through `tracing` (or a human format), a request
//! id honoured from `X-Request-Id` or generated, the client IP as far as trusted proxies vouch
//! for it, and one line per request with route, status, latency, outcome code and user id — never
//! the query string, headers, tokens, keys or e-mails.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::app::AppState;
use crate::error::OutcomeCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber. `RUST_LOG` sets the level (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init(),
    };
    // Already installed (tests, or `dev` after an earlier init): keep the first.
    let _ = result;
}

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

#[derive(Debug, Clone, Copy)]
struct RequestStart(Instant);

/// A request id we are willing to echo and log: short, and from a safe alphabet.
fn acceptable_request_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then_some(text)
}

/// Outermost middleware: stamps the request id, start time and client IP before the root span
/// is built, and echoes the id on the response.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(acceptable_request_id)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let client_ip = req.app_data::<web::Data<AppState>>().and_then(|state| {
        crate::client_ip::client_ip(
            req.peer_addr(),
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
            &state.settings.server.trusted_proxies,
        )
    });
    {
        let mut ext = req.extensions_mut();
        ext.insert(RequestStart(Instant::now()));
        ext.insert(RequestId(id.clone()));
        if let Some(ip) = client_ip {
            ext.insert(ClientIp(ip));
        }
    }
    let draining = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|state| state.is_draining());
    let mut res = next.call(req).await?;
    if draining {
        // Clients should not reuse this connection: idle keep-alive connections would otherwise
        // hold the graceful stop open until its timeout.
        res.response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    Ok(res)
}

/// Route labels are a closed set, so neither logs nor metrics ever carry a raw path.
pub fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/token" => "/v1/token",
        "/v1/backend/token" => "/v1/backend/token",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/v1/client.js" => "/v1/client.js",
        "/v1/client.global.js" => "/v1/client.global.js",
        "/openapi.json" => "/openapi.json",
        "/metrics" => "/metrics",
        p if p.starts_with("/dev") => "/dev",
        _ => "other",
    }
}

/// The root span of every request, and the one log line written when it ends.
pub struct BrokerRootSpan;

impl RootSpanBuilder for BrokerRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let ext = request.extensions();
        let request_id = ext.get::<RequestId>().map_or("", |r| r.0.as_str());
        let client_ip = ext.get::<ClientIp>().map(|c| c.0);
        tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %request.method(),
            route = route_label(request.path()),
            client_ip = client_ip.map(tracing::field::display),
            user_id = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let Ok(response) = outcome else {
            let _entered = span.enter();
            tracing::error!(
                code = "internal_error",
                "request failed before a response was built"
            );
            return;
        };
        let status = response.status();
        let code = response
            .response()
            .extensions()
            .get::<OutcomeCode>()
            .map_or_else(
                || {
                    if status.is_success() || status.is_redirection() {
                        "ok"
                    } else {
                        "error"
                    }
                },
                |c| c.0,
            );
        let request = response.request();
        let latency_ms = request
            .extensions()
            .get::<RequestStart>()
            .map_or(0.0, |s| s.0.elapsed().as_secs_f64() * 1000.0);
        let route = route_label(request.path());
        if let Some(state) = request.app_data::<web::Data<AppState>>() {
            state.metrics.count_request(route, code);
        }
        let _entered = span.enter();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, latency_ms, "request");
        } else {
            tracing::info!(status = status.as_u16(), code, latency_ms, "request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_validated() {
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("abc-123_x.y:z")),
            Some("abc-123_x.y:z")
        );
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("has space")),
            None
        );
        assert_eq!(acceptable_request_id(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
    }

    #[test]
    fn raw_paths_never_become_labels() {
        assert_eq!(route_label("/v1/token"), "/v1/token");
        assert_eq!(route_label("/v1/token/eyJhbGciOi"), "other");
        assert_eq!(route_label("/dev/session"), "/dev");
    }
}
