//! `[[session.endpoint]]` against a site that misbehaves (testkit's `HostileSite`) and against
//! visitors who attack through it: huge, slow and redirecting answers, odd user ids, statuses of
//! every kind, concurrent first requests, a flood of forged cookies, identities that must not mix,
//! opaque Bearer tokens, and two sites in one user-id space at start-up.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;
use testkit::prelude::*;
use testkit::sites::HostileSite;

fn endpoint(site: &HostileSite, path: &str, extra: &str) -> String {
    format!(
        "\n[[session.endpoint]]\nurl = \"{}{path}\"\ncookies = [\"sid\"]\nuser_id_pointer = \"/id\"\nemail_pointer = \"/email\"\nuser_id_prefix = \"web:\"\n{extra}\n",
        site.base
    )
}

async fn broker(site: &HostileSite, path: &str, extra: &str) -> TestApp {
    spawn_app(TestConfig {
        extra_toml: endpoint(site, path, extra),
        admin: true,
        ..TestConfig::default()
    })
    .await
}

async fn with_cookie(app: &TestApp, cookie: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .header("cookie", cookie)
        .header("origin", ALLOWED_ORIGIN)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_gets_its_session_cookie_and_nothing_else_of_the_visitor() {
    let site = HostileSite::start();
    let app = broker(&site, "/me", "").await;
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .header("cookie", "a=1; sid=user-erin; b=2")
        .header("cookie", "c=3")
        .header("origin", ALLOWED_ORIGIN)
        .header("x-forwarded-for", "203.0.113.9")
        .header("forwarded", "for=203.0.113.9")
        .header("x-forwarded-host", "evil.example")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let call = site.last("/me").expect("asked");
    let names: Vec<&str> = call.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(call.header("cookie"), Some("sid=user-erin"), "{names:?}");
    assert_eq!(
        call.headers.iter().filter(|(n, _)| n == "cookie").count(),
        1
    );
    assert_eq!(call.header("accept"), Some("application/json"));
    assert!(
        call.header("user-agent")
            .unwrap()
            .starts_with("intellia-token-broker/")
    );
    for absent in [
        "authorization",
        "x-forwarded-for",
        "forwarded",
        "x-forwarded-host",
        "origin",
    ] {
        assert!(
            call.header(absent).is_none(),
            "{absent} forwarded: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_slow_and_odd_answers() {
    let site = HostileSite::start();
    let extra = "timeout_ms = 800\ncache_secs = 0";
    // (path, status, code)
    let rows = [
        ("/huge", 503, "upstream_unavailable"),
        ("/huge-declared", 503, "upstream_unavailable"),
        ("/slow", 503, "upstream_unavailable"),
        ("/slow-body", 503, "upstream_unavailable"),
        ("/redirect-away", 401, "unauthenticated"),
        ("/object-id", 401, "unauthenticated"),
        ("/empty-id", 401, "unauthenticated"),
        ("/array-id", 401, "unauthenticated"),
        ("/float-id", 401, "unauthenticated"),
        ("/not-json", 503, "upstream_unavailable"),
        ("/status/500", 503, "upstream_unavailable"),
        ("/status/502", 503, "upstream_unavailable"),
        ("/status/429", 503, "upstream_unavailable"),
        ("/status/404", 503, "upstream_unavailable"),
        ("/status/204", 503, "upstream_unavailable"),
        ("/status/401", 401, "unauthenticated"),
        ("/status/403", 401, "unauthenticated"),
        ("/status/301", 401, "unauthenticated"),
        ("/status/307", 401, "unauthenticated"),
    ];
    for (path, status, code) in rows {
        let app = broker(&site, path, extra).await;
        let started = Instant::now();
        let resp = with_cookie(&app, "sid=user-frank").await;
        let took = started.elapsed();
        let body = assert_problem(resp, status, code).await;
        assert!(!body.to_string().contains("user-frank"), "{path}: {body}");
        // Bounded by timeout_ms: a trickling or endless body is abandoned, not waited out.
        assert!(took < Duration::from_secs(3), "{path} took {took:?}");
        assert_eq!(site.calls(path), 1, "{path}: asked once, never retried");
        drop(app);
    }
    assert_eq!(
        site.elsewhere_hits
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_with_one_cookie_ask_once() {
    let site = HostileSite::start();
    for cache_secs in [30, 0] {
        let app = broker(&site, "/me-slow", &format!("cache_secs = {cache_secs}")).await;
        let before = site.calls("/me-slow");
        let answers = join_all((0..20).map(|_| with_cookie(&app, "sid=user-gina"))).await;
        for resp in answers {
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(
            site.calls("/me-slow") - before,
            1,
            "cache_secs = {cache_secs}"
        );
        // Afterwards: remembered, or (cache_secs = 0) asked again.
        let resp = with_cookie(&app, "sid=user-gina").await;
        assert_eq!(resp.status(), 200);
        let again = if cache_secs == 0 { 2 } else { 1 };
        assert_eq!(
            site.calls("/me-slow") - before,
            again,
            "cache_secs = {cache_secs}"
        );
        let metrics = app.metrics_text().await;
        assert!(
            metrics.contains(&format!(
                "broker_session_endpoint_requests_total{{endpoint=\"0\",outcome=\"signed_in\"}} {again}"
            )),
            "{metrics}"
        );
        assert!(metrics.contains("broker_session_endpoint_duration_seconds_bucket"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cookies_cost_the_site_nothing_once_the_address_is_limited() {
    let site = HostileSite::start();
    let app = spawn_app(TestConfig {
        extra_toml: endpoint(&site, "/me", ""),
        per_ip: Some((1, 3)),
        ..TestConfig::default()
    })
    .await;
    let mut limited = 0;
    for n in 0..10 {
        let resp = with_cookie(&app, &format!("sid=forged-{n}")).await;
        match resp.status().as_u16() {
            401 => {}
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        site.calls("/me"),
        3,
        "the site is asked only while the address has allowance"
    );
    assert_eq!(limited, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_never_mix() {
    let site = HostileSite::start();
    // Many visitors at once, each with their own cookie, asked every time.
    let app = broker(&site, "/me", "cache_secs = 0").await;
    let users: Vec<String> = (0..40).map(|n| format!("visitor-{}", n % 10)).collect();
    let answers = join_all(users.iter().map(|u| {
        let app = &app;
        async move { (u.clone(), with_cookie(app, &format!("sid=user-{u}")).await) }
    }))
    .await;
    for (user, resp) in answers {
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["userId"], format!("web:{user}"));
    }
    // A site naming somebody else on every call: each answer stands alone, and the token is for
    // the user named in the answer to that very request.
    let app = broker(&site, "/flip", "cache_secs = 0").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let resp = with_cookie(&app, "sid=anything").await;
        let body: Value = resp.json().await.unwrap();
        let user = body["userId"].as_str().unwrap().to_owned();
        assert!(app.sim.user(&user).is_some(), "{user} minted for that user");
        assert!(seen.insert(user));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_bearer_token_goes_to_the_bearer_site_only() {
    let site = HostileSite::start();
    let app = spawn_app(TestConfig {
        extra_toml: format!(
            "\n[[session.endpoint]]\nurl = \"{}/me\"\nbearer = true\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"api:\"\ncache_secs = 30\n",
            site.base
        ),
        ..TestConfig::default()
    })
    .await;
    let resp = app.token("user-hana").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], "api:hana");
    let call = site.last("/me").unwrap();
    assert_eq!(call.header("authorization"), Some("Bearer user-hana"));
    assert!(call.header("cookie").is_none());
    // Remembered: not asked again.
    assert_eq!(app.token("user-hana").await.status(), 200);
    assert_eq!(site.calls("/me"), 1);
    // Bearer needs no Origin (the page's script attaches it).
    // A JWT of the broker's own issuer is verified locally, never sent to the site.
    let resp = app.token(&session("ivan")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], "site:ivan");
    // A JWT of an issuer nobody configured is refused, never sent to the site.
    let foreign = hs256(
        &serde_json::json!({"iss": "https://elsewhere.example", "aud": AUDIENCE, "sub": "x", "exp": now() + 60}),
    );
    assert_problem(app.token(&foreign).await, 401, "unauthenticated").await;
    assert_problem(app.token("signed-out").await, 401, "unauthenticated").await;
    assert_eq!(site.calls("/me"), 2, "only the opaque tokens were sent");
}

#[test]
fn two_sites_in_one_user_id_space_are_refused_at_start_up() {
    let dir = default_config_dir();
    let config = dir.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    // No prefixes: `42` at one site and `42` at the other would be one Intellia user.
    text = text.replace(
        "cookie = \"site_session\"",
        "cookie = \"site_session\"\nuser_id_prefix = \"site:\"",
    );
    text.push_str(
        "\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\ncookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"\n\n[[session.endpoint]]\nurl = \"https://shop.example.com/api/me\"\ncookies = [\"connect.sid\"]\nuser_id_pointer = \"/id\"\n",
    );
    std::fs::write(&config, text).unwrap();
    for command in ["check-config", "serve"] {
        let (code, _, err) = run_broker(&[command, "--config", config.to_str().unwrap()], &[]);
        assert_ne!(code, 0, "{command} accepted two sites sharing ids");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].contains("session.endpoint[0].user_id_prefix"),
            "{err}"
        );
    }
}

/// The site gets the trace context (its request continues the caller's trace) and the call is a
/// `session.endpoint` client span under `session.verify`; no span holds the cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_call_carries_the_trace_and_is_a_client_span() {
    let receiver = testkit::otlp::OtlpReceiver::start();
    let site = HostileSite::start();
    let (sim_url, _sim) = start_simulator(simulator_config(&[]));
    let dir = temp_dir();
    let cfg = TestConfig {
        extra_toml: endpoint(&site, "/me", ""),
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let mut cmd = std::process::Command::new(broker_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let broker = BrokerProcess::spawn_captured(cmd, "info");
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let cookie = "user-tracy.COOKIE-DO-NOT-LEAK";
    let resp = http_client()
        .post(broker.url("/v1/token"))
        .header("cookie", format!("sid={cookie}"))
        .header("origin", ALLOWED_ORIGIN)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let call = site.last("/me").unwrap();
    let parent = call
        .header("traceparent")
        .expect("the site got a traceparent");
    assert_eq!(
        parent.split('-').nth(1),
        Some(trace_id.as_str()),
        "{parent}"
    );
    let _ = receiver
        .spans(
            &format!("trace_id={trace_id}&kind=SPAN_KIND_SERVER"),
            1,
            Duration::from_secs(15),
        )
        .await;
    let spans = receiver
        .spans(&format!("trace_id={trace_id}"), 3, Duration::from_secs(5))
        .await;
    let by_name = |name: &str| spans.iter().find(|s| s["name"] == name).cloned();
    let site_span = by_name("session.endpoint").expect("a session.endpoint span");
    let verify = by_name("session.verify").expect("a session.verify span");
    assert_eq!(site_span["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(site_span["attributes"]["outcome"], "signed_in");
    assert_eq!(site_span["parent_span_id"], verify["span_id"]);
    assert_eq!(verify["attributes"]["source"], "endpoint");
    assert_eq!(
        parent.split('-').nth(2),
        site_span["span_id"].as_str(),
        "the site's parent is the session.endpoint span"
    );
    let all = serde_json::to_string(&spans).unwrap();
    assert!(!all.contains("COOKIE-DO-NOT-LEAK"), "{all}");
    let (_, output) = broker.stop().await;
    assert!(!output.contains("COOKIE-DO-NOT-LEAK"));
}
