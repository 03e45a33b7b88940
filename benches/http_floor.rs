//! The cache-hit token route against the HTTP floor of the same server, measured with `wrk`.
//!
//! A load generator that costs more per request than the route it measures compresses every
//! ratio toward 1; wrk (C, epoll, a Lua script for the POST) costs less than the broker's cheapest
//! route, so `POST /v1/token` ÷ `GET /healthz` reads what a cache hit really adds. The release
//! broker and the simulator run as processes on loopback, `RUST_LOG=warn`, limits set high (every
//! request still passes through them), one valid session, the cache on. Each scenario alternates
//! `/healthz` and `/v1/token` runs, so every ratio compares runs seconds apart; the median of the
//! rounds is the scenario's figure. Each run also reads the broker's CPU time (`/proc`): the CPU
//! a token request costs the server ÷ what `/healthz` costs, a steadier figure on a shared machine
//! than throughput, which also moves with the client's and the scheduler's share of the cores.
//!
//! `cargo bench --bench http_floor [-- SCENARIO...]` (or `./scripts/bench.sh floor`); scenarios:
//! `local` (traces off), `traced` (every request traced, exported over OTLP/HTTP to a local sink),
//! `redis` (per-user + per-IP + upstream limits in a local `redis-server`). Prints a table, then one
//! `floor-ratio SCENARIO VALUE` line each, which `./scripts/bench.sh check` compares with the
//! committed baseline, and a `floor-cpu SCENARIO VALUE` line each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use testkit::bench::{Fixture, HIGH_LIMITS, otlp_sink};
use testkit::process::BrokerProcess;

const THREADS: &str = "2";
const CONNECTIONS: &str = "32";
const RUN_SECS: u64 = 4;
const ROUNDS: usize = 5;

/// What one wrk run reports, and the broker's CPU time per request meanwhile.
struct Run {
    rps: f64,
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_us: f64,
}

fn millis(text: &str) -> f64 {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "ms"), |at| text.split_at(at));
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "s" => value * 1000.0,
        _ => value,
    }
}

/// Runs wrk against `url` (a POST with `authorization` when given), timing the CPU of `pid`.
fn wrk(url: &str, authorization: Option<&str>, scratch: &std::path::Path, pid: u32) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", THREADS, "-c", CONNECTIONS, "-d"])
        .arg(format!("{RUN_SECS}s"))
        .arg("--latency");
    if let Some(token) = authorization {
        let script = scratch.join("post.lua");
        std::fs::write(
            &script,
            format!("wrk.method = \"POST\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"),
        )
        .expect("lua script");
        cmd.arg("-s").arg(script);
    }
    let cpu_before = testkit::procfs::cpu_secs(pid);
    let out = cmd.arg(url).output().expect("wrk (Debian package `wrk`)");
    let cpu_us = (testkit::procfs::cpu_secs(pid) - cpu_before) * 1_000_000.0;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut run = Run {
        rps: 0.0,
        requests: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        errors: 0,
        cpu_us: f64::NAN,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => run.rps = value.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => run.requests = n.parse().unwrap_or(0.0),
            ["50%", value] => run.p50_ms = millis(value),
            ["99%", value] => run.p99_ms = millis(value),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", ..] => run.errors += 1,
            _ => {}
        }
    }
    assert!(run.rps > 0.0, "wrk reported nothing:\n{text}");
    run.cpu_us = cpu_us / run.requests;
    run
}

struct Scenario {
    name: &'static str,
    ratio: f64,
    /// The broker's CPU time per token request ÷ per `/healthz` request (median of the rounds):
    /// what the route costs the server (its code and its system calls), without the client's.
    cpu_ratio: f64,
    rows: Vec<(String, String)>,
}

async fn scenario(
    fixture: &Fixture,
    name: &'static str,
    tail: &str,
    env: &[(&str, &str)],
) -> Scenario {
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "warn"));
    let (broker, _) = fixture
        .broker_with_env(&format!("floor-{name}"), "", tail, &env)
        .await;
    let token = fixture.hs_token("floor-user");
    let base = format!("http://{}", broker.addr);
    let pid = broker.pid();
    // Warm-up: the first mint, the verified-session cache, connections.
    tokio::task::block_in_place(|| {
        wrk(
            &format!("{base}/v1/token"),
            Some(&token),
            fixture.dir(),
            pid,
        );
    });
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for round in 1..=ROUNDS {
        let (health, token_run) = tokio::task::block_in_place(|| {
            (
                wrk(&format!("{base}/healthz"), None, fixture.dir(), pid),
                wrk(
                    &format!("{base}/v1/token"),
                    Some(&token),
                    fixture.dir(),
                    pid,
                ),
            )
        });
        assert_eq!(token_run.errors, 0, "{name}: token requests failed");
        let ratio = token_run.rps / health.rps;
        ratios.push(ratio);
        cpu_ratios.push(token_run.cpu_us / health.cpu_us);
        rows.push((
            format!("{name}, round {round}"),
            format!(
                "healthz {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms, broker CPU {:.1} µs/req); token {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms, broker CPU {:.1} µs/req); **{ratio:.2} × healthz**",
                health.rps, health.p50_ms, health.p99_ms, health.cpu_us, token_run.rps, token_run.p50_ms, token_run.p99_ms, token_run.cpu_us
            ),
        ));
    }
    check_quiet(&broker);
    ratios.sort_by(f64::total_cmp);
    cpu_ratios.sort_by(f64::total_cmp);
    Scenario {
        name,
        ratio: ratios[ratios.len() / 2],
        cpu_ratio: cpu_ratios[cpu_ratios.len() / 2],
        rows,
    }
}

/// A benchmark that logged warnings measured something else than it says.
fn check_quiet(broker: &BrokerProcess) {
    let output = broker.output();
    assert!(
        !output.contains("\"level\":\"ERROR\""),
        "the broker logged errors during the run:\n{output}"
    );
}

fn main() {
    let Some(runtime) = testkit::bench::runtime() else {
        return;
    };
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| asked.is_empty() || asked.iter().any(|a| a == name);
    let scenarios = runtime.block_on(async {
        let fixture = Fixture::start("floor").await;
        let mut done = Vec::new();
        if wanted("local") {
            done.push(scenario(&fixture, "local", HIGH_LIMITS, &[]).await);
        }
        if wanted("traced") {
            let (sink, exports) = otlp_sink();
            let tail = format!(
                "{HIGH_LIMITS}\n[telemetry]\notlp_endpoint = \"{sink}\"\nsample_ratio = 1.0\n"
            );
            let mut traced = scenario(&fixture, "traced", &tail, &[]).await;
            let exports = exports.load(std::sync::atomic::Ordering::Relaxed);
            assert!(exports > 0, "traced: the sink received no export");
            traced.rows.push((
                "traced: exports received by the sink".into(),
                exports.to_string(),
            ));
            done.push(traced);
        }
        if wanted("redis") {
            match testkit::redis::RedisServer::builder().try_start() {
                Ok(redis) => {
                    let tail = format!(
                        "{HIGH_LIMITS}\n[redis]\nurl = \"{}\"\ntimeout_ms = 50\n",
                        redis.url()
                    );
                    done.push(scenario(&fixture, "redis", &tail, &[]).await);
                }
                Err(e) => eprintln!("redis: skipped ({e})"),
            }
        }
        done
    });
    println!(
        "wrk -t{THREADS} -c{CONNECTIONS} -d{RUN_SECS}s, {ROUNDS} rounds of /healthz then /v1/token (cache hit, HS256 session)\n"
    );
    println!("| run | result |\n|---|---|");
    for s in &scenarios {
        for (name, value) in &s.rows {
            println!("| {name} | {value} |");
        }
    }
    println!();
    for s in &scenarios {
        println!("floor-ratio {} {:.3}", s.name, s.ratio);
    }
    for s in &scenarios {
        println!("floor-cpu {} {:.3}", s.name, s.cpu_ratio);
    }
}
