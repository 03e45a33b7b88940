//! The request log and the per-request context: a request id honoured from `X-Request-Id` or
//! generated, the client IP as far as trusted proxies vouch for it, and one line per request with
//! route, status, latency, outcome code and user id — never the query string, headers, tokens,
//! keys or e-mails. The line names the request's trace; the exported server span is
//! [`ServerSpan`]'s.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, HttpMessage, web};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;

use super::routes::Route;
use crate::error::OutcomeCode;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::ServerSpan;

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
    /// The exported server span, when traces are on and the route is traced.
    pub(crate) server: Option<ServerSpan>,
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

impl RootSpanBuilder for BrokerRootSpan {
    // The log line's span. Exported traces have their own server span (`ServerSpan`, started by
    // the request-context middleware), so this one is never exported.
    fn on_request_start(request: &ServiceRequest) -> Span {
        let ext = request.extensions();
        let context = ext.get::<RequestContext>();
        let request_id = context.map_or("", |c| c.id.to_str().unwrap_or_default());
        let client_ip = context.and_then(|c| c.client_ip);
        let route = context.map_or_else(|| Route::of_path(request.path()), |c| c.route);
        let span = tracing::info_span!(
            target: crate::telemetry::traces::untraced_target!(),
            "request",
            request_id = %request_id,
            method = %request.method(),
            route = Route::label(route),
            client_ip = client_ip.map(tracing::field::display),
            user_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if span.is_disabled() {
            return span;
        }
        match context.and_then(|c| c.server.as_ref()) {
            Some(server) => {
                span.record("trace_id", tracing::field::display(server.trace_id()));
            }
            // No trace of ours: the log line still names the caller's.
            None => {
                if let Some(trace_id) = request
                    .headers()
                    .get(TRACEPARENT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::telemetry::traces::traceparent_trace_id)
                {
                    span.record("trace_id", trace_id);
                }
            }
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
        let code = OutcomeCode::of(response.response()).unwrap_or(
            if status.is_success() || status.is_redirection() {
                "ok"
            } else {
                "error"
            },
        );
        let request = response.request();
        let (latency, route, exemplar) = request.extensions().get::<RequestContext>().map_or_else(
            || (0.0, Route::of_path(request.path()), None),
            |c| {
                (
                    c.start.elapsed().as_secs_f64(),
                    c.route,
                    c.server.as_ref().and_then(ServerSpan::sampled_trace_id),
                )
            },
        );
        let label = Route::label(route);
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
