//! Identity and client-IP isolation, tried as an attacker would, against the real binary: one
//! person's token never reaches another, no per-IP limit can be dodged with a forged header, and
//! the smaller holes (a never-loaded JWKS, HS256 rotation during a verification, foreign JWTs sent
//! to introspection, backend-secret guessing, a closed stdout, a short grace period) stay shut.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use intellia_token_broker::testing::SimulatorState;
use serde_json::{Value, json};
use testkit::app::simulator_config;
use testkit::prelude::*;

/// The real binary serving `cfg` against an in-process simulator, once ready.
async fn serve(cfg: TestConfig) -> (BrokerProcess, Arc<SimulatorState>, PathBuf) {
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let config_dir = dir.clone();
    let broker = tokio::task::spawn_blocking(move || BrokerProcess::serve(&config_dir, "info"))
        .await
        .unwrap();
    let client = http_client();
    for _ in 0..200 {
        if client
            .get(broker.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return (broker, sim, dir);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the broker never became ready: {}", broker.output());
}

async fn token_from(
    broker: &BrokerProcess,
    session: &str,
    forwarded: &[&str],
) -> reqwest::Response {
    let mut request = http_client()
        .post(broker.url("/v1/token"))
        .bearer_auth(session);
    for line in forwarded {
        request = request.header("X-Forwarded-For", *line);
    }
    request.send().await.unwrap()
}

/// Runs the binary to completion with `args`; returns its exit code and stderr.
fn run(args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = run_broker(args, &[]);
    (code, stderr)
}

/// `run_broker_bounded` for 20 s.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    testkit::process::run_broker_bounded(args, Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sub_at_two_issuers_is_two_users_with_two_tokens() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let cfg = TestConfig {
        per_user: Some((60, 1)),
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        ..TestConfig::default()
    };
    let (broker, sim, dir) = serve(cfg).await;
    let at_site = session("123");
    let at_idp = rs256(&idp_claims(&idp, "123"), Some("rsa-1"), "rsa-private.pem");
    let first: Value = token_from(&broker, &at_site, &[])
        .await
        .json()
        .await
        .unwrap();
    let second: Value = token_from(&broker, &at_idp, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["userId"], "site:123");
    assert_eq!(second["userId"], "idp:123");
    assert_ne!(
        first["token"], second["token"],
        "one person's token reached another"
    );
    // Two users, two buckets: each got its one request of the burst, and two mints.
    assert_eq!(sim.minted(), 2);

    // The same configuration without the prefixes does not start, naming the key.
    let text = std::fs::read_to_string(dir.join("config.toml"))
        .unwrap()
        .replace("user_id_prefix = \"site:\"\n", "")
        .replace("user_id_prefix = \"idp:\"\n", "");
    let bad = dir.join("no-prefixes.toml");
    std::fs::write(&bad, text).unwrap();
    for command in ["serve", "check-config"] {
        let (code, stderr) = run(&[command, "--config", bad.to_str().unwrap()]);
        assert_ne!(code, 0, "{command} accepted colliding id spaces");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{command}: {stderr}");
        assert!(lines[0].contains("user_id_prefix"), "{command}: {stderr}");
    }
    broker.stop().await;
}

/// Per-IP limit of 2 behind a trusted proxy on loopback.
fn behind_proxy(server_toml: &str) -> TestConfig {
    TestConfig {
        per_ip: Some((1, 2)),
        trusted_proxies: vec!["127.0.0.1/32".to_owned()],
        server_toml: server_toml.to_owned(),
        ..TestConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_lines_ports_and_ipv6_sweeps_do_not_dodge_the_per_ip_limit() {
    let (broker, _sim, _dir) = serve(behind_proxy("")).await;
    let s = session("mallory");
    // HAProxy appends a line of its own: the client's forged first line must not win.
    for n in 0..2 {
        let forged = format!("10.{n}.{n}.{n}");
        let resp = token_from(&broker, &s, &[&forged, "198.51.100.7"]).await;
        assert_eq!(resp.status(), 200, "request {n}");
    }
    let resp = token_from(&broker, &s, &["10.9.9.9", "198.51.100.7"]).await;
    assert_problem(resp, 429, "rate_limited").await;
    // One line holding the chain works alike.
    let resp = token_from(&broker, &s, &["6.6.6.6, 198.51.100.7"]).await;
    assert_problem(resp, 429, "rate_limited").await;

    // Hops with ports: the port is dropped, so new ports are the same client...
    for port in [41234, 41235] {
        let hop = format!("198.51.100.8:{port}");
        assert_eq!(token_from(&broker, &s, &[&hop]).await.status(), 200);
    }
    let resp = token_from(&broker, &s, &["198.51.100.8:41236"]).await;
    assert_problem(resp, 429, "rate_limited").await;
    // ...and clients behind the proxy no longer share its bucket (each has its own).
    let resp = token_from(&broker, &s, &["[2001:db8:9::1]:443"]).await;
    assert_eq!(
        resp.status(),
        200,
        "an IPv6 hop with a port is a client of its own"
    );

    // A sweep through one /64 is one client.
    for n in 1..=2 {
        let hop = format!("2001:db8:1:2:{n:x}::{n:x}");
        assert_eq!(token_from(&broker, &s, &[&hop]).await.status(), 200);
    }
    let resp = token_from(&broker, &s, &["2001:db8:1:2:ffff:1:2:3"]).await;
    assert_problem(resp, 429, "rate_limited").await;
    let resp = token_from(&broker, &s, &["2001:db8:1:3::1"]).await;
    assert_eq!(resp.status(), 200, "the next /64 is another client");

    let (_, output) = broker.stop().await;
    assert!(
        output.contains("\"client_ip\":\"198.51.100.7\""),
        "logs name the real client"
    );
    for forged in ["10.0.0.0", "10.1.1.1", "10.9.9.9", "6.6.6.6"] {
        assert!(
            !output.contains(&format!("\"client_ip\":\"{forged}\"")),
            "a forged address {forged} reached the logs"
        );
    }
}

/// The attack of the last review: one byte ≥ 0x80 in the client's own hop made the whole line
/// undecodable, so the proxy became the client: a fresh bucket, and the attacker's address gone
/// from the logs. The hop the proxy appended must still decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_that_is_not_text_in_the_clients_hop_does_not_hide_the_proxys_hop() {
    use reqwest::header::HeaderValue;
    let (broker, _sim, _dir) = serve(behind_proxy("")).await;
    let s = session("oscar");
    let send = |lines: Vec<Vec<u8>>| {
        let mut request = http_client().post(broker.url("/v1/token")).bearer_auth(&s);
        for line in lines {
            request = request.header(
                "X-Forwarded-For",
                HeaderValue::from_bytes(&line).expect("obs-text is a valid header value"),
            );
        }
        request.send()
    };
    // What a proxy does with the client's junk: appends the real peer to the same line.
    for n in 0..2u8 {
        let line = [b"6.6.6.".as_slice(), &[0xff, b'0' + n], b", 198.51.100.77"].concat();
        let resp = send(vec![line]).await.unwrap();
        assert_eq!(resp.status(), 200, "request {n}");
    }
    let resp = send(vec![b"\xc3\x28\xa0\xa1, 198.51.100.77".to_vec()])
        .await
        .unwrap();
    assert_problem(resp, 429, "rate_limited").await;
    // The same client without junk is the same bucket; a proxy appending a line of its own
    // after a junk line is read alike.
    let resp = send(vec![b"198.51.100.77".to_vec()]).await.unwrap();
    assert_problem(resp, 429, "rate_limited").await;
    let resp = send(vec![b"\xfe\xff".to_vec(), b"198.51.100.77".to_vec()])
        .await
        .unwrap();
    assert_problem(resp, 429, "rate_limited").await;
    // The proxy's own bucket (127.0.0.1) was never charged.
    let resp = send(vec![b"198.51.100.78".to_vec()]).await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = send(Vec::new()).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the proxy's own address has its whole bucket"
    );

    let (_, output) = broker.stop().await;
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("\"message\":\"request\"") && l.contains("/v1/token"))
        .collect();
    assert_eq!(lines.len(), 7, "{output}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"client_ip\":\"198.51.100.77\""))
            .count(),
        5,
        "the attacker's address is in the logs: {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_7239_forwarded_is_read_when_configured_and_x_forwarded_for_is_then_ignored() {
    let (broker, _sim, _dir) = serve(behind_proxy("client_ip_header = \"forwarded\"")).await;
    let s = session("fiona");
    let send = |forwarded: Vec<&'static str>, xff: &'static str| {
        let mut request = http_client()
            .post(broker.url("/v1/token"))
            .bearer_auth(&s)
            .header("X-Forwarded-For", xff);
        for line in forwarded {
            request = request.header("Forwarded", line);
        }
        request.send()
    };
    for n in 0..2 {
        let resp = send(
            vec!["for=6.6.6.6", "for=\"198.51.100.9:1234\";proto=https"],
            ["1.1.1.1", "2.2.2.2"][n],
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = send(vec!["for=7.7.7.7, for=198.51.100.9"], "3.3.3.3")
        .await
        .unwrap();
    assert_problem(resp, 429, "rate_limited").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_loaded_jwks_costs_one_fetch_per_window_and_answers_503_at_once() {
    let idp = FakeIdp::start(&["rsa-1"]);
    idp.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let cfg = TestConfig {
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        ..TestConfig::default()
    };
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let broker = tokio::task::spawn_blocking(move || BrokerProcess::serve(&dir, "info"))
        .await
        .unwrap();
    // Let the background refresher make its first attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = idp.fetches();
    let token = rs256(&idp_claims(&idp, "nora"), Some("rsa-1"), "rsa-private.pem");
    let started = Instant::now();
    let requests = (0..10).map(|_| token_from(&broker, &token, &[]));
    for resp in futures_util::future::join_all(requests).await {
        let headers = resp.headers().clone();
        assert_problem(resp, 503, "upstream_unavailable").await;
        assert_eq!(headers["retry-after"], "1");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "10 requests queued behind fetches: {:?}",
        started.elapsed()
    );
    assert!(
        idp.fetches() - before <= 1,
        "10 requests caused {} fetches",
        idp.fetches() - before
    );
    // HS256 sessions never depended on it.
    assert_eq!(
        token_from(&broker, &session("hank"), &[]).await.status(),
        200
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_verified_while_its_hs256_secret_rotates_is_not_remembered() {
    let idp = FakeIdp::start(&[]);
    // A slow userinfo lookup keeps the verification under way while the secret rotates.
    idp.userinfo_delay_ms
        .store(2500, std::sync::atomic::Ordering::SeqCst);
    let cfg = TestConfig {
        hs256_toml: format!("userinfo_url = \"{}/userinfo\"", idp.base),
        ..TestConfig::default()
    };
    let (broker, _sim, dir) = serve(cfg).await;
    let mut claims = claims("rita");
    claims.as_object_mut().unwrap().remove("email");
    let token = hs256(&claims);
    let slow = {
        let (url, token) = (broker.url("/v1/token"), token.clone());
        tokio::spawn(async move { http_client().post(url).bearer_auth(token).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(
        dir.join("hs256"),
        "a-rotated-hs256-secret-that-is-long-enough-0123456789",
    )
    .unwrap();
    let first = slow.await.unwrap().unwrap();
    // Verified with the secret of its moment; what matters is what happens next.
    assert!(
        matches!(first.status().as_u16(), 200 | 401),
        "{}",
        first.status()
    );
    // The rotation has been seen (poll 1 s) by the time the slow lookup ended.
    let resp = token_from(&broker, &token, &[]).await;
    assert_problem(resp, 401, "unauthenticated").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_opaque_tokens_and_the_introspection_issuers_jwts_are_introspected() {
    let idp = FakeIdp::start(&[]);
    let dir_secret = temp_dir();
    std::fs::write(dir_secret.join("introspection-secret"), "client-secret").unwrap();
    let cfg = TestConfig {
        extra_toml: format!(
            "\n[session.introspection]\nurl = \"{}/introspect\"\nclient_id = \"broker\"\nclient_secret_file = \"{}/introspection-secret\"\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nuser_id_prefix = \"op:\"\n",
            idp.base,
            dir_secret.display(),
            idp.base
        ),
        ..TestConfig::default()
    };
    let (broker, _sim, _dir) = serve(cfg).await;
    let body: Value = token_from(&broker, "opaque-olga", &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["userId"], "op:olga");
    assert_eq!(idp.introspections(), 1);

    // A JWT of an issuer nobody configured, and a JWT-shaped token whose payload is garbage:
    // refused here, never shown to the provider.
    let mut foreign = claims("eve");
    foreign["iss"] = json!("https://evil.example");
    let resp = token_from(&broker, &hs256(&foreign), &[]).await;
    assert_problem(resp, 401, "unauthenticated").await;
    let garbage = raw_jwt(&json!({"alg": "RS256"}), &json!("not an object"), b"sig");
    let resp = token_from(&broker, &garbage, &[]).await;
    assert_problem(resp, 401, "unauthenticated").await;
    assert_eq!(
        idp.introspections(),
        1,
        "a foreign JWT went to introspection"
    );

    // With `audience` set, an answer that names no audience is not for us.
    let resp = token_from(&broker, "opaque-noaud-oscar", &[]).await;
    assert_problem(resp, 401, "unauthenticated").await;
    broker.stop().await;
}

/// The attack of the last review: two sites' HS256 issuers on one secret, so either site could
/// sign sessions the other's issuer accepts, for any of its users. Refused at start-up (the same
/// file twice, or two files holding one value) and on rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hs256_issuers_never_share_one_secret() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    const SITE_B: &str = "https://shop.example";
    const B_SECRET: &str = "shop-hs256-secret-that-is-long-enough-DO-NOT-LEAK-42";
    let secrets = temp_dir();
    let issuer_b = |file: &str| TestConfig {
        extra_issuers: format!(
            "\n[[session.jwt]]\nissuer = \"{SITE_B}\"\naudience = \"{AUDIENCE}\"\nhs256_secret_file = \"{}\"\nalgorithms = [\"HS256\"]\nuser_id_prefix = \"shop:\"\n",
            secrets.join(file).display()
        ),
        ..TestConfig::default()
    };
    // Site A's secret in a file of its own, named by issuer B: one line naming the key.
    std::fs::write(secrets.join("copy-of-a"), format!("{HS_SECRET}\n")).unwrap();
    let dir = temp_dir();
    write_config(
        &issuer_b("copy-of-a"),
        &dir,
        "http://127.0.0.1:9",
        "127.0.0.1:0",
    );
    for command in ["serve", "check-config"] {
        let (code, stderr) = run_bounded(&[
            command,
            "--config",
            dir.join("config.toml").to_str().unwrap(),
        ]);
        assert!(code.is_some_and(|c| c != 0), "{command}: {code:?}");
        assert!(
            stderr.contains("session.jwt[1].hs256_secret_file")
                && stderr.contains("same secret as session.jwt[0].hs256_secret_file"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains(HS_SECRET), "{stderr}");
    }
    // The same file named twice: refused before any file is read.
    let text = std::fs::read_to_string(dir.join("config.toml"))
        .unwrap()
        .replace(
            &secrets.join("copy-of-a").display().to_string(),
            &dir.join("hs256").display().to_string(),
        );
    std::fs::write(dir.join("config.toml"), text).unwrap();
    let (code, stderr) = run(&[
        "check-config",
        "--config",
        dir.join("config.toml").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("config key `session.jwt[1].hs256_secret_file`: is also session.jwt[0].hs256_secret_file"),
        "{stderr}"
    );

    // Distinct secrets serve; a rotation of B's file to A's secret is refused and B keeps its own.
    std::fs::write(secrets.join("b"), B_SECRET).unwrap();
    let (broker, _sim, _dir) = serve(issuer_b("b")).await;
    let sign = |secret: &str, sub: &str| {
        let mut claims = claims(sub);
        claims["iss"] = serde_json::json!(SITE_B);
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let resp = token_from(&broker, &sign(B_SECRET, "bea"), &[]).await;
    assert_eq!(resp.status(), 200);
    // Site A's operator knows only A's secret: a "shop" session signed with it is refused...
    let forged = sign(HS_SECRET, "bea");
    assert_problem(
        token_from(&broker, &forged, &[]).await,
        401,
        "unauthenticated",
    )
    .await;
    // ...also after someone rotates B's file to A's value.
    std::fs::write(secrets.join("b"), HS_SECRET).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_problem(
        token_from(&broker, &forged, &[]).await,
        401,
        "unauthenticated",
    )
    .await;
    let resp = token_from(&broker, &sign(B_SECRET, "bea"), &[]).await;
    assert_eq!(resp.status(), 200, "the last good secret stays in use");
    let (_, output) = broker.stop().await;
    assert!(
        output.contains("same secret as session.jwt[0].hs256_secret_file"),
        "operators see why"
    );
    assert!(!output.contains(HS_SECRET) && !output.contains(B_SECRET));
}

/// The attack of the last review: with a one-byte `redis.cache_secret_file`, a chat token cached
/// in Redis was decrypted by trying 95 values. The cache secret is held to 32 bytes like every
/// shared secret: at start-up, and on rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_cache_secret_is_never_short() {
    let secrets = temp_dir();
    let cache = secrets.join("cache-secret");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = TestConfig {
        admin: true,
        extra_toml: format!(
            "\n[redis]\nurl = \"redis://{closed}\"\non_unavailable = \"local\"\ncache_secret_file = \"{}\"\n",
            cache.display()
        ),
        ..TestConfig::default()
    };
    for short in ["x", "0123456789abcdef0123456789abcde"] {
        std::fs::write(&cache, short).unwrap();
        let dir = temp_dir();
        write_config(&cfg, &dir, "http://127.0.0.1:9", "127.0.0.1:0");
        for command in ["serve", "check-config"] {
            let (code, stderr) = run_bounded(&[
                command,
                "--config",
                dir.join("config.toml").to_str().unwrap(),
            ]);
            assert!(
                code.is_some_and(|c| c != 0),
                "{command} took {} bytes",
                short.len()
            );
            assert!(
                stderr.contains("redis.cache_secret_file")
                    && stderr.contains("shorter than 32 bytes"),
                "{command}: {stderr}"
            );
        }
    }
    std::fs::write(&cache, "0123456789abcdef0123456789abcdef").unwrap();
    let (broker, _sim, _dir) = serve(cfg).await;
    assert_eq!(
        token_from(&broker, &session("cara"), &[]).await.status(),
        200
    );
    std::fs::write(&cache, "x").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready: Value = http_client()
        .get(broker.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["stale_secrets"],
        json!(["redis.cache_secret"]),
        "{ready}"
    );
    assert_eq!(
        token_from(&broker, &session("cara"), &[]).await.status(),
        200
    );
    let (_, output) = broker.stop().await;
    assert!(
        output.contains("shorter than 32 bytes"),
        "operators see why"
    );
}

/// A client of the backend listener at a loopback address of its own (all of 127.0.0.0/8 is
/// local): distinct callers without any header trickery.
fn client_at(ip: &str) -> reqwest::Client {
    intellia_token_broker::testing::install_crypto_provider();
    reqwest::Client::builder()
        .local_address(Some(ip.parse().unwrap()))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_secrets_are_long_and_guessing_them_is_limited_per_client() {
    let cfg = TestConfig {
        // Believed on the public listener; never on the backend listener.
        trusted_proxies: vec!["127.0.0.0/8".to_owned()],
        admin: true,
        ..TestConfig::default()
    };
    let (broker, _sim, dir) = serve(cfg).await;
    let url = broker.backend_url("/v1/backend/token");
    let attempt = |from: &str, secret: Option<&str>, forwarded: Option<&str>| {
        let mut request = client_at(from).post(&url).json(&json!({"userId": "bob"}));
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        if let Some(forwarded) = forwarded {
            request = request.header("X-Forwarded-For", forwarded);
        }
        async move { request.send().await.unwrap() }
    };
    let guess = Some("guess-guess-guess-guess-guess-guess");
    // The attack of the last review: the attacker shares the backend's address (here: is on
    // it) and spends its allowance: 10 wrong secrets per minute, then 429 for wrong ones...
    for n in 0..10 {
        let resp = attempt("127.0.0.50", guess, None).await;
        assert_eq!(resp.status(), 401, "failure {n}");
    }
    let resp = attempt("127.0.0.50", guess, None).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_problem(resp, 429, "rate_limited").await;
    // ...while the backend on that very address, with the right secret, is never refused, and
    // the attacker's wrong secrets between its requests stay refused.
    for n in 0..40 {
        let resp = attempt("127.0.0.50", Some(BACKEND_SECRET), None).await;
        assert_eq!(resp.status(), 200, "the right secret, request {n}");
        let resp = attempt("127.0.0.50", guess, None).await;
        assert_eq!(resp.status(), 429, "a wrong secret between them, {n}");
    }
    // Claiming the backend's address in X-Forwarded-For charges the claimer's own address: the
    // backend listener believes no header, whatever trusted_proxies says.
    for _ in 0..11 {
        attempt("127.0.0.51", guess, Some("127.0.0.60")).await;
    }
    assert_eq!(attempt("127.0.0.51", guess, None).await.status(), 429);
    assert_eq!(attempt("127.0.0.60", guess, None).await.status(), 401);
    assert_eq!(
        attempt("127.0.0.60", Some(BACKEND_SECRET), None)
            .await
            .status(),
        200
    );
    // Requests without a credential are a plain 401 and count for nothing.
    for _ in 0..30 {
        let resp = attempt("127.0.0.52", None, None).await;
        assert_problem(resp, 401, "unauthenticated").await;
    }
    assert_eq!(attempt("127.0.0.52", guess, None).await.status(), 401);
    // The public listener does not serve the route at all, right secret or not.
    let resp = client_at("127.0.0.53")
        .post(broker.url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .json(&json!({"userId": "bob"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404, "not_found").await;

    // A rotated secret shorter than 32 bytes is refused; the last good one stays in use.
    std::fs::write(dir.join("backend"), "too-short").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready: Value = http_client()
        .get(broker.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["stale_secrets"], json!(["backend.secret"]), "{ready}");
    assert_eq!(
        attempt("127.0.0.54", Some(BACKEND_SECRET), None)
            .await
            .status(),
        200
    );
    let (_, output) = broker.stop().await;
    assert!(
        output.contains("shorter than 32 bytes"),
        "operators see why"
    );

    // At start-up it is one clear line naming the key.
    let (code, stderr) = run(&[
        "serve",
        "--config",
        dir.join("config.toml").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("backend.secret_file") && stderr.contains("shorter than 32 bytes"),
        "{stderr}"
    );
}

#[test]
fn check_config_into_a_closed_pipe_does_not_panic() {
    let dir = default_config_dir();
    let mut child = Command::new(broker_bin())
        .args([
            "check-config",
            "--config",
            dir.join("config.toml").to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before a byte is read, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_grace_period_alone_is_a_valid_configuration() {
    let cfg = TestConfig::default();
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    let text = write_config(&cfg, &dir, &sim_url, "127.0.0.1:0")
        .replace("shutdown_grace_secs = 3\n", "shutdown_grace_secs = 5\n")
        .replace("drain_delay_secs = 1\n", "");
    std::fs::write(dir.join("config.toml"), text).unwrap();
    let broker = tokio::task::spawn_blocking(move || BrokerProcess::serve(&dir, "info"))
        .await
        .unwrap();
    let started = Instant::now();
    let (status, output) = broker.stop().await;
    assert!(status.success(), "{status:?}: {output}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
