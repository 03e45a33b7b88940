//! End to end with a real OpenID provider (`oidc-provider` on Node, tests/oidc-provider): discovery,
//! JWKS, RS256/ES256/EdDSA access tokens minted by the provider, key rotation, and an outage.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use testkit::prelude::*;

/// How long the provider may take to generate its keys and listen (it takes about a second).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The provider as a child process (also used by `zitadel.rs`).
pub(crate) struct Provider {
    child: Child,
    pub(crate) info: Value,
    pub(crate) http: reqwest::Client,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    pub(crate) fn start() -> Provider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc-provider");
        let install = Command::new("bash")
            .args([&format!("{dir}/run.sh"), "--install-only"])
            .status()
            .expect("bash runs the fixture installer");
        assert!(install.success(), "npm ci of the OIDC fixture failed");
        let mut child = Command::new("node")
            .args([&format!("{dir}/server.mjs"), "--port", "0"])
            // The fixture exits when this pipe closes, so a crashed test leaves no orphan.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts the OIDC fixture");
        let line = testkit::process::ready_line(&mut child, "the OIDC fixture", READY_WITHIN);
        let info: Value = serde_json::from_str(&line).expect("the fixture prints its endpoints");
        Provider {
            child,
            info,
            http: http_client(),
        }
    }

    pub(crate) fn issuer(&self) -> &str {
        self.info["issuer"].as_str().unwrap()
    }

    pub(crate) async fn control(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.info["control"].as_str().unwrap());
        let resp = self.http.post(url).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap_or(Value::Null)
    }

    /// `GET` on the control API (`/stats`, `/client_key`, `/assertions`, ...).
    pub(crate) async fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.info["control"].as_str().unwrap());
        let resp = self.http.get(url).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    async fn token(&self, sub: &str, alg: &str) -> String {
        let minted = self
            .control(
                "/token",
                json!({"sub": sub, "email": format!("{sub}@example.com"), "name": format!("User {sub}"),
                       "format": "jwt", "audience": AUDIENCE, "alg": alg}),
            )
            .await;
        minted["access_token"].as_str().unwrap().to_owned()
    }
}

fn issuer_table(provider: &Provider) -> String {
    format!(
        "\n[[session.jwt]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\ndiscovery = true\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\nuser_id_prefix = \"op:\"\n",
        provider.issuer()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_provider_tokens_of_every_algorithm_are_accepted() {
    let provider = Provider::start();
    let app = spawn_app(TestConfig {
        extra_issuers: issuer_table(&provider),
        ..TestConfig::default()
    })
    .await;
    for (n, alg) in ["RS256", "ES256", "EdDSA"].into_iter().enumerate() {
        let sub = format!("person-{n}");
        let resp = app.token(&provider.token(&sub, alg).await).await;
        assert_eq!(resp.status(), 200, "{alg}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["userId"], format!("op:{sub}"));
        let user = app.sim.user(&format!("op:{sub}")).unwrap();
        assert_eq!(
            user.email.as_deref(),
            Some(format!("{sub}@example.com").as_str())
        );
    }
    // A token for another audience from the same provider is refused.
    let other = provider
        .control(
            "/token",
            json!({"sub": "x", "format": "jwt", "audience": "another-api"}),
        )
        .await;
    let resp = app.token(other["access_token"].as_str().unwrap()).await;
    assert_problem(resp, 401, "unauthenticated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_and_provider_outage() {
    let provider = Provider::start();
    let app = spawn_app(TestConfig {
        extra_issuers: issuer_table(&provider),
        ..TestConfig::default()
    })
    .await;
    let before = provider.token("alice", "RS256").await;
    assert_eq!(app.token(&before).await.status(), 200);

    // The provider rotates: new kids sign, old ones stay published. A token with a new kid is
    // unknown until a refetch, which the broker allows once per 30 s after its last fetch.
    provider.control("/rotate", json!({})).await;
    let after = provider.token("bob", "RS256").await;
    let mut accepted = false;
    for _ in 0..40 {
        if app.token(&after).await.status() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        accepted,
        "the rotated key was picked up within the refetch window"
    );
    let stats = stats(&provider).await;
    let jwks_fetches = stats["counts"]["jwks"].as_u64().unwrap();
    assert!(
        jwks_fetches <= 3,
        "40 attempts with an unknown kid cost {jwks_fetches} JWKS fetches"
    );
    // Old-key tokens still verify while published.
    assert_eq!(app.token(&before).await.status(), 200);

    // Outage: the last good keys keep serving known tokens, and readiness stays up.
    provider.control("/down", json!({"mode": "503"})).await;
    let carol = provider.token("carol", "ES256").await;
    assert_eq!(app.token(&carol).await.status(), 200);
    assert_eq!(app.readyz().await.0, 200);
}

fn introspection_table(provider: &Provider, ttl: u64) -> String {
    let dir = temp_dir();
    std::fs::write(dir.join("introspection-secret"), "broker-secret\n").unwrap();
    format!(
        "\n[session.introspection]\nurl = \"{}\"\nclient_id = \"broker\"\nclient_secret_file = \"{}/introspection-secret\"\nissuer = \"{}\"\ncache_ttl_secs = {ttl}\nnegative_cache_secs = 30\nuser_id_prefix = \"op:\"\n",
        provider.info["introspection_endpoint"].as_str().unwrap(),
        dir.display(),
        provider.issuer(),
    )
}

async fn stats(provider: &Provider) -> Value {
    provider.get("/stats").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected() {
    let provider = Provider::start();
    let app = spawn_app(TestConfig {
        extra_issuers: introspection_table(&provider, 1),
        ..TestConfig::default()
    })
    .await;
    let minted = provider
        .control(
            "/token",
            json!({"sub": "olga", "email": "olga@example.com", "name": "Olga", "format": "opaque"}),
        )
        .await;
    let opaque = minted["access_token"].as_str().unwrap().to_owned();
    assert_eq!(opaque.split('.').count(), 1, "an opaque token");
    let resp = app.token(&opaque).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], "op:olga");
    assert_eq!(
        app.sim.user("op:olga").unwrap().email.as_deref(),
        Some("olga@example.com")
    );

    // Revoked at the provider: once the 1 s positive cache lapses, the session is refused.
    let revoke = provider
        .http
        .post(provider.info["revocation_endpoint"].as_str().unwrap())
        .basic_auth("broker", Some("broker-secret"))
        .form(&[("token", opaque.as_str())])
        .send()
        .await
        .unwrap();
    assert!(revoke.status().is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_problem(app.token(&opaque).await, 401, "unauthenticated").await;

    // A dead token replayed costs one introspection call, then the negative cache answers.
    let before = stats(&provider).await["counts"]["introspection"]
        .as_u64()
        .unwrap();
    for _ in 0..5 {
        assert_eq!(app.token("not-a-real-token-at-all").await.status(), 401);
    }
    let after = stats(&provider).await["counts"]["introspection"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 1, "negative answers are cached");
    assert_eq!(app.sim.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_outage_is_503_not_401() {
    let provider = Provider::start();
    let app = spawn_app(TestConfig {
        extra_issuers: introspection_table(&provider, 60),
        ..TestConfig::default()
    })
    .await;
    let known = provider
        .control("/token", json!({"sub": "kim", "format": "opaque"}))
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.token(&known).await.status(), 200);
    let fresh = provider
        .control("/token", json!({"sub": "lou", "format": "opaque"}))
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    provider.control("/down", json!({"mode": "close"})).await;
    let resp = app.token(&fresh).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(resp, 503, "upstream_unavailable").await;
    // An answer already cached keeps its session working through the outage.
    assert_eq!(app.token(&known).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_claims_gate_access() {
    let provider = Provider::start();
    let table = issuer_table(&provider)
        + "required_claims = [\"groups=chat-users\", \"urn:zitadel:iam:org:id=org-1\"]\n";
    let app = spawn_app(TestConfig {
        extra_issuers: table,
        ..TestConfig::default()
    })
    .await;
    let mint = |groups: Value, org: &str| {
        provider.control(
            "/token",
            json!({"sub": "gina", "format": "jwt", "audience": AUDIENCE,
                   "extra_claims": {"groups": groups, "urn:zitadel:iam:org:id": org}}),
        )
    };
    let member = mint(json!(["staff", "chat-users"]), "org-1").await;
    assert_eq!(
        app.token(member["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
    let outsider = mint(json!(["staff"]), "org-1").await;
    let resp = app.token(outsider["access_token"].as_str().unwrap()).await;
    assert_problem(resp, 403, "forbidden").await;
    let other_org = mint(json!(["chat-users"]), "org-2").await;
    let resp = app.token(other_org["access_token"].as_str().unwrap()).await;
    assert_problem(resp, 403, "forbidden").await;
    assert_eq!(app.sim.calls(), 1);
}
