//! OpenTelemetry traces from the real binary to a real OTLP receiver (the Python fixture decodes
//! the protobuf, over HTTP and gRPC): the caller's trace continued but never its sampling decision,
//! spans with the HTTP semantic conventions' attributes and no secret, no spans for probes and
//! scrapes, exemplars on the latency histogram, and a broken collector that shows in the log, in
//! `broker_trace_export_failures_total` and in `doctor` without costing any latency.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use testkit::otlp::OtlpReceiver;
use testkit::prelude::*;

/// The broker binary serving `dir/config.toml` with these extra environment variables.
pub(crate) fn broker(dir: &std::path::Path, env: &[(&str, String)]) -> BrokerProcess {
    let mut cmd = Command::new(broker_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("config.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    BrokerProcess::spawn_captured(cmd, "info")
}

/// A test broker's config (Intellia at `sim_url`) in a fresh directory.
pub(crate) fn config_dir(cfg: &TestConfig, sim_url: &str) -> std::path::PathBuf {
    let dir = temp_dir();
    write_config(cfg, &dir, sim_url, "127.0.0.1:0");
    dir
}

/// Exports every 50 ms, so spans arrive while the test waits.
pub(crate) fn quick(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ]
}

pub(crate) fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

pub(crate) fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// The admin listener's `/metrics` of a broker started with `admin = true`.
pub(crate) async fn metrics_of(proc: &BrokerProcess) -> String {
    http_client()
        .get(proc.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of an unlabelled series in a Prometheus exposition.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Waits until the broker's output holds `needle` (up to `limit`); returns how long it took.
pub(crate) async fn logged(
    proc: &BrokerProcess,
    needle: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if proc.output().contains(needle) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_trace_is_continued_carried_to_intellia_and_holds_no_secret() {
    let receiver = OtlpReceiver::start();
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    let dir = config_dir(&TestConfig::default(), &sim_url);
    let mut env = quick(&receiver.endpoint);
    env.push(("OTEL_SERVICE_NAME", "broker-under-test".to_owned()));
    let proc = broker(&dir, &env);
    let client = http_client();

    // Browser path: a session JWT, a caller's traceparent (sampled).
    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let session_token = session("trace-user");
    let resp = client
        .post(proc.url("/v1/token?debug=1"))
        .bearer_auth(&session_token)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let minted: Value = resp.json().await.unwrap();
    let minted_token = minted["token"].as_str().unwrap().to_owned();

    // Intellia's request carried the same trace, with the broker's attempt span as parent.
    let upstream = sim.last_traceparent().expect("Intellia got a traceparent");
    let parts: Vec<&str> = upstream.split('-').collect();
    assert_eq!(parts.len(), 4, "{upstream}");
    assert_eq!(
        parts[1], trace_id,
        "Intellia's traceparent continues the caller's trace"
    );
    assert_ne!(parts[2], caller_span);

    // The server span ends last; once it is there, so are its children.
    let _ = receiver
        .spans(
            &format!("trace_id={trace_id}&kind=SPAN_KIND_SERVER"),
            1,
            Duration::from_secs(15),
        )
        .await;
    let spans = receiver
        .spans(&format!("trace_id={trace_id}"), 7, Duration::from_secs(5))
        .await;
    let server = named(&spans, "POST /v1/token");
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(server["kind"], "SPAN_KIND_SERVER");
    assert_eq!(
        server["parent_span_id"],
        caller_span.as_str(),
        "the caller's span is the parent"
    );
    // The HTTP server attributes of the semantic conventions.
    let attributes = &server["attributes"];
    assert_eq!(attributes["http.request.method"], "POST");
    assert_eq!(attributes["http.route"], "/v1/token");
    assert_eq!(attributes["http.response.status_code"], json!(200));
    assert_eq!(attributes["client.address"], "127.0.0.1");
    assert_eq!(attributes["url.scheme"], "http");
    assert_eq!(attributes["request_id"].as_str().map(str::len), Some(36));
    assert_eq!(attributes["user_id"], minted["userId"]);
    // Only these: the log line's fields are not copied onto the span.
    let mut names: Vec<&str> = attributes
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "client.address",
            "http.request.method",
            "http.response.status_code",
            "http.route",
            "request_id",
            "url.scheme",
            "user_id"
        ]
    );
    assert!(
        server["events"].as_array().is_none_or(Vec::is_empty),
        "{server}"
    );
    assert_eq!(
        server["resource_attributes"]["service.name"],
        "broker-under-test"
    );
    assert_eq!(
        server["resource_attributes"]["service.version"],
        env!("CARGO_PKG_VERSION")
    );
    let server_id = server["span_id"].as_str().unwrap();
    for name in [
        "session.verify",
        "limits.check",
        "cache.get_or_mint",
        "intellia.assume_role",
        "intellia.attempt",
    ] {
        assert!(
            !named(&spans, name).is_empty(),
            "no {name} span in {spans:#?}"
        );
    }
    assert_eq!(
        named(&spans, "session.verify")[0]["parent_span_id"],
        server_id
    );
    // The HTTP client attributes on the call to Intellia.
    let attempt = named(&spans, "intellia.attempt")[0];
    assert_eq!(attempt["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(
        attempt["span_id"], parts[2],
        "Intellia's parent is the attempt span"
    );
    let sim_address = reqwest::Url::parse(&sim_url).unwrap();
    let a = &attempt["attributes"];
    assert_eq!(a["http.request.method"], "POST");
    assert_eq!(a["server.address"], "127.0.0.1");
    assert_eq!(a["server.port"], json!(sim_address.port().unwrap()));
    assert_eq!(
        a["url.full"],
        format!("{}/orgs/{ORG}/assume-role", sim_url.trim_end_matches('/'))
    );
    assert_eq!(a["http.response.status_code"], json!(200));
    assert!(
        a.get("http.request.resend_count").is_none(),
        "a first attempt is no resend: {a}"
    );
    assert_eq!(
        named(&spans, "cache.get_or_mint")[0]["attributes"]["result"],
        "miss"
    );

    // Sidecar path with an e-mail, then a second (cached) request: more spans, still no secret.
    let resp = client
        .post(proc.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .json(&json!({"userId": "side-user", "userEmail": "side.user@example.com", "userName": "Side User"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let side_token = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = receiver
        .spans("name=POST%20/v1/backend/token", 1, Duration::from_secs(15))
        .await;
    let all = serde_json::to_string(&receiver.spans("", 0, Duration::ZERO).await).unwrap();
    assert_no_secret(
        &all,
        &[
            API_KEY.to_owned(),
            HS_SECRET.to_owned(),
            BACKEND_SECRET.to_owned(),
            session_token,
            minted_token,
            side_token,
            "side.user@example.com".to_owned(),
            "debug=1".to_owned(),
        ],
        "exported spans",
    );

    // The request's log line names the trace.
    let (_, output) = proc.stop().await;
    let line = output
        .lines()
        .find(|l| l.contains("\"message\":\"request\"") && l.contains("/v1/token\""))
        .expect("a request log line");
    assert!(
        line.contains(&format!("\"trace_id\":\"{trace_id}\"")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_counts_its_resends() {
    let receiver = OtlpReceiver::start();
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    sim.push_faults([intellia_token_broker::testing::Fault::status(503)]);
    let dir = config_dir(
        &TestConfig {
            max_retries: 1,
            ..TestConfig::default()
        },
        &sim_url,
    );
    let proc = broker(&dir, &quick(&receiver.endpoint));
    let resp = http_client()
        .post(proc.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .json(&json!({"userId": "retried"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let attempts = receiver
        .spans("name=intellia.attempt", 2, Duration::from_secs(15))
        .await;
    let mut seen: Vec<(Value, Value)> = attempts
        .iter()
        .map(|s| {
            (
                s["attributes"]["http.response.status_code"].clone(),
                s["attributes"]["http.request.resend_count"].clone(),
            )
        })
        .collect();
    seen.sort_by_key(|(status, _)| status.as_i64());
    assert_eq!(
        seen,
        [(json!(200), json!(1)), (json!(503), Value::Null)],
        "{attempts:#?}"
    );
    // A warning becomes an event of the span it was logged in; an INFO line does not.
    let event_names = |s: &Value| -> Vec<String> {
        s["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let failed = attempts
        .iter()
        .find(|s| s["attributes"]["http.response.status_code"] == json!(503))
        .unwrap();
    assert_eq!(
        event_names(failed),
        ["Intellia answered with an error"],
        "{failed}"
    );
    let call = receiver
        .spans("name=intellia.assume_role", 1, Duration::from_secs(15))
        .await;
    assert!(
        call.iter().all(|s| event_names(s).is_empty()),
        "the INFO line \"retrying Intellia\" became a span event: {call:#?}"
    );
}

/// Sends `n` unauthenticated token requests, each with a sampled `traceparent` of its own, and
/// returns how many of their traces were exported (the broker stopped first, so its queue is
/// flushed).
async fn exported_share(
    env: &[(&str, String)],
    cfg: &TestConfig,
    ids: impl Iterator<Item = String>,
) -> (usize, usize) {
    let receiver = OtlpReceiver::start();
    let dir = config_dir(cfg, "http://127.0.0.1:9");
    let mut all = quick(&receiver.endpoint);
    all.extend(env.iter().cloned());
    let proc = broker(&dir, &all);
    let client = http_client();
    let mut sent = HashSet::new();
    for trace_id in ids {
        let resp = client
            .post(proc.url("/v1/token"))
            .header("traceparent", format!("00-{trace_id}-{}-01", random_hex(8)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "no credential");
        sent.insert(trace_id);
    }
    let (status, _) = proc.stop().await;
    assert!(status.success());
    let spans = receiver.spans("", 0, Duration::ZERO).await;
    let exported: HashSet<String> = spans
        .iter()
        .filter(|s| s["kind"] == "SPAN_KIND_SERVER")
        .map(|s| s["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(exported.is_subset(&sent), "only the callers' traces");
    (exported.len(), sent.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_raise_the_exported_share_with_a_sampled_traceparent() {
    // sample_ratio = 0: nothing is exported, whatever the callers ask.
    let none = TestConfig {
        extra_toml: "[telemetry]\nsample_ratio = 0\n".to_owned(),
        ..TestConfig::default()
    };
    let (exported, sent) = exported_share(&[], &none, (0..40).map(|_| random_hex(16))).await;
    assert_eq!(
        (exported, sent),
        (0, 40),
        "sample_ratio = 0 exports nothing"
    );

    // A ratio of 0.5: about half, by trace id, however the ids are chosen. The standard ratio
    // sampler reads the low 64 bits of the id, so ids with those bits zero would all pass it.
    let half = [("OTEL_TRACES_SAMPLER_ARG", "0.5".to_owned())];
    // (Two halves of UUIDs: a whole v4 UUID has fixed bits, its variant in the id's low half.)
    let (random, n) = exported_share(
        &half,
        &TestConfig::default(),
        (0..200).map(|_| format!("{}{}", random_hex(8), random_hex(8))),
    )
    .await;
    let (chosen, m) = exported_share(
        &half,
        &TestConfig::default(),
        (0..200).map(|_| format!("{}0000000000000000", random_hex(8))),
    )
    .await;
    // Binomial(200, 0.5): 70..130 holds with a probability above 1 - 1e-5.
    assert!(
        (70..=130).contains(&random),
        "{random} of {n} random ids exported"
    );
    assert!(
        (70..=130).contains(&chosen),
        "{chosen} of {m} chosen ids exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_scrapes_are_not_traced_and_latency_has_exemplars() {
    let receiver = OtlpReceiver::start();
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = config_dir(
        &TestConfig {
            admin: true,
            ..TestConfig::default()
        },
        &sim_url,
    );
    let proc = broker(&dir, &quick(&receiver.endpoint));
    let client = http_client();
    let probe_trace = random_hex(16);
    for path in ["/healthz", "/readyz", "/healthz"] {
        let resp = client
            .get(proc.url(path))
            .header(
                "traceparent",
                format!("00-{probe_trace}-{}-01", random_hex(8)),
            )
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success() || resp.status() == 503);
    }
    let _ = metrics_of(&proc).await;
    let trace_id = random_hex(16);
    let resp = client
        .post(proc.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .header("traceparent", format!("00-{trace_id}-{}-01", random_hex(8)))
        .json(&json!({"userId": "exemplar-user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let server = receiver
        .spans(
            &format!("trace_id={trace_id}&kind=SPAN_KIND_SERVER"),
            1,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(server.len(), 1);
    let text = metrics_of(&proc).await;
    let (_, output) = proc.stop().await;
    let spans = receiver.spans("", 0, Duration::ZERO).await;
    for s in &spans {
        let route = s["attributes"]["http.route"].as_str().unwrap_or("");
        assert!(
            !["/healthz", "/readyz", "/metrics"].contains(&route),
            "a probe was traced: {s}"
        );
    }
    assert!(
        !spans.iter().any(|s| s["trace_id"] == probe_trace.as_str()),
        "a probe continued its caller's trace"
    );
    // The probe's log line still names the caller's trace.
    assert!(
        output
            .lines()
            .any(|l| l.contains("/healthz") && l.contains(&probe_trace)),
        "{output}"
    );
    // The sampled request's bucket carries its trace id (OpenMetrics exemplar).
    let exemplar = text.lines().find(|l| {
        l.starts_with("broker_request_duration_seconds_bucket{")
            && l.contains("route=\"/v1/backend/token\"")
            && l.contains(&format!("# {{trace_id=\"{trace_id}\"}}"))
    });
    assert!(exemplar.is_some(), "no exemplar for {trace_id} in\n{text}");
    assert!(text.contains("# UNIT broker_request_duration_seconds seconds"));
    assert!(text.contains("broker_request_duration_seconds_bucket{le=\"0.00001\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_shows_in_the_log_the_metric_and_doctor() {
    let receiver = OtlpReceiver::start();
    receiver.set_mode("500").await;
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = config_dir(
        &TestConfig {
            admin: true,
            ..TestConfig::default()
        },
        &sim_url,
    );
    let proc = broker(&dir, &quick(&receiver.endpoint));
    let client = http_client();
    for i in 0..4 {
        let resp = client
            .post(proc.backend_url("/v1/backend/token"))
            .bearer_auth(BACKEND_SECRET)
            .json(&json!({"userId": format!("failing-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // One export per request: several failures within the minute.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = metrics_of(&proc).await;
    let failures = sample(&text, "broker_trace_export_failures_total");
    assert!(failures >= 2.0, "{failures} failures counted\n{text}");
    let (_, output) = proc.stop().await;
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("trace export to the OTLP collector failed"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one WARN a minute at most: {warnings:#?}"
    );
    assert!(
        warnings[0].contains("\"level\":\"WARN\""),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("500"), "the cause: {}", warnings[0]);

    // doctor checks the collector: FAIL while it fails, ok once it accepts.
    let doctor = |env: Vec<(&'static str, String)>| {
        let dir = dir.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(broker_bin())
                    .args(["doctor", "--config"])
                    .arg(dir.join("config.toml"))
                    .envs(env)
                    .env_remove("BROKER_CONFIG")
                    .env_remove("RUST_LOG")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone())];
    let failing = doctor(env.clone()).await;
    let stdout = String::from_utf8_lossy(&failing.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|l| l.contains(&format!("traces {}/v1/traces", receiver.endpoint)))
        .unwrap_or_else(|| panic!("no traces line in\n{stdout}"));
    assert!(line.starts_with("FAIL") && line.contains("500"), "{line}");
    assert_ne!(failing.status.code(), Some(0));
    receiver.set_mode("ok").await;
    let healthy = doctor(env).await;
    let stdout = String::from_utf8_lossy(&healthy.stdout).into_owned();
    let line = stdout
        .lines()
        .find(|l| l.contains("traces "))
        .unwrap_or_else(|| panic!("no traces line in\n{stdout}"));
    assert!(
        line.starts_with("ok") && line.contains("OTLP/HTTP"),
        "{line}"
    );
    // Without traces, doctor has no collector to check.
    let off = doctor(Vec::new()).await;
    assert!(!String::from_utf8_lossy(&off.stdout).contains("traces "));
}

/// Median and 90th percentile of `n` sequential cached token requests, in milliseconds.
async fn latency(proc: &BrokerProcess, n: usize) -> (f64, f64) {
    let client = http_client();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let resp = client
            .post(proc.backend_url("/v1/backend/token"))
            .bearer_auth(BACKEND_SECRET)
            .json(&json!({"userId": format!("lat-{}", i % 4)}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n * 9 / 10])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_hanging_collector_costs_no_latency() {
    let started = Instant::now();
    let receiver = OtlpReceiver::start();
    receiver.set_mode("hang").await;
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let n = 60;

    let baseline = broker(&config_dir(&TestConfig::default(), &sim_url), &[]);
    let (base_p50, base_p90) = latency(&baseline, n).await;
    baseline.stop().await;

    // A small queue, a short schedule and a short timeout, so the queue fills and spans are
    // dropped during the run.
    let quick = |endpoint: String, protocol: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "32".to_owned()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8".to_owned()),
        ]
    };
    for (what, endpoint, protocol) in [
        (
            "hanging collector",
            receiver.endpoint.clone(),
            "http/protobuf",
        ),
        (
            "hanging gRPC collector",
            receiver.grpc_endpoint.clone(),
            "grpc",
        ),
        (
            "closed port",
            format!("http://127.0.0.1:{closed}"),
            "http/protobuf",
        ),
        (
            "closed gRPC port",
            format!("http://127.0.0.1:{closed}"),
            "grpc",
        ),
    ] {
        let proc = broker(
            &config_dir(&TestConfig::default(), &sim_url),
            &quick(endpoint, protocol),
        );
        let (p50, p90) = latency(&proc, n).await;
        assert!(
            p50 <= base_p50 * 3.0 + 15.0 && p90 <= base_p90 * 3.0 + 40.0,
            "{what}: p50 {p50:.1} ms / p90 {p90:.1} ms against {base_p50:.1} / {base_p90:.1} ms without traces"
        );
        let (status, output) = proc.stop().await;
        assert!(status.success(), "{what}: {output}");
    }
    // The exporters did try, and their requests hung.
    let stats = receiver.stats().await;
    assert!(
        stats["by_outcome"]["hang"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}
