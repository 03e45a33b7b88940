//! Health, readiness, draining, the client script, the OpenAPI document, metrics, request ids.

use std::time::Duration;

use serde_json::Value;

use testkit::prelude::*;

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app(TestConfig::default()).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (_, ready) = app.readyz().await;
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn draining_turns_readiness_503_while_still_serving() {
    let app = spawn_app(TestConfig::default()).await;
    let shutdown = app.shutdown.clone();
    let stopper = tokio::spawn(async move { shutdown.drain_and_stop().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "draining");
    // During the drain delay the listener still serves token requests.
    assert_eq!(app.token(&session("alice")).await.status(), 200);
    stopper.await.unwrap();
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "stopped after draining"
    );
}

#[tokio::test]
async fn client_script_is_served_with_etag_and_cors() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .get(app.url("/v1/client.js"))
        .header("Origin", ALLOWED_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body = resp.text().await.unwrap();
    assert!(body.contains("IntelliaTokenClient"));
    assert_eq!(
        body,
        include_str!("../../clients/js/intellia-token-client.js")
    );
    let again = app
        .client
        .get(app.url("/v1/client.js"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let global = app
        .client
        .get(app.url("/v1/client.global.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(global.status(), 200);
}

#[tokio::test]
async fn client_script_is_gzipped_for_clients_that_ask_and_revalidates_weak_tags() {
    let app = spawn_app(TestConfig::default()).await;
    let get = |headers: &[(&str, &str)]| {
        let mut req = app.client.get(app.url("/v1/client.js"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let source = include_str!("../../clients/js/intellia-token-client.js");

    let plain = get(&[]).await.unwrap();
    assert_eq!(plain.headers()["vary"], "Accept-Encoding");
    assert!(
        plain.headers().get("content-encoding").is_none(),
        "no compression unasked"
    );
    let strong = plain.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(plain.text().await.unwrap(), source);

    let zipped = get(&[("Accept-Encoding", "br;q=1, gzip;q=0.8, identity;q=0.1")])
        .await
        .unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    assert_eq!(zipped.headers()["vary"], "Accept-Encoding");
    let weak = zipped.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(weak, format!("W/{strong}"), "the gzip variant's tag");
    let bytes = zipped.bytes().await.unwrap();
    assert!(
        bytes.len() * 3 < source.len(),
        "{} bytes compressed",
        bytes.len()
    );
    let mut inflated = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut inflated)
        .unwrap();
    assert_eq!(inflated, source);

    for refused in ["gzip;q=0", "identity", "br", "gzip;q=0.5, identity"] {
        let resp = get(&[("Accept-Encoding", refused)]).await.unwrap();
        assert!(
            resp.headers().get("content-encoding").is_none(),
            "{refused}"
        );
    }

    // A tag a CDN or compressing proxy weakened revalidates either variant (weak comparison).
    for (accept, tag, want_tag) in [
        ("identity", weak.as_str(), strong.as_str()),
        ("gzip", strong.as_str(), weak.as_str()),
        ("gzip", weak.as_str(), weak.as_str()),
    ] {
        let resp = get(&[("Accept-Encoding", accept), ("If-None-Match", tag)])
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "{accept} with If-None-Match {tag}");
        assert_eq!(resp.headers()["etag"], want_tag);
        assert_eq!(resp.headers()["vary"], "Accept-Encoding");
        assert!(resp.headers().get("content-encoding").is_none());
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    let stale = get(&[("If-None-Match", "W/\"0123\"")]).await.unwrap();
    assert_eq!(stale.status(), 200, "another tag is not a match");
}

#[tokio::test]
async fn openapi_document_matches_the_committed_copy() {
    let app = spawn_app(TestConfig::default()).await;
    let served = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["paths"]["/v1/token"]["post"].is_object());
    assert!(doc["paths"]["/v1/backend/token"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    let committed = std::fs::read_to_string(format!("{}/openapi.json", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_default();
    assert!(
        committed == served,
        "openapi.json is stale: run `cargo run -- openapi > openapi.json`"
    );
}

#[tokio::test]
async fn real_responses_have_the_documented_fields() {
    let app = spawn_app(TestConfig::default()).await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schema = &doc["components"]["schemas"]["TokenResponse"];
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let body: Value = app.token(&session("alice")).await.json().await.unwrap();
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    for name in &required {
        assert!(body.get(*name).is_some(), "{name} documented but missing");
    }
    for name in fields {
        assert!(
            schema["properties"].get(name).is_some(),
            "{name} returned but undocumented"
        );
    }
    let problem_schema = &doc["components"]["schemas"]["Problem"]["properties"];
    let problem: Value = app
        .client
        .post(app.url("/v1/token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (name, _) in problem.as_object().unwrap() {
        assert!(
            problem_schema.get(name).is_some(),
            "problem field {name} undocumented"
        );
    }
}

#[tokio::test]
async fn metrics_are_on_the_admin_listener_only() {
    let app = spawn_app(TestConfig {
        admin: true,
        ..TestConfig::default()
    })
    .await;
    assert_eq!(app.token(&session("alice")).await.status(), 200);
    assert_eq!(app.token(&session("alice")).await.status(), 200);
    assert_eq!(
        app.client
            .post(app.url("/v1/token"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    let text = app.metrics_text().await;
    for series in [
        "broker_requests_total{route=\"/v1/token\",code=\"ok\"} 2",
        "broker_requests_total{route=\"/v1/token\",code=\"unauthenticated\"} 1",
        "broker_upstream_requests_total{status_class=\"2xx\"} 1",
        "broker_cache_requests_total{result=\"hit\"} 1",
        "broker_cache_requests_total{result=\"miss\"} 1",
        "broker_build_info",
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
    assert!(!text.contains("alice"), "user ids never become labels");
}

#[tokio::test]
async fn request_ids_are_honoured_or_generated() {
    let app = spawn_app(TestConfig::default()).await;
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
}

async fn wait_for_key(app: &TestApp, key: &str) {
    for n in 0..60 {
        let resp = app.token(&session(&format!("rotation-{n}"))).await;
        assert_eq!(resp.status(), 200, "no failed request during rotation");
        if app.sim.last_authorization().as_deref() == Some(&format!("Bearer {key}")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the broker never picked up the rotated key");
}

#[tokio::test]
async fn api_key_rotation_through_a_kubernetes_style_symlink_swap() {
    use std::os::unix::fs::symlink;
    let (url, sim) = start_simulator(Default::default());
    let app = spawn_app_with_simulator(
        TestConfig {
            cache: false,
            admin: true,
            ..TestConfig::default()
        },
        url,
        sim,
    )
    .await;
    assert_eq!(app.token(&session("alice")).await.status(), 200);
    assert_eq!(
        app.sim.last_authorization().unwrap(),
        format!("Bearer {API_KEY}")
    );

    // Kubernetes mounts api-key -> ..data/api-key, ..data -> ..2026_11_28_v1, and rotates by
    // swapping ..data atomically.
    let dir = &app.dir;
    for (version, key) in [("v1", "rotated-key-one"), ("v2", "rotated-key-two")] {
        let versioned = dir.join(format!("..{version}"));
        std::fs::create_dir(&versioned).unwrap();
        std::fs::write(versioned.join("api-key"), format!("{key}\n")).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(&versioned, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if version == "v1" {
            let tmp = dir.join("api-key.tmp");
            symlink(dir.join("..data/api-key"), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("api-key")).unwrap();
        }
        wait_for_key(&app, key).await;
    }

    // An emptied key keeps the last good one, and readiness says so without going unready.
    std::fs::write(dir.join("..v2/api-key"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.token(&session("after-empty")).await.status(), 200);
    assert_eq!(
        app.sim.last_authorization().unwrap(),
        "Bearer rotated-key-two"
    );
    assert_eq!(app.parts.secrets.stale(), vec!["intellia.api_key"]);
    let ready: Value = app
        .client
        .get(app.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["secrets"], "stale");
    assert_eq!(
        ready["stale_secrets"],
        serde_json::json!(["intellia.api_key"])
    );
    assert_eq!(ready["status"], "ready");
    // The public listener says ready, and nothing about which secret is stale.
    let (status, public) = app.readyz().await;
    assert_eq!(
        (status, public),
        (200, serde_json::json!({"status": "ready"}))
    );
}
