//! `doctor`, the real binary against healthy and broken dependencies: one line per
//! dependency with the cause, exit 0 only when all pass, bounded in time when endpoints hang, and
//! never a secret in what it prints.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::prelude::*;
use testkit::redis::RedisServer;

struct Report {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Report {
    /// The line naming `dependency` (its prefix after `ok`/`FAIL`).
    fn line(&self, dependency: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| {
                l.strip_prefix("ok   ")
                    .or_else(|| l.strip_prefix("FAIL "))
                    .is_some_and(|rest| rest.starts_with(dependency))
            })
            .unwrap_or_else(|| panic!("no `{dependency}` line in:\n{}", self.stdout))
    }

    fn assert_ok(&self, dependency: &str) {
        let line = self.line(dependency);
        assert!(line.starts_with("ok   "), "{line}\n{}", self.stdout);
    }

    fn assert_fail(&self, dependency: &str, cause: &str) {
        let line = self.line(dependency);
        assert!(line.starts_with("FAIL "), "{line}");
        assert!(line.contains(cause), "`{cause}` not in: {line}");
    }
}

/// Runs `doctor` off the runtime, so the in-process simulator and identity provider keep serving.
async fn doctor(dir: &Path, args: &[&str]) -> Report {
    let mut cmd = Command::new(broker_bin());
    cmd.arg("doctor")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(args)
        .env_remove("BROKER_CONFIG")
        .env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = cmd.output().unwrap();
        Report {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    })
    .await
    .unwrap()
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP endpoint that accepts connections and never answers.
fn hanging_endpoint() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

fn assert_prints_no_secret(report: &Report, extra: &[String]) {
    let mut secrets = vec![
        API_KEY.to_owned(),
        HS_SECRET.to_owned(),
        BACKEND_SECRET.to_owned(),
    ];
    secrets.extend_from_slice(extra);
    let all = format!("{}{}", report.stdout, report.stderr);
    assert_no_secret(&all, &secrets, "doctor's output");
    // Simulator tokens start with `sim_`: none is printed, only its expiry.
    assert!(!all.contains("sim_"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_dependencies_pass_and_a_test_mint_prints_only_the_expiry() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let redis = RedisServer::builder()
        .user("broker", "redis-pass-0123456789")
        .start();
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    let cfg = TestConfig {
        extra_issuers: jwks_issuer(&idp.base, "discovery = true"),
        extra_toml: format!("\n[redis]\nurl = \"{}\"\n", redis.url_with_credentials()),
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");

    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 0, "{}\n{}", report.stdout, report.stderr);
    report.assert_ok("config");
    report.assert_ok(&format!("issuer[0] {ISSUER}"));
    report.assert_ok(&format!("issuer[1] {}", idp.base));
    assert!(
        report.line("issuer[1]").contains("1 usable key"),
        "{}",
        report.stdout
    );
    report.assert_ok("redis");
    report.assert_ok("intellia");
    assert_eq!(sim.minted(), 0, "the Intellia probe never mints");
    assert!(report.stdout.contains("0 failed"), "{}", report.stdout);

    let report = doctor(&dir, &["--mint-test-user", "doctor-user"]).await;
    assert_eq!(report.code, 0, "{}\n{}", report.stdout, report.stderr);
    let line = report.line("mint-test-user doctor-user");
    assert!(line.contains("expires at 20"), "{line}");
    assert_eq!(sim.minted(), 1);
    assert_prints_no_secret(&report, &["redis-pass-0123456789".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_dependencies_fail_each_with_its_cause() {
    let idp = FakeIdp::start(&["rsa-1"]);
    idp.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let dir = temp_dir();
    let cfg = TestConfig {
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        extra_toml: format!("\n[redis]\nurl = \"redis://127.0.0.1:{}\"\n", closed_port()),
        ..TestConfig::default()
    };
    write_config(
        &cfg,
        &dir,
        &format!("http://127.0.0.1:{}", closed_port()),
        "127.0.0.1:0",
    );
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_ok("config");
    report.assert_ok(&format!("issuer[0] {ISSUER}"));
    report.assert_fail(&format!("issuer[1] {}", idp.base), "HTTP 503");
    report.assert_fail("redis", "connection refused");
    report.assert_fail("intellia", "connection refused");
    assert!(report.stdout.contains("3 failed"), "{}", report.stdout);
    assert!(
        report.stderr.contains("3 of 5 checks failed"),
        "{}",
        report.stderr
    );
    assert!(report.took < Duration::from_secs(10), "{:?}", report.took);
    assert_prints_no_secret(&report, &[]);

    // Intellia refusing our key, and Redis refusing our password.
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let redis = RedisServer::builder()
        .user("broker", "right-pass-0123456789")
        .start();
    let cfg = TestConfig {
        extra_toml: format!(
            "\n[redis]\nurl = \"redis://broker:wrong-pass-0123456789@127.0.0.1:{}\"\n",
            redis.port()
        ),
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    std::fs::write(dir.join("api-key"), "sk_wrong_key_DO_NOT_LEAK_1234\n").unwrap();
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_fail("intellia", "credentials refused: HTTP 401");
    report.assert_fail("redis", "credentials refused");
    let wrong_key_report = report;

    // TLS spoken to a plain-HTTP Intellia.
    write_config(
        &TestConfig::default(),
        &dir,
        &sim_url.replacen("http://", "https://", 1),
        "127.0.0.1:0",
    );
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_fail("intellia", "TLS handshake failed");
    let report = wrong_key_report;
    assert_prints_no_secret(
        &report,
        &[
            "sk_wrong_key_DO_NOT_LEAK_1234".to_owned(),
            "wrong-pass-0123456789".to_owned(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_endpoints_are_reported_within_the_bound() {
    let (_jwks, jwks_url) = hanging_endpoint();
    let (_intellia, intellia_url) = hanging_endpoint();
    let dir = temp_dir();
    let cfg = TestConfig {
        extra_issuers: jwks_issuer(
            "https://hanging.example",
            &format!("jwks_url = \"{jwks_url}/keys\""),
        ),
        // Longer than doctor's bound: the bound is what ends the Intellia check.
        timeout_ms: 40_000,
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &intellia_url, "127.0.0.1:0");

    let report = doctor(&dir, &["--timeout-secs", "2"]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_fail("issuer[1] https://hanging.example", "no answer within 2 s");
    report.assert_fail("intellia", "no answer within 2 s");
    assert!(report.took < Duration::from_secs(6), "{:?}", report.took);

    // With the default per-check bound the whole run still ends well within 30 s.
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_fail("intellia", "no answer within");
    assert!(report.took < Duration::from_secs(30), "{:?}", report.took);
    assert_prints_no_secret(&report, &[]);

    // The bound cannot be raised past it.
    let report = doctor(&dir, &["--timeout-secs", "60"]).await;
    assert_eq!(report.code, 2, "{}", report.stderr);
}

/// Introspection with Zitadel's `private_key_jwt` against the real OpenID provider fixture: our
/// key accepted, then a key the provider does not know refused — and no key material printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_credentials_accepted_and_refused() {
    let provider = crate::oidc_provider::Provider::start();
    provider
        .control(
            "/client_auth",
            serde_json::json!({"assertion_audience": "issuer"}),
        )
        .await;
    let keys = provider.get("/client_key").await;
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    let key_file = dir.join("zitadel-key.json");
    let tables = format!(
        "\n[[session.jwt]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\ndiscovery = true\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"zitadel:\"\n\n[session.introspection]\nurl = \"{url}\"\nclient_auth = \"private_key_jwt\"\nclient_key_file = \"{key}\"\nissuer = \"{issuer}\"\nuser_id_prefix = \"zitadel:\"\n",
        issuer = provider.issuer(),
        url = provider.info["introspection_endpoint"].as_str().unwrap(),
        key = key_file.display(),
    );
    let cfg = TestConfig {
        extra_issuers: tables,
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let private_keys = [
        keys["zitadel_json"]["key"].as_str().unwrap().to_owned(),
        keys["wrong"]["zitadel_json"]["key"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];

    std::fs::write(&key_file, keys["zitadel_json"].to_string()).unwrap();
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 0, "{}\n{}", report.stdout, report.stderr);
    report.assert_ok(&format!("issuer[1] {}", provider.issuer()));
    report.assert_ok("introspection");
    assert!(
        report
            .line("introspection")
            .contains("credentials accepted")
    );
    assert_prints_no_secret(&report, &private_keys);

    std::fs::write(&key_file, keys["wrong"]["zitadel_json"].to_string()).unwrap();
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_fail("introspection", "credentials refused: HTTP 401");
    assert_prints_no_secret(&report, &private_keys);
}

/// Each `[[session.endpoint]]`: reachable, and a request without a session answered as signed out;
/// a site that names somebody for it, or whose answer every visitor would get 503 for, fails;
/// what the site sent is printed escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_endpoints_must_answer_signed_out_without_a_session() {
    let redis = RedisServer::start();
    let express =
        testkit::sites::SiteProcess::start(testkit::sites::Framework::Express, &redis.url());
    let site = testkit::sites::HostileSite::start();
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    let mut extra = format!(
        "\n[[session.endpoint]]\nurl = \"{}/api/me\"\ncookies = [\"connect.sid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"express:\"\n",
        express.url
    );
    for (n, path) in ["/me", "/redirect-tab", "/flip", "/status/500", "/not-json"]
        .iter()
        .enumerate()
    {
        extra.push_str(&format!(
            "\n[[session.endpoint]]\nurl = \"{}{path}\"\ncookies = [\"c{n}\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"web:\"\n",
            site.base
        ));
    }
    let cfg = TestConfig {
        extra_toml: extra,
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let report = doctor(&dir, &[]).await;
    assert_ne!(report.code, 0);
    report.assert_ok(&format!("endpoint[0] {}/api/me", express.url));
    assert!(
        report.line("endpoint[0]").contains("signed out (HTTP 401)"),
        "{}",
        report.stdout
    );
    report.assert_ok(&format!("endpoint[1] {}/me", site.base));
    report.assert_ok("endpoint[2]");
    let redirect = report.line("endpoint[2]");
    assert!(
        redirect.contains("a redirect to /login?next=\\t/api/me"),
        "{redirect}"
    );
    assert!(!redirect.contains('\t'), "{redirect}");
    report.assert_fail("endpoint[3]", "let anybody in");
    report.assert_fail("endpoint[4]", "HTTP 500");
    report.assert_fail("endpoint[5]", "invalid");
    assert_eq!(site.calls("/flip"), 1);
    // Doctor sent no cookie and no credential.
    let call = site.last("/me").unwrap();
    assert!(call.header("cookie").is_none() && call.header("authorization").is_none());
}

/// A server that answers every request with `answer(path)`: (status, JSON body).
async fn hostile_server(answer: fn(&str) -> (u16, String)) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let (status, body) = answer(&path);
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    base
}

/// The attack of the last review: an identity provider's answer carried escape codes and a line
/// break, and wrote a fake "ok" line into the report. Everything a server sent is escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_answer_cannot_forge_a_line_of_the_report() {
    const FORGED: &str =
        "\u{1b}[2K\r\nok   issuer[7] https://trusted.example: discovery ok\u{1b}[1A\u{202e}";
    let base = hostile_server(|path| match path {
        "/.well-known/openid-configuration" => (
            200,
            serde_json::json!({
                "issuer": format!("https://evil{FORGED}"),
                "jwks_uri": "http://127.0.0.1:9/keys",
            })
            .to_string(),
        ),
        _ => (401, serde_json::json!({ "error": FORGED }).to_string()),
    })
    .await;
    let dir = temp_dir();
    std::fs::write(dir.join("introspection-secret"), "client-secret").unwrap();
    let cfg = TestConfig {
        extra_toml: format!(
            "\n[[session.jwt]]\nissuer = \"{base}\"\naudience = \"{AUDIENCE}\"\ndiscovery = true\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"evil:\"\n\n[session.introspection]\nurl = \"{base}/introspect\"\nclient_id = \"broker\"\nclient_secret_file = \"{}/introspection-secret\"\naudience = \"{AUDIENCE}\"\nuser_id_prefix = \"op:\"\n",
            dir.display()
        ),
        ..TestConfig::default()
    };
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let report = doctor(&dir, &[]).await;
    assert_eq!(report.code, 1, "{}", report.stdout);
    report.assert_fail(&format!("issuer[1] {base}"), "issuer mismatch");
    report.assert_fail("introspection", "credentials refused: HTTP 401");
    assert!(
        !report
            .stdout
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "{:?}",
        report.stdout
    );
    // Every line is one of doctor's own: a check, a flag, or the summary.
    for line in report.stdout.lines() {
        assert!(
            ["ok   ", "FAIL ", "warn "]
                .iter()
                .any(|mark| line.starts_with(mark))
                || line.contains(" checks, "),
            "a line doctor did not write: {line:?}"
        );
    }
    assert!(
        !report.stdout.contains("\nok   issuer[7]"),
        "{}",
        report.stdout
    );
    assert!(
        report
            .line(&format!("issuer[1] {base}"))
            .contains("\\u{1b}[2K\\u{d}\\u{a}ok   issuer[7]"),
        "the text is shown, escaped: {}",
        report.stdout
    );
}
