//! The fault matrix (`docs/fault-matrix.md`): Intellia, the identity provider, the secret files
//! and the clients misbehaving in every way we know of, against the real binary. Every row checks
//! what users see (status and `code`) and that a normal request succeeds right after. Every
//! broker process runs at `RUST_LOG=trace` under a zero file-size limit, and at the end must exit
//! cleanly on SIGTERM (so it was never killed for writing a file), with no panic and no secret in
//! anything it printed.

mod harness;
mod site_endpoint;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use intellia_token_broker::testing::SimulatorConfig;
use serde_json::{Value, json};
use testkit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use harness::{
    Matrix, ensure_open_files, head_with, intellia_simulator, raw_exchange, read_until_closed,
    set_faults, slowloris,
};

#[tokio::test]
async fn the_simulator_control_api_refuses_unknown_faults() {
    let (sim_url, _) = start_simulator(SimulatorConfig::default());
    let resp = http_client()
        .post(format!("{sim_url}/__simulator/faults"))
        .json(&json!({"always": {"closed": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        400,
        "a typo in a fault is refused, not ignored"
    );
}

/// One way for Intellia to fail, and what the user of the broker sees.
struct UpstreamRow {
    name: &'static str,
    /// For `POST /__simulator/faults`.
    plan: Value,
    status: u16,
    code: &'static str,
    retry_after: Option<&'static str>,
    /// Calls the broker makes to Intellia (retries included) for one request.
    calls: u64,
}

/// Intellia misbehaving, one row at a time. Each failing row sets a fault for every call, checks
/// the answer and how many calls were made (retries), then clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intellia_faults() {
    let (sim_url, sim) = intellia_simulator(&[]);
    let cfg = TestConfig {
        cache: false,
        timeout_ms: 500,
        max_retries: 1,
        // Room for the one-second Retry-After row to be waited out.
        deadline_ms: Some(3000),
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    let control = http_client();
    m.wait_ready().await;
    m.still_serving("start-up").await;

    // Slow but within `timeout_ms`: the user just waits.
    set_faults(&control, &sim_url, json!({"latencyMs": 200})).await;
    let resp = m.token().await;
    m.minted(resp, "Intellia slow within the timeout").await;
    // A short Retry-After is waited out inside the request.
    set_faults(
        &control,
        &sim_url,
        json!({"next": [{"status": 429, "retryAfter": 1}]}),
    )
    .await;
    let before = sim.calls();
    let resp = m.token().await;
    m.minted(resp, "Intellia 429 with Retry-After: 1").await;
    assert_eq!(sim.calls() - before, 2, "one retry after the short wait");

    let empty_token = json!({"token": "", "expiresAt": "2030-01-01T00:00:00Z", "userId": "u",
                             "organizationId": ORG, "role": "chat"})
    .to_string();
    let rows = [
        UpstreamRow {
            name: "Intellia slower than timeout_ms",
            plan: json!({"latencyMs": 1500}),
            status: 504,
            code: "upstream_timeout",
            retry_after: None,
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia hangs",
            plan: json!({"always": {"hang": true}}),
            status: 504,
            code: "upstream_timeout",
            retry_after: None,
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 429 with a long Retry-After",
            plan: json!({"always": {"status": 429, "retryAfter": 30}}),
            status: 503,
            code: "upstream_unavailable",
            retry_after: Some("30"),
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 500",
            plan: json!({"always": {"status": 500}}),
            status: 503,
            code: "upstream_unavailable",
            retry_after: None,
            calls: 2,
        },
        UpstreamRow {
            name: "Intellia 503 with a long Retry-After",
            plan: json!({"always": {"status": 503, "retryAfter": 120}}),
            status: 503,
            code: "upstream_unavailable",
            retry_after: Some("120"),
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 200 with cut-off JSON",
            plan: json!({"always": {"garbage": true}}),
            status: 502,
            code: "upstream_rejected",
            retry_after: None,
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 200 with JSON of the wrong shape",
            plan: json!({"always": {"body": "{\"token\": 42}"}}),
            status: 502,
            code: "upstream_rejected",
            retry_after: None,
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 200 with an empty token",
            plan: json!({"always": {"body": empty_token}}),
            status: 502,
            code: "upstream_rejected",
            retry_after: None,
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 200 with an HTML page",
            plan: json!({"always": {"body": "<html><body>502 Bad Gateway</body></html>"}}),
            status: 502,
            code: "upstream_rejected",
            retry_after: None,
            calls: 1,
        },
        UpstreamRow {
            name: "Intellia 200 whose body stops short",
            plan: json!({"always": {"truncate": true}}),
            status: 503,
            code: "upstream_unavailable",
            retry_after: None,
            calls: 2,
        },
        UpstreamRow {
            name: "Intellia closes the connection without answering",
            plan: json!({"always": {"close": true}}),
            status: 503,
            code: "upstream_unavailable",
            retry_after: None,
            calls: 2,
        },
    ];
    for row in rows {
        let name = row.name;
        set_faults(&control, &sim_url, row.plan).await;
        let before = sim.calls();
        let resp = m.token().await;
        let headers = m.problem(resp, row.status, row.code, name).await;
        assert_eq!(
            headers.get("retry-after").map(|v| v.to_str().unwrap()),
            row.retry_after,
            "{name}: Retry-After"
        );
        assert_eq!(sim.calls() - before, row.calls, "{name}: calls to Intellia");
        set_faults(&control, &sim_url, json!({})).await;
        m.still_serving(name).await;
    }
    let output = m.finish(&[]).await;
    assert!(
        output.contains("Intellia timed out") && output.contains("in transport"),
        "operators see what went wrong upstream"
    );
}

/// The identity provider's JWKS endpoint down or serving garbage, for an issuer whose keys are
/// cached and for one whose keys were never loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_provider_faults() {
    let (sim_url, _sim) = intellia_simulator(&[]);
    let cached = FakeIdp::start(&["rsa-1"]);
    let never = FakeIdp::start(&["rsa-1"]);
    never
        .garbage
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let cfg = TestConfig {
        extra_issuers: jwks_issuer(
            &cached.base,
            &format!("jwks_url = \"{}\"", cached.jwks_url()),
        ) + &jwks_issuer(
            &never.base,
            &format!("jwks_url = \"{}\"", never.jwks_url()),
        )
        // A second issuer needs ids of its own.
        .replacen(
            "user_id_prefix = \"idp:\"",
            "user_id_prefix = \"cached:\"",
            1,
        ),
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    let signed =
        |idp: &FakeIdp, sub: &str| rs256(&idp_claims(idp, sub), Some("rsa-1"), "rsa-private.pem");
    // Keys are fetched in the background: the first issuer's arrive soon after start.
    let mut loaded = false;
    for n in 0..100 {
        let resp = m.token_with(&signed(&cached, &format!("early-{n}"))).await;
        if resp.status() == 200 {
            m.minted(resp, "the cached issuer once loaded").await;
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(loaded, "the first issuer's keys were loaded");

    let row = "JWKS serving garbage, keys never loaded";
    let resp = m.token_with(&signed(&never, "nina")).await;
    let headers = m.problem(resp, 503, "upstream_unavailable", row).await;
    assert_eq!(headers["retry-after"], "1", "{row}");
    let (status, body) = m.readyz().await;
    assert_eq!((status, body["status"].as_str()), (503, Some("starting")));
    m.still_serving(row).await;

    let row = "JWKS down, keys never loaded";
    never.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let resp = m.token_with(&signed(&never, "nina")).await;
    m.problem(resp, 503, "upstream_unavailable", row).await;
    m.still_serving(row).await;

    let row = "JWKS down, keys cached";
    cached.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let resp = m.token_with(&signed(&cached, "carl")).await;
    m.minted(resp, row).await;
    // A key the broker never saw cannot be checked while the provider is down.
    let unseen = rs256(
        &idp_claims(&cached, "carl"),
        Some("rotated-in-later"),
        "rsa-private-2.pem",
    );
    let resp = m.token_with(&unseen).await;
    m.problem(
        resp,
        401,
        "unauthenticated",
        "JWKS down, token with an unseen kid",
    )
    .await;
    m.still_serving(row).await;

    let row = "JWKS serving garbage, keys cached";
    cached.up.store(true, std::sync::atomic::Ordering::SeqCst);
    cached
        .garbage
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let resp = m.token_with(&signed(&cached, "cora")).await;
    m.minted(resp, row).await;
    m.still_serving(row).await;

    let row = "the never-loaded issuer's provider recovers";
    never.up.store(true, std::sync::atomic::Ordering::SeqCst);
    never
        .garbage
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // Requests do not fetch while the refetch window is closed (they get 503 at once); the
    // background refresher, retrying with backoff, loads the keys.
    let recovered = tokio::time::Instant::now();
    let resp = loop {
        let resp = m.token_with(&signed(&never, "nina")).await;
        if resp.status() == 200 || recovered.elapsed() > Duration::from_secs(45) {
            break resp;
        }
        assert_eq!(
            resp.status(),
            503,
            "{row}: while the refresher has not retried yet"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    m.minted(resp, row).await;
    m.wait_ready().await;

    let output = m.finish(&[]).await;
    assert!(output.contains("JWKS fetch failed"), "operators see why");
}

/// Secret files deleted, emptied and rotated while serving: the last good value stays in use,
/// readiness says `stale`, and no request fails. (A Kubernetes-style symlink swap is
/// `operations::api_key_rotation_through_a_kubernetes_style_symlink_swap`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_deleted_emptied_rotated() {
    const ROTATED: &str = "sk_test_rotated_intellia_key_DO_NOT_LEAK_91b2";
    let (sim_url, sim) = intellia_simulator(&[ROTATED]);
    let cfg = TestConfig {
        cache: false,
        admin: true,
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    m.wait_ready().await;
    m.still_serving("start-up").await;
    let sent_key = || sim.last_authorization().unwrap_or_default();
    assert_eq!(sent_key(), format!("Bearer {API_KEY}"));
    let stale = |name: &'static str| {
        move |(status, body): (u16, Value)| {
            status == 200
                && body["stale_secrets"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n == name))
        }
    };

    let row = "API key file deleted";
    std::fs::remove_file(m.dir.join("api-key")).unwrap();
    m.wait_for_admin(row, stale("intellia.api_key")).await;
    m.still_serving(row).await;
    assert_eq!(
        sent_key(),
        format!("Bearer {API_KEY}"),
        "{row}: last good key"
    );
    // Anyone who can reach the public listener learns that it is ready, nothing more.
    assert_eq!(m.readyz().await, (200, json!({"status": "ready"})), "{row}");

    let row = "API key file rotated";
    let tmp = m.dir.join("api-key.tmp");
    std::fs::write(&tmp, format!("{ROTATED}\n")).unwrap();
    std::fs::rename(&tmp, m.dir.join("api-key")).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        // Every request during the rotation succeeds, with the old key or the new one.
        m.still_serving(row).await;
        if sent_key() == format!("Bearer {ROTATED}") {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "{row}: the new key was picked up");
    m.wait_for_admin(row, |(_, body)| body["checks"]["secrets"] == "ok")
        .await;

    let row = "API key file emptied";
    std::fs::write(m.dir.join("api-key"), "").unwrap();
    m.wait_for_admin(row, stale("intellia.api_key")).await;
    m.still_serving(row).await;
    assert_eq!(
        sent_key(),
        format!("Bearer {ROTATED}"),
        "{row}: last good key"
    );

    let row = "backend secret file deleted";
    std::fs::remove_file(m.dir.join("backend")).unwrap();
    m.wait_for_admin(row, stale("backend.secret")).await;
    let resp = m
        .client
        .post(m.broker.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .json(&json!({"userId": "backend-user"}))
        .send()
        .await
        .unwrap();
    m.minted(resp, row).await;
    let resp = m
        .client
        .post(m.broker.backend_url("/v1/backend/token"))
        .bearer_auth("not-the-backend-secret")
        .json(&json!({"userId": "backend-user"}))
        .send()
        .await
        .unwrap();
    m.problem(resp, 401, "unauthenticated", row).await;

    let row = "session HS256 secret file deleted";
    std::fs::remove_file(m.dir.join("hs256")).unwrap();
    m.wait_for_admin(row, stale("session.hs256_secret")).await;
    m.still_serving(row).await;

    let output = m.finish(&[ROTATED]).await;
    assert!(
        output.contains("api-key: does not exist") && output.contains("api-key: is empty"),
        "the log names the file and what is wrong with it"
    );
}

/// Slow clients: a head or a body sent a byte at a time is cut off after `request_timeout_ms`
/// (here 1 s) while everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let (sim_url, _sim) = intellia_simulator(&[]);
    let cfg = TestConfig {
        server_toml: "request_timeout_ms = 1000".to_owned(),
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    m.wait_ready().await;
    let addr = m.broker.addr;

    let row = "slowloris head (first request on a connection)";
    let slow = tokio::spawn(slowloris(
        addr,
        "POST /v1/token HTTP/1.1\r\nHost: broker\r\n".to_owned(),
        b"X-Slow: 1\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.still_serving(&format!("{row}, while it drips")).await;
    let (answer, closed) = slow.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{row}: {answer}");
    assert!(
        closed >= Duration::from_millis(900),
        "{row}: not before the timeout ({closed:?})"
    );
    m.still_serving(row).await;

    let row = "slowloris body";
    let session_token = m.fresh_session();
    let head = format!(
        "POST /v1/token HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {session_token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    let slow = tokio::spawn(slowloris(addr, head, b" "));
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.still_serving(&format!("{row}, while it drips")).await;
    let (answer, closed) = slow.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{row}: {answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{row}: {answer}"
    );
    assert!(lower.contains("connection: close"), "{row}: {answer}");
    assert!(
        answer.contains(r#""code":"request_timeout""#),
        "{row}: {answer}"
    );
    assert!(
        closed >= Duration::from_millis(900),
        "{row}: not before the timeout ({closed:?})"
    );
    m.answers.push_str(&answer);
    m.still_serving(row).await;

    let row = "a body announced and never sent, on 50 connections at once";
    let token = m.fresh_session();
    let stuck: Vec<_> = (0..50)
        .map(|_| {
            let head = format!(
                "POST /v1/token HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 100\r\n\r\n"
            );
            tokio::spawn(slowloris(addr, head, b""))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.still_serving(&format!("{row}, while they wait")).await;
    for slow in stuck {
        let (answer, _) = slow.await.unwrap();
        assert!(
            answer.contains(r#""code":"request_timeout""#),
            "{row}: {answer}"
        );
    }
    m.still_serving(row).await;
    m.finish(&[]).await;

    // With keep-alive off every connection carries one request: the head timeout then bounds
    // every head, including the ones actix does not time (later heads on a reused connection).
    let cfg = TestConfig {
        server_toml: "request_timeout_ms = 1000\nkeep_alive_secs = 0".to_owned(),
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    m.wait_ready().await;
    let row = "keep_alive_secs = 0";
    let mut stream = TcpStream::connect(m.broker.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{row}: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{row}: {answer}"
    );
    assert!(closed.is_some(), "{row}: closed after one response");
    m.still_serving(row).await;
    m.finish(&[]).await;
}

/// actix times only the first request head on a connection; the broker bounds the others: once a
/// request is answered, the next head must arrive within `keep_alive_secs + request_timeout_ms`,
/// or the connection is closed. Measured here against the real binary, on the public and the
/// backend listener, with `request_timeout_ms = 1000` and `keep_alive_secs = 2`: a bound of 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_on_a_kept_alive_connection_is_cut_off() {
    let (sim_url, _sim) = intellia_simulator(&[]);
    let cfg = TestConfig {
        server_toml: "request_timeout_ms = 1000\nkeep_alive_secs = 2".to_owned(),
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    m.wait_ready().await;
    let bound = Duration::from_secs(3);

    // One complete request, its answer read, then the next head a byte every 200 ms.
    let kept_alive_slowloris = |addr: std::net::SocketAddr, first: &'static str| async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(first.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the first answer");
            answer.extend_from_slice(&chunk[..n]);
        }
        let answered = Instant::now();
        let drip = tokio::spawn(async move {
            let mut sent = 0usize;
            for byte in b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: "
                .iter()
                .chain([b'1'; 200].iter())
            {
                if wr.write_all(&[*byte]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sent
        });
        let (rest, closed) = read_until_closed(&mut rd, Duration::from_secs(20)).await;
        drip.abort();
        let closed = closed.map(|_| answered.elapsed());
        (String::from_utf8_lossy(&answer).into_owned(), rest, closed)
    };

    for (row, addr, first) in [
        (
            "slowloris head after a first request (public listener)",
            m.broker.addr,
            "GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n",
        ),
        (
            "slowloris head after a first request (backend listener)",
            m.broker.backend.unwrap(),
            "POST /v1/backend/token HTTP/1.1\r\nHost: broker\r\nContent-Length: 0\r\n\r\n",
        ),
    ] {
        let slow = tokio::spawn(kept_alive_slowloris(addr, first));
        tokio::time::sleep(Duration::from_millis(500)).await;
        m.still_serving(&format!("{row}, while it drips")).await;
        let (first_answer, rest, closed) = slow.await.unwrap();
        assert!(
            first_answer.starts_with("HTTP/1.1 "),
            "{row}: {first_answer}"
        );
        let closed = closed.unwrap_or_else(|| panic!("{row}: still open after 20 s"));
        assert!(
            rest.is_empty(),
            "{row}: answered a head that never finished: {rest}"
        );
        assert!(
            closed >= bound - Duration::from_millis(300)
                && closed <= bound + Duration::from_millis(1500),
            "{row}: closed {closed:?} after the answer; the bound is {bound:?}"
        );
        m.still_serving(row).await;
    }

    // An honest client that idles within keep_alive_secs, then sends its next request at once,
    // is served on the same connection.
    let row = "a kept-alive client idle 1.5 s, then a whole head";
    let mut stream = TcpStream::connect(m.broker.addr).await.unwrap();
    for n in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("{\"status\":\"ok\"}") {
            let got = stream.read(&mut chunk).await.unwrap();
            assert!(got > 0, "{row}: closed before answer {n}");
            answer.extend_from_slice(&chunk[..got]);
        }
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 "),
            "{row}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    m.finish(&[]).await;
}

/// Header floods and junk: answered by actix before any broker code runs (431 / 400 with an empty
/// body and `Connection: close`) or, within the limits, by the broker as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_refused_and_the_broker_keeps_serving() {
    let (sim_url, _sim) = intellia_simulator(&[]);
    let mut m = Matrix::start(&TestConfig::default(), &sim_url).await;
    m.wait_ready().await;
    let addr = m.broker.addr;

    let rows: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "100 headers (actix allows 96)",
            head_with((0..100).map(|n| format!("X-Flood-{n}: y"))),
            "HTTP/1.1 431 ",
        ),
        (
            "one 200 KiB header (the head buffer is 128 KiB)",
            head_with([format!("X-Big: {}", "a".repeat(200 * 1024))]),
            "HTTP/1.1 431 ",
        ),
        (
            "90 headers of 1 KiB (within the limits)",
            head_with((0..90).map(|n| format!("X-Fill-{n}: {}", "b".repeat(1024)))),
            "HTTP/1.1 200 ",
        ),
        (
            "a header line without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: broker\r\nthis is not a header\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
        (
            "a TLS handshake on the plain-HTTP port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-random-bytes\r\n\r\n".to_vec(),
            "HTTP/1.1 400 ",
        ),
    ];
    for (row, request, expected) in rows {
        let (answer, closed) = raw_exchange(addr, request).await;
        assert!(answer.starts_with(expected), "{row}: {answer}");
        if !expected.contains("200") {
            assert!(closed, "{row}: the connection is closed");
        }
        m.still_serving(row).await;
    }

    let row = "a 100 KiB bearer token";
    let resp = m
        .client
        .post(m.broker.url("/v1/token"))
        .bearer_auth("a".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    m.problem(resp, 401, "unauthenticated", row).await;
    m.still_serving(row).await;

    let row = "100 connections at once, each with a 200 KiB head";
    let floods = futures_util::stream::iter(0..100)
        .map(|_| {
            raw_exchange(
                addr,
                head_with([format!("X-Big: {}", "c".repeat(200 * 1024))]),
            )
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>();
    let meanwhile = format!("{row}, meanwhile");
    let (floods, ()) = tokio::join!(floods, m.still_serving(&meanwhile));
    for (answer, _) in floods {
        assert!(answer.starts_with("HTTP/1.1 431 "), "{row}: {answer}");
    }
    m.still_serving(row).await;
    m.finish(&[]).await;
}

/// 10,000 idle connections (no byte sent): the broker keeps answering new requests while they
/// are open, and closes every one of them after `request_timeout_ms` (a 408 first), giving its
/// file descriptors back. The broker is its own process, so each side holds 10,000 sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_released_while_serving() {
    const IDLE: usize = 10_000;
    let limit = ensure_open_files(IDLE as u64 + 2_000);
    assert!(
        limit >= IDLE as u64 + 2_000,
        "this test needs `ulimit -n` of at least {} (it is {limit})",
        IDLE + 2_000
    );
    let (sim_url, _sim) = intellia_simulator(&[]);
    let cfg = TestConfig {
        server_toml: "request_timeout_ms = 3000".to_owned(),
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    m.wait_ready().await;
    m.still_serving("start-up").await;
    let baseline = m.broker.open_fds();
    let baseline_rss = m.broker.rss() / 1024;
    let addr = m.broker.addr;

    let started = Instant::now();
    let idle: Vec<TcpStream> = futures_util::stream::iter(0..IDLE)
        .map(|_| TcpStream::connect(addr))
        .buffer_unordered(500)
        .map(|c| c.expect("connected"))
        .collect()
        .await;
    let opened = started.elapsed();
    let row = "10,000 idle connections open";
    m.still_serving(row).await;
    let held = m.broker.open_fds();
    let rss = m.broker.rss() / 1024;
    println!(
        "{IDLE} idle connections opened in {opened:?}; broker fds {baseline} -> {held}, \
         RSS {} -> {} MiB",
        baseline_rss / 1024,
        rss / 1024
    );
    assert!(
        held >= baseline + IDLE / 2,
        "the broker accepted the idle connections ({baseline} -> {held} fds)"
    );

    // Each one is answered 408 and closed by the broker's head timeout.
    let closed = futures_util::stream::iter(idle)
        .map(|mut stream| async move {
            read_until_closed(&mut stream, Duration::from_secs(60))
                .await
                .1
        })
        .buffer_unordered(IDLE)
        .filter(|closed| std::future::ready(closed.is_some()))
        .count()
        .await;
    assert_eq!(
        closed, IDLE,
        "every idle connection was closed by the broker"
    );
    let mut released = m.broker.open_fds();
    for _ in 0..100 {
        if released <= baseline + 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        released = m.broker.open_fds();
    }
    assert!(
        released <= baseline + 10,
        "the broker gave its sockets back ({baseline} before, {released} after)"
    );
    m.still_serving("10,000 idle connections closed").await;
    m.finish(&[]).await;
}

/// The mechanism behind "writes nothing to disk": under the zero file-size limit the broker
/// processes run with, a single byte written to a file ends the writer.
#[test]
fn a_zero_file_size_limit_stops_any_file_write() {
    let dir = temp_dir();
    let target = dir.join("probe");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -f 0 && ulimit -c 0 && exec sh -c 'printf x > "$0"' "$0""#)
        .arg(&target)
        .status()
        .unwrap();
    assert!(!status.success(), "the write was stopped");
    assert_eq!(std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0), 0);
}
