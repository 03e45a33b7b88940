use serde_json::{Value, json};

use testkit::prelude::*;

#[tokio::test]
async fn backend_names_the_user() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .backend(
            BACKEND_SECRET,
            json!({"userId": "user-123", "userEmail": "user@example.com", "userName": "John Doe"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], "user-123");
    assert_eq!(body["organizationId"], ORG);
    let user = app.sim.user("user-123").unwrap();
    assert_eq!(user.email.as_deref(), Some("user@example.com"));
    assert_eq!(user.name.as_deref(), Some("John Doe"));
    // Only userId is required.
    let minimal = app
        .backend(BACKEND_SECRET, json!({"userId": "user-456"}))
        .await;
    assert_eq!(minimal.status(), 200);
}

#[tokio::test]
async fn bad_bodies_are_400_and_never_reach_intellia() {
    let app = spawn_app(TestConfig::default()).await;
    let cases = vec![
        ("missing userId", json!({"userEmail": "a@b.co"})),
        ("empty userId", json!({"userId": ""})),
        ("numeric userId", json!({"userId": 7})),
        ("overlong userId", json!({"userId": "x".repeat(257)})),
        ("control character", json!({"userId": "a\nb"})),
        (
            "implausible email",
            json!({"userId": "u", "userEmail": "not-an-email"}),
        ),
        (
            "overlong email",
            json!({"userId": "u", "userEmail": format!("{}@example.com", "a".repeat(320))}),
        ),
        (
            "overlong name",
            json!({"userId": "u", "userName": "n".repeat(257)}),
        ),
        (
            "unknown field",
            json!({"userId": "u", "userEmial": "a@b.co"}),
        ),
        ("not an object", json!(["u"])),
    ];
    for (name, body) in cases {
        let resp = app.backend(BACKEND_SECRET, body).await;
        assert_eq!(resp.status(), 400, "{name}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request", "{name}");
    }
    let malformed = app
        .client
        .post(app.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .header("Content-Type", "application/json")
        .body("{\"userId\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, "invalid_request").await;
    let wrong_type = app
        .client
        .post(app.backend_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .header("Content-Type", "text/plain")
        .body("{\"userId\": \"u\"}")
        .send()
        .await
        .unwrap();
    assert_problem(wrong_type, 400, "invalid_request").await;
    let huge = app
        .backend(
            BACKEND_SECRET,
            json!({"userId": "u", "pad": "x".repeat(5000)}),
        )
        .await;
    assert_problem(huge, 413, "payload_too_large").await;
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn backend_route_is_unknown_without_backend_config() {
    let app = spawn_app(TestConfig {
        backend: false,
        ..TestConfig::default()
    })
    .await;
    assert!(app.backend.is_none(), "no [backend], no backend listener");
    let resp = app
        .client
        .post(app.url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .json(&json!({"userId": "u"}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 404, "not_found").await;
}

/// An ingress in front of the public listener must never reach the sidecar route: there it is an
/// unknown path whatever the method or credential, and the backend listener serves nothing else.
#[tokio::test]
async fn the_sidecar_route_is_served_on_the_backend_listener_only() {
    let app = spawn_app(TestConfig {
        admin: true,
        ..TestConfig::default()
    })
    .await;
    let public = |method: reqwest::Method| {
        app.client
            .request(method, app.url("/v1/backend/token"))
            .bearer_auth(BACKEND_SECRET)
            .json(&json!({"userId": "u"}))
            .send()
    };
    for method in [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::OPTIONS,
        reqwest::Method::PUT,
    ] {
        let resp = public(method.clone()).await.unwrap();
        let status = resp.status();
        if method == reqwest::Method::OPTIONS {
            // Unknown paths answer a preflight alike, with no CORS grant.
            assert_eq!(status, 204, "{method}");
            assert!(
                !resp.headers().contains_key("access-control-allow-origin"),
                "{method}"
            );
        } else {
            assert_problem(resp, 404, "not_found").await;
        }
    }
    // Nor on the admin listener.
    let resp = app
        .client
        .post(app.admin_url("/v1/backend/token"))
        .bearer_auth(BACKEND_SECRET)
        .json(&json!({"userId": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        app.sim.calls(),
        0,
        "nothing minted through another listener"
    );
    // The backend listener: the route, and nothing of the public or admin listeners.
    assert_eq!(
        app.backend(BACKEND_SECRET, json!({"userId": "u"}))
            .await
            .status(),
        200
    );
    for path in [
        "/v1/token",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/v1/client.js",
    ] {
        let resp = app.client.get(app.backend_url(path)).send().await.unwrap();
        assert_problem(resp, 404, "not_found").await;
    }
    let resp = app
        .client
        .get(app.backend_url("/v1/backend/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
}
