//! Session keys from an identity provider's JWKS: loading, discovery, unknown-kid storms, outages.

use std::time::Duration;

use serde_json::Value;

use testkit::prelude::*;

#[tokio::test]
async fn rs256_and_es256_sessions_verify_against_the_jwks() {
    let idp = FakeIdp::start(&["rsa-1", "ec-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        ..TestConfig::default()
    })
    .await;
    let rs = app
        .token(&rs256(
            &idp_claims(&idp, "alice"),
            Some("rsa-1"),
            "rsa-private.pem",
        ))
        .await;
    assert_eq!(rs.status(), 200);
    let body: Value = rs.json().await.unwrap();
    assert_eq!(
        body["userId"], "idp:alice",
        "the issuer's prefix keeps user ids apart"
    );
    let es = app
        .token(&es256(&idp_claims(&idp, "bob"), Some("ec-1")))
        .await;
    assert_eq!(es.status(), 200);
    // The HS256 issuer's "alice" is a different person from the JWKS issuer's.
    let hs: Value = app.token(&session("alice")).await.json().await.unwrap();
    // Beside another issuer the HS256 issuer has its own prefix.
    assert_eq!(hs["userId"], "site:alice");
    assert_eq!(app.sim.calls(), 3);
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, "discovery = true"),
        ..TestConfig::default()
    })
    .await;
    let resp = app
        .token(&rs256(
            &idp_claims(&idp, "alice"),
            Some("rsa-1"),
            "rsa-private.pem",
        ))
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn unknown_kid_storm_costs_at_most_one_fetch() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        ..TestConfig::default()
    })
    .await;
    let before = idp.fetches();
    let forged: Vec<String> = (0..30)
        .map(|n| {
            rs256(
                &idp_claims(&idp, "alice"),
                Some(&format!("forged-{n}")),
                "rsa-private-2.pem",
            )
        })
        .collect();
    let statuses = futures_util::future::join_all(forged.iter().map(|t| app.token(t))).await;
    assert!(statuses.iter().all(|r| r.status() == 401));
    assert!(
        idp.fetches() <= before + 1,
        "{} fetches for a storm",
        idp.fetches() - before
    );
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn known_keys_keep_working_while_the_provider_is_down() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        ..TestConfig::default()
    })
    .await;
    idp.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let resp = app
        .token(&rs256(
            &idp_claims(&idp, "alice"),
            Some("rsa-1"),
            "rsa-private.pem",
        ))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.readyz().await.0, 200);
}

#[tokio::test]
async fn provider_down_from_the_start_is_not_ready_and_503() {
    let idp = FakeIdp::start(&["rsa-1"]);
    idp.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, &format!("jwks_url = \"{}\"", idp.jwks_url())),
        expect_ready: false,
        ..TestConfig::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, ready) = app.readyz().await;
    assert_eq!(ready["status"], "starting");
    let resp = app
        .token(&rs256(
            &idp_claims(&idp, "alice"),
            Some("rsa-1"),
            "rsa-private.pem",
        ))
        .await;
    assert_problem(resp, 503, "upstream_unavailable").await;
    // HS256 sessions do not depend on the provider.
    assert_eq!(app.token(&session("bob")).await.status(), 200);
    // When the provider comes back, the broker becomes ready by itself.
    idp.up.store(true, std::sync::atomic::Ordering::SeqCst);
    app.wait_ready().await;
}

#[tokio::test]
async fn discovery_with_a_foreign_issuer_is_refused() {
    let idp = FakeIdp::start(&["rsa-1"]);
    // Configured issuer differs from what the discovery document claims (trailing path).
    let configured = format!("{}/", idp.base);
    let app = spawn_app(TestConfig {
        extra_issuers: format!(
            "\n[[session.jwt]]\nissuer = \"{configured}\"\naudience = \"{AUDIENCE}\"\ndiscovery = true\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"idp:\"\n"
        ),
        expect_ready: false,
        ..TestConfig::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.readyz().await.0, 503);
}

#[tokio::test]
async fn rotating_the_hs256_secret_revokes_sessions_signed_with_the_old_one() {
    let app = spawn_app(TestConfig::default()).await;
    let old = session("alice");
    assert_eq!(app.token(&old).await.status(), 200);
    // Verified once, the session is remembered; rotation must still end it.
    let new_secret = "a-brand-new-hs256-secret-after-rotation-0123456789";
    std::fs::write(app.dir.join("hs256"), new_secret).unwrap();
    let fresh = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("alice"),
        &jsonwebtoken::EncodingKey::from_secret(new_secret.as_bytes()),
    )
    .unwrap();
    for _ in 0..40 {
        if app.token(&fresh).await.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.token(&fresh).await.status(), 200, "new secret in use");
    assert_problem(app.token(&old).await, 401, "unauthenticated").await;
}

#[tokio::test]
async fn userinfo_fills_missing_email_and_name() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, "discovery = true\nuserinfo = true"),
        ..TestConfig::default()
    })
    .await;
    let mut c = idp_claims(&idp, "uma");
    c.as_object_mut().unwrap().remove("email");
    c.as_object_mut().unwrap().remove("name");
    let resp = app
        .token(&rs256(&c, Some("rsa-1"), "rsa-private.pem"))
        .await;
    assert_eq!(resp.status(), 200);
    let user = app.sim.user("idp:uma").unwrap();
    assert_eq!(user.email.as_deref(), Some("looked.up@example.com"));
    assert_eq!(user.name.as_deref(), Some("Looked Up"));
}

#[tokio::test]
async fn userinfo_about_another_subject_is_ignored() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(&idp.base, "discovery = true\nuserinfo = true"),
        ..TestConfig::default()
    })
    .await;
    let mut c = idp_claims(&idp, "other-person");
    c.as_object_mut().unwrap().remove("email");
    let resp = app
        .token(&rs256(&c, Some("rsa-1"), "rsa-private.pem"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.sim.user("idp:other-person").unwrap().email, None);
}
