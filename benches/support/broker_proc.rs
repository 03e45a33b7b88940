//! The release broker and the Intellia simulator as real processes on loopback, configured from a
//! scratch directory, for the load benchmark and the soak. The bench process serves the JWKS for
//! RS256 sessions itself.

// Shared by several bench and test targets, each using part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_intellia-token-broker");
pub const API_KEY: &str = "bench-api-key-0123456789abcdef";
pub const HS_SECRET: &str = "bench-hs256-secret-that-is-long-enough-0123456789";
pub const BACKEND_SECRET: &str = "bench-backend-secret-0123456789abcdef";
pub const ORG: &str = "org-bench";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        crate::procfs::status_bytes(&self.pid().to_string(), "VmRSS")
    }
    /// Open file descriptors (sockets included).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `GET path` answers 200; returns how long that took from `since`, or `None` after
/// `limit`.
pub async fn wait_ok(
    addr: SocketAddr,
    path: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await
            && s.write_all(req.as_bytes()).await.is_ok()
        {
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).await.is_ok() && &head[9..12] == b"200" {
                return Some(since.elapsed());
            }
        }
        if since.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves `body` as JSON to every request until the process ends.
async fn serve_json(body: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

pub struct Fixture {
    pub dir: PathBuf,
    pub simulator: Proc,
    jwks: SocketAddr,
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
        // The fixture holds the public keys by kid; a JWKS is `{"keys": [...]}`.
        let by_kid: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).expect("jwks fixture"),
        )
        .expect("jwks fixture is JSON");
        let keys: Vec<_> = by_kid.into_iter().map(|(_, key)| key).collect();
        let jwks = serve_json(json!({ "keys": keys }).to_string()).await;
        let addr = free_addr();
        let log = dir.join("simulator.log");
        let child = Command::new(BIN)
            .args(["simulate-intellia", "--listen", &addr.to_string()])
            .args(["--organization-id", ORG, "--api-key-file"])
            .arg(dir.join("api-key"))
            .stdout(Stdio::null())
            .stderr(file(&log))
            .spawn()
            .expect("start the simulator");
        let simulator = Proc { child, addr, log };
        wait_ok(
            addr,
            "/__simulator/stats",
            Instant::now(),
            Duration::from_secs(10),
        )
        .await;
        let rsa = EncodingKey::from_rsa_pem(
            &std::fs::read(format!("{FIXTURES}/rsa-private.pem")).expect("rsa fixture"),
        )
        .expect("rsa key");
        Fixture {
            dir,
            simulator,
            jwks,
            rsa,
            hs: EncodingKey::from_secret(HS_SECRET.as_bytes()),
        }
    }

    /// A complete config: HS256 and RS256 sessions, the backend route, the cache, `intellia` lines
    /// added to that table, and `tail` (e.g. `[rate_limit.*]` tables) at the end.
    pub fn config(&self, name: &str, listen: SocketAddr, intellia: &str, tail: &str) -> PathBuf {
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
issuer = "https://hs.bench.example"
audience = "chat-widget"
hs256_secret_file = "{d}/hs256"
algorithms = ["HS256"]

[[session.jwt]]
issuer = "https://rs.bench.example"
audience = "chat-widget"
jwks_url = "http://{jwks}/jwks.json"
algorithms = ["RS256"]

[backend]
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
    /// (spawn to `/readyz` 200).
    pub async fn broker(&self, name: &str, intellia: &str, tail: &str) -> (Proc, Duration) {
        let addr = free_addr();
        let config = self.config(name, addr, intellia, tail);
        let log = self.dir.join(format!("{name}.log"));
        let stderr = self.dir.join(format!("{name}.stderr"));
        let started = Instant::now();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(file(&log))
            .stderr(file(&stderr))
            .spawn()
            .expect("start the broker");
        let Some(ready) = wait_ok(addr, "/readyz", started, Duration::from_secs(10)).await else {
            let out = std::fs::read_to_string(&stderr).unwrap_or_default()
                + &std::fs::read_to_string(&log).unwrap_or_default();
            panic!("broker {name} not ready:\n{out}");
        };
        (Proc { child, addr, log }, ready)
    }

    pub fn hs_token(&self, sub: &str) -> String {
        token(
            &self.hs,
            Header::new(Algorithm::HS256),
            "https://hs.bench.example",
            sub,
        )
    }

    pub fn rs_token(&self, sub: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        token(&self.rsa, header, "https://rs.bench.example", sub)
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

/// `POST /v1/token` with a bearer session.
pub fn token_request(token: &str) -> crate::loadgen::Request {
    crate::loadgen::request(
        "POST",
        "/v1/token",
        &[("Authorization", &format!("Bearer {token}"))],
        b"",
    )
}

/// `POST /v1/backend/token` with the backend secret and this JSON body.
pub fn backend_request(body: &str) -> crate::loadgen::Request {
    crate::loadgen::request(
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
pub fn backend_request_for(user: &str) -> crate::loadgen::Request {
    backend_request(&format!(r#"{{"userId":"{user}"}}"#))
}

fn token(key: &EncodingKey, header: Header, iss: &str, sub: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": iss, "aud": "chat-widget", "sub": sub, "email": "bench@example.com",
        "name": "Bench User", "iat": now, "nbf": now - 5, "exp": now + 3600,
    });
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).expect("log file"))
}
