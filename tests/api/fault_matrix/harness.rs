//! The fault matrix's harness: one broker process per test under a zero file-size limit at
//! `RUST_LOG=trace`, what it was sent and answered, and the checks every row ends with; raw-socket
//! clients for slow and malformed requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::testing::SimulatorState;
use serde_json::Value;
use testkit::app::simulator_config;
use testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const LOG_LEVEL: &str = "trace";
/// What the simulator says in its error bodies; the broker must never pass it on.
pub const UPSTREAM_BODY_MARKERS: [&str; 3] = ["simulated failure", "sim-5f3a", "sim_truncated"];

/// One broker process under test, and everything it was sent and answered, for the final checks.
pub struct Matrix {
    pub broker: BrokerProcess,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    /// Session tokens sent and chat tokens minted: none may appear in the output.
    pub secrets: Vec<String>,
    /// Headers and bodies of every error answer.
    pub answers: String,
    users: usize,
}

impl Matrix {
    pub async fn start(cfg: &TestConfig, sim_url: &str) -> Matrix {
        let dir = temp_dir();
        write_config(cfg, &dir, sim_url, "127.0.0.1:0");
        let config_dir = dir.clone();
        let broker = tokio::task::spawn_blocking(move || {
            BrokerProcess::serve_without_file_writes(&config_dir, LOG_LEVEL)
        })
        .await
        .unwrap();
        Matrix {
            broker,
            client: http_client(),
            dir,
            secrets: Vec::new(),
            answers: String::new(),
            users: 0,
        }
    }

    pub async fn readyz(&self) -> (u16, Value) {
        let resp = self
            .client
            .get(self.broker.url("/readyz"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// `GET /readyz` on the admin listener: what operators see (stale secrets, issuers).
    pub async fn admin_readyz(&self) -> (u16, Value) {
        let admin = self
            .broker
            .admin
            .expect("the matrix broker has an admin listener");
        let resp = self
            .client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// Polls the admin listener's `/readyz` until `done` holds (at most ten seconds).
    pub async fn wait_for_admin(&self, what: &str, done: impl Fn((u16, Value)) -> bool) {
        for _ in 0..200 {
            if done(self.admin_readyz().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{what}: never happened; the admin listener's readyz says {:?}",
            self.admin_readyz().await
        );
    }

    pub async fn wait_ready(&self) {
        self.wait_for("readiness", |(status, _)| status == 200)
            .await;
    }

    /// Polls `/readyz` until `done` holds (at most ten seconds).
    pub async fn wait_for(&self, what: &str, done: impl Fn((u16, Value)) -> bool) {
        for _ in 0..200 {
            if done(self.readyz().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{what}: never happened; readyz says {:?}",
            self.readyz().await
        );
    }

    /// A session of the HS256 issuer for a user not seen before (so the cache never answers).
    pub fn fresh_session(&mut self) -> String {
        self.users += 1;
        let token = session(&format!("user-{}", self.users));
        self.secrets.push(token.clone());
        token
    }

    pub async fn token_with(&mut self, session_token: &str) -> reqwest::Response {
        self.secrets.push(session_token.to_owned());
        self.client
            .post(self.broker.url("/v1/token"))
            .bearer_auth(session_token)
            .send()
            .await
            .unwrap()
    }

    pub async fn token(&mut self) -> reqwest::Response {
        let s = self.fresh_session();
        self.token_with(&s).await
    }

    /// Expects a minted token; remembers it as a secret.
    pub async fn minted(&mut self, resp: reqwest::Response, row: &str) {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{row}: {body}");
        self.secrets
            .push(body["token"].as_str().unwrap().to_owned());
    }

    /// Expects a problem answer; returns its headers.
    pub async fn problem(
        &mut self,
        resp: reqwest::Response,
        status: u16,
        code: &str,
        row: &str,
    ) -> reqwest::header::HeaderMap {
        let headers = resp.headers().clone();
        assert_eq!(resp.status().as_u16(), status, "{row}");
        let body = assert_problem(resp, status, code).await;
        self.answers
            .push_str(&format!("{row}: {headers:?} {body}\n"));
        headers
    }

    /// The process keeps serving: a normal request for a new user mints a token.
    pub async fn still_serving(&mut self, after: &str) {
        let resp = self.token().await;
        self.minted(resp, &format!("a normal request after `{after}`"))
            .await;
    }

    /// SIGTERM, then the checks every row shares. Returns the output for row-specific checks.
    pub async fn finish(mut self, more_secrets: &[&str]) -> String {
        let (status, output) = self.broker.stop().await;
        assert!(
            status.success(),
            "the broker did not exit cleanly on SIGTERM ({status:?}); killed by SIGXFSZ means it \
             wrote to a file"
        );
        assert!(output.len() > 1000, "output at trace level was captured");
        assert!(!output.contains("panicked"), "a panic was printed");
        self.secrets.extend(
            [API_KEY, BACKEND_SECRET, HS_SECRET]
                .into_iter()
                .chain(more_secrets.iter().copied())
                .map(str::to_owned),
        );
        assert_no_secret(&output, &self.secrets, "the broker's output");
        assert_no_secret(&self.answers, &self.secrets, "an error answer");
        for marker in UPSTREAM_BODY_MARKERS {
            assert!(
                !self.answers.contains(marker),
                "an upstream body reached a client: {marker}"
            );
            assert!(
                !output.contains(marker),
                "an upstream body reached the log: {marker}"
            );
        }
        output
    }
}

/// The in-process simulator, accepting [`API_KEY`] and `extra_keys`.
pub fn intellia_simulator(extra_keys: &[&str]) -> (String, Arc<SimulatorState>) {
    start_simulator(simulator_config(extra_keys))
}

/// Sets the simulator's faults through its HTTP control API, as a test in another language would.
pub async fn set_faults(client: &reqwest::Client, sim_url: &str, plan: Value) {
    let resp = client
        .post(format!("{sim_url}/__simulator/faults"))
        .json(&plan)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "fault plan {plan} accepted");
}

/// Reads what the server sends until it closes the connection or `limit` passes. Returns the
/// bytes and, when it closed, after how long.
pub async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => {
                return (
                    String::from_utf8_lossy(&seen).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), None),
        }
    }
}

/// A slowloris client: sends `head`, then `drip` every 200 ms for up to twenty seconds, while
/// reading. Returns what the server answered and when (counted from before the connection was
/// opened, so never later than the server's own clock) it closed the connection.
pub async fn slowloris(
    addr: std::net::SocketAddr,
    head: String,
    drip: &'static [u8],
) -> (String, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(drip).await.is_err() {
                return;
            }
        }
    });
    let (answer, closed) = read_until_closed(&mut rd, Duration::from_secs(20)).await;
    writer.abort();
    assert!(
        closed.is_some(),
        "the server closed the slow connection while it was still dripping"
    );
    (answer, started.elapsed())
}

/// Sends `request` on a new connection; returns what came back before the server closed it.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything; that is fine.
    let _ = stream.write_all(&request).await;
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    (answer, closed.is_some())
}

pub fn head_with(headers: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut head = "GET /healthz HTTP/1.1\r\nHost: broker\r\n".to_owned();
    for h in headers {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The soft limit on open files of this process, raised towards the hard limit when it is
/// below `needed` (with util-linux `prlimit`: the crate forbids the `unsafe` a direct
/// `setrlimit` call takes).
pub fn ensure_open_files(needed: u64) -> u64 {
    let read = || -> (u64, u64) {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut numbers = line.split_whitespace().filter_map(|w| {
            w.parse::<u64>()
                .ok()
                .or((w == "unlimited").then_some(u64::MAX))
        });
        (numbers.next().unwrap(), numbers.next().unwrap())
    };
    let (soft, hard) = read();
    if soft < needed && hard >= needed {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={needed}:"))
            .status();
    }
    read().0
}
