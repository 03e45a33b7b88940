//! Bounded soak (issue #8): mixed traffic against the release broker and the simulator as real
//! processes for `SOAK_SECS` (default 300), in phases of 15 s that alternate a healthy Intellia
//! with an injected fault. Reports resident memory and open file descriptors phase by phase, every
//! status each kind of traffic got, and fails if a 5xx came back other than from an injected fault,
//! if the broker's output shows a panic or a secret, or if it stopped serving.
//! `SOAK_SECS=300 cargo bench --bench soak` (or `./scripts/soak.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::bench::{Fixture, backend_request, listener_for, token_request};
use testkit::consts::{API_KEY, BACKEND_SECRET, HS_SECRET};
use testkit::loadgen::{self, Outcome, Request, Stop, request};
use testkit::process::BrokerProcess;
use testkit::procfs::mb;

const PHASE: Duration = Duration::from_secs(15);

/// The faults cycled through, one per odd phase, as `POST /__simulator/faults` bodies.
const FAULTS: &[(&str, &str)] = &[
    ("Intellia 500", r#"{"always": {"status": 500}}"#),
    (
        "Intellia 429 Retry-After 1",
        r#"{"always": {"status": 429, "retryAfter": 1}}"#,
    ),
    ("Intellia slower than timeout_ms", r#"{"latencyMs": 1500}"#),
    ("Intellia garbage JSON", r#"{"always": {"garbage": true}}"#),
    (
        "Intellia closes the connection",
        r#"{"always": {"close": true}}"#,
    ),
    (
        "Intellia 503 every other call",
        r#"{"next": [{"status": 503}, {"status": 503}]}"#,
    ),
];

/// One kind of traffic: its requests, connections, pacing, and the statuses it may get in a
/// healthy phase and in a fault phase.
struct Stream {
    name: &'static str,
    requests: Arc<Vec<Request>>,
    connections: usize,
    pace: Duration,
    healthy: &'static [u16],
    faulty: &'static [u16],
    /// Distinct requests: taken once each across the soak instead of cycled.
    fresh: bool,
    /// Minted for before the soak starts, so a healthy phase starts with every token cached.
    warm: bool,
}

async fn post_json(sim: &BrokerProcess, path: &str, body: &str) {
    let req = request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let o = loadgen::run(sim.addr, Arc::new(vec![req]), 1, Stop::Once, None).await;
    assert_eq!(
        o.unexpected(&[200, 204]),
        0,
        "simulator control {path}: {}",
        o.statuses()
    );
}

fn streams(fixture: &Fixture, phases: usize) -> Vec<Stream> {
    let hits: Vec<Request> = (0..200)
        .map(|i| token_request(&fixture.hs_token(&format!("soak-hit-{i}"))))
        .chain((0..50).map(|i| token_request(&fixture.rs_token(&format!("soak-rs-{i}")))))
        .collect();
    let now = jsonwebtoken::get_current_timestamp();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss": "https://hs.bench.example", "aud": "chat-widget", "sub": "x", "exp": now - 600}),
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let invalid = vec![
        token_request("not-a-jwt"),
        token_request(&expired),
        // alg=none with an otherwise valid payload.
        token_request(&format!(
            "eyJhbGciOiJub25lIn0.{}.",
            fixture.hs_token("none").split('.').nth(1).unwrap()
        )),
        token_request(&fixture.hs_token("x").replace('.', "..")),
        request("POST", "/v1/token", &[], b""),
    ];
    // The backend listener serves the sidecar route alone. Wrong secrets from one address
    // spend its allowance (10 a minute) and are then refused with 429.
    let wrong_secret = vec![request(
        "POST",
        "/v1/backend/token",
        &[("Authorization", "Bearer wrong-secret")],
        b"{}",
    )];
    let limited: Vec<Request> = (0..5)
        .map(|i| token_request(&fixture.hs_token(&format!("soak-limited-{i}"))))
        .collect();
    let bad_bodies = vec![
        backend_request("{not json"),
        backend_request(r#"{"userId": ""}"#),
        backend_request(&format!(r#"{{"userId": "{}"}}"#, "u".repeat(8_000))),
    ];
    let bad = vec![
        request("GET", "/v1/nowhere", &[], b""),
        request("DELETE", "/v1/token", &[], b""),
        // Not served on the public listener.
        request("GET", "/v1/backend/token", &[], b""),
    ];
    // New users, through both routes: every one is a call to Intellia.
    let per_phase = (PHASE.as_secs() as usize) * 20 + 50;
    let misses: Vec<Request> = (0..phases * per_phase)
        .map(|i| token_request(&fixture.hs_token(&format!("soak-new-{i}"))))
        .collect();
    let backend_misses: Vec<Request> = (0..phases * per_phase)
        .map(|i| backend_request(&format!(r#"{{"userId": "soak-new-backend-{i}"}}"#)))
        .collect();
    vec![
        Stream {
            name: "cache hits (250 users, HS256 and RS256)",
            requests: Arc::new(hits),
            connections: 4,
            pace: Duration::from_millis(4),
            healthy: &[200],
            faulty: &[200],
            fresh: false,
            warm: true,
        },
        Stream {
            name: "invalid sessions",
            requests: Arc::new(invalid),
            connections: 1,
            pace: Duration::from_millis(10),
            healthy: &[401],
            faulty: &[401],
            fresh: false,
            warm: true,
        },
        Stream {
            name: "wrong backend secrets (backend listener)",
            requests: Arc::new(wrong_secret),
            connections: 1,
            pace: Duration::from_millis(100),
            healthy: &[401, 429],
            faulty: &[401, 429],
            fresh: false,
            warm: false,
        },
        Stream {
            name: "users over their limit (5 users at 25/s, limit 10/s)",
            requests: Arc::new(limited),
            connections: 1,
            pace: Duration::from_millis(8),
            healthy: &[200, 429],
            faulty: &[200, 429],
            fresh: false,
            warm: true,
        },
        Stream {
            name: "bad requests (route, method)",
            requests: Arc::new(bad),
            connections: 1,
            pace: Duration::from_millis(50),
            healthy: &[404, 405],
            faulty: &[404, 405],
            fresh: false,
            warm: false,
        },
        Stream {
            name: "bad sidecar bodies (JSON, fields, size; backend listener)",
            requests: Arc::new(bad_bodies),
            connections: 1,
            pace: Duration::from_millis(50),
            healthy: &[400, 413],
            faulty: &[400, 413],
            fresh: false,
            warm: false,
        },
        Stream {
            name: "cache misses (new users, browser route)",
            requests: Arc::new(misses),
            connections: 1,
            pace: Duration::from_millis(50),
            healthy: &[200],
            faulty: &[200, 429, 502, 503, 504],
            fresh: true,
            warm: false,
        },
        Stream {
            name: "cache misses (new users, sidecar route)",
            requests: Arc::new(backend_misses),
            connections: 1,
            pace: Duration::from_millis(50),
            healthy: &[200],
            faulty: &[200, 429, 502, 503, 504],
            fresh: true,
            warm: false,
        },
    ]
}

#[derive(Default)]
struct Tally {
    healthy: BTreeMap<u16, u64>,
    faulty: BTreeMap<u16, u64>,
    unexpected: u64,
}

fn fmt(statuses: &BTreeMap<u16, u64>) -> String {
    if statuses.is_empty() {
        return "–".into();
    }
    statuses
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn soak(total: Duration) -> Result<Vec<String>, String> {
    let phases = (total.as_secs() / PHASE.as_secs()).max(2) as usize;
    let fixture = Fixture::start("soak").await;
    let limits = r#"
[rate_limit.per_user]
per_minute = 600
burst = 20

[rate_limit.upstream]
per_second = 200
burst = 200
"#;
    // A short breaker so a fault phase's open breaker is closed again by the next healthy phase.
    let (mut broker, _) = fixture
        .broker("soak", "breaker_open_secs = 1", limits)
        .await;
    let streams = streams(&fixture, phases);
    // Warm-up: every cache-hit and limited user has a token before the soak starts. Minting
    // them all at once spends the upstream limit's burst, so go again until none is refused, then
    // let the bucket refill: a healthy phase must not start with it empty.
    for s in streams.iter().filter(|s| s.warm) {
        for _ in 0..10 {
            let target = listener_for(&broker, &s.requests);
            let o = loadgen::run(target, Arc::clone(&s.requests), 2, Stop::Once, None).await;
            assert_eq!(
                o.unexpected(&[200, 401, 429]),
                0,
                "warm-up: {}",
                o.statuses()
            );
            if !o.statuses.contains_key(&429) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut tallies: Vec<Tally> = streams.iter().map(|_| Tally::default()).collect();
    let mut lines = vec![
        "| phase | Intellia | RSS | open fds | requests | 5xx |".to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    let mut samples = Vec::new();
    let started = Instant::now();
    for phase in 0..phases {
        let fault = (phase % 2 == 1).then(|| FAULTS[(phase / 2) % FAULTS.len()]);
        if let Some((_, body)) = fault {
            post_json(&fixture.simulator, "/__simulator/faults", body).await;
        }
        let mut runs = Vec::new();
        for s in &streams {
            let requests = if s.fresh {
                let per_phase = s.requests.len() / phases;
                let slice = s.requests[phase * per_phase..(phase + 1) * per_phase].to_vec();
                Arc::new(slice)
            } else {
                Arc::clone(&s.requests)
            };
            runs.push(tokio::spawn(loadgen::run(
                listener_for(&broker, &requests),
                requests,
                s.connections,
                Stop::After(PHASE),
                Some(s.pace),
            )));
        }
        let mut phase_requests = 0;
        let mut phase_5xx = 0;
        for ((s, tally), run) in streams.iter().zip(&mut tallies).zip(runs) {
            let o: Outcome = run.await.map_err(|e| e.to_string())?;
            phase_requests += o.completed();
            let allowed = if fault.is_some() { s.faulty } else { s.healthy };
            tally.unexpected += o.unexpected(allowed);
            let bucket = if fault.is_some() {
                &mut tally.faulty
            } else {
                &mut tally.healthy
            };
            for (status, n) in &o.statuses {
                *bucket.entry(*status).or_default() += n;
                if *status >= 500 || *status == 0 {
                    phase_5xx += n;
                }
            }
        }
        if fault.is_some() {
            post_json(&fixture.simulator, "/__simulator/reset", "").await;
            // The fault opened the broker's breaker (for 1 s); its first call after that is a
            // probe, and requests meanwhile still get 503. Close it with single mints before the
            // healthy phase, so that phase measures a healthy broker.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            for attempt in 0..20 {
                let probe =
                    backend_request(&format!(r#"{{"userId": "soak-settle-{phase}-{attempt}"}}"#));
                let target = listener_for(&broker, std::slice::from_ref(&probe));
                let o = loadgen::run(target, Arc::new(vec![probe]), 1, Stop::Once, None).await;
                if o.statuses.contains_key(&200) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if !broker.alive() {
            return Err(format!("the broker exited during phase {phase}"));
        }
        let (rss, fds) = (broker.rss(), broker.open_fds());
        samples.push((rss, fds));
        lines.push(format!(
            "| {phase} ({:.0} s) | {} | {} | {fds} | {phase_requests} | {phase_5xx} |",
            started.elapsed().as_secs_f64(),
            fault.map_or("healthy", |(name, _)| name),
            mb(rss),
        ));
        eprintln!("{}", lines.last().unwrap());
    }

    lines.push(String::new());
    lines.push("| traffic | healthy phases | fault phases | unexpected |".to_owned());
    lines.push("|---|---|---|---|".to_owned());
    let mut unexpected = 0;
    for (s, t) in streams.iter().zip(&tallies) {
        unexpected += t.unexpected;
        lines.push(format!(
            "| {} | {} | {} | {} |",
            s.name,
            fmt(&t.healthy),
            fmt(&t.faulty),
            t.unexpected
        ));
    }

    // Memory and descriptors after the first healthy phase, against the rest of the run.
    let (first_rss, first_fds) = samples[0];
    let max_rss = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let (last_rss, last_fds) = *samples.last().unwrap();
    let max_fds = samples.iter().map(|s| s.1).max().unwrap_or(0);
    lines.push(String::new());
    lines.push(format!(
        "RSS {} after phase 0, {} at the end, {} at most; open fds {first_fds} after phase 0, {last_fds} at the end, {max_fds} at most.",
        mb(first_rss),
        mb(last_rss),
        mb(max_rss)
    ));

    drop(broker);
    let mut output = String::new();
    for f in ["soak.log", "soak.stderr"] {
        output += &std::fs::read_to_string(fixture.dir().join(f)).unwrap_or_default();
    }
    let session = fixture.hs_token("soak-hit-0");
    let leaks: Vec<&str> = [
        ("API key", API_KEY),
        ("HS256 secret", HS_SECRET),
        ("backend secret", BACKEND_SECRET),
        ("session token", session.as_str()),
    ]
    .iter()
    .filter(|(_, secret)| output.contains(secret))
    .map(|(name, _)| *name)
    .collect();
    lines.push(format!(
        "Broker output: {} lines, {} panics, secrets found: {}.",
        output.lines().count(),
        output.matches("panicked").count(),
        if leaks.is_empty() {
            "none".to_owned()
        } else {
            leaks.join(", ")
        }
    ));
    if unexpected > 0 {
        let examples: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("\"status\":429") && !l.contains("soak-limited"))
            .take(10)
            .collect();
        return Err(format!(
            "{unexpected} unexpected statuses\n{}\n{}",
            lines.join("\n"),
            examples.join("\n")
        ));
    }
    if output.contains("panicked") || !leaks.is_empty() {
        return Err(lines.join("\n"));
    }
    Ok(lines)
}

fn main() {
    let Some(runtime) = testkit::bench::runtime() else {
        return;
    };
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    match runtime.block_on(soak(Duration::from_secs(secs))) {
        Ok(lines) => println!("{}", lines.join("\n")),
        Err(report) => {
            println!("{report}");
            eprintln!("soak FAILED");
            std::process::exit(1);
        }
    }
}
