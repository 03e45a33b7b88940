//! The benchmark fixture: the release broker and the Intellia simulator as real processes on
//! loopback, configured from a scratch directory, for the load benchmark and the soak. The bench
//! process serves the JWKS for RS256 sessions itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::consts::{API_KEY, AUDIENCE, BACKEND_SECRET, HS_SECRET, ORG};
use crate::idp::{fixture_jwks, serve_jwks};
use crate::jwt::{rsa_key, sign};
use crate::loadgen::{Request, request};
use crate::process::{BrokerProcess, broker_bin, free_addr, wait_ok};

/// The runtime a benchmark's `main` runs on, or `None` when the target was started without
/// `--bench`: `cargo test --benches` runs bench targets that way, and they do nothing then.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime"),
    )
}

/// The HS256 issuer of a bench broker.
pub const HS_ISSUER: &str = "https://hs.bench.example";
/// The RS256 issuer of a bench broker (keys from the bench process's JWKS).
pub const RS_ISSUER: &str = "https://rs.bench.example";

pub struct Fixture {
    pub dir: PathBuf,
    pub simulator: BrokerProcess,
    jwks: std::net::SocketAddr,
    rsa: EncodingKey,
    hs: EncodingKey,
}

impl Fixture {
    /// Starts the simulator (a real process) and the JWKS endpoint.
    pub async fn start(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("itb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        for (file, value) in [
            ("api-key", API_KEY),
            ("hs256", HS_SECRET),
            ("backend", BACKEND_SECRET),
        ] {
            std::fs::write(dir.join(file), value).expect("secret file");
        }
        // Every fixture key, cacheable for an hour as a real provider would serve them.
        let keys: Vec<_> = fixture_jwks()
            .as_object()
            .expect("the fixture JWKS is an object")
            .values()
            .cloned()
            .collect();
        let jwks = serve_jwks(json!({ "keys": keys }), Some(3600)).await;
        let addr = free_addr();
        let mut cmd = Command::new(broker_bin());
        cmd.args(["simulate-intellia", "--listen", &addr.to_string()])
            .args(["--organization-id", ORG, "--api-key-file"])
            .arg(dir.join("api-key"));
        let simulator = BrokerProcess::spawn_to_files(
            cmd,
            addr,
            &dir.join("simulator.out"),
            &dir.join("simulator.log"),
        );
        wait_ok(
            addr,
            "/__simulator/stats",
            Instant::now(),
            Duration::from_secs(10),
        )
        .await;
        Fixture {
            dir,
            simulator,
            jwks,
            rsa: rsa_key("rsa-private.pem"),
            hs: EncodingKey::from_secret(HS_SECRET.as_bytes()),
        }
    }

    /// A complete config: HS256 and RS256 sessions, the backend route on `backend`, the cache,
    /// `intellia` lines added to that table, and `tail` (e.g. `[rate_limit.*]` tables) at the end.
    pub fn config(
        &self,
        name: &str,
        listen: std::net::SocketAddr,
        backend: std::net::SocketAddr,
        intellia: &str,
        tail: &str,
    ) -> PathBuf {
        let d = self.dir.display();
        let text = format!(
            r#"
[server]
listen = "{listen}"
shutdown_grace_secs = 2
drain_delay_secs = 0

[intellia]
base_url = "http://{sim}"
organization_id = "{ORG}"
api_key_file = "{d}/api-key"
timeout_ms = 1000
max_retries = 1
{intellia}

[[session.jwt]]
issuer = "{HS_ISSUER}"
audience = "{AUDIENCE}"
hs256_secret_file = "{d}/hs256"
algorithms = ["HS256"]
user_id_prefix = "hs:"

[[session.jwt]]
issuer = "{RS_ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "http://{jwks}/jwks.json"
algorithms = ["RS256"]
user_id_prefix = "rs:"

[backend]
listen = "{backend}"
secret_file = "{d}/backend"

[cache]
enabled = true

{tail}
"#,
            sim = self.simulator.addr,
            jwks = self.jwks,
        );
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("config file");
        path
    }

    /// Starts a broker configured by [`Fixture::config`] and returns it with its start-up time
    /// (spawn to `/readyz` 200). Its stdout is `{name}.log`, its stderr `{name}.stderr`.
    pub async fn broker(
        &self,
        name: &str,
        intellia: &str,
        tail: &str,
    ) -> (BrokerProcess, Duration) {
        self.broker_with_env(name, intellia, tail, &[]).await
    }

    /// [`Fixture::broker`] with these environment variables set (`RUST_LOG`, `OTEL_*`).
    pub async fn broker_with_env(
        &self,
        name: &str,
        intellia: &str,
        tail: &str,
        env: &[(&str, &str)],
    ) -> (BrokerProcess, Duration) {
        let addr = free_addr();
        let backend = free_addr();
        let config = self.config(name, addr, backend, intellia, tail);
        let started = Instant::now();
        let mut cmd = Command::new(broker_bin());
        cmd.args(["serve", "--config"]).arg(&config);
        cmd.envs(env.iter().copied());
        let mut broker = BrokerProcess::spawn_to_files(
            cmd,
            addr,
            &self.dir.join(format!("{name}.log")),
            &self.dir.join(format!("{name}.stderr")),
        );
        broker.backend = Some(backend);
        let Some(ready) = wait_ok(addr, "/readyz", started, Duration::from_secs(10)).await else {
            panic!("broker {name} not ready:\n{}", broker.output());
        };
        (broker, ready)
    }

    pub fn hs_token(&self, sub: &str) -> String {
        token(&self.hs, Header::new(Algorithm::HS256), HS_ISSUER, sub)
    }

    pub fn rs_token(&self, sub: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        token(&self.rsa, header, RS_ISSUER, sub)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Limits set so high that no request of a run is refused, while every request still passes
/// through all three (per user, per IP, upstream).
pub const HIGH_LIMITS: &str = r#"
[rate_limit.per_user]
per_minute = 1000000000
burst = 1000000000

[rate_limit.per_ip]
per_minute = 1000000000
burst = 1000000000

[rate_limit.upstream]
per_second = 1000
burst = 1000
"#;

/// The listener of `broker` that serves `requests`: the backend listener for the sidecar
/// route, the public one for everything else. One run goes to one listener.
pub fn listener_for(broker: &BrokerProcess, requests: &[Request]) -> std::net::SocketAddr {
    let backend = |r: &Request| r.starts_with(b"POST /v1/backend/token ");
    if requests.iter().all(backend) && !requests.is_empty() {
        return broker
            .backend
            .expect("a bench broker has a backend listener");
    }
    assert!(
        !requests.iter().any(backend),
        "a run mixes the sidecar route with the public routes; they are on different listeners"
    );
    broker.addr
}

/// `POST /v1/token` with a bearer session.
pub fn token_request(token: &str) -> Request {
    request(
        "POST",
        "/v1/token",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
}

/// `POST /v1/backend/token` with the backend secret and this JSON body (for the backend
/// listener, [`BrokerProcess::backend`]).
pub fn backend_request(body: &str) -> Request {
    request(
        "POST",
        "/v1/backend/token",
        &[
            ("Authorization", &format!("Bearer {BACKEND_SECRET}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// `POST /v1/backend/token` for this user.
pub fn backend_request_for(user: &str) -> Request {
    backend_request(&format!(r#"{{"userId":"{user}"}}"#))
}

fn token(key: &EncodingKey, header: Header, iss: &str, sub: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": iss, "aud": AUDIENCE, "sub": sub, "email": "bench@example.com",
        "name": "Bench User", "iat": now, "nbf": now - 5, "exp": now + 3600,
    });
    sign(header, &claims, key)
}

/// A trace collector that accepts OTLP/HTTP exports (`POST /v1/traces`) and discards them, as
/// cheaply as a sink can, so a traced benchmark measures the broker's side of tracing. Returns its
/// base URL and the count of exports received.
pub fn otlp_sink() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use actix_web::{App, HttpResponse, HttpServer, web};

    let exports = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&exports);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = HttpServer::new(move || {
        let counter = Arc::clone(&counter);
        App::new()
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route(
                "/v1/traces",
                web::post().to(move |_body: web::Bytes| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async {
                        HttpResponse::Ok()
                            .content_type("application/x-protobuf")
                            .finish()
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    tokio::spawn(server);
    (format!("http://{addr}"), exports)
}
