//! How Intellia's answers map to the broker's, and that its bodies never reach the client.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use intellia_token_broker::testing::{Fault, KeyPolicy, SimulatorConfig};
use serde_json::Value;

use testkit::prelude::*;

fn assert_no_upstream_body(body: &Value) {
    let text = body.to_string();
    for leak in [
        "simulated",
        "sim-5f3a",
        "invalid API key",
        "lacks assume_role",
        API_KEY,
    ] {
        assert!(!text.contains(leak), "{leak} leaked into {text}");
    }
}

#[tokio::test]
async fn wrong_api_key_is_502_upstream_rejected() {
    let (url, sim) = start_simulator(SimulatorConfig {
        keys: KeyPolicy::Keys(HashMap::from([("some-other-key".to_owned(), true)])),
        ..SimulatorConfig::default()
    });
    let app = spawn_app_with_simulator(TestConfig::default(), url, sim).await;
    let body = assert_problem(app.token(&session("alice")).await, 502, "upstream_rejected").await;
    assert_no_upstream_body(&body);
}

#[tokio::test]
async fn key_without_assume_role_is_502_upstream_rejected() {
    let (url, sim) = start_simulator(SimulatorConfig {
        keys: KeyPolicy::Keys(HashMap::from([(API_KEY.to_owned(), false)])),
        ..SimulatorConfig::default()
    });
    let app = spawn_app_with_simulator(TestConfig::default(), url, sim).await;
    let body = assert_problem(app.token(&session("alice")).await, 502, "upstream_rejected").await;
    assert_no_upstream_body(&body);
}

#[tokio::test]
async fn intellia_failures_map_to_the_error_table() {
    let app = spawn_app(TestConfig::default()).await;
    let cases = [
        (Fault::status(500), 503, "upstream_unavailable"),
        (Fault::status(503), 503, "upstream_unavailable"),
        (Fault::status(400), 502, "upstream_rejected"),
        (Fault::status(422), 502, "upstream_rejected"),
        (Fault::status(401), 502, "upstream_rejected"),
        (Fault::status(403), 502, "upstream_rejected"),
        (
            Fault {
                garbage: true,
                ..Fault::status(200)
            },
            502,
            "upstream_rejected",
        ),
    ];
    for (n, (fault, status, code)) in cases.into_iter().enumerate() {
        app.sim.push_faults([fault]);
        let body =
            assert_problem(app.token(&session(&format!("user{n}"))).await, status, code).await;
        assert_no_upstream_body(&body);
    }
}

#[tokio::test]
async fn intellia_429_passes_its_retry_after_on() {
    let app = spawn_app(TestConfig::default()).await;
    app.sim.push_faults([Fault::too_many(30)]);
    let resp = app.token(&session("alice")).await;
    assert_eq!(resp.headers()["retry-after"], "30");
    assert_problem(resp, 503, "upstream_unavailable").await;
}

#[tokio::test]
async fn intellia_429_retry_after_as_an_http_date_is_passed_on_in_seconds() {
    let app = spawn_app(TestConfig::default()).await;
    app.sim.push_faults([Fault {
        retry_after_date: Some(30),
        ..Fault::status(429)
    }]);
    let resp = app.token(&session("alice")).await;
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("delay-seconds to the client");
    // The date has whole-second resolution and a moment passes on the way.
    assert!((28..=31).contains(&secs), "Retry-After {secs}");
    assert_problem(resp, 503, "upstream_unavailable").await;
}

#[tokio::test]
async fn a_hanging_intellia_is_504_within_the_timeout() {
    let app = spawn_app(TestConfig {
        timeout_ms: 400,
        max_retries: 2,
        ..TestConfig::default()
    })
    .await;
    app.sim.push_faults([Fault::hang()]);
    let started = Instant::now();
    let resp = app.token(&session("alice")).await;
    let took = started.elapsed();
    assert_problem(resp, 504, "upstream_timeout").await;
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(app.sim.calls(), 1, "a timed-out attempt is not retried");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let app = spawn_app(TestConfig {
        max_retries: 2,
        ..TestConfig::default()
    })
    .await;
    app.sim
        .push_faults([Fault::status(502), Fault::too_many(1)]);
    let resp = app.token(&session("alice")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.sim.calls(), 3);
    // Non-retryable refusals are not retried.
    app.sim.push_faults([Fault::status(403)]);
    assert_eq!(app.token(&session("bob")).await.status(), 502);
    assert_eq!(app.sim.calls(), 4);
    // Retries are bounded.
    app.sim.push_faults([
        Fault::status(500),
        Fault::status(500),
        Fault::status(500),
        Fault::status(500),
    ]);
    assert_eq!(app.token(&session("carol")).await.status(), 503);
    assert_eq!(app.sim.calls(), 7);
}

#[tokio::test]
async fn unreachable_intellia_is_503() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_, sim) = start_simulator(SimulatorConfig::default());
    let app = spawn_app_with_simulator(TestConfig::default(), url, sim).await;
    assert_problem(
        app.token(&session("alice")).await,
        503,
        "upstream_unavailable",
    )
    .await;
}

#[tokio::test]
async fn the_circuit_breaker_opens_on_sustained_failure_and_closes_after_a_probe() {
    let app = spawn_app(TestConfig {
        breaker: Some((3, 1)),
        cache: false,
        ..TestConfig::default()
    })
    .await;
    app.sim.set_always(Some(Fault::status(500)));
    for n in 0..3 {
        assert_eq!(app.token(&session(&format!("f{n}"))).await.status(), 503);
    }
    assert_eq!(app.sim.calls(), 3);
    // Open: answered at once, with Retry-After, without calling Intellia.
    let started = Instant::now();
    let resp = app.token(&session("fast")).await;
    assert!(started.elapsed() < Duration::from_millis(200));
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    assert_problem(resp, 503, "upstream_unavailable").await;
    assert_eq!(app.sim.calls(), 3);
    // After the cool-down one probe goes through; Intellia has recovered, so the circuit closes.
    app.sim.set_always(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.token(&session("probe")).await.status(), 200);
    assert_eq!(app.token(&session("after")).await.status(), 200);
    assert_eq!(app.sim.calls(), 5);
}

#[tokio::test]
async fn retries_stay_within_the_overall_deadline() {
    let app = spawn_app(TestConfig {
        timeout_ms: 400,
        deadline_ms: Some(700),
        max_retries: 5,
        ..TestConfig::default()
    })
    .await;
    app.sim.set_latency(Duration::from_millis(300));
    app.sim.set_always(Some(Fault::status(500)));
    let started = Instant::now();
    let resp = app.token(&session("slow-failures")).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1100), "{took:?}");
    assert!([503, 504].contains(&resp.status().as_u16()));
    let calls = app.sim.calls();
    assert!((2..=3).contains(&calls), "{calls} attempts within 700 ms");
}
