//! Load benchmark (issue #8): the release broker and the Intellia simulator as real processes on
//! loopback, driven by a lean keep-alive HTTP client, all in one run so every row shares the same
//! machine noise. Reports throughput and latency of each route as a ratio to `GET /healthz` of the
//! same server, the added latency of a cache miss over the simulator's own time, start-up to
//! ready, resident memory idle and under load, binary size, and behaviour at twice the configured
//! limits. `cargo bench --bench load` (or `./scripts/bench.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testkit::bench::{Fixture, backend_request_for, listener_for, token_request};
use testkit::consts::{API_KEY, ORG};
use testkit::loadgen::{self, Outcome, Request, Stop, request};
use testkit::process::{BrokerProcess, broker_bin};
use testkit::procfs::{self, mb};

const CONNECTIONS: usize = 16;
const RUN: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn assume_role_request(user: &str) -> Request {
    request(
        "POST",
        &format!("/orgs/{ORG}/assume-role"),
        &[
            ("Authorization", &format!("Bearer {API_KEY}")),
            ("Content-Type", "application/json"),
        ],
        format!(r#"{{"userId":"{user}"}}"#).as_bytes(),
    )
}

/// Samples a process's resident memory while a run goes on; the peak is read at the end.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peak), Arc::clone(&stop));
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let rss = procfs::status_bytes(&pid.to_string(), "VmRSS");
                p.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { peak, stop }
    }
    fn peak(&self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

struct Table(Vec<(String, String)>);

impl Table {
    fn row(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        eprintln!("{name}: {value}");
        self.0.push((name, value));
    }
    fn run(&mut self, name: &str, o: &Outcome, floor: Option<f64>, ok: &[u16]) {
        let ratio = floor.map_or(String::new(), |f| format!(", {:.2} × healthz", o.rps() / f));
        let unexpected = o.unexpected(ok);
        let errors = if unexpected == 0 {
            String::new()
        } else {
            format!(", UNEXPECTED statuses: {}", o.statuses())
        };
        self.row(
            name,
            format!(
                "{:.0} req/s{ratio}, p50 {}, p99 {}{errors}",
                o.rps(),
                ms(o.percentile(50.0)),
                ms(o.percentile(99.0))
            ),
        );
    }
}

async fn throughput(
    broker: &BrokerProcess,
    requests: Vec<Request>,
    stop: Stop,
    conns: usize,
) -> Outcome {
    let target = listener_for(broker, &requests);
    loadgen::run(target, Arc::new(requests), conns, stop, None).await
}

async fn bench(table: &mut Table) {
    let fixture = Fixture::start("load").await;
    let size = std::fs::metadata(broker_bin()).map_or(0, |m| m.len());
    table.row("binary size (release, stripped)", mb(size));

    // Start-up to ready, five times; the last instance stays for the runs.
    let mut startups = Vec::new();
    let mut broker = None;
    for i in 0..5 {
        let (b, ready) = fixture.broker(&format!("startup-{i}"), "", "").await;
        startups.push(ready);
        broker = Some(b);
    }
    startups.sort();
    table.row(
        "start-up to ready (spawn → /readyz 200, HS256 + RS256 via JWKS + backend), 5 starts",
        format!("median {}, max {}", ms(startups[2]), ms(startups[4])),
    );
    let broker = broker.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    table.row("idle RSS after start", mb(broker.rss()));

    let hs = fixture.hs_token("bench-hs-user");
    let rs = fixture.rs_token("bench-rs-user");
    // Warm-up: first mints, connections, verified-session cache.
    for req in [
        token_request(&hs),
        token_request(&rs),
        backend_request_for("bench-backend-user"),
    ] {
        let o = throughput(
            &broker,
            vec![req],
            Stop::After(Duration::from_millis(500)),
            4,
        )
        .await;
        assert_eq!(o.unexpected(&[200]), 0, "warm-up: {}", o.statuses());
    }

    let sampler = RssSampler::start(broker.pid());
    let health = throughput(
        &broker,
        vec![request("GET", "/healthz", &[], b"")],
        Stop::After(RUN),
        CONNECTIONS,
    )
    .await;
    table.run(
        &format!(
            "GET /healthz ({CONNECTIONS} connections, {}s)",
            RUN.as_secs()
        ),
        &health,
        None,
        &[200],
    );
    let floor = Some(health.rps());
    let o = throughput(
        &broker,
        vec![token_request(&hs)],
        Stop::After(RUN),
        CONNECTIONS,
    )
    .await;
    table.run(
        "POST /v1/token, cache hit, HS256 session",
        &o,
        floor,
        &[200],
    );
    let o = throughput(
        &broker,
        vec![token_request(&rs)],
        Stop::After(RUN),
        CONNECTIONS,
    )
    .await;
    table.run(
        "POST /v1/token, cache hit, RS256 session",
        &o,
        floor,
        &[200],
    );
    let o = throughput(
        &broker,
        vec![backend_request_for("bench-backend-user")],
        Stop::After(RUN),
        CONNECTIONS,
    )
    .await;
    table.run("POST /v1/backend/token, cache hit", &o, floor, &[200]);

    // Cache misses: every request a new user, so every one mints at the simulator.
    let misses: Vec<Request> = (0..20_000)
        .map(|i| token_request(&fixture.hs_token(&format!("miss-{i}"))))
        .collect();
    let o = throughput(&broker, misses, Stop::Once, CONNECTIONS).await;
    table.run(
        "POST /v1/token, cache miss (new user each request, simulator at zero latency)",
        &o,
        floor,
        &[200],
    );
    let direct: Vec<Request> = (0..20_000)
        .map(|i| assume_role_request(&format!("direct-{i}")))
        .collect();
    let sim = loadgen::run(
        fixture.simulator.addr,
        Arc::new(direct),
        CONNECTIONS,
        Stop::Once,
        None,
    )
    .await;
    table.run(
        "simulator's own assume-role, same concurrency (for reference)",
        &sim,
        None,
        &[200],
    );
    let under_load = sampler.peak();
    table.row("peak RSS under the runs above", mb(under_load));

    // Added latency of a miss: one request at a time so queueing does not hide it, alternating
    // broker and simulator so both series see the same noise.
    let misses: Vec<Request> = (0..5_000)
        .map(|i| token_request(&fixture.hs_token(&format!("serial-miss-{i}"))))
        .collect();
    let direct: Vec<Request> = (0..5_000)
        .map(|i| assume_role_request(&format!("serial-direct-{i}")))
        .collect();
    let (via_broker, sim) =
        loadgen::interleaved(broker.addr, &misses, fixture.simulator.addr, &direct).await;
    assert_eq!(via_broker.unexpected(&[200]) + sim.unexpected(&[200]), 0);
    table.row(
        "cache miss, one request at a time: broker vs simulator alone (interleaved)",
        format!(
            "p50 {} vs {}, p99 {} vs {}",
            ms(via_broker.percentile(50.0)),
            ms(sim.percentile(50.0)),
            ms(via_broker.percentile(99.0)),
            ms(sim.percentile(99.0))
        ),
    );
    table.row(
        "added latency of a cache miss (broker − simulator)",
        format!(
            "p50 {}, p99 {}",
            ms(via_broker
                .percentile(50.0)
                .saturating_sub(sim.percentile(50.0))),
            ms(via_broker
                .percentile(99.0)
                .saturating_sub(sim.percentile(99.0)))
        ),
    );

    tokio::time::sleep(Duration::from_secs(15)).await;
    table.row("RSS after the runs, 15 s idle", mb(broker.rss()));
    drop(broker);

    shared_limits_ratio(&fixture, table).await;
    twice_the_limits(&fixture, table).await;
}

/// Cache-hit token throughput as a ratio to `/healthz` of the same process, with per-user, per-IP
/// and upstream limits set: without Redis, then with `[redis]` (every token request at most one
/// Redis round trip, concurrent ones sharing script calls; the cached token from the in-memory
/// tier), with Redis's own CPU and script calls per request during the run.
async fn shared_limits_ratio(fixture: &Fixture, table: &mut Table) {
    let limits = testkit::bench::HIGH_LIMITS;
    let Ok(redis) = testkit::redis::RedisServer::builder().try_start() else {
        table.row("cache hit with [redis]", "skipped: no redis-server");
        return;
    };
    let with_redis = format!(
        "{limits}\n[redis]\nurl = \"{}\"\ntimeout_ms = 50\n",
        redis.url()
    );
    let hs = fixture.hs_token("bench-shared-user");
    for (name, tail) in [("local limits", limits.to_owned()), ("[redis]", with_redis)] {
        let (broker, _) = fixture
            .broker(&format!("ratio-{}", name.len()), "", &tail)
            .await;
        let warm = throughput(
            &broker,
            vec![token_request(&hs)],
            Stop::After(Duration::from_millis(500)),
            4,
        )
        .await;
        assert_eq!(warm.unexpected(&[200]), 0, "warm-up: {}", warm.statuses());
        let health = throughput(
            &broker,
            vec![request("GET", "/healthz", &[], b"")],
            Stop::After(RUN),
            CONNECTIONS,
        )
        .await;
        table.run(
            &format!("GET /healthz, broker with per_user + per_ip + upstream, {name}"),
            &health,
            None,
            &[200],
        );
        let redis_cpu = procfs::cpu_secs(redis.pid().unwrap_or(0));
        let calls = redis.script_calls();
        let o = throughput(
            &broker,
            vec![token_request(&hs)],
            Stop::After(RUN),
            CONNECTIONS,
        )
        .await;
        let redis_cpu =
            (procfs::cpu_secs(redis.pid().unwrap_or(0)) - redis_cpu) / RUN.as_secs_f64();
        let calls = redis.script_calls() - calls;
        table.run(
            &format!("POST /v1/token, cache hit, per_user + per_ip + upstream, {name}"),
            &o,
            Some(health.rps()),
            &[200],
        );
        if name == "[redis]" {
            table.row(
                "redis-server CPU during the cache-hit run with [redis]",
                format!(
                    "{:.0} % of one core ({:.0} token requests/s, {:.2} script calls per request)",
                    redis_cpu * 100.0,
                    o.rps(),
                    calls as f64 / (o.rps() * RUN.as_secs_f64()).max(1.0)
                ),
            );
        }
    }
}

/// Traffic at twice each configured limit: users, one client address, and calls to Intellia.
/// Nothing but 200 and 429 may come back.
async fn twice_the_limits(fixture: &Fixture, table: &mut Table) {
    let limits = r#"
[rate_limit.per_user]
per_minute = 120
burst = 10

[rate_limit.per_ip]
per_minute = 6000
burst = 100

[rate_limit.upstream]
per_second = 50
burst = 50
"#;
    let (broker, _) = fixture.broker("limits", "", limits).await;
    let secs = Duration::from_secs(6);
    // Per user: 20 users at 4 requests/s each (limit 2/s), 80 requests/s in all.
    let users: Vec<Request> = (0..20)
        .map(|i| token_request(&fixture.hs_token(&format!("limited-{i}"))))
        .collect();
    let per_user = loadgen::run(
        broker.addr,
        Arc::new(users),
        20,
        Stop::After(secs),
        Some(Duration::from_millis(250)),
    )
    .await;
    report_limited(
        table,
        "per-user limit at 2× (20 users × 4/s, limit 2/s)",
        &per_user,
    );
    // Calls to Intellia: 100 new users/s (limit 50/s), through the backend route, which has no
    // per-IP limit, so only the upstream limit binds.
    let fresh: Vec<Request> = (0..1_000)
        .map(|i| backend_request_for(&format!("upstream-{i}")))
        .collect();
    let upstream = loadgen::run(
        listener_for(&broker, &fresh),
        Arc::new(fresh),
        10,
        Stop::After(secs),
        Some(Duration::from_millis(100)),
    )
    .await;
    report_limited(
        table,
        "upstream limit at 2× (100 new users/s, limit 50/s)",
        &upstream,
    );
    // Per IP: 200 requests/s from 127.0.0.1 (limit 100/s), spread over 400 users (no per-user
    // limit binds) whose tokens are cached after their first request.
    let many: Vec<Request> = (0..400)
        .map(|i| token_request(&fixture.hs_token(&format!("ip-{i}"))))
        .collect();
    let per_ip = loadgen::run(
        broker.addr,
        Arc::new(many),
        20,
        Stop::After(secs),
        Some(Duration::from_millis(100)),
    )
    .await;
    report_limited(
        table,
        "per-IP limit at 2× (200/s from one address, limit 100/s)",
        &per_ip,
    );
}

fn report_limited(table: &mut Table, name: &str, o: &Outcome) {
    let ok = o.statuses.get(&200).copied().unwrap_or(0);
    let limited = o.statuses.get(&429).copied().unwrap_or(0);
    table.row(
        name,
        format!(
            "{ok} × 200, {limited} × 429, {} other",
            o.unexpected(&[200, 429])
        ),
    );
}

/// `[[session.endpoint]]` against the JWT path, in one run: a session the site confirmed before
/// (remembered for `cache_secs`) against a JWT verified before, request by request on one
/// connection each (interleaved, so both see the same moments of the machine); then first
/// requests (a cookie the site has not confirmed yet, the user's token already cached) against
/// the site's own `/me` at the same moments: a first request should cost one site round trip more
/// than a remembered one, and nothing else.
async fn endpoint_session_ratio(fixture: &Fixture, table: &mut Table) {
    let site = testkit::sites::HostileSite::start();
    let tail = format!(
        "[cors]\nallowed_origins = [\"https://www.example.com\"]\n\n[[session.endpoint]]\nurl = \"{}/me\"\ncookies = [\"sid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"web:\"\ncache_secs = 300\n",
        site.base
    );
    let (broker, _) = fixture.broker("endpoint", "", &tail).await;
    let cookie_request = |cookie: &str| {
        request(
            "POST",
            "/v1/token",
            &[
                ("Cookie", &format!("theme=dark; sid={cookie}")),
                ("Origin", "https://www.example.com"),
            ],
            b"",
        )
    };
    let hs = fixture.hs_token("bench-endpoint-jwt-user");
    let cached_cookie = cookie_request("user-bench-endpoint-user.remembered");
    for req in [token_request(&hs), cached_cookie.clone()] {
        let o = throughput(
            &broker,
            vec![req],
            Stop::After(Duration::from_millis(500)),
            4,
        )
        .await;
        assert_eq!(o.unexpected(&[200]), 0, "warm-up: {}", o.statuses());
    }
    const N: usize = 20_000;
    let (jwt, endpoint) = loadgen::interleaved(
        broker.addr,
        &vec![token_request(&hs); N],
        broker.addr,
        &vec![cached_cookie.clone(); N],
    )
    .await;
    assert_eq!(jwt.unexpected(&[200]) + endpoint.unexpected(&[200]), 0);
    for (name, o) in [
        ("JWT verified before", &jwt),
        ("endpoint session confirmed before", &endpoint),
    ] {
        table.row(
            format!("cached {name}, one connection, {N} requests interleaved"),
            format!(
                "p50 {}, p99 {}",
                ms(o.percentile(50.0)),
                ms(o.percentile(99.0))
            ),
        );
    }
    table.row(
        "cached endpoint session ÷ cached JWT (interleaved)",
        format!(
            "p50 {:.3}, p99 {:.3}",
            endpoint.percentile(50.0).as_secs_f64() / jwt.percentile(50.0).as_secs_f64(),
            endpoint.percentile(99.0).as_secs_f64() / jwt.percentile(99.0).as_secs_f64()
        ),
    );
    // Throughput, alternating runs of the same length so drift hits both alike.
    let (mut jwt_rps, mut endpoint_rps) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (req, out) in [
            (token_request(&hs), &mut jwt_rps),
            (cached_cookie.clone(), &mut endpoint_rps),
        ] {
            let o = throughput(
                &broker,
                vec![req],
                Stop::After(Duration::from_secs(2)),
                CONNECTIONS,
            )
            .await;
            assert_eq!(o.unexpected(&[200]), 0, "{}", o.statuses());
            out.push(o.rps());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (j, e) = (median(&mut jwt_rps), median(&mut endpoint_rps));
    table.row(
        format!("cached throughput, {CONNECTIONS} connections, median of 3 × 2 s each"),
        format!(
            "JWT {j:.0} req/s, endpoint session {e:.0} req/s: {:.3} × JWT",
            e / j
        ),
    );

    // First requests: a new cookie each time (the site is asked), the user's token cached.
    const FIRST: usize = 3_000;
    let site_addr: std::net::SocketAddr = site.base.trim_start_matches("http://").parse().unwrap();
    let firsts: Vec<Request> = (0..FIRST)
        .map(|n| cookie_request(&format!("user-bench-endpoint-user.first{n}")))
        .collect();
    let site_me: Vec<Request> = (0..FIRST)
        .map(|n| {
            request(
                "GET",
                "/me",
                &[
                    ("Cookie", &format!("sid=user-bench-endpoint-user.direct{n}")),
                    ("Accept", "application/json"),
                ],
                b"",
            )
        })
        .collect();
    let before = site.calls("/me");
    let (first, direct) = loadgen::interleaved(broker.addr, &firsts, site_addr, &site_me).await;
    assert_eq!(first.unexpected(&[200]), 0, "{}", first.statuses());
    let asked = site.calls("/me") - before - FIRST;
    table.row(
        format!("first request (cookie not confirmed yet, token cached), {FIRST} interleaved with the site's own /me"),
        format!(
            "p50 {}, p99 {}; the site's /me alone p50 {}, p99 {}; site calls per first request {:.2}",
            ms(first.percentile(50.0)),
            ms(first.percentile(99.0)),
            ms(direct.percentile(50.0)),
            ms(direct.percentile(99.0)),
            asked as f64 / FIRST as f64
        ),
    );
    table.row(
        "first request − cached endpoint session, against one site round trip (p50)",
        format!(
            "{} added, the site's /me alone {}",
            ms(first
                .percentile(50.0)
                .saturating_sub(endpoint.percentile(50.0))),
            ms(direct.percentile(50.0))
        ),
    );
}

fn main() {
    let Some(runtime) = testkit::bench::runtime() else {
        return;
    };
    let mut table = Table(Vec::new());
    // `cargo bench --bench load -- endpoint`: only the [[session.endpoint]] rows.
    if std::env::args().skip(1).any(|a| a == "endpoint") {
        runtime.block_on(async {
            let fixture = Fixture::start("load-endpoint").await;
            endpoint_session_ratio(&fixture, &mut table).await;
        });
    // `cargo bench --bench load -- redis`: only the with/without-Redis ratio rows.
    } else if std::env::args().skip(1).any(|a| a == "redis") {
        runtime.block_on(async {
            let fixture = Fixture::start("load-redis").await;
            shared_limits_ratio(&fixture, &mut table).await;
        });
    } else {
        runtime.block_on(bench(&mut table));
    }
    println!("| measurement | result |\n|---|---|");
    for (name, value) in table.0 {
        println!("| {name} | {value} |");
    }
}
