//! Shared (Redis) limiter decisions from one broker against a local `redis-server`: throughput
//! and latency at several concurrencies. `cargo bench --bench redis_limiter`; skipped with a note
//! when `redis-server` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::config::{Count, PerMinuteLimit, RateLimitSettings, RedisSettings};
use intellia_token_broker::identity::UserId;
use intellia_token_broker::limits::{Limits, RequestKeys};
use intellia_token_broker::metrics::Metrics;
use intellia_token_broker::redis::RedisStore;
use testkit::redis::RedisServer;

/// Shared (Redis) limiter decisions from one broker: 64 concurrent callers over one multiplexed
/// connection to a local `redis-server`, as many user keys as callers.
async fn redis_limiter(rows: &mut Vec<(String, String)>) {
    let Ok(server) = RedisServer::builder().try_start() else {
        rows.push(("Redis limiter".into(), "skipped: no redis-server".into()));
        return;
    };
    let settings: RedisSettings = serde_json::from_value(serde_json::json!({
        "url": server.url(),
        "on_unavailable": "deny",
        "timeout_ms": 1000,
        "key_prefix": "bench",
    }))
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = RedisStore::start(&settings, Arc::clone(&metrics)).unwrap();
    while !metrics.encode().lines().any(|l| l == "broker_redis_up 1") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limits = Arc::new(Limits::new(
        &RateLimitSettings {
            per_user: Some(PerMinuteLimit {
                per_minute: Count::of(1_000_000),
                burst: Count::of(1_000_000),
            }),
            per_ip: None,
            upstream: None,
        },
        Some(store),
        1,
    ));
    let duration = Duration::from_secs(4);
    let run = |duration: Duration, callers: usize| {
        let limits = Arc::clone(&limits);
        async move {
            let deadline = Instant::now() + duration;
            let mut tasks = Vec::new();
            for caller in 0..callers {
                let limits = Arc::clone(&limits);
                tasks.push(tokio::spawn(async move {
                    let user = UserId::parse(format!("user-{caller}")).unwrap();
                    let keys = RequestKeys {
                        ip: None,
                        user: Some(&user),
                    };
                    let mut latencies = Vec::with_capacity(100_000);
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        limits.check(keys).await.unwrap();
                        latencies.push(start.elapsed());
                    }
                    latencies
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all.sort();
            all
        }
    };
    let _ = run(Duration::from_secs(1), 16).await;
    for callers in [8, 16, 64] {
        let all = run(duration, callers).await;
        rows.push((
            format!("Redis limiter decisions, {callers} concurrent callers, one connection"),
            format!(
                "{:.0} decisions/s, p50 {:?}, p99 {:?}",
                all.len() as f64 / duration.as_secs_f64(),
                all[all.len() / 2],
                all[all.len() * 99 / 100]
            ),
        ));
    }
    drop(server);
}

fn main() {
    let Some(runtime) = testkit::bench::runtime() else {
        return;
    };
    let mut rows = Vec::new();
    runtime.block_on(redis_limiter(&mut rows));
    println!("| measurement | result |\n|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
}
