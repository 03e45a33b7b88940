//! The exporter's variables: protocol, endpoint, TLS, compression, timeout and headers, checked
//! the way the SDK will read them.

use std::time::Duration;

use super::{
    CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY, COMPRESSION, ENDPOINT, Endpoint, HEADERS,
    INSECURE, Note, OtelEnv, PROTOCOL, Protocol, TIMEOUT, TlsFiles, percent_decoded, shown,
};
use crate::config::TelemetrySettings;

pub(super) fn protocol(env: &OtelEnv) -> Result<Protocol, String> {
    let Some((name, value)) = env.first(PROTOCOL) else {
        return Ok(Protocol::HttpProtobuf);
    };
    match value {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err(format!(
            "{name}=http/json: OTLP/HTTP with JSON is not built into this broker; use http/protobuf or grpc"
        )),
        other => Err(format!(
            "{name}={}: unknown protocol; use grpc or http/protobuf",
            shown(other)
        )),
    }
}

/// The `/v1/traces` path appended to a base endpoint, as the SDK does for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn with_signal_path(base: &str) -> String {
    if base.ends_with('/') {
        format!("{base}v1/traces")
    } else {
        format!("{base}/v1/traces")
    }
}

/// `telemetry.otlp_endpoint` is a base URL; one that already names `/v1/traces` is kept.
fn traces_url_from_base(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

pub(super) fn endpoint(
    env: &OtelEnv,
    settings: &TelemetrySettings,
    protocol: Protocol,
    exporter_named: bool,
) -> Result<Option<Endpoint>, String> {
    let [signal, base] = ENDPOINT;
    let (text, source, from_env) = if let Some(value) = env.get(signal) {
        (value.to_owned(), signal, true)
    } else if let Some(value) = env.get(base) {
        let text = match protocol {
            Protocol::HttpProtobuf => with_signal_path(value),
            Protocol::Grpc => value.to_owned(),
        };
        (text, base, true)
    } else if let Some(url) = &settings.otlp_endpoint {
        let text = match protocol {
            Protocol::HttpProtobuf => traces_url_from_base(url.as_str()),
            Protocol::Grpc => url.as_str().to_owned(),
        };
        (text, "telemetry.otlp_endpoint", false)
    } else if exporter_named {
        let text = match protocol {
            Protocol::HttpProtobuf => "http://localhost:4318/v1/traces",
            Protocol::Grpc => "http://localhost:4317",
        };
        (
            text.to_owned(),
            "the default of OTEL_TRACES_EXPORTER=otlp",
            false,
        )
    } else {
        return Ok(None);
    };
    // The SDK takes an endpoint it cannot parse as absent, and the gRPC exporter takes an empty
    // variable as an endpoint: both are refused or overridden here.
    let parsed_by_sdk = text.parse::<http::Uri>().is_ok();
    let url = reqwest::Url::parse(&text)
        .ok()
        .filter(|_| parsed_by_sdk)
        .ok_or_else(|| format!("{source}: not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{source}: needs an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{source}: the URL names no host"));
    }
    let empty_variable = ENDPOINT.iter().any(|n| env.raw(n) == Some(""));
    Ok(Some(Endpoint {
        url,
        source,
        given: (!from_env || empty_variable).then_some(text),
    }))
}

/// 4317 and 4318 are the well-known OTLP/gRPC and OTLP/HTTP ports: the other protocol on one of
/// them is almost always a mistake, and it fails without an answer a person can read.
pub(super) fn port_hint(endpoint: &Endpoint, protocol: Protocol, notes: &mut Vec<Note>) {
    let hint = match (protocol, endpoint.url.port()) {
        (Protocol::HttpProtobuf, Some(4317)) => {
            "port 4317 is OTLP/gRPC's, but the protocol is http/protobuf (set OTEL_EXPORTER_OTLP_PROTOCOL=grpc)"
        }
        (Protocol::Grpc, Some(4318)) => {
            "port 4318 is OTLP/HTTP's, but the protocol is grpc (set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)"
        }
        _ => return,
    };
    notes.push(Note::Warn(format!("{}: {hint}", endpoint.source)));
}

/// The `_INSECURE` variables choose TLS for a gRPC endpoint written without a scheme; this broker
/// takes only endpoints with one, so the scheme decides. A value that contradicts it is named.
pub(super) fn insecure(
    env: &OtelEnv,
    protocol: Protocol,
    endpoint: &Endpoint,
    notes: &mut Vec<Note>,
) -> Result<(), String> {
    let Some((name, value)) = env.first(INSECURE) else {
        return Ok(());
    };
    let insecure = if value.eq_ignore_ascii_case("true") {
        true
    } else if value.eq_ignore_ascii_case("false") {
        false
    } else {
        return Err(format!("{name}={}: neither true nor false", shown(value)));
    };
    let tls = endpoint.url.scheme() == "https";
    if protocol == Protocol::HttpProtobuf || insecure == tls {
        notes.push(Note::Warn(format!(
            "{name}={value} is not used: the endpoint's scheme decides ({} here, from {})",
            if tls { "TLS" } else { "plaintext" },
            endpoint.source
        )));
    }
    Ok(())
}

pub(super) fn timeout(env: &OtelEnv) -> Result<Duration, String> {
    let Some((name, value)) = env.first(TIMEOUT) else {
        return Ok(Duration::from_secs(10));
    };
    match value.parse::<u64>() {
        Ok(0) => Err(format!("{name}=0: the exporter needs at least 1 ms")),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err(format!(
            "{name}={}: not a whole number of milliseconds",
            shown(value)
        )),
    }
}

pub(super) fn gzip(env: &OtelEnv) -> Result<bool, String> {
    // The SDK reads the signal variable whenever it is set, empty or not.
    let Some((name, value)) = COMPRESSION
        .into_iter()
        .find_map(|n| env.raw(n).map(|v| (n, v)))
    else {
        return Ok(false);
    };
    match value {
        "gzip" => Ok(true),
        "" | "none" => Err(format!(
            "{name}={value}: the OpenTelemetry SDK refuses this value; leave the variable unset for no compression"
        )),
        "zstd" => Err(format!("{name}=zstd: not built into this broker; use gzip")),
        other => Err(format!(
            "{name}={}: unknown compression; use gzip",
            shown(other)
        )),
    }
}

/// The header names (lower case) the SDK will send; values are never shown.
pub(super) fn headers(env: &OtelEnv) -> Result<Vec<String>, String> {
    let [signal, general] = HEADERS;
    // The SDK reads the signal variable whenever it is set: an empty one hides the general one.
    if env.raw(signal) == Some("") && env.get(general).is_some() {
        return Err(format!(
            "{signal} is set but empty, which hides {general} from the OpenTelemetry SDK; unset it"
        ));
    }
    let Some((name, value)) = env.first(HEADERS) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for (index, entry) in value.split_terminator(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let n = index + 1;
        let (key, raw) = entry
            .split_once('=')
            .ok_or_else(|| format!("{name}: entry {n} is not name=value"))?;
        let key = key.trim();
        let header = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("{name}: entry {n} is not a valid header name"))?;
        let decoded = percent_decoded(raw.trim()).ok_or_else(|| {
            format!("{name}: the value of {header} is not valid percent-encoding")
        })?;
        if decoded.is_empty() || http::HeaderValue::from_str(&decoded).is_err() {
            return Err(format!(
                "{name}: the value of {header} is empty or not a valid header value"
            ));
        }
        names.push(header.as_str().to_owned());
    }
    Ok(names)
}

fn read_pem(name: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{name}: cannot read {}: {}", shown(path), e.kind()))
}

pub(super) fn tls(
    env: &OtelEnv,
    endpoint: &Endpoint,
    notes: &mut Vec<Note>,
) -> Result<TlsFiles, String> {
    let mut files = TlsFiles::default();
    let mut named = Vec::new();
    if let Some((name, path)) = env.first(CERTIFICATE) {
        let pem = read_pem(name, path)?;
        if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |certs| certs.is_empty()) {
            return Err(format!("{name}: {} holds no PEM certificate", shown(path)));
        }
        files.ca = Some(pem);
        named.push(name);
    }
    match (env.first(CLIENT_CERTIFICATE), env.first(CLIENT_KEY)) {
        (None, None) => {}
        (Some((name, _)), None) | (None, Some((name, _))) => {
            return Err(format!(
                "{name} is set alone: a client certificate needs {} and {}",
                CLIENT_CERTIFICATE[1], CLIENT_KEY[1]
            ));
        }
        (Some((cert_name, cert_path)), Some((key_name, key_path))) => {
            let cert = read_pem(cert_name, cert_path)?;
            let key = read_pem(key_name, key_path)?;
            let both = [key.as_slice(), b"\n", cert.as_slice()].concat();
            if reqwest::Identity::from_pem(&both).is_err() {
                return Err(format!(
                    "{cert_name} and {key_name}: not a PEM certificate and its private key"
                ));
            }
            files.identity = Some((cert, key));
            named.push(cert_name);
        }
    }
    if !named.is_empty() && endpoint.url.scheme() != "https" {
        notes.push(Note::Warn(format!(
            "{} not used: the endpoint (from {}) is plain http://",
            named.join(" and "),
            endpoint.source
        )));
    }
    Ok(files)
}
