//! Attacks on the session verifier and the edges around it. Every case must end in a refusal
//! with a stable code, and must never reach Intellia.

use serde_json::{Value, json};

use testkit::prelude::*;

async fn refused(app: &TestApp, token: &str, case: &str) {
    let resp = app.token(token).await;
    assert_eq!(resp.status(), 401, "{case}: expected 401");
    assert!(resp.headers().get("www-authenticate").is_some(), "{case}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated", "{case}");
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.contains(token), "{case}: token echoed");
}

/// An issuer of the stand-in provider, its user ids prefixed with its port (so two of them
/// never share an id space).
fn rs_issuer(idp: &FakeIdp) -> String {
    let port = idp.base.rsplit(':').next().unwrap_or("0");
    format!(
        "\n[[session.jwt]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\njwks_url = \"{}\"\nalgorithms = [\"RS256\", \"ES256\"]\nleeway_secs = 5\nuser_id_prefix = \"idp{port}:\"\n",
        idp.base,
        idp.jwks_url()
    )
}

fn rs_claims(idp: &FakeIdp, sub: &str) -> Value {
    let mut c = claims(sub);
    c["iss"] = json!(idp.base);
    c
}

#[tokio::test]
async fn alg_none_in_every_spelling_is_refused() {
    let app = spawn_app(TestConfig::default()).await;
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let token = raw_jwt(&json!({"alg": alg, "typ": "JWT"}), &claims("alice"), b"");
        refused(&app, &token, &format!("alg={alg}")).await;
        let token = raw_jwt(&json!({"alg": alg}), &claims("alice"), b"sig");
        refused(&app, &token, &format!("alg={alg} with signature")).await;
    }
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn algorithm_confusion_hs256_with_the_rsa_public_key_is_refused() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: rs_issuer(&idp),
        ..TestConfig::default()
    })
    .await;
    // The attacker knows the public key (it is public) and uses it as an HMAC secret.
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &rs_claims(&idp, "alice"),
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    refused(&app, &forged, "HS256 signed with the RSA public key").await;
    // The genuine RS256 token from the same issuer works, so the refusal is about the algorithm.
    let genuine = rs256(&rs_claims(&idp, "alice"), Some("rsa-1"), "rsa-private.pem");
    assert_eq!(app.token(&genuine).await.status(), 200);
    assert_eq!(app.sim.calls(), 1);
}

#[tokio::test]
async fn tokens_signed_for_one_family_are_refused_by_issuers_of_another() {
    let idp = FakeIdp::start(&["rsa-1", "ec-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: rs_issuer(&idp),
        ..TestConfig::default()
    })
    .await;
    // RS256 token claiming the HS256 issuer.
    let token = rs256(&claims("alice"), Some("rsa-1"), "rsa-private.pem");
    refused(&app, &token, "RS256 token for the HS256 issuer").await;
    // ES256 works for the JWKS issuer, but not with the RSA key's kid.
    let es = es256(&rs_claims(&idp, "eve"), Some("ec-1"));
    assert_eq!(app.token(&es).await.status(), 200);
    let mismatched = es256(&rs_claims(&idp, "eve"), Some("rsa-1"));
    refused(&app, &mismatched, "ES256 with an RSA kid").await;
    assert_eq!(app.sim.calls(), 1);
}

#[tokio::test]
async fn time_claims_are_enforced_with_leeway() {
    let app = spawn_app(TestConfig::default()).await;
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 60);
    refused(&app, &hs256(&expired), "expired beyond leeway").await;

    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(&app, &hs256(&no_exp), "no exp").await;

    let mut future = claims("alice");
    future["nbf"] = json!(now() + 120);
    refused(&app, &hs256(&future), "nbf in the future").await;
    assert_eq!(app.sim.calls(), 0);

    let mut within = claims("alice");
    within["exp"] = json!(now() - 2);
    within["nbf"] = json!(now() + 2);
    assert_eq!(
        app.token(&hs256(&within)).await.status(),
        200,
        "within the 5 s leeway"
    );
}

#[tokio::test]
async fn issuer_audience_and_subject_are_enforced() {
    let app = spawn_app(TestConfig::default()).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "wrong iss",
            Box::new(|c| c["iss"] = json!("https://evil.test")),
        ),
        (
            "missing iss",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
        ),
        ("wrong aud", Box::new(|c| c["aud"] = json!("another-app"))),
        (
            "aud array without ours",
            Box::new(|c| c["aud"] = json!(["a", "b"])),
        ),
        (
            "missing aud",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "missing sub",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ),
        ("empty sub", Box::new(|c| c["sub"] = json!(""))),
        ("numeric sub", Box::new(|c| c["sub"] = json!(42))),
        (
            "control characters in sub",
            Box::new(|c| c["sub"] = json!("a\u{0}b")),
        ),
        (
            "overlong sub",
            Box::new(|c| c["sub"] = json!("x".repeat(300))),
        ),
    ];
    for (name, mutate) in cases {
        let mut c = claims("alice");
        mutate(&mut c);
        refused(&app, &hs256(&c), name).await;
    }
    assert_eq!(app.sim.calls(), 0);
    let mut array = claims("alice");
    array["aud"] = json!(["other", AUDIENCE]);
    assert_eq!(
        app.token(&hs256(&array)).await.status(),
        200,
        "aud array containing ours"
    );
}

#[tokio::test]
async fn tampering_and_malformed_tokens_are_refused() {
    use base64::Engine;
    let app = spawn_app(TestConfig::default()).await;
    let good = session("alice");
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tampered_claims = b64.encode(claims("admin").to_string());
    let tampered = format!("{}.{}.{}", parts[0], tampered_claims, parts[2]);
    refused(&app, &tampered, "payload swapped").await;
    let mut sig = b64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    refused(
        &app,
        &format!("{}.{}.{}", parts[0], parts[1], b64.encode(sig)),
        "signature bit flip",
    )
    .await;

    for junk in [
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "eyJ.eyJ.x",
        &format!("{good}.extra"),
    ] {
        refused(&app, junk, junk).await;
    }
    let huge_claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now() + 60, "pad": "x".repeat(17 * 1024)});
    refused(&app, &hs256(&huge_claims), "token over 16 KiB").await;

    let crit = raw_jwt(
        &json!({"alg": "HS256", "crit": ["exp"]}),
        &claims("alice"),
        b"x",
    );
    refused(&app, &crit, "crit header").await;
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn jku_and_x5u_headers_are_never_followed() {
    let idp = FakeIdp::start(&["rsa-1"]);
    let app = spawn_app(TestConfig {
        extra_issuers: rs_issuer(&idp),
        ..TestConfig::default()
    })
    .await;
    let before = idp.fetches();
    // Signed with a key the issuer does not publish, pointing at an attacker's key set.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-2".into());
    header.jku = Some("http://127.0.0.1:1/attacker-jwks.json".into());
    header.x5u = Some("http://127.0.0.1:1/attacker.pem".into());
    let pem = std::fs::read(fixture("rsa-private-2.pem")).unwrap();
    let token = jsonwebtoken::encode(
        &header,
        &rs_claims(&idp, "alice"),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    refused(&app, &token, "kid of an unpublished key with jku/x5u").await;
    assert!(idp.fetches() <= before + 1);
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn spoofed_x_forwarded_for_does_not_escape_the_per_ip_limit() {
    let app = spawn_app(TestConfig {
        per_ip: Some((60, 2)),
        ..TestConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    for n in 0..3 {
        let resp = app
            .client
            .post(app.url("/v1/token"))
            .bearer_auth(session("alice"))
            .header("X-Forwarded-For", format!("203.0.113.{n}"))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429]);
}

#[tokio::test]
async fn x_forwarded_for_is_believed_from_trusted_proxies() {
    let app = spawn_app(TestConfig {
        per_ip: Some((60, 1)),
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..TestConfig::default()
    })
    .await;
    for n in 0..3 {
        let resp = app
            .client
            .post(app.url("/v1/token"))
            .bearer_auth(session("alice"))
            // A client-written hop on the left is ignored; the proxy-appended one counts.
            .header("X-Forwarded-For", format!("6.6.6.6, 198.51.100.{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "client {n} has its own bucket");
    }
    let again = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(session("alice"))
        .header("X-Forwarded-For", "7.7.7.7, 198.51.100.0")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429);
}

#[tokio::test]
async fn wrong_backend_credentials_are_refused() {
    let app = spawn_app(TestConfig::default()).await;
    let body = json!({"userId": "alice"});
    let wrong = app.backend("not-the-secret", body.clone()).await;
    assert_problem(wrong, 401, "unauthenticated").await;
    let prefix = app.backend(&BACKEND_SECRET[..10], body.clone()).await;
    assert_problem(prefix, 401, "unauthenticated").await;
    let longer = app
        .backend(&format!("{BACKEND_SECRET}x"), body.clone())
        .await;
    assert_problem(longer, 401, "unauthenticated").await;
    // A session token is not a backend credential.
    let session_token = app.backend(&session("alice"), body.clone()).await;
    assert_problem(session_token, 401, "unauthenticated").await;
    let none = app
        .client
        .post(app.backend_url("/v1/backend/token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(none, 401, "unauthenticated").await;
    assert_eq!(app.sim.calls(), 0);
}

#[tokio::test]
async fn a_kid_of_another_issuers_key_is_refused() {
    let idp_a = FakeIdp::start(&["rsa-1"]);
    let idp_b = FakeIdp::start(&["rsa-2"]);
    let app = spawn_app(TestConfig {
        extra_issuers: rs_issuer(&idp_a) + &rs_issuer(&idp_b),
        ..TestConfig::default()
    })
    .await;
    // Signed by B's key, claiming to come from A: A's key set has no such kid.
    let forged = rs256(
        &rs_claims(&idp_a, "alice"),
        Some("rsa-2"),
        "rsa-private-2.pem",
    );
    refused(&app, &forged, "kid of issuer B on a token of issuer A").await;
    // The same key is fine for B's own tokens.
    let genuine = rs256(
        &rs_claims(&idp_b, "alice"),
        Some("rsa-2"),
        "rsa-private-2.pem",
    );
    assert_eq!(app.token(&genuine).await.status(), 200);
    assert_eq!(app.sim.calls(), 1);
}

/// A 2041–2047-bit RSA key signs 256-byte signatures, as a 2048-bit one does, and so passed a
/// size check that counted bytes. Counted exactly, it is refused: in an issuer's JWKS (its
/// tokens are 401 while a 2048-bit key of the same set still verifies) and as the introspection
/// client key (`check-config` and `serve` refuse it, naming its size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_keys_a_few_bits_short_of_2048_are_refused() {
    let weak: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rsa-2047-jwk.json")).unwrap())
            .unwrap();
    let jwks = testkit::idp::serve_jwks(
        json!({"keys": [weak, testkit::idp::fixture_jwks()["rsa-1"].clone()]}),
        None,
    )
    .await;
    let issuer = "https://weak-keys.example";
    let app = spawn_app(TestConfig {
        extra_issuers: jwks_issuer(issuer, &format!("jwks_url = \"http://{jwks}/jwks.json\"")),
        ..TestConfig::default()
    })
    .await;
    let mut c = claims("walter");
    c["iss"] = json!(issuer);
    refused(
        &app,
        &rs256(&c, Some("rsa-2047"), "rsa-2047-private.pem"),
        "2047-bit key",
    )
    .await;
    assert_eq!(
        app.token(&rs256(&c, Some("rsa-1"), "rsa-private.pem"))
            .await
            .status(),
        200,
        "the set's 2048-bit key still verifies"
    );
    assert_eq!(app.sim.minted(), 1);

    let dir = default_config_dir();
    let key = json!({
        "type": "application", "keyId": "1", "appId": "2", "clientId": "broker",
        "key": std::fs::read_to_string(fixture("rsa-2047-private.pem")).unwrap(),
    });
    std::fs::write(dir.join("client-key.json"), key.to_string()).unwrap();
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "\n[[session.jwt]]\n",
        "\n[[session.jwt]]\nuser_id_prefix = \"site:\"\n",
        1,
    ) + &format!(
        "\n[session.introspection]\nurl = \"https://idp.example/introspect\"\nclient_auth = \"private_key_jwt\"\nclient_key_file = \"{}/client-key.json\"\naudience = \"site\"\nuser_id_prefix = \"op:\"\n",
        dir.display()
    );
    std::fs::write(&config, text).unwrap();
    for command in ["check-config", "serve"] {
        let (code, stderr) = testkit::process::run_broker_bounded(
            &[command, "--config", config.to_str().unwrap()],
            std::time::Duration::from_secs(20),
        );
        assert!(code.is_some_and(|c| c != 0), "{command}: {code:?}");
        assert!(
            stderr.contains("session.introspection.client_key_file")
                && stderr.contains("holds a 2047-bit RSA key; at least 2048 bits are required"),
            "{command}: {stderr}"
        );
    }
}

/// `{"chat-user": false}` says the user lacks the role; it once granted it, since any key of the
/// object counted. A role counts only as an object (Zitadel's grant) or `true`, and in an array
/// only as a string.
#[tokio::test]
async fn a_role_written_as_false_grants_nothing() {
    let app = spawn_app(TestConfig {
        hs256_toml: "roles_claim = \"urn:zitadel:iam:org:project:roles\"\nrequired_roles = [\"chat-user\"]\n".into(),
        ..TestConfig::default()
    })
    .await;
    let with_roles = |roles: Value| {
        let mut c = claims("rolf");
        c["urn:zitadel:iam:org:project:roles"] = roles;
        hs256(&c)
    };
    for roles in [
        json!({"chat-user": false}),
        json!({"chat-user": null}),
        json!({"chat-user": 0}),
        json!({"chat-user": "no"}),
        json!({"chat-user": []}),
        json!([{"chat-user": true}]),
        json!([true, 1]),
    ] {
        let resp = app.token(&with_roles(roles.clone())).await;
        assert_problem(resp, 403, "forbidden").await;
    }
    assert_eq!(app.sim.calls(), 0, "nothing minted for a refused role");
    for roles in [
        json!({"chat-user": true}),
        json!({"chat-user": {"2876543210": "acme.example.com"}}),
        json!(["chat-user"]),
    ] {
        assert_eq!(
            app.token(&with_roles(roles.clone())).await.status(),
            200,
            "{roles}"
        );
    }
}
