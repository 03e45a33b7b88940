//! The OTLP exporter (HTTP with protobuf, or gRPC), and what a failed export leaves behind: a
//! count in `broker_trace_export_failures_total` and one WARN a minute at most. (The SDK reports
//! failures only through its own internal log, which this build leaves out.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;

use super::environment::{Protocol, TraceConfig};

/// Failed exports since start-up, process-wide (each registry shows the same counter).
static FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter behind `broker_trace_export_failures_total`.
pub(crate) fn failures_counter() -> Counter {
    FAILURES.clone()
}

const WARN_EVERY: Duration = Duration::from_secs(60);

/// When the last WARN was written, and the failures since that were not.
static LAST_WARN: Mutex<Option<Instant>> = Mutex::new(None);
static UNREPORTED: AtomicU64 = AtomicU64::new(0);

/// An error text as it may appear in a log line: one line, at most 300 characters.
fn cause(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(300) {
        if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// Counts a failed export and warns, at most once a minute.
fn failed(spans: usize, error: &str) {
    FAILURES.inc();
    let now = Instant::now();
    let mut last = LAST_WARN.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
        UNREPORTED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    *last = Some(now);
    drop(last);
    let earlier = UNREPORTED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        spans,
        failures_since_last_warning = earlier,
        cause = %cause(error),
        "trace export to the OTLP collector failed; these spans are dropped (counted in broker_trace_export_failures_total)"
    );
}

/// Counts an export that never finished: it was given up after `OTEL_BSP_EXPORT_TIMEOUT` and
/// dropped.
struct Unfinished(Option<usize>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(spans) = self.0.take() {
            failed(spans, "no answer within OTEL_BSP_EXPORT_TIMEOUT");
        }
    }
}

/// The cause of the last transport failure of the OTLP/HTTP client, which the SDK reports only
/// as "network error".
type LastCause = Arc<Mutex<Option<String>>>;

/// The SDK's exporter, with its failures counted and logged.
#[derive(Debug)]
struct Inner {
    exporter: opentelemetry_otlp::SpanExporter,
    last_cause: LastCause,
}

impl Inner {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut pending = Unfinished(Some(batch.len()));
        let _ = self
            .last_cause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let result = self.exporter.export(batch).await;
        if let (Some(spans), Err(e)) = (pending.0.take(), &result) {
            let transport = self
                .last_cause
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match transport {
                Some(cause) => failed(spans, &format!("{e}: {cause}")),
                None => failed(spans, &e.to_string()),
            }
        }
        result
    }
}

/// The exporter the batch processor's thread calls: each export runs on the Tokio runtime (the
/// HTTP and gRPC clients live there) and is given up after `OTEL_BSP_EXPORT_TIMEOUT`.
///
/// The SDK's thread-based processor is used because it wakes its thread once per batch; the
/// runtime-based one wakes a task for every span. Under the floor bench the sink received twice
/// the spans at the same request rate (fewer dropped at a full queue; BENCHMARKS.md).
#[derive(Debug)]
pub(crate) struct Counted {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
    export_timeout: Duration,
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        let limit = self.export_timeout;
        let task = self.runtime.spawn(async move {
            // Dropping the export on time counts it (`Unfinished`).
            tokio::time::timeout(limit, inner.export(batch)).await
        });
        match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(OTelSdkError::Timeout(limit)),
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "the export task failed: {e}"
            ))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called while the provider is built, before any export holds a clone.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.exporter.set_resource(resource);
        }
    }
}

/// The exporter the pipeline runs, failures counted. Must run inside the Tokio runtime that will
/// carry the exports.
pub(crate) fn counted(config: &TraceConfig) -> Result<Counted, String> {
    let last_cause = LastCause::default();
    let exporter = exporter(config, &last_cause)?;
    Ok(Counted {
        inner: Arc::new(Inner {
            exporter,
            last_cause,
        }),
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|_| "traces: no async runtime for the exporter".to_owned())?,
        export_timeout: config.export_timeout,
    })
}

/// The most of a collector's answer kept (it is only ever checked for a partial success).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// reqwest for the OTLP/HTTP exporter. The SDK's own adapter calls `error_for_status`, which
/// turns a collector's 500 or 401 into "network error"; here the status reaches the SDK, which
/// names it, and a transport failure's cause is kept for the WARN.
#[derive(Debug, Clone)]
struct ExportClient {
    http: reqwest::Client,
    last_cause: LastCause,
}

impl ExportClient {
    fn remember(&self, e: &reqwest::Error) {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        *self
            .last_cause
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(text);
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut response = self.http.execute(request).await.map_err(|e| {
            let e = e.without_url();
            self.remember(&e);
            e
        })?;
        let headers = std::mem::take(response.headers_mut());
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            let e = e.without_url();
            self.remember(&e);
            e
        })? {
            let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let mut answer = Response::builder().status(status).body(Bytes::from(body))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// The SDK's exporter for this configuration. It reads the endpoint, timeout, compression and
/// headers from the environment itself; given here are the transport, the endpoint when no
/// variable names it, and TLS. Must run inside the Tokio runtime (gRPC's channel needs it).
fn exporter(
    config: &TraceConfig,
    last_cause: &LastCause,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match config.protocol {
        Protocol::HttpProtobuf => {
            // The SDK applies its timeout only to a client it builds itself.
            let mut http = crate::http_client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(5)))
                .pool_max_idle_per_host(2);
            if let Some(ca) = &config.tls.ca {
                let certs = reqwest::Certificate::from_pem_bundle(ca)
                    .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}"))?;
                http = http.tls_certs_only(certs);
            }
            if let Some((cert, key)) = &config.tls.identity {
                let both = [key.as_slice(), b"\n", cert.as_slice()].concat();
                let identity = reqwest::Identity::from_pem(&both)
                    .map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: {e}"))?;
                http = http.identity(identity);
            }
            let http = http
                .build()
                .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(ExportClient {
                    http,
                    last_cause: Arc::clone(last_cause),
                });
            if let Some(endpoint) = &config.endpoint.given {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build()
        }
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if config.endpoint.url.scheme() == "https" {
                use opentelemetry_otlp::tonic_types::transport::{
                    Certificate, ClientTlsConfig, Identity,
                };
                let mut tls = match &config.tls.ca {
                    Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
                    None => ClientTlsConfig::new().with_native_roots(),
                };
                if let Some((cert, key)) = &config.tls.identity {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                builder = builder.with_tls_config(tls);
            }
            if let Some(endpoint) = &config.endpoint.given {
                builder = builder.with_endpoint(endpoint.clone());
            }
            builder.build()
        }
    };
    built.map_err(|e| {
        format!(
            "cannot set up the OTLP trace exporter: {}",
            cause(&e.to_string())
        )
    })
}

/// `doctor`'s check of the collector: an export with no spans, which a collector accepts.
pub(crate) async fn probe(config: &TraceConfig) -> Result<String, String> {
    let last_cause = LastCause::default();
    let exporter = exporter(config, &last_cause)?;
    let started = Instant::now();
    match tokio::time::timeout(config.timeout, exporter.export(Vec::new())).await {
        Ok(Ok(())) => Ok(format!(
            "{} to {} accepts exports ({} ms)",
            config.protocol.label(),
            super::environment::redacted(&config.endpoint.url),
            started.elapsed().as_millis()
        )),
        Ok(Err(e)) => {
            let transport = last_cause
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            Err(cause(&match transport {
                Some(t) => format!("{e}: {t}"),
                None => e.to_string(),
            }))
        }
        Err(_) => Err(format!(
            "no answer within the export timeout ({} ms)",
            config.timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_stay_on_one_short_line() {
        let long = format!("bad\nthing\u{1b}[31m{}", "x".repeat(500));
        let c = cause(&long);
        assert!(!c.contains('\n') && !c.contains('\u{1b}'));
        assert_eq!(c.chars().count(), 300);
    }

    #[test]
    fn failures_are_counted_and_warned_at_most_once_a_minute() {
        let before = FAILURES.get();
        failed(3, "first");
        failed(3, "second");
        failed(3, "third");
        assert_eq!(FAILURES.get(), before + 3);
        // The first one warned (and set the time); the next two wait for the next warning.
        assert!(LAST_WARN.lock().unwrap().is_some());
        assert!(UNREPORTED.load(Ordering::Relaxed) >= 2);
        drop(Unfinished(Some(1)));
        assert_eq!(FAILURES.get(), before + 4);
        drop(Unfinished(None));
        assert_eq!(FAILURES.get(), before + 4);
    }
}
