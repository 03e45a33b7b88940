//! OpenTelemetry traces: each request's server span ([`ServerSpan`], recorded into the SDK
//! directly) and the `tracing` spans of its work beneath it, exported over OTLP (HTTP with
//! protobuf, or gRPC); a caller's trace context continued (but never its sampling decision), and
//! the current trace carried on to Intellia and the identity provider.
//!
//! Configured by the `OTEL_*` variables of the SDK environment specification, then `[telemetry]`
//! ([`environment`]). Without an endpoint nothing is installed: no layer, no propagation, and a
//! request records no span field of OpenTelemetry's.
//!
//! Export is batched through a bounded queue by the SDK's processor thread, which wakes once per
//! batch, with one export at a time (`OTEL_BSP_*`) run on the Tokio runtime and bounded by
//! `OTEL_BSP_EXPORT_TIMEOUT` and the exporter's timeout: a dead or hanging collector costs
//! dropped spans, a WARN a minute and `broker_trace_export_failures_total`, never request latency
//! or memory.
//!
//! Only spans of this crate are exported, with the fields they declare and the HTTP semantic
//! conventions' attributes (set here): route, method, status, request id, client address, user
//! id, URLs without their query; never a token, key, secret or e-mail.

pub(crate) mod environment;
pub(crate) mod export;
mod propagation;
mod sampler;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use environment::TraceConfig;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
/// The tracer server spans are started with; the first installed pipeline's, as for the
/// subscriber.
static TRACER: OnceLock<opentelemetry_sdk::trace::Tracer> = OnceLock::new();

/// Whether traces are being recorded (an endpoint is configured and the pipeline is installed).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Spans whose target ends so are never exported (health checks and scrapes): the OpenTelemetry
/// layer's filter leaves them out. [`untraced_target`] gives a module's such target.
pub(crate) const UNTRACED_SUFFIX: &str = "::untraced";

/// The calling module's path with [`UNTRACED_SUFFIX`], for a span that must not be exported: a
/// `RUST_LOG` directive for the module still matches it.
macro_rules! untraced_target {
    () => {
        concat!(module_path!(), "::untraced")
    };
}
pub(crate) use untraced_target;

/// The installed pipeline; [`TracePipeline::shutdown`] exports what is still queued.
pub(crate) struct TracePipeline {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for TracePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TracePipeline")
    }
}

impl TracePipeline {
    /// Builds the exporter and provider. Must run inside the Tokio runtime that will carry the
    /// exports.
    pub(crate) fn build(
        config: &TraceConfig,
    ) -> Result<(TracePipeline, opentelemetry_sdk::trace::Tracer), String> {
        let exporter = export::counted(config)?;
        // Sizes and delays come from OTEL_BSP_* (or the SDK's defaults); the exporter applies
        // the export timeout.
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        // The SDK's detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; what is added
        // here fills what they leave open.
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(name) = &config.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource = resource
            .with_attributes(
                config
                    .resource
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler::BrokerSampler::new(config.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("intellia-token-broker");
        let _ = PROPAGATOR.set(propagation::composite(&config.propagators));
        let _ = TRACER.set(tracer.clone());
        ENABLED.store(true, Ordering::Relaxed);
        Ok((TracePipeline { provider }, tracer))
    }

    /// Exports what is queued, waiting at most `limit`; the process exits either way.
    pub(crate) fn shutdown(self, limit: Duration) {
        ENABLED.store(false, Ordering::Relaxed);
        let (done, wait) = std::sync::mpsc::channel();
        let provider = self.provider;
        std::thread::spawn(move || {
            let _ = provider.shutdown();
            let _ = done.send(());
        });
        let _ = wait.recv_timeout(limit);
    }
}

fn propagator() -> &'static TextMapCompositePropagator {
    PROPAGATOR.get_or_init(|| propagation::composite(&[environment::PropagatorName::TraceContext]))
}

/// `http.request.method` as the conventions want it: a known method, else `_OTHER`.
fn known_method(method: &str) -> Option<&'static str> {
    Some(match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => return None,
    })
}

/// A server span's name in the conventions' form: `{method} {route}`, the method alone for a
/// path no route serves, `HTTP` for an unknown method.
fn server_span_name(method: Option<&'static str>, route: Option<&'static str>) -> String {
    match (method, route) {
        (Some(method), Some(route)) => format!("{method} {route}"),
        (Some(method), None) => method.to_owned(),
        (None, _) => "HTTP".to_owned(),
    }
}

/// What the server span of a request records.
#[derive(Debug)]
pub(crate) struct ServerRequest<'a> {
    pub(crate) method: &'a str,
    /// The route's path pattern; `None` for a path no route serves.
    pub(crate) route: Option<&'static str>,
    /// `http` or `https`, as the client sent it (a trusted proxy says so).
    pub(crate) scheme: &'static str,
    pub(crate) client_address: Option<std::net::IpAddr>,
    /// The request id the log line and the `X-Request-Id` answer carry.
    pub(crate) request_id: &'a str,
    pub(crate) headers: &'a actix_web::http::header::HeaderMap,
}

/// A request's server span, recorded straight into the OpenTelemetry SDK rather than through a
/// `tracing` span: the request's `tracing` span is only its log line's, and building the
/// exported span through `tracing-opentelemetry` (every log field formatted into an attribute,
/// every attribute set through the subscriber, the log line copied in as a span event) cost more
/// than the rest of a cache hit. While the request's future is polled the span's context is the
/// current OpenTelemetry context ([`ServerTrace::serve`]), so the `tracing` spans of the request
/// (session, limits, cache, the call to Intellia) are its children.
pub(crate) struct ServerSpan {
    context: opentelemetry::Context,
}

impl std::fmt::Debug for ServerSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpan")
            .field("span_context", self.context.span().span_context())
            .finish()
    }
}

impl ServerSpan {
    /// Starts the span of `request` with the HTTP server attributes of the semantic conventions,
    /// continuing the caller's trace when one of the configured propagators finds it (the
    /// sampler decides whether it is recorded). `None` when traces are off.
    pub(crate) fn start(request: &ServerRequest<'_>) -> Option<ServerSpan> {
        if !enabled() {
            return None;
        }
        let tracer = TRACER.get()?;
        let method = known_method(request.method);
        let parent = propagator().extract_with_context(
            &opentelemetry::Context::new(),
            &ActixHeaders(request.headers),
        );
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new(
            "http.request.method",
            method.unwrap_or("_OTHER"),
        ));
        if let Some(route) = request.route {
            attributes.push(KeyValue::new("http.route", route));
        }
        attributes.push(KeyValue::new("url.scheme", request.scheme));
        if let Some(ip) = request.client_address {
            attributes.push(KeyValue::new("client.address", ip.to_string()));
        }
        attributes.push(KeyValue::new("request_id", request.request_id.to_owned()));
        let builder = tracer
            .span_builder(server_span_name(method, request.route))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes);
        let span = tracer.build_with_context(builder, &parent);
        Some(ServerSpan {
            context: parent.with_span(span),
        })
    }

    /// A handle to serve the request in this span's context.
    pub(crate) fn handle(&self) -> ServerTrace {
        ServerTrace(self.context.clone())
    }

    /// The request's trace id (the caller's, when it sent one), for its log line.
    pub(crate) fn trace_id(&self) -> TraceId {
        self.context.span().span_context().trace_id()
    }

    /// The trace id when the span is recorded and exported: the latency histogram's exemplar.
    pub(crate) fn sampled_trace_id(&self) -> Option<TraceId> {
        let span_context = self.context.span().span_context().clone();
        span_context.is_sampled().then(|| span_context.trace_id())
    }

    /// Ends the span with the response's status code; a 5xx is an error named by the request's
    /// outcome code.
    pub(crate) fn end(self, status: u16, outcome: &'static str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(Status::error(outcome));
        }
        span.end();
    }
}

/// The context of a request's server span, held by whoever serves the request.
#[derive(Debug)]
pub(crate) struct ServerTrace(opentelemetry::Context);

impl ServerTrace {
    /// Calls `call` and polls the future it returns with the server span's context current, so
    /// the spans of the request's work are its children.
    pub(crate) fn serve<F: std::future::Future>(&self, call: impl FnOnce() -> F) -> WithContext<F> {
        let future = {
            let _current = self.0.clone().attach();
            call()
        };
        future.with_context(self.0.clone())
    }

    /// Ends the span of a request that got no response (a middleware failed).
    pub(crate) fn unanswered(&self) {
        let span = self.0.span();
        span.set_status(Status::error("internal_error"));
        span.end();
    }
}

/// Names the user on the current request's server span (the log line's `user_id`).
pub(crate) fn record_user(user_id: &str) {
    if enabled() {
        opentelemetry::Context::map_current(|cx| {
            cx.span()
                .set_attribute(KeyValue::new("user_id", user_id.to_owned()));
        });
    }
}

/// Sets `http.response.status_code` on a client span (the log line has its own `status`).
pub(crate) fn set_status_code(span: &tracing::Span, status: u16) {
    if enabled() {
        span.set_attribute("http.response.status_code", i64::from(status));
    }
}

/// Marks a client span as a resend (`http.request.resend_count`, from the second attempt on).
pub(crate) fn set_resend_count(span: &tracing::Span, resends: u32) {
    if enabled() && resends > 0 {
        span.set_attribute("http.request.resend_count", i64::from(resends));
    }
}

struct ActixHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(actix_web::http::header::HeaderName::as_str)
            .collect()
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is valid: the
/// log line's `trace_id` when traces are off, so logs still join the caller's trace.
pub(crate) fn traceparent_trace_id(value: &str) -> Option<&str> {
    let mut parts = value.trim().split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some(trace)
}

struct ReqwestHeaders<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for ReqwestHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// `url.full` of the conventions: no credentials, query or fragment.
fn full_url(url: &reqwest::Url) -> String {
    environment::redacted(url)
}

/// Carries the current span's trace context (the configured propagators' headers) on an
/// outgoing request, so Intellia's and the identity provider's traces join the caller's, and
/// records the HTTP client attributes of the semantic conventions on the current span (the
/// client span around the call). Nothing happens when traces are off. Every outgoing call of
/// the broker is built through this.
pub(crate) fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if !enabled() {
        return request;
    }
    let span = tracing::Span::current();
    if let Some(Ok(built)) = request.try_clone().map(reqwest::RequestBuilder::build) {
        let url = built.url();
        span.set_attribute(
            "http.request.method",
            known_method(built.method().as_str()).unwrap_or("_OTHER"),
        );
        if let Some(host) = url.host_str() {
            span.set_attribute("server.address", host.to_owned());
        }
        if let Some(port) = url.port_or_known_default() {
            span.set_attribute("server.port", i64::from(port));
        }
        span.set_attribute("url.full", full_url(url));
    }
    let mut context = span.context();
    if !context.span().span_context().is_valid() {
        // Called outside a span of ours: the request's server span, if any.
        context = opentelemetry::Context::current();
        if !context.span().span_context().is_valid() {
            return request;
        }
    }
    let mut headers = reqwest::header::HeaderMap::new();
    propagator().inject_context(&context, &mut ReqwestHeaders(&mut headers));
    request.headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            traceparent_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(traceparent_trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn span_names_and_methods_follow_the_conventions() {
        assert_eq!(
            server_span_name(known_method("POST"), Some("/v1/token")),
            "POST /v1/token"
        );
        assert_eq!(server_span_name(known_method("GET"), None), "GET");
        assert_eq!(
            server_span_name(known_method("BREW"), Some("/v1/token")),
            "HTTP"
        );
        assert_eq!(known_method("get"), None);
    }

    #[test]
    fn full_urls_lose_credentials_and_query() {
        let url =
            reqwest::Url::parse("https://user:pw@idp.example.com:8443/keys?token=x#f").unwrap();
        assert_eq!(full_url(&url), "https://idp.example.com:8443/keys");
    }
}
