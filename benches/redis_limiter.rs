//! Shared (Redis) limiter decisions from one broker against local `redis-server` processes:
//! throughput and latency at 8, 16 and 64 concurrent callers, each decision charging a per-IP and
//! a per-user bucket in one round trip (as a token request does), and Redis's own CPU while it
//! answers (the limit on this machine). Standalone, then a three-node cluster (one call per slot,
//! concurrently). `cargo bench --bench redis_limiter`; skipped with a note when `redis-server` is
//! not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::testing::UserId;
use intellia_token_broker::testing::{Limits, RequestKeys};
use testkit::procfs;
use testkit::redis::{RedisCluster, RedisServer};

async fn limits_for(url: &str, cluster: bool, per_ip: bool) -> Arc<Limits> {
    let unlimited =
        serde_json::json!({ "per_minute": 1_000_000_000u32, "burst": 1_000_000_000u32 });
    let rate_limit = if per_ip {
        serde_json::json!({ "per_user": unlimited, "per_ip": unlimited })
    } else {
        serde_json::json!({ "per_user": unlimited })
    };
    testkit::redis::shared_limits(url, cluster, rate_limit)
        .await
        .0
}

/// `callers` tasks deciding for `duration`, each its own user and address: sorted latencies.
async fn run(limits: &Arc<Limits>, duration: Duration, callers: usize) -> Vec<Duration> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let limits = Arc::clone(limits);
        tasks.push(tokio::spawn(async move {
            let user = UserId::parse(format!("user-{caller}")).unwrap();
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, (caller / 256) as u8, caller as u8));
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let start = Instant::now();
                let keys = RequestKeys {
                    ip: Some(ip),
                    user: Some(&user),
                };
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

async fn measure(
    rows: &mut Vec<(String, String)>,
    what: &str,
    limits: &Arc<Limits>,
    pids: &[u32],
    counts: &[usize],
) {
    let _ = run(limits, Duration::from_secs(1), 16).await;
    let duration = Duration::from_secs(4);
    for &callers in counts {
        let cpu_before: f64 = pids.iter().map(|p| procfs::cpu_secs(*p)).sum();
        let all = run(limits, duration, callers).await;
        let cpu = (pids.iter().map(|p| procfs::cpu_secs(*p)).sum::<f64>() - cpu_before)
            / duration.as_secs_f64();
        rows.push((
            format!("{what}, {callers} concurrent callers"),
            format!(
                "{:.0} decisions/s, p50 {:.2} ms, p99 {:.2} ms, redis-server CPU {:.0} % of one core",
                all.len() as f64 / duration.as_secs_f64(),
                all[all.len() / 2].as_secs_f64() * 1000.0,
                all[all.len() * 99 / 100].as_secs_f64() * 1000.0,
                cpu * 100.0
            ),
        ));
        eprintln!("{:?}", rows.last());
    }
}

async fn redis_limiter(rows: &mut Vec<(String, String)>) {
    let Ok(server) = RedisServer::builder().try_start() else {
        rows.push(("Redis limiter".into(), "skipped: no redis-server".into()));
        return;
    };
    let limits = limits_for(&server.url(), false, false).await;
    measure(
        rows,
        "standalone Redis, per-user bucket only (as before issue 15)",
        &limits,
        &[server.pid().unwrap()],
        &[64],
    )
    .await;
    drop(limits);
    let limits = limits_for(&server.url(), false, true).await;
    measure(
        rows,
        "standalone Redis, per-IP + per-user in one decision (a token request)",
        &limits,
        &[server.pid().unwrap()],
        &[8, 16, 64],
    )
    .await;
    drop(limits);
    drop(server);

    let cluster = RedisCluster::start();
    let limits = limits_for(&cluster.urls()[0], true, true).await;
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    measure(
        rows,
        "three-node Redis Cluster on the same 2 cores, per-IP + per-user (one call per slot, concurrently)",
        &limits,
        &pids,
        &[64],
    )
    .await;
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
