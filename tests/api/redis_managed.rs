//! Redis as managed services run it, with real `redis-server` processes made here: TLS only with
//! a CA made by the test and an ACL user (password from `password_file`, rotated live), and a
//! three-node Redis Cluster made with `redis-cli --cluster create`. Two broker replicas against
//! each: exact admission across replicas and shards, a node killed mid-run and a wrong password
//! each behaving as `on_unavailable` says, within `timeout_ms` plus a margin.

use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::testing::SimulatorState;
use testkit::app::simulator_config;
use testkit::prelude::*;
use testkit::redis::{RedisCluster, RedisServer};

/// `timeout_ms` of every replica here, and the most any request may take when Redis fails.
const TIMEOUT_MS: u64 = 100;
const SLOWEST_ALLOWED: Duration = Duration::from_millis(TIMEOUT_MS + 500);

async fn replicas(n: usize, cfg: impl Fn() -> TestConfig) -> (Vec<TestApp>, Arc<SimulatorState>) {
    let (url, sim) = start_simulator(simulator_config(&[]));
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(spawn_app_with_simulator(cfg(), url.clone(), sim.clone()).await);
    }
    (apps, sim)
}

fn metric_line(app: &TestApp, line: &str) -> bool {
    app.parts.metrics.encode().lines().any(|l| l == line)
}

async fn wait_for_redis(app: &TestApp) {
    for _ in 0..200 {
        if metric_line(app, "broker_redis_up 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the broker never connected to Redis:\n{}",
        app.parts.metrics.encode()
    );
}

async fn wait_for_metric(app: &TestApp, prefix: &str) {
    for _ in 0..200 {
        if app
            .parts
            .metrics
            .encode()
            .lines()
            .any(|l| l.starts_with(prefix))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {prefix}:\n{}", app.parts.metrics.encode());
}

/// The TLS-only server's `[redis]` section: the ACL user in the URL, the password in a file.
fn tls_section(redis: &RedisServer, password_file: &std::path::Path, mode: &str) -> String {
    let (user, _) = redis.user().unwrap();
    format!(
        "\n[redis]\nurl = \"rediss://{user}@127.0.0.1:{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\non_unavailable = \"{mode}\"\ntimeout_ms = {TIMEOUT_MS}\nreplicas = 2\n",
        redis.port(),
        password_file.display(),
        redis.tls().unwrap().ca.display(),
    )
}

fn cluster_section(cluster: &RedisCluster, mode: &str) -> String {
    format!(
        "\n[redis]\nurl = \"{}\"\ncluster = true\non_unavailable = \"{mode}\"\ntimeout_ms = {TIMEOUT_MS}\nreplicas = 2\n",
        cluster.urls()[0]
    )
}

async fn statuses(apps: &[TestApp], sessions: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for (n, token) in sessions.iter().enumerate() {
        out.push(apps[n % apps.len()].token(token).await.status().as_u16());
    }
    out
}

fn ok_count(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_acl_user_and_test_ca_shares_exact_limits_and_survives_password_rotation() {
    let redis = RedisServer::builder()
        .tls()
        .user("broker", "first-password")
        .start();
    let dir = temp_dir();
    let password_file = dir.join("redis-password");
    std::fs::write(&password_file, "first-password\n").unwrap();
    let (apps, sim) = replicas(2, || TestConfig {
        per_user: Some((1, 4)),
        extra_toml: tls_section(&redis, &password_file, "deny"),
        ..TestConfig::default()
    })
    .await;
    for app in &apps {
        wait_for_redis(app).await;
    }
    // B + k = 4 + 3 requests of one user, alternating replicas: exactly B, through TLS + ACL.
    let one = vec![session("tls-user"); 7];
    let got = statuses(&apps, &one).await;
    assert_eq!(ok_count(&got), 4, "{got:?}");
    assert!(got[4..].iter().all(|s| *s == 429), "{got:?}");
    assert_eq!(sim.calls(), 1, "one mint across both replicas");
    let keys = redis.cli(&["--scan"]);
    assert!(
        keys.contains("itb:{"),
        "the broker's keys are in Redis: {keys}"
    );

    // Rotation: the server accepts both passwords, the file changes, then the old password is
    // removed and the broker's connections are killed. It must come back with the new one.
    redis.cli(&["ACL", "SETUSER", "broker", ">second-password"]);
    std::fs::write(&password_file, "second-password\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.cli(&["ACL", "SETUSER", "broker", "<first-password"]);
    let killed = std::process::Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port().to_string(),
            "--tls",
            "--cacert",
        ])
        .arg(&redis.tls().unwrap().ca)
        .args([
            "--user",
            "broker",
            "--pass",
            "second-password",
            "--no-auth-warning",
        ])
        .args(["CLIENT", "KILL", "USER", "broker"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&killed.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
            >= 2,
        "the replicas' connections were killed: {killed:?}"
    );
    let mut served = 0;
    for n in 0..40 {
        let resp = apps[n % 2]
            .token(&session(&format!("after-rotation-{n}")))
            .await;
        if resp.status() == 200 {
            served += 1;
        }
        if served >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 6, "requests failed after the password rotated");
    for app in &apps {
        wait_for_redis(app).await;
        assert!(
            metric_line(
                app,
                "broker_secret_reloads_total{secret=\"redis.password\"} 1"
            ),
            "{}",
            app.parts.metrics.encode()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_denies_quickly_or_falls_back_as_configured() {
    let redis = RedisServer::builder()
        .tls()
        .user("broker", "right-password")
        .start();
    let dir = temp_dir();
    let wrong = dir.join("wrong-password");
    std::fs::write(&wrong, "wrong-password").unwrap();

    let (deny, sim) = replicas(2, || TestConfig {
        per_user: Some((600, 100)),
        extra_toml: tls_section(&redis, &wrong, "deny"),
        ..TestConfig::default()
    })
    .await;
    // Let the replicas try (and fail) to authenticate.
    for app in &deny {
        wait_for_metric(app, "broker_redis_failures_total{reason=\"auth\"}").await;
    }
    for n in 0..10 {
        let started = Instant::now();
        let resp = deny[n % 2].token(&session(&format!("deny-{n}"))).await;
        let took = started.elapsed();
        assert_problem(resp, 503, "upstream_unavailable").await;
        assert!(took < SLOWEST_ALLOWED, "request {n} took {took:?}");
    }
    assert_eq!(
        sim.calls(),
        0,
        "nothing minted while limits cannot be checked"
    );
    for app in &deny {
        let text = app.parts.metrics.encode();
        assert!(text.contains("broker_redis_up 0"), "{text}");
        assert!(
            text.contains("broker_redis_failures_total{reason=\"auth\"}"),
            "an auth failure is named as such: {text}"
        );
    }

    let (local, _) = replicas(2, || TestConfig {
        per_user: Some((600, 100)),
        extra_toml: tls_section(&redis, &wrong, "local"),
        ..TestConfig::default()
    })
    .await;
    for n in 0..10 {
        let started = Instant::now();
        let status = local[n % 2]
            .token(&session(&format!("local-{n}")))
            .await
            .status();
        let took = started.elapsed();
        assert_eq!(status, 200, "request {n} falls back to local limits");
        assert!(took < SLOWEST_ALLOWED, "request {n} took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_limits_exact_across_shards_and_survives_a_killed_node() {
    let mut cluster = RedisCluster::start();
    let (apps, sim) = replicas(2, || TestConfig {
        // Per minute 1: nothing refills during the test.
        per_user: Some((1, 3)),
        per_ip: Some((1, 8)),
        // The outage phase comes from other addresses (X-Forwarded-For from loopback).
        trusted_proxies: vec!["127.0.0.1/32".into()],
        extra_toml: cluster_section(&cluster, "local"),
        ..TestConfig::default()
    })
    .await;
    for app in &apps {
        wait_for_redis(app).await;
    }
    // One user, B + k = 3 + 2 requests over both replicas: exactly 3 (the user's shard decides);
    // all 5 count against the shared per-IP bucket (another shard), as on one node.
    let got = statuses(&apps, &vec![session("cluster-user"); 5]).await;
    assert_eq!(ok_count(&got), 3, "{got:?}");
    // Six other users from the same address: the per-IP bucket has 8 - 5 = 3 left.
    let others: Vec<String> = (0..6).map(|n| session(&format!("neighbour-{n}"))).collect();
    let got = statuses(&apps, &others).await;
    assert_eq!(ok_count(&got), 3, "{got:?}");
    assert!(got[3..].iter().all(|s| *s == 429), "{got:?}");
    assert_eq!(sim.calls(), 4, "one mint per admitted user");
    // The keys really are spread over the shards.
    let shards_with_keys = cluster
        .nodes()
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(shards_with_keys >= 2, "keys on {shards_with_keys} shard(s)");
    for app in &apps {
        let text = app.parts.metrics.encode();
        assert!(
            !text.contains("broker_redis_failures_total{reason="),
            "no failure while the cluster is healthy (no CROSSSLOT, MOVED followed): {text}"
        );
    }

    // A node dies mid-run: every request is still answered (local fallback), none slower than
    // the timeout plus a margin, and the state is visible. Each request from its own address and
    // user, so its keys are spread over all three shards.
    cluster.node_mut(1).kill();
    let mut slowest = Duration::ZERO;
    for n in 0..40 {
        let app = &apps[n % 2];
        let started = Instant::now();
        let status = app
            .client
            .post(app.url("/v1/token"))
            .bearer_auth(session(&format!("during-{n}")))
            .header("X-Forwarded-For", format!("10.9.0.{n}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, 200, "request {n} during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < SLOWEST_ALLOWED,
        "slowest request with a node down took {slowest:?}"
    );
    for app in &apps {
        let text = app.parts.metrics.encode();
        assert!(text.contains("broker_redis_up 0"), "{text}");
        assert!(
            text.contains("broker_redis_failures_total{reason=\"cluster\"}")
                || text.contains("broker_redis_failures_total{reason=\"connection\"}")
                || text.contains("broker_redis_failures_total{reason=\"timeout\"}"),
            "{text}"
        );
    }

    // The node comes back and rejoins: the replicas share limits again by themselves.
    cluster.node_mut(1).restart();
    cluster.wait_ok(Duration::from_secs(20));
    for app in &apps {
        wait_for_redis(app).await;
    }
}

/// `doctor` connects as `serve` does: TLS with the test's CA, the ACL user from the URL and the
/// password from `password_file`; a cluster's state is checked. A wrong password is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_tls_acl_password_file_and_cluster_state() {
    let redis = RedisServer::builder()
        .tls()
        .user("broker", "doctor-password-0123")
        .start();
    let cluster = RedisCluster::start();
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let run = |dir: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(broker_bin())
                .arg("doctor")
                .arg("--config")
                .arg(dir.join("config.toml"))
                .env_remove("BROKER_CONFIG")
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let redis_line = |out: &str| {
        out.lines()
            .find(|l| l.contains(" redis "))
            .unwrap_or_default()
            .to_owned()
    };
    for (password, expect) in [
        ("doctor-password-0123", "ok "),
        ("not-the-password", "credentials refused"),
    ] {
        let dir = temp_dir();
        let file = dir.join("redis-password");
        std::fs::write(&file, password).unwrap();
        let cfg = TestConfig {
            extra_toml: tls_section(&redis, &file, "local"),
            ..TestConfig::default()
        };
        write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
        let out = run(dir).await.unwrap();
        let line = redis_line(&out);
        assert!(line.contains(expect), "{expect}: {out}");
        assert!(!out.contains(password), "the password is printed: {out}");
    }
    let dir = temp_dir();
    let cfg = TestConfig {
        extra_toml: cluster_section(&cluster, "local"),
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let out = run(dir).await.unwrap();
    assert!(
        redis_line(&out).contains("cluster_state:ok"),
        "cluster state checked: {out}"
    );
}
