//! Heap allocations per request, counted: the real public application (every middleware, the
//! handler, the service, limits, cache, rendering) driven in process, with a counting wrapper
//! around the system allocator (how many allocations a request makes does not depend on which
//! allocator serves them; stable Rust cannot wrap jemalloc in a `static`). What it leaves out is
//! actix-http's own connection code (parsing the request head, writing the response), which is
//! the same for every route; `GET /healthz` is counted as the floor.
//!
//! `cargo bench --bench allocs` (or `./scripts/bench.sh allocs`). Deterministic: the same build
//! counts the same on any machine, busy or not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::http::header;
use actix_web::test;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use testkit::config::{TestConfig, temp_dir, write_config};
use testkit::jwt::session;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 2_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    actix_web::rt::System::new().block_on(async {
        use intellia_token_broker::testing::{AppParts, BuildOptions, Settings, public_app};

        let (sim_url, _sim) = testkit::app::start_simulator(testkit::app::simulator_config(&[]));
        let cfg = TestConfig {
            per_user: Some((1_000_000_000, 1_000_000_000)),
            per_ip: Some((1_000_000_000, 1_000_000_000)),
            upstream: Some((1000, 1000)),
            ..TestConfig::default()
        };
        let dir = temp_dir();
        let text = write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
        let settings = Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
        let parts = AppParts::build(&settings, BuildOptions::default()).unwrap();
        let app = test::init_service(public_app(parts)).await;
        let token = session("alloc-user");
        let token_request = || {
            test::TestRequest::post()
                .uri("/v1/token")
                .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
                .peer_addr("203.0.113.9:40000".parse().unwrap())
                .to_request()
        };
        let health_request = || {
            test::TestRequest::get()
                .uri("/healthz")
                .peer_addr("203.0.113.9:40000".parse().unwrap())
                .to_request()
        };
        // The first request mints and remembers the session; later ones are cache hits.
        for _ in 0..3 {
            let resp = test::call_service(&app, token_request()).await;
            assert_eq!(resp.status(), 200);
        }

        // Built before counting: the test client's own work is not the broker's.
        macro_rules! count {
            ($name:expr, $make:expr) => {{
                let requests: Vec<_> = (0..REQUESTS).map(|_| $make).collect();
                let region = Region::new(GLOBAL);
                for request in requests {
                    let resp = test::call_service(&app, request).await;
                    assert_eq!(resp.status(), 200, "{}", $name);
                    drop(resp);
                }
                let stats = region.change();
                (
                    $name,
                    stats.allocations as f64 / REQUESTS as f64,
                    stats.bytes_allocated as f64 / REQUESTS as f64,
                )
            }};
        }
        let rows = [
            count!("GET /healthz", health_request()),
            count!(
                "POST /v1/token, cache hit (HS256 session, per-user + per-IP limits)",
                token_request()
            ),
        ];
        println!(
            "| request | allocations per request | bytes allocated per request |\n|---|---|---|"
        );
        for (name, allocations, bytes) in rows {
            println!("| {name} | {allocations:.1} | {bytes:.0} |");
        }
        let _ = std::fs::remove_dir_all(dir);
    });
}
