//! Logs and the per-request context: JSON lines through `tracing` (or a human format), a request
//! id honoured from `X-Request-Id` or generated, the client IP as far as trusted proxies vouch
//! for it, and one line per request with route, status, latency, outcome code and user id — never
//! the query string, headers, tokens, keys or e-mails.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage, web};
use tracing::{Level, Span};
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::TelemetrySettings;
use crate::error::OutcomeCode;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Where log lines go: stdout for the server, stderr for commands whose stdout is their answer
/// (`doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// The installed logging and tracing; [`Telemetry::shutdown`] exports the spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<crate::traces::TracePipeline>,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Some(pipeline) = self.traces {
            pipeline.shutdown(std::time::Duration::from_secs(3));
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` sets the log level (default `info`, or `warn` for
/// [`LogTarget::Stderr`]). With `traces` resolving to an endpoint (DESIGN §9.6), this crate's
/// spans are also exported through OpenTelemetry, whatever the log level. Must run inside the
/// Tokio runtime.
pub fn init(format: LogFormat, target: LogTarget, traces: Option<&TelemetrySettings>) -> Telemetry {
    let default_level = match target {
        LogTarget::Stdout => "info",
        LogTarget::Stderr => "warn",
    };
    // For people, actix's own start-up lines ("starting N workers", one per server) are noise
    // around the lines that matter; RUST_LOG still shows them.
    let default_filter = match format {
        LogFormat::Json => default_level.to_owned(),
        LogFormat::Pretty => format!("{default_level},actix_server=warn"),
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = match target {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    let writer = match target {
        LogTarget::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTarget::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::with_capacity(2);
    layers.push(match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_timer(tracing_subscriber::fmt::time::Uptime::default())
            .with_ansi(ansi)
            .with_target(false)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    });
    let mut warnings = Vec::new();
    let mut telemetry = Telemetry::default();
    if let Some(settings) = traces {
        let (config, problems) = crate::traces::resolve(settings, |name| std::env::var(name).ok());
        warnings = problems;
        if let Some(config) = config {
            match crate::traces::TracePipeline::build(&config) {
                Ok((pipeline, tracer)) => {
                    let spans = Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::INFO);
                    layers.push(
                        tracing_opentelemetry::layer()
                            .with_tracer(tracer)
                            .with_location(false)
                            .with_threads(false)
                            .with_tracked_inactivity(false)
                            .with_filter(spans)
                            .boxed(),
                    );
                    telemetry.traces = Some(pipeline);
                }
                Err(problem) => warnings.push(format!("{problem}; traces are off")),
            }
        }
    }
    // Already installed (tests, or `dev` after an earlier init): keep the first.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    telemetry
}

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// When the request arrived, for the latency in its log line.
#[derive(Debug, Clone, Copy)]
pub struct RequestStart(pub Instant);

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
        let route = route_label(request.path());
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
        if crate::traces::enabled() {
            span.record("otel.name", format!("{} {route}", request.method()));
            span.record("otel.kind", "server");
        }
        if let Some(trace_id) = crate::traces::continue_trace(&span, request.headers()) {
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
                |c| c.0,
            );
        let request = response.request();
        let latency = request
            .extensions()
            .get::<RequestStart>()
            .map_or(0.0, |s| s.0.elapsed().as_secs_f64());
        let latency_ms = latency * 1000.0;
        let route = route_label(request.path());
        if let Some(metrics) = request.app_data::<web::Data<Metrics>>() {
            metrics.count_request(route, code);
            metrics.observe_request(route, status.as_u16(), latency);
        }
        if crate::traces::enabled() {
            crate::traces::set_status_code(&span, status.as_u16());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_paths_never_become_labels() {
        assert_eq!(route_label("/v1/token"), "/v1/token");
        assert_eq!(route_label("/v1/token/eyJhbGciOi"), "other");
        assert_eq!(route_label("/dev/session"), "/dev");
    }
}
