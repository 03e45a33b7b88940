//! Benchmarks: hot-path micro costs (limiter check, session verify, cache hit, limiter memory) and
//! the HTTP cost of the token route against a trivial route of the same server, measured in one
//! run so the machine's noise affects both alike. Run with `cargo bench` (or
//! `./scripts/bench.sh`); results are written to stdout as a Markdown table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::app::{Application, BuildOptions};
use intellia_token_broker::cache::TokenCache;
use intellia_token_broker::config::{CacheSettings, PerMinuteLimit, RateLimitSettings, Settings};
use intellia_token_broker::intellia::MintedToken;
use intellia_token_broker::intellia::simulator::{Simulator, SimulatorConfig};
use intellia_token_broker::limits::Limits;
use intellia_token_broker::metrics::Metrics;
use intellia_token_broker::session::SessionVerifier;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;

const SECRET: &str = "bench-hs256-secret-that-is-long-enough-0123456789";

fn per_op(total: Duration, n: u64) -> String {
    let ns = total.as_nanos() as f64 / n as f64;
    if ns < 1000.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{:.2} µs", ns / 1000.0)
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn claims(sub: &str) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"iss": "https://bench.example", "aud": "chat-widget", "sub": sub, "email": "a@b.co", "name": "A", "exp": now + 3600, "iat": now})
}

async fn micro(rows: &mut Vec<(String, String)>) {
    // Limiter check: one key, a bucket large enough never to reject.
    let limits = Limits::new(&RateLimitSettings {
        per_user: Some(PerMinuteLimit {
            per_minute: u32::MAX / 2,
            burst: u32::MAX / 2,
        }),
        per_ip: None,
        upstream: None,
    });
    let key = "user-1234567890".to_owned();
    let n = 2_000_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(limits.check_user(black_box(&key)).await.ok());
    }
    rows.push((
        "local limiter check (existing key)".into(),
        per_op(start.elapsed(), n),
    ));

    // Limiter memory per active key.
    let limits = Limits::new(&RateLimitSettings {
        per_user: Some(PerMinuteLimit {
            per_minute: 10,
            burst: 5,
        }),
        per_ip: None,
        upstream: None,
    });
    let keys: Vec<String> = (0..200_000).map(|i| format!("user-{i:012}")).collect();
    let before = rss_bytes();
    for k in &keys {
        let _ = limits.check_user(k).await;
    }
    let after = rss_bytes();
    rows.push((
        "limiter memory per active key (RSS delta / 200k keys, 17-byte ids)".into(),
        format!(
            "{} bytes",
            (after.saturating_sub(before)) / keys.len() as u64
        ),
    ));

    // HS256 session verification through the broker's verifier.
    let settings: Settings = Settings::from_toml_with_env(
        r#"
[server]
listen = "127.0.0.1:0"
[intellia]
organization_id = "org"
api_key_env = "UNUSED"
[[session.jwt]]
issuer = "https://bench.example"
audience = "chat-widget"
hs256_secret_file = "/dev/null"
algorithms = ["HS256"]
"#,
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let verifier = SessionVerifier::new(
        &settings.session,
        &http,
        &Arc::new(Metrics::new()),
        std::collections::HashMap::from([(
            0,
            intellia_token_broker::secrets::SecretCell::with_value(
                intellia_token_broker::secrets::SecretSource::Inline,
                SecretString::from(SECRET),
            ),
        )]),
    )
    .unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let n = 100_000;
    for _ in 0..1000 {
        verifier.verify(&token).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        black_box(verifier.verify(black_box(&token)).await.unwrap());
    }
    rows.push((
        "HS256 session verify, previously seen token (verified-session cache)".into(),
        per_op(start.elapsed(), n),
    ));

    // First-seen HS256 tokens (distinct tokens, so the verified-session cache never hits).
    let fresh: Vec<String> = (0..20_000)
        .map(|i| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(&format!("user-{i}")),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    for t in &fresh {
        black_box(verifier.verify(black_box(t)).await.unwrap());
    }
    rows.push((
        "HS256 session verify, first-seen token (MAC + claims + cache insert)".into(),
        per_op(start.elapsed(), fresh.len() as u64),
    ));

    // RS256 through the broker's verifier, keys from a JWKS served on loopback.
    let jwks: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwks.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let doc = json!({"keys": [jwks["rsa-1"].clone()]}).to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let server = actix_web::HttpServer::new(move || {
        let doc = doc.clone();
        actix_web::App::new().route(
            "/jwks.json",
            actix_web::web::get().to(move || {
                let doc = doc.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("application/json")
                        .body(doc)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    let rs_settings = Settings::from_toml_with_env(
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[intellia]
organization_id = "org"
api_key_env = "UNUSED"
[[session.jwt]]
issuer = "https://bench.example"
audience = "chat-widget"
jwks_url = "{jwks_url}"
algorithms = ["RS256"]
"#
        ),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    let rs_verifier = SessionVerifier::new(
        &rs_settings.session,
        &intellia_token_broker::http_client::builder()
            .build()
            .unwrap(),
        &Arc::new(Metrics::new()),
        std::collections::HashMap::new(),
    )
    .unwrap();
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa-private.pem"
    ))
    .unwrap();
    let rs_key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let rs_tokens: Vec<String> = (0..2_000)
        .map(|i| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&header, &claims(&format!("rs-user-{i}")), &rs_key).unwrap()
        })
        .collect();
    rs_verifier.verify(&rs_tokens[0]).await.unwrap(); // loads the JWKS
    let start = Instant::now();
    for t in &rs_tokens[1..] {
        black_box(rs_verifier.verify(black_box(t)).await.unwrap());
    }
    rows.push((
        "RS256 session verify, first-seen token, 2048-bit key".into(),
        per_op(start.elapsed(), rs_tokens.len() as u64 - 1),
    ));
    let n = 200_000;
    let seen = &rs_tokens[1];
    let start = Instant::now();
    for _ in 0..n {
        black_box(rs_verifier.verify(black_box(seen)).await.unwrap());
    }
    rows.push((
        "RS256 session verify, previously seen token (verified-session cache)".into(),
        per_op(start.elapsed(), n),
    ));

    // Token cache hit.
    let cache = TokenCache::new(&CacheSettings {
        enabled: true,
        min_remaining_secs: 900,
        max_entries: 10_000,
    });
    let mint = || async {
        Ok(MintedToken {
            token: SecretString::from("sim_token"),
            expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(7200),
            user_id: "alice".into(),
            organization_id: "org".into(),
            role: "chat".into(),
        })
    };
    cache.get_or_mint("alice", mint).await.unwrap();
    let n = 500_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(cache.get_or_mint(black_box("alice"), mint).await.unwrap());
    }
    rows.push(("token cache hit".into(), per_op(start.elapsed(), n)));
}

/// Shared (Redis) limiter decisions from one broker: 64 concurrent callers over one multiplexed
/// connection to a local `redis-server`, as many user keys as callers.
async fn redis_limiter(rows: &mut Vec<(String, String)>) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut server) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        rows.push(("Redis limiter".into(), "skipped: no redis-server".into()));
        return;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settings = intellia_token_broker::config::RedisSettings {
        url: format!("redis://127.0.0.1:{port}"),
        on_unavailable: intellia_token_broker::config::RedisFallback::Deny,
        timeout_ms: 1000,
        replicas: 1,
        key_prefix: "bench".into(),
        cache_secret_file: None,
    };
    let metrics = Arc::new(Metrics::new());
    let store = intellia_token_broker::redis_store::RedisStore::start(
        &settings,
        &SecretString::from("bench"),
        Arc::clone(&metrics),
    )
    .unwrap();
    while !metrics.encode().lines().any(|l| l == "broker_redis_up 1") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limits = Arc::new(Limits::with_shared(
        &RateLimitSettings {
            per_user: Some(PerMinuteLimit {
                per_minute: 1_000_000,
                burst: 1_000_000,
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
                    let key = format!("user-{caller}");
                    let mut latencies = Vec::with_capacity(100_000);
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        limits.check_user(&key).await.unwrap();
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
    let _ = server.kill();
    let _ = server.wait();
}

struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    duration: Duration,
) -> Load {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let token = token.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(50_000);
            while Instant::now() < deadline {
                let start = Instant::now();
                let req = match &token {
                    Some(t) => client.post(&url).bearer_auth(t),
                    None => client.get(&url),
                };
                let resp = req.send().await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
                let _ = resp.bytes().await.unwrap();
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
    Load {
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

async fn http(rows: &mut Vec<(String, String)>) {
    let sim = Simulator::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        SimulatorConfig::default(),
    )
    .unwrap();
    let sim_url = sim.base_url();
    tokio::spawn(sim.server);
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[intellia]
base_url = "{sim_url}"
organization_id = "org"
api_key_env = "UNUSED"
[[session.jwt]]
issuer = "https://bench.example"
audience = "chat-widget"
hs256_secret_file = "/dev/null"
algorithms = ["HS256"]
[cache]
enabled = true
"#
    );
    let settings = Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
    let app = Application::build(
        settings,
        BuildOptions {
            api_key: Some(SecretString::from("bench-key")),
            session_secrets: std::collections::HashMap::from([(
                0,
                intellia_token_broker::secrets::SecretCell::with_value(
                    intellia_token_broker::secrets::SecretSource::Inline,
                    SecretString::from(SECRET),
                ),
            )]),
            ..BuildOptions::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", app.public_addr());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // Warm up: first mint, connections, caches.
    let _ = load(
        &client,
        &format!("{base}/v1/token"),
        Some(&token),
        8,
        Duration::from_secs(1),
    )
    .await;
    let secs = Duration::from_secs(5);
    let health = load(&client, &format!("{base}/healthz"), None, 16, secs).await;
    let token_route = load(&client, &format!("{base}/v1/token"), Some(&token), 16, secs).await;
    rows.push((
        "GET /healthz, 1 worker, 16 connections".into(),
        format!(
            "{:.0} req/s, p50 {:?}, p99 {:?}",
            health.rps, health.p50, health.p99
        ),
    ));
    rows.push((
        "POST /v1/token cache hit (HS256 session), same server".into(),
        format!(
            "{:.0} req/s, p50 {:?}, p99 {:?}",
            token_route.rps, token_route.p50, token_route.p99
        ),
    ));
    rows.push((
        "token route throughput / healthz throughput".into(),
        format!("{:.2}", token_route.rps / health.rps),
    ));
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench absent; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    intellia_token_broker::http_client::install_crypto_provider();
    if std::env::var_os("RUST_LOG").is_some() {
        intellia_token_broker::telemetry::init(intellia_token_broker::telemetry::LogFormat::Pretty);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    runtime.block_on(micro(&mut rows));
    runtime.block_on(redis_limiter(&mut rows));
    runtime.block_on(http(&mut rows));
    println!("| measurement | result |\n|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
}
