//! Logs, traces and metrics: installing the log subscriber (JSON lines through `tracing`, or a
//! short human format for `dev`), the OpenTelemetry pipeline ([`traces`]), and the Prometheus
//! registry ([`metrics`]). What one request logs is `http::request_log`'s.

pub(crate) mod metrics;
pub(crate) mod process_metrics;
pub(crate) mod traces;

use std::io::IsTerminal;

use tracing::Level;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::TelemetrySettings;
use traces::environment::{Note, OtelEnv};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Json,
    Pretty,
}

/// Where log lines go: stdout for the server, stderr for commands whose stdout is their answer
/// (`doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogTarget {
    Stdout,
    Stderr,
}

/// The installed logging and tracing; [`Telemetry::shutdown`] exports the spans still queued.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    traces: Option<traces::TracePipeline>,
}

impl Telemetry {
    pub(crate) fn shutdown(self) {
        if let Some(pipeline) = self.traces {
            pipeline.shutdown(std::time::Duration::from_secs(3));
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` sets the log level (default `info`, or `warn` for
/// [`LogTarget::Stderr`]). With `traces` resolving to an endpoint (`[telemetry]` and the `OTEL_*`
/// variables), this crate's spans are also exported through OpenTelemetry, whatever the log
/// level. `Err` is one line naming an `OTEL_*` variable (or `telemetry.` key) whose value cannot
/// be honoured: the process must not start. Must run inside the Tokio runtime.
pub(crate) fn init(
    format: LogFormat,
    target: LogTarget,
    traces: Option<&TelemetrySettings>,
) -> Result<Telemetry, String> {
    let resolved = traces
        .map(|settings| traces::environment::resolve(settings, &OtelEnv::from_process()))
        .transpose()?;
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
    let mut telemetry = Telemetry::default();
    let mut notes = Vec::new();
    if let Some(resolved) = resolved {
        notes = resolved.notes;
        if let Some(config) = resolved.config {
            let (pipeline, tracer) = traces::TracePipeline::build(&config)?;
            // This crate's spans only (decided once per call site), not the ones of health
            // checks and scrapes, and of its events the warnings and errors, which become span
            // events: an INFO line (each request's own, among others) would only add bytes.
            let spans = tracing_subscriber::filter::filter_fn(|meta| {
                let level = if meta.is_event() {
                    Level::WARN
                } else {
                    Level::INFO
                };
                meta.target().starts_with(env!("CARGO_CRATE_NAME"))
                    && !meta.target().ends_with(traces::UNTRACED_SUFFIX)
                    && *meta.level() <= level
            });
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    // Parents come from the span tree and outgoing calls take their context from
                    // the span (traces::traced); activating an OpenTelemetry context on every
                    // enter and exit of a request's span (each poll) would only cost.
                    .with_context_activation(false)
                    // Every span of ours has the same target; as an attribute it only adds bytes.
                    .with_target(false)
                    .with_filter(spans)
                    .boxed(),
            );
            telemetry.traces = Some(pipeline);
        }
    }
    // Already installed (tests, or `dev` after an earlier init): keep the first.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    for note in notes {
        match note {
            Note::Info(text) => tracing::info!("{text}"),
            Note::Warn(text) => tracing::warn!("{text}"),
        }
    }
    Ok(telemetry)
}
