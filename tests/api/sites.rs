//! `[[session.endpoint]]` end to end against real session frameworks (tests/sites/): express +
//! express-session with its Redis store (connect-redis), and Flask + Flask-Login over
//! Flask-Session, both on a real redis-server. Visitors sign in and out through the sites' own
//! routes; the broker only ever sees their cookies and asks `/api/me`.

use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::prelude::*;
use testkit::redis::RedisServer;
use testkit::sites::{Framework, SiteProcess};

/// Cookies a visitor's browser also holds for the site's domain, which are none of the site's
/// session and must never reach it through the broker.
const OTHER_COOKIES: &str = "theme=dark; _ga=GA1.2.345; csrftoken=c5rf-DO-NOT-FORWARD";

async fn token_with_cookies(
    app: &TestApp,
    cookies: &str,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/token"))
        .header("cookie", cookies);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap()
}

fn prefix(framework: Framework) -> &'static str {
    match framework {
        Framework::Express => "express:",
        Framework::Flask => "flask:",
    }
}

async fn broker_for(site: &SiteProcess, path: &str, cache_secs: u64) -> TestApp {
    spawn_app(TestConfig {
        extra_toml: site.framework.endpoint_toml(
            &site.url,
            path,
            &format!(
                "user_id_prefix = \"{}\"\ncache_secs = {cache_secs}\nrequired_roles = [\"chat\"]\n",
                prefix(site.framework)
            ),
        ),
        ..TestConfig::default()
    })
    .await
}

/// Sign in → token; only the site's session cookie is forwarded; sign out → 401 within
/// `cache_secs`; the signed-out cookie replayed stays refused; a forged cookie is refused; a
/// session without the required role is 403; a disallowed origin is 403 before the site is asked;
/// the site down is 503.
async fn a_real_site_session(framework: Framework) {
    let redis = RedisServer::start();
    let mut site = SiteProcess::start(framework, &redis.url());
    let cache_secs = 2;
    let app = broker_for(&site, "/api/me", cache_secs).await;
    let expected = format!("{}alice", prefix(framework));

    // Not signed in: the site says 401, so does the broker.
    let visitor = site.visitor();
    let resp = token_with_cookies(&app, OTHER_COOKIES, Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 401, "unauthenticated").await;
    assert!(
        site.received().await.is_empty(),
        "no session cookie: the site is not asked"
    );
    drop(visitor);

    let mut alice = site.visitor();
    alice.sign_in("alice", &["chat"]).await;
    let cookies = format!("{OTHER_COOKIES}; {}", alice.cookie_header());
    let resp = token_with_cookies(&app, &cookies, Some(ALLOWED_ORIGIN)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["userId"], expected.as_str());
    let user = app.sim.user(&expected).expect("minted for the site's user");
    assert_eq!(
        user.email.as_deref(),
        Some(match framework {
            Framework::Express => "alice@example.com",
            Framework::Flask => "alice@example.org",
        })
    );
    assert_eq!(user.name.as_deref(), Some("User alice"));

    // What the site received: its own session cookie, and nothing else of the visitor's.
    let received = site.received().await;
    assert_eq!(received.len(), 1, "{received:?}");
    let call = &received[0];
    let session_cookie = format!(
        "{}={}",
        framework.cookie(),
        alice.cookie(framework.cookie()).unwrap()
    );
    assert_eq!(call["cookie"], session_cookie.as_str(), "{call}");
    assert_eq!(call["authorization"], Value::Null);
    assert_eq!(call["forwarded"], serde_json::json!([]));
    assert_eq!(call["accept"], "application/json");
    assert!(
        call["userAgent"]
            .as_str()
            .unwrap()
            .starts_with("intellia-token-broker/"),
        "{call}"
    );

    // Within cache_secs the confirmed session is reused: the site is not asked again.
    let resp = token_with_cookies(&app, &cookies, Some(ALLOWED_ORIGIN)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(site.received().await.len(), 1);

    // The CSRF guard: a disallowed origin, or none at all, is refused before the site is asked.
    for origin in [Some("https://evil.example"), Some("null"), None] {
        let resp = token_with_cookies(&app, &cookies, origin).await;
        assert_problem(resp, 403, "origin_forbidden").await;
    }
    let resp = app
        .client
        .post(app.url("/v1/token"))
        .header("cookie", &cookies)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "no Origin but same-origin is the site's own page"
    );

    // A forged session cookie: the site does not know it.
    let forged = format!("{}=s%3Aforged-session-id.c2lnbmF0dXJl", framework.cookie());
    let resp = token_with_cookies(&app, &forged, Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 401, "unauthenticated").await;

    // Sign out; the same cookie stops working within cache_secs.
    alice.sign_out_keeping_cookie().await;
    let signed_out = Instant::now();
    loop {
        let resp = token_with_cookies(&app, &cookies, Some(ALLOWED_ORIGIN)).await;
        if resp.status() == 401 {
            break;
        }
        assert_eq!(resp.status(), 200);
        assert!(
            signed_out.elapsed() < Duration::from_secs(cache_secs) + Duration::from_millis(800),
            "still honoured {:?} after sign-out",
            signed_out.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replayed later, still refused (the site's server-side session is gone).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = token_with_cookies(&app, &cookies, Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 401, "unauthenticated").await;

    // A session without the required role.
    let mut reader = site.visitor();
    reader.sign_in("reader", &["reader"]).await;
    let resp = token_with_cookies(&app, &reader.cookie_header(), Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 403, "forbidden").await;

    // The site down: an outage, not a sign-out.
    let mut bob = site.visitor();
    bob.sign_in("bob", &["chat"]).await;
    site.stop();
    let resp = token_with_cookies(&app, &bob.cookie_header(), Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 503, "upstream_unavailable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_session_site() {
    a_real_site_session(Framework::Express).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_login_site() {
    a_real_site_session(Framework::Flask).await;
}

/// An endpoint that answers a visitor without a session with its login redirect (a page route,
/// as `@login_required` and `res.redirect` do): 401, and the redirect is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_redirect_means_signed_out() {
    let redis = RedisServer::start();
    for framework in [Framework::Express, Framework::Flask] {
        let site = SiteProcess::start(framework, &redis.url());
        let app = spawn_app(TestConfig {
            extra_toml: site.framework.endpoint_toml(
                &site.url,
                framework.page_route(),
                &format!("user_id_prefix = \"{}\"\n", prefix(framework)),
            ),
            ..TestConfig::default()
        })
        .await;
        let forged = format!("{}=unknown", framework.cookie());
        let resp = token_with_cookies(&app, &forged, Some(ALLOWED_ORIGIN)).await;
        assert_problem(resp, 401, "unauthenticated").await;
        // The redirect target (/login) was never requested: only the page route was.
        let paths: Vec<Value> = site
            .received()
            .await
            .iter()
            .map(|r| r["path"].clone())
            .collect();
        assert_eq!(
            paths,
            vec![Value::from(framework.page_route())],
            "{framework:?}"
        );
        // Signed in, the same route answers JSON.
        let mut carol = site.visitor();
        carol.sign_in("carol", &["chat"]).await;
        let resp = token_with_cookies(&app, &carol.cookie_header(), Some(ALLOWED_ORIGIN)).await;
        assert_eq!(resp.status(), 200, "{framework:?}");
    }
}

/// Two sites in one broker: each gets only its own cookie, a session cookie of one sent under the
/// other's name is refused by the other (and not answered from the first one's cache), and their
/// users are different Intellia users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_for_one_site_sent_to_another_is_refused() {
    let redis = RedisServer::start();
    let express = SiteProcess::start(Framework::Express, &redis.url());
    let flask = SiteProcess::start(Framework::Flask, &redis.url());
    let extra = |f: Framework| format!("user_id_prefix = \"{}\"\n", prefix(f));
    let app = spawn_app(TestConfig {
        extra_toml: express.framework.endpoint_toml(
            &express.url,
            "/api/me",
            &extra(Framework::Express),
        ) + &flask.framework.endpoint_toml(
            &flask.url,
            "/api/me",
            &extra(Framework::Flask),
        ),
        ..TestConfig::default()
    })
    .await;
    let mut at_express = express.visitor();
    at_express.sign_in("dave", &["chat"]).await;
    let mut at_flask = flask.visitor();
    at_flask.sign_in("dave", &["chat"]).await;

    let both = format!(
        "{}; {}",
        at_express.cookie_header(),
        at_flask.cookie_header()
    );
    let resp = token_with_cookies(&app, &both, Some(ALLOWED_ORIGIN)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["userId"], "express:dave",
        "the first configured site's cookie wins"
    );
    let resp = token_with_cookies(&app, &at_flask.cookie_header(), Some(ALLOWED_ORIGIN)).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["userId"], "flask:dave",
        "same name, another site: another user"
    );

    // Each site only ever saw its own cookie.
    for (site, name) in [(&express, "connect.sid"), (&flask, "session")] {
        for call in site.received().await {
            let cookie = call["cookie"].as_str().unwrap();
            assert!(
                cookie.starts_with(&format!("{name}=")) && !cookie.contains(';'),
                "{cookie}"
            );
        }
    }

    // express's confirmed cookie value, sent under flask's cookie name.
    let stolen = at_express.cookie("connect.sid").unwrap();
    let resp = token_with_cookies(&app, &format!("session={stolen}"), Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 401, "unauthenticated").await;
    // And the other way round.
    let stolen = at_flask.cookie("session").unwrap();
    let resp =
        token_with_cookies(&app, &format!("connect.sid={stolen}"), Some(ALLOWED_ORIGIN)).await;
    assert_problem(resp, 401, "unauthenticated").await;
}
