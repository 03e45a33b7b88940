//! The request log and the per-request context: a request id honoured from `X-Request-Id` or
//! generated, the client IP as far as trusted proxies vouch for it, and one line per request with
//! route, status, latency, outcome code and user id — never the query string, headers, tokens,
//! keys or e-mails. The same root span carries the request's trace.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::{Error, HttpMessage, web};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use super::routes::Route;
use crate::error::OutcomeCode;
use crate::telemetry::metrics::Metrics;

/// What the outermost middleware learns about a request before anything else runs: one
/// extension, so the request's extension map holds one box for it, not three.
#[derive(Debug)]
pub(crate) struct RequestContext {
    /// The request id, ready to be echoed as `X-Request-Id`.
    pub(crate) id: HeaderValue,
    /// The client's address as far as trusted proxies vouch for it.
    pub(crate) client_ip: Option<IpAddr>,
    /// When the request arrived, for the latency in its log line.
    pub(crate) start: Instant,
}

impl RequestContext {
    /// The client address a request's context holds, if any.
    pub(crate) fn client_ip_of(req: &impl HttpMessage) -> Option<IpAddr> {
        req.extensions()
            .get::<RequestContext>()
            .and_then(|c| c.client_ip)
    }
}

/// The root span of every request, and the one log line written when it ends.
pub(crate) struct BrokerRootSpan;

impl RootSpanBuilder for BrokerRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let ext = request.extensions();
        let context = ext.get::<RequestContext>();
        let request_id = context.map_or("", |c| c.id.to_str().unwrap_or_default());
        let client_ip = context.and_then(|c| c.client_ip);
        let route = Route::label_of(request.path());
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %request.method(),
            route,
            client_ip = client_ip.map(tracing::field::display),
            user_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if crate::telemetry::traces::enabled() {
            span.record("otel.name", format!("{} {route}", request.method()));
            span.record("otel.kind", "server");
        }
        if let Some(trace_id) = crate::telemetry::traces::continue_trace(&span, request.headers()) {
            span.record("trace_id", trace_id);
        }
        span
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
                |c| c.0.as_str(),
            );
        let request = response.request();
        let latency = request
            .extensions()
            .get::<RequestContext>()
            .map_or(0.0, |c| c.start.elapsed().as_secs_f64());
        let latency_ms = latency * 1000.0;
        let route = Route::label_of(request.path());
        if let Some(metrics) = request.app_data::<web::Data<Metrics>>() {
            metrics.count_request(route, code);
            metrics.observe_request(route, status.as_u16(), latency);
        }
        if crate::telemetry::traces::enabled() {
            crate::telemetry::traces::set_status_code(&span, status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        let _entered = span.enter();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, latency_ms, "request");
        } else {
            tracing::info!(status = status.as_u16(), code, latency_ms, "request");
        }
    }
}
