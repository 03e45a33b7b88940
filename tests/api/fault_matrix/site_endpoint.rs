//! The fault matrix's rows for a site asked through `[[session.endpoint]]`
//! (docs/fault-matrix.md, "A site's session endpoint"), against the real binary at
//! `RUST_LOG=trace`: what visitors see when the site misbehaves, and no cookie value in anything
//! the broker printed.

use testkit::prelude::*;
use testkit::sites::HostileSite;

use super::harness::{Matrix, intellia_simulator};

/// (cookie name, path on the hostile site, status, code, row)
const ROWS: &[(&str, &str, u16, &str, &str)] = &[
    ("c_me", "/me", 200, "ok", "signed in"),
    (
        "c_signed_out",
        "/me",
        401,
        "unauthenticated",
        "401: signed out",
    ),
    (
        "c_redirect",
        "/redirect-away",
        401,
        "unauthenticated",
        "302 to another host (not followed)",
    ),
    (
        "c_object",
        "/object-id",
        401,
        "unauthenticated",
        "200 whose id is an object",
    ),
    (
        "c_empty",
        "/empty-id",
        401,
        "unauthenticated",
        "200 whose id is empty",
    ),
    ("c_500", "/status/500", 503, "upstream_unavailable", "500"),
    ("c_429", "/status/429", 503, "upstream_unavailable", "429"),
    (
        "c_html",
        "/not-json",
        503,
        "upstream_unavailable",
        "200 with an HTML page",
    ),
    (
        "c_huge",
        "/huge",
        503,
        "upstream_unavailable",
        "200 with 8 MiB",
    ),
    (
        "c_slow",
        "/slow",
        503,
        "upstream_unavailable",
        "slower than timeout_ms",
    ),
    (
        "c_trickle",
        "/slow-body",
        503,
        "upstream_unavailable",
        "a body trickling in",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_endpoint_faults() {
    let (sim_url, _sim) = intellia_simulator(&[]);
    let site = HostileSite::start();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut endpoints = String::new();
    for (cookie, path, ..) in ROWS {
        endpoints.push_str(&format!(
            "\n[[session.endpoint]]\nurl = \"{}{path}\"\ncookies = [\"{cookie}\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"web:\"\ntimeout_ms = 500\ncache_secs = 0\n",
            site.base
        ));
    }
    endpoints.push_str(&format!(
        "\n[[session.endpoint]]\nurl = \"http://localhost:{closed_port}/me\"\ncookies = [\"c_down\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"down:\"\ntimeout_ms = 500\n"
    ));
    let cfg = TestConfig {
        extra_toml: endpoints,
        ..TestConfig::default()
    };
    let mut m = Matrix::start(&cfg, &sim_url).await;
    m.wait_ready().await;
    let mut cookies = Vec::new();
    let rows = ROWS
        .iter()
        .map(|(cookie, _, status, code, row)| (*cookie, *status, *code, *row))
        .chain([("c_down", 503, "upstream_unavailable", "nobody listening")]);
    for (n, (cookie, status, code, row)) in rows.enumerate() {
        // `user-…` is signed in at /me; the rest of the value marks it, so the log can be searched.
        let value = if code == "ok" {
            format!("user-visitor{n}-COOKIE-DO-NOT-LEAK")
        } else {
            format!("visitor{n}-COOKIE-DO-NOT-LEAK")
        };
        cookies.push(value.clone());
        let resp = m
            .client
            .post(m.broker.url("/v1/token"))
            .header("cookie", format!("theme=dark; {cookie}={value}"))
            .header("origin", ALLOWED_ORIGIN)
            .send()
            .await
            .unwrap();
        if status == 200 {
            m.minted(resp, row).await;
        } else {
            m.problem(resp, status, code, row).await;
        }
        m.still_serving(row).await;
    }
    assert_eq!(
        site.elsewhere_hits
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let cookies: Vec<&str> = cookies.iter().map(String::as_str).collect();
    let output = m.finish(&cookies).await;
    assert!(
        output.contains("session endpoint unavailable"),
        "outages are logged"
    );
}
