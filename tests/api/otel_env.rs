//! The `OTEL_*` variables of the OpenTelemetry SDK environment specification that concern traces,
//! against the real binary and the real OTLP receiver (HTTP and gRPC, plain and TLS): each value
//! the broker can honour is shown honoured, each it cannot is refused at start-up with one line
//! naming the variable, and a variable it does not use is named in one WARN.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use testkit::otlp::{OtlpReceiver, ReceiverOptions};
use testkit::prelude::*;

use super::traces::{broker, config_dir, logged, metrics_of, quick, random_hex, sample};

/// `serve` with these variables must exit non-zero within 20 s; returns its stderr.
fn refused_at_start(env: &[(&str, &str)]) -> String {
    let dir = default_config_dir();
    let mut child = Command::new(broker_bin())
        .args(["serve", "--config"])
        .arg(dir.join("config.toml"))
        .envs(env.iter().copied())
        .env_remove("BROKER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("serve started with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value is refused at start-up with one line naming `variable`.
fn assert_refused(env: &[(&str, &str)], variable: &str) {
    let stderr = refused_at_start(env);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for {env:?}: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(variable),
        "{variable} not named: {stderr}"
    );
}

const EP: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");

/// A backend token request with a sampled caller trace; returns the trace id.
async fn traced_request(proc: &BrokerProcess, user: &str) -> String {
    let trace_id = random_hex(16);
    let resp = http_client()
        .post(proc.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .header("traceparent", format!("00-{trace_id}-{}-01", random_hex(8)))
        .json(&json!({"userId": user}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    trace_id
}

/// The server span of `trace_id`, once it arrived (up to 15 s).
async fn server_span(receiver: &OtlpReceiver, trace_id: &str) -> Option<Value> {
    receiver
        .spans(
            &format!("trace_id={trace_id}&kind=SPAN_KIND_SERVER"),
            1,
            Duration::from_secs(15),
        )
        .await
        .into_iter()
        .next()
}

/// A broker with these variables (and a 50 ms export schedule), the simulator behind it.
async fn with_env(
    env: &[(&'static str, String)],
) -> (
    BrokerProcess,
    std::sync::Arc<intellia_token_broker::testing::SimulatorState>,
) {
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    let mut all = vec![("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned())];
    all.extend(env.iter().cloned());
    let proc = broker(
        &config_dir(
            &TestConfig {
                admin: true,
                ..TestConfig::default()
            },
            &sim_url,
        ),
        &all,
    );
    (proc, sim)
}

fn owned(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_protocol_grpc_exports_over_grpc_and_the_signal_variable_wins() {
    let receiver = OtlpReceiver::start();
    for env in [
        owned(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.grpc_endpoint),
        ]),
        owned(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &receiver.grpc_endpoint,
            ),
        ]),
    ] {
        let (proc, _sim) = with_env(&env).await;
        let trace_id = traced_request(&proc, "grpc-user").await;
        let span = server_span(&receiver, &trace_id).await;
        assert!(span.is_some(), "no span over gRPC with {env:?}");
        let (_, output) = proc.stop().await;
        assert!(output.contains("OTLP/gRPC to"), "{output}");
    }
    let requests = receiver.requests().await;
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r["protocol"] == "grpc"),
        "{requests:#?}"
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")],
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_traces_endpoint_is_used_as_is_and_wins_over_the_rest() {
    let receiver = OtlpReceiver::start();
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    // The file names a dead collector, the general variable another: the signal variable wins.
    let dir = config_dir(
        &TestConfig {
            extra_toml: "[telemetry]\notlp_endpoint = \"http://127.0.0.1:9\"\n".to_owned(),
            ..TestConfig::default()
        },
        &sim_url,
    );
    let proc = broker(
        &dir,
        &owned(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &format!("{}/v1/traces", receiver.endpoint),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ]),
    );
    let trace_id = traced_request(&proc, "endpoint-user").await;
    assert!(server_span(&receiver, &trace_id).await.is_some());
    proc.stop().await;
    assert_refused(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    assert_refused(
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a b/v1/traces")],
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_compression_gzip_compresses_over_http_and_grpc() {
    // OTLP/HTTP: the export says Content-Encoding: gzip (the receiver decodes it).
    let receiver = OtlpReceiver::start();
    let mut env = quick(&receiver.endpoint);
    env.push(("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_owned()));
    let (proc, _sim) = with_env(&env).await;
    let trace_id = traced_request(&proc, "gzip-user").await;
    assert!(server_span(&receiver, &trace_id).await.is_some());
    proc.stop().await;
    let requests = receiver.requests().await;
    assert!(
        requests.iter().all(|r| r["content_encoding"] == "gzip"),
        "{requests:#?}"
    );

    // OTLP/gRPC, against a collector that refuses compressed messages: with gzip the export
    // fails (counted), without it the spans arrive.
    let strict = OtlpReceiver::start_with(&ReceiverOptions {
        grpc_identity_only: true,
        ..ReceiverOptions::default()
    });
    let grpc = |compression: Option<&str>| {
        let mut env = owned(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &strict.grpc_endpoint),
        ]);
        if let Some(c) = compression {
            env.push(("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", c.to_owned()));
        }
        env
    };
    let (proc, _sim) = with_env(&grpc(Some("gzip"))).await;
    let trace_id = traced_request(&proc, "gzip-grpc").await;
    assert!(
        logged(
            &proc,
            "trace export to the OTLP collector failed",
            Duration::from_secs(10)
        )
        .await
        .is_some(),
        "gzip was not sent: {}",
        proc.output()
    );
    assert!(
        sample(
            &metrics_of(&proc).await,
            "broker_trace_export_failures_total"
        ) >= 1.0
    );
    assert!(
        strict
            .spans(&format!("trace_id={trace_id}"), 0, Duration::ZERO)
            .await
            .is_empty()
    );
    proc.stop().await;
    let (proc, _sim) = with_env(&grpc(None)).await;
    let trace_id = traced_request(&proc, "plain-grpc").await;
    assert!(server_span(&strict, &trace_id).await.is_some());
    proc.stop().await;

    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
        "OTEL_EXPORTER_OTLP_COMPRESSION=zstd",
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_COMPRESSION", "none")],
        "OTEL_EXPORTER_OTLP_COMPRESSION=none",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_timeout_bounds_each_export() {
    let receiver = OtlpReceiver::start();
    receiver.set_mode("hang").await;
    for (name, other) in [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", None),
        (
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            Some("OTEL_EXPORTER_OTLP_TIMEOUT"),
        ),
    ] {
        let mut env = quick(&receiver.endpoint);
        env.push((name, "1500".to_owned()));
        // The general variable, when the signal one is set, is not what counts.
        env.extend(other.map(|o| (o, "60000".to_owned())));
        let (proc, _sim) = with_env(&env).await;
        let started = Instant::now();
        traced_request(&proc, "timeout-user").await;
        let took = logged(
            &proc,
            "trace export to the OTLP collector failed",
            Duration::from_secs(12),
        )
        .await
        .map(|_| started.elapsed());
        // 1.5 s, not the 10 s default (nor a fixed 3 s).
        let took = took.unwrap_or_else(|| panic!("{name}: no failure logged: {}", proc.output()));
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
            "{name}=1500: the export failed after {took:?}"
        );
        proc.stop().await;
    }
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_certificate_and_client_certificate_are_honoured() {
    let dir = temp_dir();
    let tls = testkit::redis::make_certificates(&dir).expect("test certificates (openssl)");
    let receiver = OtlpReceiver::start_with(&ReceiverOptions {
        tls: Some(tls.clone()),
        client_certificate: true,
        ..ReceiverOptions::default()
    });
    let ca = tls.ca.display().to_string();
    let cert = tls.cert.display().to_string();
    let key = tls.key.display().to_string();
    for (protocol, endpoint) in [
        ("http/protobuf", receiver.endpoint.clone()),
        ("grpc", receiver.grpc_endpoint.clone()),
    ] {
        let base = owned(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ]);
        // The CA and a client certificate: the spans arrive.
        let mut env = base.clone();
        env.extend(owned(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
        ]));
        let (proc, _sim) = with_env(&env).await;
        let trace_id = traced_request(&proc, "tls-user").await;
        assert!(
            server_span(&receiver, &trace_id).await.is_some(),
            "{protocol}: {}",
            proc.output()
        );
        proc.stop().await;
        // The CA without the client certificate, and no CA: both fail, loudly.
        for env in [
            {
                let mut e = base.clone();
                e.push(("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca.clone()));
                e
            },
            base.clone(),
        ] {
            let (proc, _sim) = with_env(&env).await;
            traced_request(&proc, "tls-refused").await;
            assert!(
                logged(
                    &proc,
                    "trace export to the OTLP collector failed",
                    Duration::from_secs(15)
                )
                .await
                .is_some(),
                "{protocol} {env:?}: {}",
                proc.output()
            );
            proc.stop().await;
        }
    }
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert)],
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &key)],
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    );
    assert_refused(
        &[
            EP,
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                &dir.join("missing.pem").display().to_string(),
            ),
        ],
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_CERTIFICATE", &key)],
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_exporter_otlp_headers_are_sent_and_never_logged() {
    let receiver = OtlpReceiver::start();
    let secret = "s3cr3t-collector-key";
    for (protocol, endpoint, variable) in [
        (
            "http/protobuf",
            receiver.endpoint.clone(),
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            "grpc",
            receiver.grpc_endpoint.clone(),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ),
    ] {
        let env = owned(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            (
                variable,
                &format!("x-tenant=acme,authorization=Bearer%20{secret}"),
            ),
        ]);
        let (proc, _sim) = with_env(&env).await;
        let trace_id = traced_request(&proc, "headers-user").await;
        assert!(server_span(&receiver, &trace_id).await.is_some());
        let (_, output) = proc.stop().await;
        assert!(
            output.contains("headers x-tenant,authorization"),
            "{output}"
        );
        assert_no_secret(&output, &[secret.to_owned()], "the broker's log");
    }
    let requests = receiver.requests().await;
    for protocol in ["http", "grpc"] {
        let r = requests
            .iter()
            .find(|r| r["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no {protocol} export in {requests:#?}"));
        assert_eq!(r["headers"]["x-tenant"], "acme", "{r}");
        assert_eq!(
            r["headers"]["authorization"],
            format!("Bearer {secret}"),
            "{r}"
        );
    }
    let stderr = refused_at_start(&[
        EP,
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            &format!("authorization={secret}\u{7f}"),
        ),
    ]);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_HEADERS") && !stderr.contains(secret),
        "{stderr}"
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant")],
        "OTEL_EXPORTER_OTLP_HEADERS",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_traces_exporter_none_exports_nothing_and_sdk_disabled_too() {
    let receiver = OtlpReceiver::start();
    for (name, value) in [
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_SDK_DISABLED", "true"),
    ] {
        let mut env = quick(&receiver.endpoint);
        env.push((name, value.to_owned()));
        let (proc, _sim) = with_env(&env).await;
        traced_request(&proc, "off-user").await;
        let (_, output) = proc.stop().await;
        assert!(
            output.contains(&format!("traces are off: {name}={value}")),
            "{output}"
        );
    }
    assert!(receiver.spans("", 0, Duration::ZERO).await.is_empty());
    assert_eq!(receiver.stats().await["requests"], 0);
    // `otlp` is what the broker does; anything else is refused.
    let mut env = quick(&receiver.endpoint);
    env.push(("OTEL_TRACES_EXPORTER", "otlp".to_owned()));
    let (proc, _sim) = with_env(&env).await;
    let trace_id = traced_request(&proc, "otlp-user").await;
    assert!(server_span(&receiver, &trace_id).await.is_some());
    proc.stop().await;
    assert_refused(
        &[EP, ("OTEL_TRACES_EXPORTER", "zipkin")],
        "OTEL_TRACES_EXPORTER=zipkin",
    );
    assert_refused(
        &[EP, ("OTEL_TRACES_EXPORTER", "otlp,console")],
        "OTEL_TRACES_EXPORTER",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_propagators_b3_b3multi_and_baggage_are_read_and_carried_on() {
    let receiver = OtlpReceiver::start();
    let mut env = quick(&receiver.endpoint);
    env.push((
        "OTEL_PROPAGATORS",
        "tracecontext,baggage,b3multi".to_owned(),
    ));
    let (proc, sim) = with_env(&env).await;
    let client = http_client();
    // A user of its own per request: a cached token would not call Intellia.
    let send = |user: &str, headers: Vec<(&'static str, String)>| {
        let mut req = client
            .post(proc.backend_url("/v1/backend/token"))
            .bearer_auth(BACKEND_SECRET)
            .json(&json!({ "userId": user }));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    // B3, single header: continued (b3multi reads both encodings, as B3 asks).
    let (trace_id, span_id) = (random_hex(16), random_hex(8));
    assert_eq!(
        send("b3-single", vec![("b3", format!("{trace_id}-{span_id}-1"))])
            .await
            .unwrap()
            .status(),
        200
    );
    let server = server_span(&receiver, &trace_id)
        .await
        .expect("the b3 trace continued");
    assert_eq!(server["parent_span_id"], span_id.as_str());
    // Carried on to Intellia in the configured encodings, with the caller's baggage.
    assert_eq!(
        sim.last_trace_header("x-b3-traceid").as_deref(),
        Some(trace_id.as_str())
    );
    assert!(
        sim.last_trace_header("traceparent")
            .is_some_and(|t| t.contains(&trace_id))
    );
    assert!(
        sim.last_trace_header("b3").is_none(),
        "b3multi writes the X-B3 headers"
    );
    // The X-B3 headers, with a baggage entry.
    let (trace_id, span_id) = (random_hex(16), random_hex(8));
    let resp = send(
        "b3-multi",
        vec![
            ("x-b3-traceid", trace_id.clone()),
            ("x-b3-spanid", span_id.clone()),
            ("x-b3-sampled", "1".to_owned()),
            ("baggage", "tenant=acme".to_owned()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(server_span(&receiver, &trace_id).await.is_some());
    assert_eq!(
        sim.last_trace_header("baggage").as_deref(),
        Some("tenant=acme")
    );
    proc.stop().await;

    // B3 single-header injection, and no B3 read when not named.
    let mut env = quick(&receiver.endpoint);
    env.push(("OTEL_PROPAGATORS", "b3".to_owned()));
    let (proc, sim) = with_env(&env).await;
    let trace_id = traced_request(&proc, "b3-single").await;
    let b3 = sim
        .last_trace_header("b3")
        .expect("a b3 header to Intellia");
    assert!(
        !b3.starts_with(&trace_id),
        "tracecontext was not named, so the caller's traceparent is not read: {b3}"
    );
    assert!(sim.last_trace_header("traceparent").is_none());
    proc.stop().await;
    let (proc, _sim) = with_env(&quick(&receiver.endpoint)).await;
    let b3_trace = random_hex(16);
    let resp = http_client()
        .post(proc.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .header("b3", format!("{b3_trace}-{}-1", random_hex(8)))
        .json(&json!({"userId": "default-propagators"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, _) = proc.stop().await;
    assert!(
        receiver
            .spans(&format!("trace_id={b3_trace}"), 0, Duration::ZERO)
            .await
            .is_empty()
    );

    assert_refused(
        &[EP, ("OTEL_PROPAGATORS", "tracecontext,xray")],
        "OTEL_PROPAGATORS",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_resource_attributes_name_the_service_when_otel_service_name_is_unset() {
    let receiver = OtlpReceiver::start();
    let mut env = quick(&receiver.endpoint);
    env.push((
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.name=broker%20eu,deployment.environment=test".to_owned(),
    ));
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = config_dir(
        &TestConfig {
            extra_toml: "[telemetry]\nservice_name = \"from-the-file\"\n".to_owned(),
            ..TestConfig::default()
        },
        &sim_url,
    );
    let proc = broker(&dir, &env);
    let trace_id = traced_request(&proc, "resource-user").await;
    let span = server_span(&receiver, &trace_id).await.unwrap();
    let resource = &span["resource_attributes"];
    assert_eq!(resource["service.name"], "broker eu", "{resource}");
    assert_eq!(resource["deployment.environment"], "test");
    proc.stop().await;
    // OTEL_SERVICE_NAME wins over both.
    env.push(("OTEL_SERVICE_NAME", "svc".to_owned()));
    let proc = broker(&dir, &env);
    let trace_id = traced_request(&proc, "service-user").await;
    let span = server_span(&receiver, &trace_id).await.unwrap();
    assert_eq!(span["resource_attributes"]["service.name"], "svc");
    proc.stop().await;
    assert_refused(
        &[EP, ("OTEL_RESOURCE_ATTRIBUTES", "team")],
        "OTEL_RESOURCE_ATTRIBUTES",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_traces_sampler_and_its_argument_are_honoured() {
    let receiver = OtlpReceiver::start();
    // A file that samples nothing, a variable that samples everything: the variable wins.
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let nothing = TestConfig {
        extra_toml: "[telemetry]\nsample_ratio = 0\n".to_owned(),
        ..TestConfig::default()
    };
    let mut env = quick(&receiver.endpoint);
    env.push(("OTEL_TRACES_SAMPLER", "always_on".to_owned()));
    let proc = broker(&config_dir(&nothing, &sim_url), &env);
    let trace_id = traced_request(&proc, "always-on").await;
    assert!(server_span(&receiver, &trace_id).await.is_some());
    proc.stop().await;
    // Off, whatever the caller's sampled flag says.
    for (sampler, arg) in [
        ("parentbased_always_off", None),
        ("traceidratio", Some("0")),
    ] {
        let mut env = quick(&receiver.endpoint);
        env.push(("OTEL_TRACES_SAMPLER", sampler.to_owned()));
        env.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a.to_owned())));
        let (proc, _sim) = with_env(&env).await;
        let trace_id = traced_request(&proc, "sampled-off").await;
        proc.stop().await;
        assert!(
            receiver
                .spans(&format!("trace_id={trace_id}"), 0, Duration::ZERO)
                .await
                .is_empty(),
            "{sampler}"
        );
    }
    assert_refused(
        &[EP, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
        "OTEL_TRACES_SAMPLER=jaeger_remote",
    );
    assert_refused(
        &[
            EP,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ],
        "OTEL_TRACES_SAMPLER_ARG=1.5",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_bsp_and_span_limit_variables_are_honoured() {
    let receiver = OtlpReceiver::start();
    let mut env = quick(&receiver.endpoint);
    env.extend(owned(&[
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3"),
    ]));
    let (proc, _sim) = with_env(&env).await;
    let trace_id = traced_request(&proc, "batch-user").await;
    let server = server_span(&receiver, &trace_id).await.unwrap();
    assert!(
        server["attributes"].as_object().unwrap().len() <= 3
            && server["dropped_attributes_count"].as_u64().unwrap() > 0,
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=3: {server}"
    );
    proc.stop().await;
    let requests = receiver.requests().await;
    assert!(requests.len() >= 3, "{requests:#?}");
    assert!(
        requests.iter().all(|r| r["spans"].as_u64().unwrap() <= 2),
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=2: {requests:#?}"
    );

    // OTEL_BSP_EXPORT_TIMEOUT gives up on a hanging export before the exporter's own timeout.
    receiver.set_mode("hang").await;
    let mut env = quick(&receiver.endpoint);
    env.push(("OTEL_BSP_EXPORT_TIMEOUT", "500".to_owned()));
    let (proc, _sim) = with_env(&env).await;
    traced_request(&proc, "bsp-timeout").await;
    assert!(
        logged(&proc, "OTEL_BSP_EXPORT_TIMEOUT", Duration::from_secs(8))
            .await
            .is_some(),
        "{}",
        proc.output()
    );
    proc.stop().await;
    receiver.set_mode("ok").await;

    assert_refused(
        &[EP, ("OTEL_BSP_MAX_QUEUE_SIZE", "many")],
        "OTEL_BSP_MAX_QUEUE_SIZE",
    );
    assert_refused(
        &[EP, ("OTEL_BSP_SCHEDULE_DELAY", "0")],
        "OTEL_BSP_SCHEDULE_DELAY",
    );
    assert_refused(
        &[EP, ("OTEL_SPAN_LINK_COUNT_LIMIT", "-1")],
        "OTEL_SPAN_LINK_COUNT_LIMIT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_the_broker_does_not_use_are_named_in_one_warning() {
    let receiver = OtlpReceiver::start();
    let mut env = quick(&receiver.endpoint);
    env.extend(owned(&[
        ("OTEL_LOG_LEVEL", "debug"),
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_EXPORTER_OTLP_ENDPIONT", "http://typo:4318"),
        ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "64"),
        // INSECURE only decides for a scheme-less gRPC endpoint; here it contradicts http://.
        ("OTEL_EXPORTER_OTLP_INSECURE", "false"),
    ]));
    let (proc, _sim) = with_env(&env).await;
    let (_, output) = proc.stop().await;
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect();
    let unused: Vec<&&str> = warnings
        .iter()
        .filter(|l| l.contains("not used by this broker"))
        .collect();
    assert_eq!(unused.len(), 1, "{warnings:#?}");
    for name in [
        "OTEL_LOG_LEVEL",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPIONT",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    ] {
        assert!(unused[0].contains(name), "{name}: {}", unused[0]);
    }
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("OTEL_EXPORTER_OTLP_INSECURE=false is not used")),
        "{warnings:#?}"
    );
    // Traces off for want of an endpoint: the variables set are named, not ignored.
    let (proc, _sim) = with_env(&owned(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).await;
    let (_, output) = proc.stop().await;
    assert!(
        output.lines().any(|l| l.contains("\"level\":\"WARN\"")
            && l.contains("traces are off: no OTLP endpoint")
            && l.contains("OTEL_EXPORTER_OTLP_PROTOCOL")),
        "{output}"
    );
    assert_refused(
        &[EP, ("OTEL_EXPORTER_OTLP_INSECURE", "yes")],
        "OTEL_EXPORTER_OTLP_INSECURE",
    );
    assert_refused(
        &[EP, ("OTEL_CONFIG_FILE", "/etc/otel.yaml")],
        "OTEL_CONFIG_FILE",
    );
}

#[test]
fn check_config_refuses_what_serve_refuses() {
    let dir = default_config_dir();
    let (code, out, err) = run_broker(
        &[
            "check-config",
            "--config",
            dir.join("config.toml").to_str().unwrap(),
        ],
        &[EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
        "{err}"
    );
    let (code, out, _) = run_broker(
        &[
            "check-config",
            "--config",
            dir.join("config.toml").to_str().unwrap(),
        ],
        &[EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("# traces: OTLP/gRPC to http://127.0.0.1:9/"),
        "{out}"
    );
}
