//! Zitadel as identity provider, end to end against the real OpenID provider fixture
//! (tests/oidc-provider, configured like Zitadel): `private_key_jwt` introspection with the
//! downloaded key JSON (RFC 7523 client assertions, checked in the fixture's assertion log),
//! roles in Zitadel's object shape and Keycloak's array shape, one user id for the JWT and the
//! opaque token of one person, refused credentials as 503, and key-file rotation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::oidc_provider::Provider;
use testkit::prelude::*;

const ROLES: &str = "urn:zitadel:iam:org:project:roles";
const PROJECT_ROLES: &str = "urn:zitadel:iam:org:project:2876500000000000000:roles";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Provider {
    async fn assertions(&self) -> Vec<Value> {
        self.get("/assertions").await["assertions"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// An access token for `sub`; `roles` (role names) go into both Zitadel role claims and
    /// Keycloak's `realm_access.roles`.
    async fn mint(&self, sub: &str, format: &str, roles: &[&str]) -> String {
        let zitadel: serde_json::Map<String, Value> = roles
            .iter()
            .map(|r| {
                (
                    (*r).to_owned(),
                    json!({"2876543210987654321": "acme.example.com"}),
                )
            })
            .collect();
        let extra = if roles.is_empty() {
            json!({})
        } else {
            json!({ROLES: zitadel, PROJECT_ROLES: zitadel, "realm_access": {"roles": roles}})
        };
        let minted = self
            .control(
                "/token",
                json!({"sub": sub, "email": format!("{sub}@example.com"), "format": format,
                       "audience": AUDIENCE, "extra_claims": extra}),
            )
            .await;
        minted["access_token"].as_str().unwrap().to_owned()
    }
}

/// Writes a key file the way a Secret volume changes: a complete new file renamed into place.
fn write_key(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One Zitadel issuer reached two ways, with one id space: JWT access tokens verified locally
/// and opaque tokens (PATs) introspected with `private_key_jwt`.
fn zitadel_tables(provider: &Provider, key_file: &Path, jwt_roles: &str) -> String {
    format!(
        r#"
[[session.jwt]]
issuer = "{issuer}"
audience = "{AUDIENCE}"
discovery = true
algorithms = ["RS256"]
user_id_prefix = "zitadel:"
{jwt_roles}

[session.introspection]
url = "{url}"
client_auth = "private_key_jwt"
client_key_file = "{key}"
issuer = "{issuer}"
user_id_prefix = "zitadel:"
roles_claim = "{PROJECT_ROLES}"
required_roles = ["chat-user", "chat-admin"]
cache_ttl_secs = 60
"#,
        issuer = provider.issuer(),
        url = provider.info["introspection_endpoint"].as_str().unwrap(),
        key = key_file.display(),
    )
}

fn zitadel_roles() -> String {
    format!("roles_claim = \"{ROLES}\"\nrequired_roles = [\"chat-user\"]")
}

/// Starts the provider (with Zitadel's assertion rule: `aud` must be the issuer) and a broker
/// whose key file holds `key` (a part of `GET /__control/client_key`).
async fn setup(
    key: impl Fn(&Value) -> String,
    jwt_roles: &str,
) -> (Provider, TestApp, Value, PathBuf) {
    let provider = Provider::start();
    provider
        .control("/client_auth", json!({"assertion_audience": "issuer"}))
        .await;
    let keys = provider.get("/client_key").await;
    let dir = temp_dir();
    let key_file = dir.join("zitadel-key.json");
    write_key(&key_file, &key(&keys));
    let app = spawn_app(TestConfig {
        extra_issuers: zitadel_tables(&provider, &key_file, jwt_roles),
        ..TestConfig::default()
    })
    .await;
    (provider, app, keys, key_file)
}

fn zitadel_json(keys: &Value) -> String {
    keys["zitadel_json"].to_string()
}

/// The fixture's log of one assertion, checked as RFC 7523 and Zitadel want it.
fn check_assertion(logged: &Value, keys: &Value, issuer: &str) {
    assert_eq!(logged["endpoint"], "introspection");
    assert_eq!(logged["client_assertion_type"], ASSERTION_TYPE);
    assert_eq!(logged["header"]["alg"], "RS256");
    assert_eq!(logged["header"]["kid"], keys["key_id"]);
    let claims = &logged["claims"];
    assert_eq!(claims["iss"], keys["client_id"]);
    assert_eq!(claims["sub"], keys["client_id"]);
    assert_eq!(claims["aud"], issuer);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(
        exp > iat && exp - iat <= 60,
        "short-lived: iat {iat}, exp {exp}"
    );
    assert!(iat.abs_diff(now()) <= 30, "iat is now");
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 32, "a 128-bit jti: {jti}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zitadel_jwt_and_pat_of_one_user_get_one_user_id() {
    let (provider, app, keys, _) = setup(zitadel_json, &zitadel_roles()).await;
    let issuer = provider.issuer().to_owned();

    let jwt = provider.mint("zoe", "jwt", &["chat-user"]).await;
    let resp = app.token(&jwt).await;
    assert_eq!(resp.status(), 200);
    let by_jwt: Value = resp.json().await.unwrap();
    assert!(
        provider.assertions().await.is_empty(),
        "a JWT is verified locally"
    );

    let pat = provider.mint("zoe", "opaque", &["chat-user"]).await;
    assert_eq!(pat.split('.').count(), 1, "an opaque token");
    let resp = app.token(&pat).await;
    assert_eq!(resp.status(), 200);
    let by_pat: Value = resp.json().await.unwrap();
    assert_eq!(by_jwt["userId"], "zitadel:zoe");
    assert_eq!(
        by_pat["userId"], by_jwt["userId"],
        "one person, one Intellia user"
    );
    assert!(app.sim.user("zitadel:zoe").is_some());

    // One assertion for the one introspection call, accepted, as Zitadel wants it.
    let log = provider.assertions().await;
    assert_eq!(log.len(), 1, "{log:?}");
    check_assertion(&log[0], &keys, &issuer);
    assert_eq!(log[0]["status"], 200);
    // The same PAT again is answered from memory: no new call, no new assertion.
    assert_eq!(app.token(&pat).await.status(), 200);
    assert_eq!(provider.assertions().await.len(), 1);

    // Every call gets a fresh assertion: other PATs, each with its own jti, none replayed.
    for sub in ["yan", "xia", "wim"] {
        let pat = provider.mint(sub, "opaque", &["chat-admin"]).await;
        assert_eq!(app.token(&pat).await.status(), 200, "{sub}");
    }
    let log = provider.assertions().await;
    assert_eq!(log.len(), 4);
    let mut jtis: Vec<&str> = log
        .iter()
        .map(|a| a["claims"]["jti"].as_str().unwrap())
        .collect();
    jtis.sort_unstable();
    jtis.dedup();
    assert_eq!(jtis.len(), 4, "unique jti per assertion");
    for logged in &log {
        check_assertion(logged, &keys, &issuer);
        assert_eq!(logged["status"], 200, "{logged}");
        assert!(logged["error"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_required_role_is_403_for_jwt_and_pat() {
    let (provider, app, _, _) = setup(zitadel_json, &zitadel_roles()).await;
    // No roles at all.
    let jwt = provider.mint("una", "jwt", &[]).await;
    assert_problem(app.token(&jwt).await, 403, "forbidden").await;
    let pat = provider.mint("una", "opaque", &[]).await;
    assert_problem(app.token(&pat).await, 403, "forbidden").await;
    // Other roles only.
    let jwt = provider.mint("vic", "jwt", &["reader"]).await;
    assert_problem(app.token(&jwt).await, 403, "forbidden").await;
    let pat = provider.mint("vic", "opaque", &["reader", "writer"]).await;
    assert_problem(app.token(&pat).await, 403, "forbidden").await;
    // The JWT source requires chat-user only; chat-admin is enough for introspection.
    let jwt = provider.mint("wes", "jwt", &["chat-admin"]).await;
    assert_problem(app.token(&jwt).await, 403, "forbidden").await;
    let pat = provider.mint("wes", "opaque", &["chat-admin"]).await;
    assert_eq!(app.token(&pat).await.status(), 200);
    assert_eq!(app.sim.calls(), 1, "no token minted for a refused session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_array_roles_gate_access() {
    let roles = "roles_claim = \"realm_access.roles\"\nrequired_roles = [\"chat-user\"]";
    let (provider, app, _, _) = setup(zitadel_json, roles).await;
    let member = provider
        .mint("kai", "jwt", &["offline_access", "chat-user"])
        .await;
    assert_eq!(app.token(&member).await.status(), 200);
    let outsider = provider.mint("lea", "jwt", &["offline_access"]).await;
    assert_problem(app.token(&outsider).await, 403, "forbidden").await;
    // A roles claim of the wrong shape grants nothing.
    let odd = provider
        .control(
            "/token",
            json!({"sub": "max", "format": "jwt", "audience": AUDIENCE,
                   "extra_claims": {"realm_access": {"roles": "chat-user"}}}),
        )
        .await;
    let resp = app.token(odd["access_token"].as_str().unwrap()).await;
    assert_problem(resp, 403, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_key_is_503_and_a_rotated_key_file_is_picked_up() {
    // The broker starts with the `wrong` key: same ids, but not registered at the provider.
    let (provider, app, keys, key_file) =
        setup(|k| k["wrong"]["zitadel_json"].to_string(), "").await;
    let pat = provider.mint("ola", "opaque", &["chat-user"]).await;
    let resp = app.token(&pat).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(resp, 503, "upstream_unavailable").await;
    let log = provider.assertions().await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], 401);
    assert_eq!(log[0]["error"], "invalid_client");
    assert_eq!(log[0]["error_detail"], "signature verification failed");
    // Refused credentials are not cached as an inactive token: the next call tries again.
    assert_problem(app.token(&pat).await, 503, "upstream_unavailable").await;
    assert_eq!(provider.assertions().await.len(), 2);

    // The operator puts the right key in the Secret: picked up without a restart.
    write_key(&key_file, &zitadel_json(&keys));
    assert!(
        eventually(|| async { app.token(&pat).await.status() == 200 }).await,
        "the rotated key file was used"
    );

    // The provider rotates the client key (Zitadel: a new key added, the old one deleted): the
    // old key is refused until the new key JSON is deployed.
    let rotated = provider.control("/client_key/rotate", json!({})).await;
    assert_ne!(rotated["key_id"], keys["key_id"]);
    let pat = provider.mint("pia", "opaque", &["chat-user"]).await;
    assert_problem(app.token(&pat).await, 503, "upstream_unavailable").await;
    write_key(&key_file, &zitadel_json(&rotated));
    assert!(
        eventually(|| async { app.token(&pat).await.status() == 200 }).await,
        "the new key id was used"
    );
    let last = provider.assertions().await.pop().unwrap();
    check_assertion(&last, &rotated, provider.issuer());

    // A rotated file that holds no usable key is refused; the last good key stays in use.
    write_key(&key_file, "{\"type\":\"application\"}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pat = provider.mint("quy", "opaque", &["chat-user"]).await;
    assert_eq!(app.token(&pat).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_key_with_client_id_and_key_id_works() {
    let provider = Provider::start();
    let keys = provider.get("/client_key").await;
    let dir = temp_dir();
    for (n, form) in ["pkcs1_pem", "pkcs8_pem"].into_iter().enumerate() {
        let key_file = dir.join(format!("key-{n}.pem"));
        write_key(&key_file, keys[form].as_str().unwrap());
        let table = zitadel_tables(&provider, &key_file, "").replace(
            "client_auth = \"private_key_jwt\"",
            &format!(
                "client_auth = \"private_key_jwt\"\nclient_id = {}\nkey_id = {}",
                keys["client_id"], keys["key_id"]
            ),
        );
        let app = spawn_app(TestConfig {
            extra_issuers: table,
            ..TestConfig::default()
        })
        .await;
        let pat = provider.mint("rio", "opaque", &["chat-user"]).await;
        assert_eq!(app.token(&pat).await.status(), 200, "{form}");
        let last = provider.assertions().await.pop().unwrap();
        check_assertion(&last, &keys, provider.issuer());
    }
}

/// Polls `check` for up to 10 s (the test broker re-reads secret files every second).
async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..40 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// The real binary at `RUST_LOG=trace` with a key the provider refuses: visitors get 503, the log
/// has one ERROR naming the configuration problem, and neither the key, the assertion nor the
/// roles appear anywhere in the output. `check-config` reads the key file and names what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_logged_as_a_configuration_problem_without_secrets() {
    let provider = Provider::start();
    provider
        .control("/client_auth", json!({"assertion_audience": "issuer"}))
        .await;
    let keys = provider.get("/client_key").await;
    let (sim_url, _sim) = start_simulator(Default::default());
    let dir = temp_dir();
    let key_file = dir.join("zitadel-key.json");
    write_key(&key_file, &keys["wrong"]["zitadel_json"].to_string());
    let cfg = TestConfig {
        extra_issuers: zitadel_tables(&provider, &key_file, &zitadel_roles()),
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");

    let check = |file_text: &str| {
        write_key(&key_file, file_text);
        let out = std::process::Command::new(broker_bin())
            .args(["check-config", "--config"])
            .arg(dir.join("config.toml"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = check(&keys["wrong"]["zitadel_json"].to_string());
    assert!(ok, "{text}");
    let mut mismatched = keys["zitadel_json"].clone();
    mismatched["type"] = json!("serviceaccount");
    let (ok, text) = check(&mismatched.to_string());
    assert!(!ok);
    assert!(
        text.contains("session.introspection.client_key_file")
            && text.contains("type serviceaccount"),
        "{text}"
    );
    let (ok, text) = check(keys["pkcs8_pem"].as_str().unwrap());
    assert!(!ok);
    assert!(
        text.contains("session.introspection.client_id must be set"),
        "{text}"
    );
    write_key(&key_file, &keys["wrong"]["zitadel_json"].to_string());

    let broker = BrokerProcess::serve(&dir, "trace");
    let client = http_client();
    let pat = provider.mint("sam", "opaque", &["chat-user"]).await;
    let jwt = provider.mint("sam", "jwt", &["chat-user"]).await;
    let resp = client
        .post(broker.url("/v1/token"))
        .bearer_auth(&pat)
        .send()
        .await
        .unwrap();
    assert_problem(resp, 503, "upstream_unavailable").await;
    // The JWT of the same person still works: only introspection is misconfigured.
    let resp = client
        .post(broker.url("/v1/token"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, output) = broker.stop().await;

    let refused: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("introspection credentials refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{output}");
    for field in [
        "\"level\":\"ERROR\"",
        "\"client_auth\":\"private_key_jwt\"",
        "\"status\":401",
        "\"error\":\"invalid_client\"",
        "\"key_id\":\"",
    ] {
        assert!(refused[0].contains(field), "{field}: {}", refused[0]);
    }
    let log = provider.assertions().await;
    let jti = log[0]["claims"]["jti"].as_str().unwrap().to_owned();
    let mut secrets: Vec<String> = Vec::new();
    for pem in [&keys["wrong"]["pkcs1_pem"], &keys["wrong"]["pkcs8_pem"]] {
        secrets.extend(
            pem.as_str()
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned),
        );
    }
    secrets.extend([pat, jwt, jti, "chat-user".to_owned(), ROLES.to_owned()]);
    assert_no_secret(&output, &secrets, "the broker's trace output");
}
