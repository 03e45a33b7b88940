//! Identity-aware proxies (`header` on `[[session.jwt]]`): assertions shaped as Cloudflare Access,
//! Google IAP and Pomerium send them (header, claims, key type, JWKS document), accepted from
//! their header only, under the CSRF guard, and never allowed through CORS.

use serde_json::{Value, json};
use testkit::idp::{fixture_jwks, serve_jwks};
use testkit::prelude::*;

const CF_ISSUER: &str = "https://acme.cloudflareaccess.com";
/// Cloudflare's Application Audience (AUD) tag: 64 hex characters.
const CF_AUD: &str = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
const CF_HEADER: &str = "Cf-Access-Jwt-Assertion";
const IAP_ISSUER: &str = "https://cloud.google.com/iap";
const IAP_AUD: &str = "/projects/123456789012/global/backendServices/4321098765432109876";
const IAP_HEADER: &str = "x-goog-iap-jwt-assertion";
/// Pomerium names the route's host in `iss` and `aud` (its default `jwt_issuer_format`, `hostOnly`).
const POMERIUM_ISSUER: &str = "chat-auth.corp.example.com";
const POMERIUM_AUD: &str = "chat-auth.corp.example.com";
const POMERIUM_HEADER: &str = "X-Pomerium-Jwt-Assertion";

/// The certs document of `https://<team>.cloudflareaccess.com/cdn-cgi/access/certs`: the keys,
/// and beside them `public_cert` and `public_certs` (PEM certificates by kid).
fn cloudflare_certs() -> Value {
    let all = fixture_jwks();
    let cert = |kid: &str| json!({"kid": kid, "cert": "-----BEGIN CERTIFICATE-----\nMIIDDzCCAfegAwIBAgIQBQ3DqwtkExampleOnlyNotParsed==\n-----END CERTIFICATE-----\n"});
    json!({
        "keys": [all["rsa-1"], all["ec-1"]],
        "public_cert": cert("rsa-1"),
        "public_certs": [cert("rsa-1"), cert("ec-1")],
    })
}

/// Google's `https://www.gstatic.com/iap/verify/public_key-jwk`: EC P-256 keys, ES256.
fn google_jwk() -> Value {
    json!({"keys": [fixture_jwks()["ec-1"]]})
}

fn cloudflare_claims(email: &str) -> Value {
    json!({
        "aud": [CF_AUD],
        "email": email,
        "exp": now() + 3600,
        "iat": now(),
        "nbf": now(),
        "iss": CF_ISSUER,
        "type": "app",
        "identity_nonce": "6ei69kawdKzMIAPF",
        "sub": "7335d417-61da-459d-899c-0a01c76a2f94",
        "country": "AU",
    })
}

fn iap_claims(email: &str) -> Value {
    json!({
        "aud": IAP_AUD,
        "azp": IAP_AUD,
        "email": email,
        "exp": now() + 600,
        "iat": now(),
        "hd": "example.com",
        "iss": IAP_ISSUER,
        "sub": "accounts.google.com:118012345678901234567",
        "google": {"access_levels": ["accessPolicies/1234/accessLevels/corp"]},
        "identity_source": "GOOGLE",
    })
}

fn pomerium_claims() -> Value {
    json!({
        "aud": POMERIUM_AUD,
        "iss": POMERIUM_ISSUER,
        "exp": now() + 300,
        "iat": now(),
        "jti": "5c2b0d5e-8f6a-4b5e-9d2e-1f0a7c3b9e11",
        "sub": "c9f2e1d0-0000-4000-8000-pomerium-user",
        "email": "carol@example.com",
        "name": "Carol",
        "groups": ["chat"],
    })
}

async fn broker() -> TestApp {
    let cf = serve_jwks(cloudflare_certs(), None).await;
    let google = serve_jwks(google_jwk(), None).await;
    let pomerium = serve_jwks(json!({"keys": [fixture_jwks()["ec-1"]]}), None).await;
    spawn_app(TestConfig {
        extra_issuers: format!(
            r#"
[[session.jwt]]
issuer = "{CF_ISSUER}"
audience = "{CF_AUD}"
jwks_url = "http://{cf}/cdn-cgi/access/certs"
algorithms = ["RS256", "ES256"]
header = "{CF_HEADER}"
user_id_prefix = "cf:"

[[session.jwt]]
issuer = "{IAP_ISSUER}"
audience = "{IAP_AUD}"
jwks_url = "http://{google}/iap/verify/public_key-jwk"
algorithms = ["ES256"]
header = "{IAP_HEADER}"
user_id_prefix = "iap:"

[[session.jwt]]
issuer = "{POMERIUM_ISSUER}"
audience = "{POMERIUM_AUD}"
jwks_url = "http://{pomerium}/.well-known/pomerium/jwks.json"
algorithms = ["ES256"]
header = "{POMERIUM_HEADER}"
user_id_prefix = "pomerium:"
"#
        ),
        ..TestConfig::default()
    })
    .await
}

async fn post(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.post(app.url("/v1/token"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn user_id(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["userId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_assertions_are_read_from_their_header() {
    let app = broker().await;
    let origin = ("origin", ALLOWED_ORIGIN);
    // Cloudflare signs with RS256 keys; an ES256 key in the same document works too.
    let cf_rs = rs256(
        &cloudflare_claims("ann@example.com"),
        Some("rsa-1"),
        "rsa-private.pem",
    );
    let cf_es = es256(&cloudflare_claims("ann@example.com"), Some("ec-1"));
    for token in [&cf_rs, &cf_es] {
        let resp = post(&app, &[(CF_HEADER, token), origin]).await;
        assert_eq!(
            user_id(resp).await,
            "cf:7335d417-61da-459d-899c-0a01c76a2f94"
        );
    }
    let user = app
        .sim
        .user("cf:7335d417-61da-459d-899c-0a01c76a2f94")
        .unwrap();
    assert_eq!(user.email.as_deref(), Some("ann@example.com"));

    let iap = es256(&iap_claims("bob@example.com"), Some("ec-1"));
    let resp = post(&app, &[(IAP_HEADER, &iap), origin]).await;
    assert_eq!(
        user_id(resp).await,
        "iap:accounts.google.com:118012345678901234567"
    );
    // Header names are case-insensitive, as HTTP says.
    let resp = post(&app, &[("X-Goog-IAP-JWT-Assertion", &iap), origin]).await;
    assert_eq!(resp.status(), 200);

    let pomerium = es256(&pomerium_claims(), Some("ec-1"));
    let resp = post(&app, &[(POMERIUM_HEADER, &pomerium), origin]).await;
    assert_eq!(
        user_id(resp).await,
        "pomerium:c9f2e1d0-0000-4000-8000-pomerium-user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_assertion_anywhere_else_is_refused() {
    let app = broker().await;
    let origin = ("origin", ALLOWED_ORIGIN);
    let cf = rs256(
        &cloudflare_claims("ann@example.com"),
        Some("rsa-1"),
        "rsa-private.pem",
    );
    let iap = es256(&iap_claims("bob@example.com"), Some("ec-1"));
    // Accepted once from its header, so it is remembered...
    assert_eq!(post(&app, &[(CF_HEADER, &cf), origin]).await.status(), 200);
    assert_eq!(
        post(&app, &[(IAP_HEADER, &iap), origin]).await.status(),
        200
    );
    // ...and still refused anywhere else: Authorization, a cookie, another proxy's header.
    for (token, name, value) in [
        (&cf, "authorization", format!("Bearer {cf}")),
        (&iap, "authorization", format!("Bearer {iap}")),
        (&cf, "cookie", format!("site_session={cf}")),
        (&cf, IAP_HEADER, cf.clone()),
        (&iap, CF_HEADER, iap.clone()),
        (&iap, POMERIUM_HEADER, iap.clone()),
    ] {
        let resp = post(&app, &[(name, &value), origin]).await;
        let body = assert_problem(resp, 401, "unauthenticated").await;
        assert!(!body.to_string().contains(token.as_str()));
    }
    // The site's own session JWT in a proxy's header is not the proxy's assertion.
    let resp = post(&app, &[(CF_HEADER, &session("mallory")), origin]).await;
    assert_problem(resp, 401, "unauthenticated").await;
    // Nor is an opaque value, or two assertions at once.
    assert_problem(
        post(&app, &[(CF_HEADER, "opaque"), origin]).await,
        401,
        "unauthenticated",
    )
    .await;
    assert_problem(
        post(&app, &[(CF_HEADER, &cf), (CF_HEADER, &cf), origin]).await,
        401,
        "unauthenticated",
    )
    .await;
    // Wrong audience (another Access application) and expired assertions.
    let mut other_app = cloudflare_claims("ann@example.com");
    other_app["aud"] = json!(["0".repeat(64)]);
    let mut expired = iap_claims("bob@example.com");
    expired["exp"] = json!(now() - 120);
    for (name, token) in [
        (
            CF_HEADER,
            rs256(&other_app, Some("rsa-1"), "rsa-private.pem"),
        ),
        (IAP_HEADER, es256(&expired, Some("ec-1"))),
    ] {
        assert_problem(
            post(&app, &[(name, &token), origin]).await,
            401,
            "unauthenticated",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_assertions_get_the_csrf_guard_and_no_cors_allowance() {
    let app = broker().await;
    let cf = rs256(
        &cloudflare_claims("ann@example.com"),
        Some("rsa-1"),
        "rsa-private.pem",
    );
    // The proxy adds its header to any request the browser makes, a forged cross-site one too.
    for origin in ["https://evil.example", "null"] {
        let resp = post(&app, &[(CF_HEADER, &cf), ("origin", origin)]).await;
        assert_problem(resp, 403, "origin_forbidden").await;
    }
    let resp = post(&app, &[(CF_HEADER, &cf)]).await;
    assert_problem(resp, 403, "origin_forbidden").await;
    let resp = post(&app, &[(CF_HEADER, &cf), ("sec-fetch-site", "same-origin")]).await;
    assert_eq!(resp.status(), 200);

    // A page cannot be allowed to send the header itself: no preflight grants it.
    for header in [CF_HEADER, IAP_HEADER, POMERIUM_HEADER] {
        let resp = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/v1/token"))
            .header("origin", ALLOWED_ORIGIN)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                format!("content-type, {}", header.to_ascii_lowercase()),
            )
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers().get("access-control-allow-origin").is_none(),
            "{header}: preflight granted"
        );
    }
    let resp = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/token"))
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    let allowed = resp
        .headers()
        .get("access-control-allow-headers")
        .expect("a granted preflight")
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for header in [CF_HEADER, IAP_HEADER, POMERIUM_HEADER] {
        assert!(!allowed.contains(&header.to_ascii_lowercase()), "{allowed}");
    }
}
