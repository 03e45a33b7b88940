//! Test harness: the real broker on a random port, against the real simulator, with session
//! tokens signed by test keys and a small JWKS server standing in for an identity provider.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use intellia_token_broker::app::{Application, BuildOptions, ShutdownHandle};
use intellia_token_broker::config::Settings;
use intellia_token_broker::intellia::simulator::{Simulator, SimulatorConfig, SimulatorState};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://auth.test.example";
pub const AUDIENCE: &str = "chat-widget";
pub const HS_SECRET: &str = "test-hs256-secret-that-is-long-enough-0123456789";
pub const API_KEY: &str = "sk_test_intellia_api_key_DO_NOT_LEAK_7f3a9c";
pub const BACKEND_SECRET: &str = "backend-secret-DO-NOT-LEAK-52d1e0";
pub const ORG: &str = "org-456";
pub const ALLOWED_ORIGIN: &str = "https://www.example.com";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Standard claims for a user of the HS256 test issuer, valid for an hour.
pub fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "name": format!("User {sub}"),
        "iat": now(),
        "exp": now() + 3600,
    })
}

pub fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn session(sub: &str) -> String {
    hs256(&claims(sub))
}

pub fn rs256(claims: &Value, kid: Option<&str>, key_file: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let pem = std::fs::read(fixture(key_file)).unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

pub fn es256(claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let pem = std::fs::read(fixture("ec-private.pem")).unwrap();
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

/// Assembles a JWT from raw parts, for tokens no honest library would produce.
pub fn raw_jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        b64.encode(signature)
    )
}

/// A stand-in identity provider: serves a JWKS (and discovery) whose keys tests can swap, and
/// counts fetches.
pub struct FakeIdp {
    pub base: String,
    pub fetches: Arc<AtomicUsize>,
    pub up: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeIdp {
    pub fn start(kids: &[&str]) -> FakeIdp {
        let all: Value =
            serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
        let keys = Arc::new(Mutex::new(
            kids.iter().map(|k| all[*k].clone()).collect::<Vec<_>>(),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (k, f, u, b) = (keys.clone(), fetches.clone(), up.clone(), base.clone());
        let server = HttpServer::new(move || {
            let (k, f, u, b) = (k.clone(), f.clone(), u.clone(), b.clone());
            let (u2, b2) = (u.clone(), b.clone());
            App::new()
                .route(
                    "/jwks.json",
                    web::get().to(move || {
                        let (k, f, u) = (k.clone(), f.clone(), u.clone());
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            if !u.load(Ordering::SeqCst) {
                                return HttpResponse::ServiceUnavailable().finish();
                            }
                            let keys = k.lock().unwrap().clone();
                            HttpResponse::Ok().json(json!({ "keys": keys }))
                        }
                    }),
                )
                .route(
                    "/userinfo",
                    web::get().to(|req: actix_web::HttpRequest| async move {
                        // Answers only for a Bearer token, like a real userinfo endpoint.
                        use base64::Engine;
                        let sub = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .and_then(|t| t.split('.').nth(1))
                            .and_then(|p| {
                                base64::engine::general_purpose::URL_SAFE_NO_PAD
                                    .decode(p)
                                    .ok()
                            })
                            .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
                            .and_then(|c| c["sub"].as_str().map(str::to_owned));
                        let Some(sub) = sub else {
                            return HttpResponse::Unauthorized().finish();
                        };
                        // A token whose subject starts with "other" gets someone else's answer.
                        let sub = if sub.starts_with("other") {
                            "somebody-else".to_owned()
                        } else {
                            sub
                        };
                        HttpResponse::Ok().json(json!({
                            "sub": sub,
                            "email": "looked.up@example.com",
                            "name": "Looked Up",
                        }))
                    }),
                )
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(move || {
                        let (u, b) = (u2.clone(), b2.clone());
                        async move {
                            if !u.load(Ordering::SeqCst) {
                                return HttpResponse::ServiceUnavailable().finish();
                            }
                            HttpResponse::Ok().json(json!({
                                "issuer": b,
                                "jwks_uri": format!("{b}/jwks.json"),
                                "userinfo_endpoint": format!("{b}/userinfo"),
                            }))
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
        FakeIdp { base, fetches, up }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Knobs for one test broker. The TOML written from it is what an operator would write.
pub struct TestConfig {
    pub per_user: Option<(u32, u32)>,
    pub per_ip: Option<(u32, u32)>,
    pub upstream: Option<(u32, u32)>,
    pub cache: bool,
    pub backend: bool,
    pub trusted_proxies: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub max_body_bytes: usize,
    /// Extra `[[session.jwt]]` tables (TOML) beside the HS256 issuer.
    pub extra_issuers: String,
    pub admin: bool,
    /// Wait for `/readyz` before handing the app to the test.
    pub expect_ready: bool,
    /// `(breaker_failures, breaker_open_secs)` for `[intellia]`.
    pub breaker: Option<(u32, u64)>,
    /// Appended to the config as is (e.g. a `[redis]` section).
    pub extra_toml: String,
    pub deadline_ms: Option<u64>,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            per_user: None,
            per_ip: None,
            upstream: None,
            cache: true,
            backend: true,
            trusted_proxies: Vec::new(),
            allowed_origins: vec![
                ALLOWED_ORIGIN.to_owned(),
                "https://*.example.org".to_owned(),
            ],
            timeout_ms: 2000,
            max_retries: 0,
            max_body_bytes: 4096,
            extra_issuers: String::new(),
            admin: false,
            expect_ready: true,
            breaker: None,
            extra_toml: String::new(),
            deadline_ms: None,
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub admin: Option<String>,
    pub sim: Arc<SimulatorState>,
    pub client: reqwest::Client,
    pub shutdown: ShutdownHandle,
    pub dir: PathBuf,
    pub state: actix_web::web::Data<intellia_token_broker::app::AppState>,
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("broker-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the config and secret files a test broker runs with; returns the config text.
pub fn write_config(
    cfg: &TestConfig,
    dir: &std::path::Path,
    simulator: &str,
    listen: &str,
) -> String {
    std::fs::write(dir.join("api-key"), format!("{API_KEY}\n")).unwrap();
    std::fs::write(dir.join("hs256"), HS_SECRET).unwrap();
    std::fs::write(dir.join("backend"), BACKEND_SECRET).unwrap();
    let mut text = format!(
        r#"
[server]
listen = "{listen}"
trusted_proxies = [{proxies}]
max_body_bytes = {max_body}
shutdown_grace_secs = 3
drain_delay_secs = 1
secret_poll_secs = 1
workers = 1
{admin}

[intellia]
base_url = "{simulator}"
organization_id = "{ORG}"
api_key_file = "{dir}/api-key"
timeout_ms = {timeout}
max_retries = {retries}
{breaker}

[cors]
allowed_origins = [{origins}]

[[session.jwt]]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
hs256_secret_file = "{dir}/hs256"
algorithms = ["HS256"]
cookie = "site_session"
leeway_secs = 5
{extra}

[cache]
enabled = {cache}
min_remaining_secs = 900
"#,
        proxies = quoted(&cfg.trusted_proxies),
        max_body = cfg.max_body_bytes,
        admin = if cfg.admin {
            "admin_listen = \"127.0.0.1:0\""
        } else {
            ""
        },
        dir = dir.display(),
        timeout = cfg.timeout_ms,
        retries = cfg.max_retries,
        breaker = cfg
            .breaker
            .map_or(String::new(), |(failures, secs)| format!(
                "breaker_failures = {failures}\nbreaker_open_secs = {secs}"
            ))
            + &cfg
                .deadline_ms
                .map_or(String::new(), |ms| format!("\ndeadline_ms = {ms}")),
        origins = quoted(&cfg.allowed_origins),
        extra = cfg.extra_issuers,
        cache = cfg.cache,
    );
    if cfg.backend {
        text.push_str(&format!(
            "\n[backend]\nsecret_file = \"{}/backend\"\n",
            dir.display()
        ));
    }
    if let Some((per_minute, burst)) = cfg.per_user {
        text.push_str(&format!(
            "\n[rate_limit.per_user]\nper_minute = {per_minute}\nburst = {burst}\n"
        ));
    }
    if let Some((per_minute, burst)) = cfg.per_ip {
        text.push_str(&format!(
            "\n[rate_limit.per_ip]\nper_minute = {per_minute}\nburst = {burst}\n"
        ));
    }
    if let Some((per_second, burst)) = cfg.upstream {
        text.push_str(&format!(
            "\n[rate_limit.upstream]\nper_second = {per_second}\nburst = {burst}\n"
        ));
    }
    text.push_str(&cfg.extra_toml);
    std::fs::write(dir.join("config.toml"), &text).unwrap();
    text
}

/// A plain test client. reqwest needs the process's rustls provider installed first, whichever
/// test happens to build a client first.
pub fn http_client() -> reqwest::Client {
    intellia_token_broker::http_client::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn start_simulator(config: SimulatorConfig) -> (String, Arc<SimulatorState>) {
    let sim = Simulator::start(TcpListener::bind("127.0.0.1:0").unwrap(), config).unwrap();
    let url = sim.base_url();
    let state = sim.state.clone();
    tokio::spawn(sim.server);
    (url, state)
}

pub async fn spawn_app(cfg: TestConfig) -> TestApp {
    let (sim_url, sim) = start_simulator(SimulatorConfig {
        organization_id: Some(ORG.to_owned()),
        keys: intellia_token_broker::intellia::simulator::KeyPolicy::Keys(HashMap::from([(
            API_KEY.to_owned(),
            true,
        )])),
        ..SimulatorConfig::default()
    });
    spawn_app_with_simulator(cfg, sim_url, sim).await
}

pub async fn spawn_app_with_simulator(
    cfg: TestConfig,
    sim_url: String,
    sim: Arc<SimulatorState>,
) -> TestApp {
    let dir = temp_dir();
    let expect_ready = cfg.expect_ready;
    let text = write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let settings = Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
    let app = Application::build(settings, BuildOptions::default())
        .await
        .unwrap();
    let base = format!("http://{}", app.public_addr());
    let admin = app.admin_addr().map(|a| format!("http://{a}"));
    let shutdown = app.shutdown_handle();
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    let client = http_client();
    let test_app = TestApp {
        base,
        admin,
        sim,
        client,
        shutdown,
        dir,
        state,
    };
    if expect_ready {
        test_app.wait_ready().await;
    }
    test_app
}

impl TestApp {
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("broker at {} never became ready", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn token(&self, session: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/token"))
            .bearer_auth(session)
            .send()
            .await
            .unwrap()
    }

    pub async fn backend(&self, secret: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/backend/token"))
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts a problem+json response with the given status and code; returns the body.
pub async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("application/problem+json".to_owned())
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], "about:blank");
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
    body
}
