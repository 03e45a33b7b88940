//! Criterion microbenchmarks of the hot paths, called directly: the local limiter check, session
//! verification (HS256 and RS256, first-seen and previously seen tokens) and a token-cache hit.
//! `cargo bench --bench micro`. The async calls run on a current-thread runtime inside
//! `iter_custom`, timing only the calls themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use intellia_token_broker::testing::Credential;
use intellia_token_broker::testing::Metrics;
use intellia_token_broker::testing::MintedToken;
use intellia_token_broker::testing::SessionVerifier;
use intellia_token_broker::testing::TokenCache;
use intellia_token_broker::testing::UserId;
use intellia_token_broker::testing::{
    CacheSettings, Count, PerMinuteLimit, RateLimitSettings, Settings,
};
use intellia_token_broker::testing::{InlineSecrets, Secrets};
use intellia_token_broker::testing::{Limits, RequestKeys};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;
use tokio::runtime::Runtime;

const SECRET: &str = "bench-hs256-secret-that-is-long-enough-0123456789";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"iss": "https://bench.example", "aud": "chat-widget", "sub": sub,
           "email": "a@b.co", "name": "A", "exp": now + 3600, "iat": now})
}

fn settings(session: &str) -> Settings {
    Settings::from_toml_with_env(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[intellia]\norganization_id = \"org\"\napi_key_env = \"UNUSED\"\n[[session.jwt]]\nissuer = \"https://bench.example\"\naudience = \"chat-widget\"\n{session}"
        ),
        Vec::<(String, String)>::new(),
    )
    .unwrap()
}

fn verifier(settings: &Settings, hs256: Option<&str>) -> SessionVerifier {
    let secrets = Secrets::load(
        settings,
        InlineSecrets {
            api_key: Some(SecretString::from("unused")),
            session_hs256: hs256
                .map(|s| (0, SecretString::from(s)))
                .into_iter()
                .collect(),
        },
    )
    .unwrap();
    SessionVerifier::new(
        &settings.session,
        &secrets,
        &intellia_token_broker::testing::http_client_builder()
            .build()
            .unwrap(),
        &Arc::new(Metrics::new()),
    )
    .unwrap()
}

fn hs_verifier() -> SessionVerifier {
    let settings = settings("hs256_secret_file = \"/dev/null\"\nalgorithms = [\"HS256\"]\n");
    verifier(&settings, Some(SECRET))
}

fn hs_token(sub: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(sub),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Serves the fixture's `rsa-1` key as a JWKS on loopback; returns its URL.
fn serve_jwks() -> String {
    let by_kid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/jwks.json")).unwrap()).unwrap();
    let doc = json!({"keys": [by_kid["rsa-1"].clone()]}).to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let server = actix_web::HttpServer::new(move || {
        let doc = doc.clone();
        actix_web::App::new().default_service(actix_web::web::to(move || {
            let doc = doc.clone();
            async move {
                actix_web::HttpResponse::Ok()
                    .content_type("application/json")
                    .body(doc)
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    // A thread of its own: the benchmark runtime runs only while a measurement does.
    std::thread::spawn(move || runtime().block_on(server));
    url
}

fn rs_verifier(jwks_url: &str) -> SessionVerifier {
    let settings = settings(&format!(
        "jwks_url = \"{jwks_url}\"\nalgorithms = [\"RS256\"]\n"
    ));
    verifier(&settings, None)
}

fn limiter(c: &mut Criterion) {
    let rt = runtime();
    let settings = RateLimitSettings {
        per_user: Some(PerMinuteLimit {
            per_minute: Count::new::<{ u32::MAX as u64 / 2 }>(),
            burst: Count::new::<{ u32::MAX as u64 / 2 }>(),
        }),
        per_ip: None,
        upstream: None,
    };
    let limits = Limits::new(&settings, None, 1);
    let user = UserId::parse("zitadel|273645198273645198".to_owned()).unwrap();
    c.bench_function("limiter check, existing key", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let keys = RequestKeys {
                        ip: None,
                        user: Some(black_box(&user)),
                    };
                    black_box(limits.check(keys).await.ok());
                }
                start.elapsed()
            })
        });
    });
}

/// Times `verify` over `tokens`, each seen for the first time: the verifier (and so its
/// verified-session cache) is replaced, untimed, whenever the list runs out.
fn first_seen(
    rt: &Runtime,
    iters: u64,
    tokens: &[String],
    new_verifier: &dyn Fn() -> SessionVerifier,
) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        let mut verifier = new_verifier();
        // Untimed: loads the JWKS where there is one.
        verifier
            .verify(&Credential::bearer(&tokens[0]))
            .await
            .unwrap();
        let mut next = 1;
        for _ in 0..iters {
            if next == tokens.len() {
                verifier = new_verifier();
                verifier
                    .verify(&Credential::bearer(&tokens[0]))
                    .await
                    .unwrap();
                next = 1;
            }
            let start = Instant::now();
            black_box(
                verifier
                    .verify(&Credential::bearer(black_box(&tokens[next])))
                    .await
                    .unwrap(),
            );
            total += start.elapsed();
            next += 1;
        }
        total
    })
}

fn cached(rt: &Runtime, iters: u64, verifier: &SessionVerifier, token: &str) -> Duration {
    rt.block_on(async {
        verifier.verify(&Credential::bearer(token)).await.unwrap();
        let start = Instant::now();
        for _ in 0..iters {
            black_box(
                verifier
                    .verify(&Credential::bearer(black_box(token)))
                    .await
                    .unwrap(),
            );
        }
        start.elapsed()
    })
}

fn session(c: &mut Criterion) {
    intellia_token_broker::testing::install_crypto_provider();
    let rt = runtime();
    let mut group = c.benchmark_group("session verify");

    let hs_tokens: Vec<String> = (0..10_000)
        .map(|i| hs_token(&format!("user-{i}")))
        .collect();
    group.bench_function("HS256, first-seen token", |b| {
        b.iter_custom(|iters| first_seen(&rt, iters, &hs_tokens, &hs_verifier));
    });
    let verifier = hs_verifier();
    group.bench_function("HS256, previously seen token", |b| {
        b.iter_custom(|iters| cached(&rt, iters, &verifier, &hs_tokens[0]));
    });

    let jwks_url = serve_jwks();
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa-private.pem")).unwrap())
            .unwrap();
    let rs_tokens: Vec<String> = (0..1_000)
        .map(|i| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&header, &claims(&format!("rs-user-{i}")), &key).unwrap()
        })
        .collect();
    let new_rs = || rs_verifier(&jwks_url);
    group.bench_function("RS256 (2048-bit), first-seen token", |b| {
        b.iter_custom(|iters| first_seen(&rt, iters, &rs_tokens, &new_rs));
    });
    let verifier = new_rs();
    group.bench_function("RS256, previously seen token", |b| {
        b.iter_custom(|iters| cached(&rt, iters, &verifier, &rs_tokens[0]));
    });
    group.finish();
}

fn cache_hit(c: &mut Criterion) {
    let rt = runtime();
    let cache = TokenCache::new(&CacheSettings::default(), None, Duration::from_secs(5));
    let alice = UserId::parse("alice".to_owned()).unwrap();
    let mint = || async {
        Ok::<_, ()>(MintedToken {
            token: SecretString::from("sim_0123456789abcdef0123456789abcdef0123456"),
            expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(7200),
            user_id: "alice".into(),
            organization_id: "org".into(),
            role: "chat".into(),
        })
    };
    c.bench_function("token cache hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                cache.get_or_mint(&alice, mint).await.unwrap();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(cache.get_or_mint(black_box(&alice), mint).await.unwrap());
                }
                start.elapsed()
            })
        });
    });
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = limiter, session, cache_hit
}
criterion_main!(micro);
