//! OpenTelemetry traces: the `tracing` spans exported over OTLP/HTTP (protobuf), a
//! caller's W3C `traceparent` continued, and the current trace carried on to Intellia and the
//! identity provider.
//!
//! Configured by the standard variables, which win over `[telemetry]`:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces`
//! appended), `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_SDK_DISABLED`. Without an endpoint nothing is installed: no layer, no propagation, no
//! cost.
//!
//! Export is batched on the Tokio runtime through a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! default 2048 spans) with one export at a time, each bounded by [`EXPORT_TIMEOUT`]: a dead or
//! hanging collector costs dropped spans, never request latency or memory.
//!
//! Only spans of this crate are exported, with the fields they declare: route, method, status,
//! request id, client IP and user id; never a token, key, secret or e-mail (no span declares one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetrySettings;

/// The longest one export request may take (connect included).
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are being recorded (an endpoint is configured and the pipeline is installed).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What the settings and the `OTEL_*` variables resolve to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TraceConfig {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub traces_url: String,
    pub service_name: String,
    pub sampler: SamplerChoice,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SamplerChoice {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    fn sampler(self) -> Sampler {
        match self {
            SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
            SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
            SamplerChoice::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerChoice::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerChoice::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerChoice::ParentBasedRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Appends the signal path to a base endpoint, as the OTLP specification does for
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base that already names `/v1/traces` is kept).
fn traces_url_from_base(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Resolves the trace configuration; `None` when traces are off. The second value lists
/// problems worth a warning (an `OTEL_*` value that was ignored).
pub(crate) fn resolve(
    settings: &TelemetrySettings,
    env: impl Fn(&str) -> Option<String>,
) -> (Option<TraceConfig>, Vec<String>) {
    let mut warnings = Vec::new();
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return (None, warnings);
    }
    let mut traces_url = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|b| traces_url_from_base(&b)))
        .or_else(|| {
            settings
                .otlp_endpoint
                .as_ref()
                .map(|u| traces_url_from_base(u.as_str()))
        });
    if let Some(url) = &traces_url
        && !reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        warnings.push("the OTLP endpoint is not an http(s) URL; traces are off".to_owned());
        traces_url = None;
    }
    let Some(traces_url) = traces_url else {
        return (None, warnings);
    };
    let service_name =
        var("OTEL_SERVICE_NAME").unwrap_or_else(|| settings.service_name.as_str().to_owned());
    let configured = SamplerChoice::ParentBasedRatio(settings.sample_ratio.get());
    let sampler = match var("OTEL_TRACES_SAMPLER") {
        None => configured,
        Some(name) => {
            let arg = var("OTEL_TRACES_SAMPLER_ARG");
            let ratio = match arg.as_deref().map(str::parse::<f64>) {
                None => Some(1.0),
                Some(Ok(r)) if (0.0..=1.0).contains(&r) => Some(r),
                Some(_) => None,
            };
            match (name.as_str(), ratio) {
                ("always_on", _) => SamplerChoice::AlwaysOn,
                ("always_off", _) => SamplerChoice::AlwaysOff,
                ("parentbased_always_on", _) => SamplerChoice::ParentBasedAlwaysOn,
                ("parentbased_always_off", _) => SamplerChoice::ParentBasedAlwaysOff,
                ("traceidratio", Some(r)) => SamplerChoice::Ratio(r),
                ("parentbased_traceidratio", Some(r)) => SamplerChoice::ParentBasedRatio(r),
                ("traceidratio" | "parentbased_traceidratio", None) => {
                    warnings.push(
                        "OTEL_TRACES_SAMPLER_ARG is not a ratio between 0 and 1; using telemetry.sample_ratio"
                            .to_owned(),
                    );
                    configured
                }
                _ => {
                    warnings.push(
                        "OTEL_TRACES_SAMPLER names a sampler this broker does not have; using telemetry.sample_ratio"
                            .to_owned(),
                    );
                    configured
                }
            }
        }
    };
    (
        Some(TraceConfig {
            traces_url,
            service_name,
            sampler,
        }),
        warnings,
    )
}

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
        let http = crate::http_client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(2)
            .build()
            .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the OTLP trace exporter: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_concurrent_exports(1)
            .with_max_export_timeout(EXPORT_TIMEOUT + Duration::from_secs(1))
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batch)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(config.sampler.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("intellia-token-broker");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
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

/// Sets `http.response.status_code` on the span's trace only (the log line has its own
/// `status`).
pub(crate) fn set_status_code(span: &tracing::Span, status: u16) {
    if enabled() {
        span.set_attribute("http.response.status_code", i64::from(status));
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

/// Makes `span` (a request's root span) continue the caller's trace when its `traceparent` is
/// valid, and returns the request's trace id (hex) for its log line. With traces off, the
/// caller's trace id is still returned, so logs correlate with the caller's trace.
pub(crate) fn continue_trace(
    span: &tracing::Span,
    headers: &actix_web::http::header::HeaderMap,
) -> Option<String> {
    if !enabled() {
        return headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(traceparent_trace_id);
    }
    let parent = TraceContextPropagator::new().extract(&ActixHeaders(headers));
    let _ = span.set_parent(parent);
    let context = span.context();
    let span_ref = context.span();
    let id = span_ref.span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| format!("{id:032x}"))
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is valid.
pub(crate) fn traceparent_trace_id(value: &str) -> Option<String> {
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
    valid.then(|| trace.to_owned())
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

/// The W3C trace-context headers (`traceparent`, `tracestate`) of the current span, for an
/// outgoing request; empty when traces are off.
pub(crate) fn outgoing_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if enabled() {
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new()
                .inject_context(&context, &mut ReqwestHeaders(&mut headers));
        }
    }
    headers
}

/// Adds the current span's W3C trace context (`traceparent`, `tracestate`) to an outgoing
/// request, so Intellia's and the identity provider's traces join the caller's. Nothing is added
/// when traces are off. Every outgoing call of the broker is built through this.
pub(crate) fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let headers = outgoing_headers();
    if headers.is_empty() {
        request
    } else {
        request.headers(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> TelemetrySettings {
        let text =
            format!("[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n{toml}");
        crate::config::Settings::from_toml_with_env(&text, Vec::<(String, String)>::new())
            .expect("valid")
            .telemetry
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        let (config, warnings) = resolve(&settings(""), env(&[]));
        assert_eq!(config, None);
        assert!(warnings.is_empty());
    }

    #[test]
    fn config_endpoint_gets_the_signal_path_and_ratio() {
        let s = settings(
            "[telemetry]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.25\nservice_name = \"broker-eu\"",
        );
        let (config, _) = resolve(&s, env(&[]));
        let config = config.expect("on");
        assert_eq!(config.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(config.service_name, "broker-eu");
        assert_eq!(config.sampler, SamplerChoice::ParentBasedRatio(0.25));
    }

    #[test]
    fn otel_variables_win_over_the_file() {
        let s = settings("[telemetry]\notlp_endpoint = \"http://collector:4318\"");
        let (config, _) = resolve(
            &s,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318/"),
                ("OTEL_SERVICE_NAME", "svc"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ]),
        );
        let config = config.expect("on");
        assert_eq!(config.traces_url, "http://other:4318/v1/traces");
        assert_eq!(config.service_name, "svc");
        assert_eq!(config.sampler, SamplerChoice::Ratio(0.5));
        let (config, _) = resolve(
            &s,
            env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")]),
        );
        assert_eq!(config.expect("on").traces_url, "http://t:1/custom");
        let (config, _) = resolve(&s, env(&[("OTEL_SDK_DISABLED", "true")]));
        assert_eq!(config, None);
    }

    #[test]
    fn a_bad_sampler_variable_warns_and_keeps_the_file() {
        let s = settings("[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 0.1");
        let (config, warnings) = resolve(
            &s,
            env(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "7"),
            ]),
        );
        assert_eq!(
            config.expect("on").sampler,
            SamplerChoice::ParentBasedRatio(0.1)
        );
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn sample_ratio_takes_integers_and_environment_overrides() {
        let base = "[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n";
        let s = crate::config::Settings::from_toml_with_env(
            &format!("{base}[telemetry]\nsample_ratio = 0"),
            Vec::<(String, String)>::new(),
        )
        .expect("an integer ratio");
        assert_eq!(s.telemetry.sample_ratio.get(), 0.0);
        let s = crate::config::Settings::from_toml_with_env(
            base,
            vec![
                (
                    "BROKER__TELEMETRY__SAMPLE_RATIO".to_owned(),
                    "0.5".to_owned(),
                ),
                (
                    "BROKER__TELEMETRY__OTLP_ENDPOINT".to_owned(),
                    "http://c:4318".to_owned(),
                ),
            ],
        )
        .expect("overrides");
        assert_eq!(s.telemetry.sample_ratio.get(), 0.5);
        assert!(s.telemetry.otlp_endpoint.is_some());
    }

    #[test]
    fn sample_ratio_outside_zero_to_one_is_a_config_error() {
        let text = "[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n[telemetry]\nsample_ratio = 1.5";
        let e = crate::config::Settings::from_toml_with_env(text, Vec::<(String, String)>::new())
            .expect_err("out of range");
        assert!(e.0.contains("telemetry.sample_ratio"), "{}", e.0);
    }

    #[test]
    fn traceparent_validation() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            traceparent_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
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
}
