//! The request log and the per-request context: a request id honoured from `X-Request-Id` or
//! generated, the client IP as far as trusted proxies vouch for it, and one line per request with
//! route, status, latency, outcome code and user id — never the query string, headers, tokens,
//! keys or e-mails. The same root span carries the request's trace.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, HttpMessage, web};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use super::middleware::ConnectionPolicy;
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
    /// The route its path names (`None`: no route), found once for the span, the log line and
    /// the metrics.
    pub(crate) route: Option<Route>,
}

impl RequestContext {
    /// The client address a request's context holds, if any.
    pub(crate) fn client_ip_of(req: &impl HttpMessage) -> Option<IpAddr> {
        req.extensions()
            .get::<RequestContext>()
            .and_then(|c| c.client_ip)
    }
}

// A constant name: a lookup by `&str` builds a `HeaderName` (an allocation) on every request.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The root span of every request, and the one log line written when it ends.
pub(crate) struct BrokerRootSpan;

/// The root span, under `target`: the same fields for traced and untraced routes.
macro_rules! request_span {
    ($target:expr, $request_id:expr, $method:expr, $route:expr, $client_ip:expr) => {
        tracing::info_span!(
            target: $target,
            "request",
            request_id = %$request_id,
            method = %$method,
            route = $route,
            client_ip = $client_ip.map(tracing::field::display),
            user_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    };
}

/// Whether a request on this route has a trace: health checks and scrapes do not.
fn traced(route: Option<Route>) -> bool {
    crate::telemetry::traces::enabled() && route.is_none_or(Route::is_traced)
}

impl RootSpanBuilder for BrokerRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let ext = request.extensions();
        let context = ext.get::<RequestContext>();
        let request_id = context.map_or("", |c| c.id.to_str().unwrap_or_default());
        let client_ip = context.and_then(|c| c.client_ip);
        let route = context.map_or_else(|| Route::of_path(request.path()), |c| c.route);
        let label = Route::label(route);
        if !traced(route) {
            let span = request_span!(
                crate::telemetry::traces::untraced_target!(),
                request_id,
                request.method(),
                label,
                client_ip
            );
            // No trace of ours: the log line still names the caller's.
            if let Some(trace_id) = request
                .headers()
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::telemetry::traces::traceparent_trace_id)
            {
                span.record("trace_id", trace_id);
            }
            return span;
        }
        let span = request_span!(
            module_path!(),
            request_id,
            request.method(),
            label,
            client_ip
        );
        let scheme = request
            .app_data::<web::Data<ConnectionPolicy>>()
            .map_or("http", |p| p.forwarded_scheme(request));
        let trace_id = crate::telemetry::traces::start_server_span(
            &span,
            &crate::telemetry::traces::ServerRequest {
                method: request.method().as_str(),
                route: route.map(Route::path),
                scheme,
                client_address: client_ip,
                headers: request.headers(),
            },
        );
        span.record("trace_id", tracing::field::display(trace_id));
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
        let (latency, route) = request.extensions().get::<RequestContext>().map_or_else(
            || (0.0, Route::of_path(request.path())),
            |c| (c.start.elapsed().as_secs_f64(), c.route),
        );
        let label = Route::label(route);
        let exemplar = if traced(route) {
            crate::telemetry::traces::end_server_span(&span, status.as_u16())
        } else {
            None
        };
        if let Some(metrics) = request.app_data::<web::Data<Metrics>>() {
            metrics.count_request(label, code);
            metrics.observe_request(label, status.as_u16(), latency, exemplar);
        }
        // Microseconds are the resolution that tells a cache hit from a miss; more digits are
        // noise of the float.
        let latency_ms = (latency * 1_000_000.0).round() / 1000.0;
        let _entered = span.enter();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, latency_ms, "request");
        } else {
            tracing::info!(status = status.as_u16(), code, latency_ms, "request");
        }
    }
}
