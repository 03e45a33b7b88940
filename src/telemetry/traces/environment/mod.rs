//! What `[telemetry]` and the `OTEL_*` variables of the OpenTelemetry SDK environment
//! specification resolve to, checked once before anything is built. Precedence: a variable >
//! `[telemetry]` > the specification's default.
//!
//! The SDK (opentelemetry-otlp and opentelemetry_sdk 0.32) reads most trace variables itself and is
//! left to: the endpoint, protocol, timeout, compression and headers of the exporter, the batch
//! processor's `OTEL_BSP_*`, the span limits, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
//! The pipeline passes a value of its own only where the variable is unset (`[telemetry]`, the
//! default) or where the SDK would misread it (below). Written here by hand is what the SDK lacks:
//!
//! - the checks: on a value it cannot parse the SDK silently falls back (an endpoint, a timeout, a
//!   header, a batch size) or fails without naming the variable (`none` compression). Every
//!   variable it will read is parsed here the way it parses it; a value it could not honour fails
//!   start-up with one line naming the variable, and a variable the broker does not use at all is
//!   named in one WARN;
//! - `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`, `OTEL_PROPAGATORS`, the transport the protocol
//!   variables pick (the SDK needs the HTTP or gRPC builder chosen for it), the certificate
//!   variables, and percent-decoding of `OTEL_RESOURCE_ATTRIBUTES` values;
//! - the sampler: the SDK's parent-based samplers follow a caller's sampled flag, which lets any
//!   caller raise the exported share ([`super::sampler`]).

mod otlp;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::TelemetrySettings;
use otlp::{endpoint, gzip, headers, insecure, port_hint, protocol, timeout, tls};

const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
const PROTOCOL: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];
const ENDPOINT: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const INSECURE: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_INSECURE",
];
const COMPRESSION: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
];
const TIMEOUT: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
];
const HEADERS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
];
const CERTIFICATE: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
];
const CLIENT_CERTIFICATE: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
];
const CLIENT_KEY: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
];
const PROPAGATORS: &str = "OTEL_PROPAGATORS";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// Whole numbers the SDK reads (and silently ignores when they do not parse), with the least
/// value that makes sense.
const NUMBERS: [(&str, u64); 8] = [
    ("OTEL_BSP_SCHEDULE_DELAY", 1),
    ("OTEL_BSP_EXPORT_TIMEOUT", 1),
    ("OTEL_BSP_MAX_QUEUE_SIZE", 1),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1),
    ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", 1),
    ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", 0),
    ("OTEL_SPAN_EVENT_COUNT_LIMIT", 0),
    ("OTEL_SPAN_LINK_COUNT_LIMIT", 0),
];

/// Every variable this module reads; any other `OTEL_*` variable is named in one WARN.
fn is_read(name: &str) -> bool {
    [
        SDK_DISABLED,
        TRACES_EXPORTER,
        PROPAGATORS,
        SERVICE_NAME,
        RESOURCE_ATTRIBUTES,
        SAMPLER,
        SAMPLER_ARG,
    ]
    .contains(&name)
        || [
            PROTOCOL,
            ENDPOINT,
            INSECURE,
            COMPRESSION,
            TIMEOUT,
            HEADERS,
            CERTIFICATE,
            CLIENT_CERTIFICATE,
            CLIENT_KEY,
        ]
        .iter()
        .any(|pair| pair.contains(&name))
        || NUMBERS.iter().any(|(n, _)| *n == name)
}

/// Why a variable the broker does not read is not used, for the WARN that names it.
fn not_used_because(name: &str, value: &str) -> Option<&'static str> {
    let signal = |prefix: &str| name.starts_with(prefix);
    Some(match name {
        "OTEL_METRICS_EXPORTER" | "OTEL_LOGS_EXPORTER" if value == "none" => return None,
        "OTEL_LOG_LEVEL" => "the broker's log level is RUST_LOG",
        "OTEL_SEMCONV_STABILITY_OPT_IN" => "the broker emits the stable HTTP conventions",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
        | "OTEL_ATTRIBUTE_COUNT_LIMIT"
        | "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"
        | "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT"
        | "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT" => {
            "the OpenTelemetry SDK the broker is built with has no such limit"
        }
        _ if signal("OTEL_METRIC")
            || signal("OTEL_EXPORTER_OTLP_METRICS_")
            || signal("OTEL_EXEMPLAR") =>
        {
            "the broker exports traces only; its metrics are on the admin listener's /metrics"
        }
        _ if signal("OTEL_LOGS") || signal("OTEL_EXPORTER_OTLP_LOGS_") || signal("OTEL_BLRP_") => {
            "the broker exports traces only; its logs are JSON lines on stdout"
        }
        _ => "unknown to the broker",
    })
}

/// The process's `OTEL_*` variables (or a test's).
#[derive(Debug, Default, Clone)]
pub(crate) struct OtelEnv {
    vars: BTreeMap<String, String>,
    not_unicode: Vec<String>,
}

impl OtelEnv {
    pub(crate) fn from_process() -> OtelEnv {
        let mut env = OtelEnv::default();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with("OTEL_")) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    env.vars.insert(name.to_owned(), value);
                }
                Err(_) => env.not_unicode.push(name.to_owned()),
            }
        }
        env
    }

    /// The value as set, empty included.
    fn raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The value, an empty one counting as unset (as the specification says).
    fn get(&self, name: &str) -> Option<&str> {
        self.raw(name).filter(|v| !v.is_empty())
    }

    /// The first of a signal-specific variable and its general one that is set (non-empty).
    fn first(&self, pair: [&'static str; 2]) -> Option<(&'static str, &str)> {
        pair.into_iter()
            .find_map(|name| self.get(name).map(|v| (name, v)))
    }
}

/// A line for the log at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    Info(String),
    Warn(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Grpc => "OTLP/gRPC",
            Protocol::HttpProtobuf => "OTLP/HTTP",
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropagatorName {
    TraceContext,
    Baggage,
    B3,
    B3Multi,
}

impl PropagatorName {
    fn label(self) -> &'static str {
        match self {
            PropagatorName::TraceContext => "tracecontext",
            PropagatorName::Baggage => "baggage",
            PropagatorName::B3 => "b3",
            PropagatorName::B3Multi => "b3multi",
        }
    }
}

/// PEM files for TLS toward the collector, read at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`: the only CA the collector's certificate is
    /// checked against.
    pub(crate) ca: Option<Vec<u8>>,
    /// The client certificate chain and its private key, for a collector that asks for one.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where the pipeline sends spans.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Endpoint {
    pub(crate) url: reqwest::Url,
    /// What named it: a variable, `telemetry.otlp_endpoint` or the specification's default.
    pub(crate) source: &'static str,
    /// The endpoint to give the SDK; `None` when it reads the same from the environment.
    pub(crate) given: Option<String>,
}

/// The resolved trace configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TraceConfig {
    pub(crate) protocol: Protocol,
    pub(crate) endpoint: Endpoint,
    /// The exporter's per-request timeout (the SDK's for gRPC; ours on the HTTP client).
    pub(crate) timeout: Duration,
    /// How long the batch processor lets one export run (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub(crate) export_timeout: Duration,
    pub(crate) gzip: bool,
    pub(crate) tls: TlsFiles,
    /// `service.name` to set; `None` when a variable names it and the SDK reads it right.
    pub(crate) service_name: Option<String>,
    /// Resource attributes to set over what the SDK reads (percent-decoded values, the version).
    pub(crate) resource: Vec<Attribute>,
    pub(crate) sampler: SamplerChoice,
    pub(crate) propagators: Vec<PropagatorName>,
    /// Names of the headers sent to the collector (never their values).
    pub(crate) header_names: Vec<String>,
}

impl TraceConfig {
    /// One line for the log: where spans go and how, without credentials.
    pub(crate) fn describe(&self) -> String {
        let sampler = match self.sampler {
            SamplerChoice::AlwaysOn => "always_on".to_owned(),
            SamplerChoice::AlwaysOff => "always_off".to_owned(),
            SamplerChoice::Ratio(r) => format!("traceidratio {r}"),
            SamplerChoice::ParentBasedAlwaysOn => "parentbased_always_on".to_owned(),
            SamplerChoice::ParentBasedAlwaysOff => "parentbased_always_off".to_owned(),
            SamplerChoice::ParentBasedRatio(r) => format!("parentbased_traceidratio {r}"),
        };
        let propagators = if self.propagators.is_empty() {
            "none".to_owned()
        } else {
            self.propagators
                .iter()
                .map(|p| p.label())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut parts = vec![
            format!(
                "{} to {} (from {})",
                self.protocol.label(),
                redacted(&self.endpoint.url),
                self.endpoint.source
            ),
            format!("timeout {} ms", self.timeout.as_millis()),
            format!("sampler {sampler}"),
            format!("propagators {propagators}"),
        ];
        if self.gzip {
            parts.push("gzip".to_owned());
        }
        if self.tls.ca.is_some() {
            parts.push("CA from OTEL_EXPORTER_OTLP_CERTIFICATE".to_owned());
        }
        if self.tls.identity.is_some() {
            parts.push("client certificate".to_owned());
        }
        if !self.header_names.is_empty() {
            parts.push(format!("headers {}", self.header_names.join(",")));
        }
        parts.join(", ")
    }
}

/// A URL for a log line or a report: no user, password, query or fragment.
pub(crate) fn redacted(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// A resource attribute: key and value.
type Attribute = (String, String);

/// What the configuration resolves to: `None` when traces are off.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub(crate) config: Option<TraceConfig>,
    pub(crate) notes: Vec<Note>,
}

/// A value as it may appear in a log line: control characters escaped, at most 64 characters.
fn shown(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars().take(64) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// Resolves the trace configuration. `Err` is the one line start-up fails with.
pub(crate) fn resolve(settings: &TelemetrySettings, env: &OtelEnv) -> Result<Resolved, String> {
    if let Some(name) = env.not_unicode.first() {
        return Err(format!("{name}: the value is not valid UTF-8"));
    }
    for name in ["OTEL_CONFIG_FILE", "OTEL_EXPERIMENTAL_CONFIG_FILE"] {
        if env.raw(name).is_some() {
            return Err(format!(
                "{name}: configuration files are not supported; set the OTEL_* variables instead"
            ));
        }
    }
    let mut notes = Vec::new();
    let unused: Vec<String> = env
        .vars
        .iter()
        .filter(|(name, _)| !is_read(name))
        .filter_map(|(name, value)| {
            not_used_because(name, value).map(|why| format!("{name} ({why})"))
        })
        .collect();
    if !unused.is_empty() {
        notes.push(Note::Warn(format!(
            "not used by this broker: {}",
            unused.join("; ")
        )));
    }
    let off = |mut notes: Vec<Note>, why: String| {
        notes.push(Note::Info(format!("traces are off: {why}")));
        Ok(Resolved {
            config: None,
            notes,
        })
    };
    if let Some(value) = env.get(SDK_DISABLED) {
        if value.eq_ignore_ascii_case("true") {
            return off(notes, format!("{SDK_DISABLED}=true"));
        }
        if !value.eq_ignore_ascii_case("false") {
            notes.push(Note::Warn(format!(
                "{SDK_DISABLED}={}: neither true nor false, so read as false",
                shown(value)
            )));
        }
    }
    let exporter_named = match env.get(TRACES_EXPORTER) {
        None => false,
        Some(value) => {
            let items: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .collect();
            if items == ["none"] {
                return off(notes, format!("{TRACES_EXPORTER}=none"));
            }
            if items.is_empty() || items.iter().any(|i| *i != "otlp") {
                return Err(format!(
                    "{TRACES_EXPORTER}={}: this broker exports traces over OTLP only (otlp, or none for no traces)",
                    shown(value)
                ));
            }
            true
        }
    };
    let protocol = protocol(env)?;
    let Some(endpoint) = endpoint(env, settings, protocol, exporter_named)? else {
        let set: Vec<&str> = env
            .vars
            .keys()
            .map(String::as_str)
            .filter(|n| is_read(n) && *n != SDK_DISABLED)
            .collect();
        if !set.is_empty() {
            notes.push(Note::Warn(format!(
                "traces are off: no OTLP endpoint ({}, {} or telemetry.otlp_endpoint), so {} {} not used",
                ENDPOINT[1],
                ENDPOINT[0],
                set.join(", "),
                if set.len() == 1 { "is" } else { "are" }
            )));
        }
        return Ok(Resolved {
            config: None,
            notes,
        });
    };
    port_hint(&endpoint, protocol, &mut notes);
    insecure(env, protocol, &endpoint, &mut notes)?;
    let timeout = timeout(env)?;
    let gzip = gzip(env)?;
    let header_names = headers(env)?;
    let tls = tls(env, &endpoint, &mut notes)?;
    let export_timeout = numbers(env, &mut notes)?;
    let (service_name, resource) = resource(env, settings)?;
    let sampler = sampler(env, settings, &mut notes)?;
    let propagators = propagators(env)?;
    let config = TraceConfig {
        protocol,
        endpoint,
        timeout,
        export_timeout,
        gzip,
        tls,
        service_name,
        resource,
        sampler,
        propagators,
        header_names,
    };
    notes.push(Note::Info(format!("traces: {}", config.describe())));
    Ok(Resolved {
        config: Some(config),
        notes,
    })
}

/// `%XX` sequences decoded, as the specification asks of header and resource values; `None` when
/// a sequence is broken or the result is not UTF-8.
fn percent_decoded(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The batch processor's export timeout (the specification's default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The batch processor's sizes and delays and the span limits: whole numbers the SDK would
/// otherwise drop without a word. Returns the export timeout, which the exporter applies (the
/// SDK's processor reads the rest).
fn numbers(env: &OtelEnv, notes: &mut Vec<Note>) -> Result<Duration, String> {
    let mut read = BTreeMap::new();
    for (name, least) in NUMBERS {
        let Some(value) = env.get(name) else {
            continue;
        };
        let n = value
            .parse::<u64>()
            .ok()
            .filter(|n| name.starts_with("OTEL_BSP_") || *n <= u64::from(u32::MAX))
            .ok_or_else(|| format!("{name}={}: not a whole number", shown(value)))?;
        if n < least {
            return Err(format!("{name}={n}: must be at least {least}"));
        }
        read.insert(name, n);
    }
    if let (Some(batch), Some(queue)) = (
        read.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        read.get("OTEL_BSP_MAX_QUEUE_SIZE"),
    ) && batch > queue
    {
        notes.push(Note::Warn(format!(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is larger than OTEL_BSP_MAX_QUEUE_SIZE={queue}: batches hold at most {queue} spans"
        )));
    }
    if let Some(n) = read
        .get("OTEL_BSP_MAX_CONCURRENT_EXPORTS")
        .filter(|n| **n > 1)
    {
        notes.push(Note::Warn(format!(
            "OTEL_BSP_MAX_CONCURRENT_EXPORTS={n} is not used: the broker exports one batch at a time"
        )));
    }
    Ok(read
        .get("OTEL_BSP_EXPORT_TIMEOUT")
        .map_or(EXPORT_TIMEOUT, |ms| Duration::from_millis(*ms)))
}

/// `service.name` and the resource attributes to set: the variables first (read by the SDK),
/// then `[telemetry] service_name`.
fn resource(
    env: &OtelEnv,
    settings: &TelemetrySettings,
) -> Result<(Option<String>, Vec<Attribute>), String> {
    let mut overrides = Vec::new();
    let mut keys = Vec::new();
    if let Some(value) = env.get(RESOURCE_ATTRIBUTES) {
        for (index, entry) in value.split_terminator(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let n = index + 1;
            let (key, raw) = entry
                .split_once('=')
                .ok_or_else(|| format!("{RESOURCE_ATTRIBUTES}: entry {n} is not key=value"))?;
            let (key, raw) = (key.trim(), raw.trim());
            if key.is_empty() {
                return Err(format!("{RESOURCE_ATTRIBUTES}: entry {n} has no key"));
            }
            let decoded = percent_decoded(raw).ok_or_else(|| {
                format!(
                    "{RESOURCE_ATTRIBUTES}: the value of {} is not valid percent-encoding",
                    shown(key)
                )
            })?;
            // The SDK keeps values as written; the specification has them percent-encoded.
            if decoded != raw {
                overrides.push((key.to_owned(), decoded));
            }
            if !raw.is_empty() {
                keys.push(key.to_owned());
            }
        }
    }
    let in_attributes = keys.iter().any(|k| k == "service.name");
    let service_name = match env.get(SERVICE_NAME) {
        // The SDK applies OTEL_RESOURCE_ATTRIBUTES after OTEL_SERVICE_NAME, the wrong way round:
        // the variable is given again so it wins, as the specification says.
        Some(name) if in_attributes => Some(name.to_owned()),
        Some(_) => None,
        None if in_attributes => None,
        None => Some(settings.service_name.as_str().to_owned()),
    };
    if !keys.iter().any(|k| k == "service.version") {
        overrides.push((
            "service.version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ));
    }
    if env.get(SERVICE_NAME).is_some() {
        overrides.retain(|(k, _)| k != "service.name");
    }
    Ok((service_name, overrides))
}

fn sampler(
    env: &OtelEnv,
    settings: &TelemetrySettings,
    notes: &mut Vec<Note>,
) -> Result<SamplerChoice, String> {
    let arg = env.get(SAMPLER_ARG);
    let ratio = || match arg {
        None => Ok(settings.sample_ratio.get()),
        Some(value) => value
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!(
                    "{SAMPLER_ARG}={}: not a ratio between 0 and 1",
                    shown(value)
                )
            }),
    };
    let Some(name) = env.get(SAMPLER) else {
        return Ok(SamplerChoice::ParentBasedRatio(ratio()?));
    };
    let choice = match name {
        "always_on" => SamplerChoice::AlwaysOn,
        "always_off" => SamplerChoice::AlwaysOff,
        "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
        "traceidratio" => return Ok(SamplerChoice::Ratio(ratio()?)),
        "parentbased_traceidratio" => return Ok(SamplerChoice::ParentBasedRatio(ratio()?)),
        other => {
            return Err(format!(
                "{SAMPLER}={}: not supported; use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                shown(other)
            ));
        }
    };
    if arg.is_some() {
        notes.push(Note::Warn(format!(
            "{SAMPLER_ARG} is not used: {SAMPLER}={name} takes no argument"
        )));
    }
    Ok(choice)
}

/// `OTEL_PROPAGATORS`; unset, W3C trace context alone. (The specification's default adds
/// `baggage`; a caller's baggage would then travel on to Intellia and the identity provider
/// unasked, so it is taken only when named.)
fn propagators(env: &OtelEnv) -> Result<Vec<PropagatorName>, String> {
    let Some(value) = env.get(PROPAGATORS) else {
        return Ok(vec![PropagatorName::TraceContext]);
    };
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if items == ["none"] {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for item in items {
        let name = match item {
            "tracecontext" => PropagatorName::TraceContext,
            "baggage" => PropagatorName::Baggage,
            "b3" => PropagatorName::B3,
            "b3multi" => PropagatorName::B3Multi,
            "none" => {
                return Err(format!(
                    "{PROPAGATORS}: none cannot be combined with other propagators"
                ));
            }
            other => {
                return Err(format!(
                    "{PROPAGATORS}: {} is not supported; use tracecontext, baggage, b3, b3multi or none",
                    shown(other)
                ));
            }
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(format!("{PROPAGATORS}: names no propagator"));
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
