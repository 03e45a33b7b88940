//! Several broker instances sharing a real `redis-server` (started here on a free port, killed
//! to test outages): exact limits across replicas, one mint per user across replicas, encrypted
//! tokens in Redis, and the `local` / `deny` fallbacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::testing::SimulatorState;
use serde_json::Value;
use testkit::app::simulator_config;
use testkit::prelude::*;
use testkit::redis::RedisServer;

/// The `[redis]` section of a replica: shared limits and cache through `redis`, `mode` when it is
/// down.
fn section(redis: &RedisServer, mode: &str) -> String {
    format!(
        "\n[redis]\nurl = \"{}\"\non_unavailable = \"{mode}\"\ntimeout_ms = 100\nreplicas = 2\n",
        redis.url()
    )
}

async fn replicas(n: usize, cfg: impl Fn() -> TestConfig) -> (Vec<TestApp>, Arc<SimulatorState>) {
    let (url, sim) = start_simulator(simulator_config(&[]));
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(spawn_app_with_simulator(cfg(), url.clone(), sim.clone()).await);
    }
    (apps, sim)
}

async fn wait_for_redis(app: &TestApp) {
    for _ in 0..100 {
        if app
            .parts
            .metrics
            .encode()
            .lines()
            .any(|l| l == "broker_redis_up 1")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the broker never connected to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spread_over_replicas_admits_exactly_burst() {
    let redis = RedisServer::start();
    let (apps, _) = replicas(3, || TestConfig {
        per_user: Some((10, 5)),
        extra_toml: section(&redis, "local"),
        ..TestConfig::default()
    })
    .await;
    for app in &apps {
        wait_for_redis(app).await;
    }
    let token = session("spread");
    let mut statuses = Vec::new();
    for n in 0..12 {
        let resp = apps[n % 3].token(&token).await;
        if resp.status() == 200 {
            assert_eq!(resp.headers()["ratelimit-policy"], "\"user\";q=5;w=60");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Redis holds hashed keys only: no user id in clear.
    let keys = redis.cli(&["--scan"]);
    assert!(keys.contains("itb:{"), "{keys}");
    assert!(!keys.contains("spread"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_across_replicas_make_one_upstream_call() {
    let redis = RedisServer::start();
    let (apps, sim) = replicas(3, || TestConfig {
        extra_toml: section(&redis, "local"),
        ..TestConfig::default()
    })
    .await;
    for app in &apps {
        wait_for_redis(app).await;
    }
    sim.set_latency(Duration::from_millis(300));
    let token = session("crowd");
    let bodies = futures_util::future::join_all((0..50).map(|n| {
        let app = &apps[n % 3];
        let token = &token;
        async move {
            let resp = app.token(token).await;
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    }))
    .await;
    assert_eq!(sim.calls(), 1, "one Intellia call for the whole crowd");
    assert!(bodies.iter().all(|b| b["token"] == bodies[0]["token"]));

    // The token is in Redis, encrypted: neither it nor the user id shows in redis-cli output.
    let minted = bodies[0]["token"].as_str().unwrap();
    let mut dump = redis.cli(&["--scan"]);
    for key in dump.clone().lines() {
        dump.push_str(&redis.cli(&["GET", key]));
        dump.push_str(&redis.cli(&["--no-raw", "GET", key]));
    }
    assert!(
        dump.contains(":token"),
        "a shared token entry exists: {dump}"
    );
    assert!(!dump.contains(minted), "the raw token is in Redis");
    assert!(
        !dump.contains(&minted[4..20]),
        "part of the raw token is in Redis"
    );
    assert!(!dump.contains("crowd"), "the user id is in Redis");
}

async fn timed(app: &TestApp, sub: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = app.token(&session(sub)).await.status().as_u16();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = RedisServer::start();
    let (apps, _) = replicas(2, || TestConfig {
        per_user: Some((600, 4)),
        extra_toml: section(&redis, "local"),
        ..TestConfig::default()
    })
    .await;
    for app in &apps {
        wait_for_redis(app).await;
    }
    for n in 0..10 {
        assert_eq!(timed(&apps[n % 2], &format!("before-{n}")).await.0, 200);
    }
    redis.kill();
    let mut slowest = Duration::ZERO;
    for n in 0..30 {
        let (status, took) = timed(&apps[n % 2], &format!("during-{n}")).await;
        assert_eq!(status, 200, "request {n} during the outage");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(600),
        "slowest request during the outage took {slowest:?}"
    );
    // Fallback: each replica enforces half of the limit (burst 4 / 2 replicas).
    let token = session("local-share");
    let statuses: Vec<u16> = futures_util::future::join_all((0..4).map(|_| apps[0].token(&token)))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    let metrics = apps[0].parts.metrics.encode();
    assert!(
        metrics.contains("broker_redis_up 0"),
        "the degraded state is visible"
    );

    // Redis returns: the brokers reconnect by themselves and share limits again.
    redis.restart();
    let mut shared_again = false;
    for attempt in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let token = session(&format!("back-{attempt}"));
        let mut ok = 0;
        for n in 0..6 {
            if apps[n % 2].token(&token).await.status() == 200 {
                ok += 1;
            }
        }
        if ok == 4 {
            shared_again = true;
            break;
        }
    }
    assert!(shared_again, "shared limits never came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_deny_answers_503_quickly() {
    let mut redis = RedisServer::start();
    let (apps, sim) = replicas(1, || TestConfig {
        per_user: Some((600, 100)),
        extra_toml: section(&redis, "deny"),
        ..TestConfig::default()
    })
    .await;
    wait_for_redis(&apps[0]).await;
    assert_eq!(apps[0].token(&session("d0")).await.status(), 200);
    redis.kill();
    let calls = sim.calls();
    for n in 0..10 {
        let started = Instant::now();
        let resp = apps[0].token(&session(&format!("deny-{n}"))).await;
        assert!(started.elapsed() < Duration::from_millis(600));
        assert_problem(resp, 503, "upstream_unavailable").await;
    }
    assert_eq!(
        sim.calls(),
        calls,
        "nothing minted while limits cannot be checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_starts_and_serves_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let section = section(&redis, "local");
    redis.kill();
    let (apps, _) = replicas(1, || TestConfig {
        per_user: Some((600, 10)),
        extra_toml: section.clone(),
        ..TestConfig::default()
    })
    .await;
    assert_eq!(apps[0].token(&session("early")).await.status(), 200);
    redis.restart();
    wait_for_redis(&apps[0]).await;
    assert_eq!(apps[0].token(&session("later")).await.status(), 200);
}

/// Concurrent decisions of one replica leave in shared script calls (many requests per
/// `EVALSHA`); within a call each request is still decided after the one before it, so a user's
/// burst admits exactly its size, the remaining counts are each given out once, and the shared
/// per-IP bucket counts every request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_batched_into_shared_script_calls_stay_exact() {
    use intellia_token_broker::testing::UserId;
    use intellia_token_broker::testing::{LimitError, RequestKeys};
    use std::net::{IpAddr, Ipv4Addr};

    let redis = RedisServer::start();
    let (limits, _) = testkit::redis::shared_limits(
        &redis.url(),
        false,
        serde_json::json!({
            "per_user": { "per_minute": 1, "burst": 5 },
            "per_ip": { "per_minute": 1, "burst": 1000 },
        }),
    )
    .await;
    let users: Vec<UserId> = (0..20)
        .map(|u| UserId::parse(format!("batched-{u}")).unwrap())
        .collect();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    let calls_before = redis.script_calls();
    // 20 users × 12 requests, interleaved, all in flight at once.
    let outcomes = futures_util::future::join_all((0..240).map(|n| {
        let limits = Arc::clone(&limits);
        let user = users[n % 20].clone();
        tokio::spawn(async move {
            let keys = RequestKeys {
                ip: Some(ip),
                user: Some(&user),
            };
            (n % 20, limits.check(keys).await)
        })
    }))
    .await;
    let calls = redis.script_calls() - calls_before;
    for u in 0..20 {
        let mut remaining: Vec<u32> = Vec::new();
        let mut refused = 0;
        for (user, outcome) in outcomes.iter().map(|o| o.as_ref().unwrap()) {
            if *user != u {
                continue;
            }
            match outcome {
                Ok(Some(status)) => remaining.push(status.remaining),
                Err(LimitError::Limited(status)) => {
                    assert_eq!(status.name, "user");
                    refused += 1;
                }
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        remaining.sort_unstable();
        // The per-IP bucket is far larger, so the user's is the tightest each time.
        assert_eq!(remaining, vec![0, 1, 2, 3, 4], "user {u}");
        assert_eq!(refused, 7, "user {u}");
    }
    // The per-IP bucket comes first, so each of the 240 requests charged it exactly once (refused
    // or not): 1000 - 240 - 2 after two more.
    let probe = UserId::parse("batched-probe".to_owned()).unwrap();
    let after = limits
        .check(RequestKeys {
            ip: Some(ip),
            user: Some(&probe),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.name, "user");
    let ip_only = limits
        .check(RequestKeys {
            ip: Some(ip),
            user: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ip_only.name, ip_only.remaining), ("ip", 758));
    assert!(
        calls < 120,
        "240 concurrent decisions took {calls} script calls: not batched"
    );
}

/// The attack of the last review: the shared cache stored a token under the `userId` Intellia
/// echoed, so an answer naming someone else (a faulty or compromised upstream, a proxy in
/// between) put one person's token in another's slot, for every replica. The answer must name the
/// user asked for: otherwise 502 `upstream_rejected`, and nothing is cached, in memory or Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_naming_another_user_is_refused_and_never_cached() {
    use intellia_token_broker::testing::Fault;
    let redis = RedisServer::start();
    let (apps, sim) = replicas(2, || TestConfig {
        extra_toml: section(&redis, "deny"),
        ..TestConfig::default()
    })
    .await;
    for app in &apps {
        wait_for_redis(app).await;
    }
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let body = |user: &str| {
        serde_json::json!({
            "token": "sim_minted_for_mallory_DO_NOT_LEAK", "expiresAt": expires,
            "userId": user, "organizationId": ORG, "role": "chat",
        })
        .to_string()
    };
    let keys_before = redis.cli(&["DBSIZE"]);
    sim.set_always(Some(Fault::body(body("victim"))));
    let resp = apps[0].token(&session("mallory")).await;
    assert_problem(resp, 502, "upstream_rejected").await;
    // The sidecar route alike.
    let resp = apps[0]
        .backend(BACKEND_SECRET, serde_json::json!({"userId": "mallory"}))
        .await;
    assert_problem(resp, 502, "upstream_rejected").await;
    assert_eq!(
        redis.cli(&["DBSIZE"]),
        keys_before,
        "nothing written to Redis"
    );
    // The victim, on either replica, gets a token of their own.
    sim.set_always(None);
    let calls = sim.calls();
    for app in &apps {
        let resp = app.token(&session("victim")).await;
        assert_eq!(resp.status(), 200);
        let token: Value = resp.json().await.unwrap();
        assert_ne!(token["token"], "sim_minted_for_mallory_DO_NOT_LEAK");
        assert_eq!(token["userId"], "victim");
    }
    assert_eq!(sim.calls(), calls + 1, "one mint for the victim, shared");
    // An answer naming the right user is taken as before.
    sim.set_always(Some(Fault::body(body("mallory"))));
    assert_eq!(apps[1].token(&session("mallory")).await.status(), 200);
}
