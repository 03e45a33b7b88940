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
    /// While set (and up), the JWKS is answered 200 with a cut-off JSON document.
    pub garbage: Arc<std::sync::atomic::AtomicBool>,
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
        let garbage = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (k, f, u, b) = (keys.clone(), fetches.clone(), up.clone(), base.clone());
        let g = garbage.clone();
        let server = HttpServer::new(move || {
            let (k, f, u, b, g) = (k.clone(), f.clone(), u.clone(), b.clone(), g.clone());
            let (u2, b2) = (u.clone(), b.clone());
            App::new()
                .route(
                    "/jwks.json",
                    web::get().to(move || {
                        let (k, f, u, g) = (k.clone(), f.clone(), u.clone(), g.clone());
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            if !u.load(Ordering::SeqCst) {
                                return HttpResponse::ServiceUnavailable().finish();
                            }
                            if g.load(Ordering::SeqCst) {
                                return HttpResponse::Ok()
                                    .content_type("application/json")
                                    .body(r#"{"keys": [{"kty": "RSA", "n": "#);
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
        FakeIdp {
            base,
            fetches,
            up,
            garbage,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A `[[session.jwt]]` table for an issuer whose keys come from `source` (a `jwks_url = ...` or
/// `discovery = true` line); its users get the `idp:` prefix.
pub fn jwks_issuer(issuer: &str, source: &str) -> String {
    format!(
        "\n[[session.jwt]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\n{source}\nalgorithms = [\"RS256\", \"ES256\"]\nuser_id_prefix = \"idp:\"\n"
    )
}

/// [`claims`] issued by `idp`.
pub fn idp_claims(idp: &FakeIdp, sub: &str) -> Value {
    let mut c = claims(sub);
    c["iss"] = json!(idp.base);
    c
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
    /// Appended to the `[server]` table as is.
    pub server_toml: String,
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
            server_toml: String::new(),
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
{server_extra}

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
        server_extra = cfg.server_toml,
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

pub const BIN: &str = env!("CARGO_BIN_EXE_intellia-token-broker");

/// The real binary, serving a test config, with everything it prints captured.
pub struct BrokerProcess {
    child: std::process::Child,
    pub base: String,
    pub addr: std::net::SocketAddr,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl BrokerProcess {
    /// `serve --config {dir}/config.toml` at the given `RUST_LOG` level.
    pub fn serve(dir: &std::path::Path, rust_log: &str) -> BrokerProcess {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(dir.join("config.toml"));
        Self::spawn(cmd, rust_log)
    }

    /// As [`BrokerProcess::serve`], with a file-size limit of zero: the kernel kills a process
    /// that writes a single byte to any file (pipes and sockets are not files), so a broker that
    /// keeps running has written nothing to disk.
    pub fn serve_without_file_writes(dir: &std::path::Path, rust_log: &str) -> BrokerProcess {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -f 0 && ulimit -c 0 && exec "$0" "$@""#)
            .arg(BIN)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("config.toml"));
        Self::spawn(cmd, rust_log)
    }

    fn spawn(mut cmd: std::process::Command, rust_log: &str) -> BrokerProcess {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = cmd
            .env("RUST_LOG", rust_log)
            .env_remove("BROKER_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let mut readers = Vec::new();
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let (output, addr_tx) = (Arc::clone(&output), addr_tx.clone());
            readers.push(std::thread::spawn(move || {
                // Byte lines, not `lines()`: one invalid UTF-8 byte must not stop the draining,
                // or the broker would block on a full pipe.
                let mut reader = std::io::BufReader::new(stream);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line);
                    if text.contains("\"broker listening\"")
                        && let Ok(v) = serde_json::from_str::<Value>(&text)
                        && let Some(listen) = v["listen"].as_str()
                    {
                        let _ = addr_tx.send(listen.to_owned());
                    }
                    output.lock().unwrap().push_str(&text);
                    line.clear();
                }
            }));
        }
        let Ok(addr) = addr_rx.recv_timeout(std::time::Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the broker did not start: {}",
                output.lock().unwrap().as_str()
            );
        };
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        BrokerProcess {
            child,
            base: format!("http://{addr}"),
            addr,
            output,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn sigterm(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits for the exit (blocking); returns the status and everything printed.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        (status, self.output())
    }

    /// SIGTERM, then [`BrokerProcess::wait`] off the async runtime.
    pub async fn stop(self) -> (std::process::ExitStatus, String) {
        self.sigterm();
        tokio::task::spawn_blocking(move || self.wait())
            .await
            .unwrap()
    }

    /// Open file descriptors of the process right now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // A failed test must not leave a broker running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Asserts that none of `secrets` appears in `text`, nor (for JWTs) a signature on its own.
/// Never prints a secret: the message names its index only.
pub fn assert_no_secret(text: &str, secrets: &[String], what: &str) {
    for (n, secret) in secrets.iter().enumerate() {
        assert!(
            !text.contains(secret.as_str()),
            "secret #{n} leaked into {what}"
        );
        if let Some(sig) = secret
            .rsplit('.')
            .next()
            .filter(|s| s.len() > 20 && secret.contains('.'))
        {
            assert!(
                !text.contains(sig),
                "secret #{n}'s signature leaked into {what}"
            );
        }
    }
}
