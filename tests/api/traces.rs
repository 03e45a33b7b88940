//! OpenTelemetry traces from the real binary to a real OTLP/HTTP receiver (the
//! Python fixture decodes the protobuf): the caller's trace continued, Intellia's request carries
//! it, the spans arrive without a secret, and a dead collector costs no latency.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use testkit::otlp::OtlpReceiver;
use testkit::prelude::*;

/// The broker binary serving `dir/config.toml` with these extra environment variables.
fn broker(dir: &std::path::Path, env: &[(&str, String)]) -> BrokerProcess {
    let mut cmd = Command::new(broker_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("config.toml"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    BrokerProcess::spawn_captured(cmd, "info")
}

fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_trace_is_continued_carried_to_intellia_and_holds_no_secret() {
    let receiver = OtlpReceiver::start();
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    write_config(&TestConfig::default(), &dir, &sim_url, "127.0.0.1:0");
    let proc = broker(
        &dir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
            ("OTEL_SERVICE_NAME", "broker-under-test".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    );
    let client = http_client();

    // Browser path: a session JWT, a caller's traceparent (sampled).
    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let session_token = session("trace-user");
    let resp = client
        .post(proc.url("/v1/token"))
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
    assert_eq!(
        server["attributes"]["http.response.status_code"],
        json!(200)
    );
    assert_eq!(server["attributes"]["route"], "/v1/token");
    assert_eq!(
        server["resource_attributes"]["service.name"],
        "broker-under-test"
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
    let attempt = named(&spans, "intellia.attempt")[0];
    assert_eq!(attempt["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(
        attempt["span_id"], parts[2],
        "Intellia's parent is the attempt span"
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

    let base_dir = temp_dir();
    write_config(&TestConfig::default(), &base_dir, &sim_url, "127.0.0.1:0");
    let baseline = broker(&base_dir, &[]);
    let (base_p50, base_p90) = latency(&baseline, n).await;
    baseline.stop().await;

    // A small queue and a short schedule, so the queue fills and spans are dropped during the run.
    let quick = |endpoint: String| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "32".to_owned()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8".to_owned()),
        ]
    };
    for (what, endpoint) in [
        ("hanging collector", receiver.endpoint.clone()),
        ("closed port", format!("http://127.0.0.1:{closed}")),
    ] {
        let dir = temp_dir();
        write_config(&TestConfig::default(), &dir, &sim_url, "127.0.0.1:0");
        let proc = broker(&dir, &quick(endpoint));
        let (p50, p90) = latency(&proc, n).await;
        assert!(
            p50 <= base_p50 * 3.0 + 15.0 && p90 <= base_p90 * 3.0 + 40.0,
            "{what}: p50 {p50:.1} ms / p90 {p90:.1} ms against {base_p50:.1} / {base_p90:.1} ms without traces"
        );
        let (status, output) = proc.stop().await;
        assert!(status.success(), "{what}: {output}");
    }
    // The exporter did try, and its requests hung.
    let stats = receiver.stats().await;
    assert!(
        stats["by_outcome"]["hang"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
