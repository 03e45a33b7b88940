use std::time::Duration;

use serde_json::Value;

use testkit::prelude::*;

#[tokio::test]
async fn a_fresh_token_is_reused_without_calling_intellia() {
    let app = spawn_app(TestConfig::default()).await;
    let first: Value = app.token(&session("alice")).await.json().await.unwrap();
    let second: Value = app.token(&session("alice")).await.json().await.unwrap();
    assert_eq!(first["token"], second["token"]);
    assert_eq!(first["expiresAt"], second["expiresAt"]);
    assert_eq!(app.sim.calls(), 1);
}

#[tokio::test]
async fn twenty_concurrent_requests_make_one_upstream_call() {
    let app = spawn_app(TestConfig::default()).await;
    app.sim.set_latency(Duration::from_millis(300));
    let token = session("crowd");
    let bodies = futures_util::future::join_all((0..20).map(|_| async {
        let resp = app.token(&token).await;
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    }))
    .await;
    assert_eq!(app.sim.calls(), 1);
    assert!(bodies.iter().all(|b| b["token"] == bodies[0]["token"]));
}

#[tokio::test]
async fn failed_mints_are_not_cached() {
    let app = spawn_app(TestConfig::default()).await;
    app.sim
        .push_faults([intellia_token_broker::testing::Fault::status(500)]);
    let failed = app.token(&session("alice")).await;
    assert_problem(failed, 503, "upstream_unavailable").await;
    let ok = app.token(&session("alice")).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(app.sim.calls(), 2);
}

#[tokio::test]
async fn disabled_cache_mints_every_time() {
    let app = spawn_app(TestConfig {
        cache: false,
        ..TestConfig::default()
    })
    .await;
    let first: Value = app.token(&session("alice")).await.json().await.unwrap();
    let second: Value = app.token(&session("alice")).await.json().await.unwrap();
    assert_ne!(first["token"], second["token"]);
    assert_eq!(app.sim.calls(), 2);
}

#[tokio::test]
async fn short_lived_upstream_tokens_are_not_served_from_cache() {
    use intellia_token_broker::testing::{KeyPolicy, SimulatorConfig};
    let (url, sim) = start_simulator(SimulatorConfig {
        keys: KeyPolicy::AnyNonEmpty,
        // Less than min_remaining_secs (900) left from the start.
        token_ttl: Duration::from_secs(600),
        ..SimulatorConfig::default()
    });
    let app = spawn_app_with_simulator(TestConfig::default(), url, sim).await;
    for _ in 0..2 {
        assert_eq!(app.token(&session("alice")).await.status(), 200);
    }
    assert_eq!(app.sim.calls(), 2);
}
