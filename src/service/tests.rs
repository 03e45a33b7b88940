//! The order of the steps, tested without HTTP: the real service, built from a configuration as
//! `serve` builds it, against the in-process Intellia simulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::header::{self, HeaderValue};
use jsonwebtoken::{EncodingKey, Header};
use secrecy::SecretString;

use super::*;
use crate::app::{AppParts, BuildOptions};
use crate::config::Settings;
use crate::error::ErrorCode;
use crate::intellia::simulator::{Simulator, SimulatorConfig, SimulatorState};
use crate::secrets::InlineSecrets;

const HS256: &str = "service-tests-hs256-secret-that-is-long-enough";
const BACKEND_SECRET: &str = "service-tests-backend-secret-long-enough-0123";
const ISSUER: &str = "https://site.test";
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

struct World {
    parts: AppParts,
    sim: Arc<SimulatorState>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service of a broker with one HS256 issuer (its cookie `site_session`), the sidecar route,
/// and `limits` (TOML tables under `[rate_limit]`).
fn world(limits: &str) -> World {
    let sim = Simulator::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        SimulatorConfig::default(),
    )
    .unwrap();
    let url = sim.base_url();
    let state = Arc::clone(&sim.state);
    tokio::spawn(sim.server);
    let dir = std::env::temp_dir().join(format!("service-tests-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let backend = dir.join("backend");
    std::fs::write(&backend, BACKEND_SECRET).unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[intellia]
base_url = "{url}"
organization_id = "org"
api_key_env = "UNUSED"
[[session.jwt]]
issuer = "{ISSUER}"
audience = "widget"
hs256_secret_file = "/unused"
algorithms = ["HS256"]
cookie = "site_session"
[backend]
secret_file = "{}"
{limits}
"#,
        backend.display()
    );
    let settings = Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
    let parts = AppParts::build(
        &settings,
        BuildOptions {
            secrets: InlineSecrets {
                api_key: Some(SecretString::from("test-api-key")),
                session_hs256: vec![(0, SecretString::from(HS256))],
            },
            ..BuildOptions::default()
        },
    )
    .unwrap();
    World {
        parts,
        sim: state,
        _dir: TempDir(dir),
    }
}

fn session(sub: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    jsonwebtoken::encode(
        &Header::default(),
        &serde_json::json!({"iss": ISSUER, "aud": "widget", "sub": sub, "exp": exp}),
        &EncodingKey::from_secret(HS256.as_bytes()),
    )
    .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn cookie(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::COOKIE,
        HeaderValue::from_str(&format!("site_session={token}")).unwrap(),
    );
    headers
}

impl World {
    async fn session(
        &self,
        headers: &HeaderMap,
        origin_allowed: bool,
    ) -> Result<Issued, BrokerError> {
        self.parts
            .service
            .issue_for_session(SessionRequest {
                headers,
                origin_allowed,
                client: Some(CLIENT),
            })
            .await
    }
}

fn code(result: Result<Issued, BrokerError>) -> ErrorCode {
    match result {
        Ok(issued) => panic!("issued a token for {}", issued.user_id()),
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn refused_requests_are_charged_to_their_address() {
    let world = world("[rate_limit.per_ip]\nper_minute = 1\nburst = 2");
    let none = HeaderMap::new();
    assert_eq!(
        code(world.session(&none, true).await),
        ErrorCode::Unauthenticated
    );
    let forged = bearer("not-a-session");
    assert_eq!(
        code(world.session(&forged, true).await),
        ErrorCode::Unauthenticated
    );
    // The address has spent its burst on refusals: even a good session is limited now.
    let good = bearer(&session("ann"));
    assert_eq!(
        code(world.session(&good, true).await),
        ErrorCode::RateLimited
    );
    assert_eq!(world.sim.calls(), 0);
}

#[tokio::test]
async fn a_new_session_is_charged_before_it_is_verified() {
    let world = world("[rate_limit.per_ip]\nper_minute = 1\nburst = 1");
    assert!(world.session(&bearer(&session("ann")), true).await.is_ok());
    // Verifying this token would refuse it (401); the spent address is refused first (429),
    // so a flood of new sessions never reaches the verifier or the identity provider.
    let unverifiable = bearer(&session("bob").replace('.', ".x"));
    assert_eq!(
        code(world.session(&unverifiable, true).await),
        ErrorCode::RateLimited
    );
}

#[tokio::test]
async fn each_request_charges_its_address_once() {
    // A new session is charged alone, before verification; a remembered one together with its
    // user. Either way once: three requests fit a burst of three, the fourth does not.
    let world = world("[rate_limit.per_ip]\nper_minute = 1\nburst = 3");
    let ann = bearer(&session("ann"));
    for _ in 0..3 {
        let issued = world.session(&ann, true).await.unwrap();
        assert_eq!(issued.user_id(), "ann");
    }
    assert_eq!(
        code(world.session(&ann, true).await),
        ErrorCode::RateLimited
    );
    assert_eq!(world.sim.calls(), 1, "the cache answered the rest");
}

#[tokio::test]
async fn cookies_need_an_allowed_origin_and_bearer_tokens_do_not() {
    let world = world("");
    let token = session("ann");
    assert_eq!(
        code(world.session(&cookie(&token), false).await),
        ErrorCode::OriginForbidden
    );
    assert!(world.session(&cookie(&token), true).await.is_ok());
    assert!(world.session(&bearer(&token), false).await.is_ok());
}

#[tokio::test]
async fn the_backend_body_is_read_only_after_the_secret_is_accepted() {
    let world = world("");
    let read = AtomicBool::new(false);
    let body = || async {
        read.store(true, Ordering::SeqCst);
        Ok(Identity {
            user_id: crate::identity::UserId::parse("named-user".into()).unwrap(),
            email: None,
            name: None,
        })
    };
    let service = &world.parts.service;
    let wrong = service
        .issue_for_backend(Ok(Some("not-the-secret")), Some(CLIENT), body())
        .await;
    assert_eq!(code(wrong), ErrorCode::Unauthenticated);
    let missing = service
        .issue_for_backend(Ok(None), Some(CLIENT), body())
        .await;
    assert_eq!(code(missing), ErrorCode::Unauthenticated);
    assert!(
        !read.load(Ordering::SeqCst),
        "a body was read for a refused caller"
    );
    let issued = service
        .issue_for_backend(Ok(Some(BACKEND_SECRET)), Some(CLIENT), body())
        .await
        .unwrap();
    assert_eq!(issued.user_id(), "named-user");
    assert!(read.load(Ordering::SeqCst));
}

/// The sidecar route's failure limit as configured: wrong secrets spend an address's allowance,
/// keyed for IPv6 by `rate_limit.per_ip.ipv6_prefix`; the right secret and a missing one never
/// count, and the right one is never refused.
#[tokio::test]
async fn backend_failures_count_wrong_secrets_per_configured_ipv6_prefix() {
    let world = world(
        "max_failures_per_minute = 2\n[rate_limit.per_ip]\nper_minute = 60\nburst = 20\nipv6_prefix = 48\n",
    );
    let service = &world.parts.service;
    let identity = || async {
        Ok(Identity {
            user_id: crate::identity::UserId::parse("named-user".into()).unwrap(),
            email: None,
            name: None,
        })
    };
    let at = |ip: &str| Some(ip.parse::<IpAddr>().unwrap());
    let wrong = |ip: &'static str| {
        service.issue_for_backend(Ok(Some("not-the-secret")), at(ip), identity())
    };
    // Requests without a credential are 401 and spend nothing.
    for _ in 0..10 {
        let missing = service
            .issue_for_backend(Ok(None), at("2001:db8:1:1::1"), identity())
            .await;
        assert_eq!(code(missing), ErrorCode::Unauthenticated);
    }
    assert_eq!(
        code(wrong("2001:db8:1:1::1").await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        code(wrong("2001:db8:1:2::9").await),
        ErrorCode::Unauthenticated
    );
    // The third wrong secret from the same /48 spends it, from another /64 of it.
    assert_eq!(
        code(wrong("2001:db8:1:ffff::1").await),
        ErrorCode::RateLimited
    );
    assert_eq!(code(wrong("2001:db8:1:1::1").await), ErrorCode::RateLimited);
    // Another /48 is another client.
    assert_eq!(
        code(wrong("2001:db8:2::1").await),
        ErrorCode::Unauthenticated
    );
    // The right secret from the spent prefix is never refused.
    for _ in 0..5 {
        let issued = service
            .issue_for_backend(Ok(Some(BACKEND_SECRET)), at("2001:db8:1:1::1"), identity())
            .await
            .unwrap();
        assert_eq!(issued.user_id(), "named-user");
    }
    // A malformed credential is a wrong one.
    let malformed = service
        .issue_for_backend(
            Err(AuthFailure::Malformed),
            at("2001:db8:1:1::1"),
            identity(),
        )
        .await;
    assert_eq!(code(malformed), ErrorCode::RateLimited);
}
