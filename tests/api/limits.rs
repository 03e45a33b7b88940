use serde_json::json;

use testkit::prelude::*;

#[tokio::test]
async fn per_user_limit_admits_exactly_burst_then_429() {
    let app = spawn_app(TestConfig {
        per_user: Some((10, 3)),
        ..TestConfig::default()
    })
    .await;
    let token = session("alice");
    for remaining in [2, 1, 0] {
        let resp = app.token(&token).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-policy"], "\"user\";q=3;w=60");
        let rl = resp.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            rl.starts_with(&format!("\"user\";r={remaining};t=")),
            "{rl}"
        );
    }
    let limited = app.token(&token).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers()["ratelimit-policy"], "\"user\";q=3;w=60");
    assert!(
        limited.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"user\";r=0;t=")
    );
    assert_problem(limited, 429, "rate_limited").await;
    // Cache hits count too, but other users are unaffected.
    assert_eq!(app.token(&session("bob")).await.status(), 200);
    assert_eq!(app.sim.minted(), 2);
}

#[tokio::test]
async fn per_user_limit_also_covers_the_backend_route() {
    let app = spawn_app(TestConfig {
        per_user: Some((10, 2)),
        ..TestConfig::default()
    })
    .await;
    let statuses = futures_util::future::join_all(
        (0..3).map(|_| app.backend(BACKEND_SECRET, json!({"userId": "svc-user"}))),
    )
    .await
    .into_iter()
    .map(|r| r.status().as_u16())
    .collect::<Vec<_>>();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn upstream_limit_counts_only_intellia_calls() {
    let app = spawn_app(TestConfig {
        upstream: Some((1, 2)),
        ..TestConfig::default()
    })
    .await;
    assert_eq!(app.token(&session("u1")).await.status(), 200);
    assert_eq!(app.token(&session("u2")).await.status(), 200);
    // Cache hits do not touch the upstream budget.
    assert_eq!(app.token(&session("u1")).await.status(), 200);
    let third_user = app.token(&session("u3")).await;
    assert!(
        third_user.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"upstream\"")
    );
    assert_problem(third_user, 429, "rate_limited").await;
    assert_eq!(app.sim.calls(), 2);
}

#[tokio::test]
async fn burst_of_concurrent_requests_admits_exactly_burst() {
    let app = spawn_app(TestConfig {
        per_user: Some((1, 5)),
        ..TestConfig::default()
    })
    .await;
    let token = session("racer");
    let statuses = futures_util::future::join_all((0..25).map(|_| app.token(&token)))
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect::<Vec<_>>();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20,
        "{statuses:?}"
    );
}
