use serde_json::{Value, json};

use testkit::prelude::*;

#[tokio::test]
async fn bearer_session_gets_a_two_hour_token() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app.token(&session("alice")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(resp.headers().get("x-request-id").is_some());
    let body: Value = resp.json().await.unwrap();
    assert!(body["token"].as_str().unwrap().starts_with("sim_"));
    assert_eq!(body["userId"], "alice");
    assert_eq!(body["organizationId"], ORG);
    assert_eq!(body["role"], "chat");
    let expires_in = body["expiresIn"].as_i64().unwrap();
    assert!((7100..=7200).contains(&expires_in), "{expires_in}");
    let expires_at = time::OffsetDateTime::parse(
        body["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires_at.offset(), time::UtcOffset::UTC);
    // The simulator saw the verified identity and the organization's key.
    let user = app.sim.user("alice").expect("user created upstream");
    assert_eq!(user.email.as_deref(), Some("alice@example.com"));
    assert_eq!(user.name.as_deref(), Some("User alice"));
    assert_eq!(
        app.sim.last_authorization().unwrap(),
        format!("Bearer {API_KEY}")
    );
}

#[tokio::test]
async fn identity_fields_in_the_body_are_ignored() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(session("alice"))
        .json(
            &json!({"userId": "mallory", "userEmail": "mallory@evil.test", "userName": "Mallory"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], "alice");
    assert!(app.sim.user("mallory").is_none());
    assert_eq!(
        app.sim.user("alice").unwrap().email.as_deref(),
        Some("alice@example.com")
    );
}

#[tokio::test]
async fn missing_email_and_name_claims_are_left_out_upstream() {
    let app = spawn_app(TestConfig::default()).await;
    let mut c = claims("bob");
    c.as_object_mut().unwrap().remove("email");
    c.as_object_mut().unwrap().remove("name");
    let resp = app.token(&hs256(&c)).await;
    assert_eq!(resp.status(), 200);
    let user = app.sim.user("bob").unwrap();
    assert_eq!(user.email, None);
    assert_eq!(user.name, None);
}

#[tokio::test]
async fn cookie_session_from_an_allowed_origin_gets_cors_with_credentials() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .header(
            "Cookie",
            format!("other=1; site_session={}", session("carol")),
        )
        .header("Origin", ALLOWED_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in [
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
        "X-Request-Id",
    ] {
        assert!(exposed.contains(h), "{exposed}");
    }
    assert!(resp.headers().get_all("vary").iter().any(|v| v == "Origin"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], "carol");
}

#[tokio::test]
async fn cookie_session_same_origin_without_origin_header_is_accepted() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .header("Cookie", format!("site_session={}", session("dora")))
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn cookie_session_csrf_guard() {
    let app = spawn_app(TestConfig::default()).await;
    let cookie = format!("site_session={}", session("erin"));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no origin, no fetch metadata", vec![]),
        (
            "cross-site fetch metadata",
            vec![("Sec-Fetch-Site", "cross-site")],
        ),
        ("disallowed origin", vec![("Origin", "https://evil.test")]),
        ("null origin", vec![("Origin", "null")]),
        (
            "lookalike origin",
            vec![("Origin", "https://www.example.com.evil.test")],
        ),
        // Patterns get CORS without credentials, so they never carry cookie sessions.
        (
            "pattern origin",
            vec![("Origin", "https://shop.example.org")],
        ),
        (
            "disallowed origin claiming same-origin",
            vec![
                ("Origin", "https://evil.test"),
                ("Sec-Fetch-Site", "same-origin"),
            ],
        ),
    ];
    for (name, headers) in cases {
        let mut req = app
            .client
            .post(app.url("/v1/token"))
            .header("Cookie", &cookie);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let origin_header = resp
            .headers()
            .get("access-control-allow-credentials")
            .cloned();
        let body = assert_problem(resp, 403, "origin_forbidden").await;
        assert!(
            origin_header.is_none(),
            "{name}: credentials must not be allowed"
        );
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn bearer_from_a_disallowed_origin_gets_no_cors_headers() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(session("fay"))
        .header("Origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert!(resp.headers().get_all("vary").iter().any(|v| v == "Origin"));
}

#[tokio::test]
async fn pattern_origins_get_cors_without_credentials() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(session("gus"))
        .header("Origin", "https://shop.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example.org"
    );
    assert!(
        resp.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
}

#[tokio::test]
async fn preflight_answers_allowed_origins_only() {
    let app = spawn_app(TestConfig::default()).await;
    let preflight = |origin: &'static str, headers: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/token"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", headers)
            .send()
    };
    let ok = preflight(ALLOWED_ORIGIN, "authorization, content-type, x-request-id")
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], ALLOWED_ORIGIN);
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert_eq!(ok.headers()["access-control-allow-methods"], "POST");
    assert_eq!(ok.headers()["access-control-max-age"], "600");
    let allowed = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allowed.contains("Authorization") && allowed.contains("X-Request-Id"));

    let denied = preflight("https://evil.test", "authorization")
        .await
        .unwrap();
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let odd_header = preflight(ALLOWED_ORIGIN, "x-forwarded-for").await.unwrap();
    assert!(
        odd_header
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn oversized_and_odd_bodies() {
    let app = spawn_app(TestConfig::default()).await;
    let big = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(session("hal"))
        .body(vec![b'x'; 5000])
        .send()
        .await
        .unwrap();
    assert_problem(big, 413, "payload_too_large").await;
    // Chunked, with no Content-Length to check up front.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let token = session("hal");
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut request = format!(
            "POST /v1/token HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        for _ in 0..10 {
            request.push_str(&format!("3e8\r\n{}\r\n", "{".repeat(1000)));
        }
        request.push_str("0\r\n\r\n");
        // The server may answer and close before reading everything; a failed write is fine.
        let _ = stream.write_all(request.as_bytes());
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("payload_too_large"), "{raw}");
    assert_eq!(app.sim.calls(), 0);
    // A small non-JSON body is simply ignored on the browser route.
    let odd = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(session("hal"))
        .header("Content-Type", "text/plain")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 200);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let app = spawn_app(TestConfig::default()).await;
    let get = app.client.get(app.url("/v1/token")).send().await.unwrap();
    assert_problem(get, 405, "method_not_allowed").await;
    let missing = app.client.get(app.url("/v1/nope")).send().await.unwrap();
    assert_problem(missing, 404, "not_found").await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(metrics, 404, "not_found").await;
}

#[tokio::test]
async fn no_session_is_401_with_www_authenticate() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app.client.post(app.url("/v1/token")).send().await.unwrap();
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_problem(resp, 401, "unauthenticated").await;
    let basic = app
        .client
        .post(app.url("/v1/token"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "unauthenticated").await;
    assert_eq!(app.sim.calls(), 0);
}
