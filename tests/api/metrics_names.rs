//! The metric families the chart's alerts and dashboard may use (`tests/deploy/metrics.txt`) are the ones a live broker exposes, with the new histograms filled and the alerts' series present at zero.

use intellia_token_broker::testing::{IssuerIndexLabels, IssuerLabels, LimitLabels, SecretLabels};
use testkit::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_the_chart_names_is_exposed() {
    let app = spawn_app(TestConfig {
        admin: true,
        ..TestConfig::default()
    })
    .await;
    assert_eq!(app.token(&session("metrics-user")).await.status(), 200);
    // Families that get their first series on events this test does not cause (a limit hit, a
    // JWKS issuer, a rotation): one series each, so their names show.
    let m = &app.parts.metrics;
    m.rate_limited
        .get_or_create(&LimitLabels { limit: "user" })
        .inc();
    m.jwks_fetches
        .get_or_create(&IssuerLabels {
            issuer: "0".into(),
            result: "ok",
        })
        .inc();
    m.jwks_last_success
        .get_or_create(&IssuerIndexLabels { issuer: "0".into() })
        .set(0);
    m.secret_reloads
        .get_or_create(&SecretLabels { secret: "api_key" })
        .inc();
    m.secret_reload_failures
        .get_or_create(&SecretLabels { secret: "api_key" })
        .inc();
    // This broker runs without Redis.
    m.observe_redis("limits", std::time::Duration::from_millis(1));
    m.count_redis_failure("timeout");
    // This broker asks no site ([[session.endpoint]]).
    m.observe_session_endpoint(0, "signed_in", std::time::Duration::from_millis(1));
    let text = app.metrics_text().await;
    let listed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/deploy/metrics.txt"
    ))
    .unwrap();
    let mut missing = Vec::new();
    for line in listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut words = line.split_whitespace();
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        // prometheus-client names a counter's family without `_total` in TYPE.
        let family = name
            .strip_suffix("_total")
            .filter(|_| kind == "counter")
            .unwrap_or(name);
        // An info metric (`broker_build_info`) is typed `info`; Prometheus reads it as a gauge.
        let exposed = text.contains(&format!("# TYPE {family} {kind}"))
            || text.contains(&format!("\n{name}{{"))
            || text.contains(&format!("\n{name} "));
        if !exposed {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "not exposed: {missing:?}\n{text}");
    for series in [
        "broker_request_duration_seconds_count{route=\"/v1/token\",status=\"200\"} 1",
        "broker_session_verify_duration_seconds_count{source=\"jwt\"} 1",
        // Resolves a cache hit (about 10 µs) from a mint, with units for the OpenMetrics reader.
        "broker_request_duration_seconds_bucket{le=\"0.00001\",route=\"/v1/token\",status=\"200\"}",
        "# UNIT broker_request_duration_seconds seconds",
        // At zero before the first event, for the alerts' rates and ratios.
        "broker_requests_total{route=\"/v1/token\",code=\"upstream_unavailable\"} 0",
        "broker_upstream_requests_total{status_class=\"5xx\"} 0",
        "broker_cache_requests_total{result=\"miss\"} 1",
        "broker_trace_export_failures_total ",
        "broker_build_info{version=\"",
        "\",revision=\"",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
}
